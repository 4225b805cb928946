"""Matrix-factorisation router (RouteLLM's MF on a MiniLM text projection).

A prompt's MiniLM embedding and standardised structural features (length, digits, options...)
go through a small MLP to a latent vector z; model m's quality on the prompt is
``delta_m = w . (v_m * z) + c_m``, and the strong model's win probability is
``sigmoid(delta_strong - delta_weak + n * neighbour_step)``, where the neighbour step is how far
the pair's outcomes on the most similar training prompts lie from its overall rate, in logits
(``routers/neighbours.py``, weight ``n``). Inference is plain numpy on the shared encoder's output. The trainer is
``routers/mf/training.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import Router, model_columns, win_probabilities
from routers.checkpoint import CheckpointError, model_indices, read_manifest
from routers.embedding import EMBEDDING_DIM, encode
from routers.features import FEATURE_NAMES, Standardizer, feature_matrix
from routers.neighbours import NeighbourTable
from routers.registry import RouterOptions

WEIGHTS = "weights.npz"


def prompt_inputs(embeddings: np.ndarray, structural: np.ndarray) -> np.ndarray:
    """The projection's input: the embedding beside the standardised structural features."""
    return np.concatenate([embeddings, structural], axis=1).astype(np.float32)


def _check_shapes(directory: Path, weights: Any, models: int) -> None:
    """CheckpointError unless the weights take this encoder's inputs and hold one vector per
    model of the manifest (a manifest and weights from two different runs would mis-score)."""
    expected = {"w1": EMBEDDING_DIM + len(FEATURE_NAMES), "model_vectors": models, "model_bias": models}
    found = {name: weights[name].shape[0] if name in weights else None for name in expected}
    if found != expected:
        raise CheckpointError(f"{directory}: weights do not fit router.json (rows {found}, expected {expected}); retrain it")


class MFRouter(Router):
    """Scores prompts with a trained matrix-factorisation model for one strong/weak pair."""

    name = "mf"

    def __init__(self, directory: Path, device: str, strong_model: str, weak_model: str, stand_in: bool = False) -> None:
        manifest = read_manifest(directory, self.name)
        self.models: list[str] = manifest["models"]
        strong, weak = model_indices(self.models, strong_model, weak_model, directory)
        with np.load(directory / WEIGHTS) as weights:
            _check_shapes(directory, weights, len(self.models))
            self._w1, self._b1 = weights["w1"], weights["b1"]
            self._w2, self._b2 = weights["w2"], weights["b2"]
            self._standardize = Standardizer.from_arrays(weights)
            self._model_vectors = weights["classifier"] * weights["model_vectors"]  # (models, dim)
            self._model_bias = weights["model_bias"]
        # a pair needs only the difference of its two models: one vector
        self._direction = self._model_vectors[strong] - self._model_vectors[weak]
        self._bias = float(self._model_bias[strong] - self._model_bias[weak])
        lookup = None if stand_in else manifest.get("neighbours")  # a stand-in pair's outcomes are not the routed models
        self._neighbour_weight = float(lookup["weight"]) if lookup else 0.0
        self._neighbours = (
            NeighbourTable.load(directory).pair(self.models[strong], self.models[weak], lookup["tau"], lookup["ridge"])
            if lookup
            else None
        )  # None also for a pair never scored together in training: the latent model alone
        self._device = device

    @classmethod
    def from_options(cls, options: RouterOptions) -> MFRouter:
        """Registry factory: load ``<checkpoint_dir>/mf``."""
        return cls(
            Path(options.checkpoint_dir) / cls.name, options.device, options.strong_model, options.weak_model, options.stand_in
        )

    def latent(self, embeddings: np.ndarray, raw_features: np.ndarray) -> np.ndarray:
        """The latent vectors z, (prompts, dim), of prompts with these encoder embeddings and raw structural features."""
        inputs = prompt_inputs(embeddings, self._standardize(raw_features))
        hidden = inputs @ self._w1 + self._b1
        hidden = 0.5 * hidden * (1.0 + np.tanh(0.7978845608 * (hidden + 0.044715 * hidden**3)))  # GELU (tanh)
        return hidden @ self._w2 + self._b2

    def score(self, prompts: Sequence[str]) -> list[float]:
        embeddings, raw_features = encode(prompts, self._device), feature_matrix(prompts)
        margins = self.latent(embeddings, raw_features) @ self._direction + self._bias
        if self._neighbours is not None:
            margins += self._neighbour_weight * self._neighbours.steps(embeddings, raw_features)
        return win_probabilities(margins)

    def qualities(self, prompts: Sequence[str]) -> np.ndarray:
        """Every known model's quality delta_m on each prompt, (prompts, models) in ``self.models``
        order; ``sigmoid(delta_a - delta_b)`` is the probability that a beats b (the latent model
        alone: the neighbour step belongs to the scored pair)."""
        latent = self.latent(encode(prompts, self._device), feature_matrix(prompts))
        return latent @ self._model_vectors.T + self._model_bias

    def model_logits(self, prompts: Sequence[str], models: Sequence[str]) -> np.ndarray:
        """The quality deltas of ``models`` (names in ``self.models``), (prompts, len(models))."""
        return self.qualities(prompts)[:, model_columns(models, self.models, self.name)]
