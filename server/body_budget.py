"""A bound on the request bodies being read and parsed at once, before admission.

Admission caps the requests that hold an upstream slot, but a body has to be read and parsed
before a request can ask for one, and a 10 MB JSON body parses to about eight times that in
Python objects. ``BodyBudget`` lets at most ``limit`` bytes of bodies be in that stage at once:
a request reserves its declared ``Content-Length`` first, waiting in line for up to ``wait``
seconds, and a body without one reserves as its chunks arrive, without waiting. A request that
cannot be given its bytes, or finds ``max_waiting`` requests already in line, gets the same 429
``overloaded`` as a full admission queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from server import metrics
from server.errors import APIError, retry_after


class BodyBudget:
    """Hands out at most ``limit`` bytes at once to the bodies being read and parsed."""

    def __init__(self, limit: int, max_waiting: int, wait: float) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.wait = wait
        self.in_use = 0
        self._line: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._retry_after = retry_after(wait)

    @asynccontextmanager
    async def hold(self, declared: int) -> AsyncIterator[Hold]:
        """Reserve ``declared`` bytes (waiting in line if needed) for the block; the ``Hold`` grows
        the reservation to what actually arrives. Everything is given back on leaving the block."""
        await self._take(declared)
        held = Hold(self, declared)
        try:
            yield held
        finally:
            self._give_back(held.size)

    async def _take(self, size: int) -> None:
        if not self._line and self.in_use + size <= self.limit:
            self._reserve(size)
            return
        if len(self._line) >= self.max_waiting:
            raise self._refuse("body_queue_full")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, turn)
        self._line.append(entry)
        try:
            async with asyncio.timeout(self.wait):
                await turn
        except BaseException as error:
            if turn.done() and not turn.cancelled():  # granted just as the wait ended: not ours to keep
                self._give_back(size)
            else:
                turn.cancel()
                self._line.remove(entry)
                self._serve_line()  # a large request leaving the head of the line may let smaller ones in
            if isinstance(error, TimeoutError):
                raise self._refuse("body_queue_timeout") from None
            raise

    def take_more(self, size: int) -> None:
        """Reserve ``size`` more bytes without waiting (a body longer than it declared, or chunked)."""
        if self.in_use + size > self.limit:
            raise self._refuse("body_budget_full")
        self._reserve(size)

    def _reserve(self, size: int) -> None:
        self.in_use += size
        metrics.BODY_BYTES_PENDING.inc(size)

    def _give_back(self, size: int) -> None:
        self.in_use -= size
        metrics.BODY_BYTES_PENDING.dec(size)
        self._serve_line()

    def _serve_line(self) -> None:
        """Grant waiting requests in order while the first in line fits."""
        while self._line and self.in_use + self._line[0][0] <= self.limit:
            size, turn = self._line.popleft()
            if not turn.done():
                self._reserve(size)
                turn.set_result(None)

    def _refuse(self, reason: str) -> APIError:
        metrics.REJECTED.labels(reason).inc()
        return APIError(
            429,
            f"routegate is reading its limit of {self.limit} bytes of request bodies; retry after {self._retry_after} s.",
            type="requests",
            code="overloaded",
            headers={"retry-after": self._retry_after},
        )


class Hold:
    """One request's reservation: ``size`` bytes, grown by ``cover`` as its body arrives."""

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def cover(self, received: int) -> None:
        """Make the reservation at least ``received`` bytes; a 429 APIError when the budget is spent."""
        if received > self.size:
            self._budget.take_more(received - self.size)
            self.size = received
