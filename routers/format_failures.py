"""Scores that record an answer-format failure rather than a model's ability.

Some files score a model near zero on a whole task category that it is known to handle, because
its answers could not be parsed there: RouteLLM's MMLU file has GPT-4-1106 at 3% on high-school
mathematics (80% overall, Mixtral 32% on the same questions), LLMRouter's has Qwen2.5-7B at 16%
on MMLU and Gemma-2-9B at 10% on HumanEval. A latent model taught those would carry "GPT-4 loses
to Mixtral on math" to every math prompt. ``format_failures`` finds such cells (``routegate train mf
--drop-format-failures`` leaves them out of its latent model):
a (file, category, model) where the model scores under half of what the file's other models
score on that category, and at least ``MIN_SHORTFALL`` below what its level in the rest of the
file predicts. A weak model that is weak everywhere (Llama-2-7B on MMLU-Pro) keeps its scores.
"""

from __future__ import annotations

from collections import defaultdict

from routers.data import Record

#: fewest scores of a model in a category for the cell to be judged
MIN_CELL = 40
#: a failing cell is below this fraction of the other models' mean on the category ...
MAX_RATIO = 0.5
#: ... and this far below the model's own gap to the others over the whole file
MIN_SHORTFALL = 0.25


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def format_failures(records: list[Record]) -> set[tuple[str, str]]:
    """The (category, model) cells of one file's records whose scores are format failures."""
    by_category: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        for model, score in record["scores"].items():
            by_category[str(record.get("category"))][model].append(float(score))
    if len(by_category) < 2:
        return set()
    overall: dict[str, list[float]] = defaultdict(list)
    for cells in by_category.values():
        for model, scores in cells.items():
            overall[model].extend(scores)
    level = {model: _mean(scores) for model, scores in overall.items()}
    failures = set()
    for category, cells in by_category.items():
        for model, scores in cells.items():
            others = [other for other in cells if other != model]
            if len(scores) < MIN_CELL or not others:
                continue
            own, theirs = _mean(scores), _mean([score for other in others for score in cells[other]])
            expected_gap = level[model] - _mean([level[other] for other in others])
            if own < MAX_RATIO * theirs and (own - theirs) - expected_gap < -MIN_SHORTFALL:
                failures.add((category, model))
    return failures


def without_format_failures(records: list[Record], failures: set[tuple[str, str]]) -> list[Record]:
    """One file's records without the scores of ``failures`` (its ``format_failures``); copies
    where something is removed, and a record left with fewer than two scores gives no comparison."""
    if not failures:
        return records
    cleaned = []
    for record in records:
        category = str(record.get("category"))
        scores = {model: score for model, score in record["scores"].items() if (category, model) not in failures}
        cleaned.append(record if len(scores) == len(record["scores"]) else {**record, "scores": scores})
    return cleaned
