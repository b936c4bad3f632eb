"""A peer its neighbours wrongly dropped comes back (nemesis bug 1).

Before the fix, the neighbours Attached to the dropped peer's id, which by then lay in their
own range, and delivered the Attach to themselves: the peer stayed out for good, the ring
never closed again, and both sides answered for the same range (a split brain).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from replication_support import (
    FAST,
    KIND,
    all_fetchable,
    factory,
    fill,
    id_between,
    make_sim,
    replicator,
    run_until_repaired,
)
from replication_support import build as build_with_storage
from test_sim import build

from overlay.config import ChordConfig
from overlay.ids import MASK
from overlay.messages import (
    ChordLeaveType,
    ForwardingHeader,
    LeaveReq,
    Message,
    NodeDestination,
    overlay_hash,
)
from overlay.sim import Simulation


def spoofed_leave(sim: Simulation, sender: int, to: int, leaver: int) -> Message:
    header = ForwardingHeader(
        overlay_hash(sim.config.overlay_name),
        sim.rng.getrandbits(64),
        (NodeDestination(sender),),
        (NodeDestination(to),),
    )
    return Message(header, LeaveReq(leaver, ChordLeaveType.FROM_SUCC, ()))


def drop_from_neighbours(sim: Simulation, victim: int) -> None:
    """Make every peer that lists ``victim`` drop it, as a forged Leave (or a reset link,
    or a pause past the failure detector) does, while the victim itself stays up."""
    for node in sim.live_ids():
        peer = sim.peer(node)
        if node != victim and (victim in peer.successors or victim in peer.predecessors):
            sim.inject(node, spoofed_leave(sim, victim, node, victim))


def test_a_leave_for_another_peer_is_ignored() -> None:
    sim = Simulation(seed=2)
    build(sim, 6)
    assert sim.run_until_converged(30.0, full=True) is not None
    victim, neighbour = sim.ring[2], sim.ring[3]
    sim.inject(neighbour, spoofed_leave(sim, sim.ring[0], neighbour, victim))
    assert sim.peer(neighbour).predecessors[0] == victim


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_a_peer_dropped_by_its_neighbours_is_readmitted(seed: int) -> None:
    sim = Simulation(seed=seed)
    build(sim, 12)
    assert sim.run_until_converged(30.0, full=True) is not None
    victim = sim.ring[5]
    drop_from_neighbours(sim, victim)
    assert all(victim not in sim.peer(n).predecessors for n in sim.ring if n != victim)
    dropped_at = sim.now
    # The victim sends its periodic Update within update_interval; a dead-hold tombstone
    # must not keep it out longer than that plus a few rounds.
    bound = sim.config.update_interval + sim.config.dead_hold + 10.0
    healed = sim.run_until_converged(dropped_at + bound, full=True)
    assert healed is not None, "the dropped peer was never re-admitted"
    ranges = [sim.peer(n).responsible_range() for n in sim.ring]
    covered = sum(((hi - lo) & MASK) or (MASK + 1) for lo, hi in (r for r in ranges if r))
    assert covered == MASK + 1, "ownership does not add up to the whole ring once"


def test_a_peer_dropped_by_its_neighbours_with_short_timers_is_readmitted() -> None:
    config = ChordConfig(ping_interval=0.3, update_interval=1.0, finger_interval=0.3, dead_hold=3.0)
    sim = Simulation(seed=9, config=config)
    build(sim, 8)
    assert sim.run_until_converged(30.0, full=True) is not None
    for victim in list(sim.ring[1:4]):
        drop_from_neighbours(sim, victim)
        sim.run_for(0.5)
    assert sim.run_until_converged(sim.now + 30.0, full=True) is not None


def test_no_split_brain_after_the_dropped_peer_is_readmitted(tmp_path: Path) -> None:
    """A removal made through the side that dropped the peer wins everywhere once it is back:
    lookups through the dropped peer no longer return the removed value."""
    sim = make_sim(tmp_path, seed=31)
    build_with_storage(sim, 10)
    want = fill(sim, 300)
    run_until_repaired(sim, want)
    victim = sim.ring[4]
    owned = [(res, key) for (res, key) in want if sim.responsible(res) == victim]
    assert owned, "the victim owns no record: pick another seed"
    drop_from_neighbours(sim, victim)
    sim.run_for(1.0)
    successor = sim.peer(victim).successors[0]
    # Written through the successor, which now believes it owns the victim's range.
    ops = []
    for resource, key in owned:
        want[(resource, key)] = b"after-split"
        ops.append(sim.put(successor, resource, KIND, key, b"after-split"))
    assert sim.wait(ops, 60.0) and all(op.ok for op in ops), [op.answer for op in ops]
    run_until_repaired(sim, want, timeout=180.0)
    assert victim in sim.ring and sim.ring_is_consistent(full=True)
    for resource, key in owned:
        answer = sim.fetch(victim, resource, KIND, (key,))
        assert answer.values().get(key) == b"after-split", answer.answer
    assert all_fetchable(sim, want) == []


def test_an_anti_entropy_bucket_larger_than_a_frame_comes_in_pages(tmp_path: Path) -> None:
    """Nemesis bug 3: a bucket of 2,500 one-KiB records (2.6 MB) was answered in one FetchAns
    that exceeded the 1 MiB frame limit, and the sender then declared the next hop dead. Now
    the answer stops at its page size and the puller asks for the rest."""
    sim = Simulation(
        41,
        backend_factory=factory(tmp_path),
        replication=FAST,
        use_codec=True,
    )
    build_with_storage(sim, 3)
    pred, owner = sim.ring[0], sim.ring[1]
    span = ((owner - pred) & MASK) // FAST.anti_entropy_buckets  # the first bucket
    ops = []
    want: dict[tuple[int, bytes], bytes] = {}
    for i in range(2500):
        resource = id_between(pred, (pred + span) & MASK, sim.rng)
        key, value = b"k%d" % i, bytes([i % 251]) * 1024
        want[(resource, key)] = value
        ops.append(sim.put(owner, resource, KIND, key, value))
        if i % 100 == 99:
            sim.run_for(0.01)
    assert sim.wait(ops, 120.0) and all(op.ok for op in ops)
    run_until_repaired(sim, want)
    # The owner loses its copy of its own range: the next anti-entropy round pulls it back
    # from a replica, the whole bucket at once before the fix.
    primary = sim.nodes[owner].backend
    assert primary is not None and primary.delete_range(pred, owner) == 2500
    run_until_repaired(sim, want, timeout=4 * FAST.anti_entropy_interval)
    assert sim.oversized == 0, "a message exceeded the frame limit"
    assert replicator(sim, owner).counters["sync_pages"] >= 2
    assert sim.ring_is_consistent(full=True) and len(sim.ring) == 3


@pytest.mark.parametrize(("seed", "split"), [(1, "halves"), (2, "halves"), (2, "founder")])
def test_a_healed_partition_merges_within_a_few_ping_rounds(seed: int, split: str) -> None:
    """Nemesis finding: after a partition (or a pause, or an isolated node) both sides held
    each other dead, only hearsay after dead_hold (30 s) brought them back, and a node cut off
    from every neighbour with no bootstrap address never came back. Now dead peers' addresses
    are kept and Attached to directly every ping round."""
    sim = Simulation(seed=seed)
    founder = sim.add_node(bootstrap=())
    for i in range(1, 12):
        sim.run_until(i / 12)
        sim.add_node(bootstrap=[founder] if len(sim.ring) < 2 else None)
    assert sim.run_until_converged(30.0, full=True) is not None
    ring = list(sim.ring)
    if split == "halves":
        groups = [ring[:6], ring[6:]]
    else:  # the first peer, started with no bootstrap address, alone
        groups = [[founder], [n for n in ring if n != founder]]
    sim.partition(groups)
    sim.run_for(20.0)  # well past the failure detector: each side drops the other
    assert all(
        not set(sim.peer(n).successors) & set(other)
        for group, other in (groups, groups[::-1])
        for n in group
    )
    sim.heal()
    healed_at = sim.now
    done = sim.run_until_converged(healed_at + 60.0, full=True)
    assert done is not None, "the two sides never merged"
    # Faster than dead_hold: it is not hearsay after the tombstones expired that merges them.
    assert done - healed_at < sim.config.dead_hold / 2, done - healed_at
