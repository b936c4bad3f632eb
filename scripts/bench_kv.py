#!/usr/bin/env python3
"""Store/fetch figures of a ring of real node processes on this machine (issue 3, acceptance 5).

1. Latency and throughput, sync vs async durability: a 3-node ring per mode; DEBUG-KV stores
   and fetches through the nodes' admin APIs (aiohttp, spread over the 3 nodes). "serial" is one
   request at a time (latency); "concurrent" keeps --in-flight requests going (throughput). A
   store is acknowledged after the responsible peer's commit and its replicas' answers; a fetch
   is answered by the responsible peer. Both include the admin HTTP hop and, for 2 in 3 keys,
   one overlay hop to the responsible peer.
2. Repair after a crash: a 4-node ring (sync) gets enough records that a node holds about
   --repair-records of them; the node holding the most is killed with SIGKILL; we time until
   the 3 survivors have closed the ring and until every record is back at 3 copies.

    .venv/bin/python scripts/bench_kv.py [--ops 2000] [--in-flight 64] [--repair-records 20000]

Not a test: the numbers depend on the machine and its disk. Timers are the tests' short ones
(ping 0.5 s, dead after 3 missed pings), which bound the failure detection part of a repair.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from ring import READY_TIMEOUT, Peer, stop_all, wait_converged

FAST = [
    "--ping-interval", "0.5", "--missed-pings", "3", "--update-interval", "2",
    "--finger-interval", "0.5", "--leave-timeout", "1.5", "--anti-entropy-interval", "5",
    "--log-level", "warning",
]  # fmt: skip
CONVERGE = 60.0


def start_ring(root: Path, n: int, extra: list[str]) -> list[Peer]:
    peers = [Peer(i, root) for i in range(n)]
    peers[0].start("127.0.0.1", None, extra)
    peers[0].wait_ready(time.monotonic() + READY_TIMEOUT)
    for p in peers[1:]:
        p.start("127.0.0.1", peers[0].info["overlay"], extra)
    for p in peers[1:]:
        p.wait_ready(time.monotonic() + READY_TIMEOUT)
    nodes = wait_converged(peers, time.monotonic() + CONVERGE)
    if len(nodes) != n:
        stop_all(peers)
        raise SystemExit(f"the ring of {n} did not converge in {CONVERGE:.0f} s")
    return peers


def kv_url(admin: str, name: str) -> str:
    return f"http://{admin}/v1/kv/{urllib.parse.quote(name, safe='')}"


async def run_ops(
    session: aiohttp.ClientSession,
    admins: Sequence[str],
    method: str,
    names: Sequence[str],
    in_flight: int,
) -> tuple[float, list[float], int]:
    """(elapsed s, per-request latencies s, failures)."""
    latencies: list[float] = []
    failures = 0
    queue = list(enumerate(names))
    queue.reverse()

    async def worker() -> None:
        nonlocal failures
        while queue:
            i, name = queue.pop()
            url = kv_url(admins[i % len(admins)], name)
            t0 = time.perf_counter()
            try:
                data = f"value-{i}-".encode() + b"x" * 200 if method == "PUT" else None
                async with session.request(method, url, data=data) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            failures += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - t0, latencies, failures


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000


async def latency_table(admins: list[str], mode: str, ops: int, in_flight: int) -> list[str]:
    rows = []
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await run_ops(session, admins, "PUT", [f"warm-{i}" for i in range(100)], 8)
        for label, width in (("serial", 1), ("concurrent", in_flight)):
            count = ops if width > 1 else max(200, ops // 5)
            names = [f"{mode}-{label}-{i}" for i in range(count)]
            for method in ("PUT", "GET"):
                elapsed, lat, failed = await run_ops(session, admins, method, names, width)
                op = "store" if method == "PUT" else "fetch"
                rows.append(
                    f"{mode:<6} {op:<6} {label:<10} {width:>4} {count:>6} "
                    f"{count / elapsed:>9.0f} {statistics.median(lat) * 1000:>9.2f} "
                    f"{pct(lat, 0.99):>9.2f} {failed:>6}"
                )
    return rows


def node_counts(admin: str) -> tuple[int, int]:
    from p2preg.cli import admin_call

    status, body = admin_call(admin, "GET", "/v1/node", 30.0)
    if status != 200:
        return -1, -1
    return int(body["primary_records"]), int(body["replica_records"])


def copies_complete(admins: list[str], n_records: int) -> tuple[bool, str]:
    from p2preg.cli import admin_call

    held: dict[tuple[str, int, str], int] = {}
    for admin in admins:
        status, body = admin_call(admin, "GET", "/v1/records/all", 120.0)
        if status != 200:
            return False, f"{admin}: HTTP {status}"
        for rid, kind, key, *_ in body["records"]:
            held[(rid, kind, key)] = held.get((rid, kind, key), 0) + 1
    short = sum(1 for c in held.values() if c < 3)
    return len(held) >= n_records and short == 0, f"{len(held)} records, {short} below 3"


def ring_ok(admin: str, ids: set[str]) -> bool:
    from p2preg.cli import admin_call

    status, body = admin_call(admin, "GET", "/v1/ring", 30.0)
    if status != 200 or not body["complete"]:
        return False
    nodes = body["nodes"]
    return all(n["reachable"] for n in nodes) and {n["node_id"] for n in nodes} == ids


async def fill(admins: list[str], n: int, in_flight: int) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        names = [f"repair-{i}" for i in range(n)]
        elapsed, _, failed = await run_ops(session, admins, "PUT", names, in_flight)
    print(f"  stored {n} records in {elapsed:.1f} s ({failed} failed)", flush=True)
    if failed:
        raise SystemExit("stores failed while filling the ring")


def repair(root: Path, records: int, in_flight: int) -> list[str]:
    peers = start_ring(root / "repair", 4, [*FAST, "--durability", "sync"])
    try:
        admins = [p.info["admin"] for p in peers]
        total = math.ceil(records * 4 / 3 * 1.1)  # each node holds ~3/4 of them, unevenly
        asyncio.run(fill(admins, total, in_flight))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = [node_counts(a) for a in admins]
            if sum(p + r for p, r in counts) == 3 * total:
                break
            time.sleep(0.5)
        held = [p + r for p, r in counts]
        victim = max(range(4), key=lambda i: held[i])
        survivors = [a for i, a in enumerate(admins) if i != victim]
        proc = peers[victim].proc
        assert proc is not None
        t0 = time.monotonic()
        proc.kill()
        proc.wait()
        rest = [p for i, p in enumerate(peers) if i != victim]
        ring_closed = None
        repaired = None
        deadline = t0 + 600
        while time.monotonic() < deadline and repaired is None:
            if ring_closed is None and ring_ok(survivors[0], {p.info["node_id"] for p in rest}):
                ring_closed = time.monotonic() - t0
            counts = [node_counts(a) for a in survivors]
            if sum(p + r for p, r in counts) >= 3 * total:
                ok, _ = copies_complete(survivors, total)
                if ok:
                    repaired = time.monotonic() - t0
            if repaired is None:
                time.sleep(0.25)
        _, detail = copies_complete(survivors, total)
        return [
            f"records in the ring            {total}",
            f"held by the killed node        {held[victim]} (of {held})",
            f"ring closed again after        {_s(ring_closed)}",
            f"all records at 3 copies after  {_s(repaired)}  ({detail})",
        ]
    finally:
        stop_all(peers)


def _s(value: float | None) -> str:
    return "not within the deadline" if value is None else f"{value:.1f} s"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=2000, help="concurrent ops per row")
    parser.add_argument("--in-flight", type=int, default=64, help="concurrent requests")
    parser.add_argument("--repair-records", type=int, default=20000)
    parser.add_argument("--skip-repair", action="store_true")
    parser.add_argument("--dir", type=Path, help="data root (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kv-") as tmp:
        root = args.dir or Path(tmp)
        head = (
            f"{'mode':<6} {'op':<6} {'load':<10} {'in':>4} {'ops':>6} {'ops/s':>9} "
            f"{'p50 ms':>9} {'p99 ms':>9} {'failed':>6}"
        )
        lines = [head, "-" * len(head)]
        for mode in ("sync", "async"):
            peers = start_ring(root / mode, 3, [*FAST, "--durability", mode])
            try:
                admins = [p.info["admin"] for p in peers]
                lines += asyncio.run(latency_table(admins, mode, args.ops, args.in_flight))
            finally:
                stop_all(peers)
        print("\n".join(lines), flush=True)
        if not args.skip_repair:
            print("\nrepair after kill -9 (4 nodes, sync):", flush=True)
            print("\n".join(repair(root, args.repair_records, args.in_flight)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
