"""usrloc views with real processes: `p2preg aors` lists each of 10,000 AORs registered on a
3-node ring exactly once (paged through every peer); `p2preg unregister` removes one binding
and lookups through any node agree; status and ring carry AOR and binding counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from harness import Cluster, NodeProcess, http_json, run_cli, wait_for, wait_ring
from sip_support import request

SIP = ("--sip", "127.0.0.1:0", "--log-level", "info")  # debug lines cost 10k REGISTERs dearly
USERS = 10_000
WINDOW = 150  # REGISTERs in flight per node
RETRANSMIT = 1.0  # s without an answer before a REGISTER is sent again


def sip_address(node: NodeProcess) -> tuple[str, int]:
    host, _, port = str(node.info["sip"]).rpartition(":")
    return host, int(port)


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: dict[str, int] = {}  # Call-ID -> status
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        head, _, _ = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) < 2 or not parts[1].isdigit():
            return
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() in ("call-id", "i"):
                self.answers[value.strip()] = int(parts[1])
                self.arrived.set()
                return


async def register_many(
    targets: Sequence[tuple[str, int]], aors: Sequence[tuple[str, str]], timeout: float
) -> None:
    """REGISTER every (aor, contact) once, spread over ``targets``, WINDOW at a time per
    target; a request without a 200 (no answer, 503) is sent again."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Collector, local_addr=("127.0.0.1", 0))
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    deadline = loop.time() + timeout

    async def lane(index: int, target: tuple[str, int]) -> None:
        mine = [(i, a) for i, a in enumerate(aors) if i % len(targets) == index]
        queue = list(reversed(mine))
        pending: dict[str, tuple[bytes, float]] = {}
        while queue or pending:
            assert loop.time() < deadline, f"{len(queue) + len(pending)} REGISTERs unanswered"
            while queue and len(pending) < WINDOW:
                i, (aor, contact) = queue.pop()
                call_id = f"bulk-{i}"
                data = request(
                    "REGISTER", "sip:" + aor.rpartition("@")[2], to=aor,
                    contacts=[f"<{contact}>"], expires=3600, call_id=call_id,
                )  # fmt: skip
                transport.sendto(data, target)
                pending[call_id] = (data, loop.time())
            proto.arrived.clear()
            for call_id in list(pending):
                status = proto.answers.pop(call_id, None)
                if status == 200:
                    del pending[call_id]
                    continue
                assert status in (None, 503), f"{call_id}: {status}"
                if status is not None or loop.time() - pending[call_id][1] > RETRANSMIT:
                    data, _ = pending[call_id]
                    transport.sendto(data, target)
                    pending[call_id] = (data, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proto.arrived.wait(), 0.05)

    try:
        await asyncio.gather(*(lane(i, t) for i, t in enumerate(targets)))
    finally:
        transport.close()


def lookup(node: NodeProcess, aor: str) -> list[str]:
    status, body = http_json(node.admin, "GET", "/v1/aor/" + urllib.parse.quote(aor, safe=""))
    assert status == 200, body
    return [b["contact"] for b in body["bindings"]]


def test_aors_lists_ten_thousand_once_and_unregister(cluster: Cluster) -> None:
    first = cluster.start(extra=SIP)
    others = [cluster.start([first.overlay], extra=SIP) for _ in range(2)]
    nodes = [first, *others]
    wait_ring([first], [n.node_id for n in nodes], 60.0)

    aors = [(f"sip:u{i:05d}@example.com", f"sip:u{i:05d}@192.0.2.9:5060") for i in range(USERS)]
    extra = [("sip:x1@other.org", "sip:x1@192.0.2.10"), ("sip:x2@other.org", "sip:x2@192.0.2.11")]
    dual = "sip:dual@example.com"
    two = [(dual, "sip:dual@192.0.2.20"), (dual, "sip:dual@192.0.2.21")]
    started = time.monotonic()
    asyncio.run(register_many([sip_address(n) for n in nodes], aors + extra, 60.0))
    asyncio.run(register_many([sip_address(nodes[0])], two, 10.0))
    registered = time.monotonic() - started

    listed_at = time.monotonic()
    result = run_cli(
        "aors", "--admin", others[0].admin, "--json", "--page-size", "700", timeout=120
    )
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    listing = time.monotonic() - listed_at
    names = [e["aor"] for e in entries]
    want = {a for a, _ in aors + extra} | {"sip:dual@example.com"}
    assert len(names) == len(want), f"{len(names)} listed, {len(want)} registered"
    assert set(names) == want
    # Each AOR once, from the peer responsible for it: all three peers contributed.
    assert len({e["node_id"] for e in entries}) == 3
    by_aor = {e["aor"]: e for e in entries}
    assert [b["contact"] for b in by_aor["sip:u00042@example.com"]["bindings"]] == [
        "sip:u00042@192.0.2.9:5060"
    ]
    assert sorted(b["contact"] for b in by_aor["sip:dual@example.com"]["bindings"]) == [
        "sip:dual@192.0.2.20",
        "sip:dual@192.0.2.21",
    ]
    print(f"registered {len(aors) + 3} in {registered:.1f} s, listed in {listing:.1f} s")
    # The CLI drops a repeated AOR (a range changing hands between pages); in a steady ring
    # the peers' own pages must not overlap at all: each lists only what it is responsible for.
    per_peer: list[str] = []
    for node in nodes:
        after = ""
        while True:
            query = "/v1/aors?limit=5000" + (f"&after={after}" if after else "")
            status, page = http_json(node.admin, "GET", query, timeout=60)
            assert status == 200, page
            per_peer += [e["aor"] for e in page["aors"]]
            if not page["next"]:
                break
            after = page["next"]
    assert len(per_peer) == len(want) and set(per_peer) == want

    table = run_cli("aors", "--admin", first.admin, "--domain", "other.org")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("sip:")) == [
        "sip:x1@other.org",
        "sip:x2@other.org",
    ]
    assert "2 AORs, 2 bindings" in table.stdout

    # unregister one of two bindings, through a node that is not (necessarily) responsible.
    gone = run_cli(
        "unregister", "sip:dual@example.com", "sip:dual@192.0.2.20", "--admin", others[1].admin
    )
    assert gone.returncode == 0, gone.stderr
    assert "removed sip:dual@192.0.2.20" in gone.stdout and "1 binding left" in gone.stdout
    for node in nodes:
        assert lookup(node, "sip:dual@example.com") == ["sip:dual@192.0.2.21"]
    again = run_cli(
        "unregister", "sip:dual@example.com", "sip:dual@192.0.2.20", "--admin", first.admin
    )
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    everything = run_cli("unregister", "sip:x1@other.org", "--admin", first.admin)
    assert everything.returncode == 0, everything.stderr
    assert lookup(others[0], "sip:x1@other.org") == []
    missing = run_cli("lookup", "sip:x1@other.org", "--admin", others[1].admin)
    assert missing.returncode == 1

    # Per-node counts in ring and status add up (counted in the background).
    total = len(want) - 1  # x1 is gone

    def counted() -> list[dict[str, Any]] | None:
        walk = http_json(first.admin, "GET", "/v1/ring", timeout=60)[1]
        ring = walk["nodes"]
        return ring if sum(n["aors"] or 0 for n in ring) == total else None

    ring = wait_for(counted, 60.0, f"{total} AORs counted over the ring")
    assert sum(n["bindings"] for n in ring) == total  # one binding each, dual's second gone
    status = json.loads(run_cli("status", "--admin", first.admin, "--json").stdout)
    assert status["aors"] == next(n["aors"] for n in ring if n["node_id"] == first.node_id)
    assert status["version"] and status["sip"] == first.info["sip"]
