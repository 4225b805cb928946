"""Overload protection: a cap on concurrent upstream requests with a bounded, time-limited queue.

A request past the cap waits for a slot; when ``max_queued`` requests already wait, or its wait
passes ``queue_timeout``, it is refused with a 429 and ``Retry-After`` instead of piling up. With
several client keys, one key holds at most half of the slots and half of the queue, so that one
busy client cannot lock the others out (as ``BodyBudget`` shares request bodies).
"""

from __future__ import annotations

import asyncio
from collections import Counter

from server import metrics
from server.errors import APIError, overloaded, retry_after


class Admission:
    """Hands out at most ``limit`` upstream slots at once; ``release`` once per granted ``acquire``.
    With ``clients`` of two or more keys, one key (its fingerprint) holds at most half of the
    slots and waits with at most half of the queue's places; requests without a key are not limited."""

    def __init__(self, limit: int, max_queued: int, queue_timeout: float, clients: int = 1) -> None:
        self.limit = limit
        self.max_queued = max_queued
        self.queue_timeout = queue_timeout
        self.waiting = 0
        self._slots = asyncio.Semaphore(limit)
        self._retry_after = retry_after(queue_timeout)
        self._shared = clients >= 2
        self.client_slots, self.client_queue = max(1, limit // 2), max(1, max_queued // 2)
        self._own_slots: dict[str, asyncio.Semaphore] = {}  # one per client key: as many as the configured keys
        self._waiting_by_client: Counter[str] = Counter()

    async def acquire(self, client: str = "") -> None:
        """Take a slot for ``client``, waiting in the queue if needed; raise a 429 APIError when refused."""
        own = self._own(client)
        if self._slots.locked() or self.waiting or (own is not None and own.locked()):
            if self.waiting >= self.max_queued:
                raise self._refuse("queue_full")
            if own is not None and self._waiting_by_client[client] >= self.client_queue:
                raise self._refuse(
                    "queue_full",
                    f"routegate holds this client key's share: {self.client_slots} concurrent requests and "
                    f"{self.client_queue} queued",
                )
            self.waiting += 1
            self._waiting_by_client[client] += 1
            metrics.QUEUED.inc()
            try:
                async with asyncio.timeout(self.queue_timeout):
                    await self._take(own)
            except TimeoutError:
                raise self._refuse("queue_timeout") from None
            finally:
                self.waiting -= 1
                self._waiting_by_client[client] -= 1
                if not self._waiting_by_client[client]:
                    del self._waiting_by_client[client]
                metrics.QUEUED.dec()
        else:
            await self._take(own)
        metrics.UPSTREAM_ACTIVE.inc()

    def release(self, client: str = "") -> None:
        """Give ``client``'s slot back."""
        self._slots.release()
        own = self._own(client)
        if own is not None:
            own.release()
        metrics.UPSTREAM_ACTIVE.dec()

    def _own(self, client: str) -> asyncio.Semaphore | None:
        """The semaphore of ``client``'s share of the slots; None when slots are not shared out."""
        if not (self._shared and client):
            return None
        own = self._own_slots.get(client)
        if own is None:  # not made on every call, as setdefault's argument would be
            own = self._own_slots[client] = asyncio.Semaphore(self.client_slots)
        return own

    async def _take(self, own: asyncio.Semaphore | None) -> None:
        """A place in the client's share (when shared), then one of the slots."""
        if own is None:
            await self._slots.acquire()
            return
        await own.acquire()
        try:
            await self._slots.acquire()
        except BaseException:
            own.release()
            raise

    def _refuse(self, reason: str, message: str | None = None) -> APIError:
        metrics.REJECTED.labels(reason).inc()
        return overloaded(message or f"routegate is at its limit of {self.limit} concurrent requests", self._retry_after)
