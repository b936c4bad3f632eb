"""Acceptance 4 (and make ring's script): rings of real node processes form, survive a graceful
leave and crashes, and `p2preg ring --json` from any peer shows the consistent ring."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    FAST_TIMERS,
    REPO,
    Cluster,
    NodeProcess,
    child_env,
    ring_problem,
    run_cli,
    wait_for,
)

NODES = 16
CONVERGE_TIMEOUT = 60.0  # with 2 s updates and 0.5 s pings the ring forms in a fraction of this
REPAIR_TIMEOUT = 30.0  # "a few stabilisation intervals" (update every 2 s, dead after 3 x 0.5 s)


def ring_json(admin: str) -> tuple[list[dict[str, Any]] | None, str]:
    result = run_cli("ring", "--admin", admin, "--json", timeout=90)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        return None, result.stderr.strip()
    return json.loads(result.stdout), ""


class RingWatch:
    """Polls `p2preg ring --json` from several peers in turn until each sees the expected ring."""

    def __init__(self, askers: list[NodeProcess], expected: list[str]) -> None:
        self.askers = askers
        self.expected = expected
        self.last = "not checked yet"

    def consistent_from(self, asker: NodeProcess) -> bool:
        nodes, error = ring_json(asker.admin)
        if nodes is None:
            self.last = f"ring from {asker.node_id[:8]} failed: {error}"
            return False
        problem = ring_problem(nodes, self.expected)
        if problem is not None:
            self.last = f"ring from {asker.node_id[:8]}: {problem}"
            return False
        return True

    def all_consistent(self) -> bool:
        return all(self.consistent_from(a) for a in self.askers)


def test_ring_check_catches_inconsistent_listings() -> None:
    ids = [f"{i:032x}" for i in (0x10, 0x20, 0x30, 0x40)]

    def entry(i: int, succ: list[int] | None = None, pred: int | None = None) -> dict[str, Any]:
        succ = succ if succ is not None else [(i + k) % 4 for k in (1, 2, 3)]
        pred = pred if pred is not None else (i - 1) % 4
        return {
            "node_id": ids[i],
            "reachable": True,
            "successors": [ids[s] for s in succ],
            "predecessors": [ids[pred]],
        }

    good = [entry(i) for i in (2, 3, 0, 1)]
    assert ring_problem(good, ids) is None
    assert ring_problem(good[:3], ids) is not None  # one missing
    assert ring_problem([good[0], good[2], good[1], good[3]], ids) is not None  # out of order
    wrong_succ = [entry(2, succ=[0, 1, 3]), *good[1:]]
    assert ring_problem(wrong_succ, ids) is not None
    wrong_pred = [entry(2, pred=0), *good[1:]]
    assert ring_problem(wrong_pred, ids) is not None
    down = [dict(good[0], reachable=False), *good[1:]]
    assert ring_problem(down, ids) is not None


@pytest.mark.parametrize(
    ("timers", "converge_timeout"),
    [
        pytest.param(FAST_TIMERS, CONVERGE_TIMEOUT, id="short-timers"),
        # The promise for the defaults (ping 2 s, update 10 s): well under 30 s.
        pytest.param((), 30.0, id="default-timers"),
    ],
)
def test_sixteen_processes_converge_then_survive_leave_and_crashes(
    cluster: Cluster, timers: tuple[str, ...], converge_timeout: float
) -> None:
    t0 = time.monotonic()
    first = cluster.spawn(timers=timers)
    first.wait_ready()
    rest = [cluster.spawn([first.overlay], timers=timers) for _ in range(NODES - 1)]
    spawned = time.monotonic() - t0
    for node in rest:
        node.wait_ready()
    nodes = [first, *rest]
    expected = sorted(n.node_id for n in nodes)
    assert len(set(expected)) == NODES

    askers = [nodes[0], nodes[5], nodes[10], nodes[15]]
    watch = RingWatch(askers, expected)
    wait_for(
        watch.all_consistent, converge_timeout, f"{NODES} peers consistent",
        interval=0.5, describe=lambda: watch.last,
    )  # fmt: skip
    converged = time.monotonic() - t0

    # Graceful leave of one peer: the other 15 close the ring around it.
    by_id = sorted(nodes, key=lambda n: n.node_id)
    leaver = by_id[4]
    t1 = time.monotonic()
    leaver.terminate()
    assert leaver.wait_exit() == 0
    remaining = [n for n in by_id if n is not leaver]
    watch = RingWatch(
        [remaining[0], remaining[7], remaining[12]], sorted(n.node_id for n in remaining)
    )
    wait_for(
        watch.all_consistent, REPAIR_TIMEOUT, "15 peers consistent after a graceful leave",
        interval=0.5, describe=lambda: watch.last,
    )  # fmt: skip
    after_leave = time.monotonic() - t1

    # Two crashes of non-adjacent peers (positions 2 and 8 of the 15, in id order).
    crashed = [remaining[2], remaining[8]]
    t2 = time.monotonic()
    for node in crashed:
        node.kill9()
    survivors = [n for n in remaining if n not in crashed]
    assert len(survivors) == NODES - 3
    watch = RingWatch(
        [survivors[0], survivors[6], survivors[11]], sorted(n.node_id for n in survivors)
    )
    wait_for(
        watch.all_consistent, REPAIR_TIMEOUT, "13 peers consistent after two crashes",
        interval=0.5, describe=lambda: watch.last,
    )  # fmt: skip
    after_crash = time.monotonic() - t2
    print(
        f"\n{NODES} processes spawned in {spawned:.2f} s, consistent after {converged:.1f} s; "
        f"15 consistent {after_leave:.1f} s after SIGTERM; "
        f"13 consistent {after_crash:.1f} s after kill -9 of two"
    )
    assert all(n.alive() for n in survivors)


def _pids(root: Path) -> list[int]:
    pids = []
    for ready in root.glob("node*/ready.json"):
        try:
            pids.append(int(json.loads(ready.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            continue
    return pids


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); the script reaps its children, so look at the state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_ring_script_brings_up_five_and_stops_them(tmp_path: Path) -> None:
    out = tmp_path / "ring.out"
    root = tmp_path / "ring"
    with open(out, "wb") as handle:
        script = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "ring.py"), "--nodes", "5", "--dir", str(root),
             "--", *FAST_TIMERS],
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=child_env(), cwd=REPO,
        )  # fmt: skip
    try:

        def hint() -> str | None:
            if script.poll() is not None:
                raise AssertionError(f"ring.py exited early:\n{out.read_text()}")
            match = re.search(r"p2preg ring --admin (\S+)", out.read_text())
            return match.group(1) if match else None

        admin = wait_for(hint, 90.0, "ring.py to print its hint", describe=out.read_text)
        assert "ring of 5 peers up" in out.read_text(), out.read_text()
        table = run_cli("ring", "--admin", admin)
        assert table.returncode == 0, table.stderr
        assert "5 peers walked" in table.stdout
        nodes, error = ring_json(admin)
        assert nodes is not None, error
        expected = [json.loads(p.read_text())["node_id"] for p in root.glob("node*/ready.json")]
        assert ring_problem(nodes, expected) is None
        pids = _pids(root)
        assert len(pids) == 5
        script.send_signal(signal.SIGTERM)
        assert script.wait(60) == 0, out.read_text()
        assert "left (exit 0)" in out.read_text()
        assert not [p for p in pids if _running(p)]
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(10)
        for pid in _pids(root):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
