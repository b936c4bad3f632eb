"""RELOAD message codec (RFC 6940 §6.3-§7, §10; our subset in docs/wire.md), sans-I/O.

Decoding trusts nothing: every length is checked against the bytes that remain before anything
is sliced or allocated, every structure must consume its length exactly, and the only exception
that escapes is ``CodecError``. This runs on every hop, so fixed fields go through precompiled
``struct.Struct`` objects, the common shapes (node and resource destinations, the unsigned
security block) are recognised in one comparison before the general checked path, and
nothing loops per byte in Python.

This module holds the forwarding header and whole messages; ``codec_base`` the reader and the
shared structures, ``codec_bodies`` the message bodies. Import everything from here.
"""

from __future__ import annotations

import struct
from typing import Final

from overlay.codec_base import (
    EMPTY_SECURITY_BYTES,
    ID_BYTES,
    U32,
    CodecError,
    Reader,
    decode_destination,
    encode_destination,
    encode_destination_list,
    encode_option,
    encode_security,
    opaque,
    read_destination_list,
    read_options,
    read_security,
    reader_for,
)
from overlay.codec_bodies import body_where, decode_body, encode_body, read_body
from overlay.messages import (
    EMPTY_SECURITY,
    RELO_TOKEN,
    Destination,
    ErrorCode,
    ErrorResponse,
    ForwardingHeader,
    Message,
    MessageExtension,
    NodeDestination,
    ResourceDestination,
)

__all__ = [
    "HEADER_SIZE",
    "CodecError",
    "decode_body",
    "decode_destination",
    "decode_header",
    "decode_message",
    "encode_body",
    "encode_destination",
    "encode_message",
    "oversized_answer",
]

_HEADER: Final = struct.Struct("!IIHBBIIQIHHH")
HEADER_SIZE: Final = _HEADER.size  # 38
_EXTENSION: Final = struct.Struct("!HB")
_CODE_LENGTH: Final = struct.Struct("!HI")  # message_code, message_body length
_BODY_LIMIT: Final = 0xFFFFFFFF
# What follows the body of nearly every message: no extensions, the unsigned security block.
_PLAIN_TAIL: Final = U32.pack(0) + EMPTY_SECURITY_BYTES


# --- whole messages ----------------------------------------------------------------------


def _check_list(r: Reader, n: int, what: str) -> int:
    """Where the ``n``-byte header list at ``r.pos`` starts; moves ``r`` past it."""
    pos = r.pos
    if n > r.end - pos:
        raise CodecError(f"forwarding header: {what} length {n} exceeds message")
    r.pos = pos + n
    return pos


def _destination_list(
    r: Reader, pos: int, n: int, label: str, what: str
) -> tuple[Destination, ...]:
    buf = r.buf
    # One hop's worth (our via lists, answers' destination lists, routed requests) without a
    # reader; the same checks as read_destination's own shortcut.
    if n == 18 and buf[pos] == 1 and buf[pos + 1] == ID_BYTES:
        return (NodeDestination(int.from_bytes(buf[pos + 2 : pos + 18], "big")),)
    if n == 19 and buf[pos] == 2 and buf[pos + 1] == 17 and buf[pos + 2] == ID_BYTES:
        return (ResourceDestination(int.from_bytes(buf[pos + 3 : pos + 19], "big")),)
    if n == 0:
        return ()
    return read_destination_list(Reader(buf, pos, pos + n, label), what)


def _read_header(r: Reader, total: int) -> ForwardingHeader:
    if total < HEADER_SIZE:
        raise CodecError(f"forwarding header: {total} bytes, need {HEADER_SIZE}")
    (
        token,
        overlay,
        config_seq,
        version,
        ttl,
        fragment,
        length,
        transaction_id,
        max_response,
        via_len,
        dest_len,
        opt_len,
    ) = _HEADER.unpack_from(r.buf, 0)
    if token != RELO_TOKEN:
        raise CodecError(f"forwarding header: relo_token {token:#010x} is not RELO")
    if length != total:
        raise CodecError(f"forwarding header: length field {length} but message is {total} bytes")
    r.pos = HEADER_SIZE
    # All three lengths are checked before any list is read.
    via_at = _check_list(r, via_len, "via_list")
    dest_at = _check_list(r, dest_len, "destination_list")
    opt_at = _check_list(r, opt_len, "options")
    via = _destination_list(r, via_at, via_len, "forwarding header: via_list", "via")
    dest = _destination_list(
        r, dest_at, dest_len, "forwarding header: destination_list", "destination"
    )
    opts = (
        read_options(Reader(r.buf, opt_at, opt_at + opt_len, "forwarding header: options"))
        if opt_len
        else ()
    )
    return ForwardingHeader(
        overlay, transaction_id, via, dest, opts, ttl, config_seq, version, fragment, max_response
    )


def decode_header(data: bytes) -> ForwardingHeader:
    """Only the forwarding header with its lists and options (the rest may be garbage)."""
    r = reader_for(data, "forwarding header")
    return _read_header(r, r.end)


def decode_message(data: bytes) -> Message:
    r = reader_for(data, "forwarding header")
    header = _read_header(r, r.end)
    buf, pos, end = r.buf, r.pos, r.end
    if end - pos >= 6:
        code, body_len = _CODE_LENGTH.unpack_from(buf, pos)
        body_end = pos + 6 + body_len
        if end - body_end == len(_PLAIN_TAIL) and buf[body_end:] == _PLAIN_TAIL:
            # The common shape: the tail is exactly what the general path below would read
            # as no extensions and the empty security block, so only the body is left.
            body = read_body(Reader(buf, pos + 6, body_end, body_where(code)), code)
            return Message(header, body)
    r.where = "message contents"
    code = r.u16("message_code")
    body_reader = r.sub(4, "message body")
    ext_list = r.sub(4, "extensions")
    extensions = []
    while ext_list.pos < ext_list.end:
        pos = ext_list.take(_EXTENSION.size, "extension")
        etype, critical = _EXTENSION.unpack_from(ext_list.buf, pos)
        if critical > 1:
            raise CodecError(f"{ext_list.where}: Boolean critical is {critical}, not 0 or 1")
        extensions.append(MessageExtension(etype, critical == 1, ext_list.opaque(4, "contents")))
    r.where = "security block"
    security = read_security(r)
    r.done()
    body_reader.where = body_where(code)
    body = read_body(body_reader, code)
    return Message(header, body, tuple(extensions), security)


def encode_message(msg: Message) -> bytes:
    code, body = encode_body(msg.body)
    if len(body) > _BODY_LIMIT:
        opaque(body, 4, "message body")  # raises the usual error
    h = msg.header
    try:
        via = encode_destination_list(h.via_list, "via_list")
        dest = encode_destination_list(h.destination_list, "destination_list")
        opts = b""
        if h.options:
            opts = b"".join([encode_option(o) for o in h.options])
            if len(opts) > 0xFFFF:
                raise CodecError(f"forwarding header: options is {len(opts)} bytes, over 65535")
        if msg.extensions:
            ext = b"".join(
                [
                    _EXTENSION.pack(e.type, 1 if e.critical else 0)
                    + opaque(e.contents, 4, "extension contents")
                    for e in msg.extensions
                ]
            )
            tail = opaque(ext, 4, "extensions") + encode_security(msg.security)
        elif msg.security is EMPTY_SECURITY:
            tail = _PLAIN_TAIL
        else:
            tail = _PLAIN_TAIL[:4] + encode_security(msg.security)
        total = HEADER_SIZE + len(via) + len(dest) + len(opts) + 6 + len(body) + len(tail)
        head = _HEADER.pack(
            RELO_TOKEN,
            h.overlay,
            h.configuration_sequence,
            h.version,
            h.ttl,
            h.fragment,
            total,
            h.transaction_id,
            h.max_response_length,
            len(via),
            len(dest),
            len(opts),
        )
        code_length = _CODE_LENGTH.pack(code, len(body))
    except (struct.error, OverflowError, ValueError, TypeError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"message header or security block: cannot encode: {exc}") from None
    return b"".join((head, via, dest, opts, code_length, body, tail))


def oversized_answer(message: Message, size: int, limit: int) -> Message | None:
    """What to send instead of ``message``, whose encoding (``size`` bytes) exceeds the frame
    limit: an answer becomes an Error_Response_Too_Large on the same path, so the requester
    hears of it; a request has no stand-in (None: drop it, its sender's retransmission timer
    gives up). Either way the next hop is not at fault and must not be declared dead."""
    if message.is_request or isinstance(message.body, ErrorResponse):
        return None
    info = f"answer of {size} bytes exceeds the {limit}-byte frame limit".encode()
    return Message(message.header, ErrorResponse(ErrorCode.RESPONSE_TOO_LARGE, info))
