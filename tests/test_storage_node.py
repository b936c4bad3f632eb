"""The node's storage surface against real processes: `p2preg put/get/records`, the records and
kv endpoints of the admin API, replicas on the two successors, records kept across restarts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import (
    Cluster,
    NodeProcess,
    cli_json,
    http_json,
    kv_path,
    responsible_and_replicas,
    run_cli,
    wait_for,
    wait_ring,
)

from overlay.ids import resource_id

STORAGE_FLAGS = ("--anti-entropy-interval", "2")
RING_TIMEOUT = 60.0


def wait_joined(node: NodeProcess, timeout: float = 20.0) -> None:
    def joined() -> bool:
        status, info = http_json(node.admin, "GET", "/v1/node", timeout=5)
        return status == 200 and info["state"] == "joined"

    wait_for(joined, timeout, f"node {node.index} joined")


def records(node: NodeProcess, name: str) -> list[dict[str, Any]]:
    answer = cli_json("records", "--name", name, "--admin", node.admin)
    assert answer["node_id"] == node.node_id
    assert answer["resource_id"] == f"{resource_id(name):032x}"
    result: list[dict[str, Any]] = answer["records"]
    return result


@pytest.mark.parametrize("command", ["put", "get", "records"])
def test_help_explains_the_storage_commands(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "--admin" in result.stdout and "--json" in result.stdout
    assert {"put": "DEBUG-KV", "get": "Exit 1", "records": "replica"}[command] in result.stdout
    run_help = run_cli("run", "--help").stdout
    assert "--durability" in run_help and "may lose" in run_help


def test_one_node_put_get_records_and_restart(cluster: Cluster) -> None:
    node = cluster.start(extra=STORAGE_FLAGS)
    wait_joined(node)

    put = run_cli("put", "greeting", "hello, ring", "--admin", node.admin)
    assert put.returncode == 0, put.stderr
    assert node.node_id[:8] in put.stdout
    got = run_cli("get", "greeting", "--admin", node.admin)
    assert got.returncode == 0 and got.stdout == "hello, ring\n"

    missing = run_cli("get", "nobody-stored-this", "--admin", node.admin)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and "nobody-stored-this" in missing.stderr

    as_json = cli_json("put", "greeting", "hello again", "--lifetime", "600", "--admin", node.admin)
    assert as_json["responsible"] == node.node_id
    assert as_json["replicas"] == []  # alone: nobody to copy to
    assert as_json["lifetime"] == 600
    fetched = cli_json("get", "greeting", "--admin", node.admin)
    assert fetched["value"] == "hello again"
    assert fetched["storage_time"] == as_json["storage_time"]

    [rec] = records(node, "greeting")
    assert rec["role"] == "primary" and rec["kind_name"] == "DEBUG-KV"
    assert rec["value"] == "hello again" and rec["value_size"] == len("hello again")
    assert rec["storage_time"] == as_json["storage_time"]
    assert rec["expires"] == as_json["storage_time"] + 600_000
    assert rec["exists"] and not rec["expired"]
    table = run_cli("records", "--name", "greeting", "--admin", node.admin)
    assert table.returncode == 0 and "primary" in table.stdout and "hello again" in table.stdout

    # kill -9: with sync durability an acknowledged store is on disk.
    node.kill9()
    again = cluster.restart(node, extra=STORAGE_FLAGS).wait_ready()
    assert again.node_id == node.node_id
    [kept] = records(again, "greeting")
    assert kept["storage_time"] == as_json["storage_time"] and kept["value"] == "hello again"
    wait_joined(again)
    got = run_cli("get", "greeting", "--admin", again.admin)
    assert got.returncode == 0 and got.stdout == "hello again\n"


def test_bad_storage_requests_get_clear_errors(cluster: Cluster) -> None:
    node = cluster.start()
    wait_joined(node)
    # A second process on the same data directory would share (and corrupt) its records.
    twin = run_cli(
        "run", "--data-dir", str(node.data_dir), "--overlay", "127.0.0.1:0",
        "--admin", "127.0.0.1:0",
    )  # fmt: skip
    assert twin.returncode == 2
    assert twin.stderr.count("\n") == 1 and "in use by another" in twin.stderr
    status, body = http_json(node.admin, "GET", "/v1/records?resource=xyz")
    assert status == 400 and "resource" in body["error"]
    status, body = http_json(node.admin, "GET", "/v1/records")
    assert status == 400 and "exactly one" in body["error"]
    status, body = http_json(node.admin, "PUT", kv_path("k", 0), b"v")
    assert status == 400 and "lifetime" in body["error"]
    status, body = http_json(node.admin, "PUT", kv_path("k"), b"x" * (64 * 1024 + 1))
    assert status == 413, body
    assert run_cli("records", "--admin", node.admin).returncode == 2  # no target given
    status, body = http_json(node.admin, "GET", "/v1/records/all?role=owner")
    assert status == 400


def test_three_nodes_primary_and_two_replicas_survive_restart(cluster: Cluster) -> None:
    first = cluster.start(extra=STORAGE_FLAGS)
    nodes = [first, *(cluster.start([first.overlay], extra=STORAGE_FLAGS) for _ in range(2))]
    ids = [n.node_id for n in nodes]
    wait_ring(nodes, ids, RING_TIMEOUT)
    by_id = {n.node_id: n for n in nodes}

    name = "carol@example.com"
    put = cli_json("put", name, "three copies", "--admin", nodes[1].admin)
    want = responsible_and_replicas(f"{resource_id(name):032x}", ids)
    assert put["responsible"] == want[0]
    assert sorted(put["replicas"]) == sorted(want[1:])

    for node in nodes:
        assert cli_json("get", name, "--admin", node.admin)["value"] == "three copies"
        [rec] = records(node, name)
        assert rec["role"] == ("primary" if node.node_id == want[0] else "replica")
        assert rec["storage_time"] == put["storage_time"] and rec["value"] == "three copies"

    # The ring walk shows each peer's counts (refreshed about every second).
    def counts() -> dict[str, tuple[int, int]] | None:
        ring = json.loads(run_cli("ring", "--json", "--admin", nodes[0].admin).stdout)
        seen = {n["node_id"]: (n["primary_records"], n["replica_records"]) for n in ring}
        expected = {i: (1, 0) if i == want[0] else (0, 1) for i in ids}
        return seen if seen == expected else None

    wait_for(counts, 10, "ring walk counts of 1 primary and 2 replicas")
    for node in nodes:
        status, info = http_json(node.admin, "GET", "/v1/node")
        held = (info["primary_records"], info["replica_records"])
        assert status == 200 and held == ((1, 0) if node.node_id == want[0] else (0, 1))
    table = run_cli("ring", "--admin", nodes[0].admin)
    assert "Primary" in table.stdout and "Replica" in table.stdout

    # A replica killed and restarted on its data directory comes back with its copy on disk.
    replica = by_id[want[1]]
    replica.kill9()
    back = cluster.restart(replica, [by_id[want[0]].overlay], extra=STORAGE_FLAGS).wait_ready()
    [rec] = records(back, name)
    assert rec["storage_time"] == put["storage_time"] and rec["value"] == "three copies"
    nodes = [n for n in nodes if n is not replica] + [back]
    wait_ring(nodes, ids, RING_TIMEOUT)
    assert cli_json("get", name, "--admin", back.admin)["value"] == "three copies"
