"""Issue 3, acceptance 3: records survive crashes in a ring of real node processes.

5 nodes; 2,000 DEBUG-KV records stored through random nodes (admin API, 50 in flight); two
nodes that are neighbours on the ring are killed with SIGKILL (the hardest pair: for the
records of the first, the primary and one replica die together). Once the 3 survivors have
closed the ring:
- every record has at least 2 copies among them, and all 2,000 are fetched, with the right
  value, from every survivor.
Then 200 records are updated while the killed nodes are down, so their disks hold stale copies,
and the killed nodes are restarted on their data directories. Once the 5 nodes form the ring:
- every record is held by exactly the 3 peers that should hold it (the responsible peer and
  its 2 successors), 6,000 copies in all, so no duplicates and no strays;
- every copy has the latest storage time (no stale values), primary on the responsible peer;
- the restarted nodes fetch all 2,000 with their latest values.

Copies are counted from each node's ``GET /v1/records/all`` (one row per record it holds).
"""

from __future__ import annotations

import random
import time
from collections import Counter

from harness import (
    Cluster,
    Copy,
    NodeProcess,
    RecordKey,
    bulk_http,
    held_records,
    kv_path,
    responsible_and_replicas,
    wait_for,
    wait_ring,
)

from overlay.ids import resource_id
from p2preg.kinds import DEBUG_KV

NODES = 5
RECORDS = 2000
UPDATED = 200
IN_FLIGHT = 50
STORAGE_FLAGS = ("--anti-entropy-interval", "2")
RING_TIMEOUT = 60.0
REPAIR_TIMEOUT = 90.0


def key_of(name: str) -> RecordKey:
    return (f"{resource_id(name):032x}", DEBUG_KV, "")


class Ledger:
    """What the test stored: the latest acknowledged value and storage time of each name."""

    def __init__(self) -> None:
        self.value: dict[str, str] = {}
        self.storage_time: dict[str, int] = {}

    def put_all(self, items: dict[str, str], via: list[NodeProcess], rng: random.Random) -> None:
        names = list(items)
        calls = [(rng.choice(via).admin, "PUT", kv_path(n), items[n].encode()) for n in names]
        t0 = time.monotonic()
        results = bulk_http(calls, IN_FLIGHT)
        elapsed = time.monotonic() - t0
        failed = [(n, s, b) for n, (s, b) in zip(names, results, strict=True) if s != 200]
        assert not failed, f"{len(failed)} stores failed, e.g. {failed[:3]}"
        short = [n for n, (_, b) in zip(names, results, strict=True) if len(b["replicas"]) < 1]
        assert not short, f"stores acknowledged without any replica: {short[:5]}"
        full = sum(1 for _, b in results if len(b["replicas"]) == 2)
        print(f"stored {len(names)} in {elapsed:.1f} s; {full} with both replicas acknowledged")
        for name, (_, body) in zip(names, results, strict=True):
            self.value[name] = items[name]
            self.storage_time[name] = body["storage_time"]

    def fetch_all_from(self, nodes: list[NodeProcess]) -> None:
        asks = [(node, name) for node in nodes for name in self.value]
        t0 = time.monotonic()
        results = bulk_http([(node.admin, "GET", kv_path(n), None) for node, n in asks], IN_FLIGHT)
        wrong = [
            (node.index, name, status, body.get("value", body.get("error")))
            for (node, name), (status, body) in zip(asks, results, strict=True)
            if status != 200 or body.get("value") != self.value[name]
        ]
        assert not wrong, f"{len(wrong)} of {len(asks)} fetches wrong, e.g. {wrong[:3]}"
        print(f"fetched {len(asks)} from {len(nodes)} nodes in {time.monotonic() - t0:.1f} s")


def copies_problem(
    held: dict[RecordKey, list[Copy]], ledger: Ledger, ring_ids: list[str], at_least: int
) -> str | None:
    """Why the copies are not yet right, or None. With ``at_least`` < 3 only that many copies of
    each record are required anywhere; with 3 the exact holders, count and freshness are."""
    exact = at_least == 3
    histogram: Counter[int] = Counter()
    stale = misplaced = 0
    example = ""
    for name, latest in ledger.storage_time.items():
        key = key_of(name)
        copies = held.get(key, [])
        histogram[len(copies)] += 1
        if any(c.storage_time != latest or not c.exists for c in copies):
            stale += 1
            example = example or f"{name}: {copies} vs {latest}"
        if exact:
            want = responsible_and_replicas(key[0], ring_ids)
            if sorted(c.node_id for c in copies) != sorted(want):
                misplaced += 1
                example = example or f"{name} at {[c.node_id[:8] for c in copies]}, want {want}"
    extra = len(set(held) - {key_of(n) for n in ledger.value})
    short = sum(n for copies, n in histogram.items() if copies < at_least)
    total = sum(len(c) for c in held.values())
    if short or stale or misplaced or extra or (exact and total != 3 * len(ledger.value)):
        return (
            f"copies per record {dict(sorted(histogram.items()))}, total {total}, "
            f"{short} with < {at_least}, {stale} stale, {misplaced} misplaced, {extra} unknown; "
            f"e.g. {example}"
        )
    return None


def wait_copies(
    nodes: list[NodeProcess], ledger: Ledger, at_least: int, timeout: float
) -> dict[RecordKey, list[Copy]]:
    ids = [n.node_id for n in nodes]
    last = ["not checked yet"]

    def settled() -> dict[RecordKey, list[Copy]] | None:
        held = held_records(nodes)
        problem = copies_problem(held, ledger, ids, at_least)
        if problem is None:
            return held
        last[0] = problem
        return None

    t0 = time.monotonic()
    held = wait_for(settled, timeout, f"{at_least} copies of each record", 1.0, lambda: last[0])
    print(f"{at_least} copies of every record after {time.monotonic() - t0:.1f} s")
    return held


def test_copy_check_catches_missing_stale_misplaced_and_extra_copies() -> None:
    ids = [f"{i:032x}" for i in (0x10, 0x20, 0x30, 0x40)]
    ledger = Ledger()
    ledger.value["a"] = "x"
    ledger.storage_time["a"] = 5
    key = key_of("a")
    want = responsible_and_replicas(key[0], ids)
    roles = ["primary", "replica", "replica"]
    good = {key: [Copy(n, 5, r, True) for n, r in zip(want, roles, strict=True)]}
    assert copies_problem(good, ledger, ids, 3) is None
    assert copies_problem({key: good[key][:2]}, ledger, ids, 3) is not None  # one missing
    assert copies_problem({key: good[key][:2]}, ledger, ids, 2) is None
    assert copies_problem({key: good[key][:1]}, ledger, ids, 2) is not None
    stale = {key: [*good[key][:2], Copy(want[2], 4, "replica", True)]}
    assert copies_problem(stale, ledger, ids, 3) is not None
    assert copies_problem(stale, ledger, ids, 2) is not None
    other = next(i for i in ids if i not in want)
    misplaced = {key: [*good[key][:2], Copy(other, 5, "replica", True)]}
    assert copies_problem(misplaced, ledger, ids, 3) is not None
    four = {key: [*good[key], Copy(other, 5, "replica", True)]}
    assert copies_problem(four, ledger, ids, 3) is not None
    stray = {**good, ("ff" * 16, DEBUG_KV, ""): [Copy(ids[0], 1, "primary", True)]}
    assert copies_problem(stray, ledger, ids, 3) is not None


def test_two_crashed_nodes_lose_nothing_and_rejoin_without_stale_copies(cluster: Cluster) -> None:
    rng = random.Random(3)
    first = cluster.start(extra=STORAGE_FLAGS)
    nodes = [first, *(cluster.start([first.overlay], extra=STORAGE_FLAGS) for _ in range(4))]
    wait_ring(nodes[:2], [n.node_id for n in nodes], RING_TIMEOUT)

    ledger = Ledger()
    ledger.put_all({f"rec-{i:04d}": f"v1-{i}-{rng.random()}" for i in range(RECORDS)}, nodes, rng)
    wait_copies(nodes, ledger, 3, REPAIR_TIMEOUT)

    ring = sorted(nodes, key=lambda n: n.node_id)
    doomed = ring[1:3]  # neighbours: the successor of the first is the second
    for node in doomed:
        node.kill9()
    survivors = [n for n in nodes if n not in doomed]
    t_kill = time.monotonic()
    wait_ring(survivors, [n.node_id for n in survivors], RING_TIMEOUT)
    wait_copies(survivors, ledger, 2, REPAIR_TIMEOUT)
    print(f"ring repaired and every record at >= 2 copies {time.monotonic() - t_kill:.1f} s "
          "after the kill")  # fmt: skip
    ledger.fetch_all_from(survivors)

    updates = {f"rec-{i:04d}": f"v2-{i}-{rng.random()}" for i in range(0, RECORDS, 10)}
    assert len(updates) == UPDATED
    ledger.put_all(updates, survivors, rng)

    bootstrap = [survivors[0].overlay]
    back = [cluster.restart(n, bootstrap, extra=STORAGE_FLAGS) for n in doomed]
    for node in back:
        node.wait_ready()
    assert [n.node_id for n in back] == [n.node_id for n in doomed]
    everyone = survivors + back
    wait_ring(everyone[:2], [n.node_id for n in everyone], RING_TIMEOUT)
    held = wait_copies(everyone, ledger, 3, REPAIR_TIMEOUT)

    ids = [n.node_id for n in everyone]
    wrong_role = [
        name
        for name in ledger.value
        for c in held[key_of(name)]
        if (c.role == "primary") != (c.node_id == responsible_and_replicas(key_of(name)[0], ids)[0])
    ]
    assert not wrong_role, f"{len(wrong_role)} copies with the wrong role, e.g. {wrong_role[:3]}"
    ledger.fetch_all_from(back)
