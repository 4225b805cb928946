"""The router contract every routing model implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class Router(ABC):
    """Scores prompts: the probability that the strong model's answer beats the weak model's.

    A score of 1.0 means the prompt needs the strong model; the gateway routes to the strong
    tier when ``score >= threshold``. Routers that predict a quality per model also implement
    ``model_logits``, which routing among more than two models needs (routers/multi_model.py).
    """

    name: str = "router"
    #: False for routers so cheap that scoring on the event loop beats handing it to a thread.
    blocking: bool = True
    #: False for routers whose score for the same text may change (the random baseline).
    cacheable: bool = True

    @abstractmethod
    def score(self, prompts: Sequence[str]) -> list[float]:
        """Return one win probability in [0, 1] per prompt, in order."""

    def model_logits(self, prompts: Sequence[str], models: Sequence[str]) -> np.ndarray | None:
        """Each of ``models``' (the router's names for them) quality logit per prompt, (prompts,
        len(models)), with P(a beats b) = sigmoid(logit_a - logit_b); None: the router only
        scores its strong/weak pair. ValueError for a model the router does not know."""
        return None


def win_probabilities(margins: np.ndarray) -> list[float]:
    """sigmoid(margin) per prompt, in float64 with the margin clipped to +-30: strictly inside
    (0, 1) however far a margin runs, so that thresholds and cost shares stay meaningful."""
    return (1.0 / (1.0 + np.exp(-np.clip(np.asarray(margins, dtype=np.float64), -30.0, 30.0)))).tolist()


def model_columns(models: Sequence[str], known: Sequence[str], router: str) -> list[int]:
    """Where each of ``models`` is among a router's ``known`` models; ValueError naming the unknown."""
    unknown = [model for model in models if model not in known]
    if unknown:
        raise ValueError(f"the {router} router does not know {unknown}; it knows {list(known)}")
    return [list(known).index(model) for model in models]
