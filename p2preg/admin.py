"""The admin HTTP API (aiohttp, JSON) that the ``p2preg`` CLI and operators talk to.

GET  /v1/node         this peer: id, addresses, state, uptime, neighbours, fingers, share
GET  /v1/ring         the ring walked from this peer, in ring order (Probe over the overlay)
GET  /v1/route/{key}  the hop path to the peer responsible for an AOR or a 32-hex id
GET  /v1/records      what this peer holds for one resource (?resource=HEX, ?aor=AOR, ?name=NAME)
GET  /v1/records/all  every record this peer holds, one compact row each (?role=, ?kind=)
GET  /v1/aor/{aor}    an AOR's bindings (through the overlay), responsible peer and replicas
DELETE /v1/aor/{aor}  remove one binding (?contact=URI) or all of them, through the overlay
GET  /v1/aors         a page of the AORs THIS peer is responsible for (?after=HEX&limit=N&domain=D)
GET  /v1/kv/{name}    fetch the DEBUG-KV value of a name through the overlay
PUT  /v1/kv/{name}    store one (body = value, ?lifetime=SECONDS) through the overlay
POST /v1/leave        leave the ring gracefully; the process then exits 0
GET  /v1/health       readiness: 200 when joined and holding its replicas, else 503
GET  /metrics         Prometheus text (prometheus_client): build info, process metrics, the
                      overlay, records held, replication, and the SIP front end
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from overlay.actions import Address, PeerState
from overlay.chord import PeerView
from overlay.ids import id_hex, parse_id, resource_id
from overlay.messages import ErrorCode
from p2preg import __version__
from p2preg.kinds import kind_info, kind_name
from p2preg.kv import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    GetResult,
    KvRefused,
    RingUnavailable,
)
from p2preg.ring import (
    BadKey,
    Overlay,
    RingQueryError,
    key_to_resource,
    merge_down,
    probe,
    probe_entry,
    route_path,
    self_entry,
    walk_ring,
)
from p2preg.ring_client import now_ms
from p2preg.sip.binding import Binding
from p2preg.sip.bindings_store import OverlayUnavailable, StoreRefused
from p2preg.sip.uri import UriError, aor_resource_name, canonical_aor, parse_sip_uri
from p2preg.usrloc import DEFAULT_PAGE, MAX_PAGE, PageRequest, aor_page, removal
from storage import Record, Role

if TYPE_CHECKING:
    from p2preg.kv import KvClient
    from p2preg.metrics import Health
    from p2preg.node import NodeOptions, RecordCounts
    from p2preg.sip.bindings_store import OverlayBindings
    from p2preg.sip.service import SipService
    from storage import RecordStore

log = logging.getLogger("p2preg.admin")
T = TypeVar("T")


class AdminOverlay(Overlay, Protocol):
    """The node's overlay as the admin API sees it (``OverlayRuntime``)."""

    @property
    def state(self) -> PeerState: ...

    @property
    def counters(self) -> dict[str, int]: ...

    def is_responsible(self, resource: int) -> bool: ...


class AdminNode(Protocol):
    """What the admin API needs of a node (``p2preg.node.Node``), and nothing deeper: the
    handlers never reach through it into the overlay's or the store's own parts."""

    node_id: int
    options: NodeOptions
    counts: RecordCounts
    replicas: int
    kv: KvClient
    sip: SipService | None
    store: RecordStore
    admin_address: Address | None
    overlay_address: Address | None

    @property
    def overlay(self) -> AdminOverlay: ...

    @property
    def sip_address(self) -> Address | None: ...

    @property
    def metrics(self) -> CollectorRegistry: ...

    def exp_probe(self) -> dict[str, object]: ...

    async def read_store(self, fn: Callable[..., T], *args: object) -> T: ...

    async def refresh_counts(self) -> RecordCounts: ...

    def bindings(self) -> OverlayBindings: ...

    def responsible_span(self) -> tuple[int, int] | None: ...

    def down_peers(self) -> list[dict[str, object]]: ...

    def mark_seen(self, node_id: int) -> None: ...

    def peers_down(self) -> int: ...

    def health(self) -> Health: ...

    def request_leave(self, reason: str) -> None: ...


NODE_KEY: web.AppKey[AdminNode] = web.AppKey("node")
# Every name we expose is a classic one (no UTF-8 escaping needed), so the text is the 0.0.4
# format that every Prometheus version scrapes; newer prometheus_client would announce 1.0.0.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _neighbour(view: PeerView, node_id: int) -> dict[str, Any]:
    known = view.addresses.get(node_id)
    return {"node_id": id_hex(node_id), "overlay": str(known) if known else None}


def node_info(node: AdminNode) -> dict[str, Any]:
    view = node.overlay.view()
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
        "primary_records": node.counts.primary,
        "replica_records": node.counts.replica,
        "aors": node.counts.aors_primary,
        "bindings": node.counts.bindings_primary,
        "replica_aors": node.counts.aors_replica,
        "replica_bindings": node.counts.bindings_replica,
        "peers_down": node.peers_down(),
        "durability": node.options.durability.value,
        "counters": dict(node.overlay.counters),
        "sip_metrics": node.sip.metrics() if node.sip is not None else None,
    }


def _require_joined(node: AdminNode) -> web.Response | None:
    state = node.overlay.state
    if state is PeerState.JOINED:
        return None
    return _error(503, f"this peer is {state.value}, not joined: it cannot route yet (or any more)")


async def get_node(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    await node.refresh_counts()
    return web.json_response(node_info(node))


async def get_ring(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    refusal = _require_joined(node)
    if refusal is not None:
        return refusal
    counts = await node.refresh_counts()
    own = self_entry(node.overlay.view(), node.exp_probe(), counts.resources)
    walk = await walk_ring(node.overlay, own)
    for node_id in merge_down(walk, node.down_peers()):
        node.mark_seen(node_id)
    walk["down_window_s"] = node.options.down_window
    return web.json_response(walk)


# --- records held here ------------------------------------------------------------------------


def _role_name(role: Role) -> str:
    return role.name.lower()


def _value_view(kind: int, value: bytes) -> dict[str, Any]:
    info = kind_info(kind)
    if info is not None and info.text_values:
        try:
            return {"value": value.decode("utf-8")}
        except UnicodeDecodeError:
            return {"value_hex": value.hex()}
    return {}


def record_view(rec: Record, now_ms: int) -> dict[str, Any]:
    return {
        "role": _role_name(rec.role),
        "kind": rec.kind,
        "kind_name": kind_name(rec.kind),
        "key": rec.key.hex(),
        "storage_time": rec.storage_time,
        "lifetime": rec.lifetime,
        "expires": rec.expiry_ms,
        "expired": rec.expiry_ms <= now_ms,
        "exists": rec.exists,
        "value_size": len(rec.value),
        **_value_view(rec.kind, rec.value),
    }


def _records_target(request: web.Request) -> tuple[int, str | None]:
    """The Resource-ID asked for by ?resource=HEX, ?aor=AOR or ?name=NAME (exactly one)."""
    query = request.query
    given = [k for k in ("resource", "aor", "name") if k in query]
    if len(given) != 1:
        raise web.HTTPBadRequest(reason="give exactly one of ?resource=HEX, ?aor=AOR, ?name=NAME")
    which = given[0]
    text = query[which]
    if which == "resource":
        try:
            return parse_id(text), None
        except ValueError as exc:
            raise web.HTTPBadRequest(reason=f"bad resource id: {exc}") from None
    if not text:
        raise web.HTTPBadRequest(reason=f"empty {which}")
    if which == "aor":
        try:
            return key_to_resource(text)
        except BadKey as exc:
            raise web.HTTPBadRequest(reason=f"bad AOR {text!r}: {exc}") from None
    return resource_id(text), text


async def get_records(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    rid, name = _records_target(request)
    now = now_ms()
    records = await node.read_store(node.store.records_for, rid)
    return web.json_response(
        {
            "node_id": id_hex(node.node_id),
            "resource_id": id_hex(rid),
            "resource_name": name,
            "responsible": node.overlay.is_responsible(rid),
            "now_ms": now,
            "records": [record_view(r, now) for r in records],
        }
    )


ALL_COLUMNS = ("resource_id", "kind", "key", "storage_time", "role", "exists")


def _all_rows(node: AdminNode, role: Role | None, kind: int | None, now: int) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for rec in node.store.scan_range(0, 0, now, role):
        if kind is None or rec.kind == kind:
            rows.append(
                [
                    id_hex(rec.resource),
                    rec.kind,
                    rec.key.hex(),
                    rec.storage_time,
                    _role_name(rec.role),
                    rec.exists,
                ]
            )
    return rows


async def get_all_records(request: web.Request) -> web.Response:
    """Every unexpired record held here (tombstones too) as compact rows, for checking copies
    across a ring without one request per record."""
    node = request.app[NODE_KEY]
    role: Role | None = None
    kind: int | None = None
    if "role" in request.query:
        try:
            role = Role[request.query["role"].upper()]
        except KeyError:
            raise web.HTTPBadRequest(reason="role must be primary or replica") from None
    if "kind" in request.query:
        try:
            kind = int(request.query["kind"], 0)
        except ValueError:
            raise web.HTTPBadRequest(reason="kind must be an integer (0x... for hex)") from None
    now = now_ms()
    rows = await node.read_store(_all_rows, node, role, kind, now)
    return web.json_response(
        {
            "node_id": id_hex(node.node_id),
            "now_ms": now,
            "columns": list(ALL_COLUMNS),
            "count": len(rows),
            "records": rows,
        }
    )


# --- DEBUG-KV through the overlay -------------------------------------------------------------


def _peer(node_id: int | None) -> str | None:
    return None if node_id is None else id_hex(node_id)


def _kv_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not name:
        raise web.HTTPBadRequest(reason="empty name")
    return name


def _kv_view(result: GetResult) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": result.name,
        "resource_id": id_hex(result.resource),
        "responsible": _peer(result.responsible),
        "found": result.value is not None,
        "generation": result.generation,
        "attempts": result.attempts,
    }
    if result.value is not None:
        assert result.storage_time is not None and result.lifetime is not None
        view.update(
            value_size=len(result.value),
            storage_time=result.storage_time,
            lifetime=result.lifetime,
            expires=result.storage_time + result.lifetime * 1000,
        )
        try:
            view["value"] = result.value.decode("utf-8")
        except UnicodeDecodeError:
            view["value_hex"] = result.value.hex()
    return view


async def get_kv(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    refusal = _require_joined(node)
    if refusal is not None:
        return refusal
    name = _kv_name(request)
    try:
        result = await node.kv.get(name)
    except RingUnavailable as exc:
        return _error(503, f"cannot fetch {name!r}: {exc}")
    except KvRefused as exc:
        return _error(502, f"fetching {name!r} was refused: {exc}")
    view = _kv_view(result)
    if result.value is None:
        return web.json_response({"error": f"nothing stored under {name!r}", **view}, status=404)
    return web.json_response(view)


async def put_kv(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    refusal = _require_joined(node)
    if refusal is not None:
        return refusal
    name = _kv_name(request)
    lifetime = DEFAULT_LIFETIME
    if "lifetime" in request.query:
        text = request.query["lifetime"]
        if not text.isdigit() or not 0 < int(text) <= MAX_LIFETIME:
            raise web.HTTPBadRequest(reason=f"lifetime must be 1..{MAX_LIFETIME} seconds")
        lifetime = int(text)
    value = await request.read()
    try:
        result = await node.kv.put(name, value, lifetime)
    except RingUnavailable as exc:
        return _error(503, f"cannot store {name!r}: {exc}")
    except KvRefused as exc:
        status = 413 if exc.code == ErrorCode.DATA_TOO_LARGE else 502
        return _error(status, f"storing {name!r} was refused: {exc}")
    return web.json_response(
        {
            "name": name,
            "resource_id": id_hex(result.resource),
            "responsible": _peer(result.responsible),
            "replicas": [id_hex(r) for r in result.replicas],
            "generation": result.generation,
            "storage_time": result.storage_time,
            "lifetime": result.lifetime,
            "value_size": len(value),
            "attempts": result.attempts,
        }
    )


async def get_route(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    refusal = _require_joined(node)
    if refusal is not None:
        return refusal
    key = request.match_info["key"]
    try:
        result = await route_path(
            node.overlay, key, admin=str(node.admin_address) if node.admin_address else None
        )
    except BadKey as exc:
        return _error(400, f"bad key {key!r}: {exc}")
    status = 200 if result["error"] is None else 502
    return web.json_response(result, status=status)


# --- an AOR's bindings, like `kamctl ul show` ------------------------------------------------


def _canonical_aor(text: str) -> str:
    raw = text.strip()
    if ":" not in raw.split("@", 1)[0]:
        raw = "sip:" + raw  # alice@example.com means sip:alice@example.com
    try:
        return canonical_aor(parse_sip_uri(raw))
    except UriError as exc:
        raise web.HTTPBadRequest(reason=f"bad AOR {text!r}: {exc}") from None


async def _peer_entry(node: AdminNode, node_id: int) -> dict[str, Any]:
    """Id and addresses of a peer (from its Probe answer), or just its id when it is silent."""
    if node_id == node.node_id:
        return {
            "node_id": id_hex(node_id),
            "overlay": str(node.overlay_address) if node.overlay_address else None,
            "admin": str(node.admin_address) if node.admin_address else None,
            "sip": str(node.sip_address) if node.sip_address else None,
        }
    try:
        entry, _ = probe_entry(node_id, await probe(node.overlay, node_id))
    except RingQueryError as exc:
        return {"node_id": id_hex(node_id), "overlay": None, "admin": None, "sip": None,
                "error": str(exc)}  # fmt: skip
    return {k: entry[k] for k in ("node_id", "overlay", "admin", "sip")}


async def _replica_ids(node: AdminNode, owner: int) -> list[int]:
    """The owner's first successors: where the replication layer keeps its copies."""
    count = node.replicas
    if owner == node.node_id:
        successors = list(node.overlay.view().successors)
    else:
        try:
            _, successors = probe_entry(owner, await probe(node.overlay, owner))
        except RingQueryError:
            return []
    return [s for s in successors if s != owner][:count]


async def get_aor(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    refusal = _require_joined(node)
    if refusal is not None:
        return refusal
    aor = _canonical_aor(request.match_info["aor"])
    name = aor_resource_name(aor)
    try:
        state = await node.bindings().fetch(name)
    except OverlayUnavailable as exc:
        return _error(503, f"cannot fetch the bindings of {aor}: {exc}")
    except StoreRefused as exc:
        return _error(502, f"fetching the bindings of {aor} was refused: {exc}")
    now = time.time()
    route = await route_path(node.overlay, aor, admin=str(node.admin_address))
    responsible: dict[str, Any] | None = None
    replicas: list[dict[str, Any]] = []
    if route["responsible"] is not None:
        owner = parse_id(route["responsible"])
        responsible = await _peer_entry(node, owner)
        replicas = [await _peer_entry(node, r) for r in await _replica_ids(node, owner)]
    live = sorted(
        (b for b in state.bindings.values() if b.live(now)),
        key=lambda b: (-b.q_value, b.expires_at),
    )
    return web.json_response(
        {
            "aor": aor,
            "resource_name": name,
            "resource_id": route["resource_id"],
            "responsible": responsible,
            "replicas": replicas,
            "route_error": route["error"],
            "generation": state.generation,
            "now": now,
            "bindings": [b.describe(now) for b in live],
        }
    )


# --- usrloc: every AOR, paged per peer; removing bindings -----------------------------------


def _page_request(request: web.Request) -> PageRequest:
    query = request.query
    after: int | None = None
    if query.get("after"):
        try:
            after = parse_id(query["after"])
        except ValueError as exc:
            raise web.HTTPBadRequest(reason=f"bad cursor: {exc}") from None
    text = query.get("limit", str(DEFAULT_PAGE))
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise web.HTTPBadRequest(reason=f"limit must be 1..{MAX_PAGE} AORs")
    domain = query.get("domain") or None
    return PageRequest(after, int(text), domain)


async def get_aors(request: web.Request) -> web.Response:
    """A page of the AORs this peer is responsible for, with their live bindings."""
    node = request.app[NODE_KEY]
    page = _page_request(request)
    span = node.responsible_span()
    result = await node.read_store(aor_page, node.store, span, page, now_ms())
    return web.json_response(
        {
            "node_id": id_hex(node.node_id),
            "responsible": span is not None,
            "aors": result.aors,
            "next": None if result.next is None else id_hex(result.next),
            "scanned": result.scanned,
        }
    )


async def delete_aor(request: web.Request) -> web.Response:
    """Remove one binding (?contact=URI) or all bindings of an AOR, through the ring."""
    node = request.app[NODE_KEY]
    refusal = _require_joined(node)
    if refusal is not None:
        return refusal
    aor = _canonical_aor(request.match_info["aor"])
    contact = request.query.get("contact") or None
    removed: list[Binding] = []
    try:
        decision = await node.bindings().update(
            aor_resource_name(aor), removal(contact, removed), time.time
        )
    except OverlayUnavailable as exc:
        return _error(503, f"cannot update the bindings of {aor}: {exc}")
    except StoreRefused as exc:
        return _error(502, f"removing bindings of {aor} was refused: {exc}")
    now = time.time()
    body = {
        "aor": aor,
        "contact": contact,
        "removed": [b.uri for b in removed],
        "remaining": [b.describe(now) for b in decision.bindings],
    }
    if not removed:
        what = f"no binding with contact {contact}" if contact else "no bindings"
        return web.json_response({"error": f"{aor} has {what}", **body}, status=404)
    return web.json_response(body)


async def post_leave(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    # Answer first: the leave closes this very server once the overlay has said goodbye.
    asyncio.get_running_loop().call_soon(node.request_leave, "POST /v1/leave")
    return web.json_response({"node_id": id_hex(node.node_id), "leaving": True}, status=202)


async def get_metrics(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    body = generate_latest(node.metrics)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def get_health(request: web.Request) -> web.Response:
    """Readiness: 200 when joined with enough successors to hold the replicas, else 503."""
    node = request.app[NODE_KEY]
    health = node.health()
    return web.json_response(
        {"node_id": id_hex(node.node_id), **health.view()}, status=200 if health.ready else 503
    )


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


def make_app(node: AdminNode) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[NODE_KEY] = node
    app.router.add_get("/v1/node", get_node)
    app.router.add_get("/v1/ring", get_ring)
    app.router.add_get("/v1/route/{key:.+}", get_route)
    app.router.add_get("/v1/records", get_records)
    app.router.add_get("/v1/records/all", get_all_records)
    app.router.add_get("/v1/aor/{aor:.+}", get_aor)
    app.router.add_delete("/v1/aor/{aor:.+}", delete_aor)
    app.router.add_get("/v1/aors", get_aors)
    app.router.add_get("/v1/kv/{name:.+}", get_kv)
    app.router.add_put("/v1/kv/{name:.+}", put_kv)
    app.router.add_post("/v1/leave", post_leave)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/v1/health", get_health)
    from p2preg.ring_page import add_ring_page  # GET /: the live ring page (ring_page.py)

    add_ring_page(app)
    return app


class AdminServer:
    def __init__(self, node: AdminNode) -> None:
        self._runner = web.AppRunner(make_app(node), access_log=None)

    async def start(self, address: Address) -> Address:
        await self._runner.setup()
        site = web.TCPSite(self._runner, address.host, address.port)
        await site.start()
        bound = self._runner.addresses[0]
        return Address(str(bound[0]), int(bound[1]))

    async def stop(self) -> None:
        await self._runner.cleanup()
