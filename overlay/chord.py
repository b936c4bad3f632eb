"""The Chord-reload peer (RFC 6940 §10) as a sans-I/O state machine.

The peer never reads a clock or touches a socket: every input carries ``now`` and every output
is queued (``take_actions``). The runtime and the simulator drive the same code.

Conventions (see the lead's design notes):

- Every sender appends its own Node-ID to the via list, so ``via[-1]`` is the previous hop and
  ``via[0]`` the originator. A message with a one-entry via list came straight from its
  originator: that is our liveness evidence.
- Peers learn addresses only through Attach. A neighbour is adopted only after it has answered
  us (AttachAns, Join, Update or Ping sent to us directly) and we know its address.
- Our own requests (except Ping) are retransmitted end to end with the same transaction id.

Choices worth knowing:

- Liveness: every ``ping_interval`` each neighbour is either heard from (any message it sent us
  directly since the last round counts) or pinged; ``missed_pings`` unanswered pings in a row,
  or a failed link, make it dead. Neighbours ping each other, so skipping the ping when the
  other side has just spoken halves the probes without slowing detection by more than a round.
- Reactive Updates are coalesced for ``ANNOUNCE_DELAY``: a join moves several entries at once,
  and one Update per burst (instead of one per entry) keeps a 1,000-peer join storm cheap.
- Peers we declared dead are not forgotten at once: their addresses stay in a graveyard
  (``GRAVEYARD_SIZE`` entries, ``GRAVEYARD_HOLD`` s) and a few are Attached to directly each
  ping round. A partition that heals, a pause that ends or a peer that was cut off from all
  its neighbours thus comes back within a few ping rounds, not when hearsay reaches it after
  ``dead_hold``; a peer left with no neighbour at all rejoins through them.
- Candidates heard of in an Update are Attached through the neighbour that listed them
  (destination list [neighbour, candidate]): that neighbour knows their address, and routing
  alone cannot reach a peer inside a range we still believe is ours.
- Storage hand-over (``hand_over=True``, what ``overlay.core.OverlayCore`` asks for when it
  stacks a replicator on the peer): a joining peer becomes our predecessor (reachable) only
  when ``admit`` is called after ``AdmissionRequested``, and our LeaveReqs go out only when
  ``proceed_leave`` is called after ``LeaveRequested``. The peer knows nothing of storage:
  Store and Fetch reach the layer above as ``AppRequest``, like every request it does not
  handle itself.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from overlay import probe
from overlay.actions import (
    Action,
    Address,
    AdmissionRequested,
    AppRequest,
    Dropped,
    LeaveRequested,
    LossReason,
    NeighborsChanged,
    PeerLost,
    PeerState,
    RequestCompleted,
    RequestFailed,
    Send,
    StateChanged,
)
from overlay.config import ChordConfig
from overlay.ids import ID_BITS, MASK, share_ppb
from overlay.messages import (
    AttachAns,
    AttachReq,
    ChordLeaveType,
    ChordUpdateType,
    Destination,
    ErrorCode,
    ErrorResponse,
    ForwardingHeader,
    IceCandidate,
    IpAddressPort,
    JoinAns,
    JoinReq,
    LeaveAns,
    LeaveReq,
    Message,
    MessageBody,
    NodeDestination,
    PingAns,
    PingReq,
    ProbeAns,
    ProbeInformation,
    ProbeInformationType,
    ProbeReq,
    ResourceDestination,
    RouteQueryAns,
    RouteQueryReq,
    UpdateAns,
    UpdateReq,
    overlay_hash,
)

INF = math.inf

# What an outstanding request of ours is for.
_APP, _CAND, _FINGER, _JOIN, _UPDATE, _LEAVE = range(6)

DUPLICATE_ID_REASON = "node id already in the ring"
_UPDATE_ANS = UpdateAns()  # immutable and empty: every answer shares it
ANNOUNCE_DELAY = 0.05  # s: neighbour changes within this window make one round of Updates
GRAVEYARD_SIZE = 32  # dead peers whose addresses we keep to try again
GRAVEYARD_HOLD = 600.0  # s we keep trying a dead peer's address
GRAVEYARD_PROBES = 2  # dead peers Attached to per ping round


@dataclass(frozen=True, slots=True)
class PeerView:
    """A read-only snapshot for the admin API and the simulator's checks."""

    node_id: int
    address: Address
    state: PeerState
    predecessors: tuple[int, ...]
    successors: tuple[int, ...]
    fingers: tuple[tuple[int, int], ...]  # (finger index 1..128, node id), only filled entries
    addresses: dict[int, Address]  # what we know of our routing-table peers
    responsible_ppb: int
    uptime: float


class _Pending:
    """One request we originated, awaiting its answer."""

    __slots__ = ("arg", "deadline", "first_sent", "hop", "message", "purpose", "sends")

    def __init__(self, message: Message, purpose: int, arg: int, now: float, life: float) -> None:
        self.message = message
        self.purpose = purpose
        self.arg = arg
        self.sends = 1
        self.first_sent = now
        self.deadline = now + life
        self.hop: int | None = None


def _node_of(dest: Destination) -> int | None:
    return dest.node_id if isinstance(dest, NodeDestination) else None


def _is_request(message: Message) -> bool:
    """``message.is_request`` without its two property calls (a hot path)."""
    code = message.body.CODE
    return code != 0xFFFF and code % 2 == 1


class ChordPeer:
    def __init__(
        self,
        node_id: int,
        address: Address,
        config: ChordConfig,
        rng: random.Random,
        *,
        exp_probe: Callable[[], dict[str, object]] | None = None,
        num_resources: Callable[[], int] | None = None,
        hand_over: bool = False,
    ) -> None:
        """``exp_probe`` returns this node's own extra data for Probe answers (admin/sip
        addresses, version…); ``num_resources`` counts stored records (0 without a store);
        ``hand_over``: wait for ``admit``/``proceed_leave`` after ``AdmissionRequested`` and
        ``LeaveRequested`` (a layer above moves the records first)."""
        self._id = node_id & MASK
        self._me = NodeDestination(self._id)
        self._address = address
        # immutable, so every Attach shares one
        self._cand = (IceCandidate(IpAddressPort(address.host, address.port)),)
        self._attach_ans = AttachAns(role=b"active", candidates=self._cand)
        self._cfg = config
        self._rng = rng
        self._overlay = overlay_hash(config.overlay_name)
        self._exp_probe = exp_probe
        self._num_resources = num_resources
        self._hand_over = hand_over

        self._state = PeerState.INIT
        self._started = 0.0
        self._succ: list[int] = []
        self._pred: list[int] = []
        self._far: dict[int, int] = {}  # far finger index -> node
        self._addr: dict[int, Address] = {}
        self._heard: dict[int, float] = {}  # last direct sign of life
        self._missed: dict[int, int] = {}
        self._pinged: set[int] = set()
        self._last_round = -INF
        self._dead: dict[int, tuple[float, float]] = {}  # tombstones: id -> (since, until)
        self._graveyard: dict[int, tuple[Address, float]] = {}  # dead peer -> (address, since)
        self._attaching: dict[int, int] = {}  # candidate -> transaction id
        self._pending: dict[int, _Pending] = {}
        self._rtx: list[tuple[float, int]] = []
        self._dup: dict[tuple[int, int], MessageBody | None] = {}
        self._dup_q: deque[tuple[float, tuple[int, int]]] = deque()
        self._lists: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._stale_sent: dict[int, float] = {}
        self._update_tid: dict[int, int] = {}
        self._actions: list[Action] = []
        self._changed = False
        self._first_succ: int | None = None
        self._first_pred: int | None = None
        self._table_d: list[int] = []
        self._table_n: list[int] = []
        self._table_dirty = True
        self._pred_hint: int | None = None
        self._hint_until = -INF
        self._awaiting_admission: dict[int, Message] = {}
        # timers
        self._t_ping = INF
        self._t_update = INF
        self._t_finger = INF
        self._t_fast = INF
        self._t_announce = INF
        self._t_join = INF
        self._t_leave = INF
        # join / re-join
        self._bootstrap: list[Address] = []
        self._contact_i = 0
        self._join_phase = 0  # 0 idle, 1 Attach to self+1 sent, 2 JoinReq sent / awaiting Update
        self._join_ap: int | None = None
        self._join_tids: set[int] = set()
        self._was_joined = False
        # fingers
        self._campaign_tried: set[int] = set()
        self._campaign = -INF
        self._far_time: dict[int, float] = {}
        self._finger_rot = 0
        # leave
        self._leave_tids: set[int] = set()
        self._leave_sent = False

    # ================================================================== commands
    def start(self, now: float, bootstrap: Sequence[Address] = ()) -> None:
        """Empty ``bootstrap``: start a new ring alone. Else join through any of them."""
        if self._state is not PeerState.INIT:
            raise RuntimeError(f"start() in state {self._state.value}")
        self._started = now
        self._bootstrap = [a for a in bootstrap if a != self._address]
        if not self._bootstrap:
            self._set_state(PeerState.JOINED)
            self._start_timers(now)
        else:
            self._set_state(PeerState.JOINING)
            self._join_phase = 1
            self._send_join_attach(now)
        self._finish(now)

    def leave(self, now: float) -> None:
        """Graceful leave: LeaveReq to every neighbour, then state LEFT (after answers or
        ``leave_timeout``). With ``hand_over`` the LeaveReqs wait for ``proceed_leave``."""
        if self._state in (PeerState.LEAVING, PeerState.LEFT):
            return
        if self._state in (PeerState.INIT, PeerState.JOINING):
            self._set_state(PeerState.LEFT)
            self._stop_timers()
            return
        self._set_state(PeerState.LEAVING)
        self._t_ping = self._t_update = self._t_finger = self._t_fast = self._t_join = INF
        self._t_announce = INF
        self._t_leave = INF  # runs from the LeaveReqs, after the data handoff
        if self._hand_over:
            self._actions.append(LeaveRequested(self._succ[0] if self._succ else None))
        else:
            self.proceed_leave(now)

    def proceed_leave(self, now: float) -> None:
        """Send the LeaveReqs (after the storage hook handed our data to the successor)."""
        if self._state is not PeerState.LEAVING or self._leave_sent:
            return
        self._leave_sent = True
        self._t_leave = now + self._cfg.leave_timeout
        succ, pred = tuple(self._succ), tuple(self._pred)
        for p in pred:
            body = LeaveReq(self._id, ChordLeaveType.FROM_SUCC, succ)
            self._leave_tids.add(self._originate((NodeDestination(p),), body, now, _LEAVE, p))
        for s in succ:
            body = LeaveReq(self._id, ChordLeaveType.FROM_PRED, pred)
            self._leave_tids.add(self._originate((NodeDestination(s),), body, now, _LEAVE, s))
        if not self._leave_tids:
            self._become_left()

    def admit(self, joining_id: int, now: float) -> None:
        """Finish admitting a joining peer once its records are handed over."""
        request = self._awaiting_admission.pop(joining_id, None)
        if request is not None:
            self._complete_admission(joining_id, now)
            self._finish(now)

    def request(self, destinations: Sequence[Destination], body: MessageBody, now: float) -> int:
        """Originate a request; returns its transaction id. Its answer arrives as
        ``RequestCompleted`` (or ``RequestFailed``); retransmitted end to end meanwhile."""
        if self._state in (PeerState.INIT, PeerState.LEFT) or not destinations:
            tid = self._new_tid()
            self._actions.append(RequestFailed(tid, f"cannot send in state {self._state.value}"))
            return tid
        tid = self._originate(tuple(destinations), body, now, _APP, 0)
        self._finish(now)
        return tid

    def respond(self, request: Message, body: MessageBody, now: float) -> None:
        """Answer an ``AppRequest`` delivered to this peer."""
        self._answer(request, body, now)
        self._finish(now)

    # ================================================================== inputs
    def receive(self, message: Message, now: float) -> None:
        state = self._state
        if state is PeerState.INIT or state is PeerState.LEFT:
            return
        header = message.header
        via = header.via_list
        if len(via) == 1:
            first_via = via[0]
            if isinstance(first_via, NodeDestination) and first_via.node_id != self._id:
                self._heard[first_via.node_id] = now
        dests = header.destination_list
        if not dests:
            self._reject(message, ErrorCode.INVALID_MESSAGE, "empty destination list", now)
            self._finish(now)
            return
        first = dests[0]
        if isinstance(first, NodeDestination):
            target = first.node_id
            if target == self._id:
                if len(dests) == 1:
                    self._deliver(message, now)
                else:
                    self._forward(message, dests[1:], now)
                self._finish(now)
                return
            if not _is_request(message) or target in self._addr:
                self._forward(message, dests, now)  # answer path, or a peer we can reach
                self._finish(now)
                return
            exact = False
        elif isinstance(first, ResourceDestination):
            target = first.resource_id
            exact = True
        else:
            self._reject(message, ErrorCode.INVALID_MESSAGE, "unknown opaque destination", now)
            self._finish(now)
            return
        if self.is_responsible(target):
            if _is_request(message) and (exact or len(dests) == 1):
                self._deliver(message, now)
            else:
                self._actions.append(Dropped("answer for an absent peer", message))
        else:
            self._forward(message, dests, now)
        self._finish(now)

    def link_failed(self, next_hop: int | None, address: Address | None, now: float) -> None:
        if self._state is PeerState.LEFT:
            return
        if next_hop is None:
            return  # a bootstrap address: the join retry timer moves on to the next one
        self._declare_dead(next_hop, now, LossReason.LINK_FAILED)
        self._finish(now)

    def tick(self, now: float) -> None:
        state = self._state
        if state is PeerState.INIT or state is PeerState.LEFT:
            return
        while self._rtx and self._rtx[0][0] <= now:
            _, tid = heapq.heappop(self._rtx)
            self._retransmit(tid, now)
        if self._t_leave <= now:
            self._t_leave = INF
            if state is PeerState.LEAVING:
                self._become_left()
                return
        if self._t_join <= now:
            self._t_join = INF
            self._join_timer(now)
        if self._t_ping <= now:
            self._t_ping = now + self._jittered(self._cfg.ping_interval)
            self._ping_round(now)
        if self._t_update <= now:
            self._t_update = now + self._jittered(self._cfg.update_interval)
            self._update_round(now)
        if self._t_announce <= now:
            self._t_announce = INF
            if self._state is PeerState.JOINED:
                for n in self._neighbours():
                    self._send_update(n, now)
        if self._t_fast <= now:
            self._t_fast = INF
            self._finger_campaign_step(now)
        if self._t_finger <= now:
            self._t_finger = now + self._jittered(self._cfg.finger_interval)
            self._finger_refresh(now)
        dq = self._dup_q
        while dq and dq[0][0] <= now:
            self._dup.pop(dq.popleft()[1], None)
        self._finish(now)

    # ================================================================== outputs
    def take_actions(self) -> list[Action]:
        actions = self._actions
        self._actions = []
        return actions

    def next_deadline(self) -> float | None:
        # called after every input: plain comparisons are cheaper than min()
        t = self._t_ping
        x = self._t_update
        if x < t:
            t = x
        x = self._t_finger
        if x < t:
            t = x
        x = self._t_fast
        if x < t:
            t = x
        x = self._t_join
        if x < t:
            t = x
        x = self._t_announce
        if x < t:
            t = x
        x = self._t_leave
        if x < t:
            t = x
        rtx = self._rtx
        if rtx and rtx[0][0] < t:
            t = rtx[0][0]
        if t == INF and self._dup_q:
            t = self._dup_q[0][0]  # otherwise the periodic ticks purge the duplicate cache
        return None if t == INF else t

    # ================================================================== queries
    @property
    def state(self) -> PeerState:
        return self._state

    @property
    def node_id(self) -> int:
        return self._id

    @property
    def successors(self) -> tuple[int, ...]:
        return tuple(self._succ)

    @property
    def predecessors(self) -> tuple[int, ...]:
        return tuple(self._pred)

    def view(self, now: float) -> PeerView:
        fingers: list[tuple[int, int]] = []
        for index in range(1, ID_BITS + 1):
            node = self._finger(index)
            if node is not None:
                fingers.append((index, node))
        peers = set(self._succ) | set(self._pred) | set(self._far.values())
        return PeerView(
            node_id=self._id,
            address=self._address,
            state=self._state,
            predecessors=tuple(self._pred),
            successors=tuple(self._succ),
            fingers=tuple(fingers),
            addresses={n: self._addr[n] for n in sorted(peers) if n in self._addr},
            responsible_ppb=self._responsible_ppb(),
            uptime=max(0.0, now - self._started) if self._state is not PeerState.INIT else 0.0,
        )

    def next_hop(self, destination: Destination) -> int | None:
        """The peer we would forward to; None when this peer is responsible."""
        if isinstance(destination, NodeDestination):
            target = destination.node_id
            if target == self._id or self.is_responsible(target):
                return None
            if target in self._addr:
                return target
        elif isinstance(destination, ResourceDestination):
            target = destination.resource_id
            if self.is_responsible(target):
                return None
        else:
            return None
        return self._route(target)

    def responsible_range(self) -> tuple[int, int] | None:
        """(start, self): the ring interval (start, self] this peer answers for, as
        ``is_responsible`` decides; (self, self) is the whole ring; None when not in the ring."""
        state = self._state
        if state is not PeerState.JOINED and state is not PeerState.LEAVING:
            return None
        me = self._id
        hint = self._pred_hint
        if self._pred:
            start = self._pred[0]
            if hint is not None and ((me - hint) & MASK) < ((me - start) & MASK):
                start = hint
        elif not self._succ:
            start = me
        elif hint is not None:
            start = hint
        else:
            start = self._succ[-1]
        return start, me

    def is_responsible(self, target: int) -> bool:
        state = self._state
        if state is not PeerState.JOINED and state is not PeerState.LEAVING:
            return target == self._id
        me = self._id
        hint = self._pred_hint
        if self._pred:
            start = self._pred[0]
            # Just joined: the admitting peer's old predecessor bounds our range until it
            # answers us and becomes our predecessor.
            if hint is not None and ((me - hint) & MASK) < ((me - start) & MASK):
                start = hint
        elif not self._succ:
            return True  # alone: the whole ring
        elif hint is not None:
            start = hint
        else:
            # No predecessor known (they all failed): claim what our successors do not cover.
            start = self._succ[-1]
        if start == me:
            return True
        return 0 < ((target - start) & MASK) <= ((me - start) & MASK)

    # ================================================================== internals: sending
    def _new_tid(self) -> int:
        return self._rng.getrandbits(64)

    def _jittered(self, interval: float) -> float:
        j = self._cfg.jitter
        return interval * (1.0 + j * (2.0 * self._rng.random() - 1.0)) if j else interval

    def _candidate(self) -> tuple[IceCandidate, ...]:
        return self._cand

    def _header(
        self,
        tid: int,
        via: tuple[Destination, ...],
        dests: tuple[Destination, ...],
        ttl: int,
    ) -> ForwardingHeader:
        # positional (options=() is the default) is the cheaper call on this hot path
        return ForwardingHeader(self._overlay, tid, via, dests, (), ttl)

    def _originate(
        self,
        dests: tuple[Destination, ...],
        body: MessageBody,
        now: float,
        purpose: int,
        arg: int,
    ) -> int:
        tid = self._new_tid()
        message = Message(self._header(tid, (self._me,), dests, self._cfg.initial_ttl), body)
        pending = _Pending(message, purpose, arg, now, self._cfg.request_lifetime)
        self._pending[tid] = pending
        heapq.heappush(self._rtx, (now + self._cfg.retransmit_interval, tid))
        pending.hop = self._send_own(message, now)
        return tid

    def _send_own(self, message: Message, now: float) -> int | None:
        """Send (or deliver locally) a request we originate; returns the first hop."""
        first = message.header.destination_list[0]
        if isinstance(first, NodeDestination):
            target = first.node_id
            if target == self._id:
                self._deliver(message, now)
                return None
            if target in self._addr:
                self._actions.append(Send(target, self._addr[target], message))
                return target
            if self._speaking(target, now):
                # It spoke to us over a link that is still open: use that link. Routing would
                # not find it when its id lies in a range we took over after dropping it (we
                # would deliver our own Attach to ourselves and never re-admit it).
                self._actions.append(Send(target, None, message))
                return target
            exact = False
        elif isinstance(first, ResourceDestination):
            target = first.resource_id
            exact = True
        else:
            self._deliver_error_locally(message, ErrorCode.INVALID_MESSAGE, "opaque destination")
            return None
        if self.is_responsible(target) and (exact or len(message.header.destination_list) == 1):
            self._deliver(message, now)
            return None
        hop = self._route(target)
        if hop is None:
            return None  # no route yet; the retransmission timer tries again
        self._actions.append(Send(hop, self._addr.get(hop), message))
        return hop

    def _send_direct(self, node: int, body: MessageBody, tid: int) -> None:
        message = Message(
            self._header(tid, (self._me,), (NodeDestination(node),), self._cfg.initial_ttl), body
        )
        self._actions.append(Send(node, self._addr.get(node), message))

    def _forward(self, message: Message, dests: tuple[Destination, ...], now: float) -> None:
        header = message.header
        if header.ttl <= 0:
            self._reject(message, ErrorCode.TTL_EXCEEDED, "TTL exceeded", now)
            return
        first = dests[0]
        popped = len(dests) != len(header.destination_list)
        hop: int | None
        if isinstance(first, NodeDestination):
            target = first.node_id
            if popped or not _is_request(message) or target in self._addr:
                hop = target  # source route / answer path / a peer we know: straight there
            else:
                hop = self._route(target)
        elif isinstance(first, ResourceDestination):
            hop = self._route(first.resource_id)
        else:
            self._reject(message, ErrorCode.INVALID_MESSAGE, "unknown opaque destination", now)
            return
        if hop is None:
            self._actions.append(Dropped("no route", message))
            return
        forwarded = Message(
            ForwardingHeader(  # positional, in field order: the cheaper call on a hot path
                header.overlay,
                header.transaction_id,
                (*header.via_list, self._me),
                dests,
                header.options,
                header.ttl - 1,
                header.configuration_sequence,
                header.version,
                header.fragment,
                header.max_response_length,
            ),
            message.body,
            message.extensions,
            message.security,
        )
        self._actions.append(Send(hop, self._addr.get(hop), forwarded))

    def _route(self, target: int) -> int | None:
        """Next hop towards ``target`` (which we are not responsible for)."""
        me = self._id
        dt = (target - me) & MASK
        succ = self._succ
        if succ and dt <= ((succ[-1] - me) & MASK):
            for s in succ:  # final-hop shortcut: the first successor at or after the target
                if ((s - me) & MASK) >= dt:
                    return s
        pred = self._pred
        if pred and dt > ((pred[-1] - me) & MASK):
            for p in reversed(pred):  # the predecessor responsible for it
                if ((p - me) & MASK) >= dt:
                    return p
        if self._table_dirty:
            self._rebuild_table()
        dists = self._table_d
        if not dists:
            return None
        i = bisect_left(dists, dt)
        return self._table_n[i - 1] if i > 0 else self._table_n[0]

    def _rebuild_table(self) -> None:
        me = self._id
        peers = set(self._succ)
        peers.update(self._pred)
        peers.update(self._far.values())
        peers.discard(me)
        pairs = sorted(((n - me) & MASK, n) for n in peers)
        self._table_d = [d for d, _ in pairs]
        self._table_n = [n for _, n in pairs]
        self._table_dirty = False

    def _answer(self, request: Message, body: MessageBody, now: float) -> None:
        header = request.header
        via = header.via_list
        origin = _node_of(via[0]) if via else None
        if origin is not None and body.CODE != PingAns.CODE:
            key = (header.transaction_id, origin)
            if key not in self._dup:
                self._dup_q.append((now + self._cfg.duplicate_window, key))
            self._dup[key] = body
        self._send_answer(request, body, now)

    def _send_answer(self, request: Message, body: MessageBody, now: float) -> None:
        header = request.header
        via = header.via_list
        dests = via if len(via) == 1 else tuple(reversed(via))
        if not dests:
            return
        response = Message(
            self._header(header.transaction_id, (self._me,), dests, self._cfg.initial_ttl), body
        )
        hop = _node_of(dests[0])
        if hop == self._id:
            if len(dests) == 1:
                self._on_response(response, now)  # our own request, answered locally
            return
        if hop is None:
            return
        self._actions.append(Send(hop, self._addr.get(hop), response))

    def _reject(self, message: Message, code: int, text: str, now: float) -> None:
        self._actions.append(Dropped(text, message))
        if _is_request(message):
            self._send_answer(message, ErrorResponse(code, text.encode()), now)

    def _deliver_error_locally(self, message: Message, code: int, text: str) -> None:
        tid = message.header.transaction_id
        pending = self._pending.pop(tid, None)
        if pending is not None:
            self._transaction_ended(pending, tid)
        self._actions.append(RequestFailed(tid, text))

    # ================================================================== delivery
    def _deliver(self, message: Message, now: float) -> None:
        if not _is_request(message):
            if len(message.header.destination_list) == 1:
                self._on_response(message, now)
            return
        via = message.header.via_list
        origin = _node_of(via[0]) if via else None
        if origin is None:
            self._reject(message, ErrorCode.INVALID_MESSAGE, "via list without a node id", now)
            return
        key = (message.header.transaction_id, origin)
        if key in self._dup:
            cached = self._dup[key]
            if cached is not None:
                self._send_answer(message, cached, now)
            return  # an app request still in progress: its answer will follow
        body = message.body
        if isinstance(body, PingReq):
            self._answer(message, PingAns(self._rng.getrandbits(64), int(now * 1000)), now)
        elif isinstance(body, UpdateReq):
            self._answer(message, _UPDATE_ANS, now)
            self._on_update(origin, body, len(via) == 1, now)
        elif isinstance(body, AttachReq):
            self._on_attach_req(message, origin, body, now)
        elif isinstance(body, JoinReq):
            self._on_join_req(message, origin, body, now)
        elif isinstance(body, LeaveReq):
            self._answer(message, LeaveAns(), now)
            self._on_leave_req(origin, body, now)
        elif isinstance(body, ProbeReq):
            self._answer(message, self._probe_answer(body, now), now)
        elif isinstance(body, RouteQueryReq):
            hop = self.next_hop(body.destination)
            self._answer(message, RouteQueryAns(self._id if hop is None else hop), now)
        else:
            self._dup[key] = None
            self._dup_q.append((now + self._cfg.duplicate_window, key))
            self._actions.append(AppRequest(message))

    def _on_response(self, message: Message, now: float) -> None:
        tid = message.header.transaction_id
        via = message.header.via_list
        responder = _node_of(via[0]) if via else None
        body = message.body
        if tid in self._join_tids:
            self._on_join_attach_answer(tid, responder, body, now)
            return
        pending = self._pending.pop(tid, None)
        if pending is None:
            return  # a Ping answer, or a late duplicate
        purpose = pending.purpose
        self._transaction_ended(pending, tid)
        if purpose == _APP:
            self._actions.append(RequestCompleted(tid, message))
        elif purpose in (_CAND, _FINGER) and isinstance(body, AttachAns) and responder is not None:
            self._on_attach_answer(pending, responder, body, now)
        elif purpose == _JOIN and isinstance(body, ErrorResponse):
            self._restart_join(now)

    def _retransmit(self, tid: int, now: float) -> None:
        pending = self._pending.get(tid)
        if pending is None:
            return
        if now >= pending.deadline or pending.sends >= self._cfg.max_sends:
            if now < pending.deadline:
                heapq.heappush(self._rtx, (pending.deadline, tid))
                return
            del self._pending[tid]
            self._request_failed(pending, tid, now)
            return
        hop = pending.hop
        if (
            hop is not None
            and hop in self._far.values()
            and hop not in self._succ
            and hop not in self._pred
        ):
            # A finger that swallowed a request may be gone (silent failure): forget it,
            # the rotation looks the finger up again.
            self._drop_finger(hop)
        dests = pending.message.header.destination_list
        if pending.purpose == _CAND and len(dests) == 2:
            informer = _node_of(dests[0])
            if informer is None or informer not in self._addr:
                # The neighbour we asked to relay it is gone: route it ourselves, same id.
                old = pending.message
                pending.message = Message(
                    self._header(old.header.transaction_id, (self._me,), dests[1:], old.header.ttl),
                    old.body,
                )
        pending.sends += 1
        nxt = min(now + self._cfg.retransmit_interval, pending.deadline)
        heapq.heappush(self._rtx, (nxt, tid))
        pending.hop = self._send_own(pending.message, now)

    def _request_failed(self, pending: _Pending, tid: int, now: float) -> None:
        purpose = pending.purpose
        self._transaction_ended(pending, tid)
        if purpose == _APP:
            self._actions.append(RequestFailed(tid, "no answer within the request lifetime"))
        elif purpose == _JOIN:
            self._restart_join(now)

    def _transaction_ended(self, pending: _Pending, tid: int) -> None:
        """Bookkeeping common to an answered and a failed request of ours."""
        purpose = pending.purpose
        if purpose in (_CAND, _FINGER):
            key = pending.arg if purpose == _CAND else -pending.arg
            if self._attaching.get(key) == tid:
                del self._attaching[key]
        elif purpose == _LEAVE:
            self._leave_tids.discard(tid)
            if not self._leave_tids and self._state is PeerState.LEAVING:
                self._become_left()
        elif purpose == _UPDATE and self._update_tid.get(pending.arg) == tid:
            del self._update_tid[pending.arg]

    # ================================================================== neighbours
    def _verified(self, node: int, now: float) -> bool:
        heard = self._heard.get(node)
        return (
            heard is not None
            and now - heard <= 3 * self._cfg.update_interval
            and node in self._addr
            and node not in self._dead
        )

    def _speaking(self, node: int, now: float) -> bool:
        """It sent us a message directly within the failure-detection window."""
        heard = self._heard.get(node)
        return heard is not None and now - heard <= self._cfg.ping_interval * (
            self._cfg.missed_pings + 1
        )

    def _tombstoned(self, node: int, now: float) -> bool:
        entry = self._dead.get(node)
        if entry is None:
            return False
        if entry[1] <= now:
            del self._dead[node]
            return False
        return True

    def _revive(self, node: int) -> None:
        self._dead.pop(node, None)
        self._graveyard.pop(node, None)

    def _fits(self, node: int) -> bool:
        me = self._id
        r = self._cfg.successors
        succ = self._succ
        if node in succ or node in self._pred:
            return False
        if len(succ) < r or ((node - me) & MASK) < ((succ[-1] - me) & MASK):
            return True
        pred = self._pred
        return len(pred) < self._cfg.predecessors or ((me - node) & MASK) < ((me - pred[-1]) & MASK)

    def _consider(self, node: int) -> None:
        """Insert a peer that has answered us into the lists where it belongs."""
        me = self._id
        if node == me or node in self._dead or node not in self._addr:
            return
        if self._state is not PeerState.JOINED:
            return
        d = (node - me) & MASK
        succ = self._succ
        if node not in succ:
            i = 0
            while i < len(succ) and ((succ[i] - me) & MASK) < d:
                i += 1
            if i < self._cfg.successors:
                succ.insert(i, node)
                del succ[self._cfg.successors :]
                self._changed = True
        d = (me - node) & MASK
        pred = self._pred
        if node not in pred:
            i = 0
            while i < len(pred) and ((me - pred[i]) & MASK) < d:
                i += 1
            if i < self._cfg.predecessors:
                pred.insert(i, node)
                del pred[self._cfg.predecessors :]
                self._changed = True
                hint = self._pred_hint
                if hint is not None and d <= ((me - hint) & MASK):
                    self._pred_hint = None

    def _offer(
        self, node: int, now: float, *, force: bool = False, informer: int | None = None
    ) -> None:
        """A peer we heard of: adopt it if it has answered us, else Attach to it first.

        The Attach goes through ``informer`` (the neighbour that listed it, which knows its
        address) when we can reach that neighbour: routing alone cannot find a peer that sits
        in a range we still think is ours.
        """
        if node == self._id or (node in self._dead and self._tombstoned(node, now)):
            return
        if not force and not self._fits(node):
            return
        if self._verified(node, now) and not force:
            self._consider(node)
            return
        if node in self._attaching:
            return
        body = AttachReq(candidates=self._candidate(), send_update=True)
        dests: tuple[Destination, ...] = (NodeDestination(node),)
        if informer is not None and informer != node and informer in self._addr:
            dests = (NodeDestination(informer), NodeDestination(node))
        tid = self._originate(dests, body, now, _CAND, node)
        self._attaching[node] = tid

    def _on_attach_answer(
        self, pending: _Pending, responder: int, body: AttachAns, now: float
    ) -> None:
        if responder == self._id:
            return
        entry = self._dead.get(responder)
        if entry is not None:
            if entry[0] >= pending.first_sent:
                return  # answered before we declared it dead
            self._revive(responder)
        for cand in body.candidates:
            self._addr[responder] = Address(cand.addr_port.host, cand.addr_port.port)
            break
        self._heard[responder] = now
        if pending.purpose == _FINGER:
            self._set_finger(pending.arg, responder, now)
            if self._fits(responder):
                self._consider(responder)
        else:
            self._consider(responder)

    def _on_attach_req(self, message: Message, origin: int, body: AttachReq, now: float) -> None:
        address = None
        for cand in body.candidates:
            address = Address(cand.addr_port.host, cand.addr_port.port)
            break
        if origin == self._id and address != self._address:
            self._reject(message, ErrorCode.FORBIDDEN, DUPLICATE_ID_REASON, now)
            return
        known = self._addr.get(origin)
        if (
            address is not None
            and known is not None
            and known != address
            and (origin in self._succ or origin in self._pred)
            and now - self._heard.get(origin, -INF)
            < 2 * self._cfg.ping_interval * self._cfg.missed_pings
        ):
            # A live neighbour already has this id at another address.
            self._reject(message, ErrorCode.FORBIDDEN, DUPLICATE_ID_REASON, now)
            return
        if address is not None:
            self._addr[origin] = address
            self._heard[origin] = now
            self._revive(origin)
        self._answer(message, self._attach_ans, now)
        if body.send_update and address is not None and self._state is PeerState.JOINED:
            self._send_update(origin, now)

    def _on_update(self, origin: int, body: UpdateReq, direct: bool, now: float) -> None:
        if origin == self._id:
            return
        if direct:
            self._revive(origin)
        preds, succs = body.predecessors, body.successors
        self._lists[origin] = (preds, succs)
        if self._join_phase == 2 and origin == self._join_ap:
            self._complete_join(origin, body, now)
            return
        if self._state is not PeerState.JOINED:
            return
        me = self._id
        if self._verified(origin, now):
            self._consider(origin)
        else:
            self._offer(origin, now)
        r = self._cfg.successors
        if self._succ and origin == self._succ[0]:
            # Zave: our successor list is our live successor plus its own list, in one step.
            fresh = [origin]
            for s in succs:
                if s != me and s != origin and s not in fresh and self._verified(s, now):
                    fresh.append(s)
            fresh.sort(key=lambda n: (n - me) & MASK)
            del fresh[r:]
            if fresh != self._succ:
                self._succ = fresh
                self._changed = True
        if self._pred and origin == self._pred[0]:
            fresh = [origin]
            for p in preds:
                if p != me and p != origin and p not in fresh and self._verified(p, now):
                    fresh.append(p)
            fresh.sort(key=lambda n: (me - n) & MASK)
            del fresh[self._cfg.predecessors :]
            if fresh != self._pred:
                self._pred = fresh
                self._changed = True
        # Most listed peers are in our lists already, where _offer does nothing: skip the call.
        for n in succs:
            if (n in self._succ or n in self._pred) and n not in self._dead:
                continue
            self._offer(n, now, informer=origin)
        for n in preds:
            if (n in self._succ or n in self._pred) and n not in self._dead:
                continue
            self._offer(n, now, informer=origin)
        self._check_stale_view(origin, preds, succs, now)

    def _check_stale_view(
        self, origin: int, preds: tuple[int, ...], succs: tuple[int, ...], now: float
    ) -> None:
        """Answer an Update that shows an outdated view of us with our own (rate-limited)."""
        me = self._id
        if self._pred and origin == self._pred[0]:
            expected = [n for n in (me, *self._succ) if n != origin][: self._cfg.successors]
            stale = list(succs) != expected
        elif self._succ and origin == self._succ[0]:
            expected = [n for n in (me, *self._pred) if n != origin][: self._cfg.predecessors]
            stale = list(preds) != expected
        else:
            stale = (
                (origin in self._succ or origin in self._pred)
                and me not in succs
                and me not in preds
            )
        if stale and now - self._stale_sent.get(origin, -INF) >= 0.5:
            self._stale_sent[origin] = now
            self._send_update(origin, now)

    def _send_update(self, node: int, now: float) -> None:
        old = self._update_tid.get(node)
        if old is not None:
            self._pending.pop(old, None)  # superseded by this newer Update
        body = UpdateReq(
            uptime=int(now - self._started),
            update_type=ChordUpdateType.NEIGHBORS,
            predecessors=tuple(self._pred),
            successors=tuple(self._succ),
        )
        self._update_tid[node] = self._originate((NodeDestination(node),), body, now, _UPDATE, node)

    def _neighbours(self) -> list[int]:
        return sorted(set(self._succ) | set(self._pred))

    def _declare_dead(self, node: int, now: float, reason: LossReason) -> None:
        self._dead[node] = (now, now + self._cfg.dead_hold)
        if self._pred_hint == node:
            self._pred_hint = None
        in_lists = node in self._succ or node in self._pred
        if in_lists:
            self._actions.append(PeerLost(node, reason, self._addr.get(node)))
        address = self._addr.get(node)
        if address is not None and reason is not LossReason.LEFT:
            # Declared dead again (a probe that failed): it keeps the time it first died.
            since = self._graveyard.pop(node, (address, now))[1]
            self._graveyard[node] = (address, since)
            if len(self._graveyard) > GRAVEYARD_SIZE:
                del self._graveyard[next(iter(self._graveyard))]  # the oldest death
        if node in self._succ:
            self._succ.remove(node)
            self._changed = True
        if node in self._pred:
            self._pred.remove(node)
            self._changed = True
        self._drop_finger(node)
        self._heard.pop(node, None)
        self._missed.pop(node, None)
        self._pinged.discard(node)
        self._lists.pop(node, None)
        self._addr.pop(node, None)
        if in_lists:
            self._refill(now)

    def _refill(self, now: float) -> None:
        """Offer replacement candidates from what our remaining neighbours told us."""
        for n in self._neighbours():
            lists = self._lists.get(n)
            if lists is not None:
                for x in lists[1]:
                    self._offer(x, now, informer=n)
                for x in lists[0]:
                    self._offer(x, now, informer=n)
        for x in sorted(set(self._far.values())):
            self._offer(x, now)

    # ================================================================== join
    def _set_state(self, state: PeerState) -> None:
        if state is not self._state:
            self._state = state
            self._actions.append(StateChanged(state))

    def _start_timers(self, now: float) -> None:
        self._t_ping = now + self._jittered(self._cfg.ping_interval)
        self._t_update = now + self._jittered(self._cfg.update_interval)
        self._t_finger = now + self._jittered(self._cfg.finger_interval)

    def _stop_timers(self) -> None:
        self._t_ping = self._t_update = self._t_finger = self._t_fast = self._t_announce = INF
        self._t_join = self._t_leave = INF
        self._rtx.clear()
        self._pending.clear()
        self._dup.clear()
        self._dup_q.clear()

    def _contacts(self) -> list[tuple[int | None, Address]]:
        contacts: list[tuple[int | None, Address]] = []
        if self._was_joined:
            for n in [*self._pred, *sorted(set(self._far.values()))]:
                if n in self._addr:
                    contacts.append((n, self._addr[n]))
            # Cut off from every neighbour: the peers we lost may well be alive.
            contacts.extend((None, address) for address, _ in self._graveyard.values())
        contacts.extend((None, a) for a in self._bootstrap)
        return contacts

    def _send_join_attach(self, now: float) -> None:
        self._t_join = now + self._cfg.join_retry
        contacts = self._contacts()
        if not contacts:
            return
        hop, address = contacts[self._contact_i % len(contacts)]
        self._contact_i += 1
        tid = self._new_tid()
        self._join_tids.add(tid)
        if len(self._join_tids) > 16:
            self._join_tids.pop()
        body = AttachReq(candidates=self._candidate())
        dest = (NodeDestination((self._id + 1) & MASK),)
        message = Message(self._header(tid, (self._me,), dest, self._cfg.initial_ttl), body)
        self._actions.append(Send(hop, address, message))

    def _join_timer(self, now: float) -> None:
        if self._state is PeerState.JOINING or (self._was_joined and not self._succ):
            if self._join_phase == 2:
                self._join_phase = 1  # the admitting peer went silent: start over
            if self._join_phase == 0:
                self._join_phase = 1
            self._send_join_attach(now)
            if self._state is PeerState.JOINED:
                self._refill(now)
        else:
            self._join_phase = 0

    def _restart_join(self, now: float) -> None:
        if self._join_phase == 2:
            self._join_phase = 1
            self._join_ap = None
            self._t_join = now + self._cfg.join_retry

    def _on_join_attach_answer(
        self, tid: int, responder: int | None, body: MessageBody, now: float
    ) -> None:
        if self._join_phase != 1:
            return
        if isinstance(body, ErrorResponse):
            if body.error_code == ErrorCode.FORBIDDEN and body.text == DUPLICATE_ID_REASON:
                self._fail_duplicate(tid)
            return
        if not isinstance(body, AttachAns) or responder is None:
            return
        if responder == self._id:
            self._fail_duplicate(tid)
            return
        for cand in body.candidates:
            self._addr[responder] = Address(cand.addr_port.host, cand.addr_port.port)
            break
        if responder not in self._addr:
            return
        self._heard[responder] = now
        self._revive(responder)
        self._join_tids.clear()
        self._join_phase = 2
        self._join_ap = responder
        self._t_join = now + self._cfg.request_lifetime + self._cfg.join_retry
        self._originate((NodeDestination(responder),), JoinReq(self._id), now, _JOIN, responder)

    def _fail_duplicate(self, tid: int) -> None:
        self._actions.append(RequestFailed(tid, DUPLICATE_ID_REASON))
        self._actions.append(Dropped(DUPLICATE_ID_REASON))
        self._join_phase = 0
        self._join_tids.clear()
        self._set_state(PeerState.LEFT)
        self._stop_timers()

    def _on_join_req(self, message: Message, origin: int, body: JoinReq, now: float) -> None:
        joining = body.joining_peer_id
        if self._state is not PeerState.JOINED or joining != origin:
            self._reject(message, ErrorCode.FORBIDDEN, "not accepting joins", now)
            return
        rejoin = bool(self._pred) and joining == self._pred[0]  # lost its successors
        if (not self.is_responsible(joining) and not rejoin) or joining == self._id:
            self._reject(message, ErrorCode.NOT_FOUND, "not responsible for the joining id", now)
            return
        if joining not in self._addr:
            self._reject(message, ErrorCode.FORBIDDEN, "Attach first", now)
            return
        self._answer(message, JoinAns(), now)
        self._revive(joining)
        self._heard[joining] = now
        start = self._pred[0] if self._pred else self._id
        if not self._hand_over:
            self._complete_admission(joining, now)
        elif joining not in self._awaiting_admission:
            self._awaiting_admission[joining] = message
            self._actions.append(AdmissionRequested(joining, start, joining))

    def _complete_admission(self, joining: int, now: float) -> None:
        self._consider(joining)
        self._changed = True  # the joining peer waits for our Update, even if nothing moved

    def _complete_join(self, ap: int, body: UpdateReq, now: float) -> None:
        self._join_phase = 0
        self._join_ap = None
        self._join_tids.clear()
        self._t_join = INF
        self._revive(ap)
        self._heard[ap] = now
        if self._state is PeerState.JOINING:
            self._set_state(PeerState.JOINED)
            self._start_timers(now)
        self._pred_hint = None
        for p in body.predecessors:
            if p != self._id:
                # Only a hint until that peer answers us; it may be gone already.
                self._pred_hint = p
                self._hint_until = now + 2 * self._cfg.ping_interval
                break
        self._consider(ap)
        self._changed = True
        for n in body.successors:
            self._offer(n, now, informer=ap)
        for n in body.predecessors:
            self._offer(n, now, informer=ap)
        self._start_finger_campaign(now)

    # ================================================================== leave
    def _on_leave_req(self, origin: int, body: LeaveReq, now: float) -> None:
        leaver = body.leaving_peer_id
        if leaver == self._id:
            return
        if leaver != origin:
            # Only a peer itself may say it leaves (RFC 6940 §10.8); anyone else is lying.
            self._actions.append(Dropped("LeaveReq for another peer"))
            return
        self._declare_dead(leaver, now, LossReason.LEFT)
        for n in body.node_ids:
            self._offer(n, now)

    def _become_left(self) -> None:
        self._set_state(PeerState.LEFT)
        self._stop_timers()
        self._succ.clear()
        self._pred.clear()
        self._far.clear()
        self._table_dirty = True

    # ================================================================== periodic work
    def _ping_round(self, now: float) -> None:
        if self._pred_hint is not None and now >= self._hint_until:
            self._pred_hint = None
        last = self._last_round
        self._last_round = now
        dead: list[int] = []
        for n in self._neighbours():
            if self._heard.get(n, -INF) >= last:
                self._missed[n] = 0
                self._pinged.discard(n)
                continue  # it spoke to us since the last round: no need to ask
            if n in self._pinged:
                missed = self._missed.get(n, 0) + 1
                self._missed[n] = missed
                if missed >= self._cfg.missed_pings:
                    dead.append(n)
                    continue
            self._pinged.add(n)
            self._send_direct(n, PingReq(), self._new_tid())
        for n in dead:
            self._declare_dead(n, now, LossReason.MISSED_PINGS)
        self._probe_graveyard(now)

    def _update_round(self, now: float) -> None:
        for n in self._neighbours():
            self._send_update(n, now)
        if len(self._succ) < self._cfg.successors or len(self._pred) < self._cfg.predecessors:
            self._refill(now)

    def _probe_graveyard(self, now: float) -> None:
        """Attach straight to a few peers we declared dead, longest dead first (then the
        entry moves to the back): one that answers is alive after all and is adopted again
        wherever it fits (``_on_attach_answer`` revives it)."""
        grave = self._graveyard
        for node in list(grave)[:GRAVEYARD_PROBES]:
            address, since = grave.pop(node)
            if now - since > GRAVEYARD_HOLD:
                continue
            grave[node] = (address, since)
            if node in self._attaching:
                continue
            body = AttachReq(candidates=self._candidate(), send_update=True)
            tid = self._new_tid()
            message = Message(
                self._header(tid, (self._me,), (NodeDestination(node),), self._cfg.initial_ttl),
                body,
            )
            pending = _Pending(message, _CAND, node, now, self._cfg.request_lifetime)
            # Not retransmitted: a retransmission would be routed, and routing cannot reach a
            # peer we took for dead. The next round tries again.
            pending.sends = self._cfg.max_sends
            self._pending[tid] = pending
            heapq.heappush(self._rtx, (now + self._cfg.retransmit_interval, tid))
            self._attaching[node] = tid
            self._actions.append(Send(node, address, message))
            pending.hop = node

    # ================================================================== fingers
    def _near_limit(self) -> int:
        return ((self._succ[-1] - self._id) & MASK) if self._succ else 0

    def _far_count(self) -> int:
        """Fingers 1..k are far: their targets lie beyond our last successor."""
        if not self._succ:
            return 0
        return max(0, ID_BITS - self._near_limit().bit_length())

    def _finger(self, index: int) -> int | None:
        span = 1 << (ID_BITS - index)
        if self._succ and span <= self._near_limit():
            me = self._id
            for s in self._succ:
                if ((s - me) & MASK) >= span:
                    return s
        return self._far.get(index)

    def _set_finger(self, index: int, node: int, now: float) -> None:
        k = self._far_count()
        if index > k:
            return
        me = self._id
        dn = (node - me) & MASK
        self._far[index] = node
        self._far_time[index] = now
        j = index - 1
        while j >= 1 and (1 << (ID_BITS - j)) <= dn:
            self._far[j] = node  # the same peer answers for every target up to itself
            self._far_time[j] = now
            j -= 1
        self._table_dirty = True

    def _drop_finger(self, node: int) -> None:
        gone = [i for i, n in self._far.items() if n == node]
        for i in gone:
            del self._far[i]
            self._far_time.pop(i, None)
        if gone:
            self._table_dirty = True

    def _lookup_finger(self, index: int, now: float) -> None:
        target = (self._id + (1 << (ID_BITS - index))) & MASK
        if self.is_responsible(target):
            return
        key = -index  # negative keys keep finger lookups apart from candidate Attaches
        if key in self._attaching:
            return
        body = AttachReq(candidates=self._candidate())
        tid = self._originate((NodeDestination(target),), body, now, _FINGER, index)
        self._attaching[key] = tid

    def _start_finger_campaign(self, now: float) -> None:
        self._campaign = now
        self._campaign_tried = set()
        self._t_fast = now + 0.5  # once the successor list has filled a little

    def _finger_campaign_step(self, now: float) -> None:
        """Look up the next far finger not yet refreshed in this campaign, nearest first.

        One answer often covers several fingers (``_set_finger``), so the set to look up is
        recomputed at every step rather than fixed at the start.
        """
        if self._state is not PeerState.JOINED:
            return
        todo = [
            i
            for i in range(self._far_count(), 0, -1)
            if i not in self._campaign_tried and self._far_time.get(i, -INF) < self._campaign
        ]
        if not todo:
            return
        self._campaign_tried.add(todo[0])
        self._lookup_finger(todo[0], now)
        if len(todo) > 1:
            self._t_fast = now + min(0.1, self._cfg.finger_interval / 30)

    def _finger_refresh(self, now: float) -> None:
        k = self._far_count()
        if k == 0 or self._state is not PeerState.JOINED:
            return
        missing = [i for i in range(k, 0, -1) if i not in self._far]
        if missing:
            self._lookup_finger(missing[0], now)
            return
        self._finger_rot = self._finger_rot % k + 1
        self._lookup_finger(self._finger_rot, now)

    # ================================================================== probe
    def _responsible_ppb(self) -> int:
        if self._state not in (PeerState.JOINED, PeerState.LEAVING):
            return 0
        if not self._pred:
            return 1_000_000_000 if not self._succ else 0
        return share_ppb(self._pred[0], self._id)

    def _probe_answer(self, body: ProbeReq, now: float) -> ProbeAns:
        wanted = set(body.requested_info) or {1, 2, 3, 4}
        infos: list[ProbeInformation] = []
        if ProbeInformationType.RESPONSIBLE_SET in wanted:
            infos.append(
                ProbeInformation(ProbeInformationType.RESPONSIBLE_SET, self._responsible_ppb())
            )
        if ProbeInformationType.NUM_RESOURCES in wanted:
            count = self._num_resources() if self._num_resources is not None else 0
            infos.append(ProbeInformation(ProbeInformationType.NUM_RESOURCES, count & 0xFFFFFFFF))
        if ProbeInformationType.UPTIME in wanted:
            uptime = int(max(0.0, now - self._started)) & 0xFFFFFFFF
            infos.append(ProbeInformation(ProbeInformationType.UPTIME, uptime))
        if ProbeInformationType.EXP_PROBE in wanted:
            extras: dict[str, object] = {}
            if self._exp_probe is not None:
                extras.update(self._exp_probe())
            extras["successors"] = list(self._succ)
            extras["predecessors"] = list(self._pred)
            try:
                infos.extend(probe.encode_probe_extras(extras))
            except ValueError as exc:
                self._actions.append(Dropped(f"exp-probe: {exc}"))
        return ProbeAns(tuple(infos))

    # ================================================================== bookkeeping
    def _finish(self, now: float) -> None:
        """After every input: announce neighbour changes once, however many there were."""
        if not self._changed:
            return
        self._changed = False
        self._table_dirty = True
        if self._succ:
            self._was_joined = True
        state = self._state
        if state is not PeerState.JOINED:
            return
        self._actions.append(NeighborsChanged(tuple(self._pred), tuple(self._succ)))
        # The ring grew around us: fingers that used to be successors are far now.
        if self._t_fast == INF and any(i not in self._far for i in range(1, self._far_count() + 1)):
            self._campaign = now
            self._campaign_tried = set()
            self._t_fast = now + min(0.1, self._cfg.finger_interval / 30)
        if self._t_announce == INF:
            # Changes come in bursts (a join moves several entries): one Update per burst.
            self._t_announce = now + min(ANNOUNCE_DELAY, self._cfg.ping_interval / 20)
        first_succ = self._succ[0] if self._succ else None
        first_pred = self._pred[0] if self._pred else None
        # A new first neighbour whose lists we do not know: ask it for an Update.
        for first, old in ((first_succ, self._first_succ), (first_pred, self._first_pred)):
            if first is not None and first != old and first not in self._lists:
                self._offer(first, now, force=True)
        self._first_succ, self._first_pred = first_succ, first_pred
        if not self._succ and self._was_joined and self._join_phase == 0:
            self._join_phase = 1
            self._refill(now)
            self._send_join_attach(now)
        if self._changed:
            self._finish(now)
