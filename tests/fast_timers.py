"""Short Chord and link timers for in-process rings in tests: a ring converges in well under a
second and a dead peer is noticed within about two."""

from __future__ import annotations

from overlay.config import ChordConfig
from overlay.transport import LinkConfig


def fast_chord(overlay_name: str) -> ChordConfig:
    return ChordConfig(
        overlay_name=overlay_name,
        ping_interval=0.3,
        missed_pings=3,
        update_interval=1.0,
        finger_interval=0.3,
        retransmit_interval=0.5,
        request_lifetime=4.0,
        duplicate_window=4.0,
        leave_timeout=1.0,
        join_retry=0.5,
        dead_hold=3.0,
    )


FAST_LINKS = LinkConfig(failure_floor=1.5, connect_timeout=1.0, check_interval=0.1)
