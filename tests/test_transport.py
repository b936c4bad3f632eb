"""The asyncio link layer over real sockets on 127.0.0.1 (ephemeral ports)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from overlay.actions import Address
from overlay.framing import AckFrame, FrameDecoder, encode_data
from overlay.transport import Link, LinkConfig, LinkLayer

NODE_A = 0xA0 << 120
NODE_B = 0xB0 << 120
FAST = LinkConfig(failure_floor=0.6, connect_timeout=2.0, check_interval=0.05)


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}")
        await asyncio.sleep(0.01)


@dataclass
class Node:
    """A LinkLayer with recording callbacks."""

    layer: LinkLayer = field(init=False)
    received: list[tuple[Link, bytes]] = field(default_factory=list)
    failed: list[tuple[int | None, Address | None]] = field(default_factory=list)
    in_send: bool = False
    reentrant: bool = False

    def on_message(self, link: Link, payload: bytes) -> None:
        self.received.append((link, payload))

    def on_failed(self, node_id: int | None, address: Address | None) -> None:
        if self.in_send:
            self.reentrant = True
        self.failed.append((node_id, address))

    def send(self, next_hop: int | None, address: Address | None, payload: bytes) -> None:
        self.in_send = True
        try:
            self.layer.send(next_hop, address, payload)
        finally:
            self.in_send = False


@pytest.fixture
async def make_node() -> AsyncIterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(config: LinkConfig = FAST, **kwargs: object) -> Node:
        node = Node()
        node.layer = LinkLayer(
            "127.0.0.1",
            0,
            on_message=node.on_message,
            on_link_failed=node.on_failed,
            config=config,
            **kwargs,  # type: ignore[arg-type]
        )
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.layer.close()


async def test_listener_reports_bound_port(make_node: Callable[..., Node]) -> None:
    node = make_node()
    address = await node.layer.start()
    assert address.host == "127.0.0.1" and address.port > 0
    assert node.layer.address == address
    _, writer = await asyncio.open_connection(address.host, address.port)
    writer.close()
    await writer.wait_closed()


async def test_frames_both_ways_and_acks_update_rtt(make_node: Callable[..., Node]) -> None:
    a, b = make_node(), make_node()
    await a.layer.start()
    addr_b = await b.layer.start()

    a.send(NODE_B, addr_b, b"hello b")
    await wait_for(lambda: len(b.received) == 1, what="B receives")
    link_at_b, payload = b.received[0]
    assert payload == b"hello b" and link_at_b.inbound and link_at_b.node_id is None

    # B learns who is on the link (the runtime does this from the via list), then answers
    # through it without knowing A's listening address.
    b.layer.bind_node(link_at_b, NODE_A)
    for i in range(20):
        b.send(NODE_A, None, b"to a %d" % i)
        a.send(NODE_B, None, b"to b %d" % i)
    await wait_for(lambda: len(a.received) == 20 and len(b.received) == 21, what="20 each way")
    assert [p for _, p in a.received] == [b"to a %d" % i for i in range(20)]
    assert [p for _, p in b.received][1:] == [b"to b %d" % i for i in range(20)]

    # Exactly one connection, used in both directions.
    assert len(a.layer.links()) == 1 and len(b.layer.links()) == 1
    await wait_for(
        lambda: a.layer.stats()[0].unacked == 0 and b.layer.stats()[0].unacked == 0, what="acks"
    )
    for node, sent in ((a, 21), (b, 20)):
        stats = node.layer.stats()[0]
        assert stats.frames_sent == sent and stats.frames_acked == sent
        assert stats.srtt is not None and 0 <= stats.srtt < 0.5
        assert FAST.rto_min <= stats.rto < 1.0  # moved from the 1 s initial value by samples
    assert a.failed == [] and b.failed == []


async def test_killed_server_fails_the_link_promptly(make_node: Callable[..., Node]) -> None:
    a, b = make_node(), make_node()
    await a.layer.start()
    addr_b = await b.layer.start()
    a.send(NODE_B, addr_b, b"ping")
    await wait_for(lambda: len(b.received) == 1)
    started = time.monotonic()
    await b.layer.close()
    await wait_for(lambda: a.failed == [(NODE_B, addr_b)], timeout=2.0, what="link failure")
    assert time.monotonic() - started < 1.0
    assert a.layer.links() == []
    # The peer is gone: the next send dials, is refused and is reported again.
    a.send(NODE_B, addr_b, b"again")
    await wait_for(lambda: len(a.failed) == 2, timeout=3.0, what="connect failure")
    assert a.failed[1] == (NODE_B, addr_b) and not a.reentrant
    assert a.layer.counters["connect_failures"] == 1


async def test_killed_inbound_connection_is_reported_by_node_id(
    make_node: Callable[..., Node],
) -> None:
    a, b = make_node(), make_node()
    await a.layer.start()
    addr_b = await b.layer.start()
    a.send(NODE_B, addr_b, b"ping")
    await wait_for(lambda: len(b.received) == 1)
    b.layer.bind_node(b.received[0][0], NODE_A)
    await a.layer.close()
    await wait_for(lambda: b.failed == [(NODE_A, None)], timeout=2.0, what="inbound failure")


async def test_peer_that_never_acks_is_declared_failed(make_node: Callable[..., Node]) -> None:
    """A stalled peer keeps the TCP connection open but sends no ACK."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # RTO starts at 0.2 s (no samples yet) -> threshold max(0.6, 4 * 0.2) = 0.8 s.
    a = make_node(LinkConfig(failure_floor=0.6, rto_initial=0.2, check_interval=0.05))
    await a.layer.start()
    try:
        started = time.monotonic()
        a.send(NODE_B, Address("127.0.0.1", port), b"anyone there?")
        await wait_for(lambda: len(a.failed) == 1, timeout=5.0, what="ACK timeout")
        elapsed = time.monotonic() - started
        assert a.failed == [(NODE_B, Address("127.0.0.1", port))]
        # Never before the threshold, and not much after it.
        assert 0.8 <= elapsed < 0.8 + 0.5
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_send_without_link_or_address_reports_asynchronously(
    make_node: Callable[..., Node],
) -> None:
    a = make_node()
    await a.layer.start()
    a.send(NODE_B, None, b"nowhere")
    assert a.failed == []  # not from inside send()
    await wait_for(lambda: a.failed == [(NODE_B, None)])
    assert not a.reentrant


async def test_frames_queued_while_connecting_arrive_in_order(
    make_node: Callable[..., Node],
) -> None:
    a, b = make_node(), make_node()
    await a.layer.start()
    addr_b = await b.layer.start()
    for i in range(50):
        a.send(NODE_B, addr_b, b"%d" % i)
    assert len(a.layer.links()) == 1  # one dial, not fifty
    await wait_for(lambda: len(b.received) == 50)
    assert [p for _, p in b.received] == [b"%d" % i for i in range(50)]
    # A bootstrap-style send (no node id yet) reuses the same link.
    a.send(None, addr_b, b"bootstrap")
    await wait_for(lambda: len(b.received) == 51)
    assert len(a.layer.links()) == 1


async def _raw_exchange(address: Address, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 3.0)  # until the node closes
    finally:
        writer.close()


async def test_garbage_on_inbound_connection_is_survived(make_node: Callable[..., Node]) -> None:
    a, b = make_node(), make_node()
    await a.layer.start()
    addr_b = await b.layer.start()
    # A valid frame first (ACKed), then HTTP: the node ACKs, then closes the connection.
    got = await _raw_exchange(addr_b, encode_data(0, b"ok") + b"GET / HTTP/1.1\r\n\r\n")
    assert FrameDecoder(1024).feed(got) == [AckFrame(0, 0)]
    # An oversized length is refused from the header alone.
    assert await _raw_exchange(addr_b, bytes.fromhex("80 00000000 ffffff") + b"x" * 10) == b""
    await wait_for(lambda: b.layer.counters["framing_errors"] == 2)
    assert b.failed == []  # anonymous links are nobody's business above
    assert b.received[0][1] == b"ok"
    # The node still serves real peers.
    a.send(NODE_B, addr_b, b"still there?")
    await wait_for(lambda: len(b.received) == 2 and b.received[-1][1] == b"still there?")


async def test_oversize_payload_rejected_by_sender(make_node: Callable[..., Node]) -> None:
    a = make_node(LinkConfig(max_payload=1000))
    await a.layer.start()
    with pytest.raises(ValueError):
        a.layer.send(NODE_B, Address("127.0.0.1", 9), b"x" * 1001)


async def test_connection_limit(make_node: Callable[..., Node]) -> None:
    b = make_node(LinkConfig(max_links=2, failure_floor=0.6, check_interval=0.05))
    addr_b = await b.layer.start()
    clients = [make_node() for _ in range(3)]
    for client in clients:
        await client.layer.start()
    # The first two links are idle when the third client connects: the least recently
    # used one is evicted to make room.
    for i, client in enumerate(clients):
        client.send(NODE_B, addr_b, b"%d" % i)
        await wait_for(lambda: len(b.received) == i + 1)  # noqa: B023 - awaited at once
    assert len(b.layer.links()) == 2
    assert b.layer.counters["links_evicted"] == 1


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2preg-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_is_a_constructor_argument(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    a = make_node(FAST, ssl_context=server_ctx, client_ssl_context=client_ctx)
    b = make_node(FAST, ssl_context=server_ctx, client_ssl_context=client_ctx)
    await a.layer.start()
    addr_b = await b.layer.start()
    a.send(NODE_B, addr_b, b"over tls")
    await wait_for(lambda: len(b.received) == 1)
    b.layer.bind_node(b.received[0][0], NODE_A)
    b.send(NODE_A, None, b"back over tls")
    await wait_for(lambda: len(a.received) == 1 and a.received[0][1] == b"back over tls")
    await wait_for(lambda: a.layer.stats()[0].frames_acked == 1)
    # A plaintext client gets nowhere and the TLS node stays up.
    reader, writer = await asyncio.open_connection(addr_b.host, addr_b.port)
    writer.write(encode_data(0, b"plaintext"))
    await writer.drain()
    await asyncio.wait_for(reader.read(), 3.0)  # the node closes the failed handshake
    writer.close()
    a.send(NODE_B, addr_b, b"still tls")
    await wait_for(lambda: [p for _, p in b.received] == [b"over tls", b"still tls"])
