"""Issue 4 acceptance 3 with SIPp: 1,000 users registered through random nodes of a 5-node
ring over UDP and over TCP; every REGISTER gets 200 with its binding; OPTIONS lookups and
REGISTER queries through *other* nodes return the same binding (302 / 200 with it).

Two rings: five real ``p2preg run`` processes (runs once node.py starts the SIP service for
``--sip``), and five in-process runtimes with their services (always runs; the same
front-end code on real sockets, only the process boundary differs).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from harness import REPO, Cluster, wait_ring
from sip_support import build_ring
from sipp_runner import SIPP, logged_contacts, run_sipp, write_users

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp missing: apt-get install sip-tester")

USERS = 1000
NODES = 5


def node_starts_sip() -> bool:
    return "SipService" in (REPO / "p2preg" / "node.py").read_text()


async def register_and_look_up(
    targets: Sequence[tuple[str, int]], workdir: Path, transport: str, users: int = USERS
) -> None:
    names = [f"{transport}-user{i:04d}" for i in range(users)]
    rng = random.Random(f"{transport}{users}")
    slices: list[list[str]] = [[] for _ in targets]
    for name in names:
        slices[rng.randrange(len(targets))].append(name)
    csvs = [
        write_users(workdir / f"users-{transport}-{i}.csv", part) for i, part in enumerate(slices)
    ]

    runs = await asyncio.gather(
        *(
            run_sipp(
                targets[i],
                "register",
                csvs[i],
                transport=transport,
                calls=len(part),
                workdir=workdir,
                tag=f"n{i}",
            )
            for i, part in enumerate(slices)
            if part
        )
    )
    for run in runs:
        assert run.returncode == 0, run.explain()
    registered: dict[str, list[str]] = {}
    for run in runs:
        registered.update(logged_contacts(run.log, "200"))
    assert sorted(registered) == names, f"{len(registered)} of {users} users got a 200"
    for name, contacts in registered.items():
        assert len(contacts) == 1, (name, contacts)
        assert contacts[0].startswith(f"<sip:{name}@127.0.0.1:"), (name, contacts)
        assert contacts[0].endswith(f";transport={transport.upper()}>"), (name, contacts)

    # Lookups through the next node: never the front end that registered the user.
    runs = await asyncio.gather(
        *(
            run_sipp(
                targets[(i + 1) % len(targets)],
                "lookup",
                csvs[i],
                transport=transport,
                calls=len(part),
                workdir=workdir,
                tag=f"n{i}",
            )
            for i, part in enumerate(slices)
            if part
        )
    )
    for run in runs:
        assert run.returncode == 0, run.explain()
    redirects: dict[str, list[str]] = {}
    queries: dict[str, list[str]] = {}
    for run in runs:
        redirects.update(logged_contacts(run.log, "302"))
        queries.update(logged_contacts(run.log, "query"))
    assert redirects == registered
    assert queries == registered


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sipp_1000_users_through_an_in_process_ring(tmp_path: Path, transport: str) -> None:
    ring = await build_ring(tmp_path / "ring", NODES, seed=11)
    try:
        await register_and_look_up([n.sip for n in ring.nodes], tmp_path, transport)
        stores = sum(n.service.bindings.stats.stores for n in ring.nodes)
        assert stores == USERS
    finally:
        await ring.close()


def start_sip_ring(cluster: Cluster, n: int) -> list[tuple[str, int]]:
    sip = ["--sip", "127.0.0.1:0"]
    first = cluster.start(extra=sip)
    for _ in range(n - 1):
        cluster.spawn([first.overlay], extra=sip)
    for node in cluster.nodes[1:]:
        node.wait_ready()
    wait_ring(cluster.nodes, [node.node_id for node in cluster.nodes], 60.0)
    targets = []
    for node in cluster.nodes:
        host, _, port = str(node.info["sip"]).rpartition(":")
        targets.append((host, int(port)))
    return targets


@pytest.mark.skipif(not node_starts_sip(), reason="node.py does not start the SIP service yet")
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_1000_users_through_a_5_process_ring(
    cluster: Cluster, tmp_path: Path, transport: str
) -> None:
    targets = start_sip_ring(cluster, NODES)
    asyncio.run(register_and_look_up(targets, tmp_path, transport))
    assert all(node.alive() for node in cluster.nodes), cluster.logs()
