"""SIP, SIPS and tel URIs: parsing, RFC 3261 §19.1.4 comparison, AOR canonical form.

Validation uses anchored character-class regexes only (the one nested repetition, in
the fast path, starts each round with a ';' its inner class excludes), so matching is
linear in the input whatever a peer sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import unquote_to_bytes

Param = tuple[str, str | None]


class UriError(ValueError):
    """The text is not a URI we can parse; the message names the part at fault."""


_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESC = r"%[0-9A-Fa-f]{2}"
_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESC})+")
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESC})*")
_PARAM_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESC})+")
_HEADER_NAME_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})+")
_HEADER_VALUE_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})*")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# Hostnames are checked loosely ('_' is common in the wild); IPv6 references only for
# the characters they may hold, so RFC 5118's three-colon form is tolerated.
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9\-_.]+")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_IPV4_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_DIGITS_RE = re.compile(r"[0-9]+")
# [user "@"] hostname [":" port] *(";" param), with characters for which the general
# parser's splitting at the first "@", "?" and ";" cannot go another way: no "@", "?",
# ":" or "%" in the user, no "@" or "?" after it.
_SIP_FAST_RE = re.compile(
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,]+)@)?([A-Za-z0-9\-_.]+)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$=]*)*)"
)
_TEL_RE = re.compile(r"[0-9A-Fa-f*#+\-.()pPwW]+")
_TEL_VISUAL = str.maketrans("", "", "-.()")
_ESCAPE_RE = re.compile(_ESC)

# Characters that never need escaping in each component; a %HH naming one of them is
# the same character (RFC 3261 §19.1.4), anything else stays escaped.
_USER_PLAIN = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/"
)
_PARAM_PLAIN = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()[]/:&+$"
)
_HEADER_PLAIN = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()[]/?:+$"
)

DEFAULT_PORTS = {"sip": 5060, "sips": 5061}
# §19.1.4: these parameters must match if present in either URI.
_STRICT_PARAMS = ("user", "ttl", "method", "maddr", "transport")
# Values compared case-sensitively; every other parameter value is a token or host.
_CASE_SENSITIVE_PARAMS = frozenset({"method"})


@dataclass(frozen=True, slots=True)
class SipUri:
    scheme: str  # "sip" or "sips", lower case
    user: str | None
    password: str | None
    host: str  # lower case; IPv6 references keep their brackets
    port: int | None
    params: tuple[Param, ...] = ()  # names lower case, values as written
    headers: tuple[tuple[str, str], ...] = ()
    raw: str = field(default="", compare=False)

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value if value is not None else ""
        return None

    def has_param(self, name: str) -> bool:
        return any(key == name for key, _ in self.params)

    @property
    def host_is_ip(self) -> bool:
        first = self.host[:1]
        if first == "[":
            return True
        # A host not starting with a digit cannot be an IPv4 address.
        return first.isdigit() and _IPV4_RE.fullmatch(self.host) is not None

    def __str__(self) -> str:
        return self.raw or format_sip_uri(self)


@dataclass(frozen=True, slots=True)
class TelUri:
    number: str
    params: tuple[Param, ...] = ()
    raw: str = field(default="", compare=False)

    scheme = "tel"

    def __str__(self) -> str:
        return self.raw or "tel:" + self.number + _format_params(self.params)


@dataclass(frozen=True, slots=True)
class OtherUri:
    """Any other absolute URI: kept opaque (RFC 3261 §19.1.1 does not define them)."""

    scheme: str
    rest: str
    raw: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.raw or f"{self.scheme}:{self.rest}"


Uri = SipUri | TelUri | OtherUri


def parse_uri(text: str) -> Uri:
    """Parse a URI; raises :class:`UriError`.

    Results are immutable, so short parameterless texts go through a bounded cache: a
    REGISTER names the same AOR in To and From, and the Request-URI is the same domain on
    every request. Contacts (parameters, one per device) would only churn it.
    """
    if len(text) <= _CACHED_URI_LENGTH and ";" not in text:
        return _parse_uri_cached(text)
    return _parse_uri(text)


def _parse_uri(text: str) -> Uri:
    if text.startswith("sip:"):
        return _parse_sip("sip", text[4:], text)
    if text.startswith("sips:"):
        return _parse_sip("sips", text[5:], text)
    colon = text.find(":")
    if colon <= 0 or _SCHEME_RE.fullmatch(text, 0, colon) is None:
        raise UriError("malformed URI scheme")
    scheme = text[:colon].lower()
    rest = text[colon + 1 :]
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest, text)
    if scheme == "tel":
        return _parse_tel(rest, text)
    if not rest or any(c in rest for c in ' \t\r\n<>"'):
        raise UriError("malformed URI")
    return OtherUri(scheme, rest, text)


# Failures are not cached (lru_cache does not keep exceptions): a bad URI is re-parsed.
_CACHED_URI_LENGTH = 160
_parse_uri_cached = lru_cache(maxsize=4096)(_parse_uri)


def parse_sip_uri(text: str) -> SipUri:
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        raise UriError("not a SIP URI")
    return uri


def _parse_sip(scheme: str, rest: str, raw: str) -> SipUri:
    m = _SIP_FAST_RE.fullmatch(rest)
    if m is not None:
        # The common shape; _parse_sip_general gives the same result for it (and the
        # same error for a bad parameter), and takes every other text.
        fast_user, fast_host, port_text, fast_params = m.groups()
        fast_port = int(port_text) if port_text is not None else None
        if fast_port is None or fast_port <= 65535:
            params = _parse_uri_params(fast_params[1:]) if fast_params else ()
            return SipUri(scheme, fast_user, None, fast_host.lower(), fast_port, params, (), raw)
    return _parse_sip_general(scheme, rest, raw)


def _parse_sip_general(scheme: str, rest: str, raw: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        pcolon = userinfo.find(":")
        if pcolon >= 0:
            password = userinfo[pcolon + 1 :]
            userinfo = userinfo[:pcolon]
            if _PASSWORD_RE.fullmatch(password) is None:
                raise UriError("malformed URI password")
        if _USER_RE.fullmatch(userinfo) is None:
            raise UriError("malformed URI user part")
        user = userinfo
    qmark = rest.find("?")
    headers_text: str | None = None
    if qmark >= 0:
        headers_text = rest[qmark + 1 :]
        rest = rest[:qmark]
    semi = rest.find(";")
    params_text: str | None = None
    if semi >= 0:
        params_text = rest[semi + 1 :]
        rest = rest[:semi]
    host, port = _parse_hostport(rest)
    params = _parse_uri_params(params_text) if params_text is not None else ()
    headers = _parse_uri_headers(headers_text) if headers_text is not None else ()
    return SipUri(scheme, user, password, host, port, params, headers, raw)


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise UriError("unterminated IPv6 reference")
        host = text[: close + 1]
        if _IPV6_RE.fullmatch(host) is None or ":" not in host:
            raise UriError("malformed IPv6 reference")
        port_text = text[close + 1 :]
        if port_text:
            if port_text[0] != ":":
                raise UriError("garbage after IPv6 reference")
            return host.lower(), _parse_port(port_text[1:])
        return host.lower(), None
    host, colon, port_text = text.partition(":")
    if not host or _HOSTNAME_RE.fullmatch(host) is None:
        raise UriError("malformed URI host")
    return host.lower(), (_parse_port(port_text) if colon else None)


def _parse_port(text: str) -> int:
    if _DIGITS_RE.fullmatch(text) is None or len(text) > 5:
        raise UriError("malformed URI port")
    port = int(text)
    if port > 65535:
        raise UriError("URI port out of range")
    return port


def _parse_uri_params(text: str) -> tuple[Param, ...]:
    out: list[Param] = []
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if _PARAM_RE.fullmatch(name) is None:
            raise UriError("malformed URI parameter")
        if eq:
            if _PARAM_RE.fullmatch(value) is None:
                raise UriError("malformed URI parameter value")
            out.append((name.lower(), value))
        else:
            out.append((name.lower(), None))
    return tuple(out)


def _parse_uri_headers(text: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not eq or _HEADER_NAME_RE.fullmatch(name) is None:
            raise UriError("malformed URI header")
        if _HEADER_VALUE_RE.fullmatch(value) is None:
            raise UriError("malformed URI header value")
        out.append((name, value))
    return tuple(out)


def _parse_tel(rest: str, raw: str) -> TelUri:
    number, _, params_text = rest.partition(";")
    if _TEL_RE.fullmatch(number) is None:
        raise UriError("malformed tel number")
    params: tuple[Param, ...] = ()
    if params_text:
        params = _parse_uri_params(params_text)
    return TelUri(number, params, raw)


def _format_params(params: tuple[Param, ...]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def format_sip_uri(uri: SipUri) -> str:
    parts = [uri.scheme, ":"]
    if uri.user is not None:
        parts.append(uri.user)
        if uri.password is not None:
            parts += [":", uri.password]
        parts.append("@")
    parts.append(uri.host)
    if uri.port is not None:
        parts.append(f":{uri.port}")
    parts.append(_format_params(uri.params))
    if uri.headers:
        parts.append("?" + "&".join(f"{k}={v}" for k, v in uri.headers))
    return "".join(parts)


# --- escapes -------------------------------------------------------------------------


def _unescape(text: str) -> bytes:
    if "%" not in text:
        return text.encode("utf-8", "surrogateescape")
    return unquote_to_bytes(text)


def normalize_escapes(text: str, plain: frozenset[str] = _USER_PLAIN) -> str:
    """Decode %HH that names a character legal unescaped here; upper-case the rest."""
    if "%" not in text:
        return text

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group()[1:], 16))
        return char if char in plain else match.group().upper()

    return _ESCAPE_RE.sub(fix, text)


# --- comparison (RFC 3261 §19.1.4) ----------------------------------------------------


def _param_value_key(name: str, value: str | None) -> bytes | None:
    if value is None:
        return None
    raw = _unescape(value)
    return raw if name in _CASE_SENSITIVE_PARAMS else raw.lower()


def uri_equal(a: Uri, b: Uri) -> bool:
    if isinstance(a, SipUri) and isinstance(b, SipUri):
        return _sip_equal(a, b)
    if isinstance(a, TelUri) and isinstance(b, TelUri):
        return _tel_key(a) == _tel_key(b)
    if isinstance(a, OtherUri) and isinstance(b, OtherUri):
        return a.scheme == b.scheme and a.rest == b.rest
    return False


def _sip_equal(a: SipUri, b: SipUri) -> bool:
    if a.scheme != b.scheme or a.host != b.host or a.port != b.port:
        return False
    if (a.user is None) != (b.user is None) or (a.password is None) != (b.password is None):
        return False
    if a.user is not None and b.user is not None and _unescape(a.user) != _unescape(b.user):
        return False
    if (
        a.password is not None
        and b.password is not None
        and _unescape(a.password) != _unescape(b.password)
    ):
        return False
    pa = {_unescape(k).lower(): _param_value_key(k, v) for k, v in a.params}
    pb = {_unescape(k).lower(): _param_value_key(k, v) for k, v in b.params}
    for name in _STRICT_PARAMS:
        key = name.encode()
        if (key in pa or key in pb) and (key not in pa or key not in pb or pa[key] != pb[key]):
            return False
    for key, value in pa.items():
        if key in pb and pb[key] != value:
            return False
    return _headers_key(a) == _headers_key(b)


def _headers_key(uri: SipUri) -> frozenset[tuple[bytes, bytes]]:
    return frozenset((_unescape(k).lower(), _unescape(v)) for k, v in uri.headers)


def _tel_key(uri: TelUri) -> tuple[str, frozenset[tuple[str, str | None]]]:
    number = uri.number.translate(_TEL_VISUAL).lower()
    params = frozenset((k, v.lower() if v is not None else None) for k, v in uri.params)
    return number, params


# --- canonical forms -----------------------------------------------------------------


def canonical_aor(uri: SipUri) -> str:
    """RFC 3261 §10.3 step 5 AOR: scheme, user (case kept), host; no port if default,
    no password, parameters or headers; escapes normalised."""
    parts = [uri.scheme, ":"]
    if uri.user is not None:
        parts += [normalize_escapes(uri.user), "@"]
    parts.append(uri.host)
    if uri.port is not None and uri.port != DEFAULT_PORTS[uri.scheme]:
        parts.append(f":{uri.port}")
    return "".join(parts)


def aor_resource_name(aor: str) -> str:
    """WIRE.md §5 resource name: the canonical AOR without its scheme."""
    _, colon, rest = aor.partition(":")
    return rest if colon else aor


def _param_sort_key(param: Param) -> tuple[str, str]:
    return param[0], param[1] or ""


def canonical_uri_key(uri: Uri) -> str:
    """A string naming a Contact URI for the binding dictionary.

    Two URIs equal under §19.1.4 whose parameters are identical get the same key; the
    registrar itself matches bindings with :func:`uri_equal`, so the key only has to
    be stable, not a full equivalence class.
    """
    if isinstance(uri, SipUri):
        parts = [uri.scheme, ":"]
        if uri.user is not None:
            parts.append(normalize_escapes(uri.user))
            if uri.password is not None:
                parts += [":", normalize_escapes(uri.password)]
            parts.append("@")
        parts.append(uri.host)
        if uri.port is not None:
            parts.append(f":{uri.port}")
        if uri.params:
            params: list[Param] = []
            for k, v in uri.params:
                name = normalize_escapes(k, _PARAM_PLAIN).lower() if "%" in k else k.lower()
                if v is not None:
                    if "%" in v:
                        v = normalize_escapes(v, _PARAM_PLAIN)
                    if k not in _CASE_SENSITIVE_PARAMS:
                        v = v.lower()
                params.append((name, v))
            if len(params) > 1:
                params.sort(key=_param_sort_key)
            for k, v in params:
                parts.append(";" + k if v is None else f";{k}={v}")
        if uri.headers:
            hdrs = sorted(
                (normalize_escapes(k, _HEADER_PLAIN).lower(), normalize_escapes(v, _HEADER_PLAIN))
                for k, v in uri.headers
            )
            parts.append("?" + "&".join(f"{k}={v}" for k, v in hdrs))
        return "".join(parts)
    if isinstance(uri, TelUri):
        number, _ = _tel_key(uri)
        return "tel:" + number + _format_params(tuple(sorted(uri.params, key=lambda p: p[0])))
    return f"{uri.scheme}:{uri.rest}"
