"""The schedule of fault episodes, drawn from the seed.

An episode is one fault kind or two mixed (started together, held, healed together). The first
episodes go through every kind once, in an order drawn from the seed, pairing kinds with
probability ``mix``; after that, kinds are drawn at random, alone or mixed, until the run's time
is up. Two network faults are never mixed (one partition at a time), nor two autoscaler
episodes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from nemesis.history import FaultKind

NETWORK = frozenset(
    {
        FaultKind.PARTITION_HALVES,
        FaultKind.PARTITION_MAJORITY,
        FaultKind.PARTITION_BRIDGE,
        FaultKind.ISOLATE,
    }
)
# Faults that take one node out of the ring for a while.
NODE_DOWN = frozenset({FaultKind.PAUSE, FaultKind.KILL, FaultKind.LEAVE, FaultKind.ISOLATE})


@dataclass(frozen=True)
class Episode:
    index: int
    kinds: tuple[FaultKind, ...]
    hold: float  # seconds the faults stay in place


def compatible(a: FaultKind, b: FaultKind) -> bool:
    if a == b:
        return a in (FaultKind.CLOCK, FaultKind.PAUSE, FaultKind.KILL)
    return not (a in NETWORK and b in NETWORK)


def schedule(
    rng: random.Random,
    kinds: Sequence[FaultKind],
    hold: tuple[float, float],
    mix: float,
) -> Iterator[Episode]:
    """Episodes without end (the runner stops taking them when its time is up)."""
    first = list(kinds)
    rng.shuffle(first)
    index = 0
    while first:
        kind = first.pop(0)
        chosen = [kind]
        if first and rng.random() < mix:
            partner = next((k for k in first if compatible(kind, k)), None)
            if partner is not None:
                first.remove(partner)
                chosen.append(partner)
        yield Episode(index, tuple(chosen), round(rng.uniform(*hold), 2))
        index += 1
    while True:
        chosen = [rng.choice(kinds)]
        if rng.random() < mix:
            partner = rng.choice(kinds)
            if compatible(chosen[0], partner):
                chosen.append(partner)
        yield Episode(index, tuple(chosen), round(rng.uniform(*hold), 2))
        index += 1
