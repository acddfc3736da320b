"""Histogram buckets of the run loop's metrics, and :class:`BulkHistogram` for per-event values."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# fmt: off
MODEL_TIME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
EVENT_TO_PREDICTION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)
LABEL_DELAY_BUCKETS = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
)
CHECKPOINT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# fmt: on


def size_buckets(largest: int) -> tuple[float, ...]:
    """Powers of two up to ``largest``, and ``largest`` itself."""
    sizes = {1 << k for k in range(max(largest, 1).bit_length()) if 1 << k <= largest} | {largest}
    return tuple(float(s) for s in sorted(sizes))


class BulkHistogram(Collector):
    """A histogram that takes a whole array per call: one numpy pass instead of one observe per event.

    Per-event latencies at tens of thousands of events per second would make prometheus_client's
    per-observation :class:`~prometheus_client.Histogram` a visible share of a core. Exposition
    is prometheus_client's (:class:`HistogramMetricFamily`); observing is thread-safe.
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(sorted(buckets), dtype=np.float64)
        # prometheus_client's own spelling of a bound, so the le labels match its Histogram's.
        self._names = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]  # not annotated
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Count each finite value in its bucket (``le``: value <= bound)."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            return
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=list(zip(self._names, cumulative, strict=True)), sum_value=total
        )

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)
