"""Neighbourhood quality: each model's mean score on the training prompts most similar to a prompt."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Neighbourhood:
    """k nearest training prompts by embedding cosine; per model, the mean of their scores.

    ``scores`` is (prompts, models) with NaN where a model was not scored; a model with no scored
    neighbour gets its mean over all training prompts.
    """

    def __init__(self, vectors: np.ndarray, scores: np.ndarray, k: int) -> None:
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.scores = np.asarray(scores, dtype=np.float32)
        self.k = min(k, len(self.vectors) - 1)
        self._fallback = np.nanmean(self.scores, axis=0)

    def features(self, queries: np.ndarray, groups: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
        """(queries, models) neighbourhood means.

        ``groups`` (one id per training prompt, from ``text_groups``) is given when ``queries`` are
        the training vectors themselves: a prompt's neighbourhood then leaves out every training
        prompt with the same text, itself and its repeats, so no prompt sees its own scores.
        """
        out = np.empty((len(queries), self.scores.shape[1]), dtype=np.float32)
        for start in range(0, len(queries), chunk):
            similarity = queries[start : start + chunk] @ self.vectors.T
            if groups is not None:
                similarity[groups[start : start + chunk, None] == groups[None, :]] = -np.inf
            nearest = np.argpartition(-similarity, self.k - 1, axis=1)[:, : self.k]
            neighbour_scores = self.scores[nearest]
            counts = np.sum(~np.isnan(neighbour_scores), axis=1)
            sums = np.nansum(neighbour_scores, axis=1)
            out[start : start + chunk] = np.where(counts > 0, sums / np.maximum(counts, 1), self._fallback)
        return out


def normal_text(prompt: str) -> str:
    """A prompt's text up to case and whitespace."""
    return " ".join(prompt.lower().split())


def text_groups(prompts: Sequence[str]) -> np.ndarray:
    """One integer per prompt, equal for prompts whose text is the same up to case and whitespace."""
    ids: dict[str, int] = {}
    return np.asarray([ids.setdefault(normal_text(prompt), len(ids)) for prompt in prompts], dtype=np.int64)


def quantise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and their float32 scales (vectors ~= rows * scale)."""
    scale = np.abs(vectors).max(axis=1) / 127.0 + 1e-12
    return np.round(vectors / scale[:, None]).astype(np.int8), scale.astype(np.float32)
