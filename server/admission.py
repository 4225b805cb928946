"""Overload protection: a cap on concurrent upstream requests with a bounded, time-limited queue.

A request past the cap waits for a slot; when ``max_queued`` requests already wait, or its wait
passes ``queue_timeout``, it is refused with a 429 and ``Retry-After`` instead of piling up.
"""

from __future__ import annotations

import asyncio

from server import metrics
from server.errors import APIError, overloaded, retry_after


class Admission:
    """Hands out at most ``limit`` upstream slots at once; ``release`` once per granted ``acquire``."""

    def __init__(self, limit: int, max_queued: int, queue_timeout: float) -> None:
        self.limit = limit
        self.max_queued = max_queued
        self.queue_timeout = queue_timeout
        self.waiting = 0
        self._slots = asyncio.Semaphore(limit)
        self._retry_after = retry_after(queue_timeout)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if needed; raise a 429 APIError when refused."""
        if self._slots.locked() or self.waiting:
            if self.waiting >= self.max_queued:
                raise self._refuse("queue_full")
            self.waiting += 1
            metrics.QUEUED.inc()
            try:
                async with asyncio.timeout(self.queue_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._refuse("queue_timeout") from None
            finally:
                self.waiting -= 1
                metrics.QUEUED.dec()
        else:
            await self._slots.acquire()
        metrics.UPSTREAM_ACTIVE.inc()

    def release(self) -> None:
        """Give a slot back."""
        self._slots.release()
        metrics.UPSTREAM_ACTIVE.dec()

    def _refuse(self, reason: str) -> APIError:
        metrics.REJECTED.labels(reason).inc()
        return overloaded(f"routegate is at its limit of {self.limit} concurrent requests", self._retry_after)
