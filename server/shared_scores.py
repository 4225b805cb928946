"""Router scores shared by every replica (``ROUTEGATE_SHARED_SCORE_CACHE``, with Redis): a prompt
scored on one replica is not scored again on another.

A score is kept under ``<prefix>score:<router>:<sha256 of the routed text>`` (the text itself is
not stored) for ``SCORE_TTL_S``; Redis's eviction policy bounds how many are kept. The
in-process LRU cache is asked first; a failing Redis means the router scores the text.
"""

from __future__ import annotations

import hashlib

from server.shared_state import SharedState, SharedStateUnavailable

SCORE_TTL_S = 86_400


class SharedScores:
    """Scores by router and routed text, in Redis."""

    def __init__(self, state: SharedState) -> None:
        self.state = state

    def _key(self, router: str, text: str) -> str:
        return self.state.key("score", router, hashlib.sha256(text.encode()).hexdigest())

    async def get(self, router: str, text: str) -> float | None:
        """The score another replica (or this one) gave ``text``, if kept."""
        redis, key = self.state.redis, self._key(router, text)
        try:
            value = await self.state.run("score_get", lambda: redis.get(key))
        except SharedStateUnavailable:
            return None
        return None if value is None else float(value)

    async def put(self, router: str, text: str, score: float) -> None:
        """Keep ``score`` for ``text`` for every replica."""
        redis, key = self.state.redis, self._key(router, text)
        try:
            await self.state.run("score_put", lambda: redis.set(key, repr(score), ex=SCORE_TTL_S))
        except SharedStateUnavailable:
            pass
