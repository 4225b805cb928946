"""A bound on the request bodies a process holds at once: being read and parsed, waiting for
admission, or being answered.

Admission caps the requests that hold an upstream slot, but a body is read and parsed before a
request can ask for one, and a 10 MB JSON body parses to several times that in Python objects,
which the request keeps until it is answered. ``BodyBudget`` lets requests hold at most ``limit``
bytes of bodies at once, counted as they arrive (a declared ``Content-Length`` reserves nothing,
so a client cannot hold the budget with promises) and given back when the request ends: a
request whose next chunk does not fit gets the 429 ``overloaded`` of a full admission queue,
with ``Retry-After``. With several client keys, one key's requests may hold at most
``client_share`` of it, so that one client's large or slow uploads cannot lock the others out.
"""

from __future__ import annotations

from server import metrics
from server.errors import overloaded, retry_after


class BodyBudget:
    """Hands out at most ``limit`` bytes at once to the bodies of requests being handled, at most
    ``client_share`` of them to one client (a client key's fingerprint; "" is not limited)."""

    def __init__(self, limit: int, retry_seconds: float, client_share: int | None = None) -> None:
        self.limit = limit
        self.client_share = limit if client_share is None else client_share
        self.in_use = 0
        self._by_client: dict[str, int] = {}  # clients holding bytes now: at most one per client key
        self._retry_after = retry_after(retry_seconds)

    def hold(self, client: str = "") -> Hold:
        """A reservation for ``client`` that grows with the body (``Hold.cover``) until ``Hold.release``."""
        return Hold(self, client)

    def give_back(self, size: int, client: str) -> None:
        """``client`` holds ``size`` bytes fewer."""
        self.in_use -= size
        metrics.BODY_BYTES_PENDING.dec(size)
        if client and size:
            self._by_client[client] -= size
            if not self._by_client[client]:
                del self._by_client[client]

    def take(self, size: int, client: str = "") -> None:
        """Reserve ``size`` more bytes for ``client``; a 429 APIError when they do not fit."""
        if self.in_use + size > self.limit:
            metrics.REJECTED.labels("body_budget_full").inc()
            raise overloaded(f"routegate holds its limit of {self.limit} bytes of request bodies", self._retry_after)
        held_by_client = self._by_client.get(client, 0)
        if client and held_by_client + size > self.client_share:
            metrics.REJECTED.labels("body_budget_full").inc()
            raise overloaded(
                f"routegate holds this client key's share of {self.client_share} bytes of request bodies", self._retry_after
            )
        self.in_use += size
        metrics.BODY_BYTES_PENDING.inc(size)
        if client:
            self._by_client[client] = held_by_client + size


class Hold:
    """One request's reservation: the ``size`` bytes of its body received so far."""

    def __init__(self, budget: BodyBudget, client: str) -> None:
        self._budget = budget
        self._client = client
        self.size = 0

    def cover(self, received: int) -> None:
        """Grow the reservation to ``received`` bytes; a 429 APIError when the budget is spent."""
        if received > self.size:
            self._budget.take(received - self.size, self._client)
            self.size = received

    def release(self) -> None:
        """Give the bytes back (once: the request ended)."""
        size, self.size = self.size, 0
        self._budget.give_back(size, self._client)
