#!/usr/bin/env python3
"""REGISTER and lookup benchmarks of p2preg rings side by side with Kamailio, on this machine.

    .venv/bin/python scripts/bench/bench_register.py [--users 100000] [--nodes 1 3]
        [--duration 20] [--quick] [--json FILE] [--keep] [--no-kamailio] [--no-dmq]
        [--in-flight 64] [--closed-duration S | --closed-calls N | --no-closed] [--no-ladder]
        [--lookup-rate 1000] [--lookup-rates R ...] [--no-lookup-ladder]
        [--no-lookup | --only-lookup]

The systems: Kamailio (Debian package, scripts/bench/kamailio.cfg: usrloc in memory, 2 UDP
workers), the baseline of 1 node; a cluster of 3 Kamailio instances replicating usrloc over
DMQ (scripts/bench/kamailio-dmq.cfg: dmq + dmq_usrloc, 2 UDP workers each), the baseline of
3 nodes; p2preg rings of N real processes, --durability sync. Every system gets the same
SIPp scenario (scripts/bench/register.xml) and the same user CSV, one SIPp per node.

Closed loop first: SIPp keeps --in-flight REGISTERs in flight for --closed-duration s (or
--closed-calls calls): the rate reached, p50/p99, failures and retransmissions, and the CPU
seconds of every process of the system (/proc/PID/stat, descendants included) per REGISTER.
Then the ladder, at stepped rates (--rates, each for --duration s; past the defaults, x1.5
per step). A step is sustained when under 0.1% of its calls fail (SIPp FailedCall, plus
503s) and under 0.1% of its requests are retransmitted, and SIPp kept the offered pace;
stepping stops at the first step that is not. Then, at 50% of the highest sustained rate,
p50/p99 response time (SIPp -trace_rtt, ms; SIPp reads a coarse clock, 4 ms ticks with
HZ=250), and at 2x that rate the goodput (200 OK/s) and whether every request was answered
(200 or 503, none timed out).

Then the lookup benchmark on the same running systems: every user registered (the REGISTER
run's bindings, or a registration pass first with --only-lookup), SIPp sends INVITEs to the
users (scripts/bench/invite.xml), each to another node than its user registered through,
which each system answers 302 with the user's bindings in Contact, and ACKs each answer. At
--lookup-rate for --duration s: 302/s, calls not answered 302 (404/480/503, timeouts, a 302
without the binding), retransmitted INVITEs, p50/p99; then the closed loop; then the same
stepped ladder as REGISTER, from above that rate, for the max sustained lookup rate
(--no-lookup-ladder skips it). After the run, the DMQ cluster's instances are asked how
many users each holds. Prints a table per benchmark, the issue 9 targets with the measured
ratios, and writes JSON (--json, default a .json file next to the temp dir).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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
from typing import IO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCENARIO = HERE / "register.xml"
INVITE_SCENARIO = HERE / "invite.xml"
KAMAILIO_CFG = HERE / "kamailio.cfg"
KAMAILIO_DMQ_CFG = HERE / "kamailio-dmq.cfg"
SIPP = shutil.which("sipp")
KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
)
KAMCMD = shutil.which("kamcmd") or (
    "/usr/sbin/kamcmd" if Path("/usr/sbin/kamcmd").exists() else None
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
# Closed loop: SIPp keeps this many calls in flight (over all SIPps of a system), each
# starting the next as soon as it ends.
DEFAULT_IN_FLIGHT = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")
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
    in_flight: int | None = None  # closed loop: calls kept in flight (``rate`` is then 0)
    cpu_s: float | None = None  # CPU seconds of all the system's processes during the step

    @property
    def goodput(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def cpu_per_call_s(self) -> float | None:
        """CPU seconds of the system (all its processes) per good call of the step."""
        return self.cpu_s / self.ok if self.cpu_s is not None and self.ok else None

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
    closed: Step | None = None  # the closed loop, when it ran


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
    closed: Step | None = None  # the REGISTER closed loop, when it ran
    # p2preg_event_loop_lag_seconds of each node: over the whole run, and over the REGISTER
    # closed loop only (lag_summary's figures).
    lag: list[dict[str, float | None]] | None = None
    closed_lag: list[dict[str, float | None]] | None = None
    # A Kamailio DMQ cluster's check after the run: the AORs and contacts each instance holds.
    replication: dict[str, object] | None = None


# --- systems under test ------------------------------------------------------------------


class System:
    name = ""
    nodes = 1
    pids: list[int]  # the root process of each node; its children belong to the node too
    targets: list[tuple[str, int]]
    sipp_ports: list[int] = []

    def rss_kib(self) -> list[int]:
        return [vm_rss(pid) for pid in self.pids]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every process of the system: each node's
        process and all its descendants, living or already reaped."""
        return tree_cpu_seconds(self.pids)

    def lag_buckets(self) -> list[dict[float, float]] | None:
        """Each node's event-loop lag histogram (cumulative counts by upper bound), where
        the system has one."""
        return None

    def stop(self) -> None:
        raise NotImplementedError


def vm_rss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_stats() -> dict[int, list[str]]:
    """The fields of /proc/PID/stat after the command name, for every process now."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                out[int(d.name)] = (d / "stat").read_text().rsplit(")", 1)[1].split()
    return out


# A Prometheus sample value: prometheus_client writes large ones as 1.2e+06.
NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|[Nn]a[Nn]|[-+]?[Ii]nf)"


def histogram(text: str, name: str) -> dict[float, float]:
    """The cumulative bucket counts of histogram ``name`` in a /metrics text, by upper bound
    (+Inf included)."""
    out = {}
    pattern = rf'^{name}_bucket\{{(?:[^}}]*,)?le="([^"]+)"[^}}]*\}} ({NUMBER})'
    for m in re.finditer(pattern, text, re.M):
        out[float(m.group(1))] = out.get(float(m.group(1)), 0.0) + float(m.group(2))
    return out


def lag_summary(buckets: dict[float, float]) -> dict[str, float | None]:
    """From a lag histogram: how many samples, the bucket bound under which 99% of them lie
    (p99) and the bound of the highest bucket any sample reached (max); inf beyond the last
    finite bound, None without samples."""
    count = buckets.get(math.inf, max(buckets.values(), default=0.0))
    if count <= 0:
        return {"samples": 0, "p99_s": None, "max_s": None}
    bounds = sorted(buckets)
    p99 = next(b for b in bounds if buckets[b] >= 0.99 * count)
    top = next(b for b in bounds if buckets[b] >= count)
    return {"samples": count, "p99_s": p99, "max_s": top}


def lag_diff(
    after: list[dict[float, float]], before: list[dict[float, float]]
) -> list[dict[float, float]]:
    return [
        {b: n - old.get(b, 0.0) for b, n in new.items()}
        for new, old in zip(after, before, strict=True)
    ]


def children_of(pid: int) -> list[int]:
    return [p for p, fields in proc_stats().items() if int(fields[1]) == pid]


def tree_cpu_seconds(roots: list[int]) -> float:
    """utime + stime of the roots and all their descendants, plus cutime + cstime (children
    that exited and were waited for: their time is no longer anywhere else)."""
    stats = proc_stats()
    kids: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        kids.setdefault(int(fields[1]), []).append(pid)
    ticks = 0
    seen: set[int] = set()
    todo = [p for p in roots if p in stats]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        # After the ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt
        # cmajflt utime stime cutime cstime (proc(5) fields 14-17 are indexes 11-14 here).
        ticks += sum(int(x) for x in stats[pid][11:15])
        todo += kids.get(pid, [])
    return ticks / CLK_TCK


def pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def kill_group(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM to the process group ``proc`` leads, SIGKILL when it outlives ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Kamailio(System):
    """Kamailio from Debian's package: one instance with kamailio.cfg, or (``n`` > 1) a
    cluster of ``n`` instances with kamailio-dmq.cfg replicating usrloc to each other over
    DMQ, each on its own loopback port, the others' ports as its notification addresses."""

    def __init__(self, root: Path, users: int, n: int = 1) -> None:
        assert KAMAILIO is not None
        self.name = "kamailio" if n == 1 else "kamailio-dmq"
        self.nodes = n
        self.root = root
        root.mkdir(parents=True)
        cfg = KAMAILIO_CFG if n == 1 else KAMAILIO_DMQ_CFG
        ports = [free_port() for _ in range(n)]
        self.ctl = [root / f"k{i}" / "ctl.sock" for i in range(n)]
        defines = [self.defines(ports, i) for i in range(n)] if n > 1 else [[]]
        check = subprocess.run(
            [KAMAILIO, "-c", "-f", str(cfg), *defines[0]], capture_output=True, text=True,
            cwd=root,
        )  # fmt: skip
        if check.returncode != 0:
            raise SystemExit(f"kamailio -c rejects {cfg}:\n{check.stderr[-2000:]}")
        # usrloc takes well under 2 KiB per binding; the margin covers tm and the hash table.
        # Every instance of a cluster holds every binding, and replicates each change to the
        # others as a tm transaction, which stays in shared memory a few seconds after its
        # answer: at thousands of REGISTERs per second that is tens of MiB more. (Memory only
        # counts once touched; a large -m costs nothing by itself.)
        shm = max(64, users * 2 // 1024 + 64) + (0 if n == 1 else 512)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = []
        self.targets = [("127.0.0.1", port) for port in ports]
        try:
            for i, port in enumerate(ports):
                run = root / f"k{i}"
                run.mkdir()
                log_path = root / f"kamailio{i}.log"
                log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
                self.logs.append(log)
                self.procs.append(subprocess.Popen(
                    [KAMAILIO, "-f", str(cfg), "-DD", "-E", "-m", str(shm), "-M", "16",
                     "-l", f"udp:127.0.0.1:{port}", "-Y", str(run),
                     "-P", str(run / "kamailio.pid"), *defines[i]],
                    stdout=log, stderr=log, cwd=root, start_new_session=True,
                ))  # fmt: skip
                wait_udp_answers(self.targets[i], self.procs[-1], log_path)
            if n > 1:
                self.wait_cluster()
        except BaseException:
            self.stop()
            raise
        self.pids = [p.pid for p in self.procs]

    def defines(self, ports: list[int], i: int) -> list[str]:
        peers = [p for j, p in enumerate(ports) if j != i]
        if len(peers) != 2:
            raise SystemExit("kamailio-dmq.cfg lists 2 peers: a DMQ cluster of 3 instances")
        return [
            "-A", f'DMQ_SERVER="sip:127.0.0.1:{ports[i]}"',
            "-A", f'DMQ_PEER1="sip:127.0.0.1:{peers[0]}"',
            "-A", f'DMQ_PEER2="sip:127.0.0.1:{peers[1]}"',
            "-A", f'CTL_SOCKET="unix:{self.ctl[i]}"',
        ]  # fmt: skip

    def kamcmd(self, i: int, *command: str) -> str:
        assert KAMCMD is not None
        run = subprocess.run(
            [KAMCMD, "-s", f"unix:{self.ctl[i]}", *command],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"kamcmd {' '.join(command)}: {run.stdout}{run.stderr}".strip())
        return run.stdout

    def wait_cluster(self, timeout: float = 30.0) -> None:
        """Until every instance lists every instance as an active DMQ node."""
        if KAMCMD is None:
            time.sleep(2)  # no way to ask; DMQ's start-up notifications take well under that
            return
        deadline = time.monotonic() + timeout
        while True:
            active = []
            for i in range(self.nodes):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    active.append(self.kamcmd(i, "dmq.list_nodes").count("status: active"))
            if active == [self.nodes] * self.nodes:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the DMQ cluster did not form in {timeout} s: {active} active")
            time.sleep(0.3)

    def usrloc_counts(self, i: int) -> dict[str, int]:
        """usrloc's statistics of instance ``i`` (location_users: the AORs it holds)."""
        out = {}
        for m in re.finditer(r"usrloc:(\w+) = (\d+)", self.kamcmd(i, "stats.get_statistics",
                                                                  "usrloc:")):  # fmt: skip
            out[m.group(1)] = int(m.group(2))
        return out

    def check_replication(self, users: int, timeout: float = 20.0) -> dict[str, object]:
        """After the run: does every instance hold every user? Only the benchmark's users
        (bench0 .. bench<users-1>) ever registered, so an instance holding ``users`` AORs holds
        all of them. Replication is asynchronous: wait up to ``timeout`` s for it to catch up."""
        if KAMCMD is None:
            return {"checked": False, "why": "kamcmd missing"}
        deadline = time.monotonic() + timeout
        while True:
            try:
                counts = [self.usrloc_counts(i) for i in range(self.nodes)]
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                return {"checked": False, "why": str(e)}
            aors = [c.get("location_users", 0) for c in counts]
            if all(a >= users for a in aors) or time.monotonic() > deadline:
                return {
                    "checked": True,
                    "users": users,
                    "aors_per_instance": aors,
                    "contacts_per_instance": [c.get("location_contacts", 0) for c in counts],
                    "all_hold_all": all(a >= users for a in aors),
                }
            time.sleep(0.5)

    def rss_kib(self) -> list[int]:
        # Its processes share one shm segment; summing their RSS would count it once per
        # process, so the figure is the proportional set size of each instance's whole tree.
        return [sum(pss_kib(q) for q in [p.pid, *children_of(p.pid)]) for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            kill_group(p)
        for log in self.logs:
            log.close()


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

    def metrics(self) -> list[str]:
        """Each node's /metrics text."""
        out = []
        for info in self.infos:
            with urllib.request.urlopen(f"http://{info['admin']}/metrics", timeout=30) as r:
                out.append(r.read().decode())
        return out

    def bindings(self) -> int:
        """Bindings stored on all nodes, replicas included (from /metrics)."""
        total = 0.0
        for text in self.metrics():
            for m in re.finditer(rf"^p2preg_sip_bindings\{{role=\"\w+\"\}} ({NUMBER})", text, re.M):
                total += float(m.group(1))
        return int(total)

    def lag_buckets(self) -> list[dict[float, float]] | None:
        return [histogram(text, "p2preg_event_loop_lag_seconds") for text in self.metrics()]

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
    calls_each: list[int] | None = None, in_flight: int | None = None,
    total: int | None = None, rotate: bool = False,
) -> Step:  # fmt: skip
    """One SIPp per target running ``scenario``, sharing ``rate``, for ``duration`` s;
    counters summed. SIPp ``i`` calls the users of ``users[i]`` from its own fixed port, so
    every REGISTER run refreshes the same one binding per user instead of adding one per run
    (max_contacts would then 503). A call counts as ok when it got ``expect``. SIPp ``i``
    makes ``calls_each[i]`` calls, by default an even share of ``rate * duration``.

    Closed loop (``in_flight``): no rate; the SIPps keep ``in_flight`` calls in flight between
    them (``-users``), each call starting the next as it ends, for ``total`` calls or, without
    it, for ``duration`` s (then SIGUSR1: SIPp starts no new call, finishes those in flight and
    exits). ``rotate``: SIPp ``i`` sends to the next target, not its own (lookups of users
    registered through another node). The system's CPU time is read before and after."""
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
    timed = in_flight is not None and total is None  # stopped by a signal after ``duration``
    if calls_each is None:
        # The remainder spread over the first SIPps: every system gets the same total.
        total = total if total is not None else max(n, int(rate * duration))
        calls_each = [total // n + (i < total % n) for i in range(n)]
    users_each = [0] * n
    if in_flight is not None:
        users_each = [max(1, in_flight // n + (i < in_flight % n)) for i in range(n)]
    step = Step(rate=rate, calls=sum(calls_each), expect=expect, in_flight=in_flight)
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    dirs = []
    tag = f"c{in_flight}" if in_flight is not None else f"r{rate:g}"
    try:
        cpu_before = system.cpu_seconds()
        started = time.monotonic()
        for i in range(n):
            target = system.targets[(i + 1) % n if rotate else i]
            d = workdir / f"{system.name}{system.nodes}-{tag}-{i}{'-rtt' if rtt else ''}"
            d.mkdir(parents=True)
            dirs.append(d)
            cmd = [
                SIPP, f"{target[0]}:{target[1]}",
                "-sf", str(scenario), "-inf", str(users[i]),
                "-t", "u1", "-i", "127.0.0.1", "-p", str(system.sipp_ports[i]),
                "-nostdin", "-recv_timeout", "10000", "-timeout", f"{int(duration * 3 + 60)}s",
                "-trace_stat", "-stf", str(d / "stat.csv"), "-fd", "1",
                "-trace_counts", "-trace_err", "-error_file", str(d / "errors.log"),
            ]  # fmt: skip
            if in_flight is None:
                # Enough concurrent calls for 2 s of load: an overloaded server is then still
                # offered the full rate rather than SIPp throttling itself to its pace.
                cmd += ["-m", str(calls_each[i]), "-r", f"{share:g}",
                        "-l", str(max(50, int(share * 2)))]  # fmt: skip
            else:
                cmd += ["-users", str(users_each[i]),
                        "-m", str(10**9 if timed else calls_each[i])]  # fmt: skip
            if rtt:
                # Closed loop runs fast: SIPp writes its samples in batches there.
                cmd += ["-trace_rtt", "-rtt_freq", "1" if in_flight is None else "100"]
            out = open(d / "sipp.out", "wb")  # noqa: SIM115 - closed below
            procs.append((subprocess.Popen(cmd, cwd=d, stdout=out, stderr=out), out))
        if timed:
            time.sleep(max(0.0, started + duration - time.monotonic()))
            for p, _ in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGUSR1)
        for (p, _), d in zip(procs, dirs, strict=True):
            try:
                p.wait(duration * 3 + 90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.returncode not in (0, 1):
                # Not "all calls succeeded" nor "some failed": SIPp itself failed (its calls
                # count as failed below); say why.
                tail = (d / "sipp.out").read_text(errors="replace").strip().splitlines()[-1:]
                print(f"  SIPp in {d.name} exited {p.returncode}: {' '.join(tail)}", flush=True)
        step.elapsed = time.monotonic() - started
        step.cpu_s = system.cpu_seconds() - cpu_before
    finally:
        # Whatever went wrong (^C included), no SIPp outlives its step.
        for p, out in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()
    times: list[float] = []
    successful = 0
    if timed:
        step.calls = 0
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
        successful += int(stat.get("SuccessfulCall(C)", 0) or 0)
        done = int(stat.get("SuccessfulCall(C)", 0) or 0) + int(stat.get("FailedCall(C)", 0) or 0)
        if timed:
            # As many calls as SIPp made: it stopped starting them when told to.
            step.calls += done
        else:
            # Calls SIPp never completed at all (killed, or never started) are failures too.
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
    *, scenario: Path = SCENARIO, expect: int = 200, rotate: bool = False,
) -> tuple[list[Step], float]:  # fmt: skip
    """Step the rate up until a step is not sustained: the steps, and the highest sustained
    rate (0 when none was)."""
    steps: list[Step] = []
    best = 0.0
    for rate in rates:
        step = run_step(system, rate, duration, users_csv, workdir, scenario=scenario,
                        expect=expect, rotate=rotate)  # fmt: skip
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


def closed_loop(
    system: System, args: argparse.Namespace, users_csv: list[Path], workdir: Path, *,
    scenario: Path = SCENARIO, expect: int = 200, rotate: bool = False,
) -> Step:  # fmt: skip
    """SIPp keeping --in-flight calls in flight for --closed-calls calls or --closed-duration
    s: the rate the system achieves, its response times and its CPU per call."""
    # With a number of calls, the run lasts as long as it takes: the time SIPp and the waits
    # allow grows with it (at 100 calls/s at least).
    duration = args.closed_duration
    if args.closed_calls is not None:
        duration = max(duration, args.closed_calls / 100)
    step = run_step(system, 0.0, duration, users_csv, workdir, rtt=True,
                    scenario=scenario, expect=expect, in_flight=args.in_flight,
                    total=args.closed_calls, rotate=rotate)  # fmt: skip
    cpu = step.cpu_per_call_s
    print(f"  {system.name} x{system.nodes} closed loop, {args.in_flight} in flight: "
          f"{step.goodput:.0f} {expect}/s, not {expect}={step.not_ok} {step.codes}, "
          f"retrans={step.retrans}, p50={step.p50} p99={step.p99} ms, "
          f"CPU {cpu * 1e6 if cpu else float('nan'):.0f} us/call", flush=True)  # fmt: skip
    settle(system)
    return step


def bench_register(
    system: System, args: argparse.Namespace, users_csv: list[Path], workdir: Path, res: Result
) -> None:
    # Every user is registered first so that every measured step updates existing bindings
    # at the same table size, whichever step it is.
    register_all(system, args, users_csv, workdir)
    settle(system)
    if args.closed:
        before = system.lag_buckets()
        res.closed = closed_loop(system, args, users_csv, workdir / "closed")
        after = system.lag_buckets()
        if before is not None and after is not None:
            res.closed_lag = [lag_summary(h) for h in lag_diff(after, before)]
    if args.ladder:
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
    # Every lookup goes to another node than the one its user registered through (on more
    # than one node): a replicated registrar must answer from what it replicated.
    lookups = workdir / "lookup"
    fixed = run_step(system, args.lookup_rate, args.duration, users_csv, lookups / "fixed",
                     rtt=True, scenario=INVITE_SCENARIO, expect=302, rotate=True)  # fmt: skip
    print(f"  {system.name} x{system.nodes} lookups at {args.lookup_rate:g}/s: "
          f"{fixed.goodput:.0f} 302/s, not 302={fixed.not_ok} {fixed.codes}, "
          f"retrans={fixed.retrans}, p50={fixed.p50} p99={fixed.p99} ms", flush=True)  # fmt: skip
    res = Lookup(fixed)
    if args.closed:
        settle(system)
        res.closed = closed_loop(system, args, users_csv, lookups / "closed",
                                 scenario=INVITE_SCENARIO, expect=302, rotate=True)  # fmt: skip
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
                             scenario=INVITE_SCENARIO, expect=302, rotate=True)  # fmt: skip
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
    lag = system.lag_buckets()
    if lag is not None:
        res.lag = [lag_summary(h) for h in lag]
    if isinstance(system, Ring):
        res.bindings = system.bindings()
        if res.bindings:
            res.lmdb_bytes_per_binding = system.lmdb_bytes() / res.bindings
    if isinstance(system, Kamailio) and system.nodes > 1:
        res.replication = system.check_replication(args.users)
        print(f"  {system.name} x{system.nodes} after the run: {replication_line(res)}",
              flush=True)  # fmt: skip
    return res


def replication_line(r: Result) -> str:
    rep = r.replication or {}
    if not rep.get("checked"):
        return f"replication not checked ({rep.get('why', '?')})"
    aors = "/".join(str(a) for a in rep["aors_per_instance"])  # type: ignore[attr-defined]
    verdict = "every instance holds every user" if rep["all_hold_all"] else "users MISSING"
    return f"AORs held per instance {aors} of {rep['users']} users: {verdict}"


# --- tables and JSON -----------------------------------------------------------------------


def find(results: list[Result], system: str, nodes: int) -> Result | None:
    return next((r for r in results if r.system == system and r.nodes == nodes), None)


def baseline(r: Result, results: list[Result]) -> Result | None:
    """What a row is compared with: p2preg on 1 node with Kamailio, on N nodes with the
    Kamailio DMQ cluster of N instances; the DMQ cluster with the single Kamailio."""
    if r.system == "kamailio":
        return r
    if r.system == "kamailio-dmq" or r.nodes == 1:
        return find(results, "kamailio", 1)
    return find(results, "kamailio-dmq", r.nodes)


def one_node(r: Result, results: list[Result]) -> Result | None:
    """The same software on one node: p2preg's 1-node ring, or the single Kamailio."""
    return find(results, "p2preg" if r.system == "p2preg" else "kamailio", 1)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b or a != a or b != b:
        return None
    return a / b


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def closed_rate(step: Step | None) -> float | None:
    return step.goodput if step is not None else None


def cpu_us(step: Step | None) -> float | None:
    cpu = step.cpu_per_call_s if step is not None else None
    return cpu * 1e6 if cpu is not None else None


def lag_cell(lags: list[dict[str, float | None]] | None) -> str:
    """The worst node's lag p99 and max bucket, in ms: "2/50" (">2000" past the last bound)."""
    if not lags:
        return "-"

    def ms(key: str) -> str:
        values = [lag[key] for lag in lags if lag[key] is not None]
        if not values:
            return "-"
        worst = max(v for v in values if v is not None)
        return f">{LAST_LAG_BOUND_MS:g}" if math.isinf(worst) else f"{worst * 1000:g}"

    return f"{ms('p99_s')}/{ms('max_s')}"


# The last finite bucket bound of p2preg_event_loop_lag_seconds (p2preg/node.py LAG_BUCKETS).
LAST_LAG_BOUND_MS = 2000.0


def table(results: list[Result]) -> str:
    head = (f"{'system':<12} {'nodes':>5} {'max/s':>7} {'x base':>6} {'x closed':>8} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'2x 200/s':>9} {'x own':>6} {'all ans':>7} "
            f"{'RSS MiB/node':>12} {'LMDB B/bind':>11} {'lag p99/max ms':>14}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in results:
        base = baseline(r, results)
        rss = statistics.mean(r.rss_kib) / 1024 if r.rss_kib else 0.0
        lines.append(
            f"{r.system:<12} {r.nodes:>5} {r.max_rate:>7g} "
            f"{fmt(ratio(r.max_rate, base.max_rate if base else None)):>6} "
            f"{fmt(ratio(r.max_rate, closed_rate(r.closed))):>8} {r.p50_ms:>7.1f} "
            f"{r.p99_ms:>7.1f} {r.overload_goodput:>9.0f} "
            f"{fmt(ratio(r.overload_goodput, r.max_rate)):>6} "
            f"{'yes' if r.overload_unanswered == 0 else 'no':>7} {rss:>12.1f} "
            f"{fmt(r.lmdb_bytes_per_binding, '.0f'):>11} {lag_cell(r.lag):>14}"
        )
    return "\n".join(lines)


def closed_table(results: list[Result], what: str) -> str:
    """The closed-loop table of REGISTER (``what`` "register") or of lookups ("lookup")."""
    answer = "200/s" if what == "register" else "302/s"
    head = (f"{'system':<12} {'nodes':>5} {'in flight':>9} {answer:>7} {'x base':>6} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'failed':>7} {'retrans':>7} {'CPU us/call':>11} "
            f"{'x 1 node':>8}")  # fmt: skip
    if what == "register":
        head += f" {'lag p99/max ms':>14}"
    lines = [head, "-" * len(head)]

    def step_of(r: Result | None) -> Step | None:
        if r is None:
            return None
        if what == "register":
            return r.closed
        return r.lookup.closed if r.lookup is not None else None

    for r in results:
        s = step_of(r)
        if s is None:
            continue
        base = step_of(baseline(r, results))
        one = step_of(one_node(r, results))
        line = (
            f"{r.system:<12} {r.nodes:>5} {s.in_flight or 0:>9} {s.goodput:>7.0f} "
            f"{fmt(ratio(s.goodput, closed_rate(base))):>6} {s.p50:>7.1f} {s.p99:>7.1f} "
            f"{s.not_ok:>7} {s.retrans:>7} {fmt(cpu_us(s), '.0f'):>11} "
            f"{fmt(ratio(cpu_us(s), cpu_us(one))):>8}"
        )
        if what == "register":
            line += f" {lag_cell(r.closed_lag):>14}"
        lines.append(line)
    return "\n".join(lines)


def lookup_ratios(look: Lookup, kam: Lookup | None) -> tuple[float | None, float | None]:
    """This system's 302/s at the fixed rate and max sustained lookup rate over another's."""
    per_s = ratio(look.fixed.goodput, kam.fixed.goodput) if kam else None
    best = ratio(look.max_rate, kam.max_rate) if kam else None
    return per_s, best


def lookup_table(results: list[Result]) -> str:
    head = (f"{'system':<12} {'nodes':>5} {'rate/s':>7} {'302/s':>7} {'x base':>6} "
            f"{'failed':>7} {'retrans':>7} {'p50 ms':>7} {'p99 ms':>7} {'max/s':>7} "
            f"{'max x base':>10}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in results:
        if r.lookup is None:
            continue
        f = r.lookup.fixed
        base = baseline(r, results)
        per_s, best = lookup_ratios(r.lookup, base.lookup if base else None)
        top = f"{r.lookup.max_rate:g}" if r.lookup.max_rate is not None else "-"
        lines.append(
            f"{r.system:<12} {r.nodes:>5} {f.rate:>7g} {f.goodput:>7.0f} {fmt(per_s):>6} "
            f"{f.not_ok:>7} {f.retrans:>7} {f.p50:>7.1f} {f.p99:>7.1f} {top:>7} {fmt(best):>10}"
        )
    return "\n".join(lines)


def targets(results: list[Result]) -> list[dict[str, object]]:
    """The targets of issue 9, each with the figure this run measured."""
    out: list[dict[str, object]] = []

    def add(what: str, value: float | None, op: str, limit: float, unit: str = "") -> None:
        met = None
        if value is not None and value != value:
            value = None  # NaN: not measured
        if value is not None:
            met = {">=": value >= limit, "<": value < limit, "<=": value <= limit}[op]
        out.append({"target": what, "value": value, "op": op, "limit": limit, "unit": unit,
                    "met": met})  # fmt: skip

    def lookup_closed(r: Result | None) -> float | None:
        return closed_rate(r.lookup.closed) if r and r.lookup else None

    kam = find(results, "kamailio", 1)
    one = find(results, "p2preg", 1)
    rings = [r for r in results if r.system == "p2preg" and r.nodes > 1]
    if one is not None:
        add(
            "closed loop REGISTER/s, p2preg 1 node / Kamailio",
            ratio(closed_rate(one.closed), closed_rate(kam.closed if kam else None)),
            ">=",
            0.5,
        )
    for r in rings:
        dmq = find(results, "kamailio-dmq", r.nodes)
        add(
            f"closed loop REGISTER/s, p2preg {r.nodes} nodes / DMQ cluster",
            ratio(closed_rate(r.closed), closed_rate(dmq.closed if dmq else None)),
            ">=",
            0.7,
        )
        add(
            f"ladder max/s, p2preg {r.nodes} nodes / its closed loop",
            ratio(r.max_rate, closed_rate(r.closed)),
            ">=",
            0.5,
        )
    if one is not None:
        add("p99 REGISTER at 50% of max, p2preg 1 node", one.p99_ms, "<", 10.0, "ms")
    for r in rings:
        add(f"p99 REGISTER at 50% of max, p2preg {r.nodes} nodes", r.p99_ms, "<", 20.0, "ms")
    for r in rings:
        add(
            f"CPU per REGISTER, p2preg {r.nodes} nodes / 1 node",
            ratio(cpu_us(r.closed), cpu_us(one.closed if one else None)),
            "<=",
            2.5,
        )
    if one is not None:
        add(
            "closed loop lookups/s, p2preg 1 node / Kamailio",
            ratio(lookup_closed(one), lookup_closed(kam)),
            ">=",
            0.5,
        )
    for r in rings:
        dmq = find(results, "kamailio-dmq", r.nodes)
        add(
            f"closed loop lookups/s, p2preg {r.nodes} nodes / DMQ cluster",
            ratio(lookup_closed(r), lookup_closed(dmq)),
            ">=",
            0.7,
        )
    return out  # fmt: skip


def targets_table(rows: list[dict[str, object]]) -> str:
    head = f"{'target (issue 9)':<52} {'measured':>9} {'target':>9} {'met':>4}"
    lines = [head, "-" * len(head)]
    for t in rows:
        value = t["value"]
        if not isinstance(value, float) or value != value:
            continue  # not measured in this run (--no-closed, --only-lookup, ...)
        shown = f"{value:.2f}{t['unit']}"
        met = "-" if t["met"] is None else ("yes" if t["met"] else "no")
        limit = f"{t['op']}{t['limit']:g}{t['unit']}"
        lines.append(f"{t['target']:<52} {shown:>9} {limit:>9} {met:>4}")
    return "\n".join(lines)


def step_json(step: Step) -> dict[str, object]:
    return {**asdict(step), "goodput": step.goodput, "not_ok": step.not_ok}


def closed_json(step: Step | None, base: Step | None, one: Step | None) -> dict[str, object] | None:
    if step is None:
        return None
    return {
        "in_flight": step.in_flight,
        "calls": step.calls,
        "ok": step.ok,
        "ok_per_s": step.goodput,
        "failed": step.not_ok,
        "codes": step.codes,
        "retrans": step.retrans,
        "unanswered": step.unanswered,
        "elapsed_s": step.elapsed,
        "p50_ms": step.p50,
        "p99_ms": step.p99,
        "cpu_s": step.cpu_s,
        "cpu_us_per_call": cpu_us(step),
        "ok_per_s_ratio_to_baseline": ratio(step.goodput, closed_rate(base)),
        "cpu_per_call_ratio_to_one_node": ratio(cpu_us(step), cpu_us(one)),
    }


def lookup_json(
    look: Lookup, kam: Lookup | None, base: Lookup | None, one: Lookup | None, duration: float
) -> dict[str, object]:
    per_s, best = lookup_ratios(look, kam)
    base_per_s, base_best = lookup_ratios(look, base)
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
        "ok_per_s_ratio_to_baseline": base_per_s,
        "max_rate": look.max_rate,
        "max_rate_ratio_to_kamailio": best,
        "max_rate_ratio_to_baseline": base_best,
        "steps": [step_json(s) for s in look.steps],
        "closed": closed_json(
            look.closed, base.closed if base else None, one.closed if one else None
        ),
    }


def result_json(r: Result, results: list[Result], duration: float) -> dict[str, object]:
    kam = find(results, "kamailio", 1)
    base = baseline(r, results)
    one = one_node(r, results)
    doc: dict[str, object] = {
        "system": r.system,
        "nodes": r.nodes,
        "baseline": f"{base.system} x{base.nodes}" if base else None,
        "rss_kib": r.rss_kib,
        "bindings": r.bindings,
        "lmdb_bytes_per_binding": r.lmdb_bytes_per_binding,
        "event_loop_lag": r.lag,
        "replication": r.replication,
    }
    if r.registered:
        skip = ("steps", "lookup", "closed", "lag", "closed_lag", "replication")
        doc.update({k: v for k, v in asdict(r).items() if k not in skip})
        doc.update({
            "ratio_to_kamailio": ratio(r.max_rate, kam.max_rate if kam else None),
            "ratio_to_baseline": ratio(r.max_rate, base.max_rate if base else None),
            "max_rate_ratio_to_closed_loop": ratio(r.max_rate, closed_rate(r.closed)),
            "overload_ratio_to_own_max": ratio(r.overload_goodput, r.max_rate),
            "all_answered": r.overload_unanswered == 0,
            "steps": [step_json(s) for s in r.steps],
            "closed": closed_json(r.closed, base.closed if base else None,
                                  one.closed if one else None),
            "closed_event_loop_lag": r.closed_lag,
        })  # fmt: skip
    doc["lookup"] = (
        lookup_json(
            r.lookup,
            kam.lookup if kam else None,
            base.lookup if base else None,
            one.lookup if one else None,
            duration,
        )
        if r.lookup
        else None
    )
    return doc


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
    parser.add_argument("--no-dmq", action="store_true",
                        help="no Kamailio DMQ cluster beside the multi-node rings")  # fmt: skip
    parser.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT,
                        help="closed loop: calls SIPp keeps in flight (-users), over all "
                             f"SIPps of a system (default {DEFAULT_IN_FLIGHT})")  # fmt: skip
    closed = parser.add_mutually_exclusive_group()
    closed.add_argument("--closed-duration", type=float, default=None,
                        help="closed loop: seconds of each run (default --duration)")  # fmt: skip
    closed.add_argument("--closed-calls", type=int, default=None,
                        help="closed loop: calls of each run instead of a duration")  # fmt: skip
    closed.add_argument("--no-closed", action="store_true", help="no closed-loop runs")
    parser.add_argument("--no-ladder", action="store_true",
                        help="REGISTER: the closed loop only, no fixed-rate ladder")  # fmt: skip
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
    args.closed = not args.no_closed
    args.ladder = not args.no_ladder
    args.closed_duration = args.closed_duration or args.duration
    if args.in_flight < 1:
        parser.error("--in-flight must be at least 1")
    if not args.no_kamailio and not args.no_dmq and any(n not in (1, 3) for n in args.nodes):
        parser.error("the Kamailio DMQ cluster has 3 instances: --nodes 1 3, or --no-dmq")
    args.lookup = not args.no_lookup
    if SIPP is None:
        print("sipp is missing: apt-get install sip-tester (or make tools)", file=sys.stderr)
        return 2
    if KAMAILIO is None and not args.no_kamailio:
        print("kamailio is missing: apt-get install kamailio (or make tools)", file=sys.stderr)
        return 2
    # SIGTERM and SIGHUP unwind like ^C, through every finally below: no Kamailio, SIPp or
    # node outlives the run.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    load_at_start = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="bench-register-"))
    results: list[Result] = []
    try:
        plan: list[tuple[str, int]] = [] if args.no_kamailio else [("kamailio", 1)]
        if not args.no_kamailio and not args.no_dmq:
            plan += [("kamailio-dmq", n) for n in sorted(set(args.nodes)) if n > 1]
        plan += [("p2preg", n) for n in args.nodes]
        for name, n in plan:
            sysroot = root / f"{name}{n}"
            system: System = (
                Ring(sysroot, n) if name == "p2preg" else Kamailio(sysroot, args.users, n)
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
            "in_flight": args.in_flight if args.closed else None,
            "closed_duration_s": args.closed_duration
            if args.closed and args.closed_calls is None
            else None,
            "closed_calls": args.closed_calls if args.closed else None,
            "cpus": os.cpu_count(),
            # Other work on the machine skews absolute figures (ratios less so).
            "load_avg_at_start": load_at_start,
            "results": [result_json(r, results, args.duration) for r in results],
            "targets": targets(results),
        }
        out = args.json or root.parent / f"{root.name}.json"
        out.write_text(json.dumps(doc, indent=2, allow_nan=True))
        loop = (f"{args.in_flight} calls in flight, "
                + (f"{args.closed_calls} calls" if args.closed_calls is not None
                   else f"{args.closed_duration:g} s"))  # fmt: skip
        if args.register and args.closed:
            print(f"\nREGISTER over UDP, closed loop, {args.users} users, {loop}")
            print(closed_table(results, "register"))
        if args.register and args.ladder:
            print(f"\nREGISTER over UDP, fixed-rate ladder, {args.users} users, "
                  f"{args.duration:g} s steps")  # fmt: skip
            print(table(results))
        if args.lookup:
            print(f"\nINVITE -> 302 lookups over UDP, {args.users} registered users, "
                  f"{args.duration:g} s at {args.lookup_rate:g}/s"
                  f"{', then the ladder' if args.lookup_ladder else ''}")  # fmt: skip
            print(lookup_table(results))
        if args.lookup and args.closed:
            print(f"\nINVITE -> 302 lookups over UDP, closed loop, {loop}")
            print(closed_table(results, "lookup"))
        for r in results:
            if r.replication is not None:
                print(f"\n{r.system} x{r.nodes} after the run: {replication_line(r)}")
        shown = targets_table(doc["targets"])  # type: ignore[arg-type]
        if len(shown.splitlines()) > 2:
            print("\n" + shown)
        print(f"\nJSON: {out}")
    finally:
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt as e:
        # The finally blocks on the way out stopped every process the run started.
        print(f"interrupted ({e or 'SIGINT'})", file=sys.stderr)
        raise SystemExit(130) from None
