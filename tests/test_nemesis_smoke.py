"""The nemesis harness's short run (issue 14, acceptance 2): five real nodes in network
namespaces, every fault kind at least once (some mixed), SIP clients throughout, then the
checker over the whole history. Nothing acknowledged may be lost, nothing removed may come
back, every node must answer every AOR alike, and the ring must heal after every episode.

The same run from the command line: ``python scripts/nemesis/run.py --smoke``; the long one:
``make nemesis SEED=... MINUTES=...``. A failed run's work directory (history, node logs,
summary.json) is kept in /tmp/p2preg-nemesis-smoke-failed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from nemesis.history import FaultKind
from nemesis.net import netns_usable
from nemesis.nodes import faketime_lib
from nemesis.run import format_summary, run, smoke_config

KEEP = Path("/tmp/p2preg-nemesis-smoke-failed")


def test_nemesis_smoke(tmp_path: Path) -> None:
    reason = netns_usable()
    if reason is not None:
        pytest.skip(f"the nemesis harness {reason}")
    if faketime_lib() is None:
        pytest.skip("the nemesis harness needs libfaketime (Debian package 'faketime')")
    out = tmp_path / "nemesis"
    summary = run(smoke_config(out))
    report = format_summary(summary)
    print(report)
    missing = {k.value for k in FaultKind} - set(summary["nemesis_counts"])
    counts = {
        k: summary[k]
        for k in ("lost", "resurrected", "divergent", "unhealed", "unanswered", "crashes")
    }
    failed = bool(missing) or any(counts.values()) or summary["acknowledged"] == 0
    if failed:
        # pytest's tmp directories rotate away quickly on a shared machine: keep this one.
        shutil.rmtree(KEEP, ignore_errors=True)
        shutil.copytree(out, KEEP, ignore=shutil.ignore_patterns("code", "store"))
        report += f"\n(work directory kept in {KEEP})"
    assert not missing, f"fault kinds that never ran: {sorted(missing)}\n{report}"
    assert summary["acknowledged"] > 0, report
    assert counts == dict.fromkeys(counts, 0), report
