"""Metric changes across a stretch of a test, read from a routegate's ``/metrics``."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.metrics_text import metric_sum


class MetricDelta:
    """Metric changes between a snapshot taken at construction and ``after()``."""

    def __init__(self, read: Callable[[], str]) -> None:
        self._read = read
        self._before = read()
        self._after: str | None = None

    def after(self) -> MetricDelta:
        """Take the second snapshot."""
        self._after = self._read()
        return self

    def __call__(self, name: str, **labels: str) -> float:
        """How much the samples called ``name`` with ``labels`` grew between the snapshots."""
        assert self._after is not None, "call after() first"
        return metric_sum(self._after, name, **labels) - metric_sum(self._before, name, **labels)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
