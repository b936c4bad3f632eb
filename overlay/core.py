"""One sans-I/O core per node: the Chord-reload peer with the replicator stacked on it.

Like HTTP/3 over QUIC in aioquic, the lower machine (``ChordPeer``) knows nothing of the upper
one (``Replicator``): it reports what happened as events, and this composition feeds the
events the upper machine cares about to it, passing every other one up. The upper machine
calls the lower one's commands (send a request, answer one, admit a joining peer, go on with
a leave). Whoever drives a node (the asyncio runtime, the simulator) drives only this surface:

- inputs, each with ``now``: ``start``, ``receive``, ``link_failed``, ``tick``, ``leave``,
  ``request`` (a request of the application's, answered by ``RequestCompleted`` or
  ``RequestFailed``), ``respond`` (the application's answer to an ``AppRequest``) and
  ``submit`` (a Store or Fetch of the application's, answered by ``LocalAnswer`` wherever it
  was served: here with no message when this peer is responsible, else through the ring);
- outputs: ``take_actions()``, one list in order, where a ``Flush`` stands before every
  action produced after a write to the record store (the answers that may only leave once
  the write is on disk); ``next_deadline()``, when to call ``tick``.

Without a record store the core is the Chord peer alone: Store and Fetch requests reach the
application as ``AppRequest`` and joins and leaves do not wait for a handoff.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from overlay.actions import (
    Action,
    Address,
    AdmissionRequested,
    AppRequest,
    Flush,
    LeaveRequested,
    LocalAnswer,
    NeighborsChanged,
    PeerState,
    RequestCompleted,
    RequestFailed,
)
from overlay.chord import ChordPeer, PeerView
from overlay.config import ChordConfig
from overlay.messages import (
    ApplyReq,
    Destination,
    ErrorCode,
    ErrorResponse,
    FetchReq,
    Message,
    MessageBody,
    NodeDestination,
    ResourceDestination,
    StoreBatchReq,
    StoreReq,
)
from overlay.operations import KindOperation
from overlay.replication import Replicator
from overlay.replication_backend import RecordBackend, ReplicationConfig

DataRequest = StoreReq | FetchReq | ApplyReq
# What the replicator serves when it is delivered to this peer.
_DATA_BODIES = (StoreReq, FetchReq, ApplyReq, StoreBatchReq)


class OverlayCore:
    def __init__(
        self,
        node_id: int,
        address: Address,
        config: ChordConfig,
        rng: random.Random,
        *,
        now: float,
        backend: RecordBackend | None = None,
        replication: ReplicationConfig | None = None,
        operations: Mapping[int, KindOperation] | None = None,
        epoch_offset: float = 0.0,
        exp_probe: Callable[[], dict[str, object]] | None = None,
        num_resources: Callable[[], int] | None = None,
    ) -> None:
        """``now`` is the driver's clock at creation; ``epoch_offset`` turns it into the
        wall-clock time of stored records (the runtime: ``time.time() - time.monotonic()``)."""
        self.peer = ChordPeer(
            node_id,
            address,
            config,
            rng,
            exp_probe=exp_probe,
            num_resources=num_resources,
            hand_over=backend is not None,
        )
        self.replicator: Replicator | None = None
        if backend is not None:
            self.replicator = Replicator(
                self.peer,
                backend,
                replication,
                now=now,
                epoch_offset=epoch_offset,
                operations=operations,
            )
        self._out: list[Action] = []
        self._routed: dict[int, int] = {}  # transaction id of a routed submit -> its token

    # ------------------------------------------------------------------ inputs
    def start(self, now: float, bootstrap: Sequence[Address] = ()) -> None:
        self.peer.start(now, bootstrap)
        self._pump(now)

    def receive(self, message: Message, now: float) -> None:
        self.peer.receive(message, now)
        self._pump(now)

    def link_failed(self, next_hop: int | None, address: Address | None, now: float) -> None:
        self.peer.link_failed(next_hop, address, now)
        self._pump(now)

    def tick(self, now: float) -> None:
        peer = self.peer
        peer.tick(now)
        replicator = self.replicator
        if replicator is not None and peer.state is not PeerState.LEFT:
            due = replicator.next_deadline()
            if due is not None and due <= now:
                replicator.tick(now)
                self._after_upper()
        self._pump(now)

    def leave(self, now: float) -> None:
        self.peer.leave(now)
        self._pump(now)

    def request(self, destinations: Sequence[Destination], body: MessageBody, now: float) -> int:
        tid = self.peer.request(destinations, body, now)
        self._pump(now)
        return tid

    def respond(self, request: Message, body: MessageBody, now: float) -> None:
        self.peer.respond(request, body, now)
        self._pump(now)

    def submit(self, token: int, body: DataRequest, now: float) -> None:
        """A Store, Fetch or Apply of this node's application at ``body.resource``; its answer
        (StoreAns, FetchAns, ApplyAns or ErrorResponse) comes out as
        ``LocalAnswer(token, body)``."""
        replicator = self.replicator
        if replicator is not None and replicator.serve_local(token, body, now):
            self._after_upper()
        else:
            tid = self.peer.request((ResourceDestination(body.resource),), body, now)
            self._routed[tid] = token
        self._pump(now)

    # ------------------------------------------------------------------ outputs
    def take_actions(self) -> list[Action]:
        out = self._out
        self._out = []
        return out

    def next_deadline(self) -> float | None:
        t = self.peer.next_deadline()
        replicator = self.replicator
        if replicator is not None and self.peer.state is not PeerState.LEFT:
            due = replicator.next_deadline()
            if due is not None and (t is None or due < t):
                t = due
        return t

    # ------------------------------------------------------------------ queries
    @property
    def node_id(self) -> int:
        return self.peer.node_id

    @property
    def state(self) -> PeerState:
        return self.peer.state

    def view(self, now: float) -> PeerView:
        return self.peer.view(now)

    # ------------------------------------------------------------------ composition
    def _pump(self, now: float) -> None:
        """Move the peer's actions to the output, feeding the replicator what is its, until
        neither has anything more to say."""
        peer = self.peer
        out = self._out
        while True:
            actions = peer.take_actions()
            if not actions:
                return
            for action in actions:
                if not self._feed_upper(action, now):
                    out.append(action)

    def _feed_upper(self, action: Action, now: float) -> bool:
        """Hand ``action`` to the layer above if it is for it; False: it goes out."""
        replicator = self.replicator
        if isinstance(action, RequestCompleted | RequestFailed):
            tid = action.transaction_id
            token = self._routed.pop(tid, None)
            if token is not None:
                self._out.append(LocalAnswer(token, *_answer_of(action)))
                return True
            if replicator is None or not replicator.owns(tid):
                return False
            if isinstance(action, RequestCompleted):
                replicator.on_answer(tid, action.response, now)
            else:
                replicator.on_failed(tid, action.reason, now)
        elif isinstance(action, AppRequest):
            body = action.message.body
            if replicator is None or not isinstance(body, _DATA_BODIES):
                return False
            replicator.on_request(action.message, now)
        elif isinstance(action, NeighborsChanged):
            if replicator is not None:
                replicator.on_neighbors(now)
            return False  # the driver logs it too
        elif isinstance(action, AdmissionRequested):
            if replicator is None:
                self.peer.admit(action.joining, now)
                return True
            replicator.on_admission(action.joining, action.start, action.end, now)
        elif isinstance(action, LeaveRequested):
            if replicator is None:
                self.peer.proceed_leave(now)
                return True
            replicator.on_leave(action.successor, now)
        else:
            return False
        self._after_upper()
        return True

    def _after_upper(self) -> None:
        """After the replicator ran: a write puts the barrier before whatever follows (the
        answers it produced are still in the peer's queue, or in its local answers)."""
        replicator = self.replicator
        assert replicator is not None
        if replicator.take_dirty():
            self._out.append(Flush())
        local = replicator.take_local()
        if local:
            self._out.extend(local)


def _answer_of(event: RequestCompleted | RequestFailed) -> tuple[MessageBody, int | None]:
    """The answer body and who gave it."""
    if isinstance(event, RequestCompleted):
        via = event.response.header.via_list
        first = via[0] if via else None
        return event.response.body, first.node_id if isinstance(first, NodeDestination) else None
    return ErrorResponse(ErrorCode.REQUEST_TIMEOUT, event.reason.encode("utf-8")), None
