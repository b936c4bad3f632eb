"""GET /metrics: the node's metric families through ``prometheus_client``.

Each node has its own ``CollectorRegistry`` (tests run several nodes in one process, so the
library's global registry is not used): the process collector (``process_*``), the platform
collector (``python_info``), :class:`NodeCollector` (overlay, records, replication, the event
loop, build info) and, with ``--sip``, the SIP front end. The collectors read the figures
the node keeps anyway at scrape time; nothing is counted twice on the hot paths.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from overlay.actions import PeerState
from overlay.chord import PeerView
from overlay.ids import RING, cw_distance
from p2preg import __version__
from p2preg.sip.metrics import Histogram, counter, gauge


def ring_size_estimate(view: PeerView) -> int:
    """Peers on the ring as this peer sees it. When our successor and predecessor lists overlap
    the ring is small enough that they hold every peer; otherwise extrapolate from how much of
    the ring the successor list spans (the usual Chord estimate)."""
    succ, pred = view.successors, view.predecessors
    if not succ or set(succ) & set(pred):
        return len(set(succ) | set(pred) | {view.node_id})
    span = cw_distance(view.node_id, succ[-1]) or RING
    return max(len(succ) + len(pred) + 1, round(len(succ) * RING / span))


@dataclass(frozen=True, slots=True)
class Health:
    """Whether this node is ready to serve (GET /v1/health, the readiness probe)."""

    ready: bool
    state: str
    ring_size_estimate: int
    successors: int
    replicas_wanted: int  # copies besides the primary (2: three copies in all)
    replica_targets: int  # successors the primary records can be copied to right now
    under_replicated: int  # estimate, see UNDER_REPLICATED_HELP
    transfers_busy: bool  # bulk transfers or synchronisations in flight
    problems: tuple[str, ...]

    def view(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "state": self.state,
            "ring_size_estimate": self.ring_size_estimate,
            "successors": self.successors,
            "replicas_wanted": self.replicas_wanted,
            "replica_targets": self.replica_targets,
            "under_replicated_estimate": self.under_replicated,
            "transfers_busy": self.transfers_busy,
            "problems": list(self.problems),
        }


def assess(
    view: PeerView, replicas: int, primary_records: int, transfers_busy: bool, counted: bool
) -> Health:
    """Ready = joined, with as many distinct successors to hold the copies as the ring allows
    (min(replicas, ring size - 1)), and the store counted once (it is readable)."""
    size = ring_size_estimate(view)
    targets = len([s for s in dict.fromkeys(view.successors) if s != view.node_id][:replicas])
    needed = min(replicas, size - 1)
    problems: list[str] = []
    if view.state is not PeerState.JOINED:
        problems.append(f"not joined ({view.state.value})")
    if targets < needed:
        problems.append(f"{targets} of {needed} successors to hold the replicas")
    if not counted:
        problems.append("records not counted yet")
    under = primary_records if targets < replicas else 0
    return Health(
        ready=not problems,
        state=view.state.value,
        ring_size_estimate=size,
        successors=len(view.successors),
        replicas_wanted=replicas,
        replica_targets=targets,
        under_replicated=under,
        transfers_busy=transfers_busy,
        problems=tuple(problems),
    )


UNDER_REPLICATED_HELP = (
    "Estimated records below 3 copies among those this peer is responsible for: all its "
    "primary records while it has fewer than 2 distinct successors to copy them to (a ring "
    "of 1 or 2 peers, or successors lost and not yet replaced), else 0. Copies being "
    "re-created by anti-entropy after a neighbour change are not seen here (the replicator "
    "does not expose per-record copy counts)"
)
HANDOFFS_HELP = (
    "1 while this peer's replicator has bulk transfers (join or leave handoffs, re-replication "
    "pushes) or anti-entropy synchronisations in flight, else 0 (the replicator exposes "
    "whether it is busy, not a count)"
)


class MetricsSource(Protocol):
    """What the collector reads from the node."""

    @property
    def loop_lag(self) -> Histogram: ...

    def overlay_view(self) -> PeerView: ...

    def overlay_counters(self) -> Mapping[str, int]: ...

    def kv_counters(self) -> Mapping[str, int]: ...

    def record_figures(self) -> Mapping[str, Mapping[str, int]]: ...

    def store_map_bytes(self) -> int: ...

    def health(self) -> Health: ...

    def peers_down(self) -> int: ...

    def peers_lost_total(self) -> Mapping[str, int]: ...

    def event_loop_name(self) -> str: ...


class NodeCollector(Collector):
    def __init__(self, source: MetricsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        src = self._source
        view = src.overlay_view()
        build = InfoMetricFamily("p2preg_build", "Version of this p2preg node and its runtime")
        build.add_metric(
            [],
            {
                "version": __version__,
                "python": platform.python_version(),
                "event_loop": src.event_loop_name(),
            },
        )
        yield build
        yield gauge(
            "p2preg_overlay_joined",
            "1 when this peer is joined to the ring, else 0",
            int(view.state is PeerState.JOINED),
        )
        yield gauge(
            "p2preg_overlay_successors", "Entries in the successor list", len(view.successors)
        )
        yield gauge(
            "p2preg_overlay_predecessors",
            "Entries in the predecessor list",
            len(view.predecessors),
        )
        yield gauge("p2preg_overlay_fingers", "Finger table entries filled", len(view.fingers))
        yield gauge(
            "p2preg_overlay_responsible_ppb",
            "Share of the id space this peer is responsible for, in parts per billion",
            view.responsible_ppb,
        )
        yield gauge(
            "p2preg_overlay_ring_size_estimate",
            "Peers on the ring as this peer estimates it from its neighbour lists",
            ring_size_estimate(view),
        )
        yield gauge(
            "p2preg_overlay_peers_down",
            "Peers lost lately (missed pings, link failed, left) and not seen since, within "
            "--down-window",
            src.peers_down(),
        )
        yield counter(
            "p2preg_overlay_peers_lost_total",
            "Neighbours dropped from our lists, by reason",
            {(reason,): n for reason, n in src.peers_lost_total().items()},
            ["reason"],
        )
        yield from _overlay_counters(src.overlay_counters())
        records = src.record_figures()
        yield gauge(
            "p2preg_store_records",
            "Unexpired records held, removals (tombstones) included, by role",
            {(role,): n for role, n in records["records"].items()},
            ["role"],
        )
        yield gauge(
            "p2preg_sip_bindings",
            "SIP bindings (SIP-BINDING records that exist) held, by role",
            {(role,): n for role, n in records["bindings"].items()},
            ["role"],
        )
        yield gauge(
            "p2preg_sip_aors",
            "AORs with at least one binding held, by role",
            {(role,): n for role, n in records["aors"].items()},
            ["role"],
        )
        yield gauge("p2preg_store_map_bytes", "Current size of the LMDB map", src.store_map_bytes())
        yield counter(
            "p2preg_kv_operations_total",
            "DEBUG-KV operations through the admin API, by operation and outcome",
            {(op,): n for op, n in src.kv_counters().items()},
            ["op"],
        )
        health = src.health()
        yield gauge(
            "p2preg_ready",
            "1 when GET /v1/health says ready (joined, enough successors for the replicas)",
            int(health.ready),
        )
        yield gauge("p2preg_handoffs_in_flight", HANDOFFS_HELP, int(health.transfers_busy))
        yield gauge(
            "p2preg_records_under_replicated", UNDER_REPLICATED_HELP, health.under_replicated
        )
        yield src.loop_lag.family()


def _overlay_counters(counters: Mapping[str, int]) -> Iterator[Metric]:
    """The runtime's one dict of counters, split into families of one kind each."""
    messages: dict[tuple[str, ...], int] = {}
    links: dict[tuple[str, ...], int] = {}
    replication: dict[tuple[str, ...], int] = {}
    events: dict[tuple[str, ...], int] = {}
    for name, value in counters.items():
        prefix, _, rest = name.partition(".")
        if prefix in ("sent", "received") and rest:
            messages[(prefix, rest)] = value
        elif prefix == "link" and rest:
            links[(rest,)] = value
        elif prefix == "replication" and rest:
            replication[(rest,)] = value
        else:
            events[(name,)] = value
    yield counter(
        "p2preg_overlay_messages_total",
        "RELOAD messages sent and received by this peer, by direction and message code",
        messages,
        ["direction", "code"],
    )
    yield counter(
        "p2preg_overlay_link_events_total",
        "Link layer events (connections, frames, failures), by event",
        links,
        ["event"],
    )
    yield counter(
        "p2preg_replication_events_total",
        "Replication events and records moved (stores, copies, handoffs, anti-entropy), by event",
        replication,
        ["event"],
    )
    yield counter(
        "p2preg_overlay_events_total",
        "Other overlay runtime events (decode errors, dropped messages, request outcomes, "
        "flushes), by event",
        events,
        ["event"],
    )


def make_registry(source: MetricsSource, *extra: Collector) -> CollectorRegistry:
    """A registry of this node's own: process, platform, node and any ``extra`` collectors."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(NodeCollector(source))
    for collector in extra:
        registry.register(collector)
    return registry
