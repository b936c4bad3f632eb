"""The first hour of a new user: what `make ring` (scripts/ring.py) prints must paste and work,
line by line, against the ring it started; one peer leaving does not take the ring down; the
CLI ignores http_proxy and reads P2PREG_ADMIN."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

from harness import FAST_TIMERS, REPO, Cluster, child_env, wait_for

# A proxy that is never there: a CLI that follows it fails with "connection refused".
NO_PROXY_ENV = {
    "http_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "no_proxy": "",
    "NO_PROXY": "",
}


def free_base(count: int) -> int:
    """A base port with ``count`` free ports above it (TCP and UDP)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    sockets.append(s)
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no free port range")


def shell(
    line: str, env: dict[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_printed_commands_paste_and_work(tmp_path: Path) -> None:
    out = tmp_path / "ring.out"
    root = tmp_path / "ring"
    base = free_base(15)
    with open(out, "wb") as handle:
        script = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "ring.py"), "--nodes", "5",
             "--dir", str(root), "--base-port", str(base), "--", *FAST_TIMERS],
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=child_env(), cwd=REPO,
        )  # fmt: skip
    try:

        def printed() -> bool:
            if script.poll() is not None:
                raise AssertionError(f"ring.py exited early:\n{out.read_text()}")
            return "Ctrl-C makes every peer leave" in out.read_text()

        wait_for(printed, 120.0, "ring.py to print its commands", describe=out.read_text)
        text = out.read_text()
        assert "ring of 5 peers up" in text, text
        # Stable addresses from the base port: peer 0's admin API is base+1.
        assert f"127.0.0.1:{base + 1}" in text
        lines = text.split("try these", 1)[1].splitlines()[1:]
        pasted = [line for line in lines if line.startswith("  ")]
        commands = [line.strip() for line in pasted if not line.strip().startswith("#")]
        assert any(c.startswith(".venv/bin/p2preg ring") for c in commands), commands
        assert any(c.startswith(("sipp ", "sipsak ")) for c in commands), commands
        assert any(" lookup " in c for c in commands) and any(" leave " in c for c in commands)

        env = {**child_env(), **NO_PROXY_ENV}
        env.pop("P2PREG_ADMIN", None)
        results = []
        for line in pasted:  # comments too: all of it is pasted
            result = shell(line.strip(), env)
            results.append((line, result))
            assert result.returncode == 0, (
                f"{line.strip()!r} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        lookups = [r.stdout for line, r in results if " lookup " in line]
        assert "sip:alice@" in lookups[0], lookups
        # The peer told to leave is listed as down afterwards; the ring script goes on.
        final_ring = results[-1][1].stdout
        assert " DN " in final_ring and "left" in final_ring, final_ring
        assert "4 up, 1 down" in final_ring, final_ring
        wait_for(
            lambda: "the others go on" in out.read_text(),
            20.0,
            "ring.py to report the peer that left",
            describe=out.read_text,
        )
        assert script.poll() is None, out.read_text()
        script.send_signal(signal.SIGTERM)
        assert script.wait(60) == 0, out.read_text()
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(10)
        for ready in root.glob("node*/ready.json"):
            pid = json.loads(ready.read_text())["pid"]
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_cli_reads_p2preg_admin_and_ignores_proxies(cluster: Cluster) -> None:
    node = cluster.start()
    env = {**child_env(), **NO_PROXY_ENV, "P2PREG_ADMIN": node.admin}
    status = shell(f"{sys.executable} -m p2preg status --json", env)
    assert status.returncode == 0, status.stderr
    assert node.node_id in status.stdout
    # An explicit --admin wins over the variable.
    wrong = {**env, "P2PREG_ADMIN": "127.0.0.1:9"}
    again = shell(f"{sys.executable} -m p2preg status --admin {node.admin}", wrong)
    assert again.returncode == 0, again.stderr
    # Neither: one line, exit 2.
    env.pop("P2PREG_ADMIN")
    missing = shell(f"{sys.executable} -m p2preg status", env)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "P2PREG_ADMIN" in missing.stderr
    helped = shell(f"{sys.executable} -m p2preg ring --help", env)
    assert "P2PREG_ADMIN" in helped.stdout and "proxy" in helped.stdout
