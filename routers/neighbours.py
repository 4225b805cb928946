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

**Format failures stay with their format.** A score that records an unparsed answer
(``routers.format_failures``: GPT-4-1106 at 3% on MMLU's high-school mathematics) says how that
file graded answers in its format, not how the model does on such a question asked freely. An
outcome with such a score counts for prompts in the format of its own prompt (at least two
answer options A-D, or not) and is left out of the others' steps and ``p0``: MMLU's questions
keep what the pair did on MMLU, and a free-form math question is not told that GPT-4 loses it.
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
from routers.features import FEATURE_NAMES, Standardizer, feature_matrix
from routers.format_failures import format_failures
from routers.model_names import match_model, normal_form

TABLE = "neighbours.npz"
#: the shipped lookups' settings: similarity sharpness, ridge, structural-feature weight, principal components
TAU, RIDGE, FEATURE_WEIGHT, DIMS = 10.0, 0.05, 3.0, 128
_OPTION_LINES = FEATURE_NAMES.index("option_lines")


def multiple_choice(raw_features: np.ndarray) -> np.ndarray:
    """Which prompts (rows of raw structural features) present answer options (two or more lines "A." to "D.")."""
    return raw_features[:, _OPTION_LINES] >= 2


@dataclass(frozen=True)
class Similarity:
    """How prompts become unit similarity vectors: the embedding on ``basis`` (principal
    components around ``mean``) beside ``feature_weight``-weighted standardised features."""

    mean: np.ndarray
    basis: np.ndarray
    standardize: Standardizer
    feature_weight: float

    @classmethod
    def fit(
        cls, embeddings: np.ndarray, raw_features: np.ndarray, dims: int, feature_weight: float, feature_clip: float | None = None
    ) -> Similarity:
        """The top ``dims`` principal components of ``embeddings``; features standardised on ``raw_features``."""
        mean = embeddings.mean(axis=0)
        _, _, components = np.linalg.svd(embeddings - mean, full_matrices=False)
        standardize = Standardizer.fit(raw_features, feature_clip)
        return cls(mean.astype(np.float32), components[:dims].astype(np.float32), standardize, feature_weight)

    def vectors(self, embeddings: np.ndarray, raw_features: np.ndarray) -> np.ndarray:
        """Unit similarity vectors of prompts with these encoder embeddings and raw structural features."""
        projected = (embeddings - self.mean) @ self.basis.T
        projected /= np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
        features = self.standardize(raw_features) * (self.feature_weight / np.sqrt(len(self.standardize.mean)))
        joined = np.concatenate([projected, features], axis=1)
        return (joined / np.linalg.norm(joined, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class ScoreTable:
    """Rows (``prompts``), the ``models`` (normal form), ``scores`` (rows, models), NaN where
    unscored, and ``failed`` (rows, models): scores that record a format failure."""

    prompts: list[str]
    models: list[str]
    scores: np.ndarray
    failed: np.ndarray


def score_table(
    records_by_file: Mapping[str, list[Record]], failures_by_file: Mapping[str, set[tuple[str, str]]] | None = None
) -> ScoreTable:
    """The table of each file's records. A row is a distinct prompt of one file (case and
    whitespace aside; a model scored on it twice gets the mean): a prompt in several files has a
    row per file, so an outcome never compares scores of different files (a judge's win rate with
    a pass rate). A record scoring one model compares nothing and is left out: merged with a
    comparison of the same prompt (an exported user rating beside a judge's verdict) it would tilt
    that outcome towards whichever model was rated. A cell is ``failed`` when one of its scores is
    a format failure of its file: ``failures_by_file[file]`` when given (judged on all of a file's
    records where these are a sample), else ``routers.format_failures`` of these records."""
    merged: dict[tuple[str, str], tuple[str, dict[str, list[float]], set[str]]] = {}
    for file, records in records_by_file.items():
        failures = failures_by_file[file] if failures_by_file is not None else format_failures(records)
        for record in tqdm(records, desc=f"table {file}", unit="prompt"):
            if len(record["scores"]) < 2:
                continue
            _, scores, failed = merged.setdefault((file, normal_text(record["prompt"])), (record["prompt"], {}, set()))
            category = str(record.get("category"))
            for name, value in record["scores"].items():
                scores.setdefault(normal_form(name), []).append(float(value))
                if (category, name) in failures:
                    failed.add(normal_form(name))
    models = sorted({name for _, scores, _ in merged.values() for name in scores})
    column = {name: position for position, name in enumerate(models)}
    table = np.full((len(merged), len(models)), np.nan, dtype=np.float32)
    failed_cells = np.zeros(table.shape, dtype=bool)
    for row, (_, scores, failed) in enumerate(merged.values()):
        for name, values in scores.items():
            table[row, column[name]] = np.mean(values)
        failed_cells[row, [column[name] for name in failed]] = True
    return ScoreTable([prompt for prompt, _, _ in merged.values()], models, table, failed_cells)


@dataclass(frozen=True)
class NeighbourTable:
    """Training prompts as similarity vectors (``vectors``, one row each) and ``scores``
    (prompts, ``models``), NaN where a model was not scored; ``failed`` marks format failures
    and ``multiple_choice`` the prompts that present answer options."""

    similarity: Similarity
    vectors: np.ndarray
    models: list[str]
    scores: np.ndarray
    failed: np.ndarray
    multiple_choice: np.ndarray

    @classmethod
    def build(
        cls,
        records_by_file: Mapping[str, list[Record]],
        dims: int,
        feature_weight: float,
        device: str,
        failures_by_file: Mapping[str, set[tuple[str, str]]] | None = None,
        feature_clip: float | None = None,
    ) -> NeighbourTable:
        """The table of each file's records (``score_table``)."""
        table = score_table(records_by_file, failures_by_file)
        embeddings, raw_features = cached_encode(table.prompts, device), feature_matrix(table.prompts)
        similarity = Similarity.fit(embeddings, raw_features, dims, feature_weight, feature_clip)
        vectors = similarity.vectors(embeddings, raw_features)
        return cls(similarity, vectors, table.models, table.scores, table.failed, multiple_choice(raw_features))

    def save(self, directory: Path) -> None:
        """Write ``neighbours.npz`` (int8 vector rows with a scale each: small enough to commit)."""
        scale = np.abs(self.vectors).max(axis=1) / 127.0
        np.savez_compressed(
            directory / TABLE,
            vectors=np.round(self.vectors / scale[:, None]).astype(np.int8),
            vector_scale=scale.astype(np.float32),
            embedding_mean=self.similarity.mean,
            embedding_basis=self.similarity.basis,
            **self.similarity.standardize.arrays(),
            feature_weight=np.float32(self.similarity.feature_weight),
            models=np.asarray(self.models),
            scores=self.scores.astype(np.float16),
            failed_cells=np.argwhere(self.failed).astype(np.int32),
            multiple_choice=np.packbits(self.multiple_choice),
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
                Standardizer.from_arrays(saved),
                float(saved["feature_weight"]),
            )
            vectors = saved["vectors"].astype(np.float32) * saved["vector_scale"][:, None]
            scores = saved["scores"].astype(np.float32)
            failed = np.zeros(scores.shape, dtype=bool)
            options_shown = np.zeros(len(vectors), dtype=bool)
            if "failed_cells" in saved:  # a table of an earlier release marks none: every outcome counts everywhere
                rows, columns = saved["failed_cells"].T
                failed[rows, columns] = True
                options_shown = np.unpackbits(saved["multiple_choice"], count=len(vectors)).astype(bool)
            return cls(similarity, vectors, saved["models"].tolist(), scores, failed, options_shown)

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
        failed = self.failed[both, strong] | self.failed[both, weak]
        return PairNeighbours(
            self.similarity, self.vectors[both], outcome, tau, ridge, np.flatnonzero(failed), self.multiple_choice[both][failed]
        )


class PairNeighbours:
    """One pair's margin on a prompt from its outcomes on the nearest training prompts (module
    docstring). The outcomes at ``failed_rows`` count only for prompts whose format (answer
    options or none) is ``failed_format``'s, in the steps and in the overall rate ``p0``."""

    def __init__(
        self,
        similarity: Similarity,
        vectors: np.ndarray,
        outcome: np.ndarray,
        tau: float,
        ridge: float,
        failed_rows: np.ndarray,
        failed_format: np.ndarray,
    ) -> None:
        self._similarity = similarity
        self._vectors = vectors
        self._outcome = outcome.astype(np.float32)
        self._tau = tau
        self._ridge = ridge
        self._failed_rows = failed_rows
        self._failed_format = failed_format
        # p0 for free-form prompts (index 0) and for prompts with answer options (index 1)
        self._base = np.array([self._rate(options) for options in (False, True)])

    def _rate(self, options: bool) -> float:
        """The pair's mean outcome over the rows that count for prompts with (or without) answer options."""
        counted = np.ones(len(self._outcome), dtype=bool)
        counted[self._failed_rows] = self._failed_format == options
        outcomes = self._outcome[counted] if counted.any() else self._outcome
        return float(np.clip(outcomes.mean(dtype=np.float64), 1e-3, 1.0 - 1e-3))

    def margins(self, embeddings: np.ndarray, raw_features: np.ndarray) -> np.ndarray:
        """The strong model's logit of beating the weak one, per prompt (its embedding and raw structural features)."""
        base = self._base[multiple_choice(raw_features).astype(int)]
        return np.log(base / (1.0 - base)) + self.steps(embeddings, raw_features)

    def steps(self, embeddings: np.ndarray, raw_features: np.ndarray) -> np.ndarray:
        """How far each prompt's margin moves from the pair's overall logit ``logit(p0)``."""
        options = multiple_choice(raw_features)
        similarity = self._similarity.vectors(embeddings, raw_features) @ self._vectors.T
        if len(self._failed_rows):
            other_format = options[:, None] != self._failed_format[None, :]
            similarity[:, self._failed_rows] = np.where(other_format, -np.inf, similarity[:, self._failed_rows])
        nearest = similarity.max(axis=1, keepdims=True)
        weights = np.exp(self._tau * (similarity - np.where(np.isfinite(nearest), nearest, 0.0)))
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)  # none left: no step
        base = self._base[options.astype(int)]
        return (weights @ self._outcome - base * weights.sum(axis=1)) / (base * (1.0 - base) + self._ridge)
