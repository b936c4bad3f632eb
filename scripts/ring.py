#!/usr/bin/env python3
"""Start a local ring of N p2preg peers on 127.0.0.1 and keep it up until Ctrl-C / SIGTERM.

Each peer is a separate `python -m p2preg run` process with ports chosen by the kernel (port 0)
for its overlay, admin API and SIP registrar (UDP and TCP), and its data directory under
DIR/nodeK (default ./.ring, kept between runs so peers keep their ids); logs go to
DIR/nodeK/node.log. The first peer starts the ring, the rest bootstrap from it. Once the ring
is up it prints a command that registers a test user through one peer (SIPp with
tests/sipp/register.xml, or sipsak) and a `p2preg lookup` of that user through another.
On Ctrl-C or SIGTERM every peer gets SIGTERM and leaves the ring gracefully.

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


class Peer:
    def __init__(self, index: int, root: Path) -> None:
        self.index = index
        self.dir = root / f"node{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ready_file = self.dir / "ready.json"
        self.log_file = self.dir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, host: str, bootstrap: str | None, extra: list[str]) -> None:
        self.ready_file.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "p2preg", "run",
            "--data-dir", str(self.dir),
            "--overlay", f"{host}:0",
            "--admin", f"{host}:0",
            "--sip", f"{host}:0",
            "--ready-file", str(self.ready_file),
        ]  # fmt: skip
        if bootstrap:
            cmd += ["--bootstrap", bootstrap]
        with open(self.log_file, "ab") as log:
            # A session of its own: the terminal's Ctrl-C reaches only us, and we decide the order.
            self.proc = subprocess.Popen(
                cmd + extra, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                start_new_session=True,
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
            if body["complete"] and {n["node_id"] for n in nodes} == want:
                return nodes
        time.sleep(0.3)
    return nodes


def try_commands(root: Path, register_at: Peer, lookup_at: Peer) -> list[str]:
    """Shell lines that register a test user through one peer and look it up through another
    (the binding is fetched through the ring, wherever the responsible peer is)."""
    sip = register_at.info.get("sip")
    if not sip:
        return []
    aor = f"sip:{TEST_USER}@{TEST_DOMAIN}"
    if shutil.which("sipp") or not shutil.which("sipsak"):
        users = (root / "users.csv").resolve()
        users.write_text(f"SEQUENTIAL\n{TEST_USER};{TEST_DOMAIN};\n")
        host = sip.rpartition(":")[0]
        register = [
            "sipp", sip, "-sf", str(REPO / "tests" / "sipp" / "register.xml"),
            "-inf", str(users), "-m", "1", "-i", host, "-p", "0", "-nostdin",
            "-timeout", "10s",
        ]  # fmt: skip
        note = "register (SIPp, UDP; exit 0 = 200 OK)"
    else:
        register = ["sipsak", "-U", "-C", f"sip:{TEST_USER}@127.0.0.1:5999",
                    "-s", f"sip:{TEST_USER}@{sip}", "-x", "3600"]  # fmt: skip
        aor = f"sip:{TEST_USER}@{sip}"
        note = "register (sipsak)"
    lookup = ["p2preg", "lookup", aor, "--admin", str(lookup_at.info["admin"])]
    return [
        f"{note} through peer {register_at.index}:",
        "  " + shlex.join(register),
        f"look it up through peer {lookup_at.index}:",
        "  " + shlex.join(lookup),
    ]


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


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5, help="number of peers (default: 5)")
    parser.add_argument(
        "--dir", type=Path, default=Path(".ring"), help="data root (default: .ring)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")

    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    peers = [Peer(i, args.dir) for i in range(args.nodes)]
    try:
        started = time.monotonic()
        peers[0].start(args.host, None, extra)
        peers[0].wait_ready(time.monotonic() + READY_TIMEOUT)
        for p in peers[1:]:
            p.start(args.host, peers[0].info["overlay"], extra)
        for p in peers[1:]:
            p.wait_ready(time.monotonic() + READY_TIMEOUT)
        nodes = wait_converged(peers, time.monotonic() + CONVERGE_TIMEOUT)
        elapsed = time.monotonic() - started
        by_id = {n["node_id"]: n for n in nodes}
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
        print(f"try:  p2preg ring --admin {peers[0].info['admin']}   (p2preg is in .venv/bin)")
        for line in try_commands(args.dir, peers[0], peers[-1] if len(peers) > 1 else peers[0]):
            print(line)
        print("Ctrl-C makes every peer leave gracefully.", flush=True)
        while not stop:
            for p in peers:
                assert p.proc is not None
                if p.proc.poll() is not None:
                    print(
                        f"peer {p.index} exited on its own (exit {p.proc.returncode})", flush=True
                    )
                    stop = True
            time.sleep(0.2)
        print("stopping: SIGTERM to every peer", flush=True)
    finally:
        failures = stop_all(peers)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
