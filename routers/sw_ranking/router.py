"""Similarity-weighted Bradley-Terry router (RouteLLM's SW ranking), vectorised.

RouteLLM re-fits a weighted logistic regression over every training battle for each request.
Here the Bradley-Terry ratings are fitted once on all battles (``ratings``); for a batch of
prompts, each training prompt gets the weight ``exp(tau * (sim - max_sim))`` and one Newton
step from the global ratings, with a ridge ``ridge`` toward them, gives each prompt's own ratings:

    (sum_i w_i H_i + ridge * I) delta = sum_i w_i g_i

where g_i / H_i are the gradient / negative Hessian of prompt i's battles' log-likelihood at the
global ratings (precomputed at load). Everything is two matrix products and a small batched solve.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from routers.base import Router
from routers.checkpoint import model_indices, read_manifest
from routers.embedding import encode
from routers.features import Standardizer, feature_matrix
from routers.registry import RouterOptions

WEIGHTS = "battles.npz"


def similarity_vectors(embeddings: np.ndarray, features: np.ndarray, feature_weight: float) -> np.ndarray:
    """Unit vectors of [embedding, feature_weight * standardised features / sqrt(#features)]; the embedding alone at weight 0."""
    if feature_weight == 0:
        return np.asarray(embeddings, dtype=np.float32)
    scaled = features * (feature_weight / np.sqrt(features.shape[1]))
    joined = np.concatenate([embeddings, scaled], axis=1)
    return (joined / np.linalg.norm(joined, axis=1, keepdims=True)).astype(np.float32)


def battle_statistics(
    ratings: np.ndarray,
    prompt: np.ndarray,
    model_a: np.ndarray,
    model_b: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    prompts: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per training prompt: gradient (prompts, M) and negative Hessian (prompts, M*M) of its battles' log-likelihood."""
    models = len(ratings)
    probability = 1.0 / (1.0 + np.exp(-(ratings[model_a] - ratings[model_b])))
    residual = weight * (target - probability)
    curvature = weight * probability * (1.0 - probability)
    gradient = np.zeros((prompts, models), dtype=np.float64)
    np.add.at(gradient, (prompt, model_a), residual)
    np.add.at(gradient, (prompt, model_b), -residual)
    hessian = np.zeros((prompts, models * models), dtype=np.float64)
    np.add.at(hessian, (prompt, model_a * models + model_a), curvature)
    np.add.at(hessian, (prompt, model_b * models + model_b), curvature)
    np.add.at(hessian, (prompt, model_a * models + model_b), -curvature)
    np.add.at(hessian, (prompt, model_b * models + model_a), -curvature)
    return gradient.astype(np.float32), hessian.astype(np.float32)


class SWRankingRouter(Router):
    """Scores prompts by the Bradley-Terry ratings of the strong and weak model near each prompt."""

    name = "sw_ranking"

    def __init__(self, directory: Path, device: str, strong_model: str, weak_model: str) -> None:
        manifest = read_manifest(directory, self.name)
        self.models: list[str] = manifest["models"]
        self._strong, self._weak = model_indices(self.models, strong_model, weak_model, directory)
        self._tau = float(manifest["tau"])
        self._ridge = float(manifest["ridge"])
        self._feature_weight = float(manifest["feature_weight"])
        with np.load(directory / WEIGHTS) as saved:
            self._vectors = saved["vectors"].astype(np.float32) * saved["vector_scale"][:, None]
            self._standardize = Standardizer(saved["feature_mean"], saved["feature_std"])
            self._ratings = saved["ratings"].astype(np.float64)
            self._gradient, self._hessian = battle_statistics(
                self._ratings,
                saved["prompt"],
                saved["model_a"],
                saved["model_b"],
                saved["target"].astype(np.float64),
                saved["weight"].astype(np.float64),
                len(self._vectors),
            )
        self._device = device

    @classmethod
    def from_options(cls, options: RouterOptions) -> SWRankingRouter:
        """Registry factory: load ``<checkpoint_dir>/sw_ranking``."""
        return cls(Path(options.checkpoint_dir) / cls.name, options.device, options.strong_model, options.weak_model)

    def score(self, prompts: Sequence[str]) -> list[float]:
        queries = similarity_vectors(
            encode(prompts, self._device), self._standardize(feature_matrix(prompts)), self._feature_weight
        )
        similarity = queries @ self._vectors.T
        weights = np.exp(self._tau * (similarity - similarity.max(axis=1, keepdims=True)))
        weights /= weights.sum(axis=1, keepdims=True)
        models = len(self.models)
        gradient = (weights @ self._gradient).astype(np.float64)
        hessian = (weights @ self._hessian).reshape(len(prompts), models, models).astype(np.float64)
        hessian += self._ridge * np.eye(models)
        step = np.linalg.solve(hessian, gradient[:, :, None])[:, :, 0]
        ratings = self._ratings[None, :] + step
        margin = ratings[:, self._strong] - ratings[:, self._weak]
        return (1.0 / (1.0 + np.exp(-margin))).tolist()
