"""asyncio SIP transports: UDP and TCP on one port (RFC 3261 §18, RFC 5626 keepalives).

The transports only move bytes: a UDP datagram or a framed stream message goes to the
:class:`Receiver` with a :class:`Responder` that sends the answer back the way RFC 3261
§18.2.2 wants (UDP: to the address the core computed; TCP: on the same connection).

Limits that keep a misbehaving peer from costing more than its own connection:
- a stream message (headers + body) over ``max_message_bytes`` fails framing: the
  connection gets the error response if one can be built, then is closed;
- at most ``max_connections`` TCP connections; more are closed at once;
- a connection holding part of a message for longer than ``half_open_timeout`` is closed
  (a stream that never completes a message), and one that says nothing for
  ``idle_timeout`` is closed too (RFC 5626 clients ping well within it);
- a peer that does not read its responses (write buffer over ``max_write_buffer``) is
  dropped rather than buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from p2preg.sip.parser import MAX_MESSAGE_BYTES, Frame, FramingError, KeepAlive, StreamFramer
from p2preg.sip.responses import Source

log = logging.getLogger("p2preg.sip")

UDP_RECEIVE_BUFFER = 4 << 20
BIND_ATTEMPTS = 20  # port 0: tries to find a port free for both TCP and UDP


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_header_bytes: int = 16384
    max_connections: int = 1024
    half_open_timeout: float = 10.0
    idle_timeout: float = 300.0
    max_write_buffer: int = 1 << 20
    sweep_interval: float = 1.0


class Responder(Protocol):
    @property
    def is_open(self) -> bool: ...

    def send(self, data: bytes, dest: tuple[str, int]) -> None: ...


class Receiver(Protocol):
    def on_message(
        self, data: bytes, source: Source, responder: Responder, *, stream: bool
    ) -> None: ...

    def on_framing_error(self, error: FramingError, source: Source, responder: Responder) -> None:
        """Answer the error if possible; the transport closes the stream afterwards."""


@functools.lru_cache(maxsize=1024)
def _is_ip(host: str) -> bool:
    # Cached: ipaddress costs microseconds and every UDP response asks about its host,
    # nearly always one of a few client addresses.
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransports) -> None:
        self._owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Bursts of REGISTERs (a fleet re-registering) must queue in the kernel rather
            # than be dropped while the loop is busy; capped by net.core.rmem_max.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self._owner.counters["udp_datagrams"] += 1
        source = Source(str(addr[0]), int(addr[1]), "UDP")
        try:
            self._owner.receiver.on_message(data, source, self, stream=False)
        except Exception:
            self._owner.counters["handler_errors"] += 1
            log.exception("SIP handler failed on a datagram from %s:%s", addr[0], addr[1])

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        host, port = dest
        # A Via maddr may name a host: resolving it here would block the loop, and
        # answering a third party on a sender's say-so is how reflection attacks work.
        if not _is_ip(host) or not 0 < port < 65536:
            self._owner.counters["udp_unroutable"] += 1
            return
        try:
            self.transport.sendto(data, (host, port))
        except OSError as exc:
            self._owner.counters["udp_send_errors"] += 1
            log.debug("cannot send a SIP response to %s:%s: %s", host, port, exc)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from an earlier send: nothing to do.
        self._owner.counters["udp_send_errors"] += 1


class _Tcp(asyncio.Protocol):
    def __init__(self, owner: SipTransports) -> None:
        self._owner = owner
        self._limits = owner.limits
        self._framer = StreamFramer(
            max_header_bytes=self._limits.max_header_bytes,
            max_message_bytes=self._limits.max_message_bytes,
        )
        self.transport: asyncio.Transport | None = None
        self.source = Source("", 0, "TCP")
        self.last_activity = owner.clock()
        self.partial_since: float | None = None

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        if peer:
            self.source = Source(str(peer[0]), int(peer[1]), "TCP")
        owner = self._owner
        if len(owner.connections) >= self._limits.max_connections:
            owner.counters["tcp_rejected"] += 1
            self.transport.abort()
            return
        owner.connections.add(self)
        owner.counters["tcp_accepted"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        now = owner.clock()
        self.last_activity = now
        owner.counters["tcp_bytes"] += len(data)
        for event in self._framer.feed(data):
            if not self.is_open:
                return
            if isinstance(event, Frame):
                owner.counters["tcp_messages"] += 1
                try:
                    owner.receiver.on_message(event.data, self.source, self, stream=True)
                except Exception:
                    owner.counters["handler_errors"] += 1
                    log.exception("SIP handler failed on a message from %s", self.source)
            elif isinstance(event, KeepAlive):
                owner.counters["tcp_keepalives"] += 1
                self.send(b"\r\n", ("", 0))
            else:
                owner.counters["tcp_framing_errors"] += 1
                with contextlib.suppress(Exception):
                    owner.receiver.on_framing_error(event, self.source, self)
                self.close()
                return
        self.partial_since = (self.partial_since or now) if self._framer.pending_bytes else None

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self._limits.max_write_buffer:
            self._owner.counters["tcp_slow_readers"] += 1
            transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # flushes what was written (an error response) first

    def expired(self, now: float) -> str | None:
        if (
            self.partial_since is not None
            and now - self.partial_since > self._limits.half_open_timeout
        ):
            return "half_open"
        if now - self.last_activity > self._limits.idle_timeout:
            return "idle"
        return None


class SipTransports:
    """The UDP endpoint and the TCP listener of one SIP address."""

    def __init__(
        self,
        receiver: Receiver,
        host: str,
        port: int,
        *,
        limits: StreamLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.receiver = receiver
        self.host = host
        self.port = port
        self.limits = limits or StreamLimits()
        self.clock = clock
        self.connections: set[_Tcp] = set()
        self.counters: dict[str, int] = {
            "udp_datagrams": 0,
            "udp_send_errors": 0,
            "udp_unroutable": 0,
            "tcp_accepted": 0,
            "tcp_bytes": 0,
            "tcp_messages": 0,
            "tcp_rejected": 0,
            "tcp_keepalives": 0,
            "tcp_framing_errors": 0,
            "tcp_slow_readers": 0,
            "tcp_closed_half_open": 0,
            "tcp_closed_idle": 0,
            "handler_errors": 0,
        }
        self._udp: _Udp | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        attempts = BIND_ATTEMPTS if self.port == 0 else 1
        for attempt in range(attempts):
            server = await loop.create_server(
                lambda: _Tcp(self), self.host, self.port, reuse_address=True
            )
            port = int(server.sockets[0].getsockname()[1])
            try:
                _, udp = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(self.host, port)
                )
            except OSError as exc:
                server.close()
                await server.wait_closed()
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
                continue  # the kernel gave TCP a port some UDP socket holds: pick another
            self._server = server
            self._udp = udp
            break
        self.address = (self.host, port)
        self._sweeper = asyncio.create_task(self._sweep(), name="sip-tcp-sweeper")
        return self.address

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
            self._udp = None

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.limits.sweep_interval)
            now = self.clock()
            for conn in list(self.connections):
                reason = conn.expired(now)
                if reason is not None:
                    self.counters[f"tcp_closed_{reason}"] += 1
                    if conn.transport is not None:
                        conn.transport.abort()
