"""The connection to the Redis that replicas share state through (``ROUTEGATE_REDIS_URL``), and
the rule for when it fails.

Every shared operation runs through ``SharedState.run`` with a short deadline
(``ROUTEGATE_REDIS_TIMEOUT_MS``, connecting included). One that fails or times out is counted in
``routegate_shared_state_errors_total{op}`` and raises ``SharedStateUnavailable``: its caller then
decides with in-process state. Redis is left alone for ``ROUTEGATE_REDIS_RETRY_SECONDS`` after a
failure (so a dead Redis costs one timeout per interval, not one per request), then tried again
by one operation while the others keep deciding in-process until it answers;
``routegate_shared_state_up`` says which state is deciding. Failures are logged at most once per
``LOG_INTERVAL`` seconds.

An operation holds one of ``ROUTEGATE_REDIS_MAX_CONNECTIONS`` slots, so the pool never runs dry
while Redis works. Under a burst an operation waits for a slot within its deadline (the wait and
the call share it); one that gets no slot in time, or whose call runs out of the time its wait
left, is decided in-process and counted in ``routegate_shared_state_busy_total{op}``, without
taking a healthy Redis for a failed one (which would send every operation in-process for the
retry interval). Operations that found a slot free at once still find out that Redis failed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig

from server import metrics
from server.settings import Settings

log = logging.getLogger("routegate.shared_state")
LOG_INTERVAL = 60.0
OPS = (
    "sticky_get",
    "sticky_set",
    "target_decide",
    "target_record",
    "budget_read",
    "budget_add",
    "shadow_budget_read",
    "shadow_budget_add",
    "score_get",
    "score_put",
    "ping",
)
T = TypeVar("T")


class SharedStateUnavailable(Exception):
    """Redis failed, timed out or is resting after a failure, or every connection stayed busy:
    decide with in-process state. ``attempted``: the operation was tried (so Redis may have run
    it), not skipped; ``busy``: Redis was not taken for failed (its state still stands)."""

    def __init__(self, op: str, attempted: bool = True, busy: bool = False) -> None:
        super().__init__(op)
        self.attempted = attempted
        self.busy = busy


class SharedState:
    """A Redis connection pool with short timeouts, a key namespace and a circuit breaker."""

    def __init__(
        self,
        url: str,
        prefix: str,
        timeout: float,
        retry_seconds: float,
        max_connections: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # never sent twice: a target route's record is not idempotent
            # with maintenance notifications on, redis-py skips its check that a pooled connection is
            # still open, so one that Redis (``timeout``) or a proxy closed while idle failed its next call
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
            decode_responses=True,
        )
        self.redis = Redis(connection_pool=pool)
        self._slots = asyncio.Semaphore(max_connections)  # one per pooled connection: the pool never blocks
        self.prefix = prefix
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._resting_until = -math.inf
        self._logged_at = -math.inf
        self._failures_unlogged = 0
        self._failure_logged = False
        self.up = True
        for op in OPS:
            metrics.SHARED_STATE_ERRORS.labels(op)
            metrics.SHARED_STATE_BUSY.labels(op)
        metrics.shared_state_up().set(1)

    def key(self, *parts: str) -> str:
        """A key in this deployment's namespace."""
        return self.prefix + ":".join(parts)

    def script(self, source: str) -> AsyncScript:
        """A Lua script run atomically by Redis (EVALSHA, loaded again after a Redis restart)."""
        return self.redis.register_script(source)

    async def run(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``'s result; SharedStateUnavailable when Redis fails, is too slow or is resting, or
        when every connection stays busy for the deadline."""
        if self._clock() < self._resting_until:
            raise SharedStateUnavailable(op, attempted=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        queued = self._slots.locked()  # no slot free: this operation waits, within its deadline
        if queued:
            try:  # asyncio.timeout, not wait_for: on Python 3.11 that can swallow a disconnected client's cancellation
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._busy(op, attempted=False) from None
        else:
            await self._slots.acquire()  # returns at once, before any other operation runs
        try:
            return await self._run_in_slot(op, call, deadline - loop.time() if queued else self.timeout, queued)
        finally:
            self._slots.release()

    def end_rest(self) -> None:
        """Let the next operation try Redis now, even inside the rest after a failure: a stopping
        replica's last chance to write what it owes the others."""
        self._resting_until = min(self._resting_until, self._clock())

    def _busy(self, op: str, attempted: bool) -> SharedStateUnavailable:
        metrics.SHARED_STATE_BUSY.labels(op).inc()
        return SharedStateUnavailable(op, attempted=attempted, busy=True)

    async def _run_in_slot(self, op: str, call: Callable[[], Awaitable[T]], time_left: float, queued: bool) -> T:
        now = self._clock()
        if now < self._resting_until:  # Redis failed while this operation waited for a slot
            raise SharedStateUnavailable(op, attempted=False)
        if time_left <= 0:
            raise self._busy(op, attempted=False)
        trial = not self.up  # the rest is over: this operation tries Redis, the others wait for its outcome
        if trial:
            self._resting_until = now + time_left
        try:
            async with asyncio.timeout(time_left):
                result = await call()
        except TimeoutError:
            if queued:  # out of the time its wait for a slot left: not a sign that Redis failed
                raise self._busy(op, attempted=True) from None
            self._failed(op, TimeoutError(f"no answer in {self.timeout:g}s"))
            raise SharedStateUnavailable(op) from None
        except (RedisError, OSError) as error:
            self._failed(op, error)
            raise SharedStateUnavailable(op) from None
        if trial and not self.up:  # only the trial's answer ends a rest: one begun before the failure says nothing
            self.up = True
            self._resting_until = -math.inf
            metrics.shared_state_up().set(1)
            if self._failure_logged:  # one message per logged failure: a flapping Redis logs once per interval
                log.warning("shared state: Redis answers again; replicas share state again")
                self._failure_logged = False
        return result

    def _failed(self, op: str, error: BaseException) -> None:
        now = self._clock()
        metrics.SHARED_STATE_ERRORS.labels(op).inc()
        self._resting_until = now + self.retry_seconds
        self._failures_unlogged += 1
        if self.up:
            self.up = False
            metrics.shared_state_up().set(0)
        if now - self._logged_at >= LOG_INTERVAL:
            log.warning(
                "shared state: Redis failed (%s in %s: %s; %d failures since the last message); "
                "deciding with in-process state, next try in %gs",
                type(error).__name__,
                op,
                error,
                self._failures_unlogged,
                self.retry_seconds,
            )
            self._logged_at = now
            self._failures_unlogged = 0
            self._failure_logged = True

    async def keep_probing(self) -> None:
        """Ping Redis at start and then once every ``retry_seconds``, with or without requests: an
        idle process would otherwise report it up before it was ever reached (a wrong URL or
        password), or after it went away, and down after it came back, until its next request."""
        while True:
            try:
                await self.run("ping", lambda: self.redis.ping())
            except SharedStateUnavailable:
                pass
            except Exception:  # a defect here must not end the probing for good
                log.exception("shared state: the Redis probe failed")
            await asyncio.sleep(self.retry_seconds)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose(close_connection_pool=True)  # a pool given to Redis() is not closed by default


def shared_state_from(settings: Settings) -> SharedState | None:
    """The SharedState that ``settings`` ask for, or None (``redis_url`` unset: in-process state)."""
    if settings.redis_url is None:
        return None
    return SharedState(
        settings.redis_url.get_secret_value(),
        settings.redis_prefix,
        settings.redis_timeout_ms / 1000,
        settings.redis_retry_seconds,
        settings.redis_max_connections,
    )
