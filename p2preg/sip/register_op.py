"""A REGISTER as the owner of its AOR applies it (RFC 3261 §10.3 steps 6-8), sans-I/O.

The front node parses and validates a REGISTER (steps 1-5, ``registrar.plan_register``) and
sends the peer responsible for the AOR one ``ApplyReq`` of the SIP-BINDING kind whose
operation is a :class:`RegisterOp`: what the rules need and nothing of the SIP message. The
owner decodes it and runs :func:`apply_register` on its own copy of the bindings, in the same
step as it reads them, so two REGISTERs of one AOR can never interleave and nothing has to be
retried on a conflict; the writes go to its replicas before the answer, which lists the
AOR's bindings afterwards.

Removals must win over copies that never saw them (a partition, a ring still healing: the
owner that takes a removal may not hold the binding it removes). So a removal always writes a
tombstone, for a contact the owner does not know too, living as long as any binding could
(``max_expires`` + a margin), and ``Contact: *`` also writes a wipe mark (``WIPE_KEY``): any
binding stored before it is gone, wherever it comes back from. :func:`current_bindings`
applies the mark wherever bindings are read.

Operation bytes: msgpack of ``[1, op_id, aor, call_id, cseq, wildcard, changes, path,
user_agent, [source host, port, transport], max_contacts, max_expires, evict]``, each change
being
``[key, uri, expires, q, instance, reg_id, params]`` and params ``[[name, value|nil], ...]``.
Header text that is not UTF-8 travels with surrogate escapes, as in stored bindings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import msgpack

from overlay.messages import StoredData
from overlay.operations import OperationResult
from p2preg.sip.binding import (
    SIP_BINDING_KIND,
    Binding,
    decode_binding,
    encode_binding,
    key_bytes,
)
from p2preg.sip.uri import Param, Uri, UriError, parse_uri, uri_equal

_VERSION: Final = 1
# Tombstones outlive the binding they remove by this much, so that a replica's older copy
# cannot bring the binding back while it still looks live.
TOMBSTONE_MARGIN_S: Final = 5
# The dictionary key of the wipe mark: no binding key starts with NUL.
WIPE_KEY: Final = b"\x00wildcard"
INVALID_CSEQ: Final = (400, "Invalid CSeq")
TOO_MANY: Final = (503, "Too Many Registered Contacts")


@dataclass(frozen=True, slots=True)
class BindingChange:
    """One Contact of a REGISTER: add or refresh it for ``expires`` s, or remove it (0)."""

    key: str
    uri: str  # as sent, between < and >
    expires: int
    q: str | None
    instance: str | None
    reg_id: int | None
    params: tuple[Param, ...]  # header params minus expires and q


@dataclass(frozen=True, slots=True)
class RegisterOp:
    # Random per SIP transaction at the front node (0: none). Stored with the bindings it
    # writes, so that the same operation asked again after a lost answer is recognised as
    # done rather than refused as a stale CSeq.
    op_id: int
    aor: str  # canonical, with scheme
    call_id: str
    cseq: int
    wildcard: bool  # Contact: * with Expires: 0
    changes: tuple[BindingChange, ...]  # empty and not wildcard: a query
    path: tuple[str, ...]
    user_agent: str | None
    source_host: str
    source_port: int
    transport: str
    max_contacts: int
    max_expires: int  # the longest a binding may live: how long a blind tombstone must last
    evict: bool  # over max_contacts: drop the oldest others instead of refusing


@dataclass(frozen=True, slots=True)
class RegisterOutcome:
    status: int  # 200, or the refusal: 400 Invalid CSeq, 503 too many contacts
    reason: str
    upserts: tuple[Binding, ...] = ()
    removals: tuple[str, ...] = ()  # binding keys
    bindings: tuple[Binding, ...] = ()  # the AOR's live bindings afterwards (before, if refused)
    wipe: bool = False  # Contact: *: write the wipe mark too

    @property
    def changed(self) -> bool:
        return bool(self.upserts or self.removals or self.wipe)


# --- the rules ------------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def _parsed(text: str) -> Uri | None:
    try:
        return parse_uri(text)
    except UriError:
        return None


def _matches(change: BindingChange, binding: Binding) -> bool:
    if binding.key == change.key:
        return True
    # RFC 5626 bindings are matched on instance and reg-id only, which the key holds.
    if change.reg_id is not None and change.instance is not None:
        return False
    if binding.instance is not None and binding.reg_id is not None:
        return False
    stored, sent = _parsed(binding.uri), _parsed(change.uri)
    return stored is not None and sent is not None and uri_equal(stored, sent)


def ordered(bindings: Iterable[Binding]) -> list[Binding]:
    """Highest q first; among equals the most recently refreshed first."""
    return sorted(bindings, key=lambda b: (-b.q_value, -b.last_modified, b.key))


def _already_applied(op: RegisterOp, live: dict[str, Binding]) -> bool:
    """This very operation was applied before: its answer was lost and the front asked again.
    Applying it twice would call its own bindings a stale CSeq."""
    if not op.op_id or op.wildcard:
        return False
    for change in op.changes:
        matched = [b for b in live.values() if _matches(change, b)]
        if change.expires == 0:
            if matched:
                return False
        elif not any(b.key == change.key and b.op_id == op.op_id for b in matched):
            return False
    return True


def apply_register(op: RegisterOp, current: Iterable[Binding], now: float) -> RegisterOutcome:
    """Steps 6-8 against the AOR's stored bindings (expired ones are ignored and purged)."""
    live: dict[str, Binding] = {}
    expired: list[str] = []
    for b in current:
        if b.live(now):
            live[b.key] = b
        else:
            expired.append(b.key)
    before = tuple(ordered(live.values()))

    if not op.wildcard and not op.changes:  # a query
        return RegisterOutcome(200, "OK", bindings=before)

    stale = any(
        b.call_id == op.call_id and op.cseq <= b.cseq
        for b in live.values()
        if op.wildcard or any(_matches(c, b) for c in op.changes)
    )
    if stale:
        if _already_applied(op, live):
            return RegisterOutcome(200, "OK", bindings=before)
        return RegisterOutcome(*INVALID_CSEQ, bindings=before)

    if op.wildcard:
        return RegisterOutcome(200, "OK", removals=tuple(sorted({*live, *expired})), wipe=True)

    after = dict(live)
    upserts: dict[str, Binding] = {}
    removals: set[str] = set()
    for change in op.changes:
        for b in [b for b in live.values() if _matches(change, b)]:
            after.pop(b.key, None)
            upserts.pop(b.key, None)
            removals.add(b.key)
        if change.expires == 0:
            # A removal of a binding this same request added earlier also drops it.
            if change.key in upserts:
                del upserts[change.key]
                after.pop(change.key, None)
            # A tombstone even for a contact we do not hold: a copy that did may come back.
            removals.add(change.key)
            continue
        binding = Binding(
            key=change.key,
            aor=op.aor,
            uri=change.uri,
            params=change.params,
            expires_at=now + change.expires,
            q=change.q,
            call_id=op.call_id,
            cseq=op.cseq,
            source_host=op.source_host,
            source_port=op.source_port,
            transport=op.transport,
            path=op.path,
            instance=change.instance,
            reg_id=change.reg_id,
            user_agent=op.user_agent,
            last_modified=now,
            op_id=op.op_id,
        )
        after[change.key] = binding
        upserts[change.key] = binding
        removals.discard(change.key)

    if len(after) > op.max_contacts:
        if op.evict:
            oldest = sorted(
                (b for k, b in after.items() if k not in upserts), key=lambda b: b.last_modified
            )
            for b in oldest:
                if len(after) <= op.max_contacts:
                    break
                del after[b.key]
                removals.add(b.key)
        if len(after) > op.max_contacts:
            return RegisterOutcome(*TOO_MANY, bindings=before)

    if upserts or removals:
        removals.update(k for k in expired if k not in upserts)
    return RegisterOutcome(
        200,
        "OK",
        upserts=tuple(upserts.values()),
        removals=tuple(sorted(removals)),
        bindings=tuple(ordered(after.values())),
    )


# --- the owner's side of the wire -----------------------------------------------------------


class RegistrarOperation:
    """The SIP-BINDING kind's owner-side rules (``overlay.operations.KindOperation``)."""

    def apply(
        self, current: Sequence[StoredData], operation: bytes, now_ms: int
    ) -> OperationResult:
        op = decode_op(operation)
        now = now_ms / 1000
        held = current_bindings(current)
        raw = {b.key: sd for sd, b in held}
        bindings = [b for _, b in held]
        outcome = apply_register(op, bindings, now)
        if outcome.status != 200:
            return OperationResult(refused=f"{outcome.status} {outcome.reason}")
        by_key = {b.key: b for b in bindings}
        writes: list[StoredData] = []
        fresh: dict[str, StoredData] = {}
        for b in outcome.upserts:
            sd = StoredData(
                now_ms, max(1, math.ceil(b.expires_at - now)), key_bytes(b.key), encode_binding(b)
            )
            writes.append(sd)
            fresh[b.key] = sd
        blind = op.max_expires + TOMBSTONE_MARGIN_S
        for key in outcome.removals:
            old = by_key.get(key)
            left = old.remaining(now) + TOMBSTONE_MARGIN_S if old is not None else blind
            writes.append(StoredData(now_ms, left, key_bytes(key), b"", exists=False))
        if outcome.wipe:
            writes.append(StoredData(now_ms, blind, WIPE_KEY, b""))
        values = tuple(fresh.get(b.key) or raw[b.key] for b in outcome.bindings)
        return OperationResult(tuple(writes), values)


def sip_operations() -> dict[int, RegistrarOperation]:
    """The owner-side operations a node with a registrar serves, by kind."""
    return {SIP_BINDING_KIND: RegistrarOperation()}


def current_bindings(values: Iterable[StoredData]) -> list[tuple[StoredData, Binding]]:
    """The bindings among an AOR's stored values, each with its entry, in the order given:
    removals, unreadable values and bindings stored before the latest wipe mark left out."""
    values = list(values)
    wiped = max((sd.storage_time for sd in values if sd.key == WIPE_KEY and sd.exists), default=-1)
    out: list[tuple[StoredData, Binding]] = []
    for sd in values:
        if not sd.exists or sd.key == WIPE_KEY or sd.storage_time < wiped:
            continue
        try:
            out.append((sd, decode_binding(sd.value)))
        except ValueError:
            continue  # a value we cannot read is not a binding we can serve
    return out


def bindings_of(values: Iterable[StoredData]) -> list[Binding]:
    """The bindings of an answer's values (see :func:`current_bindings`)."""
    return [b for _, b in current_bindings(values)]


# --- the operation's bytes ------------------------------------------------------------------


def encode_op(op: RegisterOp) -> bytes:
    record = [
        _VERSION,
        op.op_id,
        op.aor,
        op.call_id,
        op.cseq,
        op.wildcard,
        [
            [c.key, c.uri, c.expires, c.q, c.instance, c.reg_id, [[k, v] for k, v in c.params]]
            for c in op.changes
        ],
        list(op.path),
        op.user_agent,
        [op.source_host, op.source_port, op.transport],
        op.max_contacts,
        op.max_expires,
        op.evict,
    ]
    data: bytes = msgpack.packb(record, use_bin_type=True, unicode_errors="surrogateescape")
    return data


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"register operation: bad {what}")


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _opt_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _params(value: Any) -> tuple[Param, ...]:
    _check(isinstance(value, list), "params")
    out: list[Param] = []
    for item in value:
        _check(
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and _opt_str(item[1]),
            "param",
        )
        out.append((item[0], item[1]))
    return tuple(out)


def decode_op(data: bytes) -> RegisterOp:
    """Raises ValueError for anything that is not a well-formed version-1 operation."""
    try:
        rec = msgpack.unpackb(data, raw=False, unicode_errors="surrogateescape")
    except Exception as exc:
        raise ValueError(f"register operation is not msgpack: {exc}") from None
    _check(isinstance(rec, list) and len(rec) == 13 and rec[0] == _VERSION, "record")
    _, op_id, aor, call_id, cseq, wildcard, changes_raw, path, user_agent, source, limit = rec[:11]
    max_expires, evict = rec[11:]
    _check(_is_int(max_expires, 0, 2**32 - 1), "max expires")
    _check(_is_int(op_id, 0, (1 << 64) - 1), "op id")
    _check(isinstance(aor, str) and isinstance(call_id, str), "aor or call-id")
    _check(_is_int(cseq, 0, 2**31 - 1), "cseq")
    _check(isinstance(wildcard, bool) and isinstance(evict, bool), "flags")
    _check(isinstance(path, list) and all(isinstance(p, str) for p in path), "path")
    _check(_opt_str(user_agent), "user agent")
    _check(
        isinstance(source, list)
        and len(source) == 3
        and isinstance(source[0], str)
        and _is_int(source[1], 0, 65535)
        and isinstance(source[2], str),
        "source",
    )
    _check(_is_int(limit, 1, 1 << 20), "max contacts")
    _check(isinstance(changes_raw, list), "changes")
    changes: list[BindingChange] = []
    for c in changes_raw:
        _check(isinstance(c, list) and len(c) == 7, "change")
        key, uri, expires, q, instance, reg_id, params = c
        _check(isinstance(key, str) and key != "" and isinstance(uri, str), "contact")
        _check(_is_int(expires, 0, 2**32 - 1), "expires")
        _check(_opt_str(q) and _opt_str(instance), "q or instance")
        _check(reg_id is None or _is_int(reg_id, 0, 2**32 - 1), "reg-id")
        changes.append(BindingChange(key, uri, expires, q, instance, reg_id, _params(params)))
    _check(not (wildcard and changes), "wildcard with contacts")
    return RegisterOp(
        op_id,
        aor,
        call_id,
        cseq,
        wildcard,
        tuple(changes),
        tuple(path),
        user_agent,
        source[0],
        source[1],
        source[2],
        limit,
        max_expires,
        evict,
    )
