"""A full record store recovers once its records expire (nemesis bug 4).

Before the fix, a store filled to its maximum map could not even delete: LMDB copies every
page a write touches, so the sweeper's delete raised StorageFull, the sweeper was never
re-armed, and after every record had expired new stores were still refused, also after a
restart. Now new data may fill the map only up to a reserve kept for removals, a sweep that
does not fit retries smaller, and the sweeper always re-arms.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from replication_support import KIND, KINDS, build, id_between, replicator
from test_storage import T0, req, sd

from overlay.messages import ErrorCode
from overlay.replication_backend import ReplicationConfig
from overlay.sim import Simulation
from storage import RecordStore, Role, StorageFull, StoreError

MAX_MAP = 1 << 20
VALUE = b"x" * 900  # about a REGISTER's binding


def fill_until_refused(store: RecordStore, lifetime: int) -> int:
    """Store one-binding resources until the store refuses; returns how many went in."""
    for rid in range(1, 100_000):
        try:
            store.apply_store(req(rid, sd(b"contact", VALUE, lifetime=lifetime)), T0, Role.PRIMARY)
        except (StoreError, StorageFull) as exc:
            assert isinstance(exc, StorageFull) or exc.code is ErrorCode.DATA_TOO_LARGE
            return rid - 1
    raise AssertionError("the store never filled up")


@pytest.mark.parametrize("restart", [False, True])
def test_a_full_store_takes_new_data_again_once_its_records_expired(
    tmp_path: Path, restart: bool
) -> None:
    path = tmp_path / "s"
    store = RecordStore(path, KINDS, initial_map_size=256 * 1024, max_map_size=MAX_MAP)
    try:
        stored = fill_until_refused(store, lifetime=60)
        assert stored > 100
        # Removals are still accepted on a full store: they are how space comes back.
        store.apply_store(req(1, sd(b"contact", b"", t=T0 + 1, exists=False)), T0, Role.PRIMARY)
        if restart:
            store.close()
            store = RecordStore(path, KINDS, initial_map_size=256 * 1024, max_map_size=MAX_MAP)
        later = T0 + 61_000  # every record has expired
        swept = 0
        while (n := store.sweep(later, limit=1000)) > 0:
            swept += n
        assert swept >= stored - 1
        assert store.live_bytes() < store.data_limit // 4
        for rid in range(1, 101):
            store.apply_store(
                req(rid, sd(b"contact", VALUE, t=later, lifetime=60)), later, Role.PRIMARY
            )
    finally:
        store.close()


def test_a_sweep_on_a_map_full_to_the_last_page_makes_progress(tmp_path: Path) -> None:
    """Even with the reserve used up by removals (tombstones written on a full store), the
    sweeper commits, a few records at a time."""
    path = tmp_path / "s"
    store = RecordStore(path, KINDS, initial_map_size=256 * 1024, max_map_size=MAX_MAP)
    try:
        stored = fill_until_refused(store, lifetime=60)
        t = T0 + 1
        tombstones = 0
        try:
            for rid in range(1, stored + 1):
                store.apply_store(
                    req(rid, sd(b"gone%d" % rid, b"", t=t, lifetime=3600, exists=False)),
                    T0,
                    Role.PRIMARY,
                )
                tombstones += 1
        except StorageFull:
            pass  # the map is full to its last page now
        assert tombstones > 0
        later = T0 + 61_000
        swept = 0
        while (n := store.sweep(later, limit=1000)) > 0:
            swept += n
        assert swept >= stored - 1
        store.apply_store(req(1, sd(b"contact", VALUE, t=later)), later, Role.PRIMARY)
    finally:
        store.close()


def test_the_simulated_ring_takes_registrations_again_after_a_full_store(tmp_path: Path) -> None:
    """End to end through the replicator's sweeper: a 3-peer ring whose stores filled up
    answers stores again once the records have expired, without a restart."""

    def small(node_id: int) -> RecordStore:
        return RecordStore(
            tmp_path / f"{node_id:032x}",
            KINDS,
            durability="async",
            initial_map_size=256 * 1024,
            max_map_size=MAX_MAP,
        )

    config = ReplicationConfig(sweep_interval=2.0, anti_entropy_interval=10.0)
    sim = Simulation(5, backend_factory=small, replication=config)
    build(sim, 3)
    origin = sim.ring[0]
    refused = 0
    ok = 0
    for i in range(3000):
        resource = sim.rng.getrandbits(128)
        op = sim.put(origin, resource, KIND, b"c%d" % i, VALUE, lifetime=30, max_attempts=1)
        assert sim.wait([op], 30.0)
        if op.ok:
            ok += 1
        else:
            refused += 1
            if refused >= 20:
                break
    assert refused >= 20, f"the stores never filled ({ok} stores went in)"
    sim.run_for(30 + 3 * config.sweep_interval)  # every record expired and swept
    assert all(replicator(sim, n).counters["swept"] > 0 for n in sim.ring)
    ops = []
    for i in range(100):
        resource = id_between(sim.ring[1], sim.ring[2], sim.rng)
        ops.append(sim.put(origin, resource, KIND, b"after%d" % i, VALUE, lifetime=300))
    assert sim.wait(ops, 60.0)
    assert [op.answer for op in ops if not op.ok] == []
