"""Sticky conversations seen by every replica: a Redis key per strong conversation, with a TTL.

With more than two models a conversation remembers the upstream it got (its entry name, the
key's value), read back by ``recall`` with one ``GETEX`` that also refreshes the TTL.

``SharedSticky`` is the async face of the sticky memory that the proxy uses. Without Redis it is
the process's ``StickyStore``. With Redis, ``remember`` sets ``<prefix>sticky:<key>`` for
``ttl`` seconds (in a Lua script that never lowers the model it holds, with more than two models)
and ``is_strong`` refreshes it with one ``PEXPIRE`` (which answers whether it
exists: one atomic round trip); the in-process store is kept too, so that a conversation this
process saw stays sticky while Redis is down or after it lost its data. Once Redis answers again,
what this process remembered meanwhile is written to it, and so is a conversation that Redis lost
(found here but not there), so that the other replicas see it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Sequence

from server.conversations import StickyStore, capability_rank
from server.shared_state import SharedState, SharedStateUnavailable

# KEYS[1] the conversation; ARGV[1] the upstream that answered it, ARGV[2] the TTL in ms (a longer
# one already set stays), ARGV[3..]
# the models from least to most capable. A turn answered by a less capable model than the one
# remembered (two turns of one conversation at once) refreshes the TTL and keeps the more capable.
RAISE = """
local function rank(name)
  for index = 3, #ARGV do
    if ARGV[index] == name then return index end
  end
  return 0
end
local ttl = math.max(tonumber(ARGV[2]), redis.call('PTTL', KEYS[1]))  -- never shortened (a write-back's time left)
local current = redis.call('GET', KEYS[1])
if current and rank(current) > rank(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
return ARGV[1]
"""
log = logging.getLogger("routegate.shared_state")
MAX_UNSHARED = 10_000  # conversations remembered while Redis was away, kept to write once it answers
SHARE_BATCH = 256  # of those, written in one round trip


class SharedSticky:
    """Conversations that went strong, shared through ``state`` when given."""

    def __init__(self, local: StickyStore, state: SharedState | None = None) -> None:
        self.local = local
        self.state = state
        self._ttl_ms = max(1, round(local.ttl * 1000))
        self._raise = state.script(RAISE) if state is not None else None
        # conversations Redis has not taken, oldest first, each with its models from least to most capable
        self._unshared: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._sharing: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Conversations this process remembers."""
        return len(self.local)

    async def is_strong(self, key: str | None) -> bool:
        """Whether ``key``'s conversation went strong (on any replica) and has not expired; refreshes it."""
        if key is None:
            return False
        known_here = self.local.is_strong(key)
        if self.state is None:
            return known_here
        redis, name = self.state.redis, self.state.key("sticky", key)
        try:
            known_shared = bool(await self.state.run("sticky_get", lambda: redis.pexpire(name, self._ttl_ms)))
        except SharedStateUnavailable:
            return known_here
        if known_shared and not known_here:
            self.local.remember(key)
        elif known_here and not known_shared:  # remembered while Redis was away, or Redis lost it
            self._keep_unshared([key], ())
        self._share_soon()
        return known_shared or known_here

    async def recall(self, key: str | None, order: Sequence[str] = ()) -> str | None:
        """The upstream ``key``'s conversation was remembered with (on any replica); refreshes it.
        With ``order`` (the models from least to most capable), the more capable of what this
        process and Redis remember (Redis lost the key, or another replica remembered it while
        Redis was down), written back to Redis when it holds less."""
        if key is None:
            return None
        known_here = self.local.recall(key)
        if self.state is None:
            return known_here
        redis, name = self.state.redis, self.state.key("sticky", key)
        try:
            found = await self.state.run("sticky_get", lambda: redis.getex(name, px=self._ttl_ms))
        except SharedStateUnavailable:
            return known_here
        known_shared = None if found is None else str(found)
        remembered: str | None
        if known_here is not None and (
            known_shared is None or capability_rank(known_here, order) > capability_rank(known_shared, order)
        ):
            self._keep_unshared([key], order)  # Redis lost it, or holds a less capable model
            remembered = known_here
        else:
            if known_shared is not None and known_shared != known_here:
                self.local.remember(key, known_shared)
            remembered = known_shared
        self._share_soon()
        return remembered

    async def remember(self, key: str, upstream: str = "1", order: Sequence[str] = ()) -> None:
        """Mark ``key``'s conversation strong (or as sent to ``upstream``) for the next ``ttl``
        seconds, here and in Redis; with ``order`` (the models from least to most capable), one
        remembered with a more capable model keeps it."""
        self.local.remember(key, upstream, order)
        if self.state is None or self._raise is None:
            return
        name, raise_to = self.state.key("sticky", key), self._raise
        args: list[str | int] = [upstream, self._ttl_ms, *order]
        try:
            await self.state.run("sticky_set", lambda: raise_to(keys=[name], args=args))
        except SharedStateUnavailable:
            self._keep_unshared([key], order)
            return
        self._share_soon()

    def _keep_unshared(self, keys: Sequence[str], order: Sequence[str]) -> None:
        """Keep ``keys`` to write to Redis once it answers (the oldest beyond ``MAX_UNSHARED`` are dropped)."""
        for key in keys:
            self._unshared[key] = tuple(order)
            self._unshared.move_to_end(key)
        self._trim()

    def _trim(self) -> None:
        while len(self._unshared) > MAX_UNSHARED:
            self._unshared.popitem(last=False)

    def _share_soon(self) -> None:
        """Redis answered: write what it has not taken, in the background (off the request's path)."""
        if self._unshared and (self._sharing is None or self._sharing.done()):
            self._sharing = asyncio.create_task(self._share())

    async def _share(self) -> None:
        """Write the conversations Redis has not taken, ``SHARE_BATCH`` to a round trip, each with
        the upstream and the time left that this process remembers (expired ones are dropped); what
        Redis does not take goes back for later."""
        assert self.state is not None
        while self._unshared:
            batch = [self._unshared.popitem(last=False) for _ in range(min(SHARE_BATCH, len(self._unshared)))]
            entries = [(key, kept, order) for key, order in batch if (kept := self.local.peek(key)) is not None]
            try:
                if entries:
                    await self.state.run("sticky_set", functools.partial(self._write, entries))
            except SharedStateUnavailable:  # Redis away again: kept for the next time it answers
                self._restore(entries)
                return
            except asyncio.CancelledError:  # the process stops
                self._restore(entries)
                raise
            except Exception:  # a defect here must not fail every later sticky operation
                self._restore(entries)
                log.exception("shared state: writing sticky conversations to Redis failed")
                return

    def _restore(self, entries: list[tuple[str, tuple[str, float], tuple[str, ...]]]) -> None:
        """Put ``entries`` back where they were taken from, the oldest end (a key kept again since keeps its newer place)."""
        for key, _, order in reversed(entries):
            if key not in self._unshared:
                self._unshared[key] = order
                self._unshared.move_to_end(key, last=False)
        self._trim()

    async def aclose(self) -> None:
        """Stop writing to Redis (before its connections close)."""
        if self._sharing is not None:
            self._sharing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sharing

    async def _write(self, entries: list[tuple[str, tuple[str, float], tuple[str, ...]]]) -> None:
        """Raise each conversation in Redis to what this process remembers, in one pipeline."""
        assert self.state is not None and self._raise is not None
        pipe = self.state.redis.pipeline(transaction=False)
        for key, (upstream, seconds_left), order in entries:
            ttl_ms = max(1, round(seconds_left * 1000))
            await self._raise(keys=[self.state.key("sticky", key)], args=[upstream, ttl_ms, *order], client=pipe)
        await pipe.execute()
