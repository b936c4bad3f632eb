"""Tunables of the Chord-reload peer. Defaults suit a data centre (RFC 6940's are minutes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChordConfig:
    overlay_name: str = "p2preg.local"
    successors: int = 5  # size of the successor list (≥ 3)
    predecessors: int = 5  # size of the predecessor list (≥ 3)
    ping_interval: float = 2.0  # s between liveness pings to each neighbour
    missed_pings: int = 3  # a neighbour that misses this many answers in a row is dead
    update_interval: float = 10.0  # s between periodic Updates to the neighbours
    finger_interval: float = 3.0  # s between finger refreshes (one finger per tick, in rotation)
    jitter: float = 0.2  # every periodic timer is scaled by a random factor in [1-j, 1+j]
    retransmit_interval: float = 3.0  # end-to-end retransmission of our own requests (WIRE.md §2)
    max_sends: int = 5  # sends of one request, first included
    request_lifetime: float = 15.0  # s until an unanswered request fails
    duplicate_window: float = 15.0  # s we replay the answer to a retransmitted request
    leave_timeout: float = 3.0  # s we wait for LeaveAns before leaving anyway
    join_retry: float = 2.0  # s between join attempts while no bootstrap answers
    dead_hold: float = 30.0  # s a peer declared dead is not re-adopted from hearsay
    initial_ttl: int = 100

    def __post_init__(self) -> None:
        if self.successors < 3 or self.predecessors < 3:
            raise ValueError("successor and predecessor lists need at least 3 entries each")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        for name in ("ping_interval", "update_interval", "finger_interval", "retransmit_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
