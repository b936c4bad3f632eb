"""The admin HTTP API (aiohttp, JSON) that the ``p2preg`` CLI and operators talk to.

GET  /v1/node         this peer: id, addresses, state, uptime, neighbours, fingers, share
GET  /v1/ring         the ring walked from this peer, in ring order (Probe over the overlay)
GET  /v1/route/{key}  the hop path to the peer responsible for an AOR or a 32-hex id
POST /v1/leave        leave the ring gracefully; the process then exits 0
GET  /metrics         Prometheus text: the overlay's counters and neighbour counts
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from overlay.actions import Address, PeerState
from overlay.chord import PeerView
from overlay.ids import id_hex
from p2preg import __version__
from p2preg.ring import BadKey, route_path, self_entry, walk_ring

if TYPE_CHECKING:
    from p2preg.node import Node

log = logging.getLogger("p2preg.admin")

NODE_KEY: web.AppKey[Node] = web.AppKey("node")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _neighbour(view: PeerView, node_id: int) -> dict[str, Any]:
    known = view.addresses.get(node_id)
    return {"node_id": id_hex(node_id), "overlay": str(known) if known else None}


def node_info(node: Node) -> dict[str, Any]:
    view = node.rt.view()
    return {
        "node_id": id_hex(view.node_id),
        "overlay_name": node.options.config.overlay_name,
        "version": __version__,
        "overlay": str(node.overlay_address or view.address),
        "admin": str(node.admin_address) if node.admin_address else None,
        "sip": str(node.sip_address) if node.sip_address else None,
        "state": view.state.value,
        "uptime_s": round(view.uptime, 3),
        "responsible_ppb": view.responsible_ppb,
        "predecessors": [_neighbour(view, p) for p in view.predecessors],
        "successors": [_neighbour(view, s) for s in view.successors],
        "fingers": [{"index": i, "node_id": id_hex(n)} for i, n in view.fingers],
        "counters": dict(node.rt.counters),
    }


def _require_joined(node: Node) -> web.Response | None:
    state = node.rt.state
    if state is PeerState.JOINED:
        return None
    return _error(503, f"this peer is {state.value}, not joined: it cannot route yet (or any more)")


async def get_node(request: web.Request) -> web.Response:
    return web.json_response(node_info(request.app[NODE_KEY]))


async def get_ring(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    refusal = _require_joined(node)
    if refusal is not None:
        return refusal
    own = self_entry(node.rt.view(), node.exp_probe(), 0)
    return web.json_response(await walk_ring(node.rt, own))


async def get_route(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    refusal = _require_joined(node)
    if refusal is not None:
        return refusal
    key = request.match_info["key"]
    try:
        result = await route_path(
            node.rt, key, admin=str(node.admin_address) if node.admin_address else None
        )
    except BadKey as exc:
        return _error(400, f"bad key {key!r}: {exc}")
    status = 200 if result["error"] is None else 502
    return web.json_response(result, status=status)


async def post_leave(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    # Answer first: the leave closes this very server once the overlay has said goodbye.
    asyncio.get_running_loop().call_soon(node.request_leave, "POST /v1/leave")
    return web.json_response({"node_id": id_hex(node.node_id), "leaving": True}, status=202)


async def get_metrics(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    view = node.rt.view()
    lines = [
        "# TYPE p2preg_overlay_joined gauge",
        f"p2preg_overlay_joined {int(view.state is PeerState.JOINED)}",
        "# TYPE p2preg_overlay_successors gauge",
        f"p2preg_overlay_successors {len(view.successors)}",
        "# TYPE p2preg_overlay_predecessors gauge",
        f"p2preg_overlay_predecessors {len(view.predecessors)}",
        "# TYPE p2preg_overlay_fingers gauge",
        f"p2preg_overlay_fingers {len(view.fingers)}",
        "# TYPE p2preg_overlay_responsible_ppb gauge",
        f"p2preg_overlay_responsible_ppb {view.responsible_ppb}",
        "# TYPE p2preg_overlay_events_total counter",
    ]
    for name, value in sorted(node.rt.counters.items()):
        label = name.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'p2preg_overlay_events_total{{event="{label}"}} {value}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure is JSON with a message, never aiohttp's HTML page or a bare 500."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason or "error", path=request.path)
    except Exception as exc:
        log.exception("admin request %s %s failed", request.method, request.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def make_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[NODE_KEY] = node
    app.router.add_get("/v1/node", get_node)
    app.router.add_get("/v1/ring", get_ring)
    app.router.add_get("/v1/route/{key:.+}", get_route)
    app.router.add_post("/v1/leave", post_leave)
    app.router.add_get("/metrics", get_metrics)
    return app


class AdminServer:
    def __init__(self, node: Node) -> None:
        self._runner = web.AppRunner(make_app(node), access_log=None)

    async def start(self, address: Address) -> Address:
        await self._runner.setup()
        site = web.TCPSite(self._runner, address.host, address.port)
        await site.start()
        bound = self._runner.addresses[0]
        return Address(str(bound[0]), int(bound[1]))

    async def stop(self) -> None:
        await self._runner.cleanup()
