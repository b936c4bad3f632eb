"""Replication and handoff of records (RFC 6940 §10.4, §10.5, §10.7) as a sans-I/O component.

The ``Replicator`` is the data plane stacked on one ``ChordPeer`` by ``overlay.core``: the
composition feeds it what the peer reports (Store and Fetch requests delivered to the peer,
the answers to its own requests, neighbour changes, admissions and the leave) and it calls the
peer's commands (``request``, ``respond``, ``admit``, ``proceed_leave``). The record store is
reached through ``RecordBackend`` (in practice a ``storage.RecordStore``). No clock is read:
times come in as ``now`` (seconds, monotonic) and become store times as
``(now + epoch_offset) * 1000`` ms.

Rules (each one an answer to "how could an acknowledged write be lost?"):

- Original store (replica_number 0): only the responsible peer takes it (else Forbidden, the
  requester retries); while a handoff of its range is in flight (a join we admit, our own
  leave) it answers In_Progress instead, so the owner never changes under an acknowledged
  write. It writes locally as PRIMARY, sends replica stores (1, 2) carrying its new
  generation counters to successors 1 and 2, and answers StoreAns listing the replicas that
  acknowledged once all answered or ``replica_timeout`` passed: success with at least one
  replica (or none to ask: a ring of one); Request_Timeout when none answered.
- Batching: the replica copies an owner makes within ``COPY_WINDOW`` go to each successor as
  one ``StoreBatchReq`` (a lone copy as a plain StoreReq), which the successor applies in one
  LMDB transaction and answers item by item; each original still waits for its own copies'
  answers. Under load this turns thousands of small messages a second into a few batches.
- Copies (replica_number != 0: replica stores, handoffs, repairs): newer storage_time wins.
  Roles follow responsibility: PRIMARY iff the resource is in (pred, self]. A peer that is
  responsible for a copy it did not have (a handoff of garbage, a stale sender) replicates
  the change onward.
- Neighbour change (after ``settle`` s of quiet): roles are re-evaluated; if our range changed
  or a successor among the first ``replicas`` is new, we synchronise with it by digest (below),
  which pushes exactly what it lacks: a promoted range after a predecessor failed, or all our
  primary records to a new replica.
- Anti-entropy: every ``anti_entropy_interval`` s and on those changes, for each replica
  successor: fetch its per-bucket digest of our primary range, then push our records of the
  buckets that differ and pull theirs (applied newer-wins). Divergence costs only its buckets.
- Join: the admission hook hands (start, joining] to the joining peer with Stores sent
  straight to it; the peer admits it (sends the Update that makes it routable) once every one
  is acknowledged or ``handoff_timeout`` passed.
- Leave: the leave hook pushes every primary record to the successor and waits for the
  answers (bounded) before the LeaveReqs go out.
- Garbage: records outside (pred[replicas], self] — neither ours nor a copy for one of our
  ``replicas`` predecessors — are stored (replica style, routed) to their responsible peer and
  deleted once every one is acknowledged, after ``garbage_quiet`` s without neighbour change.
- Fetch: answered from the local store by whichever peer the request is delivered to (routed
  fetches reach the responsible peer; one addressed to a node id is answered by that node,
  replica or not).
- Apply (an owner-side operation, ``overlay.operations``): taken only by the responsible peer
  under the same rules as an original store; the kind's rules decide on the live values read
  in the same step, their writes go through the original-store path (local write, replica
  round, flush) and the answer lists the values after them.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from overlay import replication_ae as ae
from overlay.actions import LocalAnswer, PeerState
from overlay.chord import ChordPeer
from overlay.ids import in_open_closed
from overlay.messages import (
    ApplyAns,
    ApplyReq,
    Destination,
    ErrorCode,
    ErrorResponse,
    FetchAns,
    FetchKindResponse,
    FetchReq,
    Message,
    MessageBody,
    NodeDestination,
    ResourceDestination,
    StoreAns,
    StoreBatchAns,
    StoreBatchReq,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreKindResponse,
    StoreReq,
)
from overlay.operations import REFUSED_PREFIX, KindOperation
from overlay.replication_backend import (
    ANTI_ENTROPY_KIND,
    RecordBackend,
    ReplicationConfig,
    Role,
    StoredRecord,
    StoreRejected,
    StoreResult,
)

INF = math.inf
PUSH_RECHECK = 0.05  # s between looks at the push queue while anti-entropy buckets wait
COPY_WINDOW = 0.001  # s: replica copies made within this window travel in one message
NOT_RESPONSIBLE = "not responsible"

Callback = Callable[[Message | None, float], None]

__all__ = [
    "ANTI_ENTROPY_KIND",
    "NOT_RESPONSIBLE",
    "RecordBackend",
    "ReplicationConfig",
    "Replicator",
    "Role",
    "StoreRejected",
]


@dataclass(eq=False)
class _Original:
    reply: Callable[[MessageBody, float], None]  # the answer to the request, once
    generations: tuple[tuple[int, int], ...]
    targets: int
    pending: int
    acked: list[int] = field(default_factory=list)
    done: bool = False


@dataclass(eq=False)
class _Handoff:
    to: int
    lo: int
    hi: int
    outstanding: int
    failed: int = 0
    done: bool = False


@dataclass(eq=False)
class _Sync:
    to: int
    number: int
    lo: int
    hi: int
    buckets: int
    outstanding: int = 0
    to_push: deque[int] = field(default_factory=deque)  # differing buckets not yet queued


def _responder(message: Message) -> int | None:
    via = message.header.via_list
    if via and isinstance(via[0], NodeDestination):
        return via[0].node_id
    return None


class Replicator:
    """The data plane stacked on ``peer`` (which must have been made with ``hand_over=True``).

    ``now`` is the peer's clock at creation; ``epoch_offset`` turns it into wall-clock time
    for the store (the runtime passes ``time.time() - time.monotonic()``; the simulator 0).
    """

    def __init__(
        self,
        peer: ChordPeer,
        backend: RecordBackend,
        config: ReplicationConfig | None = None,
        *,
        now: float = 0.0,
        epoch_offset: float = 0.0,
        operations: Mapping[int, KindOperation] | None = None,
    ) -> None:
        """``operations``: the owner-side rules of the kinds that take ``ApplyReq``."""
        self.peer = peer
        self.backend = backend
        self.config = config or ReplicationConfig()
        self.operations = dict(operations or {})
        self._offset = epoch_offset
        self._me = peer.node_id
        self._waiting: dict[int, Callback] = {}
        self._local: list[LocalAnswer] = []  # answers to serve_local, for the composition
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = 0
        self._queue: deque[tuple[tuple[Destination, ...], StoreReq, Callback]] = deque()
        self._in_flight = 0
        self._handoffs: dict[int, _Handoff] = {}  # joining id -> its handoff
        self._leave: _Handoff | None = None
        self._range: tuple[int, int] | None = None
        # The range the stored roles were last set for; None after any neighbour change.
        self._roles_for: tuple[int, int] | None = None
        self._succs: tuple[int, ...] = ()
        self._last_change = -INF
        self._syncs: dict[int, _Sync] = {}
        self._resync: set[int] = set()
        self._garbage_busy = False
        self._dirty = False
        # Replica copies waiting for the window to close, per successor, with their callbacks.
        self._copies: dict[int, list[tuple[StoreReq, Callback]]] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "stores_original",
                "operations",
                "operations_refused",
                "stores_copy",
                "copy_batches_sent",
                "copy_batches_received",
                "fetches",
                "replicas_acked",
                "replicas_missing",
                "rejected_in_progress",
                "rejected_not_responsible",
                "rejected_store",
                "promoted",
                "role_scans",
                "sync_rounds",
                "sync_buckets_differing",
                "sync_pages",
                "sync_records_pushed",
                "sync_push_steps",
                "sync_records_pulled",
                "handoff_records",
                "leave_records",
                "garbage_records",
                "garbage_deleted",
                "forwarded",
                "swept",
                "sweep_errors",
            ),
            0,
        )
        spread = (self._me % 1000) / 1000.0  # peers' periodic rounds do not all coincide
        cfg = self.config
        self._at(now + cfg.anti_entropy_interval * (0.5 + spread / 2), self._ae_round)
        self._at(now + cfg.garbage_interval * (0.5 + spread / 2), self._garbage_round)
        self._at(now + cfg.sweep_interval * spread, self._sweep_round)

    # ------------------------------------------------------------------ queries
    def ms(self, now: float) -> int:
        """Store time (ms since the epoch) at ``now``."""
        return int((now + self._offset) * 1000)

    def counts(self, now: float) -> tuple[int, int]:
        """(primary, replica): live values held in each role."""
        ms = self.ms(now)
        b = self.backend
        return b.count(Role.PRIMARY, now_ms=ms), b.count(Role.REPLICA, now_ms=ms)

    def take_dirty(self) -> bool:
        """Whether the store was written since the last call (the runtime's durability
        barrier: it flushes before sending what was produced after a write)."""
        dirty = self._dirty
        self._dirty = False
        return dirty

    @property
    def busy(self) -> bool:
        """Bulk transfers or synchronisations in flight (for tests and metrics)."""
        return bool(self._queue or self._in_flight or self._syncs or self._garbage_busy)

    # ------------------------------------------------------------------ fed by the composition
    def owns(self, transaction_id: int) -> bool:
        """Whether an answer (or failure) of this transaction id is ours to handle."""
        return transaction_id in self._waiting

    def on_request(self, message: Message, now: float) -> None:
        body = message.body
        if isinstance(body, ApplyReq):

            def reply(answer: MessageBody, t: float) -> None:
                self._respond(message, answer, t)

            self._operation(body, now, reply)
        elif isinstance(body, FetchReq):
            self._on_fetch(message, body, now)
        elif isinstance(body, StoreReq):
            if body.replica_number == 0:
                self._on_original(message, body, now)
            else:
                self._on_copy(message, body, now)
        elif isinstance(body, StoreBatchReq):
            self._on_copy_batch(message, body, now)

    def on_answer(self, transaction_id: int, message: Message, now: float) -> None:
        cb = self._waiting.pop(transaction_id, None)
        if cb is not None:
            cb(message, now)

    def on_failed(self, transaction_id: int, reason: str, now: float) -> None:
        cb = self._waiting.pop(transaction_id, None)
        if cb is not None:
            cb(None, now)

    def on_neighbors(self, now: float) -> None:
        self._last_change = now
        self._roles_for = None
        self._at(now + self.config.settle, self._evaluate_when_quiet)

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def tick(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, fn = heapq.heappop(timers)
            fn(now)

    # ------------------------------------------------------------------ plumbing
    def _at(self, when: float, fn: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, fn))

    def _send(
        self, dests: tuple[Destination, ...], body: MessageBody, now: float, cb: Callback
    ) -> None:
        # Whatever happens to it (answered here, routed, refused) comes back as an event that
        # the composition hands to on_answer/on_failed after this call returns.
        self._waiting[self.peer.request(dests, body, now)] = cb

    def _enqueue(self, dests: tuple[Destination, ...], req: StoreReq, cb: Callback) -> None:
        self._queue.append((dests, req, cb))

    def _pump(self, now: float) -> None:
        limit = self.config.max_in_flight
        while self._queue and self._in_flight < limit:
            dests, req, cb = self._queue.popleft()
            self._in_flight += 1
            self._send(dests, req, now, self._bulk_done(cb))

    def _bulk_done(self, cb: Callback) -> Callback:
        def done(message: Message | None, now: float) -> None:
            self._in_flight -= 1
            cb(message, now)
            self._pump(now)

        return done

    def _respond(self, request: Message, body: MessageBody, now: float) -> None:
        if self.peer.state is not PeerState.LEFT:
            self.peer.respond(request, body, now)

    def _error(self, request: Message, code: int, text: str, now: float) -> None:
        self._respond(request, ErrorResponse(code, text.encode("utf-8")), now)

    def _in_handoff(self, resource: int) -> bool:
        return any(in_open_closed(resource, h.lo, h.hi) for h in self._handoffs.values())

    def _apply(self, req: StoreReq, now: float, role: Role) -> StoreResult:
        result = self.backend.apply_store(req, self.ms(now), role)
        self._dirty = True
        return result

    def _requests_for(self, records: Iterable[StoredRecord], number: int) -> list[StoreReq]:
        """Replica-style StoreReqs for ``records`` (in ring order), one resource each."""
        reqs: list[StoreReq] = []
        batch = self.config.batch_values
        resource: int | None = None
        kinds: dict[int, list[StoredData]] = {}
        count = 0

        def flush() -> None:
            if resource is None or not kinds:
                return
            gen = self.backend.generation
            reqs.append(
                StoreReq(
                    resource,
                    number,
                    tuple(StoreKindData(k, gen(resource, k), tuple(v)) for k, v in kinds.items()),
                )
            )

        for rec in records:
            if rec.resource != resource or count >= batch:
                flush()
                resource, kinds, count = rec.resource, {}, 0
            kinds.setdefault(rec.kind, []).append(rec.stored_data())
            count += 1
        flush()
        return reqs

    # ------------------------------------------------------------------ fetch
    def _on_fetch(self, message: Message, req: FetchReq, now: float) -> None:
        specs = req.specifiers
        if specs and specs[0].kind == ANTI_ENTROPY_KIND:
            self._respond(message, self._anti_entropy_answer(specs[0], now), now)
            return
        self.counters["fetches"] += 1
        answer: MessageBody
        try:
            answer = FetchAns(self.backend.fetch(req.resource, specs, self.ms(now)))
        except StoreRejected as exc:
            answer = ErrorResponse(exc.code, exc.info)
        self._respond(message, answer, now)

    def serve_local(self, token: int, body: StoreReq | FetchReq | ApplyReq, now: float) -> bool:
        """Serve a Fetch or an original Store of this node's own application without an
        overlay message when this peer is responsible for its resource: the same rules (and
        for a Store the same replica round) as a request routed here. Its answer comes out of
        ``take_local`` as ``LocalAnswer(token, body)``. False (nothing done) when the resource
        is not ours right now: the composition routes it through the ring instead."""
        peer = self.peer
        if peer.state is not PeerState.JOINED or not peer.is_responsible(body.resource):
            return False

        def reply(answer: MessageBody, _now: float) -> None:
            self._local.append(LocalAnswer(token, answer, self._me))

        if isinstance(body, ApplyReq):
            self._operation(body, now, reply)
            return True
        if isinstance(body, FetchReq):
            specs = body.specifiers
            if specs and specs[0].kind == ANTI_ENTROPY_KIND:
                return False
            self.counters["fetches"] += 1
            try:
                reply(FetchAns(self.backend.fetch(body.resource, specs, self.ms(now))), now)
            except StoreRejected as exc:
                reply(ErrorResponse(exc.code, exc.info), now)
            return True
        if body.replica_number != 0:
            return False
        self._original(body, now, reply)
        return True

    def take_local(self) -> list[LocalAnswer]:
        answers = self._local
        self._local = []
        return answers

    def _anti_entropy_answer(self, spec: StoredDataSpecifier, now: float) -> MessageBody:
        ms = self.ms(now)
        values: list[StoredData] = []
        try:
            queries = [ae.parse_query(k) for k in spec.keys]
        except ValueError as exc:
            return ErrorResponse(ErrorCode.INVALID_MESSAGE, f"anti-entropy: {exc}".encode())
        room = ae.PAGE_BYTES
        for q, raw in zip(queries, spec.keys, strict=True):
            if q.type == ae.DIGEST:
                hashes = self.backend.digest(q.lo, q.hi, q.buckets, ms)
                key = ae.digest_query(q.lo, q.hi, q.buckets)
                values.append(StoredData(0, 0, key, b"".join(hashes)))
                continue
            if room <= 0:
                values.append(ae.continuation(raw))  # not started: ask again as it was
                continue
            page = self.backend.bucket_page(q.lo, q.hi, q.buckets, q.index, ms, q.after)
            last = q.after or b""
            for rec in page:
                identity = ae.record_key(rec.resource, rec.kind, rec.key)
                if room <= 0:
                    values.append(ae.continuation(q.resumed(last)))
                    break
                values.append(
                    StoredData(
                        rec.storage_time,
                        rec.lifetime,
                        identity,
                        rec.value,
                        rec.exists,
                        rec.signature,
                    )
                )
                room -= len(identity) + len(rec.value) + ae.ENTRY_OVERHEAD
                last = identity
        return FetchAns((FetchKindResponse(ANTI_ENTROPY_KIND, 0, tuple(values)),))

    # ------------------------------------------------------------------ stores
    def _operation(
        self, req: ApplyReq, now: float, reply: Callable[[MessageBody, float], None]
    ) -> None:
        """An owner-side operation: read, let the kind's rules decide, write as an original
        store. Everything up to the write happens in this one step: no other request of the
        resource can come between the read and the write."""

        def error(code: int, text: str) -> None:
            reply(ErrorResponse(code, text.encode("utf-8")[:0xFFFF]), now)

        handler = self.operations.get(req.kind)
        if handler is None:
            error(ErrorCode.UNKNOWN_KIND, f"kind {req.kind:#x} takes no operations")
            return
        if self._refuse_original(req.resource, error):
            return
        ms = self.ms(now)
        records = [r for r in self.backend.records_for(req.resource, ms) if r.kind == req.kind]
        generation = self.backend.generation(req.resource, req.kind)
        if req.generation not in (0, generation):
            error(
                ErrorCode.GENERATION_COUNTER_TOO_LOW,
                f"generation {req.generation} is not the current {generation}",
            )
            return
        live = tuple(r.stored_data() for r in records if r.exists)
        try:
            result = handler.apply(live, req.operation, ms)
        except ValueError as exc:
            error(ErrorCode.INVALID_MESSAGE, f"operation: {exc}")
            return
        self.counters["operations"] += 1
        if result.refused is not None:
            self.counters["operations_refused"] += 1
            error(ErrorCode.FORBIDDEN, REFUSED_PREFIX + result.refused)
            return
        if not result.writes:
            reply(ApplyAns(req.kind, generation, (), result.values), now)
            return
        # Each write must be newer than what it replaces (a tombstone included), even within
        # one millisecond.
        newest = {r.key: r.storage_time for r in records}
        writes = tuple(
            sd
            if sd.storage_time > newest.get(sd.key, -1)
            else dataclasses.replace(sd, storage_time=newest[sd.key] + 1)
            for sd in result.writes
        )
        store = StoreReq(req.resource, 0, (StoreKindData(req.kind, 0, writes),))

        def stored(answer: MessageBody, t: float) -> None:
            if isinstance(answer, StoreAns) and answer.kind_responses:
                done = answer.kind_responses[0]
                answer = ApplyAns(req.kind, done.generation_counter, done.replicas, result.values)
            reply(answer, t)

        self._original(store, now, stored)

    def _refuse_original(self, resource: int, error: Callable[[int, str], None]) -> bool:
        """Answer an original write the owner may not take now; True when it did."""
        peer = self.peer
        state = peer.state
        if state is PeerState.LEAVING or state is PeerState.JOINING or self._leave is not None:
            self.counters["rejected_in_progress"] += 1
            error(ErrorCode.IN_PROGRESS, "handing data over, retry")
            return True
        if state is not PeerState.JOINED or not peer.is_responsible(resource):
            self.counters["rejected_not_responsible"] += 1
            error(ErrorCode.FORBIDDEN, NOT_RESPONSIBLE)
            return True
        if self._in_handoff(resource):
            self.counters["rejected_in_progress"] += 1
            error(ErrorCode.IN_PROGRESS, "range being handed to a joining peer")
            return True
        return False

    def _on_original(self, message: Message, req: StoreReq, now: float) -> None:
        def reply(body: MessageBody, t: float) -> None:
            self._respond(message, body, t)

        self._original(req, now, reply)

    def _original(
        self, req: StoreReq, now: float, reply: Callable[[MessageBody, float], None]
    ) -> None:
        peer = self.peer

        def error(code: int, text: str) -> None:
            reply(ErrorResponse(code, text.encode("utf-8")), now)

        if self._refuse_original(req.resource, error):
            return
        try:
            outcome = self._apply(req, now, Role.PRIMARY)
        except StoreRejected as exc:
            self.counters["rejected_store"] += 1
            reply(ErrorResponse(exc.code, exc.info), now)
            return
        except Exception as exc:  # e.g. the map is full: refused, never silently dropped
            self.counters["rejected_store"] += 1
            error(ErrorCode.DATA_TOO_LARGE, f"store failed: {exc}")
            return
        self.counters["stores_original"] += 1
        targets = peer.successors[: self.config.replicas]
        op = _Original(reply, outcome.generations, len(targets), len(targets))
        if not targets:
            self._finish_original(op, now)
            return
        gens = dict(outcome.generations)
        for number, succ in enumerate(targets, start=1):
            copy = StoreReq(
                req.resource,
                number,
                tuple(
                    StoreKindData(kd.kind, gens.get(kd.kind, 0), kd.values) for kd in req.kind_data
                ),
            )
            self._copy_later(succ, copy, self._replica_answer(op), now)
        self._at(now + self.config.replica_timeout, lambda t: self._finish_original(op, t))

    def _copy_later(self, succ: int, copy: StoreReq, cb: Callback, now: float) -> None:
        if not self._copies:
            self._at(now + COPY_WINDOW, self._send_copies)
        self._copies.setdefault(succ, []).append((copy, cb))

    def _send_copies(self, now: float) -> None:
        copies, self._copies = self._copies, {}
        for succ, items in copies.items():
            dest = (NodeDestination(succ),)
            if len(items) == 1:
                copy, cb = items[0]
                self._send(dest, copy, now, cb)
                continue
            self.counters["copy_batches_sent"] += 1
            batch = StoreBatchReq(tuple(copy for copy, _ in items))
            self._send(dest, batch, now, self._batch_answered([cb for _, cb in items]))

    @staticmethod
    def _batch_answered(callbacks: list[Callback]) -> Callback:
        """Hand each copy's own answer (or the failure of the whole batch) to its callback."""

        def answered(message: Message | None, now: float) -> None:
            body = message.body if message is not None else None
            if (
                message is None
                or not isinstance(body, StoreBatchAns)
                or len(body.answers) != len(callbacks)
            ):
                for cb in callbacks:
                    cb(None, now)
                return
            for cb, answer in zip(callbacks, body.answers, strict=True):
                cb(Message(message.header, answer), now)

        return answered

    def _replica_answer(self, op: _Original) -> Callback:
        def answered(message: Message | None, now: float) -> None:
            op.pending -= 1
            if message is not None and isinstance(message.body, StoreAns):
                who = _responder(message)
                if who is not None and who not in op.acked:
                    op.acked.append(who)
            if op.pending <= 0:
                self._finish_original(op, now)

        return answered

    def _finish_original(self, op: _Original, now: float) -> None:
        if op.done:
            return
        op.done = True
        self.counters["replicas_acked"] += len(op.acked)
        self.counters["replicas_missing"] += op.targets - len(op.acked)
        if op.targets and not op.acked:
            op.reply(ErrorResponse(ErrorCode.REQUEST_TIMEOUT, b"no replica acknowledged"), now)
            return
        replicas = tuple(op.acked)
        answer = StoreAns(tuple(StoreKindResponse(k, g, replicas) for k, g in op.generations))
        op.reply(answer, now)

    def _on_copy(self, message: Message, req: StoreReq, now: float) -> None:
        refusal = self._copy_refusal(req)
        if refusal is not None:
            self._respond(message, refusal, now)
            return
        try:
            outcome = self._apply_copy(req, now)
        except StoreRejected as exc:
            self.counters["rejected_store"] += 1
            self._respond(message, ErrorResponse(exc.code, exc.info), now)
            return
        except Exception as exc:
            self.counters["rejected_store"] += 1
            self._error(message, ErrorCode.DATA_TOO_LARGE, f"store failed: {exc}", now)
            return
        self._respond(message, _copy_answer(outcome), now)

    def _copy_refusal(self, req: StoreReq) -> ErrorResponse | None:
        """Why a copy may not be taken now, or None."""
        peer = self.peer
        state = peer.state
        if state is PeerState.LEAVING or self._leave is not None:
            self.counters["rejected_in_progress"] += 1
            return ErrorResponse(ErrorCode.IN_PROGRESS, b"leaving")
        if (
            state is PeerState.JOINED
            and peer.is_responsible(req.resource)
            and self._in_handoff(req.resource)
        ):
            self.counters["rejected_in_progress"] += 1
            return ErrorResponse(ErrorCode.IN_PROGRESS, b"range being handed to a joining peer")
        return None

    def _on_copy_batch(self, message: Message, batch: StoreBatchReq, now: float) -> None:
        """Apply a batch of copies in one transaction; answer each in order."""
        self.counters["copy_batches_received"] += 1
        answers: list[StoreAns | ErrorResponse] = []
        todo: list[tuple[int, StoreReq, Role]] = []
        for req in batch.stores:
            refusal = self._copy_refusal(req) if req.replica_number != 0 else None
            if req.replica_number == 0:
                refusal = ErrorResponse(ErrorCode.INVALID_MESSAGE, b"an original store in a batch")
            answers.append(refusal or _PLACEHOLDER)
            if refusal is None:
                todo.append((len(answers) - 1, req, self._copy_role(req)))
        if todo:
            ms = self.ms(now)
            try:
                results = self.backend.apply_batch([(req, ms, role) for _, req, role in todo])
            except Exception as exc:  # e.g. the map is full: every copy of the batch refused
                self.counters["rejected_store"] += len(todo)
                failed = ErrorResponse(ErrorCode.DATA_TOO_LARGE, f"store failed: {exc}".encode())
                for i, _, _ in todo:
                    answers[i] = failed
            else:
                self._dirty = True
                for (i, req, role), result in zip(todo, results, strict=True):
                    if isinstance(result, StoreRejected):
                        self.counters["rejected_store"] += 1
                        answers[i] = ErrorResponse(result.code, result.info)
                        continue
                    self.counters["stores_copy"] += 1
                    self._pass_on(req, result, role, now)
                    answers[i] = _copy_answer(result)
        self._respond(message, StoreBatchAns(tuple(answers)), now)

    def _copy_role(self, req: StoreReq) -> Role:
        peer = self.peer
        mine = peer.state is PeerState.JOINED and peer.is_responsible(req.resource)
        return Role.PRIMARY if mine else Role.REPLICA

    def _apply_copy(self, req: StoreReq, now: float) -> StoreResult:
        """Apply a replica-style store newer-wins; as the responsible peer, pass changes on."""
        role = self._copy_role(req)
        outcome = self._apply(req, now, role)
        self.counters["stores_copy"] += 1
        self._pass_on(req, outcome, role, now)
        return outcome

    def _pass_on(self, req: StoreReq, outcome: StoreResult, role: Role, now: float) -> None:
        """A copy that changed what we hold as the responsible peer goes on to our replicas."""
        peer = self.peer
        if role is Role.PRIMARY and outcome.changed:
            gens = dict(outcome.generations)
            for number, succ in enumerate(peer.successors[: self.config.replicas], start=1):
                copy = StoreReq(
                    req.resource,
                    number,
                    tuple(
                        StoreKindData(kd.kind, gens.get(kd.kind, 0), kd.values)
                        for kd in req.kind_data
                    ),
                )
                self.counters["forwarded"] += 1
                self._enqueue((NodeDestination(succ),), copy, _ignore)
            self._pump(now)

    # ------------------------------------------------------------------ join and leave
    def on_admission(self, joining: int, start: int, end: int, now: float) -> None:
        """Hand (start, end] to the joining peer, then admit it (``ChordPeer.admit``)."""
        if joining in self._handoffs:
            return  # a JoinReq again while its handoff runs
        reqs = list(
            self.backend.store_reqs(
                start, end, self.ms(now), 1, max_values=self.config.batch_values
            )
        )
        if not reqs:
            self.peer.admit(joining, now)
            return
        handoff = _Handoff(joining, start, end, len(reqs))
        self._handoffs[joining] = handoff
        for req in reqs:
            self.counters["handoff_records"] += sum(len(kd.values) for kd in req.kind_data)
            self._enqueue((NodeDestination(joining),), req, self._handoff_answer(handoff))
        self._pump(now)
        self._at(now + self.config.handoff_timeout, lambda t: self._admit(handoff, t))

    def _handoff_answer(self, handoff: _Handoff) -> Callback:
        def answered(message: Message | None, now: float) -> None:
            handoff.outstanding -= 1
            if message is None or not isinstance(message.body, StoreAns):
                handoff.failed += 1
            if handoff.outstanding <= 0:
                self._admit(handoff, now)

        return answered

    def _admit(self, handoff: _Handoff, now: float) -> None:
        if handoff.done:
            return
        handoff.done = True
        if self._handoffs.get(handoff.to) is handoff:
            del self._handoffs[handoff.to]
        self.peer.admit(handoff.to, now)

    def on_leave(self, successor: int | None, now: float) -> None:
        """Hand every primary record to ``successor``, then let the peer send its LeaveReqs
        (``ChordPeer.proceed_leave``)."""
        span = self.peer.responsible_range()
        if successor is None or span is None:
            self.peer.proceed_leave(now)
            return
        lo, me = span
        reqs = list(
            self.backend.store_reqs(lo, me, self.ms(now), 1, max_values=self.config.batch_values)
        )
        if not reqs:
            self.peer.proceed_leave(now)
            return
        leave = _Handoff(successor, lo, me, len(reqs))
        self._leave = leave
        for req in reqs:
            self.counters["leave_records"] += sum(len(kd.values) for kd in req.kind_data)
            self._enqueue((NodeDestination(successor),), req, self._leave_answer(leave))
        self._pump(now)
        self._at(now + self.config.handoff_timeout, lambda t: self._proceed_leave(leave, t))

    def _leave_answer(self, leave: _Handoff) -> Callback:
        def answered(message: Message | None, now: float) -> None:
            leave.outstanding -= 1
            if message is None or not isinstance(message.body, StoreAns):
                leave.failed += 1
            if leave.outstanding <= 0:
                self._proceed_leave(leave, now)

        return answered

    def _proceed_leave(self, leave: _Handoff, now: float) -> None:
        if leave.done:
            return
        leave.done = True
        self.peer.proceed_leave(now)

    # ------------------------------------------------------------------ neighbour changes
    def _evaluate_when_quiet(self, now: float) -> None:
        if now + 1e-9 < self._last_change + self.config.settle:
            return  # a later change scheduled its own evaluation
        self._evaluate(now)

    def _evaluate(self, now: float) -> None:
        peer = self.peer
        if peer.state is not PeerState.JOINED:
            return
        span = peer.responsible_range()
        if span is None:
            return
        lo, me = span
        if span != self._roles_for:
            # Rewriting roles scans every record held (both ranges) in one write transaction
            # on the event loop: 100,000 records stalled a node for ~1 s. Between neighbour
            # changes each write sets its own role, so the scan is needed only after one.
            b = self.backend
            promoted = b.set_role_range(lo, me, Role.PRIMARY)
            if lo != me and b.set_role_range(me, lo, Role.REPLICA):
                self._dirty = True
            if promoted:
                self._dirty = True
                self.counters["promoted"] += promoted
            self._roles_for = span
            self.counters["role_scans"] += 1
        succs = tuple(peer.successors[: self.config.replicas])
        old_range, old_succs = self._range, self._succs
        self._range, self._succs = span, succs
        for number, succ in enumerate(succs, start=1):
            if span != old_range or succ not in old_succs:
                self._start_sync(succ, number, now)
        if span != old_range:
            self._hand_off_garbage(now)

    # ------------------------------------------------------------------ anti-entropy
    def _ae_round(self, now: float) -> None:
        self._at(now + self.config.anti_entropy_interval, self._ae_round)
        if self.peer.state is not PeerState.JOINED:
            return
        if now >= self._last_change + self.config.settle:
            self._evaluate(now)
        if self._range is None:
            return
        for number, succ in enumerate(self._succs, start=1):
            self._start_sync(succ, number, now)

    def _start_sync(self, to: int, number: int, now: float) -> None:
        if self._range is None:
            return
        if to in self._syncs:
            self._resync.add(to)
            return
        lo, hi = self._range
        sync = _Sync(to, number, lo, hi, self.config.anti_entropy_buckets)
        self._syncs[to] = sync
        self.counters["sync_rounds"] += 1
        query = ae.digest_query(lo, hi, sync.buckets)
        body = FetchReq(hi, (StoredDataSpecifier(ANTI_ENTROPY_KIND, 0, (query,)),))
        sync.outstanding = 1
        self._send((NodeDestination(to),), body, now, self._digest_answer(sync))

    def _digest_answer(self, sync: _Sync) -> Callback:
        def answered(message: Message | None, now: float) -> None:
            sync.outstanding -= 1
            theirs = _hashes(message, sync.buckets)
            if theirs is None or self._range != (sync.lo, sync.hi):
                self._end_sync(sync, now, again=theirs is not None)
                return
            ms = self.ms(now)
            ours = self.backend.digest(sync.lo, sync.hi, sync.buckets, ms)
            differ = [i for i in range(sync.buckets) if ours[i] != theirs[i]]
            self.counters["sync_buckets_differing"] += len(differ)
            dest = (NodeDestination(sync.to),)
            step = max(1, self.config.buckets_per_pull)
            for j in range(0, len(differ), step):
                keys = tuple(
                    ae.bucket_query(sync.lo, sync.hi, sync.buckets, i) for i in differ[j : j + step]
                )
                body = FetchReq(sync.hi, (StoredDataSpecifier(ANTI_ENTROPY_KIND, 0, keys),))
                sync.outstanding += 1
                self._send(dest, body, now, self._pulled(sync))
            # Held by the push phase until its last bucket is queued; it ends the sync when
            # nothing else is outstanding.
            sync.outstanding += 1
            sync.to_push.extend(differ)
            self._push_some(sync, now)

        return answered

    def _push_some(self, sync: _Sync, now: float) -> None:
        """Queue the records of differing buckets only while the push queue is short: building
        every record of a badly diverged range at once (a replica left short by an overload)
        held the event loop for seconds."""
        if self._syncs.get(sync.to) is not sync or self._range != (sync.lo, sync.hi):
            sync.to_push.clear()  # superseded: the next round compares again
        ms = self.ms(now)
        dest = (NodeDestination(sync.to),)
        while sync.to_push and len(self._queue) < self.config.max_in_flight:
            i = sync.to_push.popleft()
            records = self.backend.records_in_bucket(sync.lo, sync.hi, sync.buckets, i, ms)
            self.counters["sync_records_pushed"] += len(records)
            self.counters["sync_push_steps"] += 1
            for req in self._requests_for(records, sync.number):
                sync.outstanding += 1
                self._enqueue(dest, req, self._sync_step(sync))
        self._pump(now)
        if sync.to_push:
            self._at(now + PUSH_RECHECK, lambda t: self._push_some(sync, t))
            return
        sync.outstanding -= 1
        if sync.outstanding == 0:
            self._end_sync(sync, now)

    def _sync_step(self, sync: _Sync) -> Callback:
        def answered(message: Message | None, now: float) -> None:
            sync.outstanding -= 1
            if sync.outstanding == 0:
                self._end_sync(sync, now)

        return answered

    def _pulled(self, sync: _Sync) -> Callback:
        def answered(message: Message | None, now: float) -> None:
            sync.outstanding -= 1
            if message is not None and isinstance(message.body, FetchAns):
                more = self._apply_pulled(message.body, now)
                if more and self._syncs.get(sync.to) is sync and self._range == (sync.lo, sync.hi):
                    # The answer stopped at its size limit: ask for the rest of those buckets.
                    spec = StoredDataSpecifier(ANTI_ENTROPY_KIND, 0, tuple(more))
                    sync.outstanding += 1
                    self.counters["sync_pages"] += 1
                    self._send(
                        (NodeDestination(sync.to),), FetchReq(sync.hi, (spec,)), now, answered
                    )
            if sync.outstanding == 0:
                self._end_sync(sync, now)

        return answered

    def _apply_pulled(self, body: FetchAns, now: float) -> list[bytes]:
        """Apply the records of a bucket answer (newer wins); returns its continuations."""
        by_resource: dict[int, dict[int, list[StoredData]]] = {}
        more: list[bytes] = []
        for kr in body.kind_responses:
            if kr.kind != ANTI_ENTROPY_KIND:
                continue
            for sd in kr.values:
                if ae.is_continuation(sd):
                    more.append(sd.key)
                    continue
                try:
                    resource, kind, key = ae.parse_record_key(sd.key)
                except ValueError:
                    continue
                entry = StoredData(
                    sd.storage_time, sd.lifetime, key, sd.value, sd.exists, sd.signature
                )
                by_resource.setdefault(resource, {}).setdefault(kind, []).append(entry)
        for resource, kinds in by_resource.items():
            req = StoreReq(
                resource, 1, tuple(StoreKindData(k, 0, tuple(v)) for k, v in kinds.items())
            )
            self.counters["sync_records_pulled"] += sum(len(v) for v in kinds.values())
            try:
                self._apply_copy(req, now)
            except Exception:  # one bad record must not stop the repair
                continue
        return more

    def _end_sync(self, sync: _Sync, now: float, *, again: bool = False) -> None:
        if self._syncs.get(sync.to) is not sync:
            return
        del self._syncs[sync.to]
        if sync.to in self._resync or again:
            self._resync.discard(sync.to)
            if sync.to in self._succs:
                number = self._succs.index(sync.to) + 1
                self._at(now, lambda t: self._start_sync(sync.to, number, t))

    # ------------------------------------------------------------------ garbage and expiry
    def _garbage_round(self, now: float) -> None:
        cfg = self.config
        self._at(now + cfg.garbage_interval, self._garbage_round)
        if now < self._last_change + cfg.garbage_quiet:
            return
        self._hand_off_garbage(now)

    def _hand_off_garbage(self, now: float) -> None:
        """Store what we hold outside (pred[replicas], self] to its responsible peer and drop
        it once every store is acknowledged. Also right after a neighbour change settled: a
        peer that was cut off may hold the only copy of what it took meanwhile (a ring of one
        takes every write), and that must reach the owner before anyone reads it there."""
        cfg = self.config
        peer = self.peer
        if self._garbage_busy or peer.state is not PeerState.JOINED or self._range is None:
            return
        preds = peer.predecessors
        if len(preds) <= cfg.replicas:
            return  # a ring this small: every peer keeps every range
        keep_lo = preds[cfg.replicas]
        me = self._me
        reqs = list(self.backend.store_reqs(me, keep_lo, self.ms(now), 1))
        if not reqs:
            return
        self._garbage_busy = True
        state = _Handoff(keep_lo, me, keep_lo, len(reqs))
        for req in reqs:
            self.counters["garbage_records"] += sum(len(kd.values) for kd in req.kind_data)
            self._enqueue((ResourceDestination(req.resource),), req, self._garbage_answer(state))
        self._pump(now)

    def _garbage_answer(self, state: _Handoff) -> Callback:
        def answered(message: Message | None, now: float) -> None:
            state.outstanding -= 1
            if message is None or not isinstance(message.body, StoreAns):
                state.failed += 1
            if state.outstanding > 0:
                return
            self._garbage_busy = False
            preds = self.peer.predecessors
            r = self.config.replicas
            if state.failed or len(preds) <= r or preds[r] != state.to:
                return  # try again next round, with the view of then
            deleted = self.backend.delete_range(state.lo, state.hi)
            self._dirty = True
            self.counters["garbage_deleted"] += deleted

        return answered

    def _sweep_round(self, now: float) -> None:
        cfg = self.config
        removed = 0
        try:
            removed = self.backend.sweep(self.ms(now), cfg.sweep_limit)
        except Exception:  # a full map, a fault of the store: try again next round
            self.counters["sweep_errors"] += 1
        finally:
            # Re-armed whatever happened: a sweeper that stops leaves a full store full.
            busy = removed >= cfg.sweep_limit
            self._at(now + (0.05 if busy else cfg.sweep_interval), self._sweep_round)
        if removed:
            self._dirty = True
            self.counters["swept"] += removed


def _ignore(message: Message | None, now: float) -> None:
    return None


def _hashes(message: Message | None, buckets: int) -> Sequence[bytes] | None:
    if message is None or not isinstance(message.body, FetchAns):
        return None
    for kr in message.body.kind_responses:
        if kr.kind == ANTI_ENTROPY_KIND and kr.values:
            raw = kr.values[0].value
            if len(raw) != buckets * ae.HASH_BYTES:
                return None
            return [raw[i * ae.HASH_BYTES : (i + 1) * ae.HASH_BYTES] for i in range(buckets)]
    return None


# Stands for an answer not known yet while a batch is applied (always replaced).
_PLACEHOLDER = ErrorResponse(ErrorCode.INVALID_MESSAGE, b"not applied")


def _copy_answer(outcome: StoreResult) -> StoreAns:
    return StoreAns(tuple(StoreKindResponse(k, g) for k, g in outcome.generations))
