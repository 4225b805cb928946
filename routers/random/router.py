"""The baseline: a uniformly random score, independent of the prompt."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

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

    def model_logits(self, prompts: Sequence[str], models: Sequence[str]) -> np.ndarray:
        """A fresh standard normal logit per prompt and model: every model equally likely best."""
        return np.array([[self._rng.gauss(0.0, 1.0) for _ in models] for _ in prompts])
