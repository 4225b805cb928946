"""Reading metric values back from a routegate's ``/metrics`` with prometheus-client's own parser."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                total += sample.value
    return total


class MetricDelta:
    """Metric changes between a snapshot taken at construction and ``after()``."""

    def __init__(self, read: Callable[[], str]) -> None:
        self._read = read
        self._before = read()
        self._after: str | None = None

    def after(self) -> MetricDelta:
        self._after = self._read()
        return self

    def __call__(self, name: str, **labels: str) -> float:
        assert self._after is not None, "call after() first"
        return metric_value(self._after, name, **labels) - metric_value(self._before, name, **labels)
