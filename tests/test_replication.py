"""Replicator rules on small simulated rings whose peers keep real LMDB stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from replication_support import (
    FAST,
    KIND,
    all_fetchable,
    build,
    fill,
    fully_replicated,
    id_between,
    make_sim,
    replicator,
    responsible,
    run_until_repaired,
    total,
)

from overlay.actions import PeerState
from overlay.codec_bodies import decode_body
from overlay.ids import in_open_closed
from overlay.messages import (
    ErrorCode,
    ErrorResponse,
    FetchAns,
    MessageCode,
    StoreAns,
    StoredDataSpecifier,
)
from overlay.replication_backend import Role
from overlay.sim import Simulation


def test_original_store_goes_to_exactly_two_successors_and_the_answer_lists_them(
    tmp_path: Path,
) -> None:
    sim = make_sim(tmp_path, seed=3)
    build(sim, 8)
    resource = sim.rng.getrandbits(128)
    owner = responsible(sim.ring, resource)
    origin = next(n for n in sim.ring if n != owner)
    op = sim.store(origin, resource, KIND, b"alice", b"v1")
    assert isinstance(op.answer, StoreAns), op.answer
    i = sim.ring.index(owner)
    succs = [sim.ring[(i + 1) % 8], sim.ring[(i + 2) % 8]]
    [kr] = op.answer.kind_responses
    assert sorted(kr.replicas) == sorted(succs)
    assert kr.generation_counter == 1
    holders = sorted(n for n, _ in sim.copies(resource, KIND, b"alice"))
    assert holders == sorted([owner, *succs])
    roles = {
        n: [r.role for r in sim.nodes[n].backend.scan_range(0, 0, 0)]  # type: ignore[union-attr]
        for n in holders
    }
    assert roles[owner] == [Role.PRIMARY]
    assert all(roles[s] == [Role.REPLICA] for s in succs)
    fetched = sim.fetch(sim.ring[(i + 4) % 8], resource, KIND)
    assert fetched.values() == {b"alice": b"v1"}
    assert fetched.generation(KIND) == 1


def test_single_peer_acknowledges_without_replicas(tmp_path: Path) -> None:
    sim = make_sim(tmp_path)
    build(sim, 1)
    [only] = sim.ring
    op = sim.store(only, 42, KIND, b"k", b"v")
    assert isinstance(op.answer, StoreAns)
    assert op.answer.kind_responses[0].replicas == ()
    assert sim.fetch(only, 42, KIND).values() == {b"k": b"v"}


def test_original_store_at_a_peer_not_responsible_is_refused(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, seed=4)
    build(sim, 5)
    resource = sim.rng.getrandbits(128)
    owner = responsible(sim.ring, resource)
    other = next(n for n in sim.ring if n != owner)
    op = sim.put(sim.ring[0], resource, KIND, b"k", b"v", to=other, max_attempts=1)
    assert sim.wait([op], 10.0)
    assert isinstance(op.answer, ErrorResponse)
    assert op.answer.error_code == ErrorCode.FORBIDDEN
    assert sim.copies(resource, KIND, b"k") == []


def test_read_modify_write_with_generations_through_the_ring(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, seed=5)
    build(sim, 6)
    resource = sim.rng.getrandbits(128)
    a, b = sim.ring[0], sim.ring[3]
    assert sim.store(a, resource, KIND, b"x", b"1").ok
    read = sim.fetch(b, resource, KIND)
    gen = read.generation(KIND)
    assert gen == 1
    # A conditional store with the generation read succeeds and moves it on.
    op = sim.put(b, resource, KIND, b"x", b"2", generation=gen)
    assert sim.wait([op], 10.0) and isinstance(op.answer, StoreAns), op.answer
    assert op.answer.kind_responses[0].generation_counter == 2
    # A writer still holding the old generation loses, and learns the current one.
    stale = sim.put(a, resource, KIND, b"x", b"3", generation=gen, max_attempts=1)
    assert sim.wait([stale], 10.0)
    assert isinstance(stale.answer, ErrorResponse)
    assert stale.answer.error_code == ErrorCode.GENERATION_COUNTER_TOO_LOW
    info = decode_body(MessageCode.STORE_ANS, stale.answer.info)
    assert isinstance(info, StoreAns)
    assert info.kind_responses[0].generation_counter == 2
    assert sim.fetch(a, resource, KIND).values() == {b"x": b"2"}
    assert sorted(v for _, v in sim.copies(resource, KIND, b"x")) == [b"2"] * 3


def _big_gap(sim: Simulation) -> tuple[int, int]:
    """(pred, owner) of the widest range of the ring."""
    ring = sim.ring
    return max(
        ((ring[i - 1], ring[i]) for i in range(len(ring))), key=lambda p: (p[1] - p[0]) % (1 << 128)
    )


def test_join_hands_the_range_over_before_the_joiner_is_routable(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, seed=6)
    build(sim, 6)
    want = fill(sim, 600)
    assert run_until_repaired(sim, want) < 30
    pred, owner = _big_gap(sim)
    joining = id_between(pred, owner, sim.rng)
    moving = [(r, k) for (r, k) in want if in_open_closed(r, pred, joining)]
    assert len(moving) > 20
    sim.add_node(joining, bootstrap=[sim.ring[0]])
    admitter = replicator(sim, owner)
    start = sim.now
    while not admitter._handoffs and sim.now < start + 5:
        sim.run_for(0.001)
    assert admitter._handoffs, "the admitting peer never started a handoff"
    # While the handoff runs: fetches still find the data, stores are deferred (In_Progress).
    probes = []
    writer = next(n for n in sim.ring if n not in (owner, joining))
    r0, k0 = moving[0]
    new_store = sim.put(writer, r0, KIND, k0, b"during-join")
    first_try = sim.now
    while sim.peer(joining).state is not PeerState.JOINED and sim.now < start + 10:
        r, k = moving[len(probes) % len(moving)]
        probes.append((sim.get(writer, r, KIND, (k,)), (r, k)))
        sim.run_for(0.005)
    assert sim.peer(joining).state is PeerState.JOINED
    for _ in range(40):  # and for a while after, as the ring learns of the joiner
        r, k = moving[len(probes) % len(moving)]
        probes.append((sim.get(writer, r, KIND, (k,)), (r, k)))
        sim.run_for(0.005)
    assert sim.wait([p for p, _ in probes], 30.0)
    assert sim.wait([new_store], 30.0) and new_store.ok, new_store.answer
    assert new_store.attempts > 1 and new_store.finished is not None
    assert new_store.finished > first_try
    assert total(sim, "rejected_in_progress") >= 1
    misses = [ident for op, ident in probes if op.values().get(ident[1]) != want[ident]]
    assert ident_ok(misses, (r0, k0)), misses
    want[(r0, k0)] = b"during-join"
    assert run_until_repaired(sim, want) < 60
    assert admitter.counters["handoff_records"] >= len(moving)
    # The joiner is primary for its range and holds every record of it.
    held = {(r.resource, r.key) for r in sim.nodes[joining].backend.scan_range(pred, joining, 0)}  # type: ignore[union-attr]
    assert held >= set(moving)
    # ... and the admitting peer keeps them as the joiner's first replica.
    kept = sim.nodes[owner].backend.scan_range(pred, joining, 0)  # type: ignore[union-attr]
    assert {r.role for r in kept} == {Role.REPLICA}


def ident_ok(misses: list[tuple[int, bytes]], updated: tuple[int, bytes]) -> bool:
    """Only the record rewritten during the join may read differently (its new value)."""
    return all(m == updated for m in misses)


def test_leave_pushes_the_range_to_the_successor_then_leaves(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, seed=7)
    build(sim, 5)
    want = fill(sim, 300)
    run_until_repaired(sim, want)
    leaver = sim.ring[2]
    sim.leave(leaver)
    started = sim.now
    while sim.peer(leaver).state is not PeerState.LEFT and sim.now < started + 15:
        sim.run_for(0.05)
    assert sim.peer(leaver).state is PeerState.LEFT
    assert replicator(sim, leaver).counters["leave_records"] > 0
    sim.crash(leaver)
    run_until_repaired(sim, want)
    assert all_fetchable(sim, want) == []


def test_promotion_after_the_predecessor_crashes(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, seed=8)
    build(sim, 6)
    want = fill(sim, 400)
    run_until_repaired(sim, want)
    i = 2
    victim, heir = sim.ring[i], sim.ring[i + 1]
    pred = sim.ring[i - 1]
    owned = [(r, k) for (r, k) in want if in_open_closed(r, pred, victim)]
    assert owned
    sim.crash(victim)
    took = run_until_repaired(sim, want)
    assert replicator(sim, heir).counters["promoted"] >= len(owned)
    roles = {
        (rec.resource, rec.key): rec.role
        for rec in sim.nodes[heir].backend.scan_range(pred, heir, 0)  # type: ignore[union-attr]
    }
    assert all(roles[o] is Role.PRIMARY for o in owned)
    print(f"promotion and re-replication after a crash: {took:.1f} virtual s")


def test_new_successor_gets_the_primary_records_and_the_old_third_copy_goes(
    tmp_path: Path,
) -> None:
    sim = make_sim(tmp_path, seed=9)
    build(sim, 6)
    want = fill(sim, 400)
    run_until_repaired(sim, want)
    x, nxt = sim.ring[1], sim.ring[2]
    joiner = id_between(x, nxt, sim.rng)
    sim.add_node(joiner, bootstrap=[sim.ring[0]])
    run_until_repaired(sim, want)
    xs = {
        (r.resource, r.key)
        for r in sim.nodes[x].backend.scan_range(0, 0, 0)  # type: ignore[union-attr]
        if r.role is Role.PRIMARY
    }
    got = {(r.resource, r.key) for r in sim.nodes[joiner].backend.scan_range(0, 0, 0)}  # type: ignore[union-attr]
    assert xs and xs <= got
    assert total(sim, "garbage_deleted") > 0  # the copies that moved one peer on were dropped


def test_restarted_peer_brings_no_duplicates_and_no_stale_values(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, seed=10)
    build(sim, 7)
    want = fill(sim, 500)
    run_until_repaired(sim, want)
    victim = sim.ring[3]
    sim.crash(victim)
    run_until_repaired(sim, want)
    # Rewrite some records while it is down: its copies are stale now.
    rewritten = list(want)[:100]
    ops = []
    for resource, key in rewritten:
        ops.append(sim.put(sim.ring[0], resource, KIND, key, b"new"))
        want[(resource, key)] = b"new"
    assert sim.wait(ops, 30.0) and all(op.ok for op in ops)
    sim.add_node(victim, bootstrap=[sim.ring[0]])  # same id, same data directory
    took = run_until_repaired(sim, want)
    assert total(sim, "garbage_deleted") + total(sim, "handoff_records") > 0
    assert all_fetchable(sim, want) == []
    print(f"restart reconciled in {took:.1f} virtual s")


def test_anti_entropy_repairs_a_damaged_replica_without_a_full_copy(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, seed=11)
    build(sim, 5)
    want = fill(sim, 1000)
    run_until_repaired(sim, want)
    sim.run_for(FAST.anti_entropy_interval * 1.5)  # every peer has done a round
    pushed0, pulled0 = total(sim, "sync_records_pushed"), total(sim, "sync_records_pulled")
    owner = sim.ring[1]
    replica = sim.ring[2]
    backend = sim.nodes[replica].backend
    assert backend is not None
    pred = sim.ring[0]
    mine = sorted(r for (r, _) in want if in_open_closed(r, pred, owner))
    assert len(mine) > 50
    # Lose one record on the replica and roll another back to an older value.
    lost, rolled = mine[5], mine[30]
    assert backend.delete_range((lost - 1) % (1 << 128), lost) == 1
    [rec] = [r for r in backend.scan_range((rolled - 1) % (1 << 128), rolled, 0)]
    assert backend.delete_range((rolled - 1) % (1 << 128), rolled) == 1
    from overlay.messages import StoredData, StoreKindData, StoreReq

    old = StoredData(rec.storage_time - 1, rec.lifetime, rec.key, b"OLD")
    backend.apply_store(StoreReq(rolled, 1, (StoreKindData(KIND, 0, (old,)),)), 0, Role.REPLICA)
    assert not fully_replicated(sim, want)
    sim.run_for(FAST.anti_entropy_interval * 1.5)
    assert fully_replicated(sim, want)
    moved = (
        total(sim, "sync_records_pushed") - pushed0 + total(sim, "sync_records_pulled") - pulled0
    )
    # Only the two damaged buckets travel (a few records each), not the 1000 records.
    assert 2 <= moved < 40, moved
    spec = (StoredDataSpecifier(KIND, 0, ()),)
    assert backend.fetch(rolled, spec, 0)[0].values[0].value == want[(rolled, rec.key)]
    fetched = sim.fetch(sim.ring[4], lost, KIND)
    assert isinstance(fetched.answer, FetchAns) and fetched.values()


def test_expired_records_are_swept(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, seed=12)
    build(sim, 4)
    op = sim.put(sim.ring[0], 99, KIND, b"short", b"v", lifetime=2)
    assert sim.wait([op], 10.0) and op.ok
    assert len(sim.copies(99, KIND, b"short")) == 3
    sim.run_for(2.0 + FAST.sweep_interval * 1.5)
    assert sim.holdings() == {}
    assert total(sim, "swept") == 3


def test_a_stable_ring_does_not_rescan_roles_every_anti_entropy_round(tmp_path: Path) -> None:
    """Rewriting roles scans every record a peer holds, on its event loop: it runs after a
    neighbour change, not on every anti-entropy round; the roles stay right meanwhile."""
    sim = make_sim(tmp_path, seed=12)
    build(sim, 6)
    want = fill(sim, 300)
    run_until_repaired(sim, want)
    sim.run_for(2 * FAST.anti_entropy_interval)  # every peer has had its first evaluation
    scans = {n: replicator(sim, n).counters["role_scans"] for n in sim.ring}
    assert all(scans.values()), scans
    rounds = {n: replicator(sim, n).counters["sync_rounds"] for n in sim.ring}
    more = fill(sim, 100, prefix=b"later")  # writes meanwhile set their own roles
    sim.run_for(3 * FAST.anti_entropy_interval)
    want.update(more)
    assert fully_replicated(sim, want)
    for node in sim.ring:
        assert replicator(sim, node).counters["sync_rounds"] > rounds[node]
        assert replicator(sim, node).counters["role_scans"] == scans[node]
        pred = sim.nodes[node].peer.predecessors[0]
        for rec in sim.nodes[node].backend.scan_range(0, 0, 0):  # type: ignore[union-attr]
            mine = in_open_closed(rec.resource, pred, node)
            assert rec.role is (Role.PRIMARY if mine else Role.REPLICA), (node, rec.resource)
    # A change of neighbours (a crash) does rescan, on the peers whose neighbours changed.
    sim.crash(sim.ring[3])
    run_until_repaired(sim, want)
    assert any(replicator(sim, n).counters["role_scans"] > scans[n] for n in sim.ring)


def test_a_replica_emptied_is_refilled_a_few_buckets_at_a_time(tmp_path: Path) -> None:
    """Anti-entropy against a replica that lost its whole copy: every bucket differs, yet the
    primary builds the records of a bucket only while its push queue is short, spread over
    time, instead of all of them in one step on the event loop; the copy comes back whole."""
    config = dataclasses.replace(FAST, max_in_flight=4, anti_entropy_buckets=32)
    sim = make_sim(tmp_path, seed=14, replication=config)
    build(sim, 5)
    want = fill(sim, 1500)
    run_until_repaired(sim, want)
    owner, replica = sim.ring[1], sim.ring[2]
    primary_store = sim.nodes[owner].backend
    assert primary_store is not None
    built_at: list[float] = []
    scan = primary_store.records_in_bucket

    def watched(*args: Any, **kwargs: Any) -> Any:
        built_at.append(sim.now)
        return scan(*args, **kwargs)

    primary_store.records_in_bucket = watched  # type: ignore[method-assign]
    damaged = sim.nodes[replica].backend
    assert damaged is not None
    pred = sim.ring[0]
    assert damaged.delete_range(pred, owner) > 100  # the replica's whole copy of owner's range
    steps0 = replicator(sim, owner).counters["sync_push_steps"]
    sim.run_for(config.anti_entropy_interval * 1.5)
    assert fully_replicated(sim, want)
    steps = replicator(sim, owner).counters["sync_push_steps"] - steps0
    assert steps >= 20, steps  # nearly every one of the 32 buckets differed
    assert len(set(built_at)) >= 5, sorted(set(built_at))  # spread over time, not one step


def test_replica_copies_made_together_travel_in_one_batch(tmp_path: Path) -> None:
    """Issue 9 item 4: copies an owner makes within the copy window go to each successor as
    one StoreBatchReq applied in one transaction, and each original still answers only once
    its own copies are acknowledged."""
    sim = make_sim(tmp_path, seed=17)
    build(sim, 5)
    sim.reset_counters()
    want = fill(sim, 1000)  # 100 stores per 10 ms: many owners make several copies at once
    run_until_repaired(sim, want)
    batches = total(sim, "copy_batches_sent")
    assert batches == total(sim, "copy_batches_received") > 0
    copies = 2 * 1000
    counted = sim.counted()
    batch_messages = counted.get("StoreBatchReq", 0)
    assert batch_messages == batches
    # Every original crosses the ring at most once (none when its origin owns it); one message
    # per copy would add 2,000 more. With batches the copies take under 500 messages.
    store_messages = counted.get("StoreReq", 0) + batch_messages
    assert store_messages < 1000 + copies / 4, counted
    assert total(sim, "replicas_acked") == copies and total(sim, "replicas_missing") == 0
