"""The overlay's link layer: RELOAD-framed TCP (or TLS) connections between peers, on asyncio.

One ``LinkLayer`` per node. It listens, dials, numbers DATA frames per link, ACKs every
DATA frame at once, turns ACK round trips into an RTO per link (RFC 6298) and declares a
link failed when its oldest un-ACKed frame is too old, or at once on a connect error,
reset or EOF. It never interprets the payload: the runtime decodes messages and tells the
layer which peer a link leads to (``bind_node``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import cast

from overlay.actions import Address
from overlay.config import check_seconds
from overlay.framing import (
    DEFAULT_MAX_PAYLOAD,
    SEQUENCE_MOD,
    AckFrame,
    Frame,
    FrameDecoder,
    FramingError,
    ReceiveWindow,
    RtoEstimator,
    acked_by_mask,
    encode_data,
)

log = logging.getLogger("p2preg.overlay.link")


@dataclass(frozen=True, slots=True)
class LinkConfig:
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_links: int = 256
    # A frame un-ACKed for max(failure_floor, failure_rto_factor * RTO) kills its link. The
    # floor is seconds, not the RTO's milliseconds: a peer on a loaded 2-core box can stall
    # that long and is still alive.
    failure_floor: float = 5.0
    failure_rto_factor: float = 4.0
    connect_timeout: float = 5.0
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 10.0
    check_interval: float = 0.25
    max_write_buffer: int = 16 * DEFAULT_MAX_PAYLOAD
    # An inbound connection that sends no frame within this many seconds is closed: a peer
    # speaks at once, so a silent one only holds a slot of the connection table.
    hello_timeout: float = 5.0

    def __post_init__(self) -> None:
        check_seconds("failure_floor", self.failure_floor, minimum=0.01)
        check_seconds("connect_timeout", self.connect_timeout, minimum=0.01)
        check_seconds("check_interval", self.check_interval, minimum=0.01)
        check_seconds("hello_timeout", self.hello_timeout, minimum=0.01)
        if self.max_links < 1:
            raise ValueError("max_links must be at least 1")


class LinkState(Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class LinkStats:
    link_id: int
    node_id: int | None
    address: Address | None  # the listening address we dialled (outbound links only)
    remote: Address | None  # the socket's peer address
    inbound: bool
    state: str
    srtt: float | None
    rto: float
    frames_sent: int
    frames_acked: int
    frames_received: int
    unacked: int
    bytes_sent: int
    bytes_received: int


class Link:
    """One connection. Created by the layer; the runtime only passes it back (send_on,
    bind_node) and reads its ``node_id``."""

    def __init__(
        self,
        link_id: int,
        *,
        inbound: bool,
        address: Address | None,
        node_id: int | None,
        config: LinkConfig,
    ) -> None:
        self.link_id = link_id
        self.inbound = inbound
        self.address = address
        self.node_id = node_id
        self.remote: Address | None = None
        self.state = LinkState.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(config.max_payload)
        self.window = ReceiveWindow()
        self.rto = RtoEstimator(config.rto_initial, config.rto_min, config.rto_max)
        self.next_sequence = 0
        self.unacked: dict[int, float] = {}  # sequence -> send time, oldest first
        self.queued: list[tuple[int, bytes]] = []  # frames waiting for the connection
        self.corked: list[bytes] = []  # frames written while the layer batches writes
        self.last_activity = 0.0
        self.frames_sent = 0
        self.frames_acked = 0
        self.frames_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    def __repr__(self) -> str:
        ident = f"{self.node_id:032x}"[:8] if self.node_id is not None else "?"
        where = self.address or self.remote
        direction = "in" if self.inbound else "out"
        return f"<Link #{self.link_id} {direction} {ident}@{where} {self.state.value}>"

    def stats(self) -> LinkStats:
        return LinkStats(
            link_id=self.link_id,
            node_id=self.node_id,
            address=self.address,
            remote=self.remote,
            inbound=self.inbound,
            state=self.state.value,
            srtt=self.rto.srtt,
            rto=self.rto.rto,
            frames_sent=self.frames_sent,
            frames_acked=self.frames_acked,
            frames_received=self.frames_received,
            unacked=len(self.unacked) + len(self.queued),
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
        )


class _LinkProtocol(asyncio.Protocol):
    def __init__(self, layer: LinkLayer, link: Link | None) -> None:
        self._layer = layer
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's do not subclass asyncio.Transport, so no isinstance.
        transport = cast(asyncio.Transport, transport)
        if self.link is None:
            self.link = self._layer._accept(transport)
        else:
            self._layer._opened(self.link, transport)

    def data_received(self, data: bytes) -> None:
        if self.link is not None:
            self._layer._data(self.link, data)

    def eof_received(self) -> bool:
        if self.link is not None:
            self._layer._fail(self.link, "connection closed by peer", flush=True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self._layer._fail(self.link, f"connection lost: {exc}" if exc else "connection lost")


MessageHandler = Callable[[Link, bytes], None]
FailureHandler = Callable[[int | None, Address | None], None]


class LinkLayer:
    """Listener + connection table. ``on_message(link, payload)`` gets every DATA payload;
    ``on_link_failed(node_id, address)`` is called (via ``call_soon``, never from inside
    ``send``) when a link dies or cannot be made."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        on_message: MessageHandler,
        on_link_failed: FailureHandler,
        ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        config: LinkConfig | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._on_message = on_message
        self._on_link_failed = on_link_failed
        self._server_ssl = ssl_context
        # A server-side context cannot dial, so TLS callers usually hand over both.
        self._client_ssl = client_ssl_context if client_ssl_context is not None else ssl_context
        self.config = config or LinkConfig()
        self._links: dict[int, Link] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._dials: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        # Links with corked frames while incoming data is handled (None: write at once).
        self._cork: list[Link] | None = None
        self.address: Address | None = None
        self.counters: dict[str, int] = {
            "links_opened": 0,
            "links_accepted": 0,
            "links_failed": 0,
            "links_rejected": 0,
            "links_evicted": 0,
            "links_silent_closed": 0,
            "connect_failures": 0,
            "framing_errors": 0,
            "send_failures": 0,
            "frames_sent": 0,
            "frames_received": 0,
            "acks_received": 0,
            "handler_errors": 0,
        }

    # --- lifecycle ------------------------------------------------------------
    async def start(self) -> Address:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _LinkProtocol(self, None),
            self._host,
            self._port,
            ssl=self._server_ssl,
            ssl_handshake_timeout=self.config.connect_timeout if self._server_ssl else None,
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = Address(str(sockname[0]), int(sockname[1]))
        self._monitor = asyncio.create_task(self._watch(), name=f"links-{self.address}")
        log.debug("listening on %s", self.address)
        return self.address

    async def close(self, *, flush: bool = False) -> None:
        """Close everything without reporting failures: this node is going away. ``flush``
        (a graceful leave) lets written frames go out first; else connections are reset."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for link in list(self._links.values()):
            self._drop(link, flush=flush)
        tasks = [t for t in (self._monitor, *self._dials) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    # --- the runtime's interface ------------------------------------------------
    def send(self, next_hop: int | None, address: Address | None, payload: bytes) -> None:
        """Frame ``payload`` to ``next_hop``: over any live link to it, else over a link to
        ``address`` (dialled if need be). Failure is reported through ``on_link_failed``."""
        if len(payload) > self.config.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds the frame limit")
        link = self._link_to(next_hop) if next_hop is not None else None
        if link is None and address is not None and not self._closing:
            link = self._link_at(address, next_hop)
            if link is None:
                link = self._dial(next_hop, address)
        if link is None:
            self.counters["send_failures"] += 1
            self._report(next_hop, address)
            return
        self._send_frame(link, payload)

    def send_on(self, link: Link, payload: bytes) -> None:
        """Send on this very link (answers to messages we could not decode)."""
        if link.state is LinkState.CLOSED:
            return
        if len(payload) > self.config.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds the frame limit")
        self._send_frame(link, payload)

    def bind_node(self, link: Link, node_id: int) -> None:
        if link.node_id != node_id:
            if link.node_id is not None:
                log.debug("%r now leads to %032x", link, node_id)
            link.node_id = node_id

    def links(self) -> list[Link]:
        return list(self._links.values())

    def stats(self) -> list[LinkStats]:
        return [link.stats() for link in self._links.values()]

    def has_link(self, node_id: int) -> bool:
        return self._link_to(node_id) is not None

    # --- choosing and making links ----------------------------------------------
    def _link_to(self, node_id: int) -> Link | None:
        connecting = None
        for link in self._links.values():
            if link.node_id == node_id:
                if link.state is LinkState.OPEN:
                    return link
                connecting = connecting or link
        return connecting

    def _link_at(self, address: Address, node_id: int | None) -> Link | None:
        for link in self._links.values():
            if link.inbound or link.address != address:
                continue
            if node_id is None or link.node_id is None:
                # A link dialled before we knew who listens there (the bootstrap).
                if node_id is not None:
                    link.node_id = node_id
                return link
            if link.node_id == node_id:
                return link
        return None

    def _now(self) -> float:
        assert self._loop is not None, "LinkLayer.start() was not awaited"
        return self._loop.time()

    def _make_room(self) -> bool:
        """Close one idle link if the table is full. Links whose peer we do not know (inbound
        connections that have not said who they are) go first, oldest first: a burst of idle
        connects must never push out the links to our real neighbours, whose other end would
        see the close as our failure."""
        if len(self._links) < self.config.max_links:
            return True
        anonymous: Link | None = None
        known: Link | None = None
        for link in self._links.values():
            if link.state is not LinkState.OPEN or link.unacked or link.queued:
                continue
            if link.node_id is None:
                if anonymous is None or link.last_activity < anonymous.last_activity:
                    anonymous = link
            elif known is None or link.last_activity < known.last_activity:
                known = link
        victim = anonymous or known
        if victim is None:
            return False
        log.debug("connection table full, closing idle %r", victim)
        self.counters["links_evicted"] += 1
        self._drop(victim)
        return True

    def _dial(self, node_id: int | None, address: Address) -> Link | None:
        if not self._make_room():
            return None
        link = Link(
            next(self._ids), inbound=False, address=address, node_id=node_id, config=self.config
        )
        link.last_activity = self._now()
        self._links[link.link_id] = link
        task = asyncio.create_task(self._connect(link), name=f"dial-{address}")
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)
        return link

    async def _connect(self, link: Link) -> None:
        assert self._loop is not None and link.address is not None
        try:
            await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: _LinkProtocol(self, link),
                    link.address.host,
                    link.address.port,
                    ssl=self._client_ssl,
                ),
                self.config.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as err:
            self.counters["connect_failures"] += 1
            self._fail(link, f"connect failed: {err or type(err).__name__}")

    def _opened(self, link: Link, transport: asyncio.Transport) -> None:
        if link.state is LinkState.CLOSED:  # closed while connecting
            transport.abort()
            return
        link.transport = transport
        link.remote = _peer_address(transport)
        link.state = LinkState.OPEN
        self.counters["links_opened"] += 1
        log.debug("opened %r", link)
        queued, link.queued = link.queued, []
        now = self._now()
        for sequence, frame in queued:
            self._write(link, sequence, frame, now)

    def _accept(self, transport: asyncio.Transport) -> Link | None:
        if self._closing or not self._make_room():
            self.counters["links_rejected"] += 1
            transport.abort()
            return None
        link = Link(next(self._ids), inbound=True, address=None, node_id=None, config=self.config)
        link.transport = transport
        link.remote = _peer_address(transport)
        link.state = LinkState.OPEN
        link.last_activity = self._now()
        self._links[link.link_id] = link
        self.counters["links_accepted"] += 1
        log.debug("accepted %r", link)
        return link

    # --- frames -------------------------------------------------------------------
    def _send_frame(self, link: Link, payload: bytes) -> None:
        sequence = link.next_sequence
        link.next_sequence = (sequence + 1) % SEQUENCE_MOD
        frame = encode_data(sequence, payload)
        if link.state is LinkState.CONNECTING:
            link.queued.append((sequence, frame))
        else:
            self._write(link, sequence, frame, self._now())

    def _write(self, link: Link, sequence: int | None, frame: bytes, now: float) -> None:
        transport = link.transport
        if transport is None or link.state is not LinkState.OPEN:
            return
        link.last_activity = now
        link.bytes_sent += len(frame)
        if sequence is not None:
            link.unacked[sequence] = now
            link.frames_sent += 1
            self.counters["frames_sent"] += 1
        cork = self._cork
        if cork is not None:
            if not link.corked:
                cork.append(link)
            link.corked.append(frame)
            return
        transport.write(frame)
        if transport.get_write_buffer_size() > self.config.max_write_buffer:
            self._fail(link, "peer does not read (write buffer full)")

    def _uncork(self, links: list[Link]) -> None:
        """Hand each link's corked frames to its socket in one write: the same bytes in the
        same order as frame-by-frame writes, in one system call instead of one per frame."""
        for link in links:
            frames, link.corked = link.corked, []
            transport = link.transport
            if not frames or transport is None or link.state is not LinkState.OPEN:
                continue
            transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
            if transport.get_write_buffer_size() > self.config.max_write_buffer:
                self._fail(link, "peer does not read (write buffer full)")

    def _data(self, link: Link, data: bytes) -> None:
        if link.state is not LinkState.OPEN:
            return
        link.bytes_received += len(data)
        now = self._now()
        link.last_activity = now
        error: FramingError | None = None
        try:
            frames: Sequence[Frame] = link.decoder.feed(data)
        except FramingError as err:
            error, frames = err, err.frames
        if self._cork is not None:  # re-entered from a handler: the outer call uncorks
            self._handle_frames(link, frames, now)
        else:
            # What the handlers write while this piece is handled (the ACKs, answers sent
            # at once) leaves when it is done, each link's frames in one write.
            cork: list[Link] = []
            self._cork = cork
            try:
                self._handle_frames(link, frames, now)
            finally:
                self._cork = None
                if cork:
                    self._uncork(cork)
        if error is not None:
            self.counters["framing_errors"] += 1
            log.info("closing %r: %s", link, error)
            self._fail(link, f"framing error: {error}", flush=True)

    def _handle_frames(self, link: Link, frames: Sequence[Frame], now: float) -> None:
        counters = self.counters
        for frame in frames:
            if link.state is not LinkState.OPEN:
                return
            if isinstance(frame, AckFrame):
                self._acked(link, frame, now)
                continue
            self._write(link, None, link.window.ack_for(frame.sequence), now)
            link.frames_received += 1
            counters["frames_received"] += 1
            try:
                self._on_message(link, frame.payload)
            except Exception:
                # The handler's bug must not take the link (or the node) down with it.
                counters["handler_errors"] += 1
                log.exception("message handler failed on %r", link)

    def _acked(self, link: Link, ack: AckFrame, now: float) -> None:
        self.counters["acks_received"] += 1
        unacked = link.unacked
        ack_sequence, received = ack.ack_sequence, ack.received
        sent = unacked.pop(ack_sequence, None)
        if sent is not None:
            link.frames_acked += 1
            # No link-level retransmission, so every sample is unambiguous (Karn holds).
            link.rto.sample(now - sent)
        if not unacked or not received:
            return
        if len(unacked) < 32:
            # Usually nothing or a frame or two is in flight: test those against the mask
            # rather than the mask's 32 bits against them (the same set either way).
            for sequence in list(unacked):
                back = (ack_sequence - 1 - sequence) % SEQUENCE_MOD
                if back < 32 and received >> back & 1:
                    del unacked[sequence]
                    link.frames_acked += 1
            return
        for sequence in acked_by_mask(ack_sequence, received):
            if unacked.pop(sequence, None) is not None:
                link.frames_acked += 1

    # --- failure --------------------------------------------------------------
    def failure_threshold(self, link: Link) -> float:
        return max(self.config.failure_floor, self.config.failure_rto_factor * link.rto.rto)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_interval)
            now = self._now()
            hello = self.config.hello_timeout
            for link in list(self._links.values()):
                if (
                    link.inbound
                    and link.frames_received == 0
                    and link.state is LinkState.OPEN
                    and now - link.last_activity > hello
                ):
                    self.counters["links_silent_closed"] += 1
                    log.debug("closing %r: no frame within %.1f s", link, hello)
                    self._drop(link)
                    continue
                if link.state is not LinkState.OPEN or not link.unacked:
                    continue
                oldest = next(iter(link.unacked.values()))
                if now - oldest > self.failure_threshold(link):
                    self._fail(link, f"no ACK for {now - oldest:.1f} s")

    def _drop(self, link: Link, *, flush: bool = False) -> None:
        """Close a link on purpose: nobody is told. ``flush`` lets queued bytes (the ACKs
        before a framing error) leave first; otherwise the socket is reset."""
        link.state = LinkState.CLOSED
        self._links.pop(link.link_id, None)
        corked, link.corked = link.corked, []
        if link.transport is not None:
            if flush:
                if corked:
                    link.transport.write(b"".join(corked))
                link.transport.close()
            else:
                link.transport.abort()

    def _fail(self, link: Link, reason: str, *, flush: bool = False) -> None:
        if link.state is LinkState.CLOSED:
            return
        self._drop(link, flush=flush)
        if self._closing:
            return
        self.counters["links_failed"] += 1
        log.debug("%r failed: %s", link, reason)
        if link.node_id is None and (link.inbound or link.address is None):
            return  # an anonymous inbound link: nobody above knows it
        if link.node_id is not None and self._link_to(link.node_id) is not None:
            return  # another link to that peer is alive
        self._report(link.node_id, None if link.inbound else link.address)

    def _report(self, node_id: int | None, address: Address | None) -> None:
        loop = self._loop or asyncio.get_running_loop()
        loop.call_soon(self._on_link_failed, node_id, address)


def _peer_address(transport: asyncio.BaseTransport) -> Address | None:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return Address(str(peer[0]), int(peer[1]))
    return None
