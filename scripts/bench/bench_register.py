#!/usr/bin/env python3
"""REGISTER benchmark of p2preg rings side by side with Kamailio's registrar, on this machine.

    .venv/bin/python scripts/bench/bench_register.py [--users 100000] [--nodes 1 3]
                                                     [--duration 20] [--quick] [--json FILE]

Every system gets the same SIPp scenario (scripts/bench/register.xml) and the same user CSV,
at stepped rates (--rates, each for --duration s; past the defaults, x1.5 per step). A step
is sustained when under 0.1% of its calls fail (SIPp FailedCall, plus 503s) and under 0.1%
of its requests are retransmitted, and SIPp kept the offered pace; stepping stops at the
first step that is not.
Then, at 50% of the highest sustained rate, p50/p99 response time (SIPp -trace_rtt, whole
ms), and at 2x that rate the goodput (200 OK/s) and whether every request was answered
(200 or 503, none timed out). Kamailio (Debian package, scripts/bench/kamailio.cfg: usrloc in
memory, 2 UDP workers) is the baseline; p2preg runs as N real processes, --durability sync.
Prints one table and writes JSON (--json, default bench_register.json in the temp dir).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCENARIO = HERE / "register.xml"
KAMAILIO_CFG = HERE / "kamailio.cfg"
SIPP = shutil.which("sipp")
KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
)

DEFAULT_RATES = [250, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000]
# Past the last default rate the steps grow by half until one fails or this cap, so that a
# fast system's max is measured rather than only bounded below.
RATE_CAP = 100_000
QUICK_RATES = [100, 200]
FAIL_LIMIT = 0.001  # failed calls and retransmissions, as fractions of calls
FAST = ["--ping-interval", "0.5", "--missed-pings", "3", "--update-interval", "2",
        "--finger-interval", "0.5", "--leave-timeout", "1.5"]  # fmt: skip


def free_port() -> int:
    """A UDP port free right now on loopback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Step:
    rate: float
    calls: int
    ok: int = 0
    busy: int = 0
    failed: int = 0
    retrans: int = 0
    unanswered: int = 0
    elapsed: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")

    @property
    def goodput(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def sustained(self, duration: float) -> bool:
        # SIPp falls behind its pace when the server is slow to answer (or SIPp is starved),
        # which shows as a run longer than the step: that rate was not sustained either.
        return (
            self.failed + self.busy <= FAIL_LIMIT * self.calls
            and self.retrans <= FAIL_LIMIT * self.calls
            and self.elapsed <= duration * 1.1 + 1.0
        )


@dataclass
class Result:
    system: str
    nodes: int
    steps: list[Step] = field(default_factory=list)
    max_rate: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    overload_rate: float = 0.0
    overload_goodput: float = 0.0
    overload_ok: int = 0
    overload_503: int = 0
    overload_unanswered: int = 0
    rss_kib: list[int] = field(default_factory=list)
    lmdb_bytes_per_binding: float | None = None
    bindings: int | None = None


# --- systems under test ------------------------------------------------------------------


class System:
    name = ""
    nodes = 1
    pids: list[int]
    targets: list[tuple[str, int]]
    sipp_ports: list[int] = []

    def rss_kib(self) -> list[int]:
        return [vm_rss(pid) for pid in self.pids]

    def stop(self) -> None:
        raise NotImplementedError


def vm_rss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (d / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
    return out


def pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


class Kamailio(System):
    name = "kamailio"

    def __init__(self, root: Path, users: int) -> None:
        assert KAMAILIO is not None
        root.mkdir(parents=True)
        check = subprocess.run(
            [KAMAILIO, "-c", "-f", str(KAMAILIO_CFG)], capture_output=True, text=True, cwd=root
        )
        if check.returncode != 0:
            raise SystemExit(f"kamailio -c rejects {KAMAILIO_CFG}:\n{check.stderr[-2000:]}")
        port = free_port()
        # usrloc takes well under 2 KiB per binding; the margin covers tm and the hash table.
        shm = max(64, users * 2 // 1024 + 64)
        self.log = open(root / "kamailio.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [KAMAILIO, "-f", str(KAMAILIO_CFG), "-DD", "-E", "-m", str(shm), "-M", "16",
             "-l", f"udp:127.0.0.1:{port}", "-Y", str(root), "-P", str(root / "kamailio.pid")],
            stdout=self.log, stderr=self.log, cwd=root, start_new_session=True,
        )  # fmt: skip
        self.targets = [("127.0.0.1", port)]
        self.pids = [self.proc.pid]
        wait_udp_answers(self.targets[0], self.proc, root / "kamailio.log")

    def rss_kib(self) -> list[int]:
        # Its processes share one shm segment; summing their RSS would count it once per
        # process, so the figure is the proportional set size of the whole process tree.
        pids = [self.proc.pid, *children_of(self.proc.pid)]
        return [sum(pss_kib(p) for p in pids)]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def wait_udp_answers(target: tuple[str, int], proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the server answers an OPTIONS over UDP (any response will do)."""
    import socket

    deadline = time.monotonic() + 30
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.3)
        lport = s.getsockname()[1]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited at start; see {log}")
            msg = (
                f"OPTIONS sip:ping@{target[0]}:{target[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{time.monotonic_ns()}\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:bench@127.0.0.1>;tag=1\r\n"
                "To: <sip:ping@127.0.0.1>\r\nCall-ID: bench-ping\r\nCSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            s.sendto(msg.encode(), target)
            with contextlib.suppress(TimeoutError):
                if s.recv(65535).startswith(b"SIP/2.0"):
                    return
    raise SystemExit(f"no SIP answer from {target} in 30 s; see {log}")


class Ring(System):
    name = "p2preg"

    def __init__(self, root: Path, n: int) -> None:
        self.nodes = n
        self.root = root
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.infos: list[dict[str, str]] = []
        self.logs = []
        try:
            for i in range(n):
                data = root / f"node{i}"
                data.mkdir(parents=True)
                ready = data / "ready.json"
                cmd = [sys.executable, "-m", "p2preg", "run", "--data-dir", str(data),
                       "--overlay", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                       "--sip", "127.0.0.1:0", "--durability", "sync",
                       "--ready-file", str(ready), "--log-level", "warning", *FAST]  # fmt: skip
                if self.infos:
                    cmd += ["--bootstrap", self.infos[0]["overlay"]]
                log = open(root / f"node{i}.log", "wb")  # noqa: SIM115 - closed in stop()
                self.logs.append(log)
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=REPO))
                deadline = time.monotonic() + 30
                while not ready.exists():
                    if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                        raise SystemExit(f"node {i} did not start; see {root / f'node{i}.log'}")
                    time.sleep(0.05)
                self.infos.append(json.loads(ready.read_text()))
            self.wait_ring()
        except BaseException:
            self.stop()
            raise
        self.targets = []
        for info in self.infos:
            host, _, port = str(info["sip"]).rpartition(":")
            self.targets.append((host, int(port)))
        self.pids = [p.pid for p in self.procs]

    def wait_ring(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.infos[0]['admin']}/v1/ring"
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(url, timeout=10) as r,
            ):
                if len(json.loads(r.read()).get("nodes", [])) == self.nodes:
                    return
            time.sleep(0.3)
        raise SystemExit(f"the {self.nodes}-node ring did not form in {timeout} s")

    def bindings(self) -> int:
        """Bindings stored on all nodes, replicas included (from /metrics)."""
        total = 0
        for info in self.infos:
            with urllib.request.urlopen(f"http://{info['admin']}/metrics", timeout=30) as r:
                text = r.read().decode()
            for m in re.finditer(r"^p2preg_sip_bindings\{role=\"\w+\"\} (\d+)", text, re.M):
                total += int(m.group(1))
        return total

    def lmdb_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("node*/store/**/data.mdb"))

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


# --- SIPp --------------------------------------------------------------------------------


def write_users(path: Path, users: int, part: int = 0, parts: int = 1) -> Path:
    with path.open("w") as f:
        f.write("SEQUENTIAL\n")
        f.writelines(f"bench{i};example.com;\n" for i in range(part, users, parts))
    return path


def last_row(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    return dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))


def run_step(
    system: System, rate: float, duration: float, users: list[Path], workdir: Path, *,
    rtt: bool = False,
) -> Step:  # fmt: skip
    """One SIPp per target, sharing ``rate``, for ``duration`` s; counters summed. SIPp ``i``
    registers the users of ``users[i]`` from its own fixed port, so every run refreshes the
    same one binding per user instead of adding one per run (max_contacts would then 503)."""
    assert SIPP is not None
    if not system.sipp_ports:
        system.sipp_ports = [free_port() for _ in system.targets]
    share = rate / len(system.targets)
    calls = max(1, int(share * duration))
    step = Step(rate=rate, calls=calls * len(system.targets))
    procs = []
    dirs = []
    started = time.monotonic()
    for i, target in enumerate(system.targets):
        d = workdir / f"{system.name}{system.nodes}-r{rate:g}-{i}{'-rtt' if rtt else ''}"
        d.mkdir(parents=True)
        dirs.append(d)
        cmd = [
            SIPP, f"{target[0]}:{target[1]}",
            "-sf", str(SCENARIO), "-inf", str(users[i]),
            "-t", "u1", "-i", "127.0.0.1", "-p", str(system.sipp_ports[i]),
            "-m", str(calls), "-r", f"{share:g}",
            # Enough concurrent calls for 2 s of load: an overloaded server is then still
            # offered the full rate rather than SIPp throttling itself to the server's pace.
            "-l", str(max(50, int(share * 2))),
            "-nostdin", "-recv_timeout", "10000", "-timeout", f"{int(duration * 3 + 60)}s",
            "-trace_stat", "-stf", str(d / "stat.csv"), "-fd", "1",
            "-trace_counts", "-trace_err", "-error_file", str(d / "errors.log"),
        ]  # fmt: skip
        if rtt:
            cmd += ["-trace_rtt", "-rtt_freq", "1"]
        out = open(d / "sipp.out", "wb")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, cwd=d, stdout=out, stderr=out), out))
    for p, out in procs:
        try:
            p.wait(duration * 3 + 90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        out.close()
    step.elapsed = time.monotonic() - started
    times: list[float] = []
    for d in dirs:
        stat = last_row(d / "stat.csv") if (d / "stat.csv").exists() else {}
        step.failed += int(stat.get("FailedCall(C)", 0) or 0)
        step.retrans += int(stat.get("Retransmissions(C)", 0) or 0)
        step.unanswered += int(stat.get("FailedMaxUDPRetrans(C)", 0) or 0)
        step.unanswered += int(stat.get("FailedCallTimeout(C)", 0) or 0)
        step.unanswered += int(stat.get("FailedCmdRecvTimeout(C)", 0) or 0)
        for counts in d.glob("*_counts.csv"):
            row = last_row(counts)
            step.busy += int(row.get("1_503_Recv", 0) or 0)
            step.ok += int(row.get("2_200_Recv", 0) or 0)
        # Calls SIPp never completed at all (killed, or never started) are failures too.
        done = int(stat.get("SuccessfulCall(C)", 0) or 0) + int(stat.get("FailedCall(C)", 0) or 0)
        step.failed += max(0, calls - done)
        step.unanswered += max(0, calls - done)
        for path in d.glob("*_rtt.csv"):
            for line in path.read_text().splitlines()[1:]:
                parts = line.split(";")
                if len(parts) >= 2:
                    with contextlib.suppress(ValueError):
                        times.append(float(parts[1]))
    if len(times) >= 2:
        q = statistics.quantiles(times, n=100, method="inclusive")
        step.p50, step.p99 = q[49], q[98]
    return step


def bench(system: System, args: argparse.Namespace, root: Path, workdir: Path) -> Result:
    res = Result(system.name, system.nodes)
    system.sipp_ports = []
    n = len(system.targets)
    users_csv = [write_users(root / f"users-{n}-{i}.csv", args.users, i, n) for i in range(n)]
    # Registers every user once, unmeasured, so that every measured step updates existing
    # bindings at the same table size, whichever step it is.
    warm_rate = args.rates[0] if args.quick else max(args.rates[0], 1000.0)
    run_step(system, warm_rate, args.users / warm_rate, users_csv, workdir / "warm")
    rates = list(args.rates)
    if args.extend:
        while rates[-1] * 1.5 <= RATE_CAP:
            rates.append(float(round(rates[-1] * 1.5, -2)))
    for rate in rates:
        step = run_step(system, rate, args.duration, users_csv, workdir)
        res.steps.append(step)
        ok = step.sustained(args.duration)
        print(f"  {system.name} x{system.nodes} {rate:>6g}/s: 200={step.ok} 503={step.busy} "
              f"failed={step.failed} retrans={step.retrans} {step.elapsed:.1f}s "
              f"{'ok' if ok else 'NOT sustained'}", flush=True)  # fmt: skip
        if not ok:
            break
        res.max_rate = rate
    base = res.max_rate or args.rates[0]
    half = run_step(system, base / 2, args.duration, users_csv, workdir / "half", rtt=True)
    res.p50_ms, res.p99_ms = half.p50, half.p99
    over = run_step(system, base * 2, args.duration, users_csv, workdir / "over")
    res.overload_rate = base * 2
    res.overload_goodput = over.goodput
    res.overload_ok, res.overload_503, res.overload_unanswered = (
        over.ok,
        over.busy,
        over.unanswered,
    )
    print(f"  {system.name} x{system.nodes} 50%: p50={half.p50} p99={half.p99} ms; "
          f"2x: {over.goodput:.0f} 200/s, 503={over.busy}, unanswered={over.unanswered}",
          flush=True)  # fmt: skip
    res.rss_kib = system.rss_kib()
    if isinstance(system, Ring):
        res.bindings = system.bindings()
        if res.bindings:
            res.lmdb_bytes_per_binding = system.lmdb_bytes() / res.bindings
    return res


def table(results: list[Result]) -> str:
    kam = next((r.max_rate for r in results if r.system == "kamailio"), 0.0)
    head = (f"{'system':<9} {'nodes':>5} {'max/s':>7} {'x kam':>6} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'2x 200/s':>9} {'x own':>6} {'all ans':>7} {'RSS MiB/node':>12} "
            f"{'LMDB B/bind':>11}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r.max_rate / kam:.2f}" if kam else "-"
        own = f"{r.overload_goodput / r.max_rate:.2f}" if r.max_rate else "-"
        rss = statistics.mean(r.rss_kib) / 1024 if r.rss_kib else 0.0
        lmdb = f"{r.lmdb_bytes_per_binding:.0f}" if r.lmdb_bytes_per_binding else "-"
        lines.append(
            f"{r.system:<9} {r.nodes:>5} {r.max_rate:>7g} {ratio:>6} {r.p50_ms:>7.1f} "
            f"{r.p99_ms:>7.1f} {r.overload_goodput:>9.0f} {own:>6} "
            f"{'yes' if r.overload_unanswered == 0 else 'no':>7} {rss:>12.1f} {lmdb:>11}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate step")
    parser.add_argument("--rates", type=float, nargs="+", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="200 users, 2 s steps at 100 and 200/s: a smoke run")  # fmt: skip
    parser.add_argument("--no-kamailio", action="store_true", help="p2preg rings only")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.duration = min(args.users, 200), 2.0
        args.rates = args.rates or QUICK_RATES
    args.extend = args.rates is None
    args.rates = args.rates or DEFAULT_RATES
    if SIPP is None:
        print("sipp is missing: apt-get install sip-tester (or make tools)", file=sys.stderr)
        return 2
    if KAMAILIO is None and not args.no_kamailio:
        print("kamailio is missing: apt-get install kamailio (or make tools)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="bench-register-"))
    results: list[Result] = []
    try:
        plan: list[tuple[str, int]] = [] if args.no_kamailio else [("kamailio", 1)]
        plan += [("p2preg", n) for n in args.nodes]
        for name, n in plan:
            sysroot = root / f"{name}{n}"
            system: System = (
                Kamailio(sysroot, args.users) if name == "kamailio" else Ring(sysroot, n)
            )
            try:
                results.append(bench(system, args, root, root / f"{name}{n}-sipp"))
            finally:
                system.stop()
        kam = next((r.max_rate for r in results if r.system == "kamailio"), 0.0)
        doc = {
            "users": args.users,
            "duration_s": args.duration,
            "rates": args.rates,
            "cpus": os.cpu_count(),
            "results": [
                {
                    **{k: v for k, v in asdict(r).items() if k != "steps"},
                    "ratio_to_kamailio": r.max_rate / kam if kam else None,
                    "overload_ratio_to_own_max": (
                        r.overload_goodput / r.max_rate if r.max_rate else None
                    ),
                    "all_answered": r.overload_unanswered == 0,
                    "steps": [{**asdict(s), "goodput": s.goodput} for s in r.steps],
                }
                for r in results
            ],
        }
        out = args.json or root.parent / f"{root.name}.json"
        out.write_text(json.dumps(doc, indent=2, allow_nan=True))
        print(f"\nREGISTER over UDP, {args.users} users, {args.duration:g} s steps")
        print(table(results))
        print(f"\nJSON: {out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
