"""Latency histograms and metric families for Prometheus (names prefixed ``p2preg_``).

The SIP front end and the node keep their own plain counters and :class:`Histogram` objects
(a bisect and two additions per observation, on the hot path of every request); at scrape
time they are turned into ``prometheus_client`` metric families by the collectors (see
``SipService.collect`` and ``p2preg.metrics``), which render the text format.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

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

    def family(self) -> HistogramMetricFamily:
        """The histogram as a Prometheus metric family (cumulative buckets)."""
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            buckets.append((f"{bound:g}", cumulative))
        buckets.append(("+Inf", self.count))
        return HistogramMetricFamily(self.name, self.help, buckets=buckets, sum_value=self.sum)

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


def counter(
    name: str,
    help_text: str,
    values: Mapping[tuple[str, ...], float] | float,
    labels: Sequence[str] = (),
) -> CounterMetricFamily:
    """A counter family (``name`` ends in ``_total``); ``values`` maps label values, in the
    order of ``labels``, to counts, or is one unlabelled count."""
    if not isinstance(values, Mapping):
        return CounterMetricFamily(name, help_text, value=values)
    names, rows = _by_label_name(labels, values)
    family = CounterMetricFamily(name, help_text, labels=names)
    for label_values, count in rows:
        family.add_metric(label_values, count)
    return family


def gauge(
    name: str,
    help_text: str,
    values: Mapping[tuple[str, ...], float] | float,
    labels: Sequence[str] = (),
) -> GaugeMetricFamily:
    if not isinstance(values, Mapping):
        return GaugeMetricFamily(name, help_text, value=values)
    names, rows = _by_label_name(labels, values)
    family = GaugeMetricFamily(name, help_text, labels=names)
    for label_values, value in rows:
        family.add_metric(label_values, value)
    return family


def _by_label_name(
    labels: Sequence[str], values: Mapping[tuple[str, ...], float]
) -> tuple[list[str], list[tuple[list[str], float]]]:
    """Labels in name order (as recent prometheus_client versions print them anyway, so the
    text is the same whatever the version), with each row's values in that order too."""
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    rows = [([key[i] for i in order], v) for key, v in values.items()]
    rows.sort()
    return [labels[i] for i in order], rows
