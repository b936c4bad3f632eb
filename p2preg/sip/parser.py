"""Bytes to SIP messages: datagram parsing and stream framing (RFC 3261 §7, §18.3).

The hot path splits the header block once, unfolds continuation lines and indexes the
fields; nothing else is parsed until someone asks (see :mod:`p2preg.sip.message`).
Only :class:`SipParseError` ever leaves :func:`parse_message`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from p2preg.sip.headers import COMMON_METHODS
from p2preg.sip.message import (
    COMPACT_FORMS,
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    pretty_name,
)

MAX_MESSAGE_BYTES = 65536
MAX_HEADER_LINES = 256

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_VERSION_RE = re.compile(r"[Ss][Ii][Pp]/[0-9]{1,3}\.[0-9]{1,3}")
_DIGITS_RE = re.compile(r"[0-9]+")
# Header names as they arrive (the text before the colon) -> (key, name as written back).
# Only names that passed the token check are remembered, and only so many, so a peer
# sending random names costs a bounded table.
_NAMES: dict[str, tuple[str, str]] = {}
_NAME_CACHE_SIZE = 512
_NAME_CACHE_LENGTH = 40


def parse_message(data: bytes, *, datagram: bool = True) -> SipRequest | SipResponse:
    """Parse one message.

    ``datagram``: the bytes are a whole UDP datagram, so a missing Content-Length means
    "the rest", octets past Content-Length are noise (RFC 3261 §18.3) and a header block
    that runs to the end of the datagram is accepted. Otherwise the bytes came from
    :class:`StreamFramer` and Content-Length is required.
    """
    try:
        return _parse(data, datagram)
    except SipParseError:
        raise
    except Exception as exc:  # a bug must not take the node down; answer like bad input
        raise SipParseError(400, f"Unparseable message ({type(exc).__name__})") from None


def _parse(data: bytes, datagram: bool) -> SipRequest | SipResponse:
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError(513, "Message Too Large", respond=False)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # §7.5: CRLFs before the start line are ignored
    nl = data.find(b"\n")
    if nl < 0:
        raise SipParseError(400, "Incomplete message", respond=False)
    crlf = nl > 0 and data[nl - 1] == 13
    if crlf:
        end = data.find(b"\r\n\r\n")
        body_start = end + 4
        sep = "\r\n"
    else:
        # RFC 5118's archive uses bare LF throughout; tolerate it when the first line does.
        end = data.find(b"\n\n")
        body_start = end + 2
        sep = "\n"
    terminated = end >= 0
    if not terminated:
        if not datagram:
            raise SipParseError(400, "Incomplete header section", respond=False)
        end = len(data)
        while end and data[end - 1] in (10, 13):
            end -= 1
        body_start = len(data)
    text = data[:end].decode("utf-8", "surrogateescape")
    lines = text.split(sep)
    if len(lines) > MAX_HEADER_LINES:
        raise SipParseError(400, "Too Many Header Lines", respond=False)
    expected_crs = len(lines) - 1 if crlf else 0
    if text.count("\r") != expected_crs or (crlf and text.count("\n") != len(lines) - 1):
        bad_line: str | None = "Bare CR or LF in header section"
    else:
        bad_line = None

    fields: list[tuple[str, str, str]] = []
    index: dict[str, list[str]] = {}
    names = _NAMES
    for line in lines[1:]:
        raw_name, colon, value = line.partition(":")
        # Only names that passed the checks below are in the table, and none starts with
        # a blank, so a hit is a well-formed, unfolded "name [WS] ':' value" line.
        known = names.get(raw_name) if colon else None
        if known is None:
            first = line[:1]
            if first == " " or first == "\t":
                if not fields:
                    bad_line = bad_line or "Continuation line before first header"
                    continue
                key, name, value = fields[-1]
                value = (value + " " + line.strip(" \t")).strip(" \t")
                fields[-1] = (key, name, value)
                index[key][-1] = value
                continue
            name = raw_name.rstrip(" \t")
            if not colon or _TOKEN_RE.fullmatch(name) is None:
                bad_line = bad_line or "Malformed header line"
                continue
            known = _known_name(raw_name, name)
        key = known[0]
        value = value.strip(" \t")
        fields.append((key, known[1], value))
        values = index.get(key)
        if values is None:
            index[key] = [value]
        else:
            values.append(value)
    headers = Headers.from_parts(fields, index)

    start = lines[0]
    if start.startswith("SIP/"):
        return _parse_response(start, headers, data, body_start, terminated, datagram, bad_line)
    request = _parse_request_line(start, headers)
    if bad_line is not None:
        raise SipParseError(400, bad_line, headers=headers)
    body = _body(headers, data, body_start, terminated, datagram, is_response=False)
    return SipRequest(request[0], request[1], headers, body, request[2])


def _known_name(raw_name: str, name: str) -> tuple[str, str]:
    """(key, name as written back) for a token header name; remembered under the name
    as it arrived (``name`` plus any blanks before the colon)."""
    key = name.lower()
    if len(key) == 1:
        key = COMPACT_FORMS.get(key, key)
        name = pretty_name(key)
    known = (key, name)
    if len(raw_name) <= _NAME_CACHE_LENGTH and len(_NAMES) < _NAME_CACHE_SIZE:
        _NAMES[raw_name] = known
    return known


def _parse_request_line(line: str, headers: Headers) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(400, "Malformed Request-Line", headers=headers)
    method, uri, version = parts
    if method not in COMMON_METHODS and _TOKEN_RE.fullmatch(method) is None:
        raise SipParseError(400, "Malformed Method", headers=headers)
    if version != "SIP/2.0":
        if _VERSION_RE.fullmatch(version) is None:
            raise SipParseError(400, "Malformed SIP-Version", headers=headers)
        if version.upper() != "SIP/2.0":
            raise SipParseError(505, "Version Not Supported", headers=headers)
        version = "SIP/2.0"
    return method, uri, version


def _parse_response(
    line: str,
    headers: Headers,
    data: bytes,
    body_start: int,
    terminated: bool,
    datagram: bool,
    bad_line: str | None,
) -> SipResponse:
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0] != "SIP/2.0":
        raise SipParseError(400, "Malformed Status-Line", headers=headers, is_response=True)
    code = parts[1]
    if len(code) != 3 or _DIGITS_RE.fullmatch(code) is None or not 100 <= int(code) <= 699:
        raise SipParseError(400, "Malformed Status-Code", headers=headers, is_response=True)
    if bad_line is not None:
        raise SipParseError(400, bad_line, headers=headers, is_response=True)
    body = _body(headers, data, body_start, terminated, datagram, is_response=True)
    return SipResponse(int(code), parts[2] if len(parts) > 2 else "", headers, body)


def content_length(headers: Headers, *, is_response: bool = False) -> int | None:
    values = headers.get_all("content-length")
    if not values:
        return None
    first = values[0]
    if len(values) == 1 and len(first) <= 9 and first.isascii() and first.isdigit():
        return int(first)  # the usual case; every check below would pass
    for value in values:
        if _DIGITS_RE.fullmatch(value) is None:
            raise SipParseError(
                400, "Invalid Content-Length", headers=headers, is_response=is_response
            )
        if value.lstrip("0") != first.lstrip("0"):
            raise SipParseError(
                400, "Conflicting Content-Length", headers=headers, is_response=is_response
            )
    if len(values) > 1:
        raise SipParseError(
            400, "Multiple Content-Length headers", headers=headers, is_response=is_response
        )
    if len(first) > 9:
        raise SipParseError(
            400, "Content-Length too large", headers=headers, is_response=is_response
        )
    return int(first)


def _body(
    headers: Headers,
    data: bytes,
    body_start: int,
    terminated: bool,
    datagram: bool,
    *,
    is_response: bool,
) -> bytes:
    length = content_length(headers, is_response=is_response)
    available = len(data) - body_start
    if length is None:
        if not datagram:
            raise SipParseError(
                400, "Missing Content-Length", headers=headers, is_response=is_response
            )
        return data[body_start:]
    if length > available:
        raise SipParseError(
            400, "Content-Length larger than message", headers=headers, is_response=is_response
        )
    return data[body_start : body_start + length]


# --- streams --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete message's bytes, ready for ``parse_message(datagram=False)``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A CRLFCRLF ping (RFC 5626 §4.4.1); the transport answers with CRLF."""


@dataclass(frozen=True, slots=True)
class FramingError:
    """The stream cannot be framed any further: answer if possible, then close.

    ``head`` is the header block read so far (empty when nothing usable was read).
    """

    status: int
    reason: str
    head: bytes


FrameEvent = Frame | KeepAlive | FramingError


class StreamFramer:
    """Splits a TCP byte stream into messages by Content-Length.

    Once it reports a :class:`FramingError` the stream is unrecoverable (RFC 4475 §3.1.2.3)
    and every later ``feed`` returns nothing.
    """

    def __init__(
        self, max_header_bytes: int = 16384, max_message_bytes: int = MAX_MESSAGE_BYTES
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._need: int | None = None  # total length of the message being read
        self.failed = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete message held; the transport times these out."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[FrameEvent]:
        if self.failed:
            return []
        self._buf += data
        events: list[FrameEvent] = []
        buf = self._buf
        while buf:
            if self._need is None:
                if buf[0] in (13, 10):
                    if buf.startswith(b"\r\n\r\n"):
                        del buf[:4]
                        events.append(KeepAlive())
                        continue
                    if bytes(buf) in (b"\r", b"\r\n", b"\r\n\r"):
                        break  # wait: may become a keepalive
                    del buf[:1]
                    continue
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > self.max_header_bytes:
                        self._fail(events, FramingError(400, "Header section too large", b""))
                    break
                if end > self.max_header_bytes:
                    self._fail(events, FramingError(400, "Header section too large", b""))
                    break
                head = bytes(buf[: end + 4])
                length = _stream_content_length(head)
                if isinstance(length, FramingError):
                    self._fail(events, length)
                    break
                total = end + 4 + length
                if total > self.max_message_bytes:
                    self._fail(events, FramingError(513, "Message Too Large", head))
                    break
                self._need = total
            if len(buf) < self._need:
                break
            events.append(Frame(bytes(buf[: self._need])))
            del buf[: self._need]
            self._need = None
        return events

    def _fail(self, events: list[FrameEvent], error: FramingError) -> None:
        events.append(error)
        self.failed = True
        self._buf.clear()
        self._need = None


def _stream_content_length(head: bytes) -> int | FramingError:
    # Only the Content-Length line is needed here; the full parse happens once framed.
    text = head.decode("latin-1")
    values: list[str] = []
    for line in text.split("\r\n")[1:]:
        name, colon, value = line.partition(":")
        if colon:
            key = name.rstrip(" \t").lower()
            if key in ("content-length", "l"):
                values.append(value.strip(" \t"))
    if not values:
        return FramingError(400, "Missing Content-Length", head)
    first = values[0]
    for value in values:
        if _DIGITS_RE.fullmatch(value) is None:
            return FramingError(400, "Invalid Content-Length", head)
        if value.lstrip("0") != first.lstrip("0"):
            return FramingError(400, "Conflicting Content-Length", head)
    if len(first) > 9:
        return FramingError(513, "Message Too Large", head)
    return int(first)
