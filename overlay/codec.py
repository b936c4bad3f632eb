"""RELOAD message codec (RFC 6940 §6.3-§7, §10; our subset in WIRE.md), sans-I/O.

Decoding trusts nothing: every length is checked against the bytes that remain before anything
is sliced or allocated, every structure must consume its length exactly, and the only exception
that escapes is ``CodecError``. This runs on every hop, so fixed fields go through precompiled
``struct.Struct`` objects over a ``memoryview`` and nothing loops per byte in Python.

This module holds the forwarding header and whole messages; ``codec_base`` the reader and the
shared structures, ``codec_bodies`` the message bodies. Import everything from here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

from overlay.codec_base import (
    U16,
    CodecError,
    Reader,
    decode_destination,
    encode_destination,
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
    RELO_TOKEN,
    ForwardingHeader,
    Message,
    MessageExtension,
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
]

_HEADER: Final = struct.Struct("!IIHBBIIQIHHH")
HEADER_SIZE: Final = _HEADER.size  # 38
_EXTENSION: Final = struct.Struct("!HB")


# --- whole messages ----------------------------------------------------------------------


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
    lists = []
    for what, n in (("via_list", via_len), ("destination_list", dest_len), ("options", opt_len)):
        if n > r.end - r.pos:
            raise CodecError(f"forwarding header: {what} length {n} exceeds message")
        lists.append(Reader(r.buf, r.pos, r.pos + n, f"forwarding header: {what}"))
        r.pos += n
    via, dest, opts = lists
    return ForwardingHeader(
        overlay=overlay,
        transaction_id=transaction_id,
        via_list=read_destination_list(via, "via"),
        destination_list=read_destination_list(dest, "destination"),
        options=read_options(opts),
        ttl=ttl,
        configuration_sequence=config_seq,
        version=version,
        fragment=fragment,
        max_response_length=max_response,
    )


def decode_header(data: bytes) -> ForwardingHeader:
    """Only the forwarding header with its lists and options (the rest may be garbage)."""
    r = reader_for(data, "forwarding header")
    return _read_header(r, r.end)


def decode_message(data: bytes) -> Message:
    r = reader_for(data, "forwarding header")
    header = _read_header(r, r.end)
    r.where = "message contents"
    code = r.u16("message_code")
    body_reader = r.sub(4, "message body")
    ext_list = r.sub(4, "extensions")
    extensions = []
    while ext_list.more:
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


def _encode_list(items: Iterable[bytes], what: str) -> bytes:
    data = b"".join(items)
    if len(data) > 0xFFFF:
        raise CodecError(f"forwarding header: {what} is {len(data)} bytes, over 65535")
    return data


def encode_message(msg: Message) -> bytes:
    code, body = encode_body(msg.body)
    h = msg.header
    try:
        via = _encode_list([encode_destination(d) for d in h.via_list], "via_list")
        dest = _encode_list([encode_destination(d) for d in h.destination_list], "destination_list")
        opts = _encode_list([encode_option(o) for o in h.options], "options")
        ext = b"".join(
            [
                _EXTENSION.pack(e.type, 1 if e.critical else 0)
                + opaque(e.contents, 4, "extension contents")
                for e in msg.extensions
            ]
        )
        tail = b"".join(
            [
                U16.pack(code),
                opaque(body, 4, "message body"),
                opaque(ext, 4, "extensions"),
                encode_security(msg.security),
            ]
        )
        total = HEADER_SIZE + len(via) + len(dest) + len(opts) + len(tail)
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
    except (struct.error, OverflowError, ValueError, TypeError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"message header or security block: cannot encode: {exc}") from None
    return b"".join([head, via, dest, opts, tail])
