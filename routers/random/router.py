"""The baseline: a uniformly random score, independent of the prompt."""

from __future__ import annotations

import random
from collections.abc import Sequence

from routers.base import Router


class RandomRouter(Router):
    """Scores every prompt with a fresh uniform draw from [0, 1)."""

    name = "random"
    blocking = False
    cacheable = False

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    @classmethod
    def from_options(cls, options: object) -> RandomRouter:
        """Registry factory: the random router needs nothing from the options."""
        return cls()

    def score(self, prompts: Sequence[str]) -> list[float]:
        return [self._rng.random() for _ in prompts]
