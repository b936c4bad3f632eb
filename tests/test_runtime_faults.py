"""Faults that used to cut a live node out of the ring, on real runtimes and sockets.

- Nemesis bug 2: a full connection table evicted the node's idle links to its real
  neighbours to make room for connections that never said a word; the neighbours saw the
  reset as the node's failure and dropped it.
- Nemesis bug 3: an answer too large for a frame made its sender declare the next hop dead.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from fast_timers import fast_chord
from test_runtime import Ring, wait_for

from overlay.actions import PeerLost, PeerState
from overlay.messages import (
    ErrorCode,
    ErrorResponse,
    FetchAns,
    FetchKindResponse,
    FetchReq,
    Message,
    MessageBody,
    ResourceDestination,
    StoredData,
)
from overlay.runtime import OverlayRuntime
from overlay.transport import LinkConfig

LINKS = LinkConfig(
    failure_floor=1.5, connect_timeout=1.0, check_interval=0.1, max_links=24, hello_timeout=1.5
)


class FloodRing(Ring):
    def make(self, node_id: int, *, handler: bool = True) -> OverlayRuntime:
        async def huge(request: Message) -> MessageBody:
            # An answer of 2 MiB: twice the frame limit.
            value = StoredData(1, 60, b"k", b"x" * (2 << 20))
            return FetchAns((FetchKindResponse(1, 0, (value,)),))

        runtime = OverlayRuntime(
            node_id=node_id,
            config=fast_chord("flood-test"),
            host="127.0.0.1",
            port=0,
            rng=random.Random(node_id),
            app_handler=huge,
            link_config=LINKS,
        )
        runtime.add_listener(lambda event: self.events.append((node_id, event)))
        self.runtimes.append(runtime)
        return runtime


@pytest.fixture
async def ring() -> AsyncIterator[FloodRing]:
    r = FloodRing()
    yield r
    for runtime in r.runtimes:
        await runtime.close()


async def build(ring: FloodRing, n: int) -> None:
    rng = random.Random(4)
    first = ring.make(rng.getrandbits(128))
    seed = await first.start()
    await first.wait_state(PeerState.JOINED, 5.0)
    for _ in range(n - 1):
        await ring.make(rng.getrandbits(128)).start([seed])
    await wait_for(ring.consistent, 30.0, f"{n}-peer ring")


async def test_an_answer_too_large_for_a_frame_does_not_kill_the_hop(ring: FloodRing) -> None:
    await build(ring, 3)
    asker = ring.runtimes[0]
    # A resource another peer is responsible for, so the answer crosses a link.
    owner = ring.runtimes[1].node_id
    answer = await asker.request([ResourceDestination(owner)], FetchReq(owner), timeout=5.0)
    assert isinstance(answer.body, ErrorResponse), answer.body
    assert answer.body.error_code == ErrorCode.RESPONSE_TOO_LARGE
    assert ring.runtimes[1].counters["oversized"] == 1
    lost = [(node, e) for node, e in ring.events if isinstance(e, PeerLost)]
    assert lost == []
    assert ring.consistent()


async def test_idle_connection_burst_does_not_evict_neighbour_links(ring: FloodRing) -> None:
    await build(ring, 5)
    target = ring.runtimes[2]
    address = target.address
    flood = 3 * LINKS.max_links
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(flood):
            _, writer = await asyncio.open_connection(address.host, address.port)
            writers.append(writer)
        counters = target.links.counters
        await wait_for(
            lambda: counters["links_accepted"] >= flood, 10.0, "the node to accept the burst"
        )
        # The silent connections are closed by the node once their hello time is up; by then
        # every eviction has happened and any neighbour it hurt has reacted.
        await wait_for(
            lambda: counters["links_silent_closed"] + counters["links_evicted"] >= flood - 24,
            10.0,
            "the silent connections to be closed",
        )

        # A few more ping rounds with the neighbours: a neighbour whose link was cut would
        # have declared the node dead by now.
        def pings() -> int:
            counted = target.counters
            return counted.get("received.PING_REQ", 0) + counted.get("received.PING_ANS", 0)

        before = pings()
        await wait_for(
            lambda: pings() >= before + 6,
            10.0,
            "more ping rounds",
        )
    finally:
        for writer in writers:
            writer.close()
    lost = [(node, e) for node, e in ring.events if isinstance(e, PeerLost)]
    assert lost == [], f"neighbours dropped peers during the burst: {lost}"
    assert ring.consistent(), "the ring is no longer consistent after the burst"
    assert target.state is PeerState.JOINED
    # The node still has a live link to each of its first neighbours.
    view = target.view()
    for neighbour in (view.successors[0], view.predecessors[0]):
        assert target.links.has_link(neighbour)
