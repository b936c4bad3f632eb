"""Honest membership: the peers we lost lately, and the ring a data directory belongs to.

``RecentlyLost`` is a bounded table fed by the overlay's ``PeerLost`` events: a peer dropped
from our neighbour lists stays listed (with when and why) for a window of minutes, so that the
ring walk can show it as down instead of silently closing the ring around it. An entry goes as
soon as the peer is seen again.

``RingMemory`` is a small JSON file in the data directory: the overlay name and the peers we
were last a ring with. A node that was a member of a ring with other peers does not found a
new ring on its own when started without a reachable bootstrap (unless told ``--new-ring``):
that would split the ring in two without anybody noticing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from overlay.actions import Address, LossReason
from overlay.ids import id_hex, parse_id

log = logging.getLogger("p2preg.membership")

RING_FILE = "ring.json"
DEFAULT_DOWN_WINDOW = 900.0  # s a lost peer stays listed as down
LOST_CAPACITY = 256  # entries kept at most; the oldest go first
REMEMBERED_PEERS = 32  # peers a data directory remembers at most
PROBE_LOST = 8  # lost peers a node reports in its Probe answers at most


class DownReason(StrEnum):
    """Why a peer is listed as down: the overlay's loss reasons, short and stable for JSON."""

    MISSED_PINGS = "missed_pings"
    LINK_FAILED = "link_failed"
    LEFT = "left"

    @classmethod
    def of(cls, reason: LossReason) -> DownReason:
        return {
            LossReason.MISSED_PINGS: cls.MISSED_PINGS,
            LossReason.LINK_FAILED: cls.LINK_FAILED,
            LossReason.LEFT: cls.LEFT,
        }[reason]

    @property
    def text(self) -> str:
        return {
            DownReason.MISSED_PINGS: "missed pings",
            DownReason.LINK_FAILED: "link failed",
            DownReason.LEFT: "left the ring",
        }[self]


@dataclass(frozen=True, slots=True)
class LostPeer:
    node_id: int
    reason: DownReason
    since: float  # wall-clock seconds (epoch)
    address: str | None
    reported_by: int | None = None  # None: we saw it ourselves

    def view(self, now: float) -> dict[str, object]:
        return {
            "node_id": id_hex(self.node_id),
            "overlay": self.address,
            "down_reason": self.reason.value,
            "down_since": round(self.since, 3),
            "down_for_s": round(max(0.0, now - self.since), 1),
            "reported_by": None if self.reported_by is None else id_hex(self.reported_by),
        }


class RecentlyLost:
    """Peers dropped from our neighbour lists in the last ``window`` seconds, at most
    ``capacity`` of them (the oldest go first)."""

    def __init__(
        self,
        window: float = DEFAULT_DOWN_WINDOW,
        capacity: int = LOST_CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.capacity = capacity
        self._clock = clock
        self._lost: OrderedDict[int, LostPeer] = OrderedDict()

    def lost(self, node_id: int, reason: LossReason, address: Address | None) -> LostPeer:
        entry = LostPeer(
            node_id, DownReason.of(reason), self._clock(), str(address) if address else None
        )
        self._lost.pop(node_id, None)
        self._lost[node_id] = entry
        while len(self._lost) > self.capacity:
            self._lost.popitem(last=False)
        return entry

    def seen(self, node_id: int) -> LostPeer | None:
        """The peer is alive after all: forget its loss (returned, for the log)."""
        return self._lost.pop(node_id, None)

    def entries(self) -> list[LostPeer]:
        """Losses within the window, oldest first."""
        cutoff = self._clock() - self.window
        while self._lost:
            oldest = next(iter(self._lost.values()))
            if oldest.since >= cutoff:
                break
            self._lost.popitem(last=False)
        return list(self._lost.values())

    def __len__(self) -> int:
        return len(self.entries())


# --- what we tell other peers in our Probe answers -------------------------------------------


def encode_lost(entries: Iterable[LostPeer], limit: int = PROBE_LOST) -> str:
    """``id reason since`` triples, comma-separated, the most recent ``limit`` only."""
    recent = sorted(entries, key=lambda e: e.since)[-limit:]
    return ",".join(f"{id_hex(e.node_id)} {e.reason.value} {int(e.since)}" for e in recent)


def decode_lost(text: object, reporter: int) -> list[LostPeer]:
    """What :func:`encode_lost` made; anything malformed is skipped (it came off the wire)."""
    if not isinstance(text, str) or not text:
        return []
    out: list[LostPeer] = []
    for item in text.split(","):
        parts = item.split(" ")
        if len(parts) != 3:
            continue
        try:
            node_id = parse_id(parts[0])
            reason = DownReason(parts[1])
            since = float(int(parts[2]))
        except ValueError:
            continue
        out.append(LostPeer(node_id, reason, since, None, reporter))
    return out


# --- the ring a data directory belongs to ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RingMemory:
    overlay_name: str
    peers: dict[int, str]  # node id -> overlay address, other peers only
    updated: float  # wall-clock seconds

    @staticmethod
    def load(data_dir: Path) -> RingMemory | None:
        path = data_dir / RING_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable ring memory %s: %s", path, exc)
            return None
        try:
            peers = {parse_id(k): str(v) for k, v in dict(raw.get("peers", {})).items()}
            return RingMemory(str(raw["overlay_name"]), peers, float(raw.get("updated", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed ring memory %s: %s", path, exc)
            return None

    def save(self, data_dir: Path) -> None:
        path = data_dir / RING_FILE
        text = json.dumps(
            {
                "overlay_name": self.overlay_name,
                "peers": {id_hex(k): v for k, v in sorted(self.peers.items())},
                "updated": round(self.updated, 3),
            },
            indent=1,
        )
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)

    def addresses(self) -> list[str]:
        return list(dict.fromkeys(self.peers.values()))


class StartMode(StrEnum):
    FOUND = "found"  # start a new ring alone
    JOIN = "join"  # join through the bootstrap addresses
    REFUSE = "refuse"  # a member of a ring that cannot be reached: do not found a new one


@dataclass(frozen=True, slots=True)
class StartPlan:
    mode: StartMode
    bootstrap: tuple[Address, ...]
    why: str


def is_local_address(address: Address, own: Address) -> bool:
    """Whether ``address`` is this node's own overlay address (a seeds list shared by every
    node contains it): the same address, or the same port on a host name or IP that belongs
    to this machine (we can bind it)."""
    if address == own:
        return True
    if address.port != own.port or own.port == 0:
        return False
    try:
        infos = socket.getaddrinfo(address.host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return False
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


def plan_start(
    *,
    seeds: tuple[Address, ...],
    own: Address,
    memory: RingMemory | None,
    overlay_name: str,
    new_ring: bool,
    reachable: Callable[[Address], bool],
) -> StartPlan:
    """How to start: found a ring, join one, or refuse.

    - ``--new-ring``: found a new ring whatever the directory remembers.
    - Seeds (minus ourselves) of which one answers, or remembered peers that answer: join.
    - Nothing to join and no memory of other peers: found (a fresh node, or a ring of one).
    - A seeds list that names us first and no memory of other peers: found (the first seed
      starts the ring, the others join it; one config serves every node). A first seed whose
      data directory was wiped must be given a bootstrap list without itself to rejoin.
    - Seeds given but none answers: join anyway (the overlay keeps trying; WARN lines say so).
    - No seeds, remembered peers none of which answers: refuse.
    """
    others = tuple(s for s in seeds if not is_local_address(s, own))
    seed_is_self = len(others) < len(seeds)
    remembered: tuple[Address, ...] = ()
    if memory is not None and memory.overlay_name == overlay_name:
        remembered = tuple(_parsed(memory.addresses()))
    if new_ring:
        why = "--new-ring"
        if remembered:
            why += f" (this directory was a member of a ring with {len(remembered)} other peers)"
        return StartPlan(StartMode.FOUND, (), why)
    if seed_is_self and not remembered and is_local_address(seeds[0], own):
        # Every node has the same seeds list; the first seed starts the ring, the others
        # wait for it (they cannot ask each other: a joining peer admits nobody).
        return StartPlan(StartMode.FOUND, (), "first of the seeds, no ring remembered")
    live = [a for a in others if reachable(a)]
    if live:
        return StartPlan(StartMode.JOIN, tuple(live) + _without(others, live), "bootstrap")
    live_memory = [a for a in remembered if reachable(a) and not is_local_address(a, own)]
    if live_memory:
        return StartPlan(
            StartMode.JOIN,
            tuple(live_memory) + others,
            "peers remembered in the data directory",
        )
    if not others and not remembered:
        return StartPlan(StartMode.FOUND, (), "no bootstrap peers")
    if others:
        return StartPlan(StartMode.JOIN, others + remembered, "bootstrap (none answers yet)")
    return StartPlan(
        StartMode.REFUSE,
        remembered,
        f"this data directory was a member of ring {overlay_name!r} with "
        f"{len(remembered)} other peers ({', '.join(str(a) for a in remembered[:3])}"
        f"{', ...' if len(remembered) > 3 else ''}), none of which answers; give "
        "--bootstrap with a reachable peer, or --new-ring to found a new ring anyway",
    )


def _without(addresses: tuple[Address, ...], drop: list[Address]) -> tuple[Address, ...]:
    return tuple(a for a in addresses if a not in drop)


def _parsed(texts: Iterable[str]) -> Iterable[Address]:
    for text in texts:
        host, sep, port = text.rpartition(":")
        if sep and port.isdigit():
            yield Address(host.strip("[]"), int(port))


def tcp_reachable(address: Address, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``address`` (a blocking check, for the
    start-up decision before the event loop serves anything)."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return True
    except OSError:
        return False


def tcp_error(address: Address, timeout: float = 1.0) -> str | None:
    """None when ``address`` accepts TCP connections, else why not (for the log)."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return None
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
