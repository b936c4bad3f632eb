"""A harness for tests that run real ``p2preg run`` processes (fixture ``cluster``: conftest.py).

Nodes bind port 0 and report their ports through ``--ready-file``; everything waits on
conditions with deadlines; every process started here is killed in the fixture's finalizer,
whatever the test did. Node logs go to files under the test's tmp_path, and their tails are
printed at teardown (pytest shows them when a test fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent

# Short timers so that rings form and repair in seconds. Jitter stays on: it is part of the design.
FAST_TIMERS = (
    "--ping-interval", "0.5",
    "--missed-pings", "3",
    "--update-interval", "2",
    "--finger-interval", "0.5",
    "--leave-timeout", "1.5",
)  # fmt: skip

READY_TIMEOUT = 30.0
T = TypeVar("T")


def child_env() -> dict[str, str]:
    """The environment for child processes: the checkout first on the path, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m p2preg ARGS`` to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "p2preg", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=REPO,
        check=False,
    )


def cli_json(*args: str, timeout: float = 60.0) -> Any:
    result = run_cli(*args, "--json", timeout=timeout)
    assert result.returncode == 0, f"p2preg {' '.join(args)} failed: {result.stderr.strip()}"
    return json.loads(result.stdout)


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something other than None/False; fail after ``timeout``.

    ``describe`` explains the last state seen when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            detail = describe() if describe is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}. {detail}")
        time.sleep(interval)


@dataclass
class NodeProcess:
    index: int
    data_dir: Path
    ready_file: Path
    log_file: Path
    proc: subprocess.Popen[bytes]
    started_at: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def admin(self) -> str:
        return str(self.info["admin"])

    @property
    def overlay(self) -> str:
        return str(self.info["overlay"])

    @property
    def node_id(self) -> str:
        return str(self.info["node_id"])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> NodeProcess:
        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node {self.index} exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_tail()
                )
            if not self.ready_file.exists():
                return None
            info: dict[str, Any] = json.loads(self.ready_file.read_text())
            return info

        self.info = wait_for(
            ready, timeout, f"node {self.index} ready file", 0.05, describe=self.log_tail
        )
        return self

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def wait_exit(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"node {self.index} still running {timeout:.0f} s after it was told to stop:\n"
                + self.log_tail()
            ) from None


class Cluster:
    """Starts node processes and guarantees they are all gone at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[NodeProcess] = []

    def spawn(
        self,
        bootstrap: Sequence[str] = (),
        *,
        overlay: str = "127.0.0.1:0",
        admin: str = "127.0.0.1:0",
        extra: Sequence[str] = (),
        timers: Sequence[str] = FAST_TIMERS,
        data_dir: Path | None = None,
    ) -> NodeProcess:
        """Start a node without waiting for it (call ``wait_ready``)."""
        index = len(self.nodes)
        data = data_dir or self.root / f"node{index}"
        data.mkdir(parents=True, exist_ok=True)
        ready = data / "ready.json"
        ready.unlink(missing_ok=True)
        log = self.root / f"node{index}.log"
        cmd = [
            sys.executable, "-m", "p2preg", "run",
            "--data-dir", str(data),
            "--overlay", overlay,
            "--admin", admin,
            "--ready-file", str(ready),
            "--log-level", "debug",
            *timers,
            *extra,
        ]  # fmt: skip
        if bootstrap:
            cmd += ["--bootstrap", *bootstrap]
        with open(log, "ab") as log_handle:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=log_handle,
                env=child_env(),
                cwd=REPO,
            )
        node = NodeProcess(index, data, ready, log, proc, time.monotonic())
        self.nodes.append(node)
        return node

    def start(self, bootstrap: Sequence[str] = (), **kwargs: Any) -> NodeProcess:
        return self.spawn(bootstrap, **kwargs).wait_ready()

    def restart(
        self, node: NodeProcess, bootstrap: Sequence[str] = (), **kwargs: Any
    ) -> NodeProcess:
        """Start a new process on ``node``'s data directory (after it exited); not waited for."""
        assert not node.alive(), f"node {node.index} is still running"
        return self.spawn(bootstrap, data_dir=node.data_dir, **kwargs)

    def alive(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.alive()]

    def logs(self) -> str:
        return "\n".join(f"--- node {n.index} ({n.log_file})\n{n.log_tail(15)}" for n in self.nodes)

    def cleanup(self) -> None:
        for node in self.nodes:
            if node.alive():
                node.proc.kill()
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(10)


def ring_problem(
    nodes: list[dict[str, Any]], expected: Sequence[str], succ_size: int = 5
) -> str | None:
    """Why a ``p2preg ring --json`` listing is not the consistent ring of ``expected`` ids, or None.

    Consistent: every expected peer answered, in ring (id) order from wherever the walk started,
    nobody else; each peer's successor list is the next min(succ_size, N-1) ids and its first
    predecessor the previous id.
    """
    # Peers lost lately are listed as down (state "down") beside the walk: not part of it.
    nodes = [node for node in nodes if node.get("state") != "down"]
    want = sorted(expected)
    n = len(want)
    ids = [node["node_id"] for node in nodes]
    down = [node["node_id"][:8] for node in nodes if not node.get("reachable", True)]
    if down:
        return f"unreachable peers listed: {down}"
    if sorted(ids) != want:
        missing = sorted(set(want) - set(ids))
        extra = sorted(set(ids) - set(want))
        short = [m[:8] for m in missing], [e[:8] for e in extra]
        return f"{len(ids)} peers listed; missing {short[0]}, extra {short[1]}"
    start = want.index(ids[0])
    if ids != want[start:] + want[:start]:
        return f"not in ring order: {[i[:8] for i in ids]}"
    for pos, node in enumerate(nodes):
        at = (start + pos) % n
        succ_want = [want[(at + j) % n] for j in range(1, min(succ_size, n - 1) + 1)]
        if node["successors"][: len(succ_want)] != succ_want:
            return (
                f"{ids[pos][:8]} successors {[s[:8] for s in node['successors']]}, "
                f"want {[s[:8] for s in succ_want]}"
            )
        if n > 1 and (not node["predecessors"] or node["predecessors"][0] != want[(at - 1) % n]):
            return (
                f"{ids[pos][:8]} predecessors {[p[:8] for p in node['predecessors']]}, "
                f"want first {want[(at - 1) % n][:8]}"
            )
    return None


# --- storage helpers: the admin API's records and DEBUG-KV endpoints -----------------------------

RecordKey = tuple[str, int, str]  # (resource id hex, kind, dictionary key hex)


@dataclass(frozen=True)
class Copy:
    node_id: str
    storage_time: int
    role: str
    exists: bool


def http_json(
    admin: str, method: str, path: str, data: bytes | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One admin API call; (status, decoded JSON body), HTTP errors included."""
    request = urllib.request.Request(f"http://{admin}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def kv_path(name: str, lifetime: int | None = None) -> str:
    path = "/v1/kv/" + urllib.parse.quote(name, safe="")
    return path if lifetime is None else f"{path}?lifetime={lifetime}"


async def _bulk(
    calls: Sequence[tuple[str, str, str, bytes | None]], concurrency: int, timeout: float
) -> list[tuple[int, Any]]:
    import aiohttp

    limit = asyncio.Semaphore(concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def one(
        session: aiohttp.ClientSession, admin: str, method: str, path: str, data: bytes | None
    ) -> tuple[int, Any]:
        async with limit:
            try:
                async with session.request(method, f"http://{admin}{path}", data=data) as resp:
                    return resp.status, await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return 0, {"error": f"{type(exc).__name__}: {exc}"}

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        return await asyncio.gather(*(one(session, *call) for call in calls))


def bulk_http(
    calls: Sequence[tuple[str, str, str, bytes | None]],
    concurrency: int = 50,
    timeout: float = 60.0,
) -> list[tuple[int, Any]]:
    """Many admin API calls (admin, method, path, body), ``concurrency`` in flight; results in
    order. A call that gets no HTTP answer gives status 0."""
    return asyncio.run(_bulk(calls, concurrency, timeout))


def held_records(nodes: Sequence[NodeProcess]) -> dict[RecordKey, list[Copy]]:
    """Every unexpired record held by ``nodes`` (GET /v1/records/all), with who holds it."""
    held: dict[RecordKey, list[Copy]] = {}
    for node in nodes:
        status, body = http_json(node.admin, "GET", "/v1/records/all", timeout=60)
        assert status == 200, f"records/all from node {node.index}: {status} {body}"
        assert body["columns"] == ["resource_id", "kind", "key", "storage_time", "role", "exists"]
        for rid, kind, key, storage_time, role, exists in body["records"]:
            held.setdefault((rid, kind, key), []).append(
                Copy(body["node_id"], storage_time, role, exists)
            )
    return held


def responsible_and_replicas(resource: str, ring_ids: Sequence[str], copies: int = 3) -> list[str]:
    """The ids that should hold ``resource``: the first peer at or after it, then its successors
    (ids as 32 hex digits compare like the numbers)."""
    ordered = sorted(ring_ids)
    start = next((i for i, n in enumerate(ordered) if n >= resource), 0)
    return [ordered[(start + k) % len(ordered)] for k in range(min(copies, len(ordered)))]


def ring_consistent(asker: NodeProcess, expected: Sequence[str]) -> str | None:
    """Why the ring walked from ``asker`` is not the consistent ring of ``expected``, or None."""
    try:
        status, body = http_json(asker.admin, "GET", "/v1/ring", timeout=60)
    except (OSError, ValueError) as exc:
        return f"ring from node {asker.index}: {exc}"
    if status != 200:
        return f"ring from node {asker.index}: HTTP {status} {body}"
    return ring_problem(body["nodes"], expected)


def wait_ring(askers: Sequence[NodeProcess], expected: Sequence[str], timeout: float) -> None:
    last = ["not checked yet"]

    def consistent() -> bool:
        for asker in askers:
            problem = ring_consistent(asker, expected)
            if problem is not None:
                last[0] = problem
                return False
        return True

    wait_for(consistent, timeout, f"a consistent ring of {len(expected)}", 0.5, lambda: last[0])
