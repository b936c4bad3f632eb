"""What the sans-I/O Chord peer asks its runtime to do, and what it reports.

The peer (``overlay.chord.ChordPeer``) never touches a socket or a clock. Each
call into it (``receive``, ``tick``, ``link_failed``, commands) takes ``now``
(seconds, monotonic) and queues outputs; the runtime drains them with
``take_actions()`` and asks ``next_deadline()`` when to call ``tick`` next.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from overlay.messages import Message, MessageBody


@dataclass(frozen=True, slots=True)
class Address:
    """A peer's overlay listening address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` one hop, to ``next_hop``.

    The runtime uses an open link to ``next_hop`` if it has one (either
    direction: the sender of an inbound message is its last via entry), else
    connects to ``address``. With neither (or when the link breaks) it calls
    ``ChordPeer.link_failed(next_hop, address, now)``. ``next_hop`` is None
    only before we know the peer's id (the bootstrap address).
    """

    next_hop: int | None
    address: Address | None
    message: Message


class PeerState(Enum):
    INIT = "init"
    JOINING = "joining"
    JOINED = "joined"
    LEAVING = "leaving"
    LEFT = "left"


# --- events: things the node above the overlay may want to know -------------


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: PeerState


@dataclass(frozen=True, slots=True)
class NeighborsChanged:
    predecessors: tuple[int, ...]
    successors: tuple[int, ...]


class LossReason(Enum):
    """Why a neighbour was dropped from our lists."""

    MISSED_PINGS = "missed pings"
    LINK_FAILED = "link failed"
    LEFT = "left the ring"


@dataclass(frozen=True, slots=True)
class PeerLost:
    """A neighbour (successor or predecessor) was dropped: it left, or we think it failed.
    Emitted once per loss, before the ``NeighborsChanged`` that follows it."""

    node_id: int
    reason: LossReason
    address: Address | None


@dataclass(frozen=True, slots=True)
class AppRequest:
    """A request for the application (Store, Fetch, Stat, AppAttach…) delivered to this peer.

    Answer it with ``ChordPeer.respond(request, body, now)``.
    """

    message: Message


@dataclass(frozen=True, slots=True)
class RequestCompleted:
    """The answer to a request this peer originated with ``ChordPeer.request``."""

    transaction_id: int
    response: Message


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A request this peer originated got no answer in its lifetime or could not be routed."""

    transaction_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """The answer to a data request submitted by this node's own application
    (``OverlayCore.submit``), served here or through the ring: an action like a Send, so a
    durable runtime holds it back behind a ``Flush`` until the write is on disk."""

    token: int
    body: MessageBody
    responder: int | None = None  # the peer that answered (this one when served here)


@dataclass(frozen=True, slots=True)
class Flush:
    """A durability barrier: every action after it waits until the record store has been
    flushed to disk (every write made so far). The runtime flushes, then releases them; the
    simulator's stores are as durable as it wants them to be."""


@dataclass(frozen=True, slots=True)
class AdmissionRequested:
    """A peer asked to join in our range (start, joining]: hand its records over, then call
    ``ChordPeer.admit(joining, now)`` (only with ``hand_over=True``)."""

    joining: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class LeaveRequested:
    """We are leaving: hand our records to ``successor``, then call
    ``ChordPeer.proceed_leave(now)`` (only with ``hand_over=True``)."""

    successor: int | None


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message we could not handle (bad destination, TTL, unknown peer). For logs and metrics."""

    reason: str
    message: Message | None = None


Event = (
    StateChanged
    | NeighborsChanged
    | PeerLost
    | AppRequest
    | RequestCompleted
    | RequestFailed
    | LocalAnswer
    | AdmissionRequested
    | LeaveRequested
    | Dropped
)
Action = Send | Flush | Event

__all__ = [
    "Action",
    "Address",
    "AdmissionRequested",
    "AppRequest",
    "Dropped",
    "Event",
    "Flush",
    "LeaveRequested",
    "LocalAnswer",
    "LossReason",
    "MessageBody",
    "NeighborsChanged",
    "PeerLost",
    "PeerState",
    "RequestCompleted",
    "RequestFailed",
    "Send",
    "StateChanged",
]
