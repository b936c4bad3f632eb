"""Counters and histograms in the Prometheus text format (names prefixed ``p2preg_``).

Kept dependency-free: the admin API's /metrics joins the lines each part renders.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

# Seconds; REGISTER latency is one or two overlay round trips plus an LMDB commit.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Iterable[float] = LATENCY_BUCKETS):
        self.name = name
        self.help = help_text
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            out.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {cumulative}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{self.name}_sum {self.sum:.6f}")
        out.append(f"{self.name}_count {self.count}")
        return out

    def quantile(self, q: float) -> float | None:
        """An upper bound of the q-quantile from the buckets (None when empty)."""
        if not self.count:
            return None
        rank = q * self.count
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            if cumulative >= rank:
                return bound
        return float("inf")


def _num(value: float) -> str:
    return f"{value:g}"


def counter_lines(
    name: str, help_text: str, values: dict[tuple[tuple[str, str], ...], int] | int
) -> list[str]:
    """A counter family; ``values`` maps label tuples to counts (or is one unlabelled count)."""
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    if isinstance(values, int):
        out.append(f"{name} {values}")
        return out
    for labels, count in sorted(values.items()):
        out.append(f"{name}{_labels(labels)} {count}")
    return out


def gauge_lines(name: str, help_text: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_num(value)}"]


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
