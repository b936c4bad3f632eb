"""The Chord-reload peer (RFC 6940 §10) as a sans-I/O state machine.

INTERFACE STUB — implemented by the chord work. Everything else (runtime,
simulator, node) codes against exactly these signatures.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from overlay.actions import Action, Address, PeerState
from overlay.config import ChordConfig
from overlay.messages import Destination, Message, MessageBody


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
    ) -> None:
        """``exp_probe`` returns this node's own extra data for Probe answers (admin/sip
        addresses, version…); ``num_resources`` counts stored records (0 without a store)."""
        raise NotImplementedError

    # --- commands -----------------------------------------------------------
    def start(self, now: float, bootstrap: Sequence[Address] = ()) -> None:
        """Empty ``bootstrap``: start a new ring alone. Else join through any of them."""
        raise NotImplementedError

    def leave(self, now: float) -> None:
        """Graceful leave: LeaveReq to every neighbour, then state LEFT (after answers or
        ``leave_timeout``)."""
        raise NotImplementedError

    def request(self, destinations: Sequence[Destination], body: MessageBody, now: float) -> int:
        """Originate a request; returns its transaction id. Its answer arrives as
        ``RequestCompleted`` (or ``RequestFailed``); retransmitted end to end meanwhile."""
        raise NotImplementedError

    def respond(self, request: Message, body: MessageBody, now: float) -> None:
        """Answer an ``AppRequest`` delivered to this peer."""
        raise NotImplementedError

    # --- inputs -------------------------------------------------------------
    def receive(self, message: Message, now: float) -> None:
        raise NotImplementedError

    def link_failed(self, next_hop: int | None, address: Address | None, now: float) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        raise NotImplementedError

    # --- outputs ------------------------------------------------------------
    def take_actions(self) -> list[Action]:
        raise NotImplementedError

    def next_deadline(self) -> float | None:
        raise NotImplementedError

    # --- queries ------------------------------------------------------------
    @property
    def state(self) -> PeerState:
        raise NotImplementedError

    def view(self, now: float) -> PeerView:
        raise NotImplementedError

    def next_hop(self, destination: Destination) -> int | None:
        """The peer we would forward to; None when this peer is responsible."""
        raise NotImplementedError

    def is_responsible(self, target: int) -> bool:
        raise NotImplementedError
