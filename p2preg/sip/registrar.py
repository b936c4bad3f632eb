"""Registrar and redirect-server rules as pure functions (REGISTRAR.md, RFC 3261 §10.3, §8.3).

REGISTER runs in two halves so the node can fetch the AOR's bindings in between:
:func:`plan_register` does everything that needs only the request (steps 1, 3-5) and
:func:`decide_register` applies it to the bindings the overlay returned (steps 6-9).
:func:`register` chains them for callers that already hold the bindings.
Lookups follow the same pattern with :func:`plan_lookup` / :func:`decide_lookup`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from p2preg.sip.binding import Binding, binding_key
from p2preg.sip.headers import (
    STAR,
    HeaderError,
    NameAddr,
    parse_delta_seconds,
    parse_qvalue,
)
from p2preg.sip.message import SipParseError, SipRequest
from p2preg.sip.responses import Reply, Source, http_date
from p2preg.sip.uri import (
    SipUri,
    Uri,
    UriError,
    aor_resource_name,
    canonical_aor,
    canonical_uri_key,
    parse_uri,
    uri_equal,
)

SUPPORTED_OPTIONS = ("path", "outbound")
ALLOWED_METHODS = (
    "REGISTER",
    "INVITE",
    "ACK",
    "CANCEL",
    "OPTIONS",
    "MESSAGE",
    "SUBSCRIBE",
    "REFER",
)
# Methods answered with a redirect (or 480/404) for the Request-URI's AOR.
LOOKUP_METHODS = frozenset({"INVITE", "OPTIONS", "MESSAGE", "SUBSCRIBE", "REFER"})
# Methods RFC 3261 and its extensions define that we do not serve: 405, not 501.
KNOWN_METHODS = frozenset({*ALLOWED_METHODS, "BYE", "PRACK", "UPDATE", "INFO", "NOTIFY", "PUBLISH"})
ALLOW_HEADER = ("Allow", ", ".join(ALLOWED_METHODS))


@dataclass(frozen=True, slots=True)
class RegistrarConfig:
    domains: tuple[str, ...] = ()  # empty: serve any domain
    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 86400
    min_expires_mode: str = "clamp"  # "clamp" (grant min_expires, as Kamailio does) or "423"
    max_contacts: int = 10
    max_contacts_mode: str = "503"  # "503" or "evict" (drop the oldest binding)
    retry_after: int = 5
    _domain_set: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.min_expires_mode not in ("423", "clamp"):
            raise ValueError("min_expires_mode must be '423' or 'clamp'")
        if self.max_contacts_mode not in ("503", "evict"):
            raise ValueError("max_contacts_mode must be '503' or 'evict'")
        if not 0 <= self.min_expires <= self.max_expires:
            raise ValueError("need 0 <= min_expires <= max_expires")
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError("default_expires must lie within [min_expires, max_expires]")
        if self.max_contacts < 1 or self.retry_after < 0:
            raise ValueError("max_contacts must be positive and retry_after non-negative")
        object.__setattr__(self, "_domain_set", frozenset(d.lower() for d in self.domains))

    def serves(self, host: str) -> bool:
        return not self._domain_set or host.lower() in self._domain_set


def _bad(reason: str) -> Reply:
    return Reply(400, reason)


# --- REGISTER ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContactUpdate:
    contact: NameAddr
    key: str
    expires: int
    q: str | None
    instance: str | None
    reg_id: int | None
    params: tuple[tuple[str, str | None], ...]  # header params minus expires and q


@dataclass(frozen=True, slots=True)
class RegisterPlan:
    aor: str  # canonical, with scheme
    resource_name: str  # WIRE.md §5 resource name
    call_id: str
    cseq: int
    wildcard: bool
    updates: tuple[ContactUpdate, ...]  # empty and not wildcard: a query
    path: tuple[str, ...]
    user_agent: str | None
    supported: frozenset[str]

    @property
    def is_query(self) -> bool:
        return not self.wildcard and not self.updates


@dataclass(frozen=True, slots=True)
class RegisterDecision:
    reply: Reply
    upserts: tuple[Binding, ...] = ()
    removals: tuple[str, ...] = ()  # binding keys to delete
    bindings: tuple[Binding, ...] = ()  # the AOR's live bindings afterwards

    @property
    def changed(self) -> bool:
        return bool(self.upserts or self.removals)


def plan_register(request: SipRequest, config: RegistrarConfig) -> RegisterPlan | Reply:
    """Steps 1 and 3-5: everything decided from the request alone.

    Raises SipParseError for malformed mandatory headers (400)."""
    ruri = request.request_uri()
    if not isinstance(ruri, SipUri):
        return Reply(416, "Unsupported URI Scheme")
    # An IP-literal Request-URI names the registrar, not a domain: the AOR decides.
    if not ruri.host_is_ip and not config.serves(ruri.host):
        return Reply(403, "Domain not served")
    to_uri = request.to().uri
    if not isinstance(to_uri, SipUri):
        return _bad("To is not a SIP or SIPS AOR")
    if not config.serves(to_uri.host):
        return Reply(404, "Not Found")
    if not ruri.host_is_ip and to_uri.host != ruri.host:
        return Reply(404, "Not Found")
    aor = canonical_aor(to_uri)
    call_id = request.call_id()
    cseq = request.cseq().number
    contacts = request.contacts()
    header_expires = request.expires()
    path = tuple(request.headers.values("path"))
    supported = frozenset(t.lower() for t in request.option_tags("supported"))
    user_agent = request.headers.get("user-agent")
    if contacts == STAR:
        if header_expires != 0:
            return _bad("Invalid wildcard Contact: needs Expires: 0")
        return RegisterPlan(
            aor, aor_resource_name(aor), call_id, cseq, True, (), path, user_agent, supported
        )
    assert not isinstance(contacts, str)
    updates: list[ContactUpdate] = []
    for contact in contacts:
        update = _contact_update(contact, header_expires, config)
        if isinstance(update, Reply):
            return update
        updates.append(update)
    return RegisterPlan(
        aor,
        aor_resource_name(aor),
        call_id,
        cseq,
        False,
        tuple(updates),
        path,
        user_agent,
        supported,
    )


def _contact_update(
    contact: NameAddr, header_expires: int | None, config: RegistrarConfig
) -> ContactUpdate | Reply:
    expires_text = contact.param("expires")
    if expires_text is not None:
        try:
            expires = parse_delta_seconds(expires_text)
        except HeaderError:
            return _bad("Invalid expires parameter")
    elif header_expires is not None:
        expires = header_expires
    else:
        expires = config.default_expires
    expires = min(expires, config.max_expires)
    if 0 < expires < config.min_expires:
        if config.min_expires_mode == "423":
            return Reply(423, "Interval Too Brief", (("Min-Expires", str(config.min_expires)),))
        expires = config.min_expires
    q = contact.param("q")
    if q is not None:
        try:
            parse_qvalue(q)
        except HeaderError:
            return _bad("Invalid q value")
    instance = contact.param("+sip.instance")
    reg_id_text = contact.param("reg-id")
    reg_id: int | None = None
    if reg_id_text is not None:
        if not reg_id_text.isascii() or not reg_id_text.isdigit() or len(reg_id_text) > 10:
            return _bad("Invalid reg-id")
        reg_id = int(reg_id_text)
    key = binding_key(canonical_uri_key(contact.uri), instance or None, reg_id)
    params = tuple((k, v) for k, v in contact.params if k not in ("expires", "q"))
    return ContactUpdate(contact, key, expires, q, instance or None, reg_id, params)


@lru_cache(maxsize=8192)
def _stored_uri(text: str) -> Uri | None:
    try:
        return parse_uri(text)
    except UriError:
        return None


def _matches(update: ContactUpdate, binding: Binding) -> bool:
    if binding.key == update.key:
        return True
    # RFC 5626 bindings are matched on instance and reg-id only, which the key holds.
    if update.reg_id is not None and update.instance is not None:
        return False
    if binding.instance is not None and binding.reg_id is not None:
        return False
    stored = _stored_uri(binding.uri)
    return stored is not None and uri_equal(stored, update.contact.uri)


def _ordered(bindings: Iterable[Binding]) -> list[Binding]:
    # Highest q first; among equals the most recently refreshed first.
    return sorted(bindings, key=lambda b: (-b.q_value, -b.last_modified, b.key))


def decide_register(
    request: SipRequest,
    plan: RegisterPlan,
    current: Iterable[Binding],
    now: float,
    config: RegistrarConfig,
    source: Source,
) -> RegisterDecision:
    """Steps 6-9 against the AOR's stored bindings (expired ones are ignored and purged)."""
    live: dict[str, Binding] = {}
    expired: list[str] = []
    for b in current:
        if b.live(now):
            live[b.key] = b
        else:
            expired.append(b.key)

    if plan.is_query:
        return RegisterDecision(
            _ok(plan, live.values(), now), bindings=tuple(_ordered(live.values()))
        )

    if plan.wildcard:
        for b in live.values():
            if b.call_id == plan.call_id and plan.cseq <= b.cseq:
                return RegisterDecision(_bad("Invalid CSeq"), bindings=tuple(live.values()))
        removals = tuple(sorted({*live, *expired}))
        return RegisterDecision(_ok(plan, (), now), removals=removals)

    after = dict(live)
    upserts: dict[str, Binding] = {}
    removals_set: set[str] = set()
    for update in plan.updates:
        matched = [b for b in live.values() if _matches(update, b)]
        for b in matched:
            if b.call_id == plan.call_id and plan.cseq <= b.cseq:
                return RegisterDecision(_bad("Invalid CSeq"), bindings=tuple(live.values()))
        for b in matched:
            after.pop(b.key, None)
            upserts.pop(b.key, None)
            removals_set.add(b.key)
        if update.expires == 0:
            # A removal of a binding this same request added earlier also drops it.
            if update.key in upserts:
                del upserts[update.key]
                after.pop(update.key, None)
            continue
        binding = Binding(
            key=update.key,
            aor=plan.aor,
            uri=update.contact.uri_text,
            params=update.params,
            expires_at=now + update.expires,
            q=update.q,
            call_id=plan.call_id,
            cseq=plan.cseq,
            source_host=source.host,
            source_port=source.port,
            transport=source.transport.upper(),
            path=plan.path,
            instance=update.instance,
            reg_id=update.reg_id,
            user_agent=plan.user_agent,
            last_modified=now,
        )
        after[update.key] = binding
        upserts[update.key] = binding
        removals_set.discard(update.key)

    if len(after) > config.max_contacts:
        if config.max_contacts_mode == "evict":
            oldest = sorted(
                (b for k, b in after.items() if k not in upserts), key=lambda b: b.last_modified
            )
            for b in oldest:
                if len(after) <= config.max_contacts:
                    break
                del after[b.key]
                removals_set.add(b.key)
        if len(after) > config.max_contacts:
            return RegisterDecision(
                Reply(
                    503,
                    "Too Many Registered Contacts",
                    (("Retry-After", str(config.retry_after)),),
                ),
                bindings=tuple(live.values()),
            )

    if upserts or removals_set:
        removals_set.update(k for k in expired if k not in upserts)
    return RegisterDecision(
        _ok(plan, after.values(), now),
        upserts=tuple(upserts.values()),
        removals=tuple(sorted(removals_set)),
        bindings=tuple(_ordered(after.values())),
    )


def _ok(plan: RegisterPlan, bindings: Iterable[Binding], now: float) -> Reply:
    headers: list[tuple[str, str]] = [("Contact", b.contact_value(now)) for b in _ordered(bindings)]
    if plan.path and "path" in plan.supported:
        headers.extend(("Path", p) for p in plan.path)
    if "outbound" in plan.supported and any(u.reg_id is not None for u in plan.updates):
        headers.append(("Require", "outbound"))
    headers.append(("Date", http_date(now)))
    return Reply(200, "OK", tuple(headers))


def register(
    request: SipRequest,
    current: Iterable[Binding],
    now: float,
    config: RegistrarConfig,
    source: Source,
) -> RegisterDecision:
    """Both halves at once; malformed mandatory headers become a 400 decision."""
    try:
        plan = plan_register(request, config)
    except SipParseError as exc:
        return RegisterDecision(Reply(exc.status, exc.reason))
    if isinstance(plan, Reply):
        return RegisterDecision(plan)
    return decide_register(request, plan, current, now, config, source)


# --- lookups ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LookupPlan:
    aor: str
    resource_name: str


def plan_lookup(request: SipRequest, config: RegistrarConfig) -> LookupPlan | Reply:
    """Redirect-server checks before the fetch (REGISTRAR.md "Lookups")."""
    ruri = request.request_uri()
    if not isinstance(ruri, SipUri):
        return Reply(416, "Unsupported URI Scheme")
    if ruri.user is None:
        return Reply(404, "Not Found")
    max_forwards = request.max_forwards()
    if max_forwards == 0:
        return Reply(483, "Too Many Hops")
    if not config.serves(ruri.host):
        return Reply(404, "Not Found")
    aor = canonical_aor(ruri)
    return LookupPlan(aor, aor_resource_name(aor))


def decide_lookup(bindings: Iterable[Binding], now: float) -> Reply:
    """302 with every live Contact (highest q first), or 480 when none is live."""
    live = _ordered(b for b in bindings if b.live(now))
    if not live:
        return Reply(480, "Temporarily Unavailable")
    headers = tuple(("Contact", b.contact_value(now)) for b in live)
    return Reply(302, "Moved Temporarily", headers)


def options_reply() -> Reply:
    """OPTIONS addressed to the node itself: capabilities, usable as a health ping."""
    return Reply(
        200,
        "OK",
        (
            ALLOW_HEADER,
            ("Accept", "application/sdp"),
            ("Supported", ", ".join(SUPPORTED_OPTIONS)),
        ),
    )
