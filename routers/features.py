"""Structural prompt features (length, digits, code, options) that complement the embedding."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FEATURE_NAMES = (
    "log_chars",
    "log_words",
    "log_lines",
    "digit_share",
    "math_symbol_share",
    "upper_share",
    "code_marker",
    "question_marks",
    "option_lines",
    "log_longest_option",
    "log_numbers",
    "log_sentences",
    "money_percent_fraction",
)

_MATH = set("+-*/=^<>()[]{}$\\%")
# spaces and tabs only: "\s" spans newlines, and from every line start of a run of blank lines it
# scanned the whole run (quadratic time; no prompt of the data matches differently)
_OPTION = re.compile(r"^[ \t]*[A-D][.)][ \t]*(.*)$", re.MULTILINE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE = re.compile(r"[.!?](?:\s|$)")
_CODE = re.compile(r"```|\bdef |\breturn\b|;\s*$|\bimport |#include|\bclass ", re.MULTILINE)


def structural_features(prompt: str) -> list[float]:
    """Raw structural features of one prompt, in FEATURE_NAMES order."""
    chars = max(len(prompt), 1)
    options = _OPTION.findall(prompt)
    return [
        math.log1p(len(prompt)),
        math.log1p(len(prompt.split())),
        math.log1p(prompt.count("\n")),
        sum(c.isdigit() for c in prompt) / chars,
        sum(c in _MATH for c in prompt) / chars,
        sum(c.isupper() for c in prompt) / chars,
        1.0 if _CODE.search(prompt) else 0.0,
        float(min(prompt.count("?"), 5)),
        float(len(options)),
        math.log1p(max((len(option) for option in options), default=0)),
        math.log1p(len(_NUMBER.findall(prompt))),
        math.log1p(len(_SENTENCE.findall(prompt))),
        float(sum(prompt.count(mark) for mark in ("$", "%", "/"))),
    ]


def feature_matrix(prompts: Sequence[str]) -> np.ndarray:
    """Raw structural features, one row per prompt (float32)."""
    return np.asarray([structural_features(p) for p in prompts], dtype=np.float32).reshape(len(prompts), len(FEATURE_NAMES))


class Standardizer:
    """Feature-wise (x - mean) / std with statistics fitted on training prompts, limited to
    ``[-clip, clip]`` when ``clip`` is set."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, clip: float | None = None) -> None:
        if clip is not None and not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"a feature clip is a positive number of standard deviations, not {clip}")
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.clip = clip

    @classmethod
    def fit(cls, features: np.ndarray, clip: float | None = None) -> Standardizer:
        """Statistics of ``features``; a feature constant in training keeps its scale (std 1), so a
        prompt that differs from it later is not a million standard deviations out."""
        std = features.std(axis=0)
        return cls(features.mean(axis=0), np.where(std < 1e-3, 1.0, std + 1e-6), clip)

    @classmethod
    def from_arrays(cls, saved: Mapping[str, np.ndarray]) -> Standardizer:
        """The statistics that ``arrays`` saved (a file without ``feature_clip`` sets no limit)."""
        clip = float(saved["feature_clip"]) if "feature_clip" in saved else None
        return cls(saved["feature_mean"], saved["feature_std"], clip)

    def arrays(self) -> dict[str, Any]:
        """The statistics as arrays to save beside a model's weights (``np.savez`` keywords)."""
        limit = {} if self.clip is None else {"feature_clip": np.asarray(self.clip, dtype=np.float32)}
        return {"feature_mean": self.mean, "feature_std": self.std, **limit}

    def __call__(self, features: np.ndarray) -> np.ndarray:
        standardized = (features - self.mean) / self.std
        if self.clip is not None:
            standardized = np.clip(standardized, -self.clip, self.clip)
        return standardized.astype(np.float32)
