"""Router scores shared by every replica (``ROUTEGATE_SHARED_SCORE_CACHE``, with Redis): a prompt
scored on one replica is not scored again on another.

A score is kept under ``<prefix>score:<scorer>:<sha256 of the routed text>`` (with client keys, of
the key's fingerprint and the text: clients never share a score; the text itself is not stored)
for ``SCORE_TTL_S``; Redis's eviction policy bounds how many are kept. ``<scorer>``
(``scorer_identity``) names the router with a digest of the pair it scores and of its checkpoint's
files, so that gateways routing other pairs, or a rolling deploy of a retrained checkpoint, never
read each other's scores from a shared Redis. The in-process LRU cache is asked first; a failing
Redis means the router scores the text.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from server.shared_state import SharedState, SharedStateUnavailable

SCORE_TTL_S = 3_600  # as a sticky conversation's default idle time: under volatile-ttl a day-long cache outlived them all


def scorer_identity(router: str, pair: tuple[str, ...], checkpoint: Path) -> str:
    """``<router>-<digest>``: the digest covers the scored ``pair`` (names and why) and every file
    of the router's ``checkpoint`` folder."""
    digest = hashlib.sha256("\0".join(pair).encode())
    files = sorted(path for path in checkpoint.rglob("*") if path.is_file()) if checkpoint.is_dir() else []
    for path in files:
        digest.update(path.relative_to(checkpoint).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{router}-{digest.hexdigest()[:16]}"


class SharedScores:
    """Scores by scorer (``scorer_identity``) and routed text, in Redis."""

    def __init__(self, state: SharedState) -> None:
        self.state = state

    def _key(self, scorer: str, text: str) -> str:
        return self.state.key("score", scorer, hashlib.sha256(text.encode()).hexdigest())

    async def get(self, scorer: str, text: str) -> float | None:
        """The score another replica (or this one) gave ``text``, if kept."""
        redis, key = self.state.redis, self._key(scorer, text)
        try:
            value = await self.state.run("score_get", lambda: redis.get(key))
        except SharedStateUnavailable:
            return None
        return None if value is None else float(value)

    async def put(self, scorer: str, text: str, score: float) -> None:
        """Keep ``score`` for ``text`` for every replica."""
        redis, key = self.state.redis, self._key(scorer, text)
        try:
            await self.state.run("score_put", lambda: redis.set(key, repr(score), ex=SCORE_TTL_S))
        except SharedStateUnavailable:
            pass
