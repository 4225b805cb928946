"""Target routes and the daily budget shared by every replica through Redis.

``SharedTargets`` is the async face of ``Targets`` that the decide and record steps use; without
Redis it is the process's ``Targets``. With Redis, each target route is one controller for all
replicas, kept by two Lua scripts (each atomic, one round trip):

- ``decide`` (reads only, as deciding does): the threshold is the quantile of the route's window
  of recent scores (a sorted set of at most ``window`` scores, with a list of their ids in
  arrival order for eviction), asked for the share corrected by the shared realised-share
  feedback. A new route's window is seeded from the router's calibration first.
- ``record`` (once, from an answered request's outcome): the score, when it was scored, joins
  the window; the decision updates the leaky feedback sum and the window of recent decisions
  whose strong share is the realised share.

The route's keys expire a day after its last request. The daily budget is one hash per UTC day
(spend, routed requests, requests priced at the strong tier, their all-strong cost, the first
request's time), added to with ``HINCRBYFLOAT``; it expires two days later.

The in-process objects are kept up to date alongside (every score, decision and cost), so that
when Redis fails the next decision has warm state to fall back on; the budget's in-process copy
holds the last totals read from Redis plus what this process spent since, and spend that could
not be written is written when Redis answers again, under its batch's number, so that Redis adds
a batch it ran after a timeout only once.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.shared_state import SharedState, SharedStateUnavailable
from server.targets import (
    EVERYTHING_STRONG,
    NOTHING_STRONG,
    DailyBudget,
    ShareController,
    TargetDecision,
    Targets,
    utc_day_start,
)

ROUTE_TTL_MS = 86_400_000
BUDGET_TTL_S = 2 * 86_400

# A route's keys expire together, but maxmemory may evict them one by one; the scripts notice it
# from what their own commands return, at no extra round of commands: a window whose list of
# ids was lost starts again, ids go on past the window's when the route state (their counter)
# was lost, and a strong count whose route state or recent decisions were lost is counted again.
_PUSH = """
local function push(score)
  local id = redis.call('HINCRBY', KEYS[3], 'seq', 1)
  if id == 1 and redis.call('LLEN', KEYS[2]) > 0 then  -- the counter was lost, not the window
    for _, known in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do id = math.max(id, tonumber(known) + 1) end
    redis.call('HSET', KEYS[3], 'seq', id)
  end
  redis.call('ZADD', KEYS[1], score, id)
  local length = redis.call('RPUSH', KEYS[2], id)
  if length == 1 and redis.call('ZCARD', KEYS[1]) > 1 then  -- the ids were lost: start again
    redis.call('DEL', KEYS[1])
    redis.call('ZADD', KEYS[1], score, id)
  end
  while length > window do  -- more than one after a smaller window was set
    redis.call('ZREM', KEYS[1], redis.call('LPOP', KEYS[2]))
    length = length - 1
  end
end
"""

# KEYS: window scores (zset), their ids in arrival order (list), route state (hash: seq, debt,
# strong), recent decisions (list of 0/1)
# ARGV: share wanted, window, feedback gain, ttl ms, seed scores (only while unseeded, or when
# the window holds under half of them: Redis lost it, and answers in flight began it again)
# Returns the kind of threshold, its value and how many scores the window holds.
DECIDE = (
    "local window = tonumber(ARGV[2])\n"
    + _PUSH
    + """
if redis.call('ZCARD', KEYS[1]) * 2 < math.min(window, #ARGV - 4) then
  for i = 5, #ARGV do push(ARGV[i]) end
end
local debt = tonumber(redis.call('HGET', KEYS[3], 'debt') or '0')
local wanted = math.min(1, math.max(0, tonumber(ARGV[1]) + tonumber(ARGV[3]) * debt))
local count = redis.call('ZCARD', KEYS[1])
local result
if tonumber(ARGV[1]) <= 0 then
  result = {'none', '1'}
elseif tonumber(ARGV[1]) >= 1 then
  result = {'all', '0'}
elseif count == 0 then
  result = {'empty', string.format('%.17g', wanted)}
else
  local strong = math.floor(wanted * count + 0.5)
  if strong == 0 then
    result = {'above', redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]}
  else
    result = {'at', redis.call('ZREVRANGE', KEYS[1], strong - 1, strong - 1, 'WITHSCORES')[2]}
  end
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
result[3] = count
return result
"""
)

# KEYS: window scores (zset), their ids (list), route state (hash: seq, debt, strong), recent decisions (list of 0/1)
# ARGV: strong (0/1), share wanted, feedback decay, window, ttl ms, score ('' when unscored)
RECORD = (
    "local window = tonumber(ARGV[4])\n"
    + _PUSH
    + """
local stored = redis.call('HGET', KEYS[3], 'debt')  -- nil: the route state was lost (or is new)
if ARGV[6] ~= '' then push(ARGV[6]) end
local strong = tonumber(ARGV[1])
local debt = tonumber(ARGV[3]) * tonumber(stored or '0') + (tonumber(ARGV[2]) - strong)
redis.call('HSET', KEYS[3], 'debt', string.format('%.17g', debt))
local count = redis.call('HINCRBY', KEYS[3], 'strong', strong)
local length = redis.call('RPUSH', KEYS[4], strong)
while length > window do
  if redis.call('LPOP', KEYS[4]) == '1' then count = redis.call('HINCRBY', KEYS[3], 'strong', -1) end
  length = length - 1
end
if (length == 1 and count ~= strong) or (not stored and length > 1) then  -- recent decisions or count lost
  count = 0
  for _, decision in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
    if decision == '1' then count = count + 1 end
  end
  redis.call('HSET', KEYS[3], 'strong', count)
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
return {count, length}
"""
)

#: the budget hash's totals, in the order the script below and a read return them (not its op:
#: marks, which grow with every process that wrote that day)
TOTALS = ("spent", "requests", "priced", "all_strong", "since")

# KEYS: the day's budget hash. ARGV: now, ttl s, writer id, count of settled batch numbers, those
# numbers, then per batch: number, requests, spent, priced requests, all-strong USD.
# A batch is added once: a field op:<writer>:<number> marks it, so a batch sent again after a
# timeout (when Redis may have run it all the same) adds nothing; the writer names the numbers it
# will never send again, and their marks go.
BUDGET_ADD = """
redis.call('HSETNX', KEYS[1], 'since', ARGV[1])
local settled = tonumber(ARGV[4])
for i = 5, 4 + settled do redis.call('HDEL', KEYS[1], 'op:' .. ARGV[3] .. ':' .. ARGV[i]) end
for i = 5 + settled, #ARGV, 5 do
  if redis.call('HSETNX', KEYS[1], 'op:' .. ARGV[3] .. ':' .. ARGV[i], 1) == 1 then
    redis.call('HINCRBY', KEYS[1], 'requests', ARGV[i + 1])
    redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[i + 2])
    redis.call('HINCRBY', KEYS[1], 'priced', ARGV[i + 3])
    redis.call('HINCRBYFLOAT', KEYS[1], 'all_strong', ARGV[i + 4])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HMGET', KEYS[1], TOTALS)
""".replace("TOTALS", ", ".join(f"'{name}'" for name in TOTALS))
MAX_UNSETTLED = 256  # batches kept to send again; beyond, new amounts wait unsent (no new number)


class SharedBudget:
    """The daily budget of all replicas; ``local`` mirrors its last totals and stands in for it."""

    def __init__(
        self,
        local: DailyBudget,
        state: SharedState | None = None,
        workers: int = 1,
        clock: Callable[[], float] = time.time,
        name: str = "budget",
    ) -> None:
        self.local = local
        self.name = name  # its Redis key's name and its operations' prefix: one budget per name
        self.state = state
        self._parts = workers if state is not None else 1
        self._clock = clock
        self._add = state.script(BUDGET_ADD) if state is not None else None
        self._pending = [0, 0.0, 0, 0.0]  # requests, spent, priced, all-strong USD never sent to Redis
        self._pending_day = utc_day_start(clock())
        self._writer = secrets.token_hex(8)  # this process, in the marks of its batches
        self._numbers = itertools.count(1)
        self._unsettled: list[Batch] = []  # sent, but whether Redis added them is not known
        self._settled: list[int] = []  # numbers whose marks can go: they will not be sent again
        self._calls = itertools.count()  # every operation's place in the order they were sent
        self._mirrored = -1  # the place of the operation whose totals ``local`` holds

    @classmethod
    def of(
        cls,
        budget_usd: float,
        state: SharedState | None,
        workers: int,
        name: str = "budget",
        clock: Callable[[], float] = time.time,
    ) -> SharedBudget:
        """A daily budget of ``budget_usd``: the whole of it shared through ``state``, else this
        process's ``1/workers`` part of it, kept in memory."""
        part = DailyBudget(budget_usd / (1 if state is not None else workers), clock)
        return cls(part, state, workers, clock, name)

    @property
    def budget_usd(self) -> float:
        return self.local.budget_usd

    @property
    def remaining_usd(self) -> float:
        """This process's part of the budget left today, as last read (negative when overspent).

        In-process, ``local`` holds this worker's part already; shared, every worker of a replica
        reads the whole remainder and reports its ``1/workers`` of it, so that the gauge's sum over
        the replica's workers is the remainder (and every replica reports the whole of it).
        """
        return self.local.remaining_usd / self._parts

    def count_request(self) -> None:
        """One routed request was answered (written to Redis with the next budget operation: its cost)."""
        self.local.count_request()
        if self.state is not None:
            self._roll_pending()
            self._pending[0] += 1

    async def record_cost(self, tier: str, cost_usd: float, all_strong_usd: float) -> None:
        """A request finished: what it cost on ``tier`` and what it would have cost on the strong tier."""
        self.local.record_cost(tier, cost_usd, all_strong_usd)
        spent = cost_usd if tier == "strong" else 0.0
        await self._share(spent=spent, priced=int(all_strong_usd > 0), all_strong=max(all_strong_usd, 0.0))

    async def refresh(self) -> None:
        """Read today's totals over all replicas (and send what earlier failures left pending)."""
        await self._share()

    async def flush(self) -> None:
        """Send what earlier failures left pending as this replica stops, trying Redis even inside
        the rest after a failure (it may well be back)."""
        if self.state is not None:
            self.state.end_rest()
        await self._share()

    def affordable_share(self) -> float:
        """The largest strong share the rest of today can pay for, over all replicas, as last read."""
        return self.local.affordable_share()

    def _roll_pending(self) -> float:
        """Now; yesterday's unwritten amounts are dropped at 00:00 UTC (they no longer count)."""
        now = self._clock()
        day = utc_day_start(now)
        if day != self._pending_day:
            self._pending, self._pending_day = [0, 0.0, 0, 0.0], day
            self._unsettled, self._settled = [], []
        return now

    async def _share(self, spent: float = 0.0, priced: int = 0, all_strong: float = 0.0) -> None:
        """Add to today's shared totals (with what earlier failures left) and mirror them."""
        if self.state is None or self._add is None:
            return
        now = self._roll_pending()
        day = self._pending_day
        amounts = [self._pending[0], self._pending[1] + spent, self._pending[2] + priced, self._pending[3] + all_strong]
        batches, self._unsettled = self._unsettled, []
        settled, self._settled = self._settled, []
        # taken out before the await, so that a concurrent request does not send them again; with too
        # many batches unsettled (a Redis that keeps timing out) they wait, unsent, until those settle
        fresh = Batch(next(self._numbers), amounts) if any(amounts) and len(batches) < MAX_UNSETTLED else None
        self._pending = [0, 0.0, 0, 0.0] if fresh is not None else amounts
        sending = [*batches, fresh] if fresh is not None else batches
        key = self.state.key(self.name, time.strftime("%Y-%m-%d", time.gmtime(day)))
        add, redis = self._add, self.state.redis
        args = [now, BUDGET_TTL_S, self._writer, len(settled), *settled, *(value for batch in sending for value in batch.args)]
        call = next(self._calls)
        try:
            if sending or settled:
                values = await self.state.run(f"{self.name}_add", lambda: add(keys=[key], args=args))
            else:
                values = await self.state.run(f"{self.name}_read", lambda: redis.hmget(key, TOTALS))
        except BaseException as error:  # Redis failed, or this task was cancelled while waiting for it
            if isinstance(error, SharedStateUnavailable) and not error.attempted:  # nothing reached Redis
                self._keep_unsettled(day, batches, settled, unsent=fresh)
            else:  # it may have run the script all the same: sent again under the same numbers
                self._keep_unsettled(day, sending, settled)
            if isinstance(error, SharedStateUnavailable):
                return
            raise
        self._settled += [batch.number for batch in sending]
        if utc_day_start(self._clock()) != day:  # the reply came after 00:00 UTC: yesterday's totals
            return
        if call < self._mirrored:  # a later operation's reply came first: these totals are older than local's
            return
        self._mirrored = call
        totals = {name: value for name, value in zip(TOTALS, values, strict=True) if value is not None}
        self.local.load_totals(
            spent_usd=float(totals.get("spent", 0.0)),
            requests=int(totals.get("requests", 0)),
            priced_requests=int(totals.get("priced", 0)),
            all_strong_usd=float(totals.get("all_strong", 0.0)),
            since=float(totals.get("since", now)),
        )

    def _keep_unsettled(self, day: float, batches: list[Batch], settled: list[int], unsent: Batch | None = None) -> None:
        """After a failure: keep ``batches`` to send again under their numbers, ``settled`` to unmark
        and the ``unsent`` batch's amounts to send later, unless ``day`` is over (they no longer count)."""
        if day != self._pending_day or utc_day_start(self._clock()) != day:
            return
        self._settled = settled + self._settled
        self._unsettled = sorted([*batches, *self._unsettled], key=lambda batch: batch.number)
        if unsent is not None:
            self._pending = [mine + theirs for mine, theirs in zip(self._pending, unsent.amounts, strict=True)]


@dataclass(frozen=True)
class Batch:
    """Budget amounts sent to Redis under one number: added there at most once."""

    number: int
    amounts: list[Any]

    @property
    def args(self) -> list[Any]:
        return [self.number, *self.amounts]


class SharedTargets:
    """Every target route of all replicas (through ``state``) or of this process (without it)."""

    def __init__(
        self,
        local: Targets,
        state: SharedState | None = None,
        budget: SharedBudget | None = None,
        shared_name: Callable[[str], str | None] = str,
    ) -> None:
        self.local = local
        self.state = state
        self.budget = budget
        #: a router's name in Redis (``scorer_identity``; None until it is loaded): replicas scoring
        #: another pair, or with another checkpoint (a rolling deploy), keep windows of their own
        self.shared_name = shared_name
        self._decide = state.script(DECIDE) if state is not None else None
        self._record = state.script(RECORD) if state is not None else None
        self._seeded: set[tuple[str, float]] = set()
        self._realised: dict[tuple[str, float], float] = {}

    def controller(self, router: str, target: float, client: str = "") -> ShareController:
        """This process's controller of the route (TooManyRoutes when it is new and ``client`` may
        open no more): it bounds the routes this replica serves and stands in while Redis fails."""
        return self.local.controller(router, target, client)

    def _keys(self, router: str, target: float) -> list[str] | None:
        """The route's keys in Redis; None without them (no Redis, or a router not loaded yet, whose
        scores' scale is not known: a forced decision on a route whose router failed to load)."""
        if self.state is None or (name := self.shared_name(router)) is None:
            return None
        route = "{" + f"{name}:{target:g}" + "}"  # one hash slot per route (Redis Cluster)
        return [self.state.key("target", route, part) for part in ("scores", "order", "state", "recent")]

    def effective_target(self, target: float) -> float:
        """``target``, tightened when the daily budget (as last read) cannot pay for it."""
        if self.budget is None:
            return target
        return min(target, self.budget.affordable_share())

    async def decide(self, router: str, target: float) -> TargetDecision:
        """The threshold a score on this route is compared with now (nothing is recorded)."""
        effective = self.effective_target(target)
        controller = self.controller(router, target)
        keys = self._keys(router, target)
        if keys is None or self.state is None or self._decide is None:
            return TargetDecision(target, effective, controller.threshold(effective))
        route = (router, target)
        seeds = [] if route in self._seeded else self.local.seeds(router)
        window, gain = self.local.window, 4.0 / self.local.feedback_horizon
        decide = self._decide

        async def run(seeds: list[float]) -> tuple[str, str, int]:
            args: list[str | int] = [repr(effective), window, repr(gain), ROUTE_TTL_MS, *map(repr, seeds)]
            assert self.state is not None
            return await self.state.run("target_decide", lambda: decide(keys=keys, args=args))

        try:
            kind, value, count = await run(seeds)
            if not seeds and count * 2 < window and (seeds := self.local.seeds(router)) and count * 2 < len(seeds):
                # Redis lost the route without an error (a restart, a failover), and answers in flight may have begun it again
                kind, value, count = await run(seeds)
        except SharedStateUnavailable as unavailable:
            if route in self._seeded:  # Redis decided until now: its decisions leave this replica nothing owed
                controller.forget_debt()
            if not unavailable.busy:  # Redis failed, not only this process's connections were busy
                self._seeded.discard(route)  # Redis may come back empty
            return TargetDecision(target, effective, controller.threshold(effective))
        self._seeded.add(route)
        return TargetDecision(target, effective, _threshold(kind, float(value)))

    async def record(self, router: str, target: float, effective_target: float, strong: bool, score: float | None = None) -> None:
        """Count a decision on this route (scored, sticky or forced) whose request an upstream
        answered; its ``score``, when it was scored, joins the window."""
        self.local.record(router, target, effective_target, strong, score)
        keys = self._keys(router, target)
        if keys is None or self.state is None or self._record is None:
            return
        decay, record = 1.0 - 1.0 / self.local.feedback_horizon, self._record
        scored = "" if score is None else repr(score)
        args: list[Any] = [int(strong), repr(effective_target), repr(decay), self.local.window, ROUTE_TTL_MS, scored]
        try:
            strong_count, count = await self.state.run("target_record", lambda: record(keys=keys, args=args))
        except SharedStateUnavailable:
            self._realised.pop((router, target), None)
            return
        self._realised[(router, target)] = int(strong_count) / int(count)

    def realised_share(self, router: str, target: float) -> float | None:
        """The route's strong share over its window of recent decisions (all replicas' when shared)."""
        shared = self._realised.get((router, target))
        return shared if shared is not None else self.local.realised_share(router, target)


def _threshold(kind: str, value: float) -> float:
    """The threshold the decide script's answer stands for (as ``ShareController.threshold``)."""
    if kind == "empty":  # no scores yet: 1 - the share wanted
        return 1.0 - value
    if kind == "none":  # a 0% route or a spent budget
        return NOTHING_STRONG
    if kind == "all":  # a 100% route
        return EVERYTHING_STRONG
    if kind == "above":  # nothing to send strong: just above the highest score
        return min(1.0, math.nextafter(value, math.inf))
    return value
