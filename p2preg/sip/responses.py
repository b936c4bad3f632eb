"""Building responses to requests (RFC 3261 §8.2.6, §18.2.1, RFC 3581).

A response copies Via (every value, top one with ``received``/``rport`` filled in),
From, To (with a tag added when it has none), Call-ID and CSeq from the request.
The To tag is derived from the request itself, so rebuilding the response to a
retransmission yields the same bytes even without the transaction cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.utils import formatdate

from p2preg.sip.headers import HeaderError, Via, parse_name_addr, parse_via, split_list
from p2preg.sip.message import Headers

SERVER = "p2preg"


@dataclass(frozen=True, slots=True)
class Reply:
    """A final response decided by the registrar, before it is bound to a request."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Source:
    """Where a request came from: the packet's address and our transport."""

    host: str
    port: int
    transport: str = "UDP"


_date_cache: tuple[int, str] = (-1, "")


def http_date(now: float) -> str:
    """RFC 3261 §20.17 Date (RFC 1123 form, GMT), cached per second."""
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, usegmt=True))
    return _date_cache[1]


def to_tag(headers: Headers) -> str:
    vias = headers.get_all("via")
    text = "\x00".join(
        (
            headers.get("call-id") or "",
            headers.get("from") or "",
            headers.get("cseq") or "",
            vias[0] if vias else "",
        )
    )
    return hashlib.blake2s(text.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _top_via_for_response(value: str, source: Source | None, via: Via | None) -> str:
    """RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` on the top Via value."""
    if source is None:
        return value
    if via is None:
        try:
            via = parse_via(value)
        except HeaderError:
            return value  # unparseable: echo it; the transport replies to the packet source
    if via.has_rport:
        dropped: tuple[str, ...] = ("rport", "received")
        added = f";received={source.host};rport={source.port}"
    elif _strip_brackets(via.host).lower() != source.host.lower():
        dropped = ("received",)
        added = f";received={source.host}"
    else:
        return value
    out = [f"{via.protocol}/{via.transport} {via.sent_by}"]
    for k, v in via.params:
        if k not in dropped:
            out.append(";" + k if v is None else f";{k}={v}")
    out.append(added)
    return "".join(out)


def response_destination(
    headers: Headers, source: Source, top_via: Via | None = None
) -> tuple[str, int]:
    """Where an unreliable-transport response goes (RFC 3261 §18.2.2 with RFC 3581).

    With ``rport`` the packet's source port; otherwise the sent-by port (default 5060)
    at the packet's source address, which is the ``received`` we add. Streams reply on
    the connection and do not need this.
    """
    via = top_via
    if via is None:
        vias = headers.get_all("via")
        if not vias:
            return source.host, source.port
        try:
            via = parse_via(split_list(vias[0])[0])
        except HeaderError:
            return source.host, source.port
    if via.has_rport:
        return source.host, source.port
    maddr = None
    for key, value in via.params:
        if key == "maddr":
            maddr = value
    if maddr:
        return _strip_brackets(maddr), via.port or 5060
    return source.host, via.port or 5060


def build_response(
    headers: Headers,
    status: int,
    reason: str,
    extra: tuple[tuple[str, str], ...] = (),
    *,
    source: Source | None = None,
    now: float | None = None,
    top_via: Via | None = None,
    to_has_tag: bool | None = None,
) -> bytes:
    """Serialize a body-less response to a request with these header fields.

    ``top_via`` and ``to_has_tag`` save re-parsing what the caller already parsed."""
    lines = [f"SIP/2.0 {status} {reason}"]
    first = True
    for value in headers.values("via"):
        if not value:
            continue
        if first:
            value = _top_via_for_response(value, source, top_via)
            first = False
        lines.append(f"Via: {value}")
    from_value = headers.get("from")
    if from_value is not None:
        lines.append(f"From: {from_value}")
    to_value = headers.get("to")
    if to_value is not None:
        if status > 100:
            if to_has_tag is None:
                try:
                    to_has_tag = parse_name_addr(to_value).tag is not None
                except HeaderError:
                    to_has_tag = True  # malformed To: echo it as it came
            if not to_has_tag:
                to_value = f"{to_value};tag={to_tag(headers)}"
        lines.append(f"To: {to_value}")
    call_id = headers.get("call-id")
    if call_id is not None:
        lines.append(f"Call-ID: {call_id}")
    cseq = headers.get("cseq")
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    for name, value in extra:
        lines.append(f"{name}: {value}")
    if now is not None:
        for name, _ in extra:
            if name == "Date":
                break
        else:
            lines.append("Date: " + http_date(now))
    lines.append(f"Server: {SERVER}")
    lines.append("Content-Length: 0")
    lines.append("")
    lines.append("")
    text = "\r\n".join(lines)
    if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
        # An echoed value held a bare CR or LF: never let it split our header lines.
        text = "\r\n".join(line.replace("\r", " ").replace("\n", " ") for line in lines)
    return text.encode("utf-8", "surrogateescape")
