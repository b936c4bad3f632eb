"""A deterministic simulator that drives ``ChordPeer`` over a virtual network and clock.

Every peer is the real state machine of ``overlay.chord``; only the network and the clock are
simulated. One ``random.Random(seed)`` feeds everything (node ids, latencies, loss, each peer's
own generator), events are ordered by (time, sequence number), so a seed reproduces a run
exactly.

Link model (what the asyncio runtime does with TCP):

- ``Send`` with an address of a live node connects (a link both ways) and delivers after the
  latency; with a ``next_hop`` that has a link to the sender, it uses the link.
- A send to a crashed node comes back as ``link_failed`` after about one latency (the RST of a
  killed process), unless ``silent_failures``: then crashed nodes swallow everything and only
  missed pings find them.
- No address and no link: ``link_failed``.
- Messages on one link arrive in order. ``loss`` drops messages at random; partitions drop
  every message between groups.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
import time
from bisect import bisect_left, insort
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from overlay.actions import (
    Address,
    AppRequest,
    Dropped,
    LocalAnswer,
    PeerState,
    RequestCompleted,
    RequestFailed,
    Send,
    StateChanged,
)
from overlay.chord import ChordPeer
from overlay.config import ChordConfig
from overlay.core import OverlayCore
from overlay.framing import DEFAULT_MAX_PAYLOAD
from overlay.ids import MASK
from overlay.messages import (
    ApplyAns,
    ApplyReq,
    ErrorCode,
    ErrorResponse,
    FetchAns,
    FetchReq,
    Message,
    MessageBody,
    NodeDestination,
    ResourceDestination,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreReq,
)
from overlay.operations import KindOperation
from overlay.replication import NOT_RESPONSIBLE, Replicator
from overlay.replication_backend import RecordBackend, ReplicationConfig

_DELIVER, _TIMER, _LINK_FAILED, _CALL = range(4)


class SimNode:
    """One simulated process: a peer, its address and its links."""

    __slots__ = (
        "address",
        "alive",
        "backend",
        "core",
        "group",
        "last_sent",
        "last_sent_cap",
        "links",
        "node_id",
        "timer_at",
    )

    def __init__(
        self, node_id: int, address: Address, core: OverlayCore, backend: RecordBackend | None
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.core = core
        self.backend = backend
        self.alive = True
        self.links: set[int] = set()
        self.timer_at = math.inf
        self.group = 0
        # when our last message to each peer arrives: a link delivers in order
        self.last_sent: dict[int, float] = {}
        self.last_sent_cap = 64

    @property
    def peer(self) -> ChordPeer:
        return self.core.peer

    @property
    def replicator(self) -> Replicator | None:
        return self.core.replicator


@dataclass(slots=True)
class Lookup:
    origin: int
    target: int
    started: float
    delivered_at: int | None = None
    hops: int | None = None
    responsible: int | None = None  # the true responsible peer when it was delivered
    answered: bool = False
    failed: bool = False
    error: str | None = None  # the text of an ErrorResponse answer

    @property
    def success(self) -> bool:
        return (
            self.answered
            and self.delivered_at is not None
            and self.delivered_at == self.responsible
        )


@dataclass(eq=False)
class ClientOp:
    """A Store or Fetch a test issued through the ring (``Simulation.put`` / ``get``).

    Retried (same origin, new transaction) while the answer says In_Progress or "not
    responsible", or the request failed, up to ``max_attempts``."""

    origin: int
    body: StoreReq | FetchReq | ApplyReq
    started: float
    max_attempts: int = 20
    to: int | None = None  # send to this node id instead of routing to the resource
    attempts: int = 0
    done: bool = False
    answer: MessageBody | None = None
    finished: float | None = None

    @property
    def ok(self) -> bool:
        return self.done and isinstance(self.answer, StoreAns | FetchAns | ApplyAns)

    @property
    def error_code(self) -> int | None:
        return self.answer.error_code if isinstance(self.answer, ErrorResponse) else None

    def values(self) -> dict[bytes, bytes]:
        """A fetch's live dictionary entries (all kinds merged)."""
        out: dict[bytes, bytes] = {}
        if isinstance(self.answer, FetchAns):
            for kr in self.answer.kind_responses:
                for sd in kr.values:
                    out[sd.key] = sd.value
        return out

    def generation(self, kind: int) -> int | None:
        if isinstance(self.answer, FetchAns):
            for kr in self.answer.kind_responses:
                if kr.kind == kind:
                    return kr.generation
        return None


@dataclass
class SimParams:
    nodes: int = 100
    lookups: int = 1000
    churn: float = 0.0  # events per second (joins and failures alternate)
    churn_duration: float = 60.0
    fail: float = 0.0  # fraction killed at once after convergence
    seed: int = 1
    latency: float = 0.005
    jitter_latency: float = 0.002
    loss: float = 0.0
    config: ChordConfig | None = None
    build: str = "steady"  # "steady": joins at join_rate; "waves": see _build_in_waves
    join_rate: float = 50.0  # joins per virtual second while building the ring (steady)
    wave_growth: float = 1.0  # waves: each wave adds this many times the ring's size
    wave_seconds: float = 1.0  # waves: virtual seconds over which a wave's joins are spread
    quiet: float = 30.0  # virtual seconds of maintenance traffic measured after convergence
    settle: float = 0.0  # virtual seconds run after convergence before that measurement
    lookup_rate: float = 2000.0  # lookups per virtual second
    silent_failures: bool = False
    converge_deadline: float = 300.0  # virtual seconds allowed for each convergence phase


class Simulation:
    def __init__(
        self,
        seed: int = 1,
        config: ChordConfig | None = None,
        *,
        latency: float = 0.005,
        jitter_latency: float = 0.002,
        loss: float = 0.0,
        silent_failures: bool = False,
        use_codec: bool = False,
        backend_factory: Callable[[int], RecordBackend] | None = None,
        replication: ReplicationConfig | None = None,
        operations: Mapping[int, KindOperation] | None = None,
    ) -> None:
        """``backend_factory(node_id)`` gives every peer started a record store (the same
        directory again for a restarted id, as a real node restarts on its data dir) and a
        ``Replicator`` driving it with ``replication``."""
        self.backend_factory = backend_factory
        self.operations = operations
        self.replication = replication
        self.ops: dict[tuple[int, int], ClientOp] = {}  # (origin, transaction id) -> op
        self.submitted: dict[tuple[int, int], ClientOp] = {}  # (origin, token) -> op
        self._tokens = 0
        self._store_clock = 0
        self.rng = random.Random(seed)
        self.config = config or ChordConfig()
        self.latency = latency
        self.jitter_latency = jitter_latency
        self.loss = loss
        self.silent_failures = silent_failures
        self.now = 0.0
        self.nodes: dict[int, SimNode] = {}  # current incarnation per id
        self.by_address: dict[Address, SimNode] = {}
        self.ring: list[int] = []  # ground truth: ids of live JOINED peers, sorted
        self.messages: dict[str, int] = {}
        self.messages_total = 0
        self.messages_all = 0
        self.lookups: dict[tuple[int, int], Lookup] = {}
        self.failed_requests = 0
        self.dropped: dict[str, int] = {}
        self.on_dropped: Callable[[int, Dropped], None] | None = None
        self.partitioned = False
        self.oversized = 0  # messages too large for a frame (counted with use_codec)
        # Events (time, sequence, kind, node, payload), untyped so the event loop needs no
        # casts, run in (time, sequence) order from two heaps: peer timers (about one per peer)
        # and everything else (messages in flight, a few milliseconds ahead). Most events are
        # messages, and popping them from the small heap is the cheaper pop.
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._timers: list[tuple[float, int, int, Any, Any]] = []
        self._seq = 0
        self._next_port = 10000
        self._codec: tuple[Callable[[Message], bytes], Callable[[bytes], Message]] | None = None
        if use_codec:
            self._codec = _load_codec()

    # ------------------------------------------------------------------ nodes
    def add_node(
        self,
        node_id: int | None = None,
        bootstrap: Sequence[int] | None = None,
    ) -> int:
        """Start a peer now. ``bootstrap``: ids of peers whose addresses it joins through; None
        picks up to three random joined peers (a new ring when there is none); ``()`` starts
        alone."""
        if node_id is None:
            node_id = self.rng.getrandbits(128)
            while node_id in self.nodes and self.nodes[node_id].alive:
                node_id = self.rng.getrandbits(128)
        node_id &= MASK
        old = self.nodes.get(node_id)
        if old is not None and old.alive:
            raise ValueError("a live node already has this id")
        if old is not None:
            address = old.address  # a restart comes back on the same address
        else:
            address = Address("10.0.0.1", self._next_port)
            self._next_port += 1
        backend = self.backend_factory(node_id) if self.backend_factory is not None else None
        core = OverlayCore(
            node_id,
            address,
            self.config,
            random.Random(self.rng.getrandbits(64)),
            now=self.now,
            backend=backend,
            replication=self.replication,
            operations=self.operations,
        )
        node = SimNode(node_id, address, core, backend)
        if old is not None:
            node.last_sent = old.last_sent  # what it sent before the crash may be in flight
        self.nodes[node_id] = node
        self.by_address[address] = node
        if bootstrap is None:
            # a few random joined peers, as an operator would list several bootstrap addresses
            picks = self.rng.sample(self.ring, min(3, len(self.ring)))
            boot = [self.nodes[b] for b in picks]
        else:
            boot = [self.nodes[b] for b in bootstrap]
        core.start(self.now, [b.address for b in boot])
        self._drain(node)
        return node_id

    def crash(self, node_id: int) -> None:
        """Kill a process: no goodbye; its links break (or black-hole with silent_failures)."""
        node = self.nodes[node_id]
        if not node.alive:
            return
        node.alive = False
        self._ring_remove(node_id)
        if node.backend is not None:
            node.backend.close()  # the process is gone; a restart reopens its directory
        if not self.silent_failures:
            for other in node.links:
                peer_node = self.nodes.get(other)
                if peer_node is not None:
                    peer_node.links.discard(node_id)
            node.links.clear()

    def inject(self, node_id: int, message: Message) -> None:
        """Hand ``message`` to a peer now, as if it had arrived from the network."""
        node = self.nodes[node_id]
        node.core.receive(message, self.now)
        self._drain(node)

    def leave(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.core.leave(self.now)
        self._drain(node)

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Split the network: peers in different groups cannot reach each other."""
        for node in self.nodes.values():
            node.group = 0
        for index, group in enumerate(groups, start=1):
            for node_id in group:
                self.nodes[node_id].group = index
        self.partitioned = True

    def heal(self) -> None:
        for node in self.nodes.values():
            node.group = 0
        self.partitioned = False

    def live_ids(self) -> list[int]:
        return sorted(n for n, node in self.nodes.items() if node.alive)

    def peer(self, node_id: int) -> ChordPeer:
        return self.nodes[node_id].peer

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        self._push(when, _CALL, None, fn)

    # ------------------------------------------------------------------ running
    def run_until(self, until: float) -> None:
        heap = self._heap
        timers = self._timers
        pop = heapq.heappop
        drain = self._drain
        while True:
            if heap:
                source = timers if timers and timers[0] < heap[0] else heap
            elif timers:
                source = timers
            else:
                break
            if source[0][0] > until:
                break
            t, _, kind, node, payload = pop(source)
            self.now = t
            if kind == _DELIVER:
                if node.alive:
                    node.core.receive(payload[0], t)
                    drain(node)
                elif not self.silent_failures:
                    # in flight to a process that died meanwhile: the sender sees the RST
                    self._fail_back(payload[1], node.node_id, None)
            elif kind == _TIMER:
                if node.alive and node.timer_at == t:
                    node.timer_at = math.inf
                    node.core.tick(t)
                    drain(node)
                    if node.timer_at <= t:
                        raise RuntimeError(f"peer {node.node_id:032x} wants a tick in the past")
            elif kind == _LINK_FAILED:
                if node.alive:
                    node.core.link_failed(payload[0], payload[1], t)
                    drain(node)
            else:
                payload()
        self.now = max(self.now, until)

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until_converged(
        self, deadline: float, *, full: bool = False, step: float = 0.25
    ) -> float | None:
        """Run until ``ring_is_consistent(full)``; the virtual time it happened, or None."""
        while True:
            if self.ring_is_consistent(full=full):
                return self.now
            if self.now >= deadline:
                return None
            self.run_until(min(deadline, self.now + step))

    def ring_is_consistent(self, *, full: bool = False) -> bool:
        """Every live peer is joined and its first successor and predecessor are right
        (``full``: its whole successor and predecessor lists are)."""
        ring = self.ring
        n = len(ring)
        for node in self.nodes.values():
            if node.alive and node.peer.state is not PeerState.JOINED:
                return False
        if n == 0:
            return True
        r = self.config.successors
        rp = self.config.predecessors
        for i, node_id in enumerate(ring):
            peer = self.nodes[node_id].peer
            succ = peer.successors
            pred = peer.predecessors
            if n == 1:
                if succ or pred:
                    return False
                continue
            if not succ or succ[0] != ring[(i + 1) % n] or not pred or pred[0] != ring[i - 1]:
                return False
            if full:
                want_s = tuple(ring[(i + k) % n] for k in range(1, min(r, n - 1) + 1))
                want_p = tuple(ring[(i - k) % n] for k in range(1, min(rp, n - 1) + 1))
                if succ != want_s or pred != want_p:
                    return False
        return True

    def responsible(self, target: int) -> int | None:
        """The peer that truly owns ``target`` among the live joined peers."""
        ring = self.ring
        if not ring:
            return None
        i = bisect_left(ring, target & MASK)
        return ring[i] if i < len(ring) else ring[0]

    # ------------------------------------------------------------------ lookups
    def lookup(self, origin: int, target: int) -> Lookup:
        """Start a Fetch for ``target`` from ``origin``; the record fills in as it runs."""
        node = self.nodes[origin]
        record = Lookup(origin, target & MASK, self.now)
        tid = node.core.request(
            [ResourceDestination(target & MASK)], FetchReq(resource=target & MASK), self.now
        )
        self.lookups[(origin, tid)] = record
        self._drain(node)
        return record

    def counted(self) -> dict[str, int]:
        return dict(sorted(self.messages.items()))

    def reset_counters(self) -> None:
        self.messages = {}
        self.messages_total = 0

    # ------------------------------------------------------------------ records
    def store_time(self) -> int:
        """A storage_time (ms) later than every one handed out before: a writer's clock."""
        self._store_clock = max(self._store_clock + 1, int(self.now * 1000))
        return self._store_clock

    def put(
        self,
        origin: int,
        resource: int,
        kind: int,
        key: bytes,
        value: bytes,
        *,
        exists: bool = True,
        lifetime: int = 86_400,
        generation: int = 0,
        storage_time: int | None = None,
        max_attempts: int = 20,
        to: int | None = None,
    ) -> ClientOp:
        """Start an original Store of one dictionary entry from ``origin`` through the ring."""
        entry = StoredData(
            self.store_time() if storage_time is None else storage_time,
            lifetime,
            key,
            value,
            exists,
        )
        body = StoreReq(resource & MASK, 0, (StoreKindData(kind, generation, (entry,)),))
        op = ClientOp(origin, body, self.now, max_attempts, to)
        self._issue(op)
        return op

    def apply(
        self, origin: int, resource: int, kind: int, operation: bytes, *, max_attempts: int = 20
    ) -> ClientOp:
        """Start an owner-side operation (``ApplyReq``) from ``origin`` as its application
        would: served on the spot when ``origin`` owns the resource, else through the ring."""
        body = ApplyReq(resource & MASK, kind, 0, operation)
        op = ClientOp(origin, body, self.now, max_attempts)
        self._issue(op)
        return op

    def get(self, origin: int, resource: int, kind: int, keys: tuple[bytes, ...] = ()) -> ClientOp:
        """Start a Fetch of ``kind`` (``keys``, or all) at ``resource`` from ``origin``."""
        body = FetchReq(resource & MASK, (StoredDataSpecifier(kind, 0, keys),))
        op = ClientOp(origin, body, self.now)
        self._issue(op)
        return op

    def wait(self, ops: Sequence[ClientOp], timeout: float, step: float = 0.05) -> bool:
        """Run until every op is done; False if ``timeout`` virtual seconds pass first."""
        end = self.now + timeout
        while not all(op.done for op in ops):
            if self.now >= end:
                return False
            self.run_until(min(end, self.now + step))
        return True

    def store(self, origin: int, resource: int, kind: int, key: bytes, value: bytes) -> ClientOp:
        op = self.put(origin, resource, kind, key, value)
        self.wait([op], 60.0)
        return op

    def fetch(
        self, origin: int, resource: int, kind: int, keys: tuple[bytes, ...] = ()
    ) -> ClientOp:
        op = self.get(origin, resource, kind, keys)
        self.wait([op], 60.0)
        return op

    def holdings(self) -> dict[tuple[int, int, bytes], list[tuple[int, int, bool, bytes]]]:
        """What the live peers hold: (resource, kind, key) -> [(node, storage_time, exists,
        value)], tombstones included, expired records left out."""
        now_ms = int(self.now * 1000)
        out: dict[tuple[int, int, bytes], list[tuple[int, int, bool, bytes]]] = {}
        for node_id in self.live_ids():
            backend = self.nodes[node_id].backend
            if backend is None:
                continue
            for rec in backend.scan_range(0, 0, now_ms):
                out.setdefault((rec.resource, rec.kind, rec.key), []).append(
                    (node_id, rec.storage_time, rec.exists, rec.value)
                )
        return out

    def copies(self, resource: int, kind: int, key: bytes) -> list[tuple[int, bytes]]:
        """(node, value) of every live peer holding an existing value of this entry."""
        now_ms = int(self.now * 1000)
        spec = (StoredDataSpecifier(kind, 0, (key,)),)
        out: list[tuple[int, bytes]] = []
        for node_id in self.live_ids():
            backend = self.nodes[node_id].backend
            if backend is None:
                continue
            for kr in backend.fetch(resource, spec, now_ms):
                out.extend((node_id, sd.value) for sd in kr.values)
        return out

    def replication_busy(self) -> bool:
        return any(
            n.replicator is not None and n.replicator.busy for n in self.nodes.values() if n.alive
        )

    def _issue(self, op: ClientOp) -> None:
        node = self.nodes.get(op.origin)
        op.attempts += 1
        if node is None or not node.alive:
            op.done, op.finished = True, self.now
            return
        if op.to is None:
            # What a node's application does: served on the spot when this node is
            # responsible (no message), else through the ring.
            self._tokens += 1
            self.submitted[(op.origin, self._tokens)] = op
            node.core.submit(self._tokens, op.body, self.now)
        else:
            tid = node.core.request([NodeDestination(op.to)], op.body, self.now)
            self.ops[(op.origin, tid)] = op
        self._drain(node)

    def _op_answered(self, op: ClientOp, body: MessageBody | None) -> None:
        retry = body is None or (
            isinstance(body, ErrorResponse)
            and (
                body.error_code in (ErrorCode.IN_PROGRESS, ErrorCode.REQUEST_TIMEOUT)
                or (body.error_code == ErrorCode.FORBIDDEN and body.text == NOT_RESPONSIBLE)
            )
        )
        op.answer = body
        if retry and op.attempts < op.max_attempts:
            self.call_at(self.now + 0.25, lambda: self._issue(op))
            return
        op.done, op.finished = True, self.now

    # ------------------------------------------------------------------ internals
    def _push(self, when: float, kind: int, node: SimNode | None, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, node, payload))

    def _ring_remove(self, node_id: int) -> None:
        i = bisect_left(self.ring, node_id)
        if i < len(self.ring) and self.ring[i] == node_id:
            del self.ring[i]

    def _fail_back(self, sender_id: int, hop: int | None, address: Address | None) -> None:
        sender = self.nodes.get(sender_id)
        if sender is not None and sender.alive:
            self._push(self.now + self.latency, _LINK_FAILED, sender, (hop, address))

    def _drain(self, node: SimNode) -> None:
        core = node.core
        actions = core.take_actions()
        while actions:
            for action in actions:
                if type(action) is Send:
                    self._send(node, action)
                elif type(action) is LocalAnswer:
                    op = self.submitted.pop((node.node_id, action.token), None)
                    if op is not None:
                        self._op_answered(op, action.body)
                elif type(action) is AppRequest:
                    self._on_app_request(node, action)
                elif type(action) is RequestCompleted:
                    op = self.ops.pop((node.node_id, action.transaction_id), None)
                    if op is not None:
                        self._op_answered(op, action.response.body)
                        continue
                    record = self.lookups.get((node.node_id, action.transaction_id))
                    if record is not None:
                        record.answered = True
                        body = action.response.body
                        if isinstance(body, ErrorResponse):
                            record.error = f"{body.error_code}: {body.text}"

                elif type(action) is RequestFailed:
                    op = self.ops.pop((node.node_id, action.transaction_id), None)
                    if op is not None:
                        self._op_answered(op, None)
                        continue
                    record = self.lookups.get((node.node_id, action.transaction_id))
                    if record is not None:
                        record.failed = True
                    self.failed_requests += 1
                elif type(action) is Dropped:
                    self.dropped[action.reason] = self.dropped.get(action.reason, 0) + 1
                    if self.on_dropped is not None:
                        self.on_dropped(node.node_id, action)
                elif type(action) is StateChanged:
                    if action.state is PeerState.JOINED and node.alive:
                        i = bisect_left(self.ring, node.node_id)
                        if i >= len(self.ring) or self.ring[i] != node.node_id:
                            insort(self.ring, node.node_id)
                    elif action.state is not PeerState.JOINED:
                        self._ring_remove(node.node_id)
            actions = core.take_actions()
        if node.alive:
            deadline = core.next_deadline()
            if deadline is not None and deadline < node.timer_at:
                node.timer_at = deadline
                self._seq += 1
                heapq.heappush(self._timers, (deadline, self._seq, _TIMER, node, None))

    def _on_app_request(self, node: SimNode, action: AppRequest) -> None:
        message = action.message
        via = message.header.via_list
        origin = getattr(via[0], "node_id", None) if via else None
        if origin is not None:
            record = self.lookups.get((origin, message.header.transaction_id))
            if record is not None:
                record.delivered_at = node.node_id
                record.hops = 0 if origin == node.node_id else len(via)
                record.responsible = self.responsible(record.target)
        body = FetchAns() if isinstance(message.body, FetchReq) else message.body
        node.core.respond(message, body, self.now)

    def _send(self, node: SimNode, action: Send) -> None:
        message = action.message
        name = type(message.body).__name__
        counts = self.messages
        counts[name] = counts.get(name, 0) + 1
        self.messages_total += 1
        self.messages_all += 1
        hop = action.next_hop
        target: SimNode | None = None
        if hop is not None and hop in node.links:
            target = self.nodes.get(hop)
        elif action.address is not None:
            target = self.by_address.get(action.address)
            if target is not None and target.alive:
                node.links.add(target.node_id)
                target.links.add(node.node_id)
            elif target is not None and self.silent_failures:
                return  # a connection attempt to a dead host that never answers
        if target is None or not target.alive:
            if not (target is not None and self.silent_failures):
                self._fail_back(node.node_id, hop, action.address)
            return
        if self.partitioned and target.group != node.group:
            return
        if self.loss and self.rng.random() < self.loss:
            return
        if self._codec is not None:
            encode, decode = self._codec
            data = encode(message)
            if len(data) > DEFAULT_MAX_PAYLOAD:
                # What the runtime does with a message too large for a frame.
                self.oversized += 1
                from overlay.codec import oversized_answer  # the codec is loaded late

                stand_in = oversized_answer(message, len(data), DEFAULT_MAX_PAYLOAD)
                if stand_in is None:
                    return
                data = encode(stand_in)
            message = decode(data)
        now = self.now
        delay = self.latency
        if self.jitter_latency:
            delay += self.jitter_latency * self.rng.random()
        when = now + delay
        last_sent = node.last_sent
        to = target.node_id
        last = last_sent.get(to, 0.0)
        if when <= last:
            when = last + 1e-9  # TCP keeps a link's messages in order
        last_sent[to] = when
        if len(last_sent) >= node.last_sent_cap:
            # Entries before now cannot delay a later send: drop them to bound the memory.
            node.last_sent = {k: v for k, v in last_sent.items() if v >= now}
            node.last_sent_cap = max(64, 2 * len(node.last_sent))
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, _DELIVER, target, (message, node.node_id)))


def _load_codec() -> tuple[Callable[[Message], bytes], Callable[[bytes], Message]]:
    from overlay import codec  # imported late: the codec is optional for the simulator

    encode = getattr(codec, "encode_message", None)
    decode = getattr(codec, "decode_message", None)
    if encode is None or decode is None:
        raise RuntimeError("overlay.codec has no encode_message/decode_message")
    return encode, decode


# ---------------------------------------------------------------------------- the experiment
@dataclass
class _Stats:
    hops: list[int] = field(default_factory=list)
    done: int = 0
    success: int = 0


def _percentile(values: Sequence[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return float(ordered[k])


def _run_lookups(sim: Simulation, count: int, rate: float, settle: float) -> list[Lookup]:
    records: list[Lookup] = []
    start = sim.now
    for i in range(count):
        sim.run_until(start + i / rate)
        if not sim.ring:
            break
        origin = sim.ring[sim.rng.randrange(len(sim.ring))]
        records.append(sim.lookup(origin, sim.rng.getrandbits(128)))
    end = sim.now + settle
    while sim.now < end and not all(r.answered or r.failed for r in records):
        sim.run_for(0.5)
    return records


def _summarise(records: Sequence[Lookup]) -> tuple[float, list[int]]:
    if not records:
        return 0.0, []
    hops = [r.hops for r in records if r.success and r.hops is not None]
    return sum(1 for r in records if r.success) / len(records), hops


def _build_in_waves(sim: Simulation, p: SimParams) -> list[float | None]:
    """Grow the ring geometrically: each wave starts ``wave_growth`` x (ring size) peers over
    ``wave_seconds``, each joining through random joined peers by the real join protocol, then
    the ring runs until every first successor and predecessor is right (or
    ``converge_deadline`` passes) before the next wave. A ring of N takes log2(N) waves (at
    growth 1) of a few virtual seconds instead of N / join_rate seconds of steady joins, whose
    maintenance traffic makes a steady build cost O(N^2).

    Returns, per wave, the virtual seconds from its last join to convergence (None: it did
    not converge in time); the last wave's entry is None, the caller measures that one."""
    sim.add_node(bootstrap=())
    started = 1
    waves: list[float | None] = []
    while started < p.nodes:
        size = min(p.nodes - started, max(1, math.ceil(len(sim.ring) * p.wave_growth)))
        begin = sim.now
        for i in range(size):
            sim.run_until(begin + p.wave_seconds * i / size)
            sim.add_node()
        started += size
        if started >= p.nodes:
            waves.append(None)
            break
        last = sim.now
        done = sim.run_until_converged(last + p.converge_deadline)
        waves.append(None if done is None else done - last)
    return waves


def run_simulation(p: SimParams) -> dict[str, object]:
    """Build a ring by joins, stabilise, measure, and optionally fail and churn it.

    - ``build``: "steady" starts one peer every 1/join_rate virtual seconds; "waves" grows the
      ring geometrically (``_build_in_waves``). Both join every peer by the real protocol.
    - ``converged_rounds``: ping_interval-long rounds from the last join until every peer's
      first successor and first predecessor are correct (rounded up);
      ``lists_converged_rounds``: the same until every full successor and predecessor list is.
    - ``maintenance_msgs_per_node_s``: messages sent (every hop, all kinds) during a quiet
      window of ``p.quiet`` virtual seconds with no lookups, per node per virtual second,
      starting ``p.settle`` virtual seconds after the lists converged.
    - lookups: Fetches for random ids from random peers; success = delivered at the truly
      responsible peer and answered at the origin; hops = the via list length on delivery.
    """
    # Hundreds of thousands of long-lived objects make every full collection a long scan
    # (35% of the run at 5,000 peers) that finds no cycles: the simulation makes none worth
    # collecting early, so collection waits until the run returns.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run_simulation(p)
    finally:
        if collecting:
            gc.enable()


def _run_simulation(p: SimParams) -> dict[str, object]:
    wall = time.perf_counter()
    config = p.config or ChordConfig()
    sim = Simulation(
        p.seed,
        config,
        latency=p.latency,
        jitter_latency=p.jitter_latency,
        loss=p.loss,
        silent_failures=p.silent_failures,
    )
    rounds = config.ping_interval
    result: dict[str, object] = {"nodes": p.nodes, "seed": p.seed}
    result["build"] = p.build
    if p.build == "waves":
        waves = _build_in_waves(sim, p)
        result["wave_growth"] = p.wave_growth
        result["waves"] = len(waves)
        result["wave_converged_rounds"] = [
            math.ceil(w / rounds) if w is not None else None for w in waves[:-1]
        ]
    elif p.build == "steady":
        sim.add_node(bootstrap=())
        for i in range(1, p.nodes):
            sim.run_until(i / p.join_rate)
            sim.add_node()
    else:
        raise ValueError(f"unknown build mode {p.build!r}")
    last_join = sim.now
    converged = sim.run_until_converged(last_join + p.converge_deadline)
    result["converged"] = converged is not None
    result["converged_rounds"] = (
        math.ceil((converged - last_join) / rounds) if converged is not None else None
    )
    full = sim.run_until_converged(last_join + p.converge_deadline, full=True)
    result["lists_converged_rounds"] = (
        math.ceil((full - last_join) / rounds) if full is not None else None
    )
    result["join_seconds"] = round(last_join, 3)

    if p.settle > 0:
        sim.run_for(p.settle)  # let the finger refreshes the last joins started die down
    result["settle_seconds"] = p.settle
    result["measure_seconds"] = p.quiet
    sim.reset_counters()
    quiet_start = sim.now
    sim.run_for(p.quiet)
    elapsed = sim.now - quiet_start
    alive = len(sim.ring) or 1
    result["maintenance_msgs_per_node_s"] = round(sim.messages_total / alive / elapsed, 3)
    result["maintenance_by_kind"] = {
        k: round(v / alive / elapsed, 3) for k, v in sim.counted().items()
    }

    records = _run_lookups(sim, p.lookups, p.lookup_rate, config.request_lifetime + 5)
    success, hops = _summarise(records)
    result["lookup_success"] = success
    result["mean_hops"] = round(sum(hops) / len(hops), 4) if hops else 0.0
    result["p50_hops"] = _percentile(hops, 0.5)
    result["p99_hops"] = _percentile(hops, 0.99)
    result["max_hops"] = max(hops) if hops else 0

    if p.fail > 0:
        victims = sim.rng.sample(sim.ring, int(len(sim.ring) * p.fail))
        for victim in sorted(victims):
            sim.crash(victim)
        failed_at = sim.now
        again = sim.run_until_converged(failed_at + p.converge_deadline)
        result["after_fail_nodes"] = len(sim.ring)
        result["after_fail_converged_rounds"] = (
            math.ceil((again - failed_at) / rounds) if again is not None else None
        )
        again_full = sim.run_until_converged(failed_at + p.converge_deadline, full=True)
        result["after_fail_lists_converged_rounds"] = (
            math.ceil((again_full - failed_at) / rounds) if again_full is not None else None
        )
        records = _run_lookups(sim, p.lookups, p.lookup_rate, config.request_lifetime + 5)
        result["after_fail_lookup_success"] = _summarise(records)[0]

    if p.churn > 0:
        churn_start = sim.now
        events = int(p.churn * p.churn_duration)
        churn_records: list[Lookup] = []
        lookups_per_event = max(1, int(20 / p.churn))
        for e in range(events):
            sim.run_until(churn_start + e / p.churn)
            if e % 2 == 0 or len(sim.ring) < 8:
                sim.add_node()
            else:
                sim.crash(sim.ring[sim.rng.randrange(len(sim.ring))])
            for _ in range(lookups_per_event):
                if sim.ring:
                    origin = sim.ring[sim.rng.randrange(len(sim.ring))]
                    churn_records.append(sim.lookup(origin, sim.rng.getrandbits(128)))
        end = sim.now + config.request_lifetime + 5
        while sim.now < end and not all(r.answered or r.failed for r in churn_records):
            sim.run_for(0.5)
        result["churn_lookup_success"] = _summarise(churn_records)[0]
        result["churn_lookups"] = len(churn_records)
        settled = sim.run_until_converged(sim.now + p.converge_deadline)
        result["after_churn_converged"] = settled is not None

    result["virtual_seconds"] = round(sim.now, 3)
    result["messages_total"] = sim.messages_all
    result["wall_seconds"] = round(time.perf_counter() - wall, 3)
    return result
