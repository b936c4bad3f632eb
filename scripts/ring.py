#!/usr/bin/env python3
"""Start a local ring of N p2preg peers on 127.0.0.1 and keep it up until Ctrl-C / SIGTERM.

Each peer is a separate `p2preg run` process with its own data directory under DIR/nodeK
(default ./.ring, kept between runs so peers keep their ids and records); logs go to
DIR/nodeK/node.log. With --base-port P (make ring: RING_PORT=P) the addresses are stable:
peer K listens on P+3K (overlay), P+3K+1 (admin API) and P+3K+2 (SIP, UDP and TCP); without
it the kernel picks free ports. Peer 0 founds the ring (--new-ring: the peers start together,
so the ring their data directories remember is gone), the others join it.

Once the ring is up it prints commands to paste into a shell in this directory: the ring
table, a REGISTER of a test user through one peer (SIPp with tests/sipp/register.xml, else
sipsak), a lookup of that user through another peer, and a graceful leave of one peer. A
peer that leaves or dies does not stop the others (try failover); the script says how to
start it again. Ctrl-C or SIGTERM: every peer gets SIGTERM and leaves the ring gracefully.

Arguments after `--` are passed to every `p2preg run` (e.g. `-- --ping-interval 0.5`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from p2preg.cli import AdminUnreachable, admin_call

READY_TIMEOUT = 30.0
CONVERGE_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
REPO = Path(__file__).resolve().parent.parent
TEST_USER = "alice"
TEST_DOMAIN = "example.com"
PORTS_PER_PEER = 3  # overlay, admin, SIP


def p2preg_command() -> list[str]:
    """How to run p2preg the way a user pastes it: the venv's script, relative to the current
    directory when it lies below it (`.venv/bin/p2preg`), else `python -m p2preg`."""
    script = Path(sys.executable).parent / "p2preg"
    if script.exists():
        try:
            return [str(script.relative_to(Path.cwd()))]
        except ValueError:
            return [str(script)]
    return [sys.executable, "-m", "p2preg"]


class Peer:
    def __init__(self, index: int, root: Path, host: str, base_port: int | None) -> None:
        self.index = index
        self.dir = root / f"node{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ready_file = self.dir / "ready.json"
        self.log_file = self.dir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.cmd: list[str] = []
        if base_port is None:
            ports = [0, 0, 0]
        else:
            first = base_port + PORTS_PER_PEER * index
            ports = [first, first + 1, first + 2]
        self.overlay, self.admin, self.sip = (f"{host}:{p}" for p in ports)

    def start(self, bootstrap: list[str], extra: list[str]) -> None:
        self.ready_file.unlink(missing_ok=True)
        self.cmd = [
            *p2preg_command(), "run",
            "--data-dir", str(self.dir),
            "--overlay", self.overlay,
            "--admin", self.admin,
            "--sip", self.sip,
        ]  # fmt: skip
        self.cmd += ["--bootstrap", *bootstrap] if bootstrap else ["--new-ring"]
        self.cmd += extra
        with open(self.log_file, "ab") as log:
            # A session of its own: the terminal's Ctrl-C reaches only us, and we decide the order.
            self.proc = subprocess.Popen(
                [*self.cmd, "--ready-file", str(self.ready_file)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"peer {self.index} exited with {self.proc.returncode}; see {self.log_file}"
                )
            if self.ready_file.exists():
                self.info = json.loads(self.ready_file.read_text())
                return
            time.sleep(0.05)
        raise SystemExit(
            f"peer {self.index} not ready after {READY_TIMEOUT:.0f} s; see {self.log_file}"
        )

    def restart_line(self, others: list[Peer]) -> str:
        """The command that brings this peer back into the running ring."""
        cmd = self.cmd[: self.cmd.index("--sip") + 2]
        overlays = [p.info["overlay"] for p in others if p is not self and p.info]
        return shlex.join([*cmd, "--bootstrap", *overlays])


def wait_converged(peers: list[Peer], deadline: float) -> list[dict[str, Any]]:
    """Poll the first peer's ring walk until it lists every peer and comes back round."""
    want = {p.info["node_id"] for p in peers}
    nodes: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            status, body = admin_call(peers[0].info["admin"], "GET", "/v1/ring", 10.0)
        except AdminUnreachable:
            status, body = 0, None
        if status == 200 and isinstance(body, dict):
            nodes = body["nodes"]
            up = {n["node_id"] for n in nodes if n["reachable"]}
            if body["complete"] and up == want:
                return nodes
        time.sleep(0.3)
    return nodes


def register_command(root: Path, sip: str) -> tuple[str, str, list[str]]:
    """(what it does, the AOR it registers, the command): SIPp when installed, else sipsak.
    Debian's sipsak cuts a 5-digit port in -s, so the port goes to -r."""
    host, _, port = sip.rpartition(":")
    if shutil.which("sipp") or not shutil.which("sipsak"):
        users = (root / "users.csv").resolve()
        users.write_text(f"SEQUENTIAL\n{TEST_USER};{TEST_DOMAIN};\n")
        command = [
            "sipp", sip, "-sf", str(REPO / "tests" / "sipp" / "register.xml"),
            "-inf", str(users), "-m", "1", "-i", host, "-p", "0", "-nostdin",
            "-timeout", "10s",
        ]  # fmt: skip
        note = "register with SIPp over UDP (exit 0 = 200 OK)"
        if not shutil.which("sipp"):
            note += "; needs SIPp: apt-get install sip-tester"
        return note, f"sip:{TEST_USER}@{TEST_DOMAIN}", command
    command = [
        "sipsak", "-U", "-C", f"sip:{TEST_USER}@{host}:5999",
        "-s", f"sip:{TEST_USER}@{host}", "-r", port, "-x", "3600",
    ]  # fmt: skip
    return "register with sipsak (exit 0 = 200 OK)", f"sip:{TEST_USER}@{host}", command


def try_lines(root: Path, peers: list[Peer]) -> list[str]:
    """Comment lines and commands, each command on a line of its own, indented by two spaces,
    ready to paste into a shell in this directory."""
    p2preg = p2preg_command()
    first, last = peers[0], peers[-1]
    lines = [
        "# the ring, walked from peer 0 (--json for machines):",
        shlex.join([*p2preg, "ring", "--admin", first.info["admin"]]),
    ]
    sip = first.info.get("sip")
    if sip:
        note, aor, register = register_command(root, sip)
        lines += [
            f"# {note}, through peer 0:",
            shlex.join(register),
            f"# look the binding up through peer {last.index} (fetched through the ring):",
            shlex.join([*p2preg, "lookup", aor, "--admin", last.info["admin"]]),
        ]
    if len(peers) > 2:
        middle = peers[len(peers) // 2]
        lines += [
            f"# make peer {middle.index} leave gracefully; the others go on (failover):",
            shlex.join([*p2preg, "leave", "--admin", middle.info["admin"]]),
            "# the ring again: the peer that left is listed as down (DN) for a while:",
            shlex.join([*p2preg, "ring", "--admin", first.info["admin"]]),
        ]
    return ["  " + line for line in lines]


def stop_all(peers: list[Peer]) -> int:
    running = [p for p in peers if p.proc is not None and p.proc.poll() is None]
    for p in running:
        assert p.proc is not None
        p.proc.send_signal(signal.SIGTERM)
    failures = 0
    for p in running:
        assert p.proc is not None
        try:
            code = p.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            code = p.proc.wait()
        if code != 0:
            failures += 1
        print(f"peer {p.index} {p.info.get('node_id', '?')[:8]} left (exit {code})", flush=True)
    return failures


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5, help="number of peers (default: 5)")
    parser.add_argument(
        "--dir", type=Path, default=Path(".ring"), help="data root (default: .ring)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--base-port",
        type=int,
        default=None,
        metavar="PORT",
        help="stable addresses: peer K uses PORT+3K (overlay), PORT+3K+1 (admin), PORT+3K+2 "
        "(SIP). Default: free ports chosen by the kernel, new on every run",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.base_port is not None and not 1024 <= args.base_port <= 65535 - 3 * args.nodes:
        parser.error(f"--base-port must leave room for {3 * args.nodes} ports below 65536")
    return args


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parse_args(argv)

    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    peers = [Peer(i, args.dir, args.host, args.base_port) for i in range(args.nodes)]
    try:
        started = time.monotonic()
        peers[0].start([], extra)
        peers[0].wait_ready(time.monotonic() + READY_TIMEOUT)
        for p in peers[1:]:
            p.start([peers[0].info["overlay"]], extra)
        for p in peers[1:]:
            p.wait_ready(time.monotonic() + READY_TIMEOUT)
        nodes = wait_converged(peers, time.monotonic() + CONVERGE_TIMEOUT)
        elapsed = time.monotonic() - started
        by_id = {n["node_id"]: n for n in nodes if n["reachable"]}
        ordered = sorted(peers, key=lambda p: p.info["node_id"])
        print(
            f"{'peer':<5} {'node id':<34} {'overlay':<22} {'admin':<22} {'sip':<22} state",
            flush=True,
        )
        for p in ordered:
            state = by_id.get(p.info["node_id"], {}).get("state") or "?"
            print(
                f"{p.index:<5} {p.info['node_id']:<34} {p.info['overlay']:<22} "
                f"{p.info['admin']:<22} {p.info.get('sip') or '-':<22} {state}"
            )
        if len(by_id) == len(peers):
            print(f"ring of {len(peers)} peers up in {elapsed:.1f} s")
        else:
            print(f"warning: the ring walk shows {len(by_id)} of {len(peers)} peers so far")
        print(f"logs: {args.dir}/node*/node.log")
        print("try these, pasted into a shell in this directory:")
        for line in try_lines(args.dir, peers):
            print(line)
        print("Ctrl-C makes every peer leave gracefully.", flush=True)
        reported: set[int] = set()
        while not stop:
            for p in peers:
                assert p.proc is not None
                if p.index in reported or p.proc.poll() is None:
                    continue
                reported.add(p.index)
                print(
                    f"peer {p.index} {p.info['node_id'][:8]} exited (exit {p.proc.returncode}); "
                    f"the others go on. To start it again:\n  {p.restart_line(peers)}",
                    flush=True,
                )
            if len(reported) == len(peers):
                print("every peer has exited", flush=True)
                break
            time.sleep(0.2)
        if stop:
            print("stopping: SIGTERM to every peer", flush=True)
    finally:
        failures = stop_all(peers)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
