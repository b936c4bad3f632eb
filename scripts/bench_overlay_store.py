"""Store/Fetch through a 3-peer in-process OverlayRuntime ring (real TCP on 127.0.0.1, real
LMDB stores), durable vs async; and the simulator's repair time after a crash of a peer
holding ~20,000 records.

    .venv/bin/python scripts/bench_overlay_store.py [--stores 3000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

from overlay.actions import PeerState  # noqa: E402
from overlay.config import ChordConfig  # noqa: E402
from overlay.messages import (  # noqa: E402
    FetchAns,
    FetchReq,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreReq,
)
from overlay.replication_backend import ReplicationConfig  # noqa: E402
from overlay.runtime import OverlayRuntime  # noqa: E402
from overlay.sim import Simulation  # noqa: E402
from p2preg.ring_client import RingClient  # noqa: E402
from storage import KindLimits, RecordStore  # noqa: E402

KIND = 0xF0000001
CONFIG = ChordConfig(overlay_name="bench", ping_interval=0.5, update_interval=2.0)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def ring_bench(durability: str, stores: int, concurrency: int, directory: Path) -> None:
    rng = random.Random(1)
    made: list[tuple[OverlayRuntime, RecordStore]] = []
    seed = None
    for i in range(3):
        store = RecordStore(
            directory / f"{durability}-{i}", {KIND: KindLimits()}, durability="async"
        )
        rt = OverlayRuntime(
            node_id=rng.getrandbits(128),
            config=CONFIG,
            host="127.0.0.1",
            port=0,
            backend=store,
            durability=durability,
            replication=ReplicationConfig(),
        )
        address = await rt.start([] if seed is None else [seed])
        seed = seed or address
        await rt.wait_state(PeerState.JOINED, 10.0)
        made.append((rt, store))
    rings = [RingClient(rt, deadline=10.0) for rt, _ in made]
    while not all(len(rt.view().successors) == 2 for rt, _ in made):
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    resources = [rng.getrandbits(128) for _ in range(stores)]
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def put(i: int) -> None:
        async with sem:
            entry = StoredData(int(time.time() * 1000), 3600, b"k", b"value-%d" % i)
            req = StoreReq(resources[i], 0, (StoreKindData(KIND, 0, (entry,)),))
            t = time.perf_counter()
            await rings[i % 3].call(lambda: req, StoreAns)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(put(i) for i in range(stores)))
    store_s = time.perf_counter() - t0
    fsyncs = sum(rt.counters["fsyncs"] for rt, _ in made)
    print(
        f"{durability:5} store: {stores / store_s:7.0f}/s  p50 {pct(latencies, 0.5):6.1f} ms  "
        f"p99 {pct(latencies, 0.99):6.1f} ms  ({fsyncs} fsyncs for {stores * 3} writes)"
    )
    latencies.clear()

    async def get(i: int) -> None:
        async with sem:
            req = FetchReq(resources[i], (StoredDataSpecifier(KIND, 0, ()),))
            t = time.perf_counter()
            answer = (await rings[(i + 1) % 3].call(lambda: req, FetchAns)).body
            latencies.append(time.perf_counter() - t)
            assert answer.kind_responses[0].values

    t0 = time.perf_counter()
    await asyncio.gather(*(get(i) for i in range(stores)))
    fetch_s = time.perf_counter() - t0
    print(
        f"{durability:5} fetch: {stores / fetch_s:7.0f}/s  p50 {pct(latencies, 0.5):6.1f} ms  "
        f"p99 {pct(latencies, 0.99):6.1f} ms"
    )
    for rt, store in made:
        await rt.close()
        store.close()


def sim_repair(records: int, directory: Path) -> None:
    """5 peers hold 3 copies of ``records`` records: each holds ~3/5 of them."""

    def factory(node_id: int) -> RecordStore:
        return RecordStore(
            directory / f"sim-{node_id:032x}", {KIND: KindLimits()}, durability="async"
        )

    sim = Simulation(3, backend_factory=factory, replication=ReplicationConfig())
    sim.add_node(bootstrap=())
    for i in range(1, 5):
        sim.run_until(i * 0.1)
        sim.add_node()
    sim.run_until_converged(60.0, full=True)
    ops = []
    for i in range(records):
        ops.append(sim.put(sim.ring[i % 5], sim.rng.getrandbits(128), KIND, b"k", b"v%d" % i))
        if i % 200 == 199:
            sim.run_for(0.01)
    assert sim.wait(ops, 300.0) and all(op.ok for op in ops)
    victim = sim.ring[2]
    backend = sim.nodes[victim].backend
    assert backend is not None
    held = backend.count()
    wall = time.perf_counter()
    sim.crash(victim)
    start = sim.now
    while True:
        sim.run_for(0.5)
        counts = [len(v) for v in sim.holdings().values()]
        if sim.ring_is_consistent(full=True) and not sim.replication_busy() and set(counts) == {3}:
            break
    print(
        f"sim: crash of a peer holding {held} records -> 3 copies of all {records} again "
        f"after {sim.now - start:.1f} virtual s (wall {time.perf_counter() - wall:.1f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sim-records", type=int, default=33_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for durability in ("sync", "async"):
            asyncio.run(ring_bench(durability, args.stores, args.concurrency, Path(tmp)))
        if args.sim_records:
            sim_repair(args.sim_records, Path(tmp))


if __name__ == "__main__":
    main()
