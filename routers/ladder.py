"""Per-model logits of the shipped routers that predict a quality per model (``mf``'s deltas,
``lookahead``'s routing logits), behind ``Router.model_logits``; the evaluation's
``router_predictions`` reads the same columns. Routers outside this package override
``Router.model_logits`` instead."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from routers.base import Router


def _columns(models: Sequence[str], known: Sequence[str], router: str) -> list[int]:
    unknown = [model for model in models if model not in known]
    if unknown:
        raise ValueError(f"the {router} router does not know {unknown}; it knows {list(known)}")
    return [list(known).index(model) for model in models]


def builtin_model_logits(router: Router, prompts: Sequence[str], models: Sequence[str]) -> np.ndarray | None:
    """``router``'s (prompts, len(models)) logits when it is ``mf`` or ``lookahead``; None otherwise."""
    if router.name == "mf":
        known: list[str] = router.models  # type: ignore[attr-defined]
        return np.asarray(router.qualities(prompts))[:, _columns(models, known, "mf")]  # type: ignore[attr-defined]
    if router.name == "lookahead":
        candidates: list[str] = router.candidates  # type: ignore[attr-defined]
        return np.asarray(router.logits(prompts, _columns(models, candidates, "lookahead")))  # type: ignore[attr-defined]
    return None
