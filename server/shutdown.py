"""Graceful shutdown: on SIGTERM the process drains before it stops.

While draining, requests already in flight (streams included) run on, new chat requests get a 503
``shutting_down`` error and ``/ready`` answers 503 so that load balancers stop sending traffic.
The process stops when nothing is in flight any more or ``ROUTEGATE_SHUTDOWN_GRACE_SECONDS`` have
passed; uvicorn then cancels whatever is left. A second signal ends the grace period at once:
what is in flight is cut as when it runs out (a third SIGINT leaves without the app's clean-up). With
``ROUTEGATE_WORKERS`` > 1 the supervisor asks every worker to drain the same way
(server/workers.py).
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn


class Drain:
    """This process's shutdown state, read by the request handlers."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self._stopping = False
        self._when_stopping: list[Callable[[], None]] = []  # run once, on the event loop, as the process stops

    @property
    def draining(self) -> bool:
        """True once a drain signal arrived: new chat requests are refused."""
        return self.started_at is not None

    @property
    def stopping(self) -> bool:
        """True once the process is stopping, drained or not: what is cut at the end is answered
        ``shutting_down``."""
        return self._stopping or self.draining

    def stop(self) -> None:
        """The process stops without a drain phase (a retired worker): it serves what it has."""
        self._stopping = True

    def when_stopping(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop once the process stops (within 0.1 s of its signal)."""
        self._when_stopping.append(callback)

    def tell_stopping(self) -> None:
        """Run the ``when_stopping`` callbacks, once, if the process is stopping."""
        if self.stopping:
            callbacks, self._when_stopping = self._when_stopping, []
            for callback in callbacks:
                callback()

    def begin(self) -> None:
        """Start draining (idempotent)."""
        if self.started_at is None:
            self.started_at = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since draining began (0 before)."""
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at


DRAIN = Drain()  # one per process: the process is what shuts down
#: after the grace period, the most the clean-up takes: the decisions of streams cut at its end,
#: the feedback store's queue, the spend Redis did not take. Whoever kills a stopping process
#: (the worker supervisor, Docker's stop_grace_period, Kubernetes' terminationGracePeriodSeconds)
#: waits longer than the grace period plus this.
CLOSING_SECONDS = 10.0


def seconds_left(deadline: float, at_most: float = math.inf) -> float:
    """Seconds from now to ``deadline`` (event-loop time), at most ``at_most``, never below 0."""
    return max(0.0, min(at_most, deadline - asyncio.get_running_loop().time()))


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first ``drain_signals`` signal drains (see the module doc) instead of
    closing the listening socket at once; in-flight requests get ``config.timeout_graceful_shutdown``
    seconds in all. Other signals stop it the usual uvicorn way."""

    def __init__(self, config: uvicorn.Config, drain_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        super().__init__(config)
        self.drain_signals = drain_signals

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig in self.drain_signals and not self.should_exit:
            if not DRAIN.draining:
                DRAIN.begin()
                return
            # a second signal: the grace period ends now (uvicorn would wait it out all over again)
            self.config.timeout_graceful_shutdown = 0.1  # type: ignore[assignment]  # seconds, as in on_tick
        # stopping without a drain phase (a retired worker): still, what is cut when the grace period
        # runs out is answered ``shutting_down`` and counted, not uvicorn's bare 500
        DRAIN.stop()
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        DRAIN.tell_stopping()
        if await super().on_tick(counter):
            return True
        if not DRAIN.draining:
            return False
        grace = self.config.timeout_graceful_shutdown or 0.0
        left = grace - DRAIN.elapsed()
        if self.server_state.tasks and left > 0:
            return False
        # What is still running after the grace period is cancelled almost at once by uvicorn.
        # uvicorn annotates it int, but hands it to asyncio.wait_for as seconds, where a float is fine
        self.config.timeout_graceful_shutdown = max(left, 0.1)  # type: ignore[assignment]
        return True
