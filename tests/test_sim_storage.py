"""Issue 3 acceptance in the simulator: the real ChordPeer + Replicator + LMDB stores under
virtual time (acceptance 2: crashes and leaves lose nothing; acceptance 4: a record updated
while its owner changes ends with the last acknowledged value on every copy)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from replication_support import (
    KIND,
    all_fetchable,
    build,
    copy_counts,
    fill,
    id_between,
    make_sim,
    run_until_repaired,
)

from overlay.actions import PeerState
from overlay.ids import in_open_closed
from overlay.sim import ClientOp, Simulation


def kill_pairs_until(peers: int, records: int, stop: int, tmp_path: Path, seed: int) -> None:
    wall = time.perf_counter()
    sim = make_sim(tmp_path, seed=seed)
    build(sim, peers)
    want = fill(sim, records)
    run_until_repaired(sim, want)
    repairs: list[float] = []
    while len(sim.ring) > stop:
        for victim in sim.rng.sample(sim.ring, 2):
            sim.crash(victim)
        repairs.append(run_until_repaired(sim, want))
    assert copy_counts(sim) == {3: records}
    bad = all_fetchable(sim, want)
    assert bad == [], bad[:5]
    print(
        f"{peers}->{len(sim.ring)} peers, {records} records: {len(repairs)} double crashes, "
        f"repair max {max(repairs):.1f} / mean {sum(repairs) / len(repairs):.1f} virtual s; "
        f"wall {time.perf_counter() - wall:.1f} s"
    )


def test_acceptance2_kill_two_at_a_time_200_peers_20000_records(tmp_path: Path) -> None:
    kill_pairs_until(200, 20_000, 100, tmp_path, seed=21)


def test_kill_two_adjacent_peers_at_once_loses_nothing(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, seed=22)
    build(sim, 40)
    want = fill(sim, 4000)
    run_until_repaired(sim, want)
    for start in (5, 20):
        a, b = sim.ring[start], sim.ring[start + 1]
        sim.crash(a)
        sim.crash(b)
        took = run_until_repaired(sim, want)
        print(f"two adjacent crashes repaired in {took:.1f} virtual s")
    assert all_fetchable(sim, want) == []


def leave_down_to_one(peers: int, records: int, tmp_path: Path, seed: int) -> None:
    wall = time.perf_counter()
    sim = make_sim(tmp_path, seed=seed)
    build(sim, peers)
    want = fill(sim, records)
    run_until_repaired(sim, want)
    while len(sim.ring) > 1:
        leaver = sim.ring[sim.rng.randrange(len(sim.ring))]
        sim.leave(leaver)
        started = sim.now
        while sim.peer(leaver).state is not PeerState.LEFT and sim.now < started + 30:
            sim.run_for(0.05)
        assert sim.peer(leaver).state is PeerState.LEFT
        sim.crash(leaver)  # the process exits after leaving
        run_until_repaired(sim, want)
    assert copy_counts(sim) == {1: records}
    assert all_fetchable(sim, want) == []
    took = time.perf_counter() - wall
    print(f"{peers} peers left one by one, {records} records kept; wall {took:.1f} s")


def test_graceful_leaves_down_to_one_peer_lose_nothing(tmp_path: Path) -> None:
    leave_down_to_one(30, 3000, tmp_path, seed=23)


@pytest.mark.slow
def test_graceful_leaves_200_peers_20000_records_down_to_one(tmp_path: Path) -> None:
    leave_down_to_one(200, 20_000, tmp_path, seed=24)


@pytest.mark.slow
def test_kill_two_at_a_time_seeds(tmp_path: Path) -> None:
    for seed in (31, 32, 33):
        kill_pairs_until(200, 20_000, 100, tmp_path / str(seed), seed=seed)


# --------------------------------------------------------------------------- acceptance 4
def stream_while(sim: Simulation, writer: int, resource: int, change: object) -> bytes:
    """Store version after version of one record from ``writer`` (each after the previous
    was answered); ``change()`` runs after the 5th. Returns the last acknowledged value."""
    last_ok = b""
    for n in range(40):
        if n == 5:
            change()  # type: ignore[operator]
        value = f"v{n}".encode()
        op: ClientOp = sim.put(writer, resource, KIND, b"contact", value)
        assert sim.wait([op], 60.0)
        if op.ok:
            last_ok = value
        sim.run_for(0.02)
    return last_ok


def settle_on(sim: Simulation, resource: int, value: bytes, timeout: float = 60.0) -> None:
    start = sim.now
    while True:
        copies = sim.copies(resource, KIND, b"contact")
        if (
            sim.ring_is_consistent(full=True)
            and not sim.replication_busy()
            and len(copies) == 3
            and all(v == value for _, v in copies)
        ):
            return
        assert sim.now - start < timeout, copies
        sim.run_for(0.5)


def test_acceptance4_updates_across_a_join_end_with_the_last_acknowledged_value(
    tmp_path: Path,
) -> None:
    sim = make_sim(tmp_path, seed=41)
    build(sim, 8)
    resource = sim.rng.getrandbits(128)
    ring = sim.ring
    owner = next(n for i, n in enumerate(ring) if in_open_closed(resource, ring[i - 1], n))
    pred = ring[ring.index(owner) - 1]
    writer = next(n for n in ring if n not in (owner, pred))
    joiner = id_between(resource, owner, sim.rng)  # the joiner takes the record over
    assert sim.store(writer, resource, KIND, b"contact", b"v-init").ok
    last = stream_while(sim, writer, resource, lambda: sim.add_node(joiner, bootstrap=[writer]))
    assert last == b"v39"
    settle_on(sim, resource, last)
    holders = {n for n, _ in sim.copies(resource, KIND, b"contact")}
    assert joiner in holders
    fetched = sim.fetch(writer, resource, KIND)
    assert fetched.values() == {b"contact": last}


def test_acceptance4_updates_across_a_leave_end_with_the_last_acknowledged_value(
    tmp_path: Path,
) -> None:
    sim = make_sim(tmp_path, seed=42)
    build(sim, 8)
    resource = sim.rng.getrandbits(128)
    ring = sim.ring
    owner = next(n for i, n in enumerate(ring) if in_open_closed(resource, ring[i - 1], n))
    writer = next(n for n in ring if n != owner)
    assert sim.store(writer, resource, KIND, b"contact", b"v-init").ok

    def leave() -> None:
        sim.leave(owner)

    last = stream_while(sim, writer, resource, leave)
    assert last == b"v39"
    assert sim.peer(owner).state is PeerState.LEFT
    sim.crash(owner)
    settle_on(sim, resource, last)
    assert sim.fetch(writer, resource, KIND).values() == {b"contact": last}
