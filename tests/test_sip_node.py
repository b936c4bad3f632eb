"""The SIP front end wired into real ``p2preg run`` processes: ``p2preg lookup`` and
``GET /v1/aor`` on a ring holding a registration, ``--config`` files (file values used,
flags override them, unknown keys refused), and the one-line errors of ``p2preg run``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from harness import (
    Cluster,
    http_json,
    responsible_and_replicas,
    run_cli,
    wait_for,
    wait_ring,
)
from sip_support import UdpClient, header_values, request, status_of

from overlay.ids import id_hex, resource_id


def sip_of(info: dict[str, object]) -> tuple[str, int]:
    host, _, port = str(info["sip"]).rpartition(":")
    return host, int(port)


def ask_udp(target: tuple[str, int], data: bytes) -> bytes:
    async def go() -> bytes:
        client = await UdpClient.open(target)
        try:
            return await client.ask(data)
        finally:
            client.close()

    return asyncio.run(go())


def test_lookup_and_aor_api_show_a_binding_through_another_node(cluster: Cluster) -> None:
    sip = ["--sip", "127.0.0.1:0"]
    first = cluster.start(extra=sip)
    for _ in range(2):
        cluster.spawn([first.overlay], extra=sip)
    for node in cluster.nodes[1:]:
        node.wait_ready()
    ids = [n.node_id for n in cluster.nodes]
    wait_ring(cluster.nodes, ids, 60.0)

    aor = "sip:carol@example.com"
    reg = request(
        "REGISTER", "sip:example.com", to=aor, contacts=["<sip:carol@192.0.2.40:5062>;q=0.8"],
        expires=900, call_id="lookup-test-call", cseq=7, extra=["User-Agent: lookup-test/1.0"],
    )  # fmt: skip
    reply = ask_udp(sip_of(first.info), reg)
    assert status_of(reply) == 200, reply

    other = cluster.nodes[2]
    status, body = http_json(other.admin, "GET", "/v1/aor/" + urllib.parse.quote(aor, safe=""))
    assert status == 200, body
    owner, *replicas = responsible_and_replicas(id_hex(resource_id("carol@example.com")), ids)
    assert body["aor"] == aor
    assert body["responsible"]["node_id"] == owner
    owner_node = next(n for n in cluster.nodes if n.node_id == owner)
    assert body["responsible"]["admin"] == owner_node.admin
    assert body["responsible"]["sip"] == owner_node.info["sip"]
    assert [r["node_id"] for r in body["replicas"]] == replicas
    (binding,) = body["bindings"]
    assert binding["contact"] == "sip:carol@192.0.2.40:5062"
    assert 890 <= binding["expires_in"] <= 900
    assert binding["q"] == "0.8"
    assert binding["call_id"] == "lookup-test-call"
    assert binding["cseq"] == 7
    assert binding["received"].startswith("udp:127.0.0.1:")
    assert binding["user_agent"] == "lookup-test/1.0"

    table = run_cli("lookup", aor, "--admin", cluster.nodes[1].admin)
    assert table.returncode == 0, table.stderr
    for text in ("sip:carol@192.0.2.40:5062", "lookup-test-call", "lookup-test/1.0", owner):
        assert text in table.stdout, table.stdout
    as_json = run_cli("lookup", "carol@example.com", "--admin", other.admin, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["bindings"][0]["call_id"] == "lookup-test-call"

    missing = run_cli("lookup", "sip:nobody@example.com", "--admin", other.admin)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "p2preg lookup: no bindings for sip:nobody@example.com"
    ]
    bad = http_json(other.admin, "GET", "/v1/aor/" + urllib.parse.quote("sip:<bad>", safe=""))
    assert bad[0] == 400

    # The node's own surfaces report the front end.
    status, info = http_json(other.admin, "GET", "/v1/node")
    assert status == 200 and info["sip"] == other.info["sip"]
    status_table = run_cli("status", "--admin", first.admin)
    assert str(first.info["sip"]) in status_table.stdout
    with urllib.request.urlopen(f"http://{first.admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'p2preg_sip_requests_total{method="REGISTER"} 1' in text
    assert 'p2preg_sip_responses_total{code="200",method="REGISTER"} 1' in text
    # The event loop's lag is sampled all the time (every 50 ms).
    lag_count = [line for line in text.splitlines() if line.startswith(
        "p2preg_event_loop_lag_seconds_count ")]  # fmt: skip
    assert len(lag_count) == 1 and float(lag_count[0].split()[1]) > 0, lag_count
    assert 'p2preg_event_loop_lag_seconds_bucket{le="+Inf"}' in text

    # Bindings and AORs held, by role: one primary on the owner, one replica on each replica
    # (counts are refreshed in the background, hence the wait); every peer sees 3 peers.
    def metrics_of(admin: str) -> str:
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as response:
            return str(response.read().decode())

    by_id = {n.node_id: n for n in cluster.nodes}
    for node_id, role in [(owner, "primary"), *((r, "replica") for r in replicas)]:
        want = [
            f'p2preg_sip_bindings{{role="{role}"}} 1',
            f'p2preg_sip_aors{{role="{role}"}} 1',
            "p2preg_overlay_ring_size_estimate 3",
        ]
        admin = by_id[node_id].admin
        wait_for(
            lambda admin=admin, want=want: all(w in metrics_of(admin) for w in want),
            15.0,
            f"binding/AOR gauges of {role} {node_id[:8]}",
        )


def test_config_file_values_are_used_and_flags_override_them(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'sip = "127.0.0.1:0"\noverlay-name = "from-file"\n\n'
        '[registrar]\nmin_expires = 30\nmin_expires_mode = "clamp"\nmax_contacts = 2\n'
    )
    node = cluster.start(extra=["--config", str(config), "--overlay-name", "from-flag"])
    assert node.info["sip"], "the file's sip address was not used"
    status, info = http_json(node.admin, "GET", "/v1/node")
    assert status == 200 and info["overlay_name"] == "from-flag"
    # min_expires 30 in clamp mode: a 10 s request is granted 30 s instead of a 423.
    reply = ask_udp(
        sip_of(node.info),
        request("REGISTER", "sip:example.com", to="sip:dave@example.com",
                contacts=["<sip:dave@192.0.2.9>"], expires=10),
    )  # fmt: skip
    assert status_of(reply) == 200, reply
    assert header_values(reply, "contact") == ["<sip:dave@192.0.2.9>;expires=30"]
    # max_contacts 2: a third contact is refused with 503.
    reply = ask_udp(
        sip_of(node.info),
        request("REGISTER", "sip:example.com", to="sip:dave@example.com",
                contacts=["<sip:dave@192.0.2.10>", "<sip:dave@192.0.2.11>"], expires=60),
    )  # fmt: skip
    assert status_of(reply) == 503, reply


def test_config_file_unknown_key_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('overlay = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\ncolour = "blue"\n')
    result = run_cli("run", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "colour" in lines[0] and str(config) in lines[0]


def test_missing_required_option_names_it(tmp_path: Path) -> None:
    config = tmp_path / "partial.toml"
    config.write_text('overlay = "127.0.0.1:0"\n')
    result = run_cli("run", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--admin" in lines[0], result.stderr
    bare = run_cli("run", "--overlay", "127.0.0.1:0", "--admin", "127.0.0.1:0")
    assert bare.returncode == 2 and "--data-dir" in bare.stderr


def test_sip_address_in_use_is_one_log_line_and_exit_1(cluster: Cluster) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        node = cluster.spawn(extra=["--sip", f"127.0.0.1:{port}"])
        assert node.wait_exit(30.0) == 1
    errors = [line for line in node.log_file.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot listen on SIP address" in errors[0], errors


def test_run_help_documents_the_config_file() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for word in (
        "--config", "[registrar]", "domains", "default_expires", "min_expires", "max_expires",
        "min_expires_mode", "clamp", "max_contacts", "max_in_flight", "--sip",
    ):  # fmt: skip
        assert word in result.stdout, f"run --help does not mention {word!r}"
    top = run_cli("--help")
    assert "lookup" in top.stdout
    lookup = run_cli("lookup", "--help")
    assert lookup.returncode == 0 and "kamctl" in lookup.stdout and "--json" in lookup.stdout
