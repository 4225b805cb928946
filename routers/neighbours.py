"""Similarity-weighted outcomes of a model pair on the training prompts nearest a prompt.

A ``NeighbourTable`` holds every training prompt's similarity vector and each model's score on
it (NaN where a model was not scored). For the pair (strong, weak), the training prompts on
which both were scored carry the soft outcome ``t = (1 + s_strong - s_weak) / 2``, with mean
``p0``. A prompt's margin is one Newton step of the two-model Bradley-Terry likelihood from
``logit(p0)`` over those outcomes, weighted by ``exp(tau * (sim - max_sim))`` (normalised), with
a ridge toward ``logit(p0)`` (RouteLLM's SW ranking, for two models):

    margin = logit(p0) + sum_i w_i (t_i - p0) / (p0 (1 - p0) + ridge)

``sim`` is the cosine similarity of [the embedding on the training prompts' principal
components, weighted standardised structural features]. The weights are relative to the nearest
prompt, so they do not shrink with distance: far from the pair's training prompts the step is
an average of whatever is nearest, small when that is many unrelated outcomes, but not always.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from routers.checkpoint import CheckpointError
from routers.data import Record, normal_text
from routers.embedding import cached_encode
from routers.features import Standardizer, feature_matrix
from routers.model_names import match_model, normal_form

TABLE = "neighbours.npz"
#: the shipped lookups' settings: similarity sharpness, ridge, structural-feature weight, principal components
TAU, RIDGE, FEATURE_WEIGHT, DIMS = 10.0, 0.05, 3.0, 128


@dataclass(frozen=True)
class Similarity:
    """How prompts become unit similarity vectors: the embedding on ``basis`` (principal
    components around ``mean``) beside ``feature_weight``-weighted standardised features."""

    mean: np.ndarray
    basis: np.ndarray
    standardize: Standardizer
    feature_weight: float

    @classmethod
    def fit(cls, embeddings: np.ndarray, raw_features: np.ndarray, dims: int, feature_weight: float) -> Similarity:
        """The top ``dims`` principal components of ``embeddings``; features standardised on ``raw_features``."""
        mean = embeddings.mean(axis=0)
        _, _, components = np.linalg.svd(embeddings - mean, full_matrices=False)
        return cls(mean.astype(np.float32), components[:dims].astype(np.float32), Standardizer.fit(raw_features), feature_weight)

    def vectors(self, embeddings: np.ndarray, raw_features: np.ndarray) -> np.ndarray:
        """Unit similarity vectors of prompts with these encoder embeddings and raw structural features."""
        projected = (embeddings - self.mean) @ self.basis.T
        projected /= np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
        features = self.standardize(raw_features) * (self.feature_weight / np.sqrt(len(self.standardize.mean)))
        joined = np.concatenate([projected, features], axis=1)
        return (joined / np.linalg.norm(joined, axis=1, keepdims=True)).astype(np.float32)


def score_table(records_by_file: Mapping[str, list[Record]]) -> tuple[list[str], list[str], np.ndarray]:
    """Rows, the models (normal form) and a (rows, models) table of scores, NaN where unscored. A row
    is a distinct prompt of one file (case and whitespace aside; a model scored on it twice gets the
    mean): a prompt in several files has a row per file, so an outcome never compares scores of
    different files (a judge's win rate with a pass rate). A record scoring one model compares
    nothing and is left out: merged with a comparison of the same prompt (an exported user rating
    beside a judge's verdict) it would tilt that outcome towards whichever model was rated."""
    merged: dict[tuple[str, str], tuple[str, dict[str, list[float]]]] = {}
    for file, records in records_by_file.items():
        for record in tqdm(records, desc=f"table {file}", unit="prompt"):
            if len(record["scores"]) < 2:
                continue
            _, scores = merged.setdefault((file, normal_text(record["prompt"])), (record["prompt"], {}))
            for name, value in record["scores"].items():
                scores.setdefault(normal_form(name), []).append(float(value))
    models = sorted({name for _, scores in merged.values() for name in scores})
    column = {name: position for position, name in enumerate(models)}
    table = np.full((len(merged), len(models)), np.nan, dtype=np.float32)
    for row, (_, scores) in enumerate(merged.values()):
        for name, values in scores.items():
            table[row, column[name]] = np.mean(values)
    return [prompt for prompt, _ in merged.values()], models, table


@dataclass(frozen=True)
class NeighbourTable:
    """Training prompts as similarity vectors (``vectors``, one row each) and ``scores``
    (prompts, ``models``), NaN where a model was not scored."""

    similarity: Similarity
    vectors: np.ndarray
    models: list[str]
    scores: np.ndarray

    @classmethod
    def build(cls, records_by_file: Mapping[str, list[Record]], dims: int, feature_weight: float, device: str) -> NeighbourTable:
        """The table of each file's records (``score_table``)."""
        prompts, models, scores = score_table(records_by_file)
        embeddings, raw_features = cached_encode(prompts, device), feature_matrix(prompts)
        similarity = Similarity.fit(embeddings, raw_features, dims, feature_weight)
        return cls(similarity, similarity.vectors(embeddings, raw_features), models, scores)

    def save(self, directory: Path) -> None:
        """Write ``neighbours.npz`` (int8 vector rows with a scale each: small enough to commit)."""
        scale = np.abs(self.vectors).max(axis=1) / 127.0
        np.savez_compressed(
            directory / TABLE,
            vectors=np.round(self.vectors / scale[:, None]).astype(np.int8),
            vector_scale=scale.astype(np.float32),
            embedding_mean=self.similarity.mean,
            embedding_basis=self.similarity.basis,
            feature_mean=self.similarity.standardize.mean,
            feature_std=self.similarity.standardize.std,
            feature_weight=np.float32(self.similarity.feature_weight),
            models=np.asarray(self.models),
            scores=self.scores.astype(np.float16),
        )

    @classmethod
    def load(cls, directory: Path) -> NeighbourTable:
        """The table saved in ``directory``; CheckpointError when there is none."""
        if not (directory / TABLE).is_file():
            raise CheckpointError(f"{directory} has no {TABLE} (a checkpoint of an earlier release?): retrain it")
        with np.load(directory / TABLE) as saved:
            similarity = Similarity(
                saved["embedding_mean"],
                saved["embedding_basis"],
                Standardizer(saved["feature_mean"], saved["feature_std"]),
                float(saved["feature_weight"]),
            )
            vectors = saved["vectors"].astype(np.float32) * saved["vector_scale"][:, None]
            return cls(similarity, vectors, saved["models"].tolist(), saved["scores"].astype(np.float32))

    def pair(self, strong_model: str, weak_model: str, tau: float, ridge: float) -> PairNeighbours | None:
        """The lookup for two of ``models`` (matched by ``routers.model_names.match_model``); None
        when either is unknown or no training prompt scored both."""
        strong_known, weak_known = match_model(strong_model, self.models), match_model(weak_model, self.models)
        if strong_known is None or weak_known is None:
            return None
        strong, weak = self.models.index(strong_known), self.models.index(weak_known)
        both = ~np.isnan(self.scores[:, strong]) & ~np.isnan(self.scores[:, weak])
        if not both.any():
            return None
        outcome = (1.0 + self.scores[both, strong] - self.scores[both, weak]) / 2.0
        return PairNeighbours(self.similarity, self.vectors[both], outcome, tau, ridge)


class PairNeighbours:
    """One pair's margin on a prompt from its outcomes on the nearest training prompts (module docstring)."""

    def __init__(self, similarity: Similarity, vectors: np.ndarray, outcome: np.ndarray, tau: float, ridge: float) -> None:
        self._similarity = similarity
        self._vectors = vectors
        self._base = float(np.clip(outcome.mean(dtype=np.float64), 1e-3, 1.0 - 1e-3))
        self._residual = (outcome - self._base).astype(np.float32)
        self._tau = tau
        self._ridge = ridge

    def margins(self, embeddings: np.ndarray, raw_features: np.ndarray) -> np.ndarray:
        """The strong model's logit of beating the weak one, per prompt (its embedding and raw structural features)."""
        return np.log(self._base / (1.0 - self._base)) + self.steps(embeddings, raw_features)

    def steps(self, embeddings: np.ndarray, raw_features: np.ndarray) -> np.ndarray:
        """How far each prompt's margin moves from the pair's overall logit ``logit(p0)``."""
        similarity = self._similarity.vectors(embeddings, raw_features) @ self._vectors.T
        weights = np.exp(self._tau * (similarity - similarity.max(axis=1, keepdims=True)))
        weights /= weights.sum(axis=1, keepdims=True)
        return (weights @ self._residual) / (self._base * (1.0 - self._base) + self._ridge)
