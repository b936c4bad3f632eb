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

from p2preg.sip.binding import Binding, binding_key
from p2preg.sip.headers import (
    STAR,
    HeaderError,
    NameAddr,
    parse_delta_seconds,
    parse_qvalue,
)
from p2preg.sip.message import SipParseError, SipRequest
from p2preg.sip.register_op import (
    INVALID_CSEQ,
    TOO_MANY,
    BindingChange,
    RegisterOp,
    apply_register,
    ordered,
)
from p2preg.sip.responses import Reply, Source, http_date
from p2preg.sip.uri import (
    SipUri,
    aor_resource_name,
    canonical_aor,
    canonical_uri_key,
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


def register_op(
    plan: RegisterPlan, config: RegistrarConfig, source: Source, op_id: int = 0
) -> RegisterOp:
    """What the owner of the AOR needs to apply ``plan`` (steps 6-8, ``register_op``);
    ``op_id`` numbers the SIP transaction (see ``RegisterOp``)."""
    changes = tuple(
        BindingChange(u.key, u.contact.uri_text, u.expires, u.q, u.instance, u.reg_id, u.params)
        for u in plan.updates
    )
    return RegisterOp(
        op_id=op_id,
        aor=plan.aor,
        call_id=plan.call_id,
        cseq=plan.cseq,
        wildcard=plan.wildcard,
        changes=changes,
        path=plan.path,
        user_agent=plan.user_agent,
        source_host=source.host,
        source_port=source.port,
        transport=source.transport.upper(),
        max_contacts=config.max_contacts,
        max_expires=config.max_expires,
        evict=config.max_contacts_mode == "evict",
    )


def register_reply(
    plan: RegisterPlan,
    status: int,
    bindings: Iterable[Binding],
    now: float,
    config: RegistrarConfig,
) -> Reply:
    """The final response to a REGISTER the owner applied (200) or refused."""
    if status == 200:
        return _ok(plan, bindings, now)
    if status == TOO_MANY[0]:
        return Reply(503, TOO_MANY[1], (("Retry-After", str(config.retry_after)),))
    return _bad(INVALID_CSEQ[1])


def decide_register(
    request: SipRequest,
    plan: RegisterPlan,
    current: Iterable[Binding],
    now: float,
    config: RegistrarConfig,
    source: Source,
) -> RegisterDecision:
    """Steps 6-9 against the AOR's stored bindings (expired ones are ignored and purged): the
    owner's rules (``register_op.apply_register``) and the reply the front node makes."""
    outcome = apply_register(register_op(plan, config, source), current, now)
    return RegisterDecision(
        register_reply(plan, outcome.status, outcome.bindings, now, config),
        upserts=outcome.upserts,
        removals=outcome.removals,
        bindings=outcome.bindings,
    )


def _ok(plan: RegisterPlan, bindings: Iterable[Binding], now: float) -> Reply:
    headers: list[tuple[str, str]] = [("Contact", b.contact_value(now)) for b in ordered(bindings)]
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
    live = ordered(b for b in bindings if b.live(now))
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
