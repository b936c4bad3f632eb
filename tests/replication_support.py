"""Shared set-up for the replication tests: simulated rings whose peers keep real LMDB stores."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from overlay.config import ChordConfig
from overlay.ids import MASK, in_open_closed
from overlay.replication import Replicator
from overlay.replication_backend import RecordBackend, ReplicationConfig
from overlay.sim import ClientOp, Simulation
from storage import KindLimits, RecordStore

KIND = 0xF0000001
KINDS = {KIND: KindLimits()}

FAST = ReplicationConfig(
    anti_entropy_interval=10.0,
    garbage_interval=3.0,
    garbage_quiet=3.0,
    sweep_interval=5.0,
)


def factory(directory: Path) -> Callable[[int], RecordBackend]:
    def make(node_id: int) -> RecordBackend:
        return RecordStore(
            directory / f"{node_id:032x}",
            KINDS,
            durability="async",
            initial_map_size=1 << 20,
        )

    return make


def make_sim(
    directory: Path,
    seed: int = 1,
    *,
    replication: ReplicationConfig = FAST,
    config: ChordConfig | None = None,
    silent: bool = False,
) -> Simulation:
    return Simulation(
        seed,
        config,
        backend_factory=factory(directory),
        replication=replication,
        silent_failures=silent,
    )


def build(sim: Simulation, count: int, rate: float = 50.0) -> None:
    sim.add_node(bootstrap=())
    start = sim.now
    for i in range(1, count):
        sim.run_until(start + i / rate)
        sim.add_node()
    assert sim.run_until_converged(sim.now + 120.0, full=True) is not None


def fill(sim: Simulation, count: int, prefix: bytes = b"k") -> dict[tuple[int, bytes], bytes]:
    """Store ``count`` records through random peers; returns (resource, key) -> value."""
    ops: list[ClientOp] = []
    want: dict[tuple[int, bytes], bytes] = {}
    for i in range(count):
        origin = sim.ring[sim.rng.randrange(len(sim.ring))]
        resource = sim.rng.getrandbits(128)
        key, value = prefix + str(i).encode(), b"v-" + str(i).encode()
        want[(resource, key)] = value
        ops.append(sim.put(origin, resource, KIND, key, value))
        if i % 100 == 99:
            sim.run_for(0.01)
    assert sim.wait(ops, 120.0), "stores did not finish"
    bad = [op.answer for op in ops if not op.ok]
    assert not bad, f"{len(bad)} stores failed, e.g. {bad[:3]}"
    return want


def copy_counts(sim: Simulation) -> Counter[int]:
    return Counter(len(v) for v in sim.holdings().values())


def fully_replicated(sim: Simulation, want: dict[tuple[int, bytes], bytes]) -> bool:
    """Every record on exactly min(3, ring) live peers, all with the expected value."""
    if not sim.ring_is_consistent(full=True) or sim.replication_busy():
        return False
    copies = min(3, len(sim.ring))
    held = sim.holdings()
    if len(held) != len(want):
        return False
    for (resource, kind, key), holders in held.items():
        if len(holders) != copies or kind != KIND:
            return False
        value = want.get((resource, key))
        if any(not exists or v != value for _, _, exists, v in holders):
            return False
    return True


def run_until_repaired(
    sim: Simulation, want: dict[tuple[int, bytes], bytes], timeout: float = 120.0
) -> float:
    """Virtual seconds until ``fully_replicated``; fails the test after ``timeout``."""
    start = sim.now
    while not fully_replicated(sim, want):
        if sim.now - start > timeout:
            raise AssertionError(f"not repaired in {timeout} s: copies {copy_counts(sim)}")
        sim.run_for(0.5)
    return sim.now - start


def all_fetchable(sim: Simulation, want: dict[tuple[int, bytes], bytes]) -> list[str]:
    """Fetch every record through the ring from random peers; the mismatches."""
    ops: list[tuple[ClientOp, tuple[int, bytes]]] = []
    for i, (resource, key) in enumerate(want):
        origin = sim.ring[sim.rng.randrange(len(sim.ring))]
        ops.append((sim.get(origin, resource, KIND, (key,)), (resource, key)))
        if i % 200 == 199:
            sim.run_for(0.01)
    assert sim.wait([op for op, _ in ops], 120.0)
    bad = []
    for op, ident in ops:
        if op.values().get(ident[1]) != want[ident]:
            bad.append(f"{ident[0]:032x}/{ident[1]!r}: {op.answer}")
    return bad


def responsible(ring: list[int], target: int) -> int:
    for i, node in enumerate(ring):
        if in_open_closed(target, ring[i - 1], node):
            return node
    raise AssertionError("empty ring")


def replicator(sim: Simulation, node_id: int) -> Replicator:
    r = sim.nodes[node_id].replicator
    assert r is not None
    return r


def total(sim: Simulation, counter: str) -> int:
    return sum(n.replicator.counters[counter] for n in sim.nodes.values() if n.replicator)


def id_between(a: int, b: int, rng: random.Random) -> int:
    """A random id strictly inside (a, b) on the ring."""
    span = (b - a) & MASK
    return (a + 1 + rng.randrange(span - 1)) & MASK
