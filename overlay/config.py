"""Tunables of the Chord-reload peer. Defaults suit a data centre (RFC 6940's are minutes)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# The shortest period a periodic timer may have: below it a peer does little but tick (a 1 ns
# Update interval spins a core), and no network answers that fast anyway.
MIN_PERIOD = 0.05
# The longest any timer may be: a day. Past it a typo (1e9) silently switches a timer off.
MAX_PERIOD = 86400.0


def check_seconds(name: str, value: float, *, minimum: float, maximum: float = MAX_PERIOD) -> None:
    """Raise ValueError naming ``name`` unless ``minimum <= value <= maximum`` (NaN and the
    infinities fail: a NaN deadline compares false with everything and stops a timer loop)."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be between {minimum:g} and {maximum:g} s, not {value:g}")


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
        if not (isinstance(self.jitter, int | float) and 0 <= self.jitter < 1):
            raise ValueError(f"jitter must be in [0, 1), not {self.jitter!r}")
        for name in ("ping_interval", "update_interval", "finger_interval", "retransmit_interval"):
            check_seconds(name, getattr(self, name), minimum=MIN_PERIOD)
        for name in ("request_lifetime", "leave_timeout", "join_retry"):
            check_seconds(name, getattr(self, name), minimum=MIN_PERIOD)
        for name in ("duplicate_window", "dead_hold"):
            check_seconds(name, getattr(self, name), minimum=0.0)
        if self.missed_pings < 1 or self.max_sends < 1:
            raise ValueError("missed_pings and max_sends must be at least 1")
        if not 1 <= self.initial_ttl <= 255:
            raise ValueError("initial_ttl must be in 1..255")
