"""SipService as a whole: fuzzing a running 3-node ring (issue 4 acceptance 2), the config
file, and the kill -9 of a responsible peer with real processes (acceptance 5).

The fuzz ring is three in-process runtimes with their SIP services (real sockets, one
process), so the test can wait on the services' own counters instead of guessing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import REPO, Cluster, responsible_and_replicas, wait_for, wait_ring
from sip_support import (
    SipRing,
    TcpClient,
    UdpClient,
    build_ring,
    header_values,
    request,
    status_of,
)
from test_sip_torture import ALL, CORPUS

from overlay.ids import id_hex, resource_id
from p2preg.config_file import (
    ConfigError,
    load_config,
    merge,
    parse_config,
    run_parser_dests,
)
from p2preg.sip import LocalRegistrar, Source
from p2preg.sip.registrar import RegistrarConfig

KEEPER = "keeper@protected.example.org"
MAX_DATAGRAM = 65507  # larger mutants cannot be sent over UDP at all


# --- fuzz ------------------------------------------------------------------------------------


def seeds() -> list[bytes]:
    out = [
        request("REGISTER", "sip:example.com", to="sip:fuzz@example.com",
                contacts=["<sip:fuzz@192.0.2.1:5060>;q=0.5", "<sip:f2@192.0.2.2>"], expires=300),
        request("REGISTER", "sip:example.com", to="sip:fuzz2@example.com", contacts=["*"],
                expires=0),
        request("REGISTER", "sip:example.com", to="sip:fuzz3@example.com"),
        request("INVITE", "sip:fuzz@example.com", to="sip:fuzz@example.com",
                extra=["Content-Type: application/sdp"]),
        request("OPTIONS", "sip:127.0.0.1", to="sip:fuzz@example.com"),
        request("OPTIONS", "sip:fuzz@example.com", to="sip:fuzz@example.com", transport="TCP"),
        request("MESSAGE", "sip:fuzz2@example.com", to="sip:fuzz2@example.com"),
        request("CANCEL", "sip:fuzz@example.com", to="sip:fuzz@example.com"),
        request("ACK", "sip:fuzz@example.com", to="sip:fuzz@example.com"),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n",
    ]  # fmt: skip
    for name in sorted(ALL):
        data = (CORPUS / name).read_bytes()
        if b"protected.example.org" not in data:
            out.append(data)
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        op = rng.randrange(9)
        n = len(buf)
        if op == 0 and n:  # flip bytes
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 1 and n:  # delete a slice
            i = rng.randrange(n)
            del buf[i : i + rng.randrange(1, 40)]
        elif op == 2:  # insert junk
            i = rng.randrange(n + 1)
            junk = rng.choice(
                (os.urandom(rng.randrange(1, 20)), b"\r\n", b";", b",", b"<", b">", b"\"",
                 b" ", b"\t", b"%", b"%00", b"\x00", b":", b"@", b"[", b"]", b"\r\n ")
            )  # fmt: skip
            buf[i:i] = junk
        elif op == 3:  # duplicate or drop a line
            lines = bytes(buf).split(b"\r\n")
            if len(lines) > 2:
                j = rng.randrange(1, len(lines))
                if rng.random() < 0.5:
                    lines.insert(j, lines[j])
                else:
                    del lines[j]
                buf = bytearray(b"\r\n".join(lines))
        elif op == 4 and n:  # truncate
            del buf[rng.randrange(n) :]
        elif op == 5:  # bare LFs
            buf = bytearray(bytes(buf).replace(b"\r\n", b"\n", rng.randrange(1, 6)))
        elif op == 6:  # a wrong Content-Length
            text = bytes(buf)
            i = text.lower().find(b"content-length:")
            if i >= 0:
                end = text.find(b"\r\n", i)
                value = str(rng.choice((0, 1, 5, 100, 70000, 10**12, -1))).encode()
                buf = bytearray(text[: i + 15] + b" " + value + text[end if end >= 0 else n :])
        elif op == 7:  # a huge header value
            i = bytes(buf).find(b"\r\n")
            if i >= 0:
                buf[i:i] = b"\r\nX-Big: " + b"a" * rng.choice((100, 5000, 20000))
        else:  # numbers into odd values
            for key in (b"CSeq: ", b"Expires: ", b"Max-Forwards: "):
                i = bytes(buf).find(key)
                if i >= 0 and rng.random() < 0.5:
                    j = i + len(key)
                    buf[j:j] = rng.choice((b"99999999999", b"-", b"0", b"4294967296", b" "))
    return bytes(buf)


async def keeper_state(ring: SipRing) -> tuple[dict[str, object], int]:
    state = await ring.nodes[2].service.bindings.fetch(KEEPER)
    return dict(state.bindings), state.generation


async def wait_counter(get: Callable[[], int], target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while get() < target:
        assert time.monotonic() < deadline, f"server saw {get()} of {target}"
        await asyncio.sleep(0.002)


async def fuzz_ring(tmp_path: Path, total: int, seed: int) -> None:
    ring = await build_ring(tmp_path / "ring", 3, seed=5)
    try:
        await _fuzz(ring, total, seed)
    finally:
        await ring.close()


async def _fuzz(ring: SipRing, total: int, seed: int) -> None:
    rng = random.Random(seed)
    corpus = seeds()
    nodes = ring.nodes
    # Bindings stored before the storm must come out of it untouched.
    keeper = await UdpClient.open(nodes[0].sip)
    reply = await keeper.ask(
        request("REGISTER", "sip:protected.example.org", to=f"sip:{KEEPER}",
                contacts=["<sip:keeper@192.0.2.77>", "<sip:keeper2@192.0.2.78>;q=0.2"])
    )  # fmt: skip
    assert status_of(reply) == 200
    keeper.close()
    before = await keeper_state(ring)
    assert len(before[0]) == 2

    # Mutants go out from a loopback address of their own, so whatever a mangled Via
    # makes us answer lands there and nowhere else.
    ip = f"127.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}.{rng.randrange(2, 255)}"
    udp = [await UdpClient.open(node.sip, (ip, 0)) for node in nodes]
    checker = [await UdpClient.open(node.sip, (ip, 0)) for node in nodes]
    sent_udp = sent_tcp = checked = 0
    per_node = [0] * len(nodes)
    half = total // 2
    try:
        # UDP: batches, each awaited until the servers have read it (no kernel drops).
        while sent_udp < half:
            for _ in range(min(200, half - sent_udp)):
                k = rng.randrange(len(nodes))
                # (asyncio does not send empty datagrams: those count as one byte)
                udp[k].send(mutate(rng.choice(corpus), rng)[:MAX_DATAGRAM] or b"\x00")
                per_node[k] += 1
                sent_udp += 1
            for k, node in enumerate(nodes):
                counters = node.service.transports.counters
                await wait_counter(lambda c=counters: c["udp_datagrams"], per_node[k], 20.0)
            for c in udp:
                while c.proto.queue.qsize():
                    c.proto.queue.get_nowait()
            # Sample: a well-framed mutant that warrants a reply (the pure pipeline says
            # it does, and to this socket) gets one.
            k = rng.randrange(len(nodes))
            sample = mutate(rng.choice(corpus[:9]), rng)[:MAX_DATAGRAM] or b"\x00"
            expected = LocalRegistrar().handle(sample, Source(ip, checker[k].local[1]), 1e9)
            checker[k].send(sample)
            per_node[k] += 1
            if expected is not None and expected.dest == checker[k].local:
                got = await checker[k].recv(10.0)
                assert got is not None, f"no reply to a request that warrants one: {sample!r}"
                checked += 1
        # TCP: one stream at a time, mutants in batches; each batch is awaited until the
        # server has read all of it or closed the stream (a framing error), then we reconnect.
        stream: TcpClient | None = None
        k = 0
        while sent_tcp < total - half:
            if stream is None:
                k = rng.randrange(len(nodes))
                stream = await TcpClient.open(nodes[k].sip)
            counters = nodes[k].service.transports.counters
            count = rng.randrange(1, 5)
            batch = b"".join(mutate(rng.choice(corpus), rng) for _ in range(count))
            target = counters["tcp_bytes"] + len(batch)
            sent_tcp += count
            closed = False
            try:
                stream.send(batch)
                deadline = time.monotonic() + 20.0
                while counters["tcp_bytes"] < target and not closed:
                    assert time.monotonic() < deadline, "server stopped reading a stream"
                    with contextlib.suppress(TimeoutError):
                        closed = not await asyncio.wait_for(stream.reader.read(65536), 0.01)
            except ConnectionError:
                closed = True
            if closed or rng.random() < 0.2:
                stream.close()
                stream = None
        if stream is not None:
            stream.close()
        tcp_messages = sum(n.service.transports.counters["tcp_messages"] for n in nodes)
        for node in nodes:
            await node.service.wait_idle(30.0)
        # Still up on both transports, still registering, and the keeper untouched.
        for node in nodes:
            host, port = node.sip
            ping = request("OPTIONS", f"sip:{host}:{port}", to="sip:x@example.com",
                           via_host=f"{ip}:1")  # fmt: skip
            assert status_of(await checker[nodes.index(node)].ask(ping)) == 200
            tcp = await TcpClient.open(node.sip)
            tcp_ping = request("OPTIONS", f"sip:{host}:{port}", to="sip:x@example.com",
                               transport="TCP")  # fmt: skip
            assert status_of(await tcp.ask(tcp_ping)) == 200
            tcp.close()
        fresh = request("REGISTER", "sip:example.com", to="sip:after@example.com",
                        contacts=["<sip:after@192.0.2.5>"], via_host=f"{ip}:1")  # fmt: skip
        assert status_of(await checker[0].ask(fresh)) == 200
        assert await keeper_state(ring) == before
        assert sum(n.service.transports.counters["handler_errors"] for n in nodes) == 0
        assert checked >= 10, f"only {checked} sampled replies"
        print(
            f"fuzz: {sent_udp} UDP + {sent_tcp} TCP mutants ({tcp_messages} framed), "
            f"{checked} sampled replies, "
            f"responses {sum(sum(n.service.responses.values()) for n in nodes)}"
        )
    finally:
        for c in udp + checker:
            c.close()


async def test_fuzz_50k_mutants_over_udp_and_tcp(tmp_path: Path) -> None:
    await fuzz_ring(tmp_path, 50_000, seed=1)


@pytest.mark.slow
async def test_fuzz_500k_mutants_over_udp_and_tcp(tmp_path: Path) -> None:
    await fuzz_ring(tmp_path, 500_000, seed=2)


def test_mutants_are_mostly_still_messages() -> None:
    # A fuzzer that only produced garbage would never reach the registrar.
    rng = random.Random(3)
    corpus = seeds()
    registrar = LocalRegistrar()
    codes: dict[int | None, int] = {}
    for _ in range(2000):
        result = registrar.handle(mutate(rng.choice(corpus), rng), Source("127.0.0.1", 5), 1e9)
        code = None if result is None else result.status
        codes[code] = codes.get(code, 0) + 1
    assert codes.get(200, 0) > 30 and codes.get(400, 0) > 100 and codes.get(None, 0) > 50


# --- config file ------------------------------------------------------------------------------


def test_config_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "p2preg.toml"
    path.write_text(
        'data-dir = "/tmp/x"\noverlay = "127.0.0.1:7000"\nbootstrap = ["10.0.0.1:7000"]\n'
        'ping_interval = 0.5\n\n[registrar]\ndomains = ["example.com"]\nmin_expires = 30\n'
        'min_expires_mode = "clamp"\nmax_contacts = 3\nmax_in_flight = 50\n'
    )
    cfg = load_config(path)
    assert cfg.run == {
        "data_dir": "/tmp/x",
        "overlay": "127.0.0.1:7000",
        "bootstrap": ["10.0.0.1:7000"],
        "ping_interval": 0.5,
    }
    assert cfg.registrar == RegistrarConfig(
        domains=("example.com",), min_expires=30, min_expires_mode="clamp", max_contacts=3
    )
    assert cfg.service == {"max_in_flight": 50}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "unknown key 'colour'"),
        ("ping-intervall = 1\n", "did you mean 'ping_interval'"),
        ("[registrar]\nmin_expire = 5\n", "unknown key 'registrar.min_expire'"),
        ('[registrar]\nmin_expires_mode = "x"\n', "min_expires_mode must be"),
        ('[registrar]\nmax_contacts = "ten"\n', "must be a number"),
        ("[registrar]\nmax_in_flight = 0\n", "at least 1"),
        ("overlay = [1]\n", "single value"),
        ("= broken", "not valid TOML"),
    ],
)
def test_config_file_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(path)


def test_config_keys_follow_the_run_parser() -> None:
    from p2preg.cli import build_parser

    parser = build_parser()
    run = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[
        "run"
    ]  # type: ignore[attr-defined]
    dests = run_parser_dests(run)
    assert {"data_dir", "overlay", "admin", "sip", "bootstrap", "ping_interval"} <= dests
    assert "help" not in dests
    cfg = parse_config({"admin": "127.0.0.1:1", "leave-timeout": 2}, dests)
    assert cfg.run == {"admin": "127.0.0.1:1", "leave_timeout": 2}
    merged = merge({"admin": None, "leave_timeout": 3.0}, cfg.run, {"leave_timeout": 9.0})
    assert merged == {"admin": "127.0.0.1:1", "leave_timeout": 9.0}


# --- acceptance 5: kill -9 the responsible peer after its 200 -----------------------------------


def node_starts_sip() -> bool:
    return "SipService" in (REPO / "p2preg" / "node.py").read_text()


def sip_address(info: dict[str, object]) -> tuple[str, int]:
    host, _, port = str(info["sip"]).rpartition(":")
    return host, int(port)


async def _ask_udp(target: tuple[str, int], data: bytes, timeout: float = 8.0) -> bytes | None:
    client = await UdpClient.open(target)
    try:
        client.send(data)
        return await client.recv(timeout)
    finally:
        client.close()


@pytest.mark.skipif(not node_starts_sip(), reason="node.py does not start the SIP service yet")
def test_binding_survives_kill_9_of_the_responsible_peer(cluster: Cluster) -> None:
    sip = ["--sip", "127.0.0.1:0"]
    first = cluster.start(extra=sip)
    for _ in range(4):
        cluster.spawn([first.overlay], extra=sip)
    for node in cluster.nodes[1:]:
        node.wait_ready()
    ids = [n.node_id for n in cluster.nodes]
    wait_ring(cluster.nodes, ids, 60.0)

    aor = "sip:survivor@example.com"
    rid = id_hex(resource_id("survivor@example.com"))
    owner_id = responsible_and_replicas(rid, ids)[0]
    owner = next(n for n in cluster.nodes if n.node_id == owner_id)
    front = next(n for n in cluster.nodes if n is not owner)
    reg = request("REGISTER", "sip:example.com", to=aor,
                  contacts=["<sip:survivor@192.0.2.33:5060>"], expires=600)  # fmt: skip
    reply = asyncio.run(_ask_udp(sip_address(front.info), reg))
    assert reply is not None and status_of(reply) == 200, reply
    assert header_values(reply, "contact") == ["<sip:survivor@192.0.2.33:5060>;expires=600"]

    owner.kill9()
    survivors = [n for n in cluster.nodes if n.alive()]
    wait_ring(survivors, [n.node_id for n in survivors], 60.0)

    last: list[bytes | None] = [None]

    def every_survivor_redirects() -> bool:
        for node in survivors:
            lookup = asyncio.run(_ask_udp(sip_address(node.info), request("INVITE", aor, to=aor)))
            last[0] = lookup
            if lookup is None or status_of(lookup) != 302:
                return False
            if not header_values(lookup, "contact")[0].startswith("<sip:survivor@192.0.2.33:5060>"):
                return False
        return True

    wait_for(every_survivor_redirects, 60.0, "every survivor to redirect", 0.5,
             lambda: repr(last[0]))  # fmt: skip


def test_asyncio_and_uvloop_nodes_serve_one_ring(cluster: Cluster) -> None:
    """uvloop is an optional fast path: a node on the standard library's loop and one on
    uvloop form one ring and serve each other's bindings; each logs which loop it runs."""
    pytest.importorskip("uvloop")
    plain = cluster.start(extra=["--sip", "127.0.0.1:0", "--event-loop", "asyncio"])
    fast = cluster.start([plain.overlay], extra=["--sip", "127.0.0.1:0", "--event-loop", "uvloop"])
    wait_ring(cluster.nodes, [plain.node_id, fast.node_id], 30.0)
    assert "event loop: asyncio" in plain.log_tail(400)
    assert "event loop: uvloop" in fast.log_tail(400)
    for i in range(20):
        front, back = (plain, fast) if i % 2 else (fast, plain)
        aor = f"sip:loop{i}@example.com"
        contact = f"<sip:loop{i}@192.0.2.44:5060>"
        reply = asyncio.run(
            _ask_udp(sip_address(front.info), request("REGISTER", "sip:example.com", to=aor,
                                                      contacts=[contact], expires=600))
        )  # fmt: skip
        assert reply is not None and status_of(reply) == 200, reply
        lookup = asyncio.run(_ask_udp(sip_address(back.info), request("INVITE", aor, to=aor)))
        assert lookup is not None and status_of(lookup) == 302, lookup
        assert header_values(lookup, "contact")[0].startswith(contact)
