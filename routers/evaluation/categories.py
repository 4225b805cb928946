"""Where a router's ranking goes wrong: per record category, the strong model's lead and where
each router ranks the category's prompts (``routegate eval --by-category``).

APGR says how well a router ranks a file's prompts; this says which kinds of prompt it puts too
high or too low. A router that ranks well puts the categories with the largest lead highest.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from routers.evaluation.metrics import PairQuality, Scores

NO_CATEGORY = "(none)"


def ranks(values: Scores) -> np.ndarray:
    """0-based ranks of ``values``, ties sharing their mean rank."""
    _, inverse, counts = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse]


def percentiles(scores: Scores) -> np.ndarray:
    """Each prompt's rank among all of them, from 0 (lowest score) to 1 (highest); ties share the mean rank."""
    if len(scores) < 2:
        return np.full(len(scores), 0.5)
    return ranks(scores) / (len(scores) - 1.0)


def rank_correlation(a: Scores, b: Scores) -> float:
    """Spearman's rank correlation of two equally long sequences; NaN when either is constant."""
    first, second = ranks(a), ranks(b)
    if first.std() == 0 or second.std() == 0:
        return float("nan")
    return float(np.corrcoef(first, second)[0, 1])


def label(category: object) -> str:
    """How a record's category is shown: a string as it is (control characters escaped), anything
    else as JSON, ``(none)`` for a record without one."""
    if category is None:
        return NO_CATEGORY
    text = json.dumps(category, ensure_ascii=False, sort_keys=True)
    return text[1:-1] if isinstance(category, str) else text


def category_table(categories: list[object], quality: PairQuality, curves: Mapping[str, Scores]) -> str:
    """Rows of (category, prompts, strong lead, each curve's mean percentile), largest lead first,
    then, with three categories or more, each curve's rank correlation between its category means
    and the categories' leads."""
    rows: dict[str, list[int]] = defaultdict(list)
    labels: dict[str, str] = {}
    for position, category in enumerate(categories):
        key = json.dumps(category, sort_keys=True)  # 1 and "1" are two categories
        if key not in rows:
            labels[key] = label(category)
        rows[key].append(position)
    lead = quality.strong - quality.weak
    leads = {key: float(lead[positions].mean()) for key, positions in rows.items()}
    order = sorted(rows, key=lambda key: -leads[key])
    ranked = {name: percentiles(scores) for name, scores in curves.items()}
    mean_ranks = {name: [float(ranked[name][rows[key]].mean()) for key in order] for name in curves}
    width = max(len("category"), *(len(labels[key]) for key in order))
    lines = [f"  {'category':<{width}} {'prompts':>7} {'lead':>7}  mean rank: " + ", ".join(curves)]
    for row, key in enumerate(order):
        ranks_shown = "  ".join(f"{means[row]:.2f}" for means in mean_ranks.values())
        lines.append(f"  {labels[key]:<{width}} {len(rows[key]):>7} {leads[key]:>+7.3f}  {ranks_shown}")
    if len(order) >= 3:
        for name, means in mean_ranks.items():
            correlation = rank_correlation([leads[key] for key in order], means)
            lines.append(f"  {name}: rank correlation of category means with their lead {correlation:+.2f}")
    return "\n".join(lines)
