"""The SIP front end over real sockets: an in-process ring + SipService on 127.0.0.1:0.

RFC 3261 §10.3 behaviours each over UDP and TCP (issue 4 acceptance 4), the RFC 4475 /
RFC 5118 torture corpus over UDP (acceptance 1), transport limits, overload and the
concurrent-REGISTER case through two front ends of one 3-node ring.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sip_support import (
    SipRing,
    StreamLimits,
    TcpClient,
    UdpClient,
    build_ring,
    header_values,
    open_client,
    request,
    status_of,
)
from test_sip_torture import ALL, CORPUS

from p2preg.sip import Source, parse_message
from p2preg.sip.message import SipParseError, SipRequest
from p2preg.sip.registrar import RegistrarConfig
from p2preg.sip.responses import response_destination
from p2preg.sip.transactions import TransactionCache
from p2preg.sip.uri import SipUri, aor_resource_name, canonical_aor

AOR = "sip:alice@example.com"
TRANSPORTS = ["udp", "tcp"]

RingFactory = Callable[..., Awaitable[SipRing]]


@pytest.fixture
async def make_ring(tmp_path: Path) -> AsyncIterator[RingFactory]:
    rings: list[SipRing] = []

    async def make(n: int = 1, registrar: RegistrarConfig | None = None, **kw: object) -> SipRing:
        ring = await build_ring(tmp_path / f"ring{len(rings)}", n, registrar=registrar, **kw)
        rings.append(ring)
        return ring

    yield make
    for ring in rings:
        await ring.close()


def contacts(reply: bytes) -> list[str]:
    return header_values(reply, "contact")


def reg(user: str = "alice", **kw: object) -> bytes:
    kw.setdefault("transport", "UDP")
    return request("REGISTER", "sip:example.com", to=f"sip:{user}@example.com", **kw)  # type: ignore[arg-type]


async def bindings(ring: SipRing, name: str = "alice@example.com") -> dict[str, object]:
    state = await ring.nodes[0].service.bindings.fetch(name)
    return dict(state.bindings)


# --- REGISTER basics ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_register_then_query_and_lookup(make_ring: RingFactory, kind: str) -> None:
    ring = await make_ring()
    client = await open_client(kind, ring.nodes[0].sip)
    try:
        t = kind.upper()
        reply = await client.ask(
            reg(contacts=["<sip:alice@192.0.2.1:5060>"], expires=600, transport=t)
        )
        assert status_of(reply) == 200
        assert contacts(reply) == ["<sip:alice@192.0.2.1:5060>;expires=600"]
        assert header_values(reply, "date")
        query = await client.ask(reg(transport=t))
        assert status_of(query) == 200
        assert len(contacts(query)) == 1 and contacts(query)[0].startswith(
            "<sip:alice@192.0.2.1:5060>;expires="
        )
        stored = await bindings(ring)
        (binding,) = stored.values()
        assert binding.transport == t  # type: ignore[attr-defined]
        for method in ("INVITE", "OPTIONS", "MESSAGE"):
            lookup = await client.ask(request(method, AOR, to=AOR, transport=t))
            assert status_of(lookup) == 302, lookup
            assert contacts(lookup)[0].startswith("<sip:alice@192.0.2.1:5060>")
        none = await client.ask(
            request("INVITE", "sip:bob@example.com", to="sip:bob@example.com", transport=t)
        )
        assert status_of(none) == 480
    finally:
        client.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_lookup_lists_contacts_highest_q_first(make_ring: RingFactory, kind: str) -> None:
    ring = await make_ring()
    client = await open_client(kind, ring.nodes[0].sip)
    try:
        reply = await client.ask(
            reg(
                contacts=[
                    "<sip:a@192.0.2.1>;q=0.1",
                    "<sip:b@192.0.2.2>;q=0.9",
                    "<sip:c@192.0.2.3>;q=0.5",
                ],
                transport=kind.upper(),
            )
        )
        assert status_of(reply) == 200
        lookup = await client.ask(request("OPTIONS", AOR, to=AOR, transport=kind.upper()))
        assert status_of(lookup) == 302
        assert [c.split(">")[0] for c in contacts(lookup)] == [
            "<sip:b@192.0.2.2",
            "<sip:c@192.0.2.3",
            "<sip:a@192.0.2.1",
        ]
        assert ";q=0.9;expires=3600" in contacts(lookup)[0]
    finally:
        client.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_wildcard_removes_every_binding(make_ring: RingFactory, kind: str) -> None:
    ring = await make_ring()
    client = await open_client(kind, ring.nodes[0].sip)
    t = kind.upper()
    try:
        reply = await client.ask(
            reg(contacts=["<sip:a@192.0.2.1>", "<sip:b@192.0.2.2>"], transport=t)
        )
        assert len(contacts(reply)) == 2
        wipe = await client.ask(reg(contacts=["*"], expires=0, transport=t))
        assert status_of(wipe) == 200 and contacts(wipe) == []
        assert await bindings(ring) == {}
        lookup = await client.ask(request("INVITE", AOR, to=AOR, transport=t))
        assert status_of(lookup) == 480
    finally:
        client.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_wildcard_misuse_is_400(make_ring: RingFactory, kind: str) -> None:
    ring = await make_ring()
    client = await open_client(kind, ring.nodes[0].sip)
    t = kind.upper()
    try:
        await client.ask(reg(contacts=["<sip:a@192.0.2.1>"], transport=t))
        no_zero = await client.ask(reg(contacts=["*"], expires=3600, transport=t))
        assert status_of(no_zero) == 400
        mixed = await client.ask(reg(contacts=["*", "<sip:b@192.0.2.2>"], expires=0, transport=t))
        assert status_of(mixed) == 400
        assert list(await bindings(ring)) == ["sip:a@192.0.2.1"]
    finally:
        client.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_contact_expires_param_beats_expires_header(
    make_ring: RingFactory, kind: str
) -> None:
    ring = await make_ring()
    client = await open_client(kind, ring.nodes[0].sip)
    try:
        reply = await client.ask(
            reg(
                contacts=["<sip:a@192.0.2.1>;expires=120", "<sip:b@192.0.2.2>"],
                expires=300,
                transport=kind.upper(),
            )
        )
        assert status_of(reply) == 200
        got = {c.split(">")[0][1:]: c.rsplit("expires=", 1)[1] for c in contacts(reply)}
        assert got == {"sip:a@192.0.2.1": "120", "sip:b@192.0.2.2": "300"}
        default = await client.ask(
            reg(user="carol", contacts=["<sip:c@192.0.2.3>"], transport=kind.upper())
        )
        assert contacts(default) == ["<sip:c@192.0.2.3>;expires=3600"]
        capped = await client.ask(
            reg(user="dave", contacts=["<sip:d@192.0.2.4>"], expires=999999, transport=kind.upper())
        )
        assert contacts(capped) == ["<sip:d@192.0.2.4>;expires=86400"]
    finally:
        client.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_interval_too_brief_423_and_clamp_mode(make_ring: RingFactory, kind: str) -> None:
    strict = await make_ring(registrar=RegistrarConfig(min_expires_mode="423"))
    clamp = await make_ring()  # the default
    t = kind.upper()
    a = await open_client(kind, strict.nodes[0].sip)
    b = await open_client(kind, clamp.nodes[0].sip)
    try:
        brief = await a.ask(reg(contacts=["<sip:a@192.0.2.1>"], expires=10, transport=t))
        assert status_of(brief) == 423
        assert header_values(brief, "min-expires") == ["60"]
        assert await bindings(strict) == {}
        clamped = await b.ask(reg(contacts=["<sip:a@192.0.2.1>"], expires=10, transport=t))
        assert status_of(clamped) == 200
        assert contacts(clamped) == ["<sip:a@192.0.2.1>;expires=60"]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_lower_cseq_same_call_id_is_400_and_changes_nothing(
    make_ring: RingFactory, kind: str
) -> None:
    ring = await make_ring()
    client = await open_client(kind, ring.nodes[0].sip)
    t = kind.upper()
    try:
        ok = await client.ask(
            reg(contacts=["<sip:a@192.0.2.1>"], call_id="cid-1", cseq=10, expires=600, transport=t)
        )
        assert status_of(ok) == 200
        before = await bindings(ring)
        for cseq in (9, 10):
            stale = await client.ask(
                reg(
                    contacts=["<sip:a@192.0.2.1>", "<sip:new@192.0.2.9>"],
                    call_id="cid-1",
                    cseq=cseq,
                    expires=1200,
                    transport=t,
                )
            )
            assert status_of(stale) == 400
            assert b"Invalid CSeq" in stale.split(b"\r\n", 1)[0]
        assert await bindings(ring) == before
    finally:
        client.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_new_call_id_replaces_the_binding(make_ring: RingFactory, kind: str) -> None:
    ring = await make_ring()
    client = await open_client(kind, ring.nodes[0].sip)
    t = kind.upper()
    try:
        await client.ask(reg(contacts=["<sip:a@192.0.2.1>"], call_id="old", cseq=50, transport=t))
        reply = await client.ask(
            reg(contacts=["<sip:a@192.0.2.1>"], call_id="new", cseq=1, expires=900, transport=t)
        )
        assert status_of(reply) == 200
        assert contacts(reply) == ["<sip:a@192.0.2.1>;expires=900"]
        (binding,) = (await bindings(ring)).values()
        assert binding.call_id == "new" and binding.cseq == 1  # type: ignore[attr-defined]
    finally:
        client.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_retransmission_gets_identical_response_and_is_applied_once(
    make_ring: RingFactory, kind: str
) -> None:
    ring = await make_ring()
    client = await open_client(kind, ring.nodes[0].sip)
    node = ring.nodes[0]
    try:
        data = reg(contacts=["<sip:a@192.0.2.1>"], call_id="rtx", cseq=1, transport=kind.upper())
        first = await client.ask(data)
        state = await node.service.bindings.fetch("alice@example.com")
        stores = node.service.bindings.stats.stores
        await asyncio.sleep(1.1)  # a later second: a re-applied REGISTER would show a new Date
        second = await client.ask(data)
        assert second == first
        after = await node.service.bindings.fetch("alice@example.com")
        assert after.generation == state.generation
        assert after.bindings == state.bindings
        assert node.service.bindings.stats.stores == stores
        assert node.service.retransmissions == 1
    finally:
        client.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_too_many_contacts_is_503(make_ring: RingFactory, kind: str) -> None:
    ring = await make_ring(registrar=RegistrarConfig(max_contacts=2))
    client = await open_client(kind, ring.nodes[0].sip)
    t = kind.upper()
    try:
        ok = await client.ask(reg(contacts=["<sip:a@192.0.2.1>", "<sip:b@192.0.2.2>"], transport=t))
        assert status_of(ok) == 200
        over = await client.ask(reg(contacts=["<sip:c@192.0.2.3>"], transport=t))
        assert status_of(over) == 503
        assert header_values(over, "retry-after")
        assert sorted(await bindings(ring)) == ["sip:a@192.0.2.1", "sip:b@192.0.2.2"]
    finally:
        client.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_expired_binding_disappears(make_ring: RingFactory, kind: str) -> None:
    ring = await make_ring(registrar=RegistrarConfig(min_expires=1))
    client = await open_client(kind, ring.nodes[0].sip)
    t = kind.upper()
    try:
        reply = await client.ask(
            reg(contacts=["<sip:short@192.0.2.1>;expires=1", "<sip:long@192.0.2.2>"], transport=t)
        )
        assert len(contacts(reply)) == 2
        lookups: list[bytes] = []

        async def only_long() -> bool:
            lookup = await client.ask(request("INVITE", AOR, to=AOR, transport=t))
            lookups.append(lookup)
            return [c.split(">")[0] for c in contacts(lookup)] == ["<sip:long@192.0.2.2"]

        deadline = asyncio.get_running_loop().time() + 10
        while not await only_long():
            assert asyncio.get_running_loop().time() < deadline, lookups[-1]
            await asyncio.sleep(0.1)
        query = await client.ask(reg(transport=t))
        assert [c.split(">")[0] for c in contacts(query)] == ["<sip:long@192.0.2.2"]
        assert list(await bindings(ring)) == ["sip:long@192.0.2.2"]
    finally:
        client.close()


# --- the node itself, keepalives, garbage ----------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_options_to_the_node_is_200(make_ring: RingFactory, kind: str) -> None:
    ring = await make_ring()
    client = await open_client(kind, ring.nodes[0].sip)
    try:
        host, port = ring.nodes[0].sip
        reply = await client.ask(
            request(
                "OPTIONS", f"sip:{host}:{port}", to="sip:ping@example.com", transport=kind.upper()
            )
        )
        assert status_of(reply) == 200
        assert "REGISTER" in header_values(reply, "allow")[0]
    finally:
        client.close()


async def test_udp_response_goes_to_rport_source(make_ring: RingFactory) -> None:
    ring = await make_ring()
    client = await UdpClient.open(ring.nodes[0].sip)
    try:
        # The Via names a port nobody listens on; rport sends the answer to our socket.
        reply = await client.ask(reg(contacts=["<sip:a@192.0.2.1>"], via_host="192.0.2.50:7777"))
        via = header_values(reply, "via")[0]
        assert f"received=127.0.0.1;rport={client.local[1]}" in via
    finally:
        client.close()


async def test_tcp_crlf_keepalive_is_answered(make_ring: RingFactory) -> None:
    ring = await make_ring()
    client = await TcpClient.open(ring.nodes[0].sip)
    try:
        client.send(b"\r\n\r\n")
        pong = await asyncio.wait_for(client.reader.readexactly(2), 5)
        assert pong == b"\r\n"
        # The connection still carries requests afterwards.
        reply = await client.ask(reg(contacts=["<sip:a@192.0.2.1>"], transport="TCP"))
        assert status_of(reply) == 200
    finally:
        client.close()


async def test_garbage_leaves_the_node_up(make_ring: RingFactory) -> None:
    ring = await make_ring()
    server = ring.nodes[0].sip
    rng = random.Random(4)
    udp = await UdpClient.open(server)
    try:
        for _ in range(300):
            udp.send(os.urandom(rng.randrange(1, 1500)))
        udp.send(b"INVITE sip:x SIP/2.0\r\n\r\n")
        udp.send(b"\xff" * 9000)
        for _ in range(5):
            tcp = await TcpClient.open(server)
            tcp.send(os.urandom(rng.randrange(1, 30000)))
            tcp.send(b"\r\n\r\n" * 3)
            await tcp.closed_by_server(1.0)
            tcp.close()
        while await udp.recv(0.3) is not None:
            pass  # whatever was answered
        reply = await udp.ask(request("OPTIONS", f"sip:{server[0]}:{server[1]}", to=AOR))
        assert status_of(reply) == 200
    finally:
        udp.close()


async def test_tcp_limits(make_ring: RingFactory) -> None:
    limits = StreamLimits(max_connections=3, half_open_timeout=0.5, sweep_interval=0.1)
    ring = await make_ring(limits=limits)
    server = ring.nodes[0].sip
    service = ring.nodes[0].service
    # A stream that never completes its message is closed.
    half = await TcpClient.open(server)
    half.send(b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKx\r\n")
    assert await half.closed_by_server(5.0)
    assert service.transports.counters["tcp_closed_half_open"] == 1
    # A message larger than 64 KiB gets 513 (it names a Via) and the stream is closed.
    big = await TcpClient.open(server)
    big.send(
        b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKbig\r\n"
        b"To: <sip:a@example.com>\r\nFrom: <sip:a@example.com>;tag=1\r\nCall-ID: big\r\n"
        b"CSeq: 1 REGISTER\r\nContent-Length: 70000\r\n\r\n"
    )
    reply = await big.recv(5.0)
    assert reply is not None and status_of(reply) == 513
    assert await big.closed_by_server(5.0)
    # At most 3 connections at once: the fourth is closed immediately.
    held = [await TcpClient.open(server) for _ in range(3)]
    for c in held:
        assert status_of(await c.ask(reg(contacts=["<sip:a@192.0.2.1>"], transport="TCP"))) in (
            200,
        )
    extra = await TcpClient.open(server)
    assert await extra.closed_by_server(5.0)
    assert service.transports.counters["tcp_rejected"] >= 1
    for c in [*held, extra, half, big]:
        c.close()


async def test_overload_answers_503_with_retry_after(make_ring: RingFactory) -> None:
    # Durable stores wait for a disk flush, so requests pile up as they do in production; an
    # async 1-node ring can finish each REGISTER before the next datagram is even read.
    ring = await make_ring(max_in_flight=2, durability="sync")
    service = ring.nodes[0].service
    client = await UdpClient.open(ring.nodes[0].sip)
    try:
        n = 300
        for i in range(n):
            client.send(reg(user=f"u{i}", contacts=[f"<sip:u{i}@192.0.2.1>"]))
        codes: list[int] = []
        retry_after: list[str] = []
        while len(codes) < n:
            data = await client.recv(10.0)
            assert data is not None, f"only {len(codes)} answers of {n}"
            codes.append(status_of(data))
            if status_of(data) == 503:
                retry_after += header_values(data, "retry-after")
        assert set(codes) <= {200, 503}
        assert codes.count(503) == service.overload_rejections > 0
        assert len(retry_after) == codes.count(503)
        assert codes.count(200) >= 2
        assert any(
            line.startswith("p2preg_sip_overload_rejections_total ")
            and float(line.split()[-1]) == codes.count(503)
            for line in service.prometheus_lines()
        )
    finally:
        client.close()


# --- acceptance 1: the torture corpus over UDP ------------------------------------------------


async def test_torture_corpus_over_udp(make_ring: RingFactory) -> None:
    """Responses go where RFC 3261 §18.2.2 says: most corpus Vias have no rport, so the
    answer goes to the source IP at the Via's port (5060, 6050 …). The client sends from a
    random loopback address and listens on each port the core will answer to.

    RFC 4475/5118 judge each message against a fresh registrar, but several REGISTERs share
    an AOR, Call-ID and CSeq (rfc5118/ipv6-good, port-ambiguous …): against one registrar
    with memory the later ones are, rightly, 400 Invalid CSeq; some even share a Via branch
    and sent-by (rfc5118/ipv6-bad and ipv6-good), so the transaction cache rightly replays the
    first answer. So after each message the bindings it created are removed again through
    the overlay and the transaction memory is emptied."""
    ring = await make_ring()
    server = ring.nodes[0].sip
    rng = random.Random()
    ip = f"127.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}.{rng.randrange(2, 255)}"
    client = await UdpClient.open(server, (ip, 0))
    receivers: dict[int, UdpClient] = {client.local[1]: client}
    verdicts: dict[str, int | None] = {}
    ping = request("OPTIONS", f"sip:{server[0]}:{server[1]}", to=AOR, via_host=f"{ip}:1")
    try:
        for name in sorted(ALL):
            data = (CORPUS / name).read_bytes()
            port = _answer_port(data, Source(ip, client.local[1]))
            if port not in receivers:
                receivers[port] = await UdpClient.open(server, (ip, port))
            client.send(data)
            reply = await receivers[port].recv(0.5 if ALL[name] is None else 5.0)
            verdicts[name] = None if reply is None else status_of(reply)
            await _forget_registration(ring, data)
            ring.nodes[0].service.core.cache = TransactionCache()
            # Still up and answering after every message (the node stays up throughout).
            assert status_of(await client.ask(ping)) == 200, name
        wrong = {n: (verdicts[n], ALL[n]) for n in ALL if verdicts[n] != ALL[n]}
        assert not wrong, f"(got, expected): {wrong}"
        assert len(verdicts) == len(ALL) >= 62
        for receiver in receivers.values():
            assert await receiver.recv(0.2) is None  # nothing answered twice or misdirected
    finally:
        for receiver in receivers.values():
            receiver.close()


async def _forget_registration(ring: SipRing, data: bytes) -> None:
    try:
        message = parse_message(data)
        if not isinstance(message, SipRequest) or message.method != "REGISTER":
            return
        to = message.to().uri
    except SipParseError:
        return
    if not isinstance(to, SipUri):
        return
    name = aor_resource_name(canonical_aor(to))
    bindings = ring.nodes[0].service.bindings
    state = await bindings.fetch(name)
    await bindings.store(name, state, (), tuple(state.bindings), time.time())


def _answer_port(data: bytes, source: Source) -> int:
    try:
        message = parse_message(data)
        headers = message.headers
    except SipParseError as exc:
        headers = exc.headers  # type: ignore[assignment]
    if headers is None:
        return source.port  # nothing will be sent; listen anywhere
    host, port = response_destination(headers, source)
    assert host == source.host
    return port


# --- acceptance 4, last point: two front ends, one AOR, at once ------------------------------


async def test_concurrent_registers_through_two_nodes_both_land(make_ring: RingFactory) -> None:
    ring = await make_ring(3)
    a, b = ring.nodes[0], ring.nodes[1]
    ca, cb = await UdpClient.open(a.sip), await UdpClient.open(b.sip)
    users = [f"race{i}" for i in range(40)]
    try:
        # Each AOR exists first: both writers change a binding set that is not empty.
        for user in users:
            seed = reg(user=user, contacts=[f"<sip:{user}-seed@192.0.2.9>"])
            assert status_of(await ca.ask(seed)) == 200
        for user in users:
            ca.send(reg(user=user, contacts=[f"<sip:{user}-a@192.0.2.1>"], call_id=f"{user}a"))
            cb.send(reg(user=user, contacts=[f"<sip:{user}-b@192.0.2.2>"], call_id=f"{user}b"))
        got_a = [await ca.recv(10.0) for _ in users]
        got_b = [await cb.recv(10.0) for _ in users]
        assert all(r is not None and status_of(r) == 200 for r in got_a + got_b)
        c = await UdpClient.open(ring.nodes[2].sip)
        try:
            for user in users:
                aor = f"sip:{user}@example.com"
                lookup = await c.ask(request("INVITE", aor, to=aor))
                assert sorted(x.split(">")[0][1:] for x in contacts(lookup)) == [
                    f"sip:{user}-a@192.0.2.1",
                    f"sip:{user}-b@192.0.2.2",
                    f"sip:{user}-seed@192.0.2.9",
                ], lookup
        finally:
            c.close()
        conflicts = sum(n.service.bindings.stats.conflicts for n in ring.nodes)
        # The owner applies both REGISTERs itself, one after the other: nothing to retry.
        assert conflicts == 0
    finally:
        ca.close()
        cb.close()


async def test_metrics_lines(make_ring: RingFactory) -> None:
    ring = await make_ring()
    client = await UdpClient.open(ring.nodes[0].sip)
    try:
        await client.ask(reg(contacts=["<sip:a@192.0.2.1>"]))
        lines = ring.nodes[0].service.prometheus_lines()
        text = "\n".join(lines)
        assert 'p2preg_sip_requests_total{method="REGISTER"} 1' in text
        assert 'p2preg_sip_responses_total{code="200",method="REGISTER"} 1' in text
        assert 'p2preg_sip_register_duration_seconds_bucket{le="+Inf"} 1' in text
        assert "alice" not in text
        for line in lines:
            if line.startswith("# TYPE") and line.endswith(" counter"):
                assert line.split()[2].endswith("_total")
    finally:
        client.close()


async def test_ring_that_cannot_answer_gives_503(make_ring: RingFactory) -> None:
    ring = await make_ring(overlay_deadline=0.5, overlay_request_timeout=0.2)
    node = ring.nodes[0]
    await node.runtime.close()  # the overlay is gone; the SIP side still listens
    client = await UdpClient.open(node.sip)
    try:
        reply = await client.ask(reg(contacts=["<sip:a@192.0.2.1>"]))
        assert status_of(reply) == 503
        assert header_values(reply, "retry-after") == ["5"]
        lookup = await client.ask(request("INVITE", AOR, to=AOR))
        assert status_of(lookup) == 503
    finally:
        client.close()
