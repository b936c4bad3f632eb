"""The live ring page (GET / of the admin API), loaded in a real headless Chromium.

Chromium is Debian's (``make test`` installs it); it is driven over the DevTools protocol with
aiohttp's websocket client, so no browser or driver is downloaded. Every wait has a deadline;
Chromium's process group, the nodes and the temp dirs are cleaned up whatever happens. The
screenshots are kept under the test's tmp dir and their paths printed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from harness import Cluster, http_json, wait_ring

from p2preg.ring_page import add_ring_page, content_security_policy, page_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_START_TIMEOUT = 60.0


def _need_chromium() -> str:
    if CHROMIUM is None:
        message = "chromium missing: apt-get install chromium (make tools does)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run this test, not skip it quietly
        pytest.skip(message)
    return CHROMIUM


class DevTools:
    """One Chromium page over the DevTools protocol: commands, events, waits with deadlines."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self.pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self.events.append(data)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("DevTools connection closed"))

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise AssertionError(f"DevTools {method} failed: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Evaluate ``expression`` until it is truthy; fail after ``timeout`` s with the page's
        state (its status line and peers) in the message."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                state = await self.evaluate(STATE_JS)
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for the page to show {what}; "
                    f"page state: {state}; errors: {self.page_errors()}"
                )
            await asyncio.sleep(0.25)

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"ring page screenshot: {path}")
        return path

    def page_errors(self) -> list[str]:
        return [
            json.dumps(e["params"].get("exceptionDetails", {}))[:500]
            for e in self.events
            if e["method"] == "Runtime.exceptionThrown"
        ]

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.reader


STATE_JS = """JSON.stringify({
  status: (document.getElementById('status') || {}).textContent,
  up: document.body.dataset.peersUp, down: document.body.dataset.peersDown,
  updates: document.body.dataset.updates,
  rows: [...document.querySelectorAll('#rows tr')].map(
    (r) => r.dataset.nodeId.slice(0, 8) + ':' + r.dataset.state),
})"""


def _peers_js(state: str) -> str:
    """The ids of the peers the page shows in ``state``, in the table and on the circle alike."""
    return f"""(() => {{
  const rows = [...document.querySelectorAll('#rows tr[data-state="{state}"]')]
    .map((r) => r.dataset.nodeId).sort();
  const dots = [...document.querySelectorAll('#peers g.peer[data-state="{state}"]')]
    .map((g) => g.dataset.nodeId).sort();
  return JSON.stringify(rows) === JSON.stringify(dots) ? rows : null;
}})()"""


async def _read_devtools_port(user_data: Path, proc: subprocess.Popen[bytes]) -> int:
    port_file = user_data / "DevToolsActivePort"
    deadline = time.monotonic() + BROWSER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited with {proc.returncode} before it listened")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(port_file.read_text().splitlines()[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"chromium did not write {port_file} in {BROWSER_START_TIMEOUT:.0f} s")


@contextlib.asynccontextmanager
async def browser_page(url: str, log: Path) -> AsyncIterator[DevTools]:
    """A headless Chromium showing ``url``; Network and Runtime events recorded from the start."""
    chromium = _need_chromium()
    user_data = Path(tempfile.mkdtemp(prefix="p2preg-chromium-"))
    with open(log, "ab") as log_handle:
        proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-proxy-server",
                "--hide-scrollbars",
                "--window-size=1600,900",
                f"--user-data-dir={user_data}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=log_handle,
            start_new_session=True,  # its own process group: we end exactly what we started
        )
    session: aiohttp.ClientSession | None = None
    devtools: DevTools | None = None
    try:
        port = await _read_devtools_port(user_data, proc)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        deadline = time.monotonic() + BROWSER_START_TIMEOUT
        target: dict[str, Any] | None = None
        while target is None:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            target = next((t for t in targets if t.get("type") == "page"), None)
            if target is None:
                assert time.monotonic() < deadline, f"no page target in chromium: {targets}"
                await asyncio.sleep(0.1)
        ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        devtools = DevTools(ws)
        await devtools.send("Runtime.enable")
        await devtools.send("Network.enable")
        await devtools.send("Page.enable")
        await devtools.send("Page.navigate", url=url)
        yield devtools
    finally:
        if devtools is not None:
            await devtools.close()
        if session is not None:
            await session.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        shutil.rmtree(user_data, ignore_errors=True)


def _check_same_origin(devtools: DevTools, origin: str) -> None:
    urls = devtools.requested_urls()
    assert urls, "the page made no requests at all"
    foreign = [u for u in urls if not u.startswith(origin + "/")]
    assert not foreign, f"the page fetched from elsewhere than {origin}: {foreign}"


# --- served by real nodes ---------------------------------------------------------------------


def test_page_is_served_with_a_strict_policy(cluster: Cluster) -> None:
    node = cluster.start()
    with plain_get(f"http://{node.admin}/") as (status, headers, body):
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        assert body == page_bytes()
        csp = headers["Content-Security-Policy"]
        assert csp == content_security_policy()
        assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
        script = re.search(rb"<script>(.*?)</script>", body, re.DOTALL)
        assert script is not None
        digest = base64.b64encode(hashlib.sha256(script.group(1)).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    # Nothing in the page points outside its own origin (no CDN, no web font, no analytics).
    text = body.decode()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "http://www.w3.org/2000/svg" in text  # the only URL: a namespace name, never fetched
    assert len(re.findall(r"https?://", text)) == text.count("http://www.w3.org/2000/svg")


@contextlib.contextmanager
def plain_get(url: str) -> Any:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        yield response.status, response.headers, response.read()


async def test_ring_page_shows_peers_and_marks_a_killed_one_down(
    cluster: Cluster, tmp_path: Path
) -> None:
    _need_chromium()
    peers = 4
    sip = ("--sip", "127.0.0.1:0")
    first = cluster.start(extra=sip)
    for _ in range(peers - 1):
        cluster.start([first.overlay], extra=sip)
    ids = [n.node_id for n in cluster.nodes]
    await asyncio.to_thread(wait_ring, [first], ids, 60)

    origin = f"http://{first.admin}"
    async with browser_page(origin + "/?interval=1", tmp_path / "chromium.log") as page:
        want = json.dumps(sorted(ids), separators=(",", ":"))
        await page.wait_for(
            f"(() => {{ const up = {_peers_js('up')}; "
            f"return up && JSON.stringify(up) === '{want}'; }})()",
            60,
            f"exactly the {peers} peers {[i[:8] for i in ids]} up",
        )
        assert await page.evaluate("document.body.dataset.peersDown") == "0"
        # Owned arcs: one per peer, and each range shows two replica holders.
        owners = await page.evaluate(
            "[...document.querySelectorAll('path.arc.own')].map((p) => p.dataset.owner).sort()"
        )
        assert owners == sorted(ids)
        holders = await page.evaluate(
            "[...document.querySelectorAll('path.arc.replica')].map((p) => p.dataset.holder)"
        )
        assert len(holders) == 2 * peers and all(h in ids for h in holders), holders
        await page.screenshot(tmp_path / "ring-page-up.png")

        victim = cluster.nodes[2]
        victim.kill9()
        await page.wait_for(
            f"""(() => {{
  const row = document.querySelector('#rows tr[data-node-id="{victim.node_id}"]');
  const dot = document.querySelector('#peers g.peer[data-node-id="{victim.node_id}"]');
  return row && dot && row.dataset.state === 'down' && dot.dataset.state === 'down'
    && document.body.dataset.peersUp === '{peers - 1}';
}})()""",
            60,
            f"the killed peer {victim.node_id[:8]} marked down and {peers - 1} up",
        )
        # Marked down by the node's own account (/v1/ring lists lost peers), not only by the
        # page remembering a peer that vanished from the walk.
        await page.wait_for(
            f"(window.p2pregRing.peers.find((p) => p.node_id === '{victim.node_id}') || {{}})"
            ".source === 'ring'",
            30,
            f"/v1/ring itself to report {victim.node_id[:8]} down",
        )
        note = await page.evaluate(
            f"document.querySelector('#rows tr[data-node-id=\"{victim.node_id}\"]')"
            ".lastElementChild.textContent"
        )
        assert note, "a down peer's row says why and since when"
        shot = await page.screenshot(tmp_path / "ring-page-down.png")
        assert shot.stat().st_size > 10_000
        assert page.page_errors() == []
        _check_same_origin(page, origin)
    status, ring = http_json(first.admin, "GET", "/v1/ring")
    assert status == 200, ring


# --- the page against the shapes other builds send ---------------------------------------------

PEER_IDS = [f"{i:x}" * 32 for i in (1, 4, 8, 12)]


def _fixture_ring(variant: str) -> dict[str, Any]:
    """A /v1/ring answer as nodes send it, with its down peer in one of the ways the page must
    understand; entries without most optional fields."""
    a, b, c, d = PEER_IDS
    live = [
        {"node_id": a, "reachable": True, "state": "joined", "successors": [b, d, a]},
        {"node_id": b, "state": "joined", "successors": [d, a]},  # no reachable, no counts
        {
            "node_id": d,
            "reachable": True,
            "state": "joined",
            "successors": [a, b],
            "bindings": {"primary": 7, "replica": 3},
            "sip_requests_total": 40,
            "handoffs_in_flight": 2,
        },
    ]
    down = {"node_id": c, "since": time.time() - 30, "reason": "missed pings"}
    if variant == "state":
        nodes = [*live[:2], {**down, "state": "down"}, live[2]]
        return {"start": a, "complete": True, "nodes": nodes}
    if variant == "membership":  # as p2preg.ring.merge_down lists a lost peer
        lost = {
            "node_id": c,
            "reachable": False,
            "error": "down: missed pings",
            "state": "down",
            "status": "DN",
            "down_reason": "missed pings",
            "down_since": round(time.time() - 30, 3),
            "down_for_s": 30.0,
            "reported_by": a,
            "successors": [],
        }
        return {"start": a, "complete": True, "nodes": [*live[:2], lost, live[2]], "down": 1}
    if variant == "flag":
        nodes = [*live[:2], {**down, "down": True, "reachable": False}, live[2]]
        return {"start": a, "complete": True, "nodes": nodes}
    return {"start": a, "complete": True, "nodes": live, "down": [down]}


@contextlib.asynccontextmanager
async def fixture_server(variant: str) -> AsyncIterator[str]:
    """The real page from ``add_ring_page`` beside fixed JSON answers, on a free loopback port."""
    app = web.Application()
    add_ring_page(app)

    async def ring(_: web.Request) -> web.Response:
        return web.json_response(_fixture_ring(variant))

    async def node(_: web.Request) -> web.Response:
        return web.json_response({"node_id": PEER_IDS[0], "version": "test"})

    app.router.add_get("/v1/ring", ring)
    app.router.add_get("/v1/node", node)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def _run_with_server(
    variant: str, check: Callable[[DevTools, str], Awaitable[None]], log: Path
) -> None:
    async with fixture_server(variant) as origin, browser_page(origin + "/", log) as page:
        await check(page, origin)


@pytest.mark.parametrize("variant", ["membership", "state", "flag", "list"])
async def test_ring_page_renders_down_peers_in_every_shape(variant: str, tmp_path: Path) -> None:
    _need_chromium()
    down_id = PEER_IDS[2]

    async def check(page: DevTools, origin: str) -> None:
        await page.wait_for(
            f"(() => {{ const up = {_peers_js('up')}, dn = {_peers_js('down')};"
            f" return up && dn && up.length === 3 && dn.length === 1"
            f" && dn[0] === '{down_id}'; }})()",
            30,
            "3 peers up and the fixture's down peer down",
        )
        note = await page.evaluate(
            f"document.querySelector('#rows tr[data-node-id=\"{down_id}\"]')"
            ".lastElementChild.textContent"
        )
        assert "missed pings" in note and "since" in note, note
        # The optional columns appear because one peer reports them; its handoffs are drawn.
        heads = await page.evaluate(
            "[...document.querySelectorAll('#head th')].map((t) => t.textContent)"
        )
        assert "bindings" in heads and "handoffs" in heads, heads
        assert "AORs" not in heads, heads  # nobody reports AORs: no empty column
        assert await page.evaluate("document.querySelectorAll('text.handoff').length") == 1
        await page.screenshot(tmp_path / f"ring-page-{variant}.png")
        assert page.page_errors() == []
        _check_same_origin(page, origin)

    await _run_with_server(variant, check, tmp_path / "chromium.log")
