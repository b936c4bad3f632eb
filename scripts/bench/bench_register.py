#!/usr/bin/env python3
"""REGISTER and lookup benchmarks of p2preg rings side by side with Kamailio, on this machine.

    .venv/bin/python scripts/bench/bench_register.py [--users 100000] [--nodes 1 3]
        [--duration 20] [--quick] [--json FILE] [--keep]
        [--lookup-rate 1000] [--lookup-rates R ...] [--no-lookup-ladder]
        [--no-lookup | --only-lookup]

Every system gets the same SIPp scenario (scripts/bench/register.xml) and the same user CSV,
at stepped rates (--rates, each for --duration s; past the defaults, x1.5 per step). A step
is sustained when under 0.1% of its calls fail (SIPp FailedCall, plus 503s) and under 0.1%
of its requests are retransmitted, and SIPp kept the offered pace; stepping stops at the
first step that is not.
Then, at 50% of the highest sustained rate, p50/p99 response time (SIPp -trace_rtt, ms;
SIPp reads a coarse clock, 4 ms ticks with HZ=250), and at 2x that rate the goodput
(200 OK/s) and whether every request was answered (200 or 503, none timed out). Kamailio
(Debian package, scripts/bench/kamailio.cfg: usrloc in memory, 2 UDP workers) is the
baseline; p2preg runs as N real processes, --durability sync.

Then the lookup benchmark on the same running systems: every user registered (the REGISTER
run's bindings, or a registration pass first with --only-lookup), SIPp sends INVITEs to the
users (scripts/bench/invite.xml), which each system answers 302 with the user's bindings in
Contact, and ACKs each answer. At --lookup-rate for --duration s: 302/s, calls not answered
302 (404/480/503, timeouts, a 302 without the binding), retransmitted INVITEs, p50/p99; then
the same stepped ladder as REGISTER, from above that rate, for the max sustained lookup
rate (--no-lookup-ladder skips it). Prints a table per benchmark and writes JSON (--json,
default a .json file next to the temp dir).
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
INVITE_SCENARIO = HERE / "invite.xml"
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
# A lookup rate both Kamailio and a 3-node ring answer in full on a 2-core machine, so that the
# fixed-rate figures compare response times, not overload.
DEFAULT_LOOKUP_RATE = 1000.0
QUICK_LOOKUP_RATE = 100.0
FAIL_LIMIT = 0.001  # failed calls and retransmissions, as fractions of calls
FAST = ["--ping-interval", "0.5", "--missed-pings", "3", "--update-interval", "2",
        "--finger-interval", "0.5", "--leave-timeout", "1.5"]  # fmt: skip


def free_port() -> int:
    """A UDP port free right now on loopback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def fixed_port() -> int:
    """A UDP port free right now, below the kernel's ephemeral range: SIPp binds it again for
    every step, and in between any process binding port 0 could be handed an ephemeral one."""
    import random

    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(max(1024, low - 12000), low)
        if udp_port_free(port):
            return port
    return free_port()


@dataclass
class Step:
    rate: float
    calls: int
    expect: int = 200  # the final response a call must get: 200 (REGISTER), 302 (lookup)
    ok: int = 0  # calls answered ``expect``
    busy: int = 0  # 503s
    other: int = 0  # other final responses the scenario ends a call on (404, 480)
    failed: int = 0  # SIPp FailedCall (unexpected answers, timeouts) and calls never made
    retrans: int = 0
    unanswered: int = 0
    elapsed: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")
    codes: dict[int, int] = field(default_factory=dict)  # final responses received, by code

    @property
    def goodput(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def not_ok(self) -> int:
        """Calls that did not get ``expect``, whatever the reason."""
        return self.failed + self.busy + self.other

    def sustained(self, duration: float) -> bool:
        # SIPp falls behind its pace when the server is slow to answer (or SIPp is starved),
        # which shows as a run longer than the step: that rate was not sustained either.
        return (
            self.not_ok <= FAIL_LIMIT * self.calls
            and self.retrans <= FAIL_LIMIT * self.calls
            and self.elapsed <= duration * 1.1 + 1.0
        )


@dataclass
class Lookup:
    fixed: Step  # at --lookup-rate, with response times
    steps: list[Step] = field(default_factory=list)  # the ladder, when it ran
    max_rate: float | None = None


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
    registered: bool = True  # the REGISTER benchmark ran (not --only-lookup)
    lookup: Lookup | None = None


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


def wait_udp_answers(
    target: tuple[str, int], proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None, within: float = 0.3,
) -> None:  # fmt: skip
    """Wait until the server answers an OPTIONS over UDP (any response will do) within
    ``within`` s of sending it."""
    import socket

    deadline = time.monotonic() + 30
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        lport = s.getsockname()[1]
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"the server exited at start; see {log}")
            branch = f"z9hG4bK{time.monotonic_ns()}"
            msg = (
                f"OPTIONS sip:ping@{target[0]}:{target[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch}\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:bench@127.0.0.1>;tag=1\r\n"
                "To: <sip:ping@127.0.0.1>\r\nCall-ID: bench-ping\r\nCSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            s.sendto(msg.encode(), target)
            sent = time.monotonic()
            # Only the answer to this ping counts: a late answer to an earlier one says
            # nothing about how fast the server answers now.
            with contextlib.suppress(TimeoutError):
                while time.monotonic() - sent < within:
                    s.settimeout(max(0.001, within - (time.monotonic() - sent)))
                    answer = s.recv(65535)
                    if answer.startswith(b"SIP/2.0") and branch.encode() in answer:
                        return
    raise SystemExit(f"no SIP answer from {target} in 30 s; see {log or 'its log'}")


def settle(system: System) -> None:
    """Wait until every target answers a ping at once again: an overloaded step leaves a
    backlog in the server's socket and queues, which the next step must not inherit."""
    for target in system.targets:
        wait_udp_answers(target, within=0.2)


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


RECV_COLUMN = re.compile(r"^\d+_(\d{3})_Recv$")


def run_step(
    system: System, rate: float, duration: float, users: list[Path], workdir: Path, *,
    rtt: bool = False, scenario: Path = SCENARIO, expect: int = 200,
    calls_each: list[int] | None = None,
) -> Step:  # fmt: skip
    """One SIPp per target running ``scenario``, sharing ``rate``, for ``duration`` s;
    counters summed. SIPp ``i`` calls the users of ``users[i]`` from its own fixed port, so
    every REGISTER run refreshes the same one binding per user instead of adding one per run
    (max_contacts would then 503). A call counts as ok when it got ``expect``. SIPp ``i``
    makes ``calls_each[i]`` calls, by default an even share of ``rate * duration``."""
    assert SIPP is not None
    if not system.sipp_ports:
        system.sipp_ports = [fixed_port() for _ in system.targets]
    for i, port in enumerate(system.sipp_ports):
        if not udp_port_free(port):
            # Taken by someone else since: a REGISTER from the new port adds a binding per
            # user of this slice (well under max_contacts) rather than losing the step.
            system.sipp_ports[i] = fixed_port()
            print(f"  SIPp port {port} taken; now {system.sipp_ports[i]}", flush=True)
    n = len(system.targets)
    share = rate / n
    if calls_each is None:
        # The remainder spread over the first SIPps: every system gets the same total.
        total = max(n, int(rate * duration))
        calls_each = [total // n + (i < total % n) for i in range(n)]
    step = Step(rate=rate, calls=sum(calls_each), expect=expect)
    procs = []
    dirs = []
    started = time.monotonic()
    for i, target in enumerate(system.targets):
        d = workdir / f"{system.name}{system.nodes}-r{rate:g}-{i}{'-rtt' if rtt else ''}"
        d.mkdir(parents=True)
        dirs.append(d)
        cmd = [
            SIPP, f"{target[0]}:{target[1]}",
            "-sf", str(scenario), "-inf", str(users[i]),
            "-t", "u1", "-i", "127.0.0.1", "-p", str(system.sipp_ports[i]),
            "-m", str(calls_each[i]), "-r", f"{share:g}",
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
    for (p, out), d in zip(procs, dirs, strict=True):
        try:
            p.wait(duration * 3 + 90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        out.close()
        if p.returncode not in (0, 1):
            # Not "all calls succeeded" nor "some failed": SIPp itself failed (its calls count
            # as failed below); say why.
            tail = (d / "sipp.out").read_text(errors="replace").strip().splitlines()[-1:]
            print(f"  SIPp in {d.name} exited {p.returncode}: {' '.join(tail)}", flush=True)
    step.elapsed = time.monotonic() - started
    times: list[float] = []
    successful = 0
    for d, calls in zip(dirs, calls_each, strict=True):
        stat = last_row(d / "stat.csv") if (d / "stat.csv").exists() else {}
        step.failed += int(stat.get("FailedCall(C)", 0) or 0)
        step.retrans += int(stat.get("Retransmissions(C)", 0) or 0)
        step.unanswered += int(stat.get("FailedMaxUDPRetrans(C)", 0) or 0)
        step.unanswered += int(stat.get("FailedCallTimeout(C)", 0) or 0)
        step.unanswered += int(stat.get("FailedCmdRecvTimeout(C)", 0) or 0)
        for counts in d.glob("*_counts.csv"):
            for column, value in last_row(counts).items():
                if m := RECV_COLUMN.match(column):
                    code = int(m.group(1))
                    step.codes[code] = step.codes.get(code, 0) + int(value or 0)
        # Calls SIPp never completed at all (killed, or never started) are failures too.
        successful += int(stat.get("SuccessfulCall(C)", 0) or 0)
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
    step.busy = step.codes.get(503, 0)
    # A call the scenario ends on such an answer is a SIPp success but not a good call.
    step.other = sum(n for code, n in step.codes.items() if code >= 200 and code != 503)
    step.other -= step.codes.get(expect, 0)
    # An ``expect`` answer that failed the scenario's check (a 302 without the binding) is a
    # FailedCall, not an ok one.
    step.ok = min(step.codes.get(expect, 0), max(0, successful - step.busy - step.other))
    return step


def ladder_rates(rates: list[float], extend: bool) -> list[float]:
    out = list(rates)
    if extend:
        while out[-1] * 1.5 <= RATE_CAP:
            out.append(float(round(out[-1] * 1.5, -2)))
    return out


def ladder(
    system: System, rates: list[float], duration: float, users_csv: list[Path], workdir: Path,
    *, scenario: Path = SCENARIO, expect: int = 200,
) -> tuple[list[Step], float]:  # fmt: skip
    """Step the rate up until a step is not sustained: the steps, and the highest sustained
    rate (0 when none was)."""
    steps: list[Step] = []
    best = 0.0
    for rate in rates:
        step = run_step(system, rate, duration, users_csv, workdir, scenario=scenario,
                        expect=expect)  # fmt: skip
        steps.append(step)
        ok = step.sustained(duration)
        print(f"  {system.name} x{system.nodes} {rate:>6g}/s: {expect}={step.ok} "
              f"503={step.busy} other={step.other} failed={step.failed} "
              f"retrans={step.retrans} {step.elapsed:.1f}s "
              f"{'ok' if ok else 'NOT sustained'}", flush=True)  # fmt: skip
        if not ok:
            break
        best = rate
    return steps, best


def register_all(
    system: System, args: argparse.Namespace, users_csv: list[Path], workdir: Path
) -> Step:
    """Register every user once, unmeasured; once more, slower, if some were refused."""
    rate = args.rates[0] if args.quick else max(args.rates[0], 1000.0)
    # One call per line of each SIPp's slice of the users, whatever the rounding of rate * s.
    each = [sum(1 for _ in path.open()) - 1 for path in users_csv]
    step = run_step(system, rate, args.users / rate, users_csv, workdir / "warm", calls_each=each)
    if step.ok < args.users:
        # Registering again only refreshes the bindings already made.
        print(f"  {system.name} x{system.nodes}: {step.ok} of {args.users} registered at "
              f"{rate:g}/s; again at {rate / 4:g}/s", flush=True)  # fmt: skip
        settle(system)
        step = run_step(system, rate / 4, args.users * 4 / rate, users_csv, workdir / "warm2",
                        calls_each=each)  # fmt: skip
    return step


def bench_register(
    system: System, args: argparse.Namespace, users_csv: list[Path], workdir: Path, res: Result
) -> None:
    # Every user is registered first so that every measured step updates existing bindings
    # at the same table size, whichever step it is.
    register_all(system, args, users_csv, workdir)
    rates = ladder_rates(args.rates, args.extend)
    res.steps, res.max_rate = ladder(system, rates, args.duration, users_csv, workdir)
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


def bench_lookup(
    system: System, args: argparse.Namespace, users_csv: list[Path], workdir: Path
) -> Lookup:
    lookups = workdir / "lookup"
    fixed = run_step(system, args.lookup_rate, args.duration, users_csv, lookups / "fixed",
                     rtt=True, scenario=INVITE_SCENARIO, expect=302)  # fmt: skip
    print(f"  {system.name} x{system.nodes} lookups at {args.lookup_rate:g}/s: "
          f"{fixed.goodput:.0f} 302/s, not 302={fixed.not_ok} {fixed.codes}, "
          f"retrans={fixed.retrans}, p50={fixed.p50} p99={fixed.p99} ms", flush=True)  # fmt: skip
    res = Lookup(fixed)
    if args.lookup_ladder:
        settle(system)
        rates = ladder_rates(args.lookup_rates, args.lookup_extend)
        floor = 0.0
        if fixed.sustained(args.duration):
            # The fixed-rate run was a ladder step already: start above it.
            floor = fixed.rate
            rates = [r for r in rates if r > floor]
            res.steps.append(fixed)
        steps, best = ladder(system, rates, args.duration, users_csv, lookups / "ladder",
                             scenario=INVITE_SCENARIO, expect=302)  # fmt: skip
        res.steps += steps
        res.max_rate = max(best, floor)
    return res


def bench(system: System, args: argparse.Namespace, root: Path, workdir: Path) -> Result:
    res = Result(system.name, system.nodes, registered=args.register)
    system.sipp_ports = []
    n = len(system.targets)
    users_csv = [write_users(root / f"users-{n}-{i}.csv", args.users, i, n) for i in range(n)]
    if args.register:
        bench_register(system, args, users_csv, workdir, res)
    if args.lookup:
        if not args.register:
            register_all(system, args, users_csv, workdir)
        # The REGISTER run's bindings (Expires 3600) are the users to look up, or the
        # registration pass's; either may have left a backlog, which must drain first.
        settle(system)
        res.lookup = bench_lookup(system, args, users_csv, workdir)
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


def kamailio_lookup(results: list[Result]) -> Lookup | None:
    return next((r.lookup for r in results if r.system == "kamailio"), None)


def lookup_ratios(look: Lookup, kam: Lookup | None) -> tuple[float | None, float | None]:
    """This system's 302/s at the fixed rate and max sustained lookup rate over Kamailio's."""
    per_s = look.fixed.goodput / kam.fixed.goodput if kam and kam.fixed.goodput else None
    best = (
        look.max_rate / kam.max_rate if kam and kam.max_rate and look.max_rate is not None else None
    )
    return per_s, best


def lookup_table(results: list[Result]) -> str:
    kam = kamailio_lookup(results)
    head = (f"{'system':<9} {'nodes':>5} {'rate/s':>7} {'302/s':>7} {'x kam':>6} "
            f"{'failed':>7} {'retrans':>7} {'p50 ms':>7} {'p99 ms':>7} {'max/s':>7} "
            f"{'max x kam':>9}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in results:
        if r.lookup is None:
            continue
        f = r.lookup.fixed
        per_s, best = lookup_ratios(r.lookup, kam)
        top = f"{r.lookup.max_rate:g}" if r.lookup.max_rate is not None else "-"
        lines.append(
            f"{r.system:<9} {r.nodes:>5} {f.rate:>7g} {f.goodput:>7.0f} "
            f"{f'{per_s:.2f}' if per_s is not None else '-':>6} {f.not_ok:>7} {f.retrans:>7} "
            f"{f.p50:>7.1f} {f.p99:>7.1f} {top:>7} {f'{best:.2f}' if best is not None else '-':>9}"
        )
    return "\n".join(lines)


def step_json(step: Step) -> dict[str, object]:
    return {**asdict(step), "goodput": step.goodput, "not_ok": step.not_ok}


def lookup_json(look: Lookup, kam: Lookup | None, duration: float) -> dict[str, object]:
    per_s, best = lookup_ratios(look, kam)
    f = look.fixed
    return {
        "rate": f.rate,
        "calls": f.calls,
        "ok_302": f.ok,
        "ok_per_s": f.goodput,
        "failed": f.not_ok,
        "codes": f.codes,
        "retrans": f.retrans,
        "unanswered": f.unanswered,
        "elapsed_s": f.elapsed,
        "p50_ms": f.p50,
        "p99_ms": f.p99,
        "sustained": f.sustained(duration),
        "ok_per_s_ratio_to_kamailio": per_s,
        "max_rate": look.max_rate,
        "max_rate_ratio_to_kamailio": best,
        "steps": [step_json(s) for s in look.steps],
    }


def result_json(r: Result, results: list[Result], duration: float) -> dict[str, object]:
    kam = next((x.max_rate for x in results if x.system == "kamailio"), 0.0)
    doc: dict[str, object] = {
        "system": r.system,
        "nodes": r.nodes,
        "rss_kib": r.rss_kib,
        "bindings": r.bindings,
        "lmdb_bytes_per_binding": r.lmdb_bytes_per_binding,
    }
    if r.registered:
        doc.update({k: v for k, v in asdict(r).items() if k not in ("steps", "lookup")})
        doc.update({
            "ratio_to_kamailio": r.max_rate / kam if kam else None,
            "overload_ratio_to_own_max": r.overload_goodput / r.max_rate if r.max_rate else None,
            "all_answered": r.overload_unanswered == 0,
            "steps": [step_json(s) for s in r.steps],
        })  # fmt: skip
    kam_lookup = kamailio_lookup(results)
    doc["lookup"] = lookup_json(r.lookup, kam_lookup, duration) if r.lookup else None
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate step")
    parser.add_argument("--rates", type=float, nargs="+", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="200 users, 2 s steps at 100 and 200/s, lookups at 100/s: "
                             "a smoke run")  # fmt: skip
    parser.add_argument("--no-kamailio", action="store_true", help="p2preg rings only")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (SIPp traces, server logs)")  # fmt: skip
    parser.add_argument("--lookup-rate", type=float, default=None,
                        help=f"INVITEs per second of the fixed-rate lookup run "
                             f"(default {DEFAULT_LOOKUP_RATE:g}, {QUICK_LOOKUP_RATE:g} "
                             f"with --quick)")  # fmt: skip
    parser.add_argument("--lookup-rates", type=float, nargs="+", default=None,
                        help="the lookup ladder's rates (default: as REGISTER's)")  # fmt: skip
    parser.add_argument(
        "--no-lookup-ladder",
        action="store_true",
        help="lookups at the fixed rate only, no max sustained lookup rate",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-lookup", action="store_true", help="the REGISTER benchmark only")
    which.add_argument(
        "--only-lookup",
        action="store_true",
        help="the lookup benchmark only (users registered first, unmeasured)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.duration = min(args.users, 200), 2.0
        args.rates = args.rates or QUICK_RATES
        args.lookup_rates = args.lookup_rates or QUICK_RATES
        args.lookup_rate = args.lookup_rate or QUICK_LOOKUP_RATE
    args.extend = args.rates is None
    args.rates = args.rates or DEFAULT_RATES
    args.lookup_extend = args.lookup_rates is None
    args.lookup_rates = args.lookup_rates or DEFAULT_RATES
    args.lookup_rate = args.lookup_rate or DEFAULT_LOOKUP_RATE
    args.lookup_ladder = not args.no_lookup_ladder
    args.register = not args.only_lookup
    args.lookup = not args.no_lookup
    if SIPP is None:
        print("sipp is missing: apt-get install sip-tester (or make tools)", file=sys.stderr)
        return 2
    if KAMAILIO is None and not args.no_kamailio:
        print("kamailio is missing: apt-get install kamailio (or make tools)", file=sys.stderr)
        return 2
    load_at_start = os.getloadavg()
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
        doc = {
            "users": args.users,
            "duration_s": args.duration,
            "rates": args.rates if args.register else None,
            "lookup_rate": args.lookup_rate if args.lookup else None,
            "lookup_rates": args.lookup_rates if args.lookup and args.lookup_ladder else None,
            "cpus": os.cpu_count(),
            # Other work on the machine skews absolute figures (ratios less so).
            "load_avg_at_start": load_at_start,
            "results": [result_json(r, results, args.duration) for r in results],
        }
        out = args.json or root.parent / f"{root.name}.json"
        out.write_text(json.dumps(doc, indent=2, allow_nan=True))
        if args.register:
            print(f"\nREGISTER over UDP, {args.users} users, {args.duration:g} s steps")
            print(table(results))
        if args.lookup:
            print(f"\nINVITE -> 302 lookups over UDP, {args.users} registered users, "
                  f"{args.duration:g} s at {args.lookup_rate:g}/s"
                  f"{', then the ladder' if args.lookup_ladder else ''}")  # fmt: skip
            print(lookup_table(results))
        print(f"\nJSON: {out}")
    finally:
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
