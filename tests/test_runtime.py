"""OverlayRuntime: a few real runtimes in one process on 127.0.0.1, short timers."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fast_timers import FAST_LINKS, fast_chord

from overlay.actions import Address, Event, PeerState, StateChanged
from overlay.codec import decode_message, encode_message
from overlay.framing import DataFrame, FrameDecoder, encode_data
from overlay.ids import in_open_closed
from overlay.messages import (
    ErrorCode,
    ErrorResponse,
    FetchAns,
    FetchReq,
    ForwardingHeader,
    Message,
    MessageBody,
    NodeDestination,
    PingReq,
    ResourceDestination,
    overlay_hash,
)
from overlay.runtime import OverlayRequestError, OverlayRuntime

CONFIG = fast_chord("runtime-test")
LINKS = FAST_LINKS


async def wait_for(cond: Callable[[], bool], timeout: float, what: str = "") -> float:
    """Wait until ``cond()``; returns the seconds it took."""
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@dataclass
class Ring:
    runtimes: list[OverlayRuntime] = field(default_factory=list)
    handled: list[tuple[int, Message]] = field(default_factory=list)
    events: list[tuple[int, Event]] = field(default_factory=list)

    def live(self) -> list[OverlayRuntime]:
        return [r for r in self.runtimes if r.state is PeerState.JOINED]

    def make(self, node_id: int, *, handler: bool = True) -> OverlayRuntime:
        async def app(request: Message) -> MessageBody:
            self.handled.append((node_id, request))
            return FetchAns()

        runtime = OverlayRuntime(
            node_id=node_id,
            config=CONFIG,
            host="127.0.0.1",
            port=0,
            rng=random.Random(node_id),
            app_handler=app if handler else None,
            link_config=LINKS,
        )
        runtime.add_listener(lambda event: self.events.append((node_id, event)))
        self.runtimes.append(runtime)
        return runtime

    def consistent(
        self, members: list[OverlayRuntime] | None = None, others: tuple[int, ...] = ()
    ) -> bool:
        """Every member's first successor and predecessor are its ring neighbours, and its
        successor list is the next peers in id order. ``others``: ring peers we cannot
        inspect (another process)."""
        members = members if members is not None else self.runtimes
        if any(r.state is not PeerState.JOINED for r in members):
            return False
        ids = sorted([r.node_id for r in members] + list(others))
        n = len(ids)
        for r in members:
            view = r.view()
            i = ids.index(r.node_id)
            expected = [ids[(i + k) % n] for k in range(1, n)]
            if n == 1:
                continue
            if list(view.successors[: n - 1]) != expected[: len(view.successors)]:
                return False
            if not view.successors or view.successors[0] != ids[(i + 1) % n]:
                return False
            if not view.predecessors or view.predecessors[0] != ids[(i - 1) % n]:
                return False
        return True


def responsible(ids: list[int], key: int) -> int:
    ordered = sorted(ids)
    for i, node in enumerate(ordered):
        if in_open_closed(key, ordered[i - 1], node):
            return node
    raise AssertionError("unreachable")


@pytest.fixture
async def ring() -> AsyncIterator[Ring]:
    r = Ring()
    yield r
    for runtime in r.runtimes:
        await runtime.close()


async def build(ring: Ring, n: int, seed: int = 1) -> float:
    """Start n peers (the first alone, the rest through it) and wait for a consistent ring."""
    rng = random.Random(seed)
    first = ring.make(rng.getrandbits(128))
    seed_address = await first.start()
    await first.wait_state(PeerState.JOINED, 5.0)
    started = time.monotonic()
    for _ in range(n - 1):
        await ring.make(rng.getrandbits(128)).start([seed_address])
    await wait_for(ring.consistent, 30.0, f"{n}-peer ring to converge")
    return time.monotonic() - started


async def test_ring_forms_and_requests_reach_the_responsible_peer(ring: Ring) -> None:
    took = await build(ring, 5)
    print(f"5-peer ring converged in {took:.2f} s")
    ids = [r.node_id for r in ring.runtimes]
    rng = random.Random(7)
    for i in range(10):
        key = rng.getrandbits(128) if i else ids[2]  # one key exactly on a peer id
        origin = ring.runtimes[i % 5]
        answer = await origin.request([ResourceDestination(key)], FetchReq(key), timeout=5.0)
        assert isinstance(answer.body, FetchAns), answer.body
        handler_node, request = ring.handled[-1]
        assert handler_node == responsible(ids, key)
        assert isinstance(request.body, FetchReq) and request.body.resource == key
    assert len(ring.handled) == 10
    first = ring.runtimes[0]
    await wait_for(lambda: first.counters.get("received.PING_ANS", 0) > 0, 5.0, "a ping round trip")
    assert first.counters["sent.PING_REQ"] > 0 and first.counters["decode_errors"] == 0
    assert all(r.link_stats() for r in ring.runtimes)
    stats = ring.runtimes[0].link_stats()
    assert any(s.srtt is not None and s.frames_acked > 0 for s in stats)
    assert any(isinstance(e, StateChanged) for _, e in ring.events)


async def test_graceful_leave_keeps_the_ring_consistent(ring: Ring) -> None:
    await build(ring, 4, seed=2)
    leaver = ring.runtimes[2]
    started = time.monotonic()
    await leaver.leave(timeout=5.0)
    assert leaver.state is PeerState.LEFT
    rest = [r for r in ring.runtimes if r is not leaver]
    took = await wait_for(lambda: ring.consistent(rest), 15.0, "3 peers after a leave")
    print(f"leave: {time.monotonic() - started:.2f} s incl. {took:.2f} s to reconverge")
    # The survivors still route: the leaver's range now belongs to its successor.
    key = leaver.node_id
    answer = await rest[0].request([ResourceDestination(key)], FetchReq(key), timeout=5.0)
    assert isinstance(answer.body, FetchAns)
    assert ring.handled[-1][0] == responsible([r.node_id for r in rest], key)


async def test_crashed_peer_is_repaired_around(ring: Ring) -> None:
    await build(ring, 5, seed=3)
    victim = ring.runtimes[3]
    started = time.monotonic()
    await victim.close()
    rest = [r for r in ring.runtimes if r is not victim]
    took = await wait_for(lambda: ring.consistent(rest), 20.0, "4 peers after a crash")
    print(f"crash repaired in {took:.2f} s")
    assert time.monotonic() - started < 20.0
    key = victim.node_id
    answer = await rest[1].request([ResourceDestination(key)], FetchReq(key), timeout=6.0)
    assert isinstance(answer.body, FetchAns)
    assert ring.handled[-1][0] == responsible([r.node_id for r in rest], key)


async def test_no_application_handler_answers_forbidden(ring: Ring) -> None:
    first = ring.make(1 << 127, handler=False)
    await first.start()
    await first.wait_state(PeerState.JOINED, 5.0)
    answer = await first.request([ResourceDestination(5)], FetchReq(5), timeout=3.0)
    assert isinstance(answer.body, ErrorResponse)
    assert answer.body.error_code == ErrorCode.FORBIDDEN


async def test_request_to_nowhere_fails(ring: Ring) -> None:
    lone = ring.make(1 << 127)
    await lone.start([Address("127.0.0.1", 9)])  # a bootstrap nobody listens on
    with pytest.raises(OverlayRequestError):
        await lone.request([ResourceDestination(5)], FetchReq(5), timeout=1.0)


STALLED_PEER = """
import asyncio, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from overlay.actions import Address, PeerState
from overlay.runtime import OverlayRuntime
from test_runtime import CONFIG, LINKS

async def main() -> None:
    rt = OverlayRuntime(node_id=int(sys.argv[2]), config=CONFIG, host="127.0.0.1", port=0,
                        link_config=LINKS)
    await rt.start([Address("127.0.0.1", int(sys.argv[3]))])
    await rt.wait_state(PeerState.JOINED, 10.0)
    print(json.dumps({"port": rt.address.port}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_stalled_peer_in_another_process_is_repaired_around(ring: Ring) -> None:
    """SIGSTOP: the TCP connections stay up but nothing is ACKed or answered."""
    await build(ring, 3, seed=5)
    victim_id = random.Random(99).getrandbits(128)
    repo = str(Path(__file__).resolve().parent.parent)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STALLED_PEER,
        repo,
        str(victim_id),
        str(ring.runtimes[0].address.port),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20.0):
            json.loads(await proc.stdout.readline())
        members = [*ring.runtimes]

        await wait_for(
            lambda: ring.consistent(members, others=(victim_id,)),
            15.0,
            "a ring of 3 in-process peers and 1 process",
        )
        os.kill(proc.pid, signal.SIGSTOP)
        took = await wait_for(
            lambda: (
                ring.consistent(members)
                and all(victim_id not in r.view().successors for r in members)
            ),
            20.0,
            "3 peers to drop the stalled one",
        )
        print(f"stalled peer dropped in {took:.2f} s")
        # Not at once: it takes missed pings (or the link ACK timeout) to give up on a peer.
        assert took >= 0.5
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


class RawPeer:
    """A plain TCP client speaking framing by hand, to feed a node bad bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.sequence = 0

    @classmethod
    async def connect(cls, address: Address) -> RawPeer:
        return cls(*await asyncio.open_connection(address.host, address.port))

    def send(self, payload: bytes) -> None:
        self.writer.write(encode_data(self.sequence, payload))
        self.sequence += 1

    async def next_data(self, timeout: float = 3.0) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.decoder.feed(await self.reader.read(65536) or b"\x00"):
                    if isinstance(frame, DataFrame):
                        return frame.payload

    def close(self) -> None:
        self.writer.close()


async def test_garbage_is_answered_or_dropped_without_crashing(ring: Ring) -> None:
    await build(ring, 3, seed=4)
    target = ring.runtimes[1]
    raw = await RawPeer.connect(target.address)
    stranger = 0x1234 << 100
    try:
        # Not a RELOAD message at all: dropped and counted, the link stays.
        raw.send(b"\x00" * 20)
        # A Ping request whose body is cut short: the header parses, so Error_Invalid_Message
        # comes back to us with the request's transaction id.
        ping = Message(
            ForwardingHeader(
                overlay=overlay_hash(CONFIG.overlay_name),
                transaction_id=0xABCDEF,
                via_list=(NodeDestination(stranger),),
                destination_list=(NodeDestination(target.node_id),),
            ),
            PingReq(b"pad"),
        )
        broken = bytearray(encode_message(ping) + b"\x00")  # a trailing byte...
        broken[16:20] = len(broken).to_bytes(4, "big")  # ...that the header's length covers
        raw.send(bytes(broken))
        answer = decode_message(await raw.next_data())
        assert answer.header.transaction_id == 0xABCDEF
        assert isinstance(answer.body, ErrorResponse)
        assert answer.body.error_code == ErrorCode.INVALID_MESSAGE
        assert answer.header.destination_list == (NodeDestination(stranger),)
        assert target.counters["decode_errors"] == 2

        # The wrong overlay: Error_Incompatible_with_Overlay.
        other = Message(
            ForwardingHeader(
                overlay=overlay_hash("someone-else"),
                transaction_id=0x5555,
                via_list=(NodeDestination(stranger),),
                destination_list=(NodeDestination(target.node_id),),
            ),
            PingReq(),
        )
        raw.send(encode_message(other))
        answer = decode_message(await raw.next_data())
        assert answer.header.transaction_id == 0x5555
        assert isinstance(answer.body, ErrorResponse)
        assert answer.body.error_code == ErrorCode.INCOMPATIBLE_WITH_OVERLAY

        # A bad frame type: the node closes this link and stays up.
        raw.writer.write(b"\x42" * 16)
        async with asyncio.timeout(3.0):
            while await raw.reader.read(65536):
                pass
    finally:
        raw.close()
    assert target.state is PeerState.JOINED
    key = target.node_id
    answer = await ring.runtimes[0].request([ResourceDestination(key)], FetchReq(key), 5.0)
    assert isinstance(answer.body, FetchAns)
    assert ring.handled[-1][0] == target.node_id
    assert ring.consistent()
