"""A burst of idle inbound TCP connections must not cut a node out of the ring (nemesis bug 2).

Before the fix, the full connection table evicted the node's idle links to its real
neighbours to make room for connections that never said a word; the neighbours saw the reset
as the node's failure and dropped it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from fast_timers import fast_chord
from test_runtime import Ring, wait_for

from overlay.actions import PeerLost, PeerState
from overlay.runtime import OverlayRuntime
from overlay.transport import LinkConfig

LINKS = LinkConfig(
    failure_floor=1.5, connect_timeout=1.0, check_interval=0.1, max_links=24, hello_timeout=1.5
)


class FloodRing(Ring):
    def make(self, node_id: int, *, handler: bool = True) -> OverlayRuntime:
        runtime = OverlayRuntime(
            node_id=node_id,
            config=fast_chord("flood-test"),
            host="127.0.0.1",
            port=0,
            rng=random.Random(node_id),
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


async def test_idle_connection_burst_does_not_evict_neighbour_links(ring: FloodRing) -> None:
    rng = random.Random(4)
    first = ring.make(rng.getrandbits(128))
    seed = await first.start()
    await first.wait_state(PeerState.JOINED, 5.0)
    for _ in range(4):
        await ring.make(rng.getrandbits(128)).start([seed])
    await wait_for(ring.consistent, 30.0, "5-peer ring")
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
