"""usrloc views over the ring, like Kamailio's ``ul.dump`` and ``ul.rm``.

Every AOR is listed by the one peer responsible for it, from its own store: a page of AORs
(with their live bindings) at a time, in Resource-ID order, with a cursor for the next page.
``p2preg aors`` walks the ring and pages through each peer in turn, printing as it goes, so
no answer grows with the number of registrations.

Removing a binding (``p2preg unregister``) is a read-modify-write through the ring, like a
REGISTER with ``Expires: 0``: fetch the AOR's bindings, store tombstones for the ones removed,
conditionally on the generation fetched (a concurrent REGISTER makes it try again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from overlay.ids import MASK, id_hex, in_open_closed
from overlay.messages import StoredData
from p2preg.sip.binding import SIP_BINDING_KIND, Binding
from p2preg.sip.bindings_store import AorState
from p2preg.sip.register_op import bindings_of
from p2preg.sip.registrar import RegisterDecision
from p2preg.sip.responses import Reply
from storage import RecordStore

DEFAULT_PAGE = 500  # AORs per page
MAX_PAGE = 5000
SCAN_FACTOR = 20  # a page scans at most this many records per AOR asked for (filters)


@dataclass(frozen=True, slots=True)
class PageRequest:
    after: int | None  # Resource-ID of the last AOR of the previous page; None: from the start
    limit: int = DEFAULT_PAGE
    domain: str | None = None  # only AORs of this domain (case-insensitive)


@dataclass(slots=True)
class AorPage:
    aors: list[dict[str, Any]] = field(default_factory=list)
    next: int | None = None  # pass as ``after`` for the next page; None: this was the last
    scanned: int = 0


def _domain_of(aor: str) -> str:
    return aor.rpartition("@")[2].split(";", 1)[0].lower()


def aor_page(
    store: RecordStore,
    span: tuple[int, int] | None,
    page: PageRequest,
    now_ms: int,
) -> AorPage:
    """One page of the AORs this peer is responsible for (``span`` = (start, self], the ring
    interval it answers for; None: not in the ring, nothing to list). Runs on a store-read
    thread. Resource-IDs come in key order, so an AOR's bindings are adjacent and a page never
    splits one."""
    result = AorPage()
    if span is None:
        return result
    lo = MASK if page.after is None else page.after  # (MASK, MASK] is the whole id space
    if page.after == MASK:
        return result
    budget = max(page.limit, 1) * SCAN_FACTOR
    domain = page.domain.lower() if page.domain else None
    now = now_ms / 1000
    current: int | None = None
    entries: list[StoredData] = []

    def flush() -> None:
        bindings = bindings_of(entries)  # the wipe mark of a Contact: * applied
        live = sorted((b for b in bindings if b.live(now)), key=lambda b: (-b.q_value, b.uri))
        if current is None or not live:
            return
        aor = live[0].aor
        if domain is not None and _domain_of(aor) != domain:
            return
        result.aors.append(
            {
                "aor": aor,
                "resource_id": id_hex(current),
                "bindings": [b.describe(now) for b in live],
            }
        )

    start, me = span
    for rec in store.scan_range(lo, MASK, now_ms, include_tombstones=False):
        if rec.resource != current:
            if current is not None:
                flush()
                result.next = current
                if len(result.aors) >= page.limit or result.scanned >= budget:
                    return result
            current, entries = rec.resource, []
        result.scanned += 1
        if rec.kind != SIP_BINDING_KIND or not in_open_closed(rec.resource, start, me):
            continue
        entries.append(rec.stored_data())
    if current is not None:
        flush()
    result.next = None
    return result


def removal(
    contact: str | None, removed: list[Binding]
) -> Callable[[AorState, float], RegisterDecision]:
    """The decision of an unregister: remove the binding whose contact URI is ``contact``, or
    every binding when None. ``removed`` receives what the last attempt removed."""

    def decide(state: AorState, now: float) -> RegisterDecision:
        live = [b for b in state.bindings.values() if b.live(now)]
        gone = [b for b in live if contact is None or b.uri == contact]
        removed[:] = gone
        keep = tuple(b for b in live if b not in gone)
        return RegisterDecision(
            reply=Reply(200, "OK"),
            removals=tuple(b.key for b in gone),
            bindings=keep,
        )

    return decide
