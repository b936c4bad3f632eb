"""Timer values that would stop or spin a node are refused before it starts (nemesis bug 5:
``--ping-interval nan`` killed the timer task silently, ``--update-interval 1e-9`` spun a core)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from harness import run_cli

from overlay.config import ChordConfig
from overlay.replication_backend import ReplicationConfig
from overlay.transport import LinkConfig


@pytest.mark.parametrize("field", ["ping_interval", "update_interval", "finger_interval"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -1.0, 1e-9, 1e12])
def test_chord_config_refuses_timers_that_stop_or_spin(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ChordConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: ReplicationConfig(anti_entropy_interval=math.nan),
        lambda: ReplicationConfig(sweep_interval=1e-9),
        lambda: ReplicationConfig(settle=math.inf),
        lambda: LinkConfig(failure_floor=math.nan),
        lambda: LinkConfig(check_interval=0.0),
        lambda: ChordConfig(request_lifetime=math.nan),
        lambda: ChordConfig(jitter=math.nan),
    ],
)
def test_other_timers_refuse_non_finite_values(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_the_short_test_timers_are_still_accepted() -> None:
    ChordConfig(ping_interval=0.05, update_interval=0.05, finger_interval=0.05)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--ping-interval", "nan"),
        ("--update-interval", "1e-9"),
        ("--finger-interval", "inf"),
        ("--anti-entropy-interval", "nan"),
    ],
)
def test_run_refuses_a_bad_timer_in_one_line(tmp_path: Path, flag: str, value: str) -> None:
    data = tmp_path / "data"
    result = run_cli(
        "run", "--data-dir", str(data), "--overlay", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        flag, value,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    name = flag.lstrip("-").replace("-", "_")
    assert name in lines[0] or flag in lines[0], lines[0]
