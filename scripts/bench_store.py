"""Micro-benchmark of the record store: stores/s and p50/p99 latency, sync vs async durability.

Two ways of storing, each in both durability modes:
- serial: one ``RecordStore.apply_store`` after another (one commit per store);
- group: ``--clients`` concurrent asyncio callers through a ``GroupCommitter``.

    .venv/bin/python scripts/bench_store.py [--stores 2000] [--clients 64] [--dir /tmp/x]

Not a test: numbers depend on the disk.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from overlay.ids import resource_id
from overlay.messages import StoredData, StoreKindData, StoreReq
from storage import GroupCommitter, KindLimits, RecordStore, Role

KIND = 0xF0000001
LIMITS = {KIND: KindLimits()}
VALUE = b"x" * 300  # about one msgpack SIP binding


def make_req(i: int, now_ms: int) -> StoreReq:
    sd = StoredData(now_ms, 3600, b"<sip:user%d@10.0.0.1:5060>" % i, VALUE)
    return StoreReq(resource_id(f"user{i}@example.com"), 0, (StoreKindData(KIND, 0, (sd,)),))


def report(label: str, n: int, elapsed: float, latencies: list[float], commits: int) -> None:
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    print(
        f"{label:<22} {n / elapsed:>9.0f} stores/s   p50 {p50:7.3f} ms   p99 {p99:7.3f} ms"
        f"   commits {commits}"
    )


def serial(directory: Path, durability: str, n: int) -> None:
    store = RecordStore(directory, LIMITS, durability=durability)
    now = int(time.time() * 1000)
    reqs = [make_req(i, now) for i in range(n)]
    lat: list[float] = []
    start = time.perf_counter()
    for r in reqs:
        t = time.perf_counter()
        store.apply_store(r, now, Role.PRIMARY)
        lat.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    report(f"serial {durability}", n, elapsed, lat, store.committed_seq)
    store.close()


async def group(directory: Path, durability: str, n: int, clients: int) -> None:
    store = RecordStore(directory, LIMITS, durability=durability)
    committer = GroupCommitter(store)
    now = int(time.time() * 1000)
    reqs = [make_req(i, now) for i in range(n)]
    lat: list[float] = []

    async def client(k: int) -> None:
        for r in reqs[k::clients]:
            t = time.perf_counter()
            await committer.store(r, now, Role.PRIMARY)
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - start
    report(f"group x{clients} {durability}", n, elapsed, lat, committer.commits)
    await committer.close()
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None, help="where to put the LMDB files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        for durability in ("sync", "async"):
            serial(base / f"serial-{durability}", durability, args.stores)
            asyncio.run(group(base / f"group-{durability}", durability, args.stores, args.clients))


if __name__ == "__main__":
    main()
