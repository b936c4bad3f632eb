"""Honest membership with real processes: a killed peer stays visible as down (with since and
why) and is named in a WARN line; a data directory remembers its ring and will not found a new
one on its own; a seeds list may name the node itself."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

from harness import Cluster, NodeProcess, cli_json, run_cli, wait_for, wait_ring


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ring_json(admin: str) -> list[dict[str, Any]] | None:
    result = run_cli("ring", "--admin", admin, "--json", timeout=60)
    if not result.stdout.strip().startswith("["):
        return None
    nodes: list[dict[str, Any]] = json.loads(result.stdout)
    return nodes


def joined(node: NodeProcess) -> bool:
    status = run_cli("status", "--admin", node.admin, "--json")
    return status.returncode == 0 and json.loads(status.stdout)["state"] == "joined"


def test_killed_peer_is_listed_down_with_reason_and_logged(cluster: Cluster) -> None:
    first = cluster.start()
    others = [cluster.start([first.overlay]) for _ in range(4)]
    nodes = [first, *others]
    wait_ring([first], [n.node_id for n in nodes], 60.0)

    victim = others[1]
    victim.kill9()
    asker = others[2]
    last: list[Any] = [None]

    def four_up_one_down() -> list[dict[str, Any]] | None:
        listing = ring_json(asker.admin)
        last[0] = listing
        if listing is None:
            return None
        up = [n for n in listing if n["status"] == "UP"]
        down = [n for n in listing if n["status"] == "DN"]
        return listing if len(up) == 4 and len(down) == 1 else None

    listing = wait_for(four_up_one_down, 30.0, "4 up and 1 down", 0.5, lambda: str(last[0]))
    [down] = [n for n in listing if n["status"] == "DN"]
    assert down["node_id"] == victim.node_id
    assert down["reachable"] is False and down["state"] == "down"
    assert down["down_reason"] in ("missed_pings", "link_failed")
    assert 0 < time.time() - down["down_since"] < 60
    assert down["overlay"] == victim.overlay
    assert sorted(n["node_id"] for n in listing) == sorted(n.node_id for n in nodes)
    ids = [n["node_id"] for n in listing]
    assert ids[1:] == sorted(ids[1:]) or ids == sorted(ids, key=lambda i: (i < ids[0], i))
    # Every UP entry carries the usrloc figures and the version.
    for entry in listing:
        if entry["status"] == "UP":
            assert isinstance(entry["aors"], int) and isinstance(entry["bindings"], int)
            assert entry["version"]

    table = run_cli("ring", "--admin", asker.admin)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith(victim.node_id[:8]))
    assert " DN " in row and ("missed pings" in row or "link failed" in row)
    assert "4 up, 1 down" in table.stdout

    # A WARN line names the lost peer, in the logs of the peers that had it as a neighbour.
    warn = re.compile(rf"WARNING .*lost neighbour {victim.node_id[:8]}")
    assert any(warn.search(n.log_file.read_text()) for n in nodes if n is not victim)


def test_a_member_without_reachable_bootstrap_refuses_to_found_a_ring(cluster: Cluster) -> None:
    first = cluster.start()
    second = cluster.start([first.overlay])
    wait_ring([first], [first.node_id, second.node_id], 60.0)
    remembered = json.loads((second.data_dir / "ring.json").read_text())
    assert first.node_id in remembered["peers"]
    first.kill9()
    second.kill9()

    # Alone again, with no bootstrap: it was a member of a ring with another peer.
    again = cluster.restart(second)
    assert again.proc.wait(30) == 2, again.log_tail()
    log = again.log_file.read_text()
    assert "refusing to found a new ring" in log and "--new-ring" in log
    assert not again.ready_file.exists()

    # With a bootstrap peer that does not answer: it keeps trying, says so at WARN, and
    # never founds a ring of its own.
    dead = f"127.0.0.1:{free_port()}"
    waiting = cluster.restart(second, [dead]).wait_ready()
    wait_for(
        lambda: "no bootstrap peer reachable" in waiting.log_file.read_text(),
        20.0,
        "a WARN line about the unreachable bootstrap",
        describe=waiting.log_tail,
    )
    pattern = rf"WARNING .*not joined after .*{re.escape(dead)}"
    assert re.search(pattern, waiting.log_file.read_text())
    status = cli_json("status", "--admin", waiting.admin)
    assert status["state"] == "joining"
    waiting.terminate()
    assert waiting.wait_exit() == 0

    # Told to, it founds a new ring on the same directory.
    founded = cluster.restart(second, extra=("--new-ring",)).wait_ready()
    wait_for(lambda: joined(founded), 20.0, "the new ring")
    assert "founding a new ring" in founded.log_file.read_text()


def test_one_seeds_list_for_every_node(cluster: Cluster) -> None:
    ports = [free_port() for _ in range(3)]
    seeds = [f"127.0.0.1:{p}" for p in ports]
    # The second seed alone, the others down: it waits for the first instead of founding.
    second = cluster.start(seeds, overlay=seeds[1])
    time.sleep(3.0)
    assert cli_json("status", "--admin", second.admin)["state"] == "joining"
    # The first seed founds the ring (its data directory remembers none); the others join.
    first = cluster.start(seeds, overlay=seeds[0])
    third = cluster.start(seeds, overlay=seeds[2])
    nodes = [first, second, third]
    wait_for(lambda: all(joined(n) for n in nodes), 60.0, "all three joined", 0.5, cluster.logs)
    wait_ring([first], [n.node_id for n in nodes], 60.0)
