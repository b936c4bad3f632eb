"""The benchmarks (scripts/bench/bench_register.py) run end to end in --quick mode: Kamailio
and p2preg rings driven by SIPp, REGISTER and then INVITE -> 302 lookups, a table printed for
each and the JSON written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench" / "bench_register.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp missing (make tools)"),
    pytest.mark.skipif(
        shutil.which("kamailio") is None and not Path("/usr/sbin/kamailio").exists(),
        reason="kamailio missing (make tools)",
    ),
]


@pytest.mark.timeout(600)
def test_quick_run_prints_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--nodes", "1", "3", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("system")]
    assert len(headers) == 2, run.stdout[-3000:]
    header = headers[0]
    for column in ("max/s", "x kam", "p50 ms", "p99 ms", "2x 200/s", "x own", "LMDB B/bind"):
        assert column in lines[header]
    rows = [line.split() for line in lines[header + 2 : header + 5]]
    assert [(r[0], r[1]) for r in rows] == [("kamailio", "1"), ("p2preg", "1"), ("p2preg", "3")]

    doc = json.loads(out.read_text())
    results = doc["results"]
    assert [(r["system"], r["nodes"]) for r in results] == [
        ("kamailio", 1),
        ("p2preg", 1),
        ("p2preg", 3),
    ]
    for r in results:
        # A quick run's rates are far below any registrar's limit: every system sustains them.
        assert r["max_rate"] > 0, r
        assert r["ratio_to_kamailio"] is not None
        assert r["overload_goodput"] > 0
        assert r["p99_ms"] == r["p99_ms"], "no response times recorded (NaN)"
        assert r["steps"] and all(s["ok"] > 0 for s in r["steps"])
        assert len(r["rss_kib"]) == (1 if r["system"] == "kamailio" else r["nodes"])
        assert all(kib > 0 for kib in r["rss_kib"])
    for r in results[1:]:
        assert r["bindings"] and r["bindings"] >= doc["users"]
        assert r["lmdb_bytes_per_binding"] > 0
    assert results[0]["lmdb_bytes_per_binding"] is None

    # The lookup table: one row per system, the ratio columns filled in.
    head = lines[headers[1]]
    for column in ("rate/s", "302/s", "x kam", "failed", "retrans", "p50 ms", "p99 ms", "max/s"):
        assert column in head
    rows = [line.split() for line in lines[headers[1] + 2 : headers[1] + 5]]
    assert [(r[0], r[1]) for r in rows] == [("kamailio", "1"), ("p2preg", "1"), ("p2preg", "3")]
    assert all(r[2] == "100" and r[-1] != "-" for r in rows), rows
    assert doc["lookup_rate"] == 100
    for r in results:
        look = r["lookup"]
        # Every user was registered, so every INVITE of a quick run gets its 302: none lost.
        assert look["rate"] == 100
        assert look["ok_302"] == look["calls"] > 0, look
        assert look["failed"] == 0 and look["codes"].get("404", 0) == 0, look
        assert look["codes"].get("480", 0) == 0 and look["unanswered"] == 0, look
        assert look["ok_per_s"] > 0 and look["sustained"] is True
        assert look["p50_ms"] <= look["p99_ms"], look
        assert look["ok_per_s_ratio_to_kamailio"] is not None
        assert look["max_rate"] > 0 and look["max_rate_ratio_to_kamailio"] is not None
        assert look["steps"] and all(s["expect"] == 302 and s["ok"] > 0 for s in look["steps"])
    assert results[0]["lookup"]["max_rate_ratio_to_kamailio"] == 1.0


@pytest.mark.timeout(300)
def test_only_lookup_registers_then_looks_up(tmp_path: Path) -> None:
    """--only-lookup registers the users itself (no REGISTER benchmark, no REGISTER table)."""
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only-lookup", "--no-lookup-ladder",
         "--nodes", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "REGISTER over UDP" not in run.stdout
    assert "INVITE -> 302" in run.stdout
    doc = json.loads(out.read_text())
    assert doc["rates"] is None and doc["lookup_rates"] is None
    assert [(r["system"], r["nodes"]) for r in doc["results"]] == [("kamailio", 1), ("p2preg", 1)]
    for r in doc["results"]:
        assert "max_rate" not in r  # the REGISTER benchmark did not run
        look = r["lookup"]
        assert look["ok_302"] == look["calls"] > 0 and look["failed"] == 0, look
        assert look["max_rate"] is None and look["steps"] == []
    assert doc["results"][1]["bindings"] >= doc["users"]
