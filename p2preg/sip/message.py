"""SIP requests and responses with lazily parsed, typed header accessors.

A message keeps every header as the (unfolded) text it arrived with; typed views
(Via, CSeq, Contact…) are parsed the first time they are asked for and cached, so a
REGISTER pays only for the headers the registrar reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from p2preg.sip.headers import (
    CSeq,
    HeaderError,
    NameAddr,
    Via,
    parse_call_id,
    parse_contacts,
    parse_cseq,
    parse_delta_seconds,
    parse_max_forwards,
    parse_name_addr,
    parse_option_tags,
    parse_via,
    split_list,
)
from p2preg.sip.uri import Uri, UriError, parse_uri

T = TypeVar("T")

# RFC 3261 §7.3.3 and the registrations that followed it.
COMPACT_FORMS = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "a": "accept-contact",
    "b": "referred-by",
    "d": "request-disposition",
    "j": "reject-contact",
    "x": "session-expires",
    "y": "identity",
    "n": "identity-info",
}

_PRETTY = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
}

SINGLE_VALUED = ("from", "to", "call-id", "cseq", "max-forwards")


def pretty_name(key: str) -> str:
    name = _PRETTY.get(key)
    if name is None:
        name = "-".join(part.capitalize() for part in key.split("-"))
    return name


class SipParseError(Exception):
    """A message we cannot process, with the response RFC 3261 expects for it.

    ``headers`` holds whatever header fields were read, so a response can still copy
    Via/From/To/Call-ID/CSeq; ``can_respond`` says whether one may be sent at all (never
    to a response, never without a Via to send it along).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        headers: Headers | None = None,
        is_response: bool = False,
        respond: bool = True,
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers
        self.is_response = is_response
        self.respond = respond

    @property
    def can_respond(self) -> bool:
        return (
            self.respond
            and not self.is_response
            and self.headers is not None
            and bool(self.headers.get_all("via"))
        )


class Headers:
    """Header fields in arrival order, keyed by lower-case full name."""

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: list[tuple[str, str, str]] | None = None) -> None:
        # (key, name as it will be written, value)
        self._fields: list[tuple[str, str, str]] = fields if fields is not None else []
        self._index: dict[str, list[str]] = {}
        for key, _, value in self._fields:
            lst = self._index.get(key)
            if lst is None:
                self._index[key] = [value]
            else:
                lst.append(value)

    @classmethod
    def from_parts(cls, fields: list[tuple[str, str, str]], index: dict[str, list[str]]) -> Headers:
        """Adopt fields and the index built from them (the parser builds both at once)."""
        self = cls.__new__(cls)
        self._fields = fields
        self._index = index
        return self

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Headers:
        fields = []
        for name, value in pairs:
            key = name.lower()
            key = COMPACT_FORMS.get(key, key)
            fields.append((key, pretty_name(key), value))
        return cls(fields)

    def get(self, key: str) -> str | None:
        lst = self._index.get(key)
        return lst[0] if lst else None

    def get_all(self, key: str) -> list[str]:
        return self._index.get(key, [])

    def values(self, key: str) -> list[str]:
        """Every comma-separated value of a list header, across all its fields."""
        out: list[str] = []
        for value in self._index.get(key, ()):
            out.extend(split_list(value))
        return out

    def count(self, key: str) -> int:
        return len(self._index.get(key, ()))

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._fields:
            yield name, value

    def __len__(self) -> int:
        return len(self._fields)

    def add(self, name: str, value: str) -> None:
        key = name.lower()
        key = COMPACT_FORMS.get(key, key)
        self._fields.append((key, pretty_name(key), value))
        self._index.setdefault(key, []).append(value)


class SipMessage:
    # One slot per typed view: a parsed value is cached on first use, and the hot path
    # asks for Via, CSeq and To several times per request.
    __slots__ = (
        "_call_id",
        "_contacts",
        "_cseq",
        "_expires",
        "_from",
        "_max_forwards",
        "_tags",
        "_to",
        "_vias",
        "body",
        "headers",
        "version",
    )

    is_response = False

    def __init__(self, headers: Headers, body: bytes, version: str) -> None:
        self.headers = headers
        self.body = body
        self.version = version
        self._vias: list[Via] | None = None
        self._cseq: CSeq | None = None
        self._call_id: str | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._max_forwards: int | None = None
        self._expires: int | None = None
        self._contacts: list[NameAddr] | str | None = None
        self._tags: dict[str, list[str]] | None = None

    def _error(self, reason: str) -> SipParseError:
        return SipParseError(400, reason, headers=self.headers, is_response=self.is_response)

    def _single(self, key: str) -> str:
        values = self.headers.get_all(key)
        if len(values) != 1:
            if not values:
                raise self._error(f"Missing {pretty_name(key)}")
            raise self._error(f"Multiple {pretty_name(key)} headers")
        return values[0]

    def _typed(self, key: str, parse: Callable[[str], T]) -> T:
        value = self._single(key)
        try:
            return parse(value)
        except (HeaderError, UriError) as exc:
            raise self._error(f"Malformed {pretty_name(key)}: {exc}") from None

    # Typed accessors; each raises SipParseError(400, "Missing/Malformed <header>").

    def vias(self) -> list[Via]:
        vias = self._vias
        if vias is None:
            values = self.headers.values("via")
            if not values:
                raise self._error("Missing Via")
            try:
                vias = [parse_via(v) for v in values]
            except HeaderError as exc:
                raise self._error(f"Malformed Via: {exc}") from None
            self._vias = vias
        return vias

    def top_via(self) -> Via:
        vias = self._vias
        return vias[0] if vias is not None else self.vias()[0]

    def cseq(self) -> CSeq:
        cseq = self._cseq
        if cseq is None:
            cseq = self._cseq = self._typed("cseq", parse_cseq)
        return cseq

    def call_id(self) -> str:
        call_id = self._call_id
        if call_id is None:
            call_id = self._call_id = self._typed("call-id", parse_call_id)
        return call_id

    def from_(self) -> NameAddr:
        value = self._from
        if value is None:
            value = self._from = self._typed("from", parse_name_addr)
        return value

    def to(self) -> NameAddr:
        value = self._to
        if value is None:
            value = self._to = self._typed("to", parse_name_addr)
        return value

    def max_forwards(self) -> int | None:
        value = self._max_forwards
        if value is None:
            if "max-forwards" not in self.headers:
                return None
            value = self._max_forwards = self._typed("max-forwards", parse_max_forwards)
        return value

    def expires(self) -> int | None:
        value = self._expires
        if value is None:
            if "expires" not in self.headers:
                return None
            value = self._expires = self._typed("expires", parse_delta_seconds)
        return value

    def contacts(self) -> list[NameAddr] | str:
        contacts = self._contacts
        if contacts is None:
            try:
                contacts = parse_contacts(self.headers.get_all("contact"))
            except (HeaderError, UriError) as exc:
                raise self._error(f"Malformed Contact: {exc}") from None
            self._contacts = contacts
        return contacts

    def option_tags(self, key: str) -> list[str]:
        if key not in self.headers:
            return []  # a fresh list, as parse_option_tags would return
        tags = self._tags
        if tags is None:
            tags = self._tags = {}
        result = tags.get(key)
        if result is None:
            try:
                result = parse_option_tags(self.headers.get_all(key))
            except HeaderError as exc:
                raise self._error(f"Malformed {pretty_name(key)}: {exc}") from None
            tags[key] = result
        return result


class SipRequest(SipMessage):
    __slots__ = ("_ruri", "method", "uri")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body, version)
        self.method = method
        self.uri = uri
        self._ruri: Uri | None = None

    def request_uri(self) -> Uri:
        ruri = self._ruri
        if ruri is None:
            try:
                ruri = self._ruri = parse_uri(self.uri)
            except UriError as exc:
                raise self._error(f"Malformed Request-URI: {exc}") from None
        return ruri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def to_bytes(self) -> bytes:
        return serialize(self.start_line(), self.headers, self.body)

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri}>"


class SipResponse(SipMessage):
    __slots__ = ("reason", "status")

    is_response = True

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Headers,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body, version)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def to_bytes(self) -> bytes:
        return serialize(self.start_line(), self.headers, self.body)

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason}>"


def serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    """Wire form: Content-Length is always written from the body actually sent."""
    lines = [start_line]
    for name, value in headers:
        if name.lower() == "content-length":
            continue
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    lines.append("")
    lines.append("")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body
