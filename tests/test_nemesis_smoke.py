"""The nemesis harness's short run (issue 14, acceptance 2): five real nodes in network
namespaces, every fault kind at least once (some mixed), SIP clients throughout, then the
checker over the whole history. Nothing acknowledged may be lost, nothing removed may come
back, every node must answer every AOR alike, and the ring must heal after every episode.

The long run is ``make nemesis SEED=... MINUTES=...`` (scripts/nemesis/run.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nemesis.history import FaultKind
from nemesis.net import netns_usable
from nemesis.nodes import faketime_lib
from nemesis.run import RunConfig, format_summary, run

SEED = 14


def test_nemesis_smoke(tmp_path: Path) -> None:
    reason = netns_usable()
    if reason is not None:
        pytest.skip(f"the nemesis harness {reason}")
    if faketime_lib() is None:
        pytest.skip("the nemesis harness needs libfaketime (Debian package 'faketime')")
    cfg = RunConfig(
        seed=SEED,
        fault_seconds=0.0,  # one pass over every kind, then the check
        out=tmp_path / "nemesis",
        nodes=5,
        max_nodes=6,
        workers=4,
        aors=30,
        hold=(2.5, 4.0),
        mix=0.6,
        heal_bound=25.0,
        quiet=3.0,
    )
    summary = run(cfg)
    report = format_summary(summary)
    print(report)
    missing = {k.value for k in FaultKind} - set(summary["nemesis_counts"])
    assert not missing, f"fault kinds that never ran: {sorted(missing)}\n{report}"
    assert summary["acknowledged"] > 0, report
    counts = {k: summary[k] for k in ("lost", "resurrected", "divergent", "unhealed")}
    assert counts == dict.fromkeys(counts, 0), report
    assert summary["unanswered"] == 0, report
    assert summary["crashes"] == 0, report
