"""The bindings of one AOR, read and written through the overlay (docs/wire.md, RFC 6940 §7).

A REGISTER is one request to the AOR's owner (:meth:`OverlayBindings.register`): an
``ApplyReq`` whose operation the owner applies to its own copy with the registrar's rules
(``register_op``), answering with the AOR's bindings afterwards; the rules' refusals (400
Invalid CSeq, 503 too many contacts) come back as Error_Forbidden "refused: STATUS REASON".

The generic read-modify-write remains for operator changes (:meth:`OverlayBindings.update`):
Fetch every SIP-BINDING entry with the kind's generation, let a rule decide, then Store the
changes conditionally on that generation (replica_number 0). A concurrent writer makes the
Store fail with Generation_Counter_Too_Low; it then fetches again and decides again, a
bounded number of times.

Data_Too_Old (a removal and a re-add of one contact within one millisecond, whose
tombstone a Fetch does not show) is handled like a conflict: decide again a moment later
with a fresh timestamp. Transient refusals (Error_In_Progress during a handoff,
Error_Forbidden "not responsible" while the ring is in flux) and requests that get no
answer are retried after a short backoff until a deadline; past it the caller
answers 503 + Retry-After (:class:`OverlayUnavailable`).

When this node is itself responsible for the resource, ``OverlayRuntime.ask`` serves the
request without an overlay message (the replicator applies the same rules, sends the replica
copies and holds the answer for the flush), so nothing here special-cases it.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from overlay.ids import resource_id
from overlay.messages import (
    ApplyAns,
    ApplyReq,
    FetchAns,
    FetchReq,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreReq,
)
from p2preg.ring_client import (
    Answered,
    DataRequest,
    RingClient,
    RingConflict,
    RingRefused,
    RingUnavailable,
)
from p2preg.sip.binding import SIP_BINDING_KIND, Binding, encode_binding, key_bytes
from p2preg.sip.metrics import Histogram
from p2preg.sip.register_op import (
    TOMBSTONE_MARGIN_S,
    RegisterOp,
    bindings_of,
    current_bindings,
    encode_op,
)
from p2preg.sip.registrar import RegisterDecision

T = TypeVar("T")

# What the ring client raises, under the names the registrar's callers know.
OverlayUnavailable = RingUnavailable  # no usable answer in time: answer 503 + Retry-After
GenerationConflict = RingConflict  # someone else wrote the AOR since we fetched it
StoreRefused = RingRefused  # a permanent refusal (Data_Too_Large, Unknown_Kind …): answer 500


class RegisterRefused(Exception):
    """The owner's registrar rules refused the REGISTER: answer ``status`` ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AorState:
    """What a Fetch returned for one AOR."""

    bindings: dict[str, Binding]
    generation: int
    stored_ms: dict[str, int] = field(default_factory=dict)  # storage_time of each entry


@dataclass(slots=True)
class StoreStats:
    """Outcome counts and latencies, read by the service's metrics."""

    fetches: int = 0
    stores: int = 0
    conflicts: int = 0
    retries: int = 0
    failures: int = 0
    fetch_latency: Histogram = field(
        default_factory=lambda: Histogram(
            "p2preg_sip_overlay_fetch_duration_seconds",
            "Fetch of an AOR's bindings through the overlay, retries included",
        )
    )
    store_latency: Histogram = field(
        default_factory=lambda: Histogram(
            "p2preg_sip_overlay_store_duration_seconds",
            "Conditional Store of an AOR's bindings through the overlay, retries included",
        )
    )


class OverlayBindings:
    def __init__(
        self,
        ring: RingClient,
        *,
        conflict_retries: int = 5,
        backoff: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ring = ring
        self.conflict_retries = conflict_retries
        self.backoff = backoff
        self._clock = clock
        self.stats = StoreStats()

    async def _call(
        self, body: DataRequest, want: type[T], until: float | None = None
    ) -> Answered[T]:
        try:
            answered = await self.ring.call(lambda: body, want, until=until)
        except RingUnavailable:
            self.stats.failures += 1
            raise
        except RingConflict:
            self.stats.conflicts += 1
            raise
        self.stats.retries += answered.attempts - 1
        return answered

    # --- one request each --------------------------------------------------------------

    async def fetch(self, resource_name: str, *, until: float | None = None) -> AorState:
        """Every live binding of the AOR and the kind's generation."""
        rid = resource_id(resource_name)
        body = FetchReq(rid, (StoredDataSpecifier(SIP_BINDING_KIND),))
        started = self._clock()
        answer = (await self._call(body, FetchAns, until)).body
        self.stats.fetches += 1
        self.stats.fetch_latency.observe(self._clock() - started)
        bindings: dict[str, Binding] = {}
        stored_ms: dict[str, int] = {}
        generation = 0
        for kind in answer.kind_responses:
            if kind.kind != SIP_BINDING_KIND:
                continue
            generation = kind.generation
            for sd, binding in current_bindings(kind.values):
                bindings[binding.key] = binding
                stored_ms[binding.key] = sd.storage_time
        return AorState(bindings, generation, stored_ms)

    async def register(self, resource_name: str, op: RegisterOp) -> list[Binding]:
        """Have the AOR's owner apply ``op``; the AOR's bindings afterwards. Raises
        RegisterRefused, OverlayUnavailable or StoreRefused."""
        body = ApplyReq(resource_id(resource_name), SIP_BINDING_KIND, 0, encode_op(op))
        started = self._clock()
        try:
            answer = (await self._call(body, ApplyAns)).body
        except RingRefused as exc:
            status, _, reason = exc.text.partition(" ")
            if exc.refused and status.isdigit():
                raise RegisterRefused(int(status), reason) from None
            raise
        self.stats.stores += 1
        self.stats.store_latency.observe(self._clock() - started)
        return bindings_of(answer.values)

    async def store(
        self,
        resource_name: str,
        state: AorState,
        upserts: Iterable[Binding],
        removals: Iterable[str],
        now: float,
        *,
        until: float | None = None,
    ) -> None:
        """Conditional on ``state.generation``; raises GenerationConflict when it moved."""
        rid = resource_id(resource_name)
        now_ms = int(now * 1000)
        values: list[StoredData] = []
        for b in upserts:
            values.append(
                StoredData(
                    storage_time=self._time_for(state, b.key, now_ms),
                    lifetime=max(1, math.ceil(b.expires_at - now)),
                    key=key_bytes(b.key),
                    value=encode_binding(b),
                )
            )
        for key in removals:
            old = state.bindings.get(key)
            left = old.remaining(now) if old is not None else 0
            values.append(
                StoredData(
                    storage_time=self._time_for(state, key, now_ms),
                    lifetime=left + TOMBSTONE_MARGIN_S,
                    key=key_bytes(key),
                    value=b"",
                    exists=False,
                )
            )
        if not values:
            return
        body = StoreReq(rid, 0, (StoreKindData(SIP_BINDING_KIND, state.generation, tuple(values)),))
        started = self._clock()
        await self._call(body, StoreAns, until)
        self.stats.stores += 1
        self.stats.store_latency.observe(self._clock() - started)

    @staticmethod
    def _time_for(state: AorState, key: str, now_ms: int) -> int:
        # A rewrite must be newer than what it replaces, even within one millisecond.
        return max(now_ms, state.stored_ms.get(key, -1) + 1)

    # --- the read-modify-write ---------------------------------------------------------

    async def update(
        self,
        resource_name: str,
        decide: Callable[[AorState, float], RegisterDecision],
        wall_clock: Callable[[], float],
    ) -> RegisterDecision:
        """Fetch → decide → conditional store, again on a generation conflict.

        ``decide(state, now)`` must be pure (it runs once per attempt). Raises
        OverlayUnavailable when the ring does not answer in time or the conflicts persist.
        """
        until = self._clock() + self.ring.deadline
        previous: RegisterDecision | None = None
        for _attempt in range(self.conflict_retries + 1):
            state = await self.fetch(resource_name, until=until)
            if previous is not None and _applied(state, previous):
                # Our last store landed but its answer was lost (or it raced a retry of
                # itself): deciding again would undo our own change.
                return previous
            now = wall_clock()
            decision = decide(state, now)
            if not decision.changed:
                return decision
            try:
                await self.store(
                    resource_name, state, decision.upserts, decision.removals, now, until=until
                )
            except GenerationConflict:
                previous = decision
                # Spread the retries of racing writers; also moves past the millisecond
                # of a Data_Too_Old.
                await asyncio.sleep(random.uniform(0.001, self.backoff))
                continue
            except OverlayUnavailable:
                # The store may or may not have landed: one more fetch tells, if time allows.
                if self._clock() >= until:
                    raise
                previous = decision
                continue
            return decision
        self.stats.failures += 1
        raise OverlayUnavailable(f"{self.conflict_retries + 1} generation conflicts in a row")


def _applied(state: AorState, decision: RegisterDecision) -> bool:
    """Whether ``state`` already holds exactly what ``decision`` wrote."""
    for b in decision.upserts:
        if state.bindings.get(b.key) != b:
            return False
    return all(key not in state.bindings for key in decision.removals)
