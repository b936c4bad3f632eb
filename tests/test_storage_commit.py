"""GroupCommitter: concurrent stores share commits, and no acknowledgement precedes its commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overlay.messages import ErrorCode, StoredData, StoredDataSpecifier, StoreKindData, StoreReq
from storage import GroupCommitter, KindLimits, RecordStore, Role, StoreError, StoreOutcome

KIND = 0xF0000001
T0 = 1_700_000_000_000
LIMITS = {KIND: KindLimits(max_value_bytes=256)}


def req(resource: int, *values: StoredData, gen: int = 0) -> StoreReq:
    return StoreReq(resource, 0, (StoreKindData(KIND, gen, values),))


def sd(key: bytes, value: bytes = b"v", t: int = T0) -> StoredData:
    return StoredData(t, 3600, key, value)


@pytest.fixture(params=["sync", "async"])
async def committer(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[GroupCommitter]:
    store = RecordStore(tmp_path / "store", LIMITS, durability=request.param)
    c = GroupCommitter(store)
    try:
        yield c
    finally:
        await c.close()
        store.close()


async def test_concurrent_stores_share_commits_and_ack_after_commit(
    committer: GroupCommitter,
) -> None:
    store = committer.record_store
    n = 200
    seen_committed: list[tuple[StoreOutcome, int]] = []

    async def one(i: int) -> None:
        out = await committer.store(req(i, sd(b"k", b"%d" % i)), T0, Role.PRIMARY)
        # what the store had committed when this caller heard back: a read transaction sees
        # only committed data, so the record must be visible already
        seen_committed.append((out, store.committed_seq))
        (resp,) = store.fetch(i, [StoredDataSpecifier(KIND)], T0)
        assert [v.value for v in resp.values] == [b"%d" % i], "acknowledged before its commit"

    await asyncio.gather(*(one(i) for i in range(n)))
    assert committer.stores == n
    assert 1 <= committer.commits < n
    print(f"{n} stores rode on {committer.commits} commits")
    assert len(seen_committed) == n
    for out, committed in seen_committed:
        assert out.commit_seq >= 1
        assert committed >= out.commit_seq, "acknowledged before its commit returned"
    # acknowledgements come in commit order
    seqs = [out.commit_seq for out, _ in seen_committed]
    assert seqs == sorted(seqs)
    for i in range(n):
        (resp,) = store.fetch(i, [StoredDataSpecifier(KIND)], T0)
        assert [v.value for v in resp.values] == [b"%d" % i]


async def test_a_refused_store_does_not_affect_its_batch(committer: GroupCommitter) -> None:
    store = committer.record_store
    await committer.store(req(1000, sd(b"k")), T0, Role.PRIMARY)  # generation 1 for 1000
    good = [req(i, sd(b"a"), sd(b"b")) for i in range(40)]
    stale = req(1000, sd(b"k", b"lost", t=T0 + 1), sd(b"extra"), gen=7)
    too_big = req(2000, sd(b"a"), sd(b"b"), sd(b"c", b"x" * 257))
    reqs = [*good[:20], stale, too_big, *good[20:]]
    commits_before = committer.commits
    results = await asyncio.gather(
        *(committer.store(r, T0, Role.PRIMARY) for r in reqs), return_exceptions=True
    )
    assert committer.commits - commits_before < len(reqs)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert [e.code for e in errors if isinstance(e, StoreError)] == [
        ErrorCode.GENERATION_COUNTER_TOO_LOW,
        ErrorCode.DATA_TOO_LARGE,
    ]
    assert len(errors) == 2
    oks = [r for r in results if isinstance(r, StoreOutcome)]
    assert len(oks) == 40
    # at least one success shared its commit with a refused store
    assert len({o.commit_seq for o in oks}) < len(oks)
    for i in range(40):
        (resp,) = store.fetch(i, [StoredDataSpecifier(KIND)], T0)
        assert {v.key for v in resp.values} == {b"a", b"b"}
    (resp,) = store.fetch(1000, [StoredDataSpecifier(KIND)], T0)
    assert [(v.key, v.value) for v in resp.values] == [(b"k", b"v")] and resp.generation == 1
    assert store.fetch(2000, [StoredDataSpecifier(KIND)], T0)[0].values == ()


async def test_other_writes_run_on_the_writer_thread(committer: GroupCommitter) -> None:
    store = committer.record_store
    await asyncio.gather(
        *(
            committer.store(req(i, StoredData(T0, 1, b"k", b"v")), T0, Role.PRIMARY)
            for i in range(30)
        )
    )
    swept = await committer.run(store.sweep, T0 + 1000, 100)
    assert swept == 30 and store.count() == 0


async def test_closed_committer_refuses(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "s", LIMITS)
    c = GroupCommitter(store)
    await c.store(req(1, sd(b"k")), T0, Role.PRIMARY)
    await c.close()
    with pytest.raises(RuntimeError):
        await c.store(req(2, sd(b"k")), T0, Role.PRIMARY)
    store.close()
