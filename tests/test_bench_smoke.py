"""The REGISTER benchmark (scripts/bench/bench_register.py) runs end to end in --quick mode:
Kamailio and p2preg rings driven by SIPp, one table printed and the JSON written."""

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
    header = next(i for i, line in enumerate(lines) if line.startswith("system"))
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
