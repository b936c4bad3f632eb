"""Typed SIP header values: Via, name-addr/addr-spec (From, To, Contact, Path), CSeq,
generic parameters, comma-separated lists and quoted strings (RFC 3261 §25.1, §20).

Every parser takes the header value after unfolding (folded lines are joined with a
single space) and raises :class:`HeaderError` naming what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from p2preg.sip.uri import Param, SipUri, Uri, UriError, parse_uri


class HeaderError(ValueError):
    pass


_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# gen-value = token / host / quoted-string; host adds ':' and IPv6 brackets.
_GEN_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
_HOST_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+")
_DIGITS_RE = re.compile(r"[0-9]+")
_WS = " \t"
CSEQ_LIMIT = 2**31  # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31.
DELTA_SECONDS_LIMIT = 2**32 - 1


def is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def read_quoted(s: str, i: int) -> tuple[str, int]:
    """Read the quoted-string starting at s[i] == '"'; return (raw text incl. quotes, end)."""
    n = len(s)
    j = i + 1
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return s[i : j + 1], j + 1
        j += 1
    raise HeaderError("unterminated quoted string")


def unquote(text: str) -> str:
    """The content of a quoted-string, quoted-pairs resolved; other text unchanged."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    inner = text[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while i < len(inner):
        c = inner[i]
        if c == "\\" and i + 1 < len(inner):
            out.append(inner[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_list(value: str) -> list[str]:
    """Split a header value on commas that are outside quoted strings and <...>."""
    if '"' not in value and "<" not in value:
        return [part.strip(_WS) for part in value.split(",")]
    out: list[str] = []
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == '"':
            try:
                _, i = read_quoted(value, i)
            except HeaderError:
                i = n  # an unterminated quote swallows the rest; the item parser reports it
            continue
        if c == "<":
            close = value.find(">", i)
            i = n if close < 0 else close + 1
            continue
        if c == ",":
            out.append(value[start:i].strip(_WS))
            start = i + 1
        i += 1
    out.append(value[start:].strip(_WS))
    return out


def parse_params(s: str, i: int = 0) -> tuple[Param, ...]:
    """Generic header parameters from s[i:] to the end: *( SEMI token [EQUAL gen-value] )."""
    rest = s[i:] if i else s
    if not rest:
        return ()
    if rest[0] == ";" and '"' not in rest and " " not in rest and "\t" not in rest:
        # Fast path for the usual compact form; the general scanner below agrees with it.
        fast: list[Param] = []
        for item in rest[1:].split(";"):
            name, eq, value = item.partition("=")
            if _TOKEN_RE.fullmatch(name) is None:
                raise HeaderError("empty or malformed parameter name")
            if eq:
                if _GEN_VALUE_RE.fullmatch(value) is None:
                    raise HeaderError(f"malformed value for parameter {name.lower()}")
                fast.append((name.lower(), value))
            else:
                fast.append((name.lower(), None))
        return tuple(fast)
    out: list[Param] = []
    n = len(s)
    while True:
        i = _skip_ws(s, i)
        if i >= n:
            return tuple(out)
        if s[i] != ";":
            raise HeaderError("unexpected text before parameter")
        i = _skip_ws(s, i + 1)
        m = _TOKEN_RE.match(s, i)
        if m is None:
            raise HeaderError("empty or malformed parameter name")
        name = m.group().lower()
        i = _skip_ws(s, m.end())
        if i < n and s[i] == "=":
            i = _skip_ws(s, i + 1)
            if i < n and s[i] == '"':
                value, i = read_quoted(s, i)
            else:
                vm = _GEN_VALUE_RE.match(s, i)
                if vm is None:
                    raise HeaderError(f"malformed value for parameter {name}")
                value = vm.group()
                i = vm.end()
            out.append((name, value))
        else:
            out.append((name, None))


def get_param(params: tuple[Param, ...], name: str) -> str | None:
    """The value of a parameter ('' for a flag), None when absent."""
    for key, value in params:
        if key == name:
            return "" if value is None else value
    return None


def format_params(params: tuple[Param, ...]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


# --- Via --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Via:
    protocol: str  # "SIP/2.0"
    transport: str  # upper case
    host: str  # as written (IPv6 with brackets)
    port: int | None
    params: tuple[Param, ...]

    @property
    def branch(self) -> str | None:
        return get_param(self.params, "branch")

    @property
    def has_rport(self) -> bool:
        return get_param(self.params, "rport") is not None

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def bare_host(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host


_VIA_FAST_RE = re.compile(
    r"SIP/2\.0/([A-Za-z0-9\-.!%*_+`'~]+) (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)(?::([0-9]{1,5}))?"
)


def parse_via(value: str) -> Via:
    m = _VIA_FAST_RE.match(value)
    if m is not None and (m.end() == len(value) or value[m.end()] == ";"):
        port_text = m.group(3)
        fast_port = int(port_text) if port_text is not None else None
        if fast_port is None or fast_port <= 65535:
            params = parse_params(value, m.end())
            return Via("SIP/2.0", m.group(1).upper(), m.group(2), fast_port, params)
    s = value
    n = len(s)
    i = _skip_ws(s, 0)
    parts: list[str] = []
    for k in range(3):
        m = _TOKEN_RE.match(s, i)
        if m is None:
            raise HeaderError("malformed Via protocol")
        parts.append(m.group())
        i = _skip_ws(s, m.end())
        if k < 2:
            if i >= n or s[i] != "/":
                raise HeaderError("malformed Via protocol")
            i = _skip_ws(s, i + 1)
    if parts[0].upper() != "SIP":
        raise HeaderError("Via protocol is not SIP")
    if i == 0 or s[i - 1] not in _WS:
        raise HeaderError("no space before Via sent-by")
    hm = _HOST_RE.match(s, i)
    if hm is None:
        raise HeaderError("malformed Via sent-by")
    host = hm.group()
    i = _skip_ws(s, hm.end())
    port: int | None = None
    if i < n and s[i] == ":":
        i = _skip_ws(s, i + 1)
        pm = _DIGITS_RE.match(s, i)
        if pm is None or len(pm.group()) > 5 or int(pm.group()) > 65535:
            raise HeaderError("malformed Via port")
        port = int(pm.group())
        i = pm.end()
    params = parse_params(s, i)
    return Via(f"SIP/{parts[1]}", parts[2].upper(), host, port, params)


# --- name-addr / addr-spec ---------------------------------------------------------------

_ENCLOSED_JUNK_RE = re.compile(r'[ \t<"]')
_BARE_JUNK_RE = re.compile(r'[?,<>"]')
_ADDR_SPEC_END_RE = re.compile(r"[ \t;]")


@dataclass(frozen=True, slots=True)
class NameAddr:
    display: str | None  # as written (quoted form keeps its quotes)
    uri_text: str
    uri: Uri
    params: tuple[Param, ...]

    @property
    def tag(self) -> str | None:
        return get_param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def __str__(self) -> str:
        head = f"{self.display} " if self.display else ""
        return f"{head}<{self.uri_text}>{format_params(self.params)}"


def parse_name_addr(value: str) -> NameAddr:
    """name-addr or addr-spec followed by header parameters (From, To, Contact, Path…)."""
    s = value.strip(_WS)
    n = len(s)
    display: str | None = None
    i = 0
    first = s[:1]
    if first == '"':
        display, i = read_quoted(s, 0)
        i = _skip_ws(s, i)
        if i >= n or s[i] != "<":
            raise HeaderError("display name without <URI>")
    elif first != "<":
        lt = s.find("<")
        if lt >= 0:
            words = s[:lt].split()
            # RFC 4475 §3.1.1.6: no LWS between a token display name and '<' is accepted.
            if not all(_TOKEN_RE.fullmatch(w) for w in words):
                raise HeaderError("display name is not a token or quoted string")
            display = " ".join(words) or None
            i = lt
    if i < n and s[i] == "<":
        gt = s.find(">", i)
        if gt < 0:
            raise HeaderError("missing '>'")
        uri_text = s[i + 1 : gt]
        if not uri_text or _ENCLOSED_JUNK_RE.search(uri_text) is not None:
            raise HeaderError("whitespace or junk inside <URI>")
        rest_start = gt + 1
    else:
        end = _ADDR_SPEC_END_RE.search(s, i)
        j = n if end is None else end.start()
        uri_text = s[i:j]
        if not uri_text:
            raise HeaderError("missing URI")
        if _BARE_JUNK_RE.search(uri_text) is not None:
            raise HeaderError("URI with '?' or ',' must be enclosed in <>")
        rest_start = j
    try:
        uri = parse_uri(uri_text)
    except UriError as exc:
        raise HeaderError(str(exc)) from None
    params = parse_params(s, rest_start)
    return NameAddr(display, uri_text, uri, params)


STAR = "*"


def parse_contacts(values: list[str]) -> list[NameAddr] | str:
    """All Contact header field values: the list of name-addrs, or STAR for ``*``."""
    items: list[str] = []
    for value in values:
        items.extend(split_list(value))
    if any(item == "*" for item in items):
        if len(items) != 1:
            raise HeaderError("'*' must be the only Contact")
        return STAR
    out: list[NameAddr] = []
    for item in items:
        if not item:
            raise HeaderError("empty Contact value")
        out.append(parse_name_addr(item))
    return out


# --- scalars ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str


def _is_digits(text: str) -> bool:
    """``[0-9]+``, without a regex call (str.isdigit alone also takes other scripts)."""
    return text.isascii() and text.isdigit()


# Methods every REGISTER and lookup names; anything else goes through the token check.
COMMON_METHODS = frozenset(
    {"REGISTER", "INVITE", "ACK", "CANCEL", "OPTIONS", "BYE", "MESSAGE", "SUBSCRIBE"}
)


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or not _is_digits(parts[0]):
        raise HeaderError("malformed CSeq")
    number_text, method = parts
    if len(number_text) > 12:
        raise HeaderError("CSeq number too large")
    number = int(number_text)
    if number >= CSEQ_LIMIT:
        raise HeaderError("CSeq number too large")
    if method not in COMMON_METHODS and not is_token(method):
        raise HeaderError("malformed CSeq method")
    return CSeq(number, method)


def parse_delta_seconds(value: str) -> int:
    """delta-seconds; values past 2**32-1 saturate (RFC 3261 §20.19 style)."""
    text = value.strip(_WS)
    if not _is_digits(text):
        raise HeaderError("not a number of seconds")
    if len(text) > 10:
        return DELTA_SECONDS_LIMIT
    return min(int(text), DELTA_SECONDS_LIMIT)


def parse_max_forwards(value: str) -> int:
    text = value.strip(_WS)
    if not _is_digits(text) or len(text) > 5 or int(text) > 255:
        raise HeaderError("Max-Forwards is not 0-255")
    return int(text)


def parse_qvalue(value: str) -> float:
    """qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )."""
    text = value
    head, _, frac = text.partition(".")
    if head not in ("0", "1") or len(frac) > 3 or (frac and _DIGITS_RE.fullmatch(frac) is None):
        raise HeaderError("malformed q value")
    if head == "1" and frac.strip("0"):
        raise HeaderError("q value above 1")
    return float(text) if frac else float(head)


def parse_option_tags(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        for item in split_list(value):
            if not item:
                continue
            if not is_token(item):
                raise HeaderError("malformed option tag")
            out.append(item)
    return out


def parse_call_id(value: str) -> str:
    text = value.strip(_WS)
    if not text or " " in text or "\t" in text:
        raise HeaderError("malformed Call-ID")
    return text


__all__ = [
    "COMMON_METHODS",
    "CSEQ_LIMIT",
    "STAR",
    "CSeq",
    "HeaderError",
    "NameAddr",
    "SipUri",
    "Via",
    "format_params",
    "get_param",
    "is_token",
    "parse_call_id",
    "parse_contacts",
    "parse_cseq",
    "parse_delta_seconds",
    "parse_max_forwards",
    "parse_name_addr",
    "parse_option_tags",
    "parse_params",
    "parse_qvalue",
    "parse_via",
    "quote",
    "read_quoted",
    "split_list",
    "unquote",
]
