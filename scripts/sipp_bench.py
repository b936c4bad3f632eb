#!/usr/bin/env python3
"""REGISTER throughput and latency with SIPp at a fixed rate, against a 1-node and a 3-node ring.

    .venv/bin/python scripts/sipp_bench.py [--rates 200 500 1000] [--calls 5000] [--nodes 1 3]
                                           [--transport udp|tcp] [--mode process|inprocess]

``process`` (default) starts real ``p2preg run --sip 127.0.0.1:0`` nodes; ``inprocess`` runs
the runtimes and SIP services inside this one process (for development). Each
run sends ``--calls`` REGISTERs of distinct users at a fixed rate, spread over the ring's
nodes (one SIPp per node), and prints a table: offered rate, achieved rate of 200 OKs,
failures, p50/p99/max response time (SIPp's per-call RTD, -trace_rtt; whole ms, so
"0" means under a millisecond).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from sipp_runner import SIPP, run_sipp, write_users  # noqa: E402

FAST = ["--ping-interval", "0.5", "--missed-pings", "3", "--update-interval", "2",
        "--finger-interval", "0.5", "--leave-timeout", "1.5"]  # fmt: skip


def start_processes(
    root: Path, n: int
) -> tuple[list[subprocess.Popen[bytes]], list[tuple[str, int]]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs: list[subprocess.Popen[bytes]] = []
    infos: list[dict[str, str]] = []
    for i in range(n):
        data = root / f"node{i}"
        data.mkdir(parents=True)
        ready = data / "ready.json"
        cmd = [sys.executable, "-m", "p2preg", "run", "--data-dir", str(data),
               "--overlay", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--sip", "127.0.0.1:0",
               "--ready-file", str(ready), "--log-level", "warning", *FAST]  # fmt: skip
        if infos:
            cmd += ["--bootstrap", infos[0]["overlay"]]
        log = open(root / f"node{i}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=REPO))
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or procs[-1].poll() is not None:
                raise SystemExit(f"node {i} did not start; see {root / f'node{i}.log'}")
            time.sleep(0.05)
        infos.append(json.loads(ready.read_text()))
    if any(info.get("sip") in (None, "None") for info in infos):
        stop_processes(procs)
        raise SystemExit("these nodes do not serve SIP yet (node.py must start SipService)")
    wait_ring(infos, n)
    targets = []
    for info in infos:
        host, _, port = str(info["sip"]).rpartition(":")
        targets.append((host, int(port)))
    return procs, targets


def wait_ring(infos: list[dict[str, str]], n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{infos[0]['admin']}/v1/ring", timeout=10) as r:
                ring = json.loads(r.read())
            if len(ring.get("nodes", [])) == n:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the {n}-node ring did not form in {timeout} s")


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def rtts(workdir: Path) -> list[float]:
    """Per-call response times in ms from SIPp's -trace_rtt files."""
    out: list[float] = []
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:
                with contextlib.suppress(ValueError):
                    out.append(float(parts[1]))
    return out


async def one_run(
    targets: list[tuple[str, int]], rate: float, calls: int, transport: str, workdir: Path,
    prefix: str,
) -> dict[str, float]:  # fmt: skip
    workdir.mkdir(parents=True)
    share = calls // len(targets)
    csvs = [
        write_users(workdir / f"users{i}.csv", [f"{prefix}-{i}-{j}" for j in range(share)])
        for i in range(len(targets))
    ]
    started = time.monotonic()
    runs = await asyncio.gather(
        *(
            run_sipp(
                t,
                "register",
                csvs[i],
                transport=transport,
                calls=share,
                workdir=workdir,
                rate=rate / len(targets),
                limit=max(50, int(rate)),
                tag=f"n{i}",
                extra=["-trace_rtt", "-rtt_freq", "1"],
            )
            for i, t in enumerate(targets)
        )
    )
    elapsed = time.monotonic() - started
    ok = sum(sum(1 for line in r.log if line.startswith("200 ")) for r in runs)
    times = sorted(rtts(workdir))
    q = statistics.quantiles(times, n=100) if len(times) >= 2 else [float("nan")] * 99
    return {
        "offered": rate,
        "calls": share * len(targets),
        "ok": ok,
        "failed": share * len(targets) - ok,
        "achieved": ok / elapsed if elapsed else 0.0,
        "p50": q[49],
        "p99": q[98],
        "max": times[-1] if times else float("nan"),
    }


async def bench_inprocess(n: int, args: argparse.Namespace, root: Path) -> list[dict[str, float]]:
    from sip_support import build_ring

    ring = await build_ring(root / "ring", n)
    try:
        return [
            await one_run(
                [x.sip for x in ring.nodes],
                rate,
                args.calls,
                args.transport,
                root / f"r{rate:g}",
                f"u{n}r{rate:g}",
            )
            for rate in args.rates
        ]
    finally:
        await ring.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[200.0, 500.0, 1000.0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    parser.add_argument("--mode", choices=["process", "inprocess"], default="process")
    args = parser.parse_args()
    if SIPP is None:
        print("sipp is missing: apt-get install sip-tester", file=sys.stderr)
        return 2
    rows: list[tuple[int, dict[str, float]]] = []
    for n in args.nodes:
        root = Path(tempfile.mkdtemp(prefix=f"sipp-bench-{n}-"))
        try:
            if args.mode == "inprocess":
                results = asyncio.run(bench_inprocess(n, args, root))
            else:
                procs, targets = start_processes(root, n)
                try:
                    results = [
                        asyncio.run(
                            one_run(
                                targets,
                                rate,
                                args.calls,
                                args.transport,
                                root / f"r{rate:g}",
                                f"u{n}r{rate:g}",
                            )
                        )
                        for rate in args.rates
                    ]
                finally:
                    stop_processes(procs)
            rows += [(n, r) for r in results]
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"REGISTER over {args.transport.upper()}, {args.calls} users per run, mode {args.mode}")
    print(f"{'nodes':>5} {'offered/s':>10} {'200 OK/s':>9} {'failed':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")  # fmt: skip
    for n, r in rows:
        print(f"{n:>5} {r['offered']:>10.0f} {r['achieved']:>9.0f} {r['failed']:>7.0f} "
              f"{r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
