"""A deterministic stand-in router that predicts a quality per model, for tests of routing among
several models: a prompt states each model's logit as ``<model>=<number>`` (absent: 0), so a test
can compute what the policy must choose, and ``wait=<seconds>`` makes its scoring take that long
(on the scoring threads), for tests of scoring overload.

``python -m tests.standin_multi_router serve ...`` runs ``routegate`` with it registered as
``standin_multi`` and again as ``standin_multi_b`` (a second router, with a checkpoint of its
own), beside the pair-only ``standin`` of ``tests/standin_router.py``.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Sequence

import numpy as np

from routers import registry
from routers.base import Router
from routers.registry import RouterOptions
from tests.standin_router import NAME as PAIR_NAME

NAME = "standin_multi"


def stated_logit(prompt: str, model: str) -> float:
    """The logit ``prompt`` states for ``model`` (``<model>=<number>``), 0 when it states none."""
    found = re.search(rf"(?<![\w.-]){re.escape(model)}=(-?\d+(?:\.\d+)?)", prompt)
    return float(found[1]) if found else 0.0


class StatedLogitsRouter(Router):
    """Reads each model's logit from the prompt; its pair score is sigmoid(strong - weak)."""

    name = NAME
    blocking = True

    def __init__(self, strong_model: str, weak_model: str) -> None:
        self.pair = (strong_model, weak_model)

    @classmethod
    def from_options(cls, options: RouterOptions) -> StatedLogitsRouter:
        return cls(options.strong_model, options.weak_model)

    def score(self, prompts: Sequence[str]) -> list[float]:
        strong, weak = self.pair
        return [1.0 / (1.0 + math.exp(stated_logit(p, weak) - stated_logit(p, strong))) for p in prompts]

    def model_logits(self, prompts: Sequence[str], models: Sequence[str]) -> np.ndarray:
        time.sleep(max(stated_logit(prompt, "wait") for prompt in prompts))
        return np.array([[stated_logit(prompt, model) for model in models] for prompt in prompts]).reshape(-1, len(models))


if __name__ == "__main__":
    registry.register(NAME, "tests.standin_multi_router:StatedLogitsRouter.from_options", multi_model=True)
    registry.register(f"{NAME}_b", "tests.standin_multi_router:StatedLogitsRouter.from_options", multi_model=True)
    registry.register(PAIR_NAME, "tests.standin_router:MathinessRouter.from_options")
    from server.cli import main

    sys.exit(main())
