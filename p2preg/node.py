"""One p2preg node: the overlay runtime, the admin API and the process life cycle around them."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import gc
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import lmdb

from overlay.actions import (
    Address,
    Event,
    LossReason,
    NeighborsChanged,
    PeerLost,
    PeerState,
    StateChanged,
)
from overlay.chord import PeerView
from overlay.config import ChordConfig
from overlay.ids import ID_BYTES, id_hex, parse_id
from overlay.replication_backend import ReplicationConfig
from overlay.runtime import OverlayRuntime
from p2preg import __version__
from p2preg.admin import AdminServer
from p2preg.kinds import KIND_LIMITS, SIP_BINDING
from p2preg.kv import KvClient
from p2preg.logs import short_id
from p2preg.membership import (
    DEFAULT_DOWN_WINDOW,
    REMEMBERED_PEERS,
    RecentlyLost,
    RingMemory,
    StartMode,
    encode_lost,
    plan_start,
    tcp_error,
    tcp_reachable,
)
from p2preg.metrics import Health, assess, make_registry
from p2preg.ring_client import RingClient, now_ms
from p2preg.sip.bindings_store import OverlayBindings
from p2preg.sip.metrics import Histogram
from p2preg.sip.register_op import sip_operations
from p2preg.sip.registrar import RegistrarConfig
from p2preg.sip.service import SipService
from p2preg.sip.transport import StreamLimits
from storage import Durability, RecordStore, Role

log = logging.getLogger("p2preg.node")
T = TypeVar("T")

NODE_ID_FILE = "node_id"
STORE_DIR = "store"  # the LMDB environment, under --data-dir
LOCK_FILE = "lock"
LEAVE_TIMEOUT_MARGIN = 2.0  # s on top of the overlay's own leave timeout before we give up
LAG_PERIOD = 0.05  # s between event-loop lag samples
LAG_WARNING = 0.5  # s; SIP's first retransmission (T1) comes after this much silence
JOIN_REPORT_FIRST = 2.0  # s before the first WARN that the node has not joined yet
JOIN_REPORT_MAX = 60.0  # s between those WARN lines at most (doubling until then)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
EXIT_REFUSED = 2  # a member of an unreachable ring started without --new-ring
COUNT_REFRESH = 1.0  # s between recounts of the records held (for Probe answers and the API)


class SetupError(Exception):
    """Bad operator input (address, id, data directory): one line for the operator, exit 2."""


def parse_address(text: str, what: str = "address") -> Address:
    """``HOST:PORT`` or ``[IPv6]:PORT``; port 0 means any free port."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise SetupError(f"{what} {text!r} is not [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep:
            raise SetupError(f"{what} {text!r} is not HOST:PORT")
    if not host:
        raise SetupError(f"{what} {text!r} has no host")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SetupError(f"{what} {text!r} has no valid port (0..65535)")
    return Address(host, int(port_text))


def load_node_id(data_dir: Path, explicit: str | None) -> int:
    """The node id: ``explicit`` if given, else the one saved in the data directory, else a fresh
    random one. Whatever is used is saved, so a restart on the same directory keeps its place."""
    path = data_dir / NODE_ID_FILE
    if explicit is not None:
        try:
            node_id = parse_id(explicit)
        except ValueError as exc:
            raise SetupError(f"invalid --node-id: {exc}") from None
    elif path.exists():
        try:
            node_id = parse_id(path.read_text())
        except (OSError, ValueError) as exc:
            raise SetupError(f"cannot read the node id saved in {path}: {exc}") from None
        return node_id
    else:
        node_id = int.from_bytes(os.urandom(ID_BYTES), "big")
    try:
        _write_atomically(path, id_hex(node_id) + "\n")
    except OSError as exc:
        raise SetupError(f"cannot save the node id in {path}: {exc}") from None
    return node_id


def _write_atomically(path: Path, text: str) -> None:
    """Readers (tests, scripts polling a ready file) never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class NodeOptions:
    data_dir: Path
    overlay: Address
    admin: Address
    sip: Address | None = None
    bootstrap: tuple[Address, ...] = ()
    node_id: str | None = None
    config: ChordConfig = field(default_factory=ChordConfig)
    ready_file: Path | None = None
    durability: Durability = Durability.SYNC
    anti_entropy_interval: float | None = None  # None: the overlay's default
    max_map_size: int | None = None  # bytes; None: the store's default
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    # The front-end settings of the config file's [registrar] table (config_file.SERVICE_KEYS).
    sip_service: dict[str, Any] = field(default_factory=dict)
    new_ring: bool = False  # found a new ring even if the data directory remembers one
    down_window: float = DEFAULT_DOWN_WINDOW  # s a lost peer stays listed as down


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data directory for the life of the process: LMDB itself
    lets two processes share an environment, and two nodes on one directory would both think
    they own its records and its node id."""
    path = data_dir / LOCK_FILE
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open until the process exits
    except OSError as exc:
        raise SetupError(f"cannot open {path}: {exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SetupError(f"data directory {data_dir} is in use by another p2preg process") from None
    return handle


def open_store(options: NodeOptions) -> RecordStore:
    """The node's LMDB environment. It never flushes per commit: with ``--durability sync`` the
    overlay runtime flushes it before any answer that depends on a write goes out (one flush
    for all the writes of that moment), which is both durable and faster."""
    directory = options.data_dir / STORE_DIR
    sizes = {} if options.max_map_size is None else {"max_map_size": options.max_map_size}
    if options.max_map_size is not None:
        sizes["initial_map_size"] = min(64 << 20, options.max_map_size)
    try:
        return RecordStore(directory, KIND_LIMITS, durability=Durability.ASYNC, **sizes)
    except (lmdb.Error, OSError, ValueError) as exc:
        raise SetupError(f"cannot open the record store in {directory}: {exc}") from None


def make_sip_service(
    options: NodeOptions, runtime: OverlayRuntime, ring: RingClient
) -> SipService | None:
    if options.sip is None:
        return None
    settings = dict(options.sip_service)
    limit_names = ("max_connections", "half_open_timeout", "idle_timeout")
    limits = {k: settings.pop(k) for k in limit_names if k in settings}
    return SipService(
        runtime,
        options.registrar,
        options.sip.host,
        options.sip.port,
        limits=StreamLimits(**limits) if limits else None,
        ring=ring,
        **settings,
    )


def replication_config(options: NodeOptions) -> ReplicationConfig:
    if options.anti_entropy_interval is None:
        return ReplicationConfig()
    return ReplicationConfig(anti_entropy_interval=options.anti_entropy_interval)


@dataclass(frozen=True, slots=True)
class RecordCounts:
    primary: int = 0
    replica: int = 0
    tombstones: int = 0  # included in primary/replica: removals kept until they expire
    resources: int = 0  # distinct Resource-IDs among them
    counted_at: float = 0.0  # monotonic
    # SIP-BINDING records that exist, and the distinct AORs they belong to, by role
    bindings_primary: int = 0
    bindings_replica: int = 0
    aors_primary: int = 0
    aors_replica: int = 0


def count_records(store: RecordStore) -> RecordCounts:
    """One pass over the unexpired records (reads may run on any thread)."""
    primary = replica = tombstones = resources = 0
    bindings = {Role.PRIMARY: 0, Role.REPLICA: 0}
    aors = {Role.PRIMARY: 0, Role.REPLICA: 0}
    last: int | None = None
    last_aor: int | None = None
    for rec in store.scan_range(0, 0, now_ms()):
        if rec.resource != last:
            resources += 1
            last = rec.resource
        if rec.role is Role.PRIMARY:
            primary += 1
        else:
            replica += 1
        if not rec.exists:
            tombstones += 1
        elif rec.kind == SIP_BINDING:
            bindings[rec.role] += 1
            # Records come in key order (resource first), so one AOR's bindings are adjacent.
            if rec.resource != last_aor:
                aors[rec.role] += 1
                last_aor = rec.resource
    return RecordCounts(
        primary,
        replica,
        tombstones,
        resources,
        time.monotonic(),
        bindings[Role.PRIMARY],
        bindings[Role.REPLICA],
        aors[Role.PRIMARY],
        aors[Role.REPLICA],
    )


class Node:
    """Runs until SIGTERM/SIGINT or POST /v1/leave, then leaves the ring gracefully."""

    def __init__(self, options: NodeOptions, node_id: int, store: RecordStore) -> None:
        self.options = options
        self.node_id = node_id
        self.store = store
        self.rt = OverlayRuntime(
            node_id=node_id,
            config=options.config,
            host=options.overlay.host,
            port=options.overlay.port,
            exp_probe=self.exp_probe,
            num_resources=self._num_resources,
            backend=store,
            durability=options.durability.value,
            replication=replication_config(options),
            # The owner-side registrar rules: REGISTERs reach the AOR's owner as one ApplyReq.
            operations=sip_operations(),
        )
        self.replicas = replication_config(options).replicas
        # The one client of the ring for everything this node's applications ask of it.
        self.ring = RingClient(self.rt)
        self.kv = KvClient(self.ring)
        self.sip = make_sip_service(options, self.rt, self.ring)
        self.admin = AdminServer(self)
        self.overlay_address: Address | None = None
        self.admin_address: Address | None = None
        self._sip_address: Address | None = None
        self.counts = RecordCounts()
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-read")
        self._counter: asyncio.Task[None] | None = None
        self._lag_watch: asyncio.Task[None] | None = None
        self.loop_lag = Histogram(
            "p2preg_event_loop_lag_seconds",
            f"How late a timer due every {LAG_PERIOD} s ran: time the event loop was busy "
            "with something else (every request waits behind it)",
            LAG_BUCKETS,
        )
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self.lost = RecentlyLost(options.down_window)
        self.lost_total: dict[str, int] = {}
        self.event_loop = "asyncio"  # what run_node chose, for p2preg_build_info
        self.metrics = make_registry(self, *([self.sip] if self.sip is not None else []))
        self.memory = RingMemory.load(options.data_dir)
        self._neighbours: set[int] = set()
        self._join_watch: asyncio.Task[None] | None = None
        self._bindings: OverlayBindings | None = None

    @property
    def sip_address(self) -> Address | None:
        return self._sip_address

    @property
    def overlay(self) -> OverlayRuntime:
        """This node's overlay, for the admin API's ring walks, routes and probes."""
        return self.rt

    def exp_probe(self) -> dict[str, object]:
        """Our part of every Probe answer: how operators and other peers' admin APIs reach us.
        Kept small: the whole exp-probe value must fit in 255 bytes with the neighbour ids."""
        return {
            "overlay": str(self.overlay_address) if self.overlay_address else None,
            "admin": str(self.admin_address) if self.admin_address else None,
            "sip": str(self._sip_address) if self._sip_address else None,
            "state": self.rt.state.value,
            "version": __version__,
            "primary_records": self.counts.primary,
            "replica_records": self.counts.replica,
            "aors": self.counts.aors_primary,
            "bindings": self.counts.bindings_primary,
            "lost": encode_lost(self.lost.entries()),
        }

    def _num_resources(self) -> int:
        return self.counts.resources

    async def read_store(self, fn: Callable[..., T], *args: object) -> T:
        """Run a read of the store off the event loop, on threads the node waits for before it
        closes the store (a cancelled ``to_thread`` would leave its thread reading)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(fn, *args))

    async def refresh_counts(self) -> RecordCounts:
        """Recount now (off the event loop); the admin API wants fresh figures."""
        self.counts = await self.read_store(count_records, self.store)
        return self.counts

    async def _count_loop(self) -> None:
        # Probe answers are built synchronously inside the overlay: they read these cached
        # figures instead of scanning LMDB on the event loop.
        while True:
            started = time.monotonic()
            try:
                await self.refresh_counts()
            except Exception:
                log.exception("counting the records failed")
            # A big store takes a while to count, and the count holds the GIL against the
            # event loop most of that time: spend at most 1/50 of the time on it (100,000
            # bindings take ~0.6 s to count here: a fresh figure every ~30 s).
            await asyncio.sleep(max(COUNT_REFRESH, 50 * (time.monotonic() - started)))

    def request_leave(self, reason: str) -> None:
        if self._stop.is_set():
            log.info("%s: already leaving", reason)
            return
        self._stop_reason = reason
        self._stop.set()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            log.debug("overlay state: %s", event.state.value)
            if event.state is PeerState.JOINED:
                log.info("joined ring %r", self.options.config.overlay_name)
        elif isinstance(event, PeerLost):
            self._peer_lost(event)
        elif isinstance(event, NeighborsChanged):
            log.debug(
                "neighbours: predecessors %s successors %s",
                [short_id(p) for p in event.predecessors],
                [short_id(s) for s in event.successors],
            )
            self._neighbours_changed(event)

    def _peer_lost(self, event: PeerLost) -> None:
        # The runtime has logged the loss at WARN already (with the address and why).
        entry = self.lost.lost(event.node_id, event.reason, event.address)
        self.lost_total[entry.reason.value] = self.lost_total.get(entry.reason.value, 0) + 1
        self._neighbours.discard(event.node_id)
        if event.reason is LossReason.LEFT:
            log.warning("peer %s left the ring", short_id(event.node_id))
            self._remember(forget=event.node_id)

    def _neighbours_changed(self, event: NeighborsChanged) -> None:
        now = set(event.predecessors) | set(event.successors)
        added = now - self._neighbours
        known_before = bool(self._neighbours)
        addresses = self.rt.view().addresses
        for node_id in sorted(added):
            where = "successor" if node_id in event.successors else "predecessor"
            address = addresses.get(node_id)
            back = self.lost.seen(node_id)
            if back is not None:
                log.warning(
                    "peer %s is back at %s (lost %.0f s ago: %s)",
                    short_id(node_id),
                    address or back.address or "unknown address",
                    time.time() - back.since,
                    back.reason.text,
                )
            elif known_before:
                log.warning(
                    "peer %s joined (now a %s of ours) at %s",
                    short_id(node_id),
                    where,
                    address or "unknown address",
                )
        if not known_before and now:
            log.info("neighbours: %s", " ".join(short_id(n) for n in sorted(now)))
        self._neighbours = now
        self._remember()

    def _remember(self, forget: int | None = None) -> None:
        """Keep the peers of our ring in the data directory: current neighbours, plus peers
        lost without saying goodbye (they are still members), minus peers that left."""
        if self.rt.state is not PeerState.JOINED and forget is None:
            return
        name = self.options.config.overlay_name
        old = self.memory.peers if self.memory and self.memory.overlay_name == name else {}
        addresses = self.rt.view().addresses
        peers = {n: a for n, a in old.items() if n != forget and n != self.node_id}
        for node_id in self._neighbours:
            address = addresses.get(node_id)
            if address is not None:
                peers[node_id] = str(address)
        if len(peers) > REMEMBERED_PEERS:
            keep = self._neighbours | set(list(peers)[-REMEMBERED_PEERS:])
            peers = {n: a for n, a in peers.items() if n in keep}
        if self.memory is not None and self.memory.peers == peers:
            return
        self.memory = RingMemory(name, peers, time.time())
        try:
            self.memory.save(self.options.data_dir)
        except OSError as exc:
            log.warning("cannot save the ring memory in %s: %s", self.options.data_dir, exc)

    # --- what the metrics collector and the health check read (p2preg.metrics) -------------

    def overlay_view(self) -> PeerView:
        return self.rt.view()

    def overlay_counters(self) -> Mapping[str, int]:
        return self.rt.counters

    def kv_counters(self) -> Mapping[str, int]:
        return self.kv.counters

    def record_figures(self) -> Mapping[str, Mapping[str, int]]:
        c = self.counts
        return {
            "records": {"primary": c.primary, "replica": c.replica},
            "bindings": {"primary": c.bindings_primary, "replica": c.bindings_replica},
            "aors": {"primary": c.aors_primary, "replica": c.aors_replica},
        }

    def store_map_bytes(self) -> int:
        return self.store.map_size

    def health(self) -> Health:
        replicator = self.rt.replicator
        return assess(
            self.rt.view(),
            self.replicas,
            self.counts.primary,
            replicator is not None and replicator.busy,
            self.counts.counted_at > 0,
        )

    def peers_down(self) -> int:
        return len(self.lost)

    def peers_lost_total(self) -> Mapping[str, int]:
        return self.lost_total

    def event_loop_name(self) -> str:
        return self.event_loop

    def responsible_span(self) -> tuple[int, int] | None:
        """(start, self]: the ring interval this peer answers for; None when not in the ring."""
        if self.rt.state is not PeerState.JOINED:
            return None
        return self.rt.peer.responsible_range()

    def bindings(self) -> OverlayBindings:
        """The SIP front end's ring client for bindings (one without SIP on an overlay-only
        node), for the admin API's lookups and removals."""
        if self.sip is not None:
            return self.sip.bindings
        if self._bindings is None:
            self._bindings = OverlayBindings(self.ring)
        return self._bindings

    def down_peers(self) -> list[dict[str, object]]:
        """Peers lost in the last ``--down-window`` seconds, for the ring walk."""
        now = time.time()
        return [e.view(now) for e in self.lost.entries()]

    def mark_seen(self, node_id: int) -> None:
        """A peer answered (the ring walk probed it): it is not down."""
        self.lost.seen(node_id)

    async def _watch_join(self, bootstrap: Sequence[Address]) -> None:
        """WARN, at growing intervals, while the node has not joined: which bootstrap peers
        do not even accept a connection. The overlay itself retries the join meanwhile."""
        started = time.monotonic()
        delay = JOIN_REPORT_FIRST
        while True:
            await asyncio.sleep(delay)
            if self.rt.state is not PeerState.JOINING:
                return
            errors = await asyncio.gather(*(asyncio.to_thread(tcp_error, a) for a in bootstrap))
            failing = [f"{a} ({e})" for a, e in zip(bootstrap, errors, strict=True) if e]
            waited = time.monotonic() - started
            delay = min(delay * 2, JOIN_REPORT_MAX)
            if len(failing) == len(bootstrap):
                log.warning(
                    "not joined after %.0f s: no bootstrap peer reachable: %s; "
                    "retrying (next report in %.0f s)",
                    waited,
                    ", ".join(failing),
                    delay,
                )
            else:
                log.warning(
                    "not joined after %.0f s: bootstrap reachable but the join has not "
                    "completed%s; retrying (next report in %.0f s)",
                    waited,
                    f" (unreachable: {', '.join(failing)})" if failing else "",
                    delay,
                )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_leave, signal.Signals(sig).name)
        self.rt.add_listener(self._on_event)
        opts = self.options
        plan = await asyncio.to_thread(
            plan_start,
            seeds=opts.bootstrap,
            own=opts.overlay,
            memory=self.memory,
            overlay_name=opts.config.overlay_name,
            new_ring=opts.new_ring,
            reachable=tcp_reachable,
        )
        if plan.mode is StartMode.REFUSE:
            log.error("refusing to found a new ring: %s", plan.why)
            await self.rt.close()
            return EXIT_REFUSED
        try:
            self.overlay_address = await self.rt.start(plan.bootstrap)
        except OSError as exc:
            log.error("cannot listen on overlay address %s: %s", opts.overlay, exc)
            await self.rt.close()
            return 1
        log.info("overlay listening on %s", self.overlay_address)
        try:
            self.admin_address = await self.admin.start(opts.admin)
        except OSError as exc:
            log.error("cannot listen on admin address %s: %s", opts.admin, exc)
            await self.admin.stop()
            await self.rt.close()
            return 1
        log.info("admin API listening on http://%s/v1/node", self.admin_address)
        self._counter = asyncio.create_task(self._count_loop(), name="record-counts")
        self._lag_watch = asyncio.create_task(self._watch_lag(), name="loop-lag")
        # After the overlay (it stores and fetches through self.rt) and before the ready
        # file, which reports its bound address.
        if self.sip is not None:
            try:
                host, port = await self.sip.start()
            except OSError as exc:
                log.error("cannot listen on SIP address %s: %s", opts.sip, exc)
                await self.sip.stop()
                await self._close_early()
                return 1
            self._sip_address = Address(host, port)
        if plan.mode is StartMode.JOIN:
            log.info(
                "joining ring %r through %s (%s)",
                opts.config.overlay_name,
                _join(plan.bootstrap),
                plan.why,
            )
            self._join_watch = asyncio.create_task(
                self._watch_join(plan.bootstrap), name="join-watch"
            )
        else:
            log.warning("founding a new ring %r (%s)", opts.config.overlay_name, plan.why)
        if opts.ready_file is not None:
            self._write_ready_file(opts.ready_file)
        await self._stop.wait()
        return await self._shutdown()

    def _write_ready_file(self, path: Path) -> None:
        info = {
            "node_id": id_hex(self.node_id),
            "overlay": str(self.overlay_address),
            "admin": str(self.admin_address),
            "sip": str(self._sip_address) if self._sip_address else None,
            "pid": os.getpid(),
        }
        _write_atomically(path, json.dumps(info) + "\n")

    async def _shutdown(self) -> int:
        if self.sip is not None:
            # First: a REGISTER accepted now could not be stored once we are gone, and the
            # clients retransmit to another node.
            try:
                await self.sip.stop()
            except Exception:
                log.exception("stopping the SIP service failed")
        log.info("leaving the overlay (%s)", self._stop_reason)
        budget = self.options.config.leave_timeout + LEAVE_TIMEOUT_MARGIN
        if self.rt.state in (PeerState.JOINED, PeerState.JOINING):
            try:
                await asyncio.wait_for(self.rt.leave(budget), budget + 1.0)
            except TimeoutError:
                log.warning("leave did not finish in %.1f s; closing anyway", budget)
            except Exception:
                log.exception("leave failed; closing anyway")
        await self.admin.stop()
        with contextlib.suppress(Exception):
            await self.rt.close()
        await self._stop_counting()
        self._readers.shutdown(wait=True)  # no read may be running when the store closes
        # Only now: the graceful leave above handed our primary records to the successor.
        self._close_store()
        log.info("left the ring; exiting")
        return 0

    async def _close_early(self) -> None:
        """Undo a start that failed after the admin API came up (nothing joined yet)."""
        await self.admin.stop()
        with contextlib.suppress(Exception):
            await self.rt.close()
        await self._stop_counting()
        self._readers.shutdown(wait=True)

    async def _stop_counting(self) -> None:
        for task in (self._counter, self._lag_watch, self._join_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch_lag(self) -> None:
        """Measure how long the event loop is held up: one thread serves SIP, the overlay and
        the admin API, so a long synchronous step (a big digest, a GC pause) delays them all.
        A stall long enough to cost SIP retransmissions is logged."""
        clock = time.monotonic
        while True:
            due = clock() + LAG_PERIOD
            await asyncio.sleep(LAG_PERIOD)
            late = max(0.0, clock() - due)
            self.loop_lag.observe(late)
            if late >= LAG_WARNING:
                log.warning("event loop blocked for %.0f ms", late * 1000)

    def _close_store(self) -> None:
        try:
            self.store.flush()
        except Exception:
            log.exception("flushing the record store failed")
        self.store.close()


def _join(addresses: Sequence[Address]) -> str:
    return ", ".join(str(a) for a in addresses)


EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def event_loop_policy(choice: str) -> tuple[asyncio.AbstractEventLoopPolicy | None, str]:
    """The policy for ``--event-loop`` and its name for the log; None: asyncio's default.
    "auto" takes uvloop when it is installed (the ``fast`` extra); "uvloop" insists."""
    if choice not in EVENT_LOOPS:
        raise SetupError(f"unknown event loop {choice!r}: choose one of {', '.join(EVENT_LOOPS)}")
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SetupError(
                "--event-loop uvloop: uvloop is not installed (pip install 'p2preg[fast]')"
            ) from None
        return None, "asyncio (uvloop not installed)"
    from importlib.metadata import version

    return uvloop.EventLoopPolicy(), f"uvloop {version('uvloop')}"


def tune_gc() -> None:
    """Fewer, cheaper collections for a long-running server. Everything alive at start-up
    (modules, config, the store) is frozen out of the collector's scans, and the youngest
    generation collects every 20,000 allocations instead of 700: under REGISTER load the
    default thresholds ran a full collection every few seconds, each a 15-45 ms pause of the
    event loop (measured with gc.callbacks at 800 REGISTER/s), which is what p99 latency saw.
    Collection stays on: reference cycles are still reclaimed."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run_node(
    options: NodeOptions,
    node_id: int,
    store: RecordStore,
    event_loop: tuple[asyncio.AbstractEventLoopPolicy | None, str] = (None, "asyncio"),
) -> int:
    """Run the node on an opened store (see open_store); the store is closed on return.
    ``event_loop`` is what :func:`event_loop_policy` returned."""
    try:
        policy, loop_name = event_loop
        if policy is not None:
            asyncio.set_event_loop_policy(policy)
        log.info("event loop: %s", loop_name)
        tune_gc()
        node = Node(options, node_id, store)
        node.event_loop = loop_name
        return asyncio.run(node.run())
    finally:
        asyncio.set_event_loop_policy(None)
        store.close()  # after an early error exit too; closing twice is harmless
