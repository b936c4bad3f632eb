"""In-process SIP nodes (OverlayRuntime + RecordStore + SipService) and small SIP clients.

Each runtime has the node's storage wiring: its LMDB store as the replication backend
(primary copies plus replicas on the next successors, handoff on join and leave), so SIP
tests exercise replication as a real node does. Multi-process tests use real
``p2preg run`` nodes instead (harness.py).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fast_timers import FAST_LINKS, fast_chord

from overlay.actions import Address, PeerState
from overlay.replication_backend import ReplicationConfig
from overlay.runtime import OverlayRuntime
from p2preg.kinds import KIND_LIMITS
from p2preg.sip.parser import Frame, StreamFramer
from p2preg.sip.register_op import sip_operations
from p2preg.sip.registrar import RegistrarConfig
from p2preg.sip.service import SipService
from p2preg.sip.transport import StreamLimits
from storage import RecordStore

CONFIG = fast_chord("sip-test")
LINKS = FAST_LINKS
REPLICATION = ReplicationConfig()  # what a node runs with by default


async def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class SipNode:
    runtime: OverlayRuntime
    store: RecordStore
    service: SipService
    sip: tuple[str, int] = ("", 0)
    overlay: Address | None = None


@dataclass
class SipRing:
    root: Path
    nodes: list[SipNode] = field(default_factory=list)

    async def add(
        self,
        node_id: int,
        bootstrap: Sequence[Address] = (),
        *,
        registrar: RegistrarConfig | None = None,
        durability: str = "async",
        **service_args: Any,
    ) -> SipNode:
        # As node.py opens it: the store never flushes per commit; with durability "sync"
        # the runtime flushes before answering.
        store = RecordStore(self.root / f"store-{node_id:032x}", KIND_LIMITS, durability="async")
        runtime = OverlayRuntime(
            node_id=node_id,
            config=CONFIG,
            host="127.0.0.1",
            port=0,
            rng=random.Random(node_id),
            link_config=LINKS,
            backend=store,
            durability=durability,
            replication=REPLICATION,
            operations=sip_operations(),
        )
        service = SipService(runtime, registrar, "127.0.0.1", 0, **service_args)
        node = SipNode(runtime, store, service)
        self.nodes.append(node)
        node.overlay = await runtime.start(bootstrap)
        await runtime.wait_state(PeerState.JOINED, 15.0)
        node.sip = await service.start()
        return node

    def consistent(self) -> bool:
        ids = sorted(n.runtime.node_id for n in self.nodes)
        count = len(ids)
        for node in self.nodes:
            view = node.runtime.view()
            if view.state is not PeerState.JOINED:
                return False
            if count == 1:
                continue
            i = ids.index(node.runtime.node_id)
            if not view.successors or view.successors[0] != ids[(i + 1) % count]:
                return False
            if not view.predecessors or view.predecessors[0] != ids[(i - 1) % count]:
                return False
        return True

    async def close(self) -> None:
        for node in self.nodes:
            await node.service.stop()
        for node in self.nodes:
            await node.runtime.close()
            node.store.close()


async def build_ring(
    root: Path, n: int, *, seed: int = 7, registrar: RegistrarConfig | None = None, **kw: Any
) -> SipRing:
    rng = random.Random(seed)
    ring = SipRing(root)
    first = await ring.add(rng.getrandbits(128), registrar=registrar, **kw)
    assert first.overlay is not None
    for _ in range(n - 1):
        await ring.add(rng.getrandbits(128), [first.overlay], registrar=registrar, **kw)
    await wait_until(ring.consistent, 30.0, f"a consistent {n}-node ring")
    return ring


# --- SIP messages --------------------------------------------------------------------------------


def branch() -> str:
    return "z9hG4bK" + uuid.uuid4().hex[:16]


def request(
    method: str,
    ruri: str,
    *,
    to: str,
    call_id: str | None = None,
    cseq: int = 1,
    contacts: Sequence[str] = (),
    expires: int | None = None,
    via_host: str = "127.0.0.1:5999",
    transport: str = "UDP",
    via_branch: str | None = None,
    extra: Sequence[str] = (),
    max_forwards: int = 70,
) -> bytes:
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via_host};branch={via_branch or branch()};rport",
        f"Max-Forwards: {max_forwards}",
        f"From: <{to}>;tag={uuid.uuid4().hex[:8]}",
        f"To: <{to}>",
        f"Call-ID: {call_id or uuid.uuid4().hex}",
        f"CSeq: {cseq} {method}",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += list(extra)
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def header_values(data: bytes, name: str) -> list[str]:
    out = []
    for line in data.decode("utf-8", "replace").split("\r\n")[1:]:
        if not line:
            break
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            out.append(value.strip())
    return out


# --- clients -----------------------------------------------------------------------------


class _UdpProto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


class UdpClient:
    def __init__(
        self, transport: asyncio.DatagramTransport, proto: _UdpProto, server: tuple[str, int]
    ) -> None:
        self.transport = transport
        self.proto = proto
        self.server = server

    @classmethod
    async def open(
        cls, server: tuple[str, int], local: tuple[str, int] = ("127.0.0.1", 0)
    ) -> UdpClient:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(_UdpProto, local_addr=local)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        return cls(transport, proto, server)

    @property
    def local(self) -> tuple[str, int]:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def send(self, data: bytes) -> None:
        self.transport.sendto(data, self.server)

    async def recv(self, timeout: float = 5.0) -> bytes | None:
        try:
            return await asyncio.wait_for(self.proto.queue.get(), timeout)
        except TimeoutError:
            return None

    async def ask(self, data: bytes, timeout: float = 8.0) -> bytes:
        self.send(data)
        reply = await self.recv(timeout)
        assert reply is not None, f"no answer to {data[:60]!r}"
        return reply

    def close(self) -> None:
        self.transport.close()


class TcpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = StreamFramer()
        self.pending: list[bytes] = []
        self.keepalives = 0

    @classmethod
    async def open(cls, server: tuple[str, int]) -> TcpClient:
        reader, writer = await asyncio.open_connection(*server)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 5.0) -> bytes | None:
        """The next framed message; None on timeout or when the server closed."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return None
            if not chunk:
                return None
            for event in self.framer.feed(chunk):
                if isinstance(event, Frame):
                    self.pending.append(event.data)
        return self.pending.pop(0)

    async def ask(self, data: bytes, timeout: float = 8.0) -> bytes:
        self.send(data)
        reply = await self.recv(timeout)
        assert reply is not None, f"no answer to {data[:60]!r}"
        return reply

    async def closed_by_server(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def close(self) -> None:
        self.writer.close()


Client = UdpClient | TcpClient


async def open_client(kind: str, server: tuple[str, int]) -> Client:
    if kind == "udp":
        return await UdpClient.open(server)
    return await TcpClient.open(server)


__all__ = [
    "CONFIG",
    "Client",
    "SipRing",
    "StreamLimits",
    "TcpClient",
    "UdpClient",
    "build_ring",
    "header_values",
    "open_client",
    "request",
    "status_of",
    "wait_until",
]
