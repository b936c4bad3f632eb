"""RecordStore on real LMDB files: the RFC 6940 store rules, expiry, ring ranges, restart."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from overlay.ids import MASK
from overlay.messages import (
    EMPTY_SIGNATURE,
    ErrorCode,
    Signature,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreReq,
)
from storage import KindLimits, RecordStore, Role, StorageFull, StoreError

KIND = 0xF0000001
OTHER = 0xF0000002
LIMITS = {KIND: KindLimits(max_value_bytes=1024, max_entries=5), OTHER: KindLimits()}
T0 = 1_700_000_000_000
HOUR = 3600


def sd(
    key: bytes, value: bytes = b"v", t: int = T0, lifetime: int = HOUR, exists: bool = True
) -> StoredData:
    return StoredData(storage_time=t, lifetime=lifetime, key=key, value=value, exists=exists)


def req(
    resource: int, *values: StoredData, gen: int = 0, kind: int = KIND, replica: int = 0
) -> StoreReq:
    return StoreReq(resource, replica, (StoreKindData(kind, gen, values),))


def live(store: RecordStore, resource: int, now: int = T0, kind: int = KIND) -> dict[bytes, bytes]:
    (resp,) = store.fetch(resource, [StoredDataSpecifier(kind)], now)
    return {v.key: v.value for v in resp.values}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordStore]:
    s = RecordStore(tmp_path / "store", LIMITS)
    yield s
    s.close()


def refused(store: RecordStore, r: StoreReq, code: ErrorCode, now: int = T0) -> StoreError:
    with pytest.raises(StoreError) as info:
        store.apply_store(r, now, Role.PRIMARY)
    assert info.value.code is code, info.value
    return info.value


# --- basic store / fetch ------------------------------------------------------------------


def test_store_then_fetch_by_key_and_all(store: RecordStore) -> None:
    sig = Signature(1, 2, 1, b"\x01\x02", b"sig")
    out = store.apply_store(
        req(7, sd(b"a", b"1"), StoredData(T0, HOUR, b"b", b"2", True, sig)), T0, Role.PRIMARY
    )
    assert out.generations == ((KIND, 1),) and out.changed == 2
    assert out.store_ans((5, 6)).kind_responses[0].replicas == (5, 6)
    assert live(store, 7) == {b"a": b"1", b"b": b"2"}
    (resp,) = store.fetch(7, [StoredDataSpecifier(KIND, keys=(b"b", b"missing"))], T0)
    assert resp.generation == 1
    assert resp.values == (StoredData(T0, HOUR, b"b", b"2", True, sig),)
    assert store.fetch(8, [StoredDataSpecifier(KIND)], T0)[0].values == ()
    (rec,) = [r for r in store.records_for(7) if r.key == b"a"]
    assert rec.signature == EMPTY_SIGNATURE and rec.role is Role.PRIMARY
    assert rec.expiry_ms == T0 + HOUR * 1000


def test_unknown_kind_refuses_whole_store_and_fetch(store: RecordStore) -> None:
    r = StoreReq(1, 0, (StoreKindData(KIND, 0, (sd(b"a"),)), StoreKindData(0x1234, 0, (sd(b"x"),))))
    err = refused(store, r, ErrorCode.UNKNOWN_KIND)
    assert err.unknown_kinds == (0x1234,)
    assert live(store, 1) == {}
    with pytest.raises(StoreError) as info:
        store.fetch(1, [StoredDataSpecifier(0x1234)], T0)
    assert info.value.code is ErrorCode.UNKNOWN_KIND


# --- atomicity ------------------------------------------------------------------------------


def test_third_entry_too_old_rolls_back_whole_store(store: RecordStore) -> None:
    store.apply_store(req(1, sd(b"c", b"new", t=T0 + 10)), T0, Role.PRIMARY)
    bad = req(1, sd(b"a"), sd(b"b"), sd(b"c", b"old", t=T0))
    refused(store, bad, ErrorCode.DATA_TOO_OLD)
    assert live(store, 1) == {b"c": b"new"}
    assert store.generation(1, KIND) == 1
    assert store.count() == 1


def test_third_entry_too_large_rolls_back_other_kinds_too(store: RecordStore) -> None:
    store.apply_store(req(1, sd(b"x"), kind=OTHER), T0, Role.PRIMARY)
    bad = StoreReq(
        1,
        0,
        (
            StoreKindData(OTHER, 0, (sd(b"y"),)),
            StoreKindData(KIND, 0, (sd(b"a"), sd(b"b"), sd(b"c", b"z" * 1025))),
        ),
    )
    err = refused(store, bad, ErrorCode.DATA_TOO_LARGE)
    assert "1025" in err.message
    assert live(store, 1, kind=OTHER) == {b"x": b"v"}
    assert live(store, 1) == {}
    assert (store.generation(1, OTHER), store.generation(1, KIND)) == (1, 0)


def test_too_many_entries_is_data_too_large(store: RecordStore) -> None:
    store.apply_store(req(1, *(sd(b"%d" % i) for i in range(5))), T0, Role.PRIMARY)
    refused(store, req(1, sd(b"5")), ErrorCode.DATA_TOO_LARGE)
    assert len(live(store, 1)) == 5
    # removing one makes room; expired entries do not count either
    store.apply_store(req(1, sd(b"0", t=T0 + 1, exists=False), sd(b"5")), T0, Role.PRIMARY)
    store.apply_store(req(2, *(sd(b"%d" % i, lifetime=1) for i in range(5))), T0, Role.PRIMARY)
    store.apply_store(req(2, sd(b"late", t=T0 + 2000)), T0 + 2000, Role.PRIMARY)
    assert live(store, 2, now=T0 + 2000) == {b"late": b"v"}


# --- generations ----------------------------------------------------------------------------


def test_generation_counter_checks_and_increments(store: RecordStore) -> None:
    assert store.apply_store(req(1, sd(b"a"), sd(b"b")), T0, Role.PRIMARY).generations == (
        (KIND, 1),
    )
    out = store.apply_store(req(1, sd(b"a", b"2", t=T0 + 1), gen=1), T0, Role.PRIMARY)
    assert out.generations == ((KIND, 2),)
    err = refused(
        store, req(1, sd(b"a", b"3", t=T0 + 2), gen=1), ErrorCode.GENERATION_COUNTER_TOO_LOW
    )
    assert err.generations == ((KIND, 2),)
    assert err.store_ans().kind_responses[0].generation_counter == 2
    assert live(store, 1)[b"a"] == b"2"
    # generation 0 means "no check"
    out = store.apply_store(req(1, sd(b"a", b"4", t=T0 + 3)), T0, Role.PRIMARY)
    assert out.generations == ((KIND, 3),)
    assert store.fetch(1, [StoredDataSpecifier(KIND)], T0)[0].generation == 3


def test_replica_store_skips_generation_check_and_adopts_higher(store: RecordStore) -> None:
    store.apply_store(req(1, sd(b"a")), T0, Role.PRIMARY)
    out = store.apply_store(req(1, sd(b"a", b"x", t=T0 + 1), gen=40, replica=1), T0, Role.REPLICA)
    assert out.generations == ((KIND, 40),)
    out = store.apply_store(req(1, sd(b"a", b"y", t=T0 + 2), gen=3, replica=2), T0, Role.REPLICA)
    assert out.generations == ((KIND, 41),)


# --- storage time ---------------------------------------------------------------------------


def test_data_too_old_and_identical_retransmission(store: RecordStore) -> None:
    store.apply_store(req(1, sd(b"a", b"1", t=T0 + 5)), T0, Role.PRIMARY)
    refused(store, req(1, sd(b"a", b"0", t=T0 + 4)), ErrorCode.DATA_TOO_OLD)
    refused(store, req(1, sd(b"a", b"other", t=T0 + 5)), ErrorCode.DATA_TOO_OLD)
    again = store.apply_store(req(1, sd(b"a", b"1", t=T0 + 5)), T0, Role.PRIMARY)
    assert again.changed == 0 and again.generations == ((KIND, 1),)
    assert live(store, 1) == {b"a": b"1"}


def test_replica_keeps_newer_silently_and_converges_on_ties(tmp_path: Path) -> None:
    one = RecordStore(tmp_path / "one", LIMITS)
    two = RecordStore(tmp_path / "two", LIMITS)
    try:
        one.apply_store(req(1, sd(b"a", b"new", t=T0 + 5), replica=1), T0, Role.REPLICA)
        out = one.apply_store(req(1, sd(b"a", b"old", t=T0 + 1), replica=1), T0, Role.REPLICA)
        assert out.changed == 0
        assert live(one, 1) == {b"a": b"new"}
        # same storage_time, different values, applied in opposite orders
        x, y = sd(b"k", b"x", t=T0 + 9), sd(b"k", b"y", t=T0 + 9)
        for s, first, second in ((one, x, y), (two, y, x)):
            s.apply_store(req(2, first, replica=1), T0, Role.REPLICA)
            s.apply_store(req(2, second, replica=1), T0, Role.REPLICA)
        assert live(one, 2) == live(two, 2) == {b"k": b"y"}
    finally:
        one.close()
        two.close()


# --- tombstones -----------------------------------------------------------------------------


def test_tombstone_hides_key_and_blocks_resurrection(store: RecordStore) -> None:
    store.apply_store(req(1, sd(b"a", b"1", t=T0), sd(b"b")), T0, Role.PRIMARY)
    store.apply_store(req(1, sd(b"a", b"", t=T0 + 10, exists=False)), T0, Role.PRIMARY)
    assert live(store, 1) == {b"b": b"v"}
    assert store.fetch(1, [StoredDataSpecifier(KIND, keys=(b"a",))], T0)[0].values == ()
    refused(store, req(1, sd(b"a", b"1", t=T0 + 5)), ErrorCode.DATA_TOO_OLD)
    late_copy = store.apply_store(req(1, sd(b"a", b"1", t=T0 + 5), replica=1), T0, Role.REPLICA)
    assert late_copy.changed == 0
    assert live(store, 1) == {b"b": b"v"}
    (tomb,) = [r for r in store.scan_range(0, 0, T0) if r.key == b"a"]
    assert not tomb.exists
    assert store.count() == 2 and store.count(now_ms=T0) == 1
    assert [r.key for r in store.scan_range(0, 0, T0, include_tombstones=False)] == [b"b"]
    # a newer value brings the key back
    store.apply_store(req(1, sd(b"a", b"2", t=T0 + 11)), T0, Role.PRIMARY)
    assert live(store, 1) == {b"a": b"2", b"b": b"v"}


# --- expiry ---------------------------------------------------------------------------------


def expiry_entries(directory: Path) -> int:
    env = lmdb.open(str(directory), max_dbs=3, readonly=True)
    try:
        db = env.open_db(b"expiry", create=False)
        with env.begin() as txn:
            return int(txn.stat(db)["entries"])
    finally:
        env.close()


def test_expired_value_hidden_before_sweep_then_swept(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = RecordStore(path, LIMITS)
    store.apply_store(req(1, sd(b"short", lifetime=10), sd(b"long")), T0, Role.PRIMARY)
    assert live(store, 1, now=T0 + 9_999) == {b"short": b"v", b"long": b"v"}
    assert live(store, 1, now=T0 + 10_000) == {b"long": b"v"}
    assert [r.key for r in store.scan_range(0, 0, T0 + 10_000)] == [b"long"]
    assert store.count() == 2  # not swept yet
    assert store.sweep(T0 + 9_999) == 0
    assert store.sweep(T0 + 10_000) == 1
    assert store.count() == 1 and store.sweep(T0 + 10_000) == 0
    store.close()
    assert expiry_entries(path) == 1


def test_sweep_is_bounded_and_drops_empty_generations(store: RecordStore) -> None:
    for r in range(25):
        store.apply_store(req(r, sd(b"k", lifetime=1)), T0, Role.PRIMARY)
    store.apply_store(req(99, sd(b"k")), T0, Role.PRIMARY)
    assert [store.sweep(T0 + 1000, limit=10) for _ in range(4)] == [10, 10, 5, 0]
    assert store.count() == 1
    assert store.generation(3, KIND) == 0 and store.generation(99, KIND) == 1


def test_overwrite_moves_the_expiry_index(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = RecordStore(path, LIMITS)
    store.apply_store(req(1, sd(b"a", lifetime=10)), T0, Role.PRIMARY)
    store.apply_store(req(1, sd(b"a", b"2", t=T0 + 1, lifetime=HOUR)), T0, Role.PRIMARY)
    assert store.sweep(T0 + 60_000) == 0
    assert live(store, 1, now=T0 + 60_000) == {b"a": b"2"}
    store.close()
    assert expiry_entries(path) == 1


# --- ring ranges, roles, deletion -----------------------------------------------------------

IDS = [10, 20, 30, MASK - 5, MASK]


def fill(store: RecordStore, role: Role = Role.PRIMARY) -> None:
    for rid in IDS:
        store.apply_store(req(rid, sd(b"k", b"%d" % rid)), T0, role)


def scanned(store: RecordStore, lo: int, hi: int, role: Role | None = None) -> list[int]:
    return [r.resource for r in store.scan_range(lo, hi, T0, role)]


def test_scan_range_plain_wrapping_and_whole_ring(store: RecordStore) -> None:
    fill(store)
    assert scanned(store, 10, 30) == [20, 30]
    assert scanned(store, 9, 10) == [10]
    assert scanned(store, 30, 10) == [MASK - 5, MASK, 10]
    assert scanned(store, MASK, 20) == [10, 20]
    assert scanned(store, 25, MASK) == [30, MASK - 5, MASK]
    assert scanned(store, 20, 20) == [30, MASK - 5, MASK, 10, 20]
    assert scanned(store, MASK, MASK) == IDS
    assert scanned(store, 31, MASK - 6) == []
    assert store.count_resources() == 5
    assert [r.resource for r in store.records_for(MASK)] == [MASK]


def test_scan_spans_many_chunks(store: RecordStore) -> None:
    store.apply_store(req(5, *(sd(b"%04d" % i) for i in range(5)), kind=OTHER), T0, Role.PRIMARY)
    for rid in (6, 7):
        many = tuple(sd(b"%05d" % i) for i in range(650))
        store.apply_store(StoreReq(rid, 0, (StoreKindData(OTHER, 0, many),)), T0, Role.PRIMARY)
    keys = [r.store_key for r in store.scan_range(0, 0, T0)]
    assert len(keys) == 1305 and keys == sorted(set(keys))


def test_roles_and_promotion(store: RecordStore) -> None:
    fill(store, Role.REPLICA)
    assert store.count(Role.PRIMARY) == 0 and store.count(Role.REPLICA) == 5
    assert store.set_role_range(30, 10, Role.PRIMARY) == 3
    assert scanned(store, 0, 0, Role.PRIMARY) == [10, MASK - 5, MASK]
    assert store.set_role_range(30, 10, Role.PRIMARY) == 0
    rec = store.records_for(20)[0]
    assert store.set_role_keys([rec.store_key, b"\x00" * 25], Role.PRIMARY) == 1
    assert store.count(Role.REPLICA) == 1
    assert store.set_role_range(0, 0, Role.REPLICA) == 4
    assert store.count(Role.REPLICA) == 5


def test_delete_range_removes_records_index_and_generations(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = RecordStore(path, LIMITS)
    fill(store)
    store.set_role_keys([store.records_for(20)[0].store_key], Role.REPLICA)
    assert store.delete_range(10, 30, role=Role.REPLICA) == 1
    assert store.generation(20, KIND) == 1  # a role-filtered delete keeps counters
    assert store.delete_range(30, 10) == 3
    assert scanned(store, 0, 0) == [30]
    assert store.generation(MASK, KIND) == 0 and store.generation(30, KIND) == 1
    store.close()
    assert expiry_entries(path) == 1


# --- digests --------------------------------------------------------------------------------


def test_digests_agree_on_equal_contents_and_locate_a_difference(tmp_path: Path) -> None:
    a = RecordStore(tmp_path / "a", LIMITS)
    b = RecordStore(tmp_path / "b", LIMITS)
    try:
        spread = [i * (MASK // 40) for i in range(40)]
        for rid in spread:
            a.apply_store(req(rid, sd(b"k", b"%d" % rid)), T0, Role.PRIMARY)
        # b gets the same data as a replica, through the handoff helper
        for r in a.store_reqs(0, 0, T0, replica_number=1):
            b.apply_store(r, T0, Role.REPLICA)
        lo, hi = spread[5], spread[30]
        assert a.digest(lo, hi, 8, T0) == b.digest(lo, hi, 8, T0)
        assert a.digest(0, 0, 16, T0) == b.digest(0, 0, 16, T0)
        assert b.generation(spread[7], KIND) == a.generation(spread[7], KIND)

        b.apply_store(req(spread[17], sd(b"k", b"new", t=T0 + 1)), T0, Role.PRIMARY)
        da, db = a.digest(lo, hi, 8, T0), b.digest(lo, hi, 8, T0)
        differing = [i for i in range(8) if da[i] != db[i]]
        assert len(differing) == 1
        (i,) = differing
        recs = b.records_in_bucket(lo, hi, 8, i, T0)
        assert spread[17] in [r.resource for r in recs]
        assert all(r.resource not in (lo,) for r in recs)
        # a wrapped range and an empty bucket of a tiny range
        assert a.digest(spread[30], spread[5], 4, T0) == b.digest(spread[30], spread[5], 4, T0)
        assert a.records_in_bucket(0, 2, 4, 0, T0) == []
        # an expired record counts until the sweeper removes it (the sums are kept as the
        # store writes, not recomputed with a clock)
        before = a.digest(0, 0, 8, T0)
        a.apply_store(req(spread[9] + 1, sd(b"gone", lifetime=1)), T0, Role.PRIMARY)
        assert a.digest(0, 0, 8, T0) != before
        assert a.sweep(T0 + 1000) == 1
        assert a.digest(0, 0, 8, T0 + 1000) == before
    finally:
        a.close()
        b.close()


def test_digest_sums_kept_as_the_store_writes_equal_a_recount(tmp_path: Path) -> None:
    """The running sums behind digest() follow every kind of write (new, newer, older and
    equal copies, tombstones, a refused store inside a batch, range deletes, sweeps) and a
    reopened store rebuilds the same ones; a digest reads only the records at the ends of
    its range, however many the range holds."""
    rng = random.Random(3)
    path = tmp_path / "s"
    store = RecordStore(path, LIMITS, durability="async")
    try:
        rids = [rng.getrandbits(128) for _ in range(3000)]
        for i, rid in enumerate(rids):
            store.apply_store(req(rid, sd(b"k", b"v%d" % i, lifetime=60 + i % 7)), T0, Role.PRIMARY)
        for rid in rids[:500]:  # newer values, tombstones, stale and repeated copies
            store.apply_store(req(rid, sd(b"k", b"w", t=T0 + 5), replica=1), T0, Role.REPLICA)
            store.apply_store(req(rid, sd(b"k", b"old", t=T0 - 5), replica=1), T0, Role.REPLICA)
        for rid in rids[500:700]:
            store.apply_store(req(rid, sd(b"k", b"", t=T0 + 9, exists=False)), T0, Role.PRIMARY)
        batch = [
            (req(rids[800], sd(b"k2", b"x", t=T0 + 1)), T0, Role.PRIMARY),
            (req(rids[801], sd(b"k", b"y" * 2000)), T0, Role.PRIMARY),  # too large: refused
            (req(rids[802], sd(b"k3", b"z", t=T0 + 1)), T0, Role.PRIMARY),
        ]
        results = store.apply_batch(batch)
        assert isinstance(results[1], StoreError)
        store.delete_range(rids[900], rids[950])
        store.sweep(T0 + 62_000)  # the records of lifetime 60 and 61 s
        kept = list(store._sums)
        store.close()
        store = RecordStore(path, LIMITS, durability="async")
        assert store._sums == kept
        lo, hi = rids[10], rids[20]
        store.digest_scanned = 0
        assert store.digest(lo, hi, 256, T0) == store.digest(lo, hi, 256, T0)
        held = sum(1 for _ in store.scan_range(lo, hi, 0))
        assert store.digest_scanned < max(10, held // 100), (store.digest_scanned, held)
    finally:
        store.close()


# --- restart, map size, durability ---------------------------------------------------------


def test_restart_gives_back_records_generations_and_roles(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = RecordStore(path, LIMITS)
    fill(store)
    store.apply_store(req(10, sd(b"k", b"again", t=T0 + 1), gen=1), T0, Role.PRIMARY)
    store.set_role_keys([store.records_for(20)[0].store_key], Role.REPLICA)
    before = list(store.scan_range(0, 0, T0))
    store.close()
    store = RecordStore(path, LIMITS)
    try:
        assert list(store.scan_range(0, 0, T0)) == before
        assert store.generation(10, KIND) == 2
        assert live(store, 10) == {b"k": b"again"}
        assert store.count(Role.REPLICA) == 1
    finally:
        store.close()


def big_req(rid: int, n: int = 8) -> StoreReq:
    return StoreReq(
        rid, 0, (StoreKindData(OTHER, 0, tuple(sd(b"%d" % i, b"x" * 1000) for i in range(n))),)
    )


def test_map_grows_from_a_tiny_start(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "s", LIMITS, initial_map_size=64 * 1024)
    try:
        start = store.map_size
        for rid in range(100):
            store.apply_store(big_req(rid), T0, Role.PRIMARY)
        assert store.map_size > start
        assert store.count() == 800 and store.count_resources() == 100
    finally:
        store.close()


def test_readers_on_another_thread_survive_map_growth(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "s", LIMITS, initial_map_size=64 * 1024)
    done = threading.Event()
    failures: list[BaseException] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        try:
            while not done.is_set():
                for rec in store.scan_range(0, 0, T0):
                    assert rec.value == b"x" * 1000
                live(store, 0, kind=OTHER)
                reads += 1
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        start = store.map_size
        for rid in range(150):
            store.apply_store(big_req(rid), T0, Role.PRIMARY)
        grown = store.map_size
    finally:
        done.set()
        thread.join(timeout=30)
        store.close()
    assert not failures, failures[0]
    assert reads > 0 and not thread.is_alive()
    assert grown >= 8 * start


def test_hard_map_limit_refuses_new_data_and_keeps_what_was_stored(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = RecordStore(path, LIMITS, initial_map_size=64 * 1024, max_map_size=256 * 1024)
    try:
        stored = 0
        with pytest.raises((StorageFull, StoreError)) as info:
            for rid in range(1000):
                store.apply_store(big_req(rid), T0, Role.PRIMARY)
                stored += 1
        assert str(256 * 1024) in str(info.value)
        assert isinstance(info.value, StorageFull) or info.value.code is ErrorCode.DATA_TOO_LARGE
        assert 0 < stored < 1000
        assert store.count() == stored * 8  # the refused store left nothing behind
        assert len(live(store, stored - 1, kind=OTHER)) == 8
    finally:
        store.close()


def test_async_durability_stores_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = RecordStore(path, LIMITS, durability="async")
    assert store.durability == "async"
    fill(store)
    store.flush()
    store.close()
    store = RecordStore(path, LIMITS, durability="async")
    try:
        assert sorted(scanned(store, 0, 0)) == sorted(IDS)
    finally:
        store.close()
