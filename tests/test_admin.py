"""The admin API and the CLI against real node processes: one node alone, then a small ring."""

from __future__ import annotations

import hashlib
import json
import signal
import urllib.error
import urllib.request
from typing import Any

from harness import Cluster, cli_json, run_cli, wait_for

from p2preg.cli import admin_call


def http(admin: str, method: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{admin}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_joined(admin: str, timeout: float = 20.0) -> dict[str, Any]:
    def joined() -> dict[str, Any] | None:
        status, info = admin_call(admin, "GET", "/v1/node", 5.0)
        return info if status == 200 and info["state"] == "joined" else None

    return wait_for(joined, timeout, f"{admin} to be joined")


def test_single_node_through_the_cli(cluster: Cluster) -> None:
    node = cluster.start()
    wait_joined(node.admin)

    status = cli_json("status", "--admin", node.admin)
    assert status["node_id"] == node.node_id
    assert status["overlay"] == node.overlay
    assert status["admin"] == node.admin
    assert status["state"] == "joined"
    assert status["responsible_ppb"] == 1_000_000_000  # alone, it owns the whole ring
    assert status["uptime_s"] >= 0
    for key in ("predecessors", "successors", "fingers", "sip"):
        assert key in status

    table = run_cli("status", "--admin", node.admin)
    assert table.returncode == 0 and node.node_id in table.stdout and "joined" in table.stdout

    ring = cli_json("ring", "--admin", node.admin)
    assert [n["node_id"] for n in ring] == [node.node_id]
    for key in ("node_id", "overlay", "admin", "successors", "predecessors", "responsible_ppb"):
        assert key in ring[0]
    assert ring[0]["admin"] == node.admin

    route = cli_json("route", "sip:alice@example.com", "--admin", node.admin)
    assert route["resource_name"] == "alice@example.com"
    assert route["resource_id"] == hashlib.sha1(b"alice@example.com").hexdigest()[:32]
    assert route["responsible"] == node.node_id
    assert [h["node_id"] for h in route["hops"]] == [node.node_id]

    by_id = cli_json("route", "0x" + "ab" * 16, "--admin", node.admin)
    assert by_id["resource_id"] == "ab" * 16 and by_id["resource_name"] is None

    left = cli_json("leave", "--admin", node.admin)
    assert left["leaving"] is True and left["node_id"] == node.node_id
    assert node.wait_exit() == 0


def test_sigterm_leaves_and_exits_0(cluster: Cluster) -> None:
    node = cluster.start()
    wait_joined(node.admin)
    node.terminate()
    assert node.wait_exit() == 0
    log = node.log_file.read_text()
    assert "leaving the overlay (SIGTERM)" in log
    assert "overlay listening on " + node.overlay in log


def test_bad_input_gets_json_errors(cluster: Cluster) -> None:
    node = cluster.start()
    wait_joined(node.admin)
    status, body = http(node.admin, "GET", "/v1/route/0x1234")
    assert status == 400 and "hex digits" in body["error"]
    status, body = http(node.admin, "GET", "/v1/nothing-here")
    assert status == 404 and "error" in body
    status, body = http(node.admin, "DELETE", "/v1/node")
    assert status == 405 and "error" in body
    bad = run_cli("route", "0xnothex", "--admin", node.admin)
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1 and "400" in bad.stderr
    with urllib.request.urlopen(f"http://{node.admin}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "p2preg_overlay_joined 1" in metrics


def test_route_reaches_the_responsible_peer(cluster: Cluster) -> None:
    first = cluster.start()
    others = [cluster.spawn([first.overlay]) for _ in range(3)]
    for node in others:
        node.wait_ready()
    nodes = [first, *others]
    for node in nodes:
        wait_joined(node.admin)
    ids = sorted(int(n.node_id, 16) for n in nodes)

    def responsible(rid: int) -> str:
        owner = next((i for i in ids if i >= rid), ids[0])
        return f"{owner:032x}"

    def ring_of_four() -> list[dict[str, Any]] | None:
        status, walk = admin_call(first.admin, "GET", "/v1/ring", 30.0)
        ok = status == 200 and walk["complete"] and len(walk["nodes"]) == 4
        return walk["nodes"] if ok else None

    wait_for(ring_of_four, 30.0, "a ring of 4", describe=cluster.logs)
    for key in ("alice@example.com", "bob@example.com", "carol@example.org", "dave@example.net"):
        rid = int(hashlib.sha1(key.encode()).hexdigest()[:32], 16)
        for start in (first, others[1]):
            route = cli_json("route", key, "--admin", start.admin)
            assert route["responsible"] == responsible(rid), route
            assert route["hops"][0]["node_id"] == start.node_id
            assert route["hops"][-1]["node_id"] == responsible(rid)
            assert route["hops"][-1]["responsible"] is True
            assert all(h["overlay"] for h in route["hops"]), route


def test_ring_walk_reports_a_silent_peer_instead_of_skipping_it(cluster: Cluster) -> None:
    slow_failure = ("--missed-pings", "50")  # keep the stopped peer in the tables meanwhile
    first = cluster.start(extra=slow_failure)
    others = [cluster.spawn([first.overlay], extra=slow_failure) for _ in range(3)]
    for node in others:
        node.wait_ready()
    expected = sorted(n.node_id for n in (first, *others))

    def ring_of_four() -> bool:
        status, walk = admin_call(first.admin, "GET", "/v1/ring", 30.0)
        return status == 200 and [n["node_id"] for n in walk["nodes"]] == sorted(
            expected, key=lambda i: (i < first.node_id, i)
        )

    wait_for(ring_of_four, 30.0, "a ring of 4", describe=cluster.logs)
    silent = others[1]
    silent.proc.send_signal(signal.SIGSTOP)
    try:
        status, walk = admin_call(first.admin, "GET", "/v1/ring", 60.0)
    finally:
        silent.proc.send_signal(signal.SIGCONT)
    assert status == 200
    listed = {n["node_id"]: n for n in walk["nodes"]}
    assert set(listed) == set(expected), walk
    assert listed[silent.node_id]["reachable"] is False
    assert listed[silent.node_id]["error"]
    assert all(n["reachable"] for i, n in listed.items() if i != silent.node_id)
    assert walk["complete"] is True
