"""``p2preg run`` processes, one per namespace host, each under libfaketime.

Every node runs with LD_PRELOAD=libfaketime and a clock file of its own
(FAKETIME_TIMESTAMP_FILE, re-read on every call with FAKETIME_NO_CACHE), so a clock jump is a
write of ``+262`` to that file while the process runs. Only the wall clock moves
(FAKETIME_DONT_FAKE_MONOTONIC): an NTP step does that to a real host, and the event loop's
timers stay on the monotonic clock.

Ports are fixed (each host has its own address), so a node restarted on its data directory
comes back at the same addresses, as a restarted machine would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)
OVERLAY_PORT = 7000
ADMIN_PORT = 7080
SIP_PORT = 5060

# Short timers so that failures are noticed in about a second and the ring repairs in a few.
TIMERS = (
    "--ping-interval", "0.3",
    "--missed-pings", "3",
    "--update-interval", "1",
    "--finger-interval", "0.3",
    "--leave-timeout", "1.5",
    "--anti-entropy-interval", "2",
)  # fmt: skip

# Short registrations are allowed so that expiry happens within a smoke run; 503 comes before
# the clients' own timeout so that an overloaded ring answers rather than goes silent.
REGISTRAR_TOML = """\
[registrar]
domains = ["nemesis.test"]
min_expires = 5
max_contacts = 20
overlay_deadline = 3.0
"""


def snapshot_code(dest: Path, source: str) -> str:
    """Copy the node's packages to ``dest`` so that every start and restart of the run runs
    the same code, whatever happens to the shared checkout meanwhile; what was copied.

    ``source`` "head": the last commit (``git archive``); "worktree": the files as they are.
    """
    packages = ("p2preg", "overlay", "storage")
    dest.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if source == "head":
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", "HEAD", *packages],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return f"commit {commit}"
    for package in packages:
        shutil.copytree(
            REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", *packages],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return f"working tree on commit {commit}" + (f", changed: {dirty[1::2]}" if dirty else "")


def faketime_lib() -> str | None:
    return next((lib for lib in FAKETIME_LIBS if os.path.exists(lib)), None)


class NodeState(Enum):
    DOWN = "down"  # never started, killed, or left
    RUNNING = "running"
    PAUSED = "paused"  # SIGSTOP


@dataclass
class Node:
    """One host's node; the process changes across restarts, the data directory does not."""

    index: int
    namespace: str
    address: str
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    node_id: str = ""
    state: NodeState = NodeState.DOWN
    clock_offset: int = 0
    retired: bool = False  # removed by the autoscaler for good
    code: Path = REPO  # where the p2preg, overlay and storage packages are imported from
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / f"node{self.index}"

    @property
    def log_file(self) -> Path:
        return self.root / f"node{self.index}.log"

    @property
    def ready_file(self) -> Path:
        return self.data_dir / "ready.json"

    @property
    def clock_file(self) -> Path:
        return self.root / f"node{self.index}.clock"

    @property
    def overlay(self) -> str:
        return f"{self.address}:{OVERLAY_PORT}"

    @property
    def admin(self) -> str:
        return f"{self.address}:{ADMIN_PORT}"

    @property
    def sip(self) -> tuple[str, int]:
        return (self.address, SIP_PORT)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def short(self) -> str:
        return f"n{self.index}({self.node_id[:8] or '?'})"

    def start(self, bootstrap: Sequence[str]) -> None:
        """Start the process (not waiting for it: see ``wait_ready``)."""
        assert not self.alive(), f"{self.short()} is already running"
        lib = faketime_lib()
        if lib is None:
            raise RuntimeError("libfaketime is not installed (Debian package 'faketime')")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        config = self.root / "registrar.toml"
        if not config.exists():
            config.write_text(REGISTRAR_TOML)
        self.set_clock(self.clock_offset)
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(p for p in (str(self.code), env.get("PYTHONPATH", "")) if p),
            PYTHONUNBUFFERED="1",
            LD_PRELOAD=lib,
            FAKETIME_TIMESTAMP_FILE=str(self.clock_file),
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
        )
        cmd = [
            "ip", "netns", "exec", self.namespace,
            sys.executable, "-m", "p2preg", "run",
            "--config", str(config),
            "--data-dir", str(self.data_dir),
            "--overlay", self.overlay,
            "--admin", self.admin,
            "--sip", f"{self.address}:{SIP_PORT}",
            "--ready-file", str(self.ready_file),
            "--log-level", "info",
            *TIMERS,
        ]  # fmt: skip
        if bootstrap:
            cmd += ["--bootstrap", *bootstrap]
        with open(self.log_file, "ab") as log:
            log.write(f"=== harness: start #{self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            # A session of its own: a Ctrl-C at the terminal reaches the harness only, which
            # then cleans up; ip netns exec execs the node, so this pid is the node's.
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.code,
                start_new_session=True,
            )
        self.starts += 1
        self.state = NodeState.RUNNING

    def ready_info(self) -> dict[str, Any] | None:
        if not self.ready_file.exists():
            return None
        try:
            info: dict[str, Any] = json.loads(self.ready_file.read_text())
        except ValueError:
            return None  # written but not complete yet
        self.node_id = str(info["node_id"])
        return info

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.state = NodeState.PAUSED

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        if self.alive():
            self.state = NodeState.RUNNING

    def kill9(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.exit_codes.append(self.proc.wait(10))
        self.state = NodeState.DOWN

    def reap(self, timeout: float) -> int | None:
        """Wait for the process to exit by itself; its exit code, or None if it did not."""
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.exit_codes.append(code)
        self.state = NodeState.DOWN
        return code

    def set_clock(self, offset: int) -> None:
        self.clock_offset = offset
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(f"{offset:+d}\n")
        os.replace(tmp, self.clock_file)  # never a half-written file for libfaketime to read

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.state = NodeState.DOWN
