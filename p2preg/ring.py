"""Seeing the ring from one peer: the ring walk and the route path, both over the overlay itself.

The walk asks each peer in turn (Probe, routed through the overlay to that peer's Node-ID) who
its successors are, and steps to the first one; it stops when it is back at the start. The route
path asks each hop in turn (RouteQuery) where it would forward a message for the key, until a
peer names itself. Neither trusts the local tables beyond the first step, so an inconsistent ring
shows up as such instead of being papered over.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from overlay.chord import PeerView
from overlay.ids import cw_distance, id_hex, parse_id, resource_id
from overlay.messages import (
    Destination,
    ErrorResponse,
    Message,
    MessageBody,
    NodeDestination,
    ProbeAns,
    ProbeInformationType,
    ProbeReq,
    ResourceDestination,
    RouteQueryAns,
    RouteQueryReq,
)
from overlay.probe import decode_probe_extras
from overlay.runtime import OverlayRequestError
from p2preg.membership import decode_lost

MAX_RING_NODES = 4096  # a walk longer than this is a routing loop, not a ring
MAX_ROUTE_HOPS = 128  # TTL is 100; anything past that is a loop
PROBE_TIMEOUT = 3.0  # s per peer: a dead peer must not stall the whole walk for a request lifetime

JsonDict = dict[str, Any]

# Status of a ring entry, as `p2preg ring` shows it (nodetool's UN/DN in spirit).
STATUS_UP = "UP"  # answered the walk's Probe
STATUS_DOWN = "DN"  # lost lately (missed pings, link failed, left), with since and why
STATUS_UNREACHABLE = "??"  # named by a successor list but did not answer; not known lost


class Overlay(Protocol):
    """What walking and routing queries need of this node's overlay (``OverlayRuntime``)."""

    @property
    def node_id(self) -> int: ...

    def view(self) -> PeerView: ...

    def next_hop(self, destination: Destination) -> int | None: ...

    async def request(
        self,
        destinations: Sequence[Destination],
        body: MessageBody,
        timeout: float | None = None,
    ) -> Message: ...


class RingQueryError(Exception):
    """A peer on the way did not answer, or answered with an error."""


class BadKey(ValueError):
    """The route key is not a usable resource name or id."""


def key_to_resource(key: str) -> tuple[int, str | None]:
    """Map a route key to (Resource-ID, resource name or None when the key was an id).

    ``0x`` + 32 hex digits, or exactly 32 hex digits, is an id; anything else is a resource name
    (an AOR: ``sip:``/``sips:`` is dropped, since RFC 7904 hashes the AOR without its scheme).
    """
    text = key.strip()
    if not text:
        raise BadKey("empty key")
    lowered = text.lower()
    if lowered.startswith("0x"):
        try:
            return parse_id(text), None
        except ValueError as exc:
            raise BadKey(str(exc)) from None
    if len(text) == 32 and all(c in "0123456789abcdef" for c in lowered):
        return int(lowered, 16), None
    for scheme in ("sip:", "sips:"):
        if lowered.startswith(scheme):
            text = text[len(scheme) :]
            break
    if not text:
        raise BadKey("empty resource name")
    return resource_id(text), text


def _addr_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _count_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _id_list(value: object) -> list[str]:
    if not isinstance(value, list | tuple):
        return []
    return [id_hex(v) for v in value if isinstance(v, int)]


def self_entry(view: PeerView, extras: JsonDict, num_resources: int) -> JsonDict:
    """This peer's own ring entry, from its local view (no need to probe ourselves)."""
    return {
        "node_id": id_hex(view.node_id),
        "reachable": True,
        "overlay": _addr_or_none(extras.get("overlay")) or str(view.address),
        "admin": _addr_or_none(extras.get("admin")),
        "sip": _addr_or_none(extras.get("sip")),
        "state": view.state.value,
        "successors": [id_hex(s) for s in view.successors],
        "predecessors": [id_hex(p) for p in view.predecessors],
        "responsible_ppb": view.responsible_ppb,
        "num_resources": num_resources,
        "primary_records": _count_or_none(extras.get("primary_records")),
        "replica_records": _count_or_none(extras.get("replica_records")),
        "aors": _count_or_none(extras.get("aors")),
        "bindings": _count_or_none(extras.get("bindings")),
        "version": _addr_or_none(extras.get("version")),
        "uptime_s": round(view.uptime, 3),
        "status": STATUS_UP,
    }


def probe_entry(node_id: int, answer: ProbeAns) -> tuple[JsonDict, list[int]]:
    """A ring entry from a peer's ProbeAns, and its successor ids (to step the walk)."""
    numbers: dict[int, int] = {}
    for info in answer.probe_info:
        if isinstance(info.value, int):
            numbers[info.type] = info.value
    extras = decode_probe_extras(answer.probe_info)
    successors_raw = extras.get("successors")
    successors = (
        [v for v in successors_raw if isinstance(v, int)]
        if isinstance(successors_raw, list | tuple)
        else []
    )
    state = extras.get("state")
    entry: JsonDict = {
        "node_id": id_hex(node_id),
        "reachable": True,
        "overlay": _addr_or_none(extras.get("overlay")),
        "admin": _addr_or_none(extras.get("admin")),
        "sip": _addr_or_none(extras.get("sip")),
        "state": state if isinstance(state, str) else None,
        "successors": [id_hex(s) for s in successors],
        "predecessors": _id_list(extras.get("predecessors")),
        "responsible_ppb": numbers.get(ProbeInformationType.RESPONSIBLE_SET),
        "num_resources": numbers.get(ProbeInformationType.NUM_RESOURCES),
        "primary_records": _count_or_none(extras.get("primary_records")),
        "replica_records": _count_or_none(extras.get("replica_records")),
        "aors": _count_or_none(extras.get("aors")),
        "bindings": _count_or_none(extras.get("bindings")),
        "version": _addr_or_none(extras.get("version")),
        "uptime_s": numbers.get(ProbeInformationType.UPTIME),
        "status": STATUS_UP,
    }
    lost = extras.get("lost")
    if isinstance(lost, str) and lost:
        entry["_lost"] = lost  # what this peer saw lost; merged by merge_down, then dropped
    return entry, successors


def unreachable_entry(node_id: int, error: str) -> JsonDict:
    return {
        "node_id": id_hex(node_id),
        "reachable": False,
        "error": error,
        "overlay": None,
        "admin": None,
        "sip": None,
        "state": None,
        "successors": [],
        "predecessors": [],
        "responsible_ppb": None,
        "num_resources": None,
        "primary_records": None,
        "replica_records": None,
        "aors": None,
        "bindings": None,
        "version": None,
        "uptime_s": None,
        "status": STATUS_UNREACHABLE,
    }


def down_entry(lost: JsonDict) -> JsonDict:
    """A peer lost lately (see p2preg.membership), as a ring entry: listed, marked down."""
    entry = unreachable_entry(int(lost["node_id"], 16), f"down: {lost['down_reason']}")
    entry.update(
        state="down",
        status=STATUS_DOWN,
        overlay=lost.get("overlay"),
        down_reason=lost["down_reason"],
        down_since=lost["down_since"],
        down_for_s=lost["down_for_s"],
        reported_by=lost.get("reported_by"),
    )
    return entry


def merge_down(walk: JsonDict, lost: list[JsonDict]) -> list[int]:
    """Put the peers lost lately into the walk's node list, in ring order from its start:
    an unreachable entry of a lost peer becomes a down entry; a peer that answered the walk
    is not down (its id is returned, so the caller can forget the loss). ``lost`` holds
    :meth:`LostPeer.view` dicts, ours first; peers' own reports (``_lost`` in their entries)
    are added after ours."""
    nodes: list[JsonDict] = walk["nodes"]
    now = time.time()
    known = {int(e["node_id"], 16): e for e in lost}
    for node in nodes:
        reported = node.pop("_lost", None)
        if reported is None:
            continue
        for peer in decode_lost(reported, int(node["node_id"], 16)):
            known.setdefault(peer.node_id, peer.view(now))
    answered = {int(n["node_id"], 16) for n in nodes if n["reachable"]}
    seen_again = [i for i in known if i in answered]
    merged = [n for n in nodes if n["reachable"] or int(n["node_id"], 16) not in known]
    merged += [down_entry(e) for i, e in known.items() if i not in answered]
    start = int(walk["start"], 16)
    merged.sort(key=lambda n: cw_distance(start, int(n["node_id"], 16)))
    walk["nodes"] = merged
    walk["up"] = sum(1 for n in merged if n["status"] == STATUS_UP)
    walk["down"] = sum(1 for n in merged if n["status"] == STATUS_DOWN)
    return seen_again


async def probe(rt: Overlay, node_id: int, timeout: float = PROBE_TIMEOUT) -> ProbeAns:
    """Probe one peer through the overlay; raises RingQueryError when it does not answer."""
    body = ProbeReq(
        requested_info=(
            ProbeInformationType.RESPONSIBLE_SET,
            ProbeInformationType.NUM_RESOURCES,
            ProbeInformationType.UPTIME,
            ProbeInformationType.EXP_PROBE,
        )
    )
    answer = await _ask(rt, NodeDestination(node_id), body, timeout)
    if not isinstance(answer, ProbeAns):
        raise RingQueryError(f"peer {id_hex(node_id)} answered Probe with {type(answer).__name__}")
    return answer


async def _ask(rt: Overlay, dest: Destination, body: Any, timeout: float) -> object:
    try:
        response = await rt.request([dest], body, timeout=timeout)
    except OverlayRequestError as exc:
        raise RingQueryError(str(exc) or type(exc).__name__) from None
    if isinstance(response.body, ErrorResponse):
        raise RingQueryError(f"error {response.body.error_code}: {response.body.text}")
    return response.body


async def walk_ring(rt: Overlay, own: JsonDict, max_nodes: int = MAX_RING_NODES) -> JsonDict:
    """Walk the ring clockwise from this peer. ``own`` is this peer's entry (see self_entry).

    A peer that does not answer is listed as unreachable and the walk carries on with the next
    id in the last answering peer's successor list.
    """
    started = time.monotonic()
    start = rt.node_id
    nodes: list[JsonDict] = [own]
    visited = {start}
    pending = [int(s, 16) for s in own["successors"]]
    closed = False
    loop_at: str | None = None
    while len(nodes) < max_nodes:
        if not pending:
            break
        candidate = pending.pop(0)
        if candidate == start:
            closed = True
            break
        if candidate in visited:
            loop_at = id_hex(candidate)
            break
        visited.add(candidate)
        try:
            answer = await probe(rt, candidate)
        except RingQueryError as exc:
            nodes.append(unreachable_entry(candidate, str(exc)))
            continue  # keep stepping through the previous peer's remaining successors
        entry, successors = probe_entry(candidate, answer)
        nodes.append(entry)
        pending = successors
    if not nodes[0]["successors"]:
        closed = len(nodes) == 1  # a peer alone is its own ring
    return {
        "start": id_hex(start),
        "complete": closed,
        "loop_at": loop_at,
        "elapsed_s": round(time.monotonic() - started, 3),
        "nodes": nodes,
    }


async def route_path(
    rt: Overlay, key: str, admin: str | None = None, max_hops: int = MAX_ROUTE_HOPS
) -> JsonDict:
    """The hops a message for ``key`` takes from this peer to the responsible peer.

    Raises BadKey for an unusable key. A hop that does not answer ends the path with an error
    entry rather than an exception, so the caller still sees how far it got.
    """
    rid, name = key_to_resource(key)
    dest = ResourceDestination(rid)
    view = rt.view()
    hops: list[JsonDict] = [
        {"node_id": id_hex(view.node_id), "overlay": str(view.address), "admin": admin}
    ]
    result: JsonDict = {
        "key": key,
        "resource_name": name,
        "resource_id": id_hex(rid),
        "hops": hops,
        "responsible": None,
        "error": None,
    }
    current = rt.node_id
    nxt = rt.next_hop(dest)
    seen = {current}
    while nxt is not None:
        if len(hops) >= max_hops or nxt in seen:
            result["error"] = f"routing loop at {id_hex(nxt)}"
            return result
        seen.add(nxt)
        hop: JsonDict = {"node_id": id_hex(nxt), "overlay": None, "admin": None}
        known = view.addresses.get(nxt)
        if known is not None:
            hop["overlay"] = str(known)
        hops.append(hop)
        try:
            answer = await _ask(rt, NodeDestination(nxt), RouteQueryReq(False, dest), PROBE_TIMEOUT)
            if not isinstance(answer, RouteQueryAns):
                raise RingQueryError(f"answered RouteQuery with {type(answer).__name__}")
            # Its addresses are only in its own Probe answer (Update carries no addresses).
            entry, _ = probe_entry(nxt, await probe(rt, nxt))
            hop["overlay"] = entry["overlay"] or hop["overlay"]
            hop["admin"] = entry["admin"]
        except RingQueryError as exc:
            result["error"] = f"hop {id_hex(nxt)} did not answer: {exc}"
            return result
        current, nxt = nxt, answer.next_peer
        if nxt == current:
            break
    result["responsible"] = id_hex(current)
    for hop in hops:
        hop["responsible"] = hop["node_id"] == result["responsible"]
    return result
