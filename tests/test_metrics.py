"""GET /metrics after Prometheus conventions (checked with prometheus_client's own parser) and
GET /v1/health, against real node processes."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Iterable

from harness import Cluster, NodeProcess, http_json, wait_for, wait_ring
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sip_support import UdpClient, request, status_of

from p2preg import __version__

SIP = ("--sip", "127.0.0.1:0")


def scrape(node: NodeProcess) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://{node.admin}/metrics", timeout=10) as response:
        return response.headers.get("Content-Type", ""), response.read().decode()


def format_problems(text: str) -> list[str]:
    """Every sample's family must have exactly one HELP (non-empty) and one TYPE line, before
    its samples; names follow the conventions (counters end in _total in the exposition)."""
    problems: list[str] = []
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[len("# HELP ") :].partition(" ")
            if name in helps:
                problems.append(f"two HELP lines for {name}")
            helps[name] = doc
            if not doc.strip():
                problems.append(f"empty HELP for {name}")
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            if name in types:
                problems.append(f"two TYPE lines for {name}")
            types[name] = kind
        elif line and not line.startswith("#"):
            sample = line.split("{", 1)[0].split(" ", 1)[0]
            family = _family_of(sample, types)
            if family is None:
                problems.append(f"sample {sample} has no TYPE line before it")
            elif family not in helps:
                problems.append(f"family {family} has no HELP line")
    for name, kind in types.items():
        if kind == "counter" and not name.endswith("_total"):
            problems.append(f"counter {name} does not end in _total")
    return problems


def _family_of(sample: str, types: dict[str, str]) -> str | None:
    if sample in types:
        return sample
    for suffix in ("_bucket", "_sum", "_count", "_total", "_info", "_created"):
        if sample.endswith(suffix) and sample[: -len(suffix)] in types:
            return sample[: -len(suffix)]
    return None


def samples(text: str, name: str) -> list[Sample]:
    found: list[Sample] = []
    for family in text_string_to_metric_families(text):
        found += [s for s in family.samples if s.name == name]
    return found


def value(text: str, name: str, **labels: str) -> float:
    matching = [
        s.value for s in samples(text, name) if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, f"{name}{labels}: {matching}"
    return float(matching[0])


def register_one(node: NodeProcess, users: Iterable[str]) -> None:
    host, _, port = str(node.info["sip"]).rpartition(":")

    async def go() -> None:
        client = await UdpClient.open((host, int(port)))
        try:
            for user in users:
                aor = f"sip:{user}@example.com"
                reply = await client.ask(
                    request("REGISTER", "sip:example.com", to=aor,
                            contacts=[f"<sip:{user}@192.0.2.7:5060>"], expires=600)
                )  # fmt: skip
                assert status_of(reply) == 200, reply
        finally:
            client.close()

    asyncio.run(go())


def test_metrics_pass_a_prometheus_format_check(cluster: Cluster) -> None:
    node = cluster.start(extra=SIP)
    wait_for(lambda: http_json(node.admin, "GET", "/v1/health")[0] == 200, 20.0, "ready")
    register_one(node, ["alice", "bob"])
    status, _ = http_json(node.admin, "PUT", "/v1/kv/greeting", b"hello")
    assert status == 200

    content_type, text = scrape(node)
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    assert format_problems(text) == []
    families = {f.name: f for f in text_string_to_metric_families(text)}  # parses, or raises
    for family in families.values():
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type != "unknown", f"{family.name} has no TYPE"

    [build] = samples(text, "p2preg_build_info")
    assert build.value == 1 and build.labels["version"] == __version__
    assert build.labels["event_loop"] and build.labels["python"]
    assert value(text, "process_cpu_seconds_total") > 0
    assert value(text, "process_resident_memory_bytes") > 0
    assert value(text, "process_open_fds") > 0
    # Per-code families instead of one mixed one.
    codes = {s.labels["code"] for s in samples(text, "p2preg_sip_responses_total")}
    assert codes == {"200"}
    assert value(text, "p2preg_sip_responses_total", method="REGISTER", code="200") == 2
    assert value(text, "p2preg_sip_requests_total", method="REGISTER") == 2
    assert "p2preg_overlay_messages" in families  # the parser names counters without _total
    assert all(
        s.labels.keys() == {"direction", "code"}
        for s in families["p2preg_overlay_messages"].samples
    )
    assert not any(
        s.labels.get("event", "").startswith(("sent.", "received.", "link.", "replication."))
        for s in samples(text, "p2preg_overlay_events_total")
    )
    assert value(text, "p2preg_sip_register_duration_seconds_count") == 2
    wait_for(
        lambda: value(scrape(node)[1], "p2preg_event_loop_lag_seconds_count") > 0,
        10.0,
        "a first event loop lag sample (every 50 ms)",
    )
    # Alone, the node's records have one copy: all of its primary records are below 3.
    assert "copies" in families["p2preg_records_under_replicated"].documentation
    wait_for(
        lambda: value(scrape(node)[1], "p2preg_records_under_replicated") == 3,
        10.0,
        "2 bindings and 1 value counted as under-replicated",
    )
    assert value(text, "p2preg_handoffs_in_flight") in (0, 1)
    assert value(text, "p2preg_ready") == 1
    assert "alice" not in text


def test_health_and_under_replicated_on_a_ring(cluster: Cluster) -> None:
    first = cluster.start()
    others = [cluster.start([first.overlay]) for _ in range(2)]
    nodes = [first, *others]
    wait_ring([first], [n.node_id for n in nodes], 60.0)
    http_json(first.admin, "PUT", "/v1/kv/spread", b"x")

    def healthy(node: NodeProcess) -> bool:
        status, body = http_json(node.admin, "GET", "/v1/health")
        return status == 200 and body["ready"] and body["replica_targets"] == 2

    for node in nodes:
        wait_for(lambda n=node: healthy(n), 20.0, f"node {node.index} ready")  # type: ignore[misc]
        text = scrape(node)[1]
        assert value(text, "p2preg_records_under_replicated") == 0
        sent = samples(text, "p2preg_overlay_messages_total")
        assert any(s.labels["direction"] == "sent" and s.value > 0 for s in sent), sent

    # A node that cannot join is not ready: 503 with the reason.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    lonely = cluster.start([dead])
    status, body = http_json(lonely.admin, "GET", "/v1/health")
    assert status == 503 and body["ready"] is False
    assert any("not joined" in p for p in body["problems"]), body
    assert value(scrape(lonely)[1], "p2preg_ready") == 0
