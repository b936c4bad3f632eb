"""One p2preg node: the overlay runtime, the admin API and the process life cycle around them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from overlay.actions import Address, Event, NeighborsChanged, PeerState, StateChanged
from overlay.config import ChordConfig
from overlay.ids import ID_BYTES, id_hex, parse_id
from overlay.runtime import OverlayRuntime
from p2preg import __version__
from p2preg.admin import AdminServer
from p2preg.logs import short_id

log = logging.getLogger("p2preg.node")

NODE_ID_FILE = "node_id"
LEAVE_TIMEOUT_MARGIN = 2.0  # s on top of the overlay's own leave timeout before we give up


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


class Node:
    """Runs until SIGTERM/SIGINT or POST /v1/leave, then leaves the ring gracefully."""

    def __init__(self, options: NodeOptions, node_id: int) -> None:
        self.options = options
        self.node_id = node_id
        self.rt = OverlayRuntime(
            node_id=node_id,
            config=options.config,
            host=options.overlay.host,
            port=options.overlay.port,
            exp_probe=self.exp_probe,
        )
        self.admin = AdminServer(self)
        self.overlay_address: Address | None = None
        self.admin_address: Address | None = None
        self._stop = asyncio.Event()
        self._stop_reason = ""

    @property
    def sip_address(self) -> Address | None:
        return None  # the SIP front end arrives with issue 4; --sip is only remembered until then

    def exp_probe(self) -> dict[str, object]:
        """Our part of every Probe answer: how operators and other peers' admin APIs reach us.
        Kept small: the whole exp-probe value must fit in 255 bytes with the neighbour ids."""
        return {
            "overlay": str(self.overlay_address) if self.overlay_address else None,
            "admin": str(self.admin_address) if self.admin_address else None,
            "sip": None,
            "state": self.rt.state.value,
            "version": __version__,
        }

    def request_leave(self, reason: str) -> None:
        if self._stop.is_set():
            log.info("%s: already leaving", reason)
            return
        self._stop_reason = reason
        self._stop.set()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            log.debug("overlay state: %s", event.state.value)
        elif isinstance(event, NeighborsChanged):
            log.debug(
                "neighbours: predecessors %s successors %s",
                [short_id(p) for p in event.predecessors],
                [short_id(s) for s in event.successors],
            )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_leave, signal.Signals(sig).name)
        self.rt.add_listener(self._on_event)
        opts = self.options
        try:
            self.overlay_address = await self.rt.start(opts.bootstrap)
        except OSError as exc:
            log.error("cannot listen on overlay address %s: %s", opts.overlay, exc)
            await self.rt.close()
            return 1
        log.info("overlay listening on %s", self.overlay_address)
        try:
            self.admin_address = await self.admin.start(opts.admin)
        except OSError as exc:
            log.error("cannot listen on admin address %s: %s", opts.admin, exc)
            await self.rt.close()
            return 1
        log.info("admin API listening on http://%s/v1/node", self.admin_address)
        if opts.sip is not None:
            log.warning(
                "--sip %s accepted, but the SIP front end is not built yet (issue 4)", opts.sip
            )
        if opts.bootstrap:
            log.info("joining ring %r through %s", opts.config.overlay_name, _join(opts.bootstrap))
        else:
            log.info("starting a new ring %r", opts.config.overlay_name)
        if opts.ready_file is not None:
            self._write_ready_file(opts.ready_file)
        await self._stop.wait()
        return await self._shutdown()

    def _write_ready_file(self, path: Path) -> None:
        info = {
            "node_id": id_hex(self.node_id),
            "overlay": str(self.overlay_address),
            "admin": str(self.admin_address),
            "sip": None,
            "pid": os.getpid(),
        }
        _write_atomically(path, json.dumps(info) + "\n")

    async def _shutdown(self) -> int:
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
        log.info("left the ring; exiting")
        return 0


def _join(addresses: Sequence[Address]) -> str:
    return ", ".join(str(a) for a in addresses)


def run_node(options: NodeOptions, node_id: int) -> int:
    return asyncio.run(Node(options, node_id).run())
