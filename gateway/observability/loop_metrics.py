"""Counters and histograms for what every request records, kept as plain numbers on the event loop.

prometheus_client's Counter and Histogram are thread-safe: every `inc` and `observe` takes a lock
(and a histogram walks its buckets in Python), ~5 us of CPU for the six updates a request makes.
These are written only by the event loop's thread, and /metrics is rendered on that same thread,
so a dict entry per label set is enough; the registry turns them into ordinary metric families
when it is scraped. Label values are the caller's (bounded, see metrics.py).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LoopCounter(Collector):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(list(labels), value)
        yield family


class LoopHistogram(Collector):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.bounds = tuple(float(b) for b in buckets if b != math.inf)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"{name}: buckets must be strictly increasing")
        self._les = [floatToGoString(b) for b in (*self.bounds, math.inf)]
        # label values -> [observations per bucket (le is inclusive), ..., above the last bound, sum]
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0.0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1
        row[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, row in list(self.values.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for le, n in zip(self._les, row[:-1], strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            family.add_metric(list(labels), buckets, row[-1])
        yield family
