"""The replicator under the asyncio runtime: 3 in-process peers on 127.0.0.1 with real LMDB
stores; the durability barrier (no StoreAns before its data is flushed; one flush for many
stores)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from test_runtime import CONFIG, LINKS, responsible, wait_for

from overlay.actions import PeerState
from overlay.messages import (
    ErrorCode,
    ErrorResponse,
    FetchAns,
    FetchReq,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreReq,
)
from overlay.replication_backend import ReplicationConfig, Role
from overlay.runtime import OverlayRuntime
from p2preg.ring_client import RingClient
from storage import KindLimits, RecordStore, StoreError, StoreOutcome

T = TypeVar("T")

KIND = 0xF0000001


class WatchedStore(RecordStore):
    """A RecordStore that remembers which commit made each resource durable (for the test's
    check that no answer goes out before the flush covering its write)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, {KIND: KindLimits()}, durability="async")
        self.commit_of: dict[int, int] = {}
        self.flushed_seq = 0
        self.flushes = 0

    def apply_store(self, req: StoreReq, now_ms: int, role: Role) -> StoreOutcome:
        outcome = super().apply_store(req, now_ms, role)
        self.commit_of[req.resource] = outcome.commit_seq
        return outcome

    def apply_batch(
        self, items: Sequence[tuple[StoreReq, int, Role]]
    ) -> list[StoreOutcome | StoreError]:
        results = super().apply_batch(items)
        for (req, _, _), result in zip(items, results, strict=True):
            if isinstance(result, StoreOutcome):
                self.commit_of[req.resource] = result.commit_seq
        return results

    def flush(self) -> None:
        seq = self.committed_seq  # every commit up to here has returned
        super().flush()
        self.flushes += 1
        self.flushed_seq = max(self.flushed_seq, seq)


@pytest.fixture
async def runtimes(tmp_path: Path) -> AsyncIterator[list[tuple[OverlayRuntime, WatchedStore]]]:
    made: list[tuple[OverlayRuntime, WatchedStore]] = []
    yield made
    for rt, store in made:
        await rt.close()
        store.close()


async def start_ring(
    made: list[tuple[OverlayRuntime, WatchedStore]], tmp_path: Path, durability: str
) -> None:
    rng = random.Random(5)
    seed_address = None
    for i in range(3):
        store = WatchedStore(tmp_path / f"n{i}")
        rt = OverlayRuntime(
            node_id=rng.getrandbits(128),
            config=CONFIG,
            host="127.0.0.1",
            port=0,
            rng=random.Random(i),
            link_config=LINKS,
            backend=store,
            durability=durability,
            replication=ReplicationConfig(anti_entropy_interval=5.0),
        )
        made.append((rt, store))
        address = await rt.start([] if seed_address is None else [seed_address])
        seed_address = seed_address or address
        await rt.wait_state(PeerState.JOINED, 10.0)

    def consistent() -> bool:
        return all(
            rt.state is PeerState.JOINED and len(rt.view().successors) == 2 for rt, _ in made
        )

    await wait_for(consistent, 20.0, "3-peer ring")
    await asyncio.sleep(0.5)  # let the replicators settle on their roles


async def ask(rt: OverlayRuntime, body: StoreReq | FetchReq, want: type[T]) -> T:
    """Through the node's ring client, as the node's applications ask."""
    return (await RingClient(rt, deadline=10.0).call(lambda: body, want)).body


def store_req(resource: int, value: bytes) -> StoreReq:
    entry = StoredData(int(time.time() * 1000), 3600, b"k", value)
    return StoreReq(resource, 0, (StoreKindData(KIND, 0, (entry,)),))


async def test_store_answers_wait_for_the_flush_and_share_it(
    runtimes: list[tuple[OverlayRuntime, WatchedStore]], tmp_path: Path
) -> None:
    await start_ring(runtimes, tmp_path, "sync")
    by_id = {rt.node_id: store for rt, store in runtimes}
    ids = list(by_id)
    rng = random.Random(9)
    late: list[str] = []

    async def one(i: int) -> None:
        rt = runtimes[i % 3][0]
        resource = rng.getrandbits(128)
        answer = await ask(rt, store_req(resource, b"v%d" % i), StoreAns)
        [kr] = answer.kind_responses
        owner = responsible(ids, resource)
        assert len(kr.replicas) == 2 and owner not in kr.replicas
        # On arrival of the answer, the write is durable on the primary and both replicas.
        for node in (owner, *kr.replicas):
            store = by_id[node]
            if store.flushed_seq < store.commit_of[resource]:
                late.append(f"{node:x} answered before flushing {resource:x}")

    await asyncio.gather(*(one(i) for i in range(300)))
    assert late == []
    fsyncs = sum(rt.counters["fsyncs"] for rt, _ in runtimes)
    stores = sum(
        rt.counters["replication.stores_original"] + rt.counters["replication.stores_copy"]
        for rt, _ in runtimes
    )
    print(f"{stores} store applications, {fsyncs} flushes")
    assert stores >= 900
    assert 0 < fsyncs < stores / 2  # group commit: many stores per flush
    # Fetch through a peer that is not the owner.
    resource = rng.getrandbits(128)
    origin = next(rt for rt, _ in runtimes if rt.node_id != responsible(ids, resource))
    await ask(origin, store_req(resource, b"x"), StoreAns)
    other = next(rt for rt, _ in runtimes if rt is not origin)
    fetch = FetchReq(resource, (StoredDataSpecifier(KIND, 0, ()),))
    fetched = await ask(other, fetch, FetchAns)
    assert [sd.value for sd in fetched.kind_responses[0].values] == [b"x"]
    primary, replica = runtimes[0][0].replicator.counts(0.0)  # type: ignore[union-attr]
    assert primary + replica > 0


async def test_async_durability_never_flushes(
    runtimes: list[tuple[OverlayRuntime, WatchedStore]], tmp_path: Path
) -> None:
    await start_ring(runtimes, tmp_path, "async")
    rt = runtimes[0][0]
    for i in range(20):
        await ask(rt, store_req(i * 7919 << 100, b"v"), StoreAns)
    assert sum(store.flushes for _, store in runtimes) == 0
    assert sum(r.counters["fsyncs"] for r, _ in runtimes) == 0


async def test_ask_on_the_responsible_node_skips_the_overlay_but_not_the_rules(
    runtimes: list[tuple[OverlayRuntime, WatchedStore]], tmp_path: Path
) -> None:
    """``OverlayRuntime.ask`` serves the owner's own Store/Fetch without an overlay message,
    yet the write is replicated to both successors and answered only after the flush; from
    any other node the same call is routed."""
    await start_ring(runtimes, tmp_path, "sync")
    by_id = {rt.node_id: (rt, store) for rt, store in runtimes}
    ids = list(by_id)
    rng = random.Random(11)
    for i in range(40):
        resource = rng.getrandbits(128)
        owner_rt, owner_store = by_id[responsible(ids, resource)]
        other_rt = next(rt for rt in (r for r, _ in runtimes) if rt is not owner_rt)
        for rt, value in ((owner_rt, b"here%d" % i), (other_rt, b"routed%d" % i)):
            routed_before = owner_rt.counters.get("received.STORE_REQ", 0)
            sent_before = rt.counters.get("sent.STORE_REQ", 0)
            answer = await rt.ask(store_req(resource, value), timeout=5.0)
            assert isinstance(answer, StoreAns), answer
            [kr] = answer.kind_responses
            assert len(kr.replicas) == 2 and owner_rt.node_id not in kr.replicas
            assert owner_store.flushed_seq >= owner_store.commit_of[resource]
            for node in kr.replicas:
                assert by_id[node][1].flushed_seq >= by_id[node][1].commit_of[resource]
            sent = rt.counters.get("sent.STORE_REQ", 0) - sent_before
            if rt is owner_rt:
                # Only the two replica copies left the owner; nothing was routed to it.
                assert sent == 2
                assert owner_rt.counters.get("received.STORE_REQ", 0) == routed_before
            else:
                assert sent >= 1
            fetched = await other_rt.ask(FetchReq(resource, (StoredDataSpecifier(KIND),)), 5.0)
            assert isinstance(fetched, FetchAns)
            assert [sd.value for sd in fetched.kind_responses[0].values] == [value]
            here = await owner_rt.ask(FetchReq(resource, (StoredDataSpecifier(KIND),)), 5.0)
            assert isinstance(here, FetchAns) and here == fetched
    # An original store older than the stored entry is refused here as through the ring.
    resource = rng.getrandbits(128)
    owner_rt, _ = by_id[responsible(ids, resource)]
    assert isinstance(await owner_rt.ask(store_req(resource, b"new"), 5.0), StoreAns)
    old = StoreReq(resource, 0, (StoreKindData(KIND, 0, (StoredData(1, 3600, b"k", b"old"),)),))
    refused = await owner_rt.ask(old, 5.0)
    assert isinstance(refused, ErrorResponse) and refused.error_code == ErrorCode.DATA_TOO_OLD
