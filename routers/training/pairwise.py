"""Training data for routers: pairwise comparisons from every pair of models scored on a prompt."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from routers.arguments import positive_int
from routers.data import Record, RecordError, comparable, load_records, sample_records
from routers.model_names import normal_form, scores_by_model


@dataclass
class Comparisons:
    """Prompts and the comparisons between models on them.

    ``target`` is the soft probability that model ``a`` beats model ``b``: (1 + s_a - s_b) / 2,
    so a tie counts half and the expected target ranks prompts by the expected score gap.
    """

    prompts: list[str]
    models: list[str]
    prompt: np.ndarray
    model_a: np.ndarray
    model_b: np.ndarray
    target: np.ndarray
    weight: np.ndarray

    def of_prompts(self, prompts: Sequence[int]) -> Comparisons:
        """The comparisons on the prompts at indices ``prompts`` (distinct), renumbered 0, 1, ...
        in that order: a mini-batch whose logits have one row per prompt in ``prompts``."""
        renumber = np.full(len(self.prompts), -1, dtype=np.int64)
        renumber[np.asarray(prompts, dtype=np.int64)] = np.arange(len(prompts))
        keep = renumber[self.prompt] >= 0
        return Comparisons(
            prompts=[self.prompts[index] for index in prompts],
            models=self.models,
            prompt=renumber[self.prompt[keep]],
            model_a=self.model_a[keep],
            model_b=self.model_b[keep],
            target=self.target[keep],
            weight=self.weight[keep],
        )


def add_training_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--out`` and ``--limit``: the options every pairwise trainer reads with
    ``load_training_records``."""
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="record files (.jsonl or .jsonl.gz); only 'train' records are used",
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--limit", type=positive_int, help="a seeded random sample of at most this many train records per file")


def load_training_records(paths: list[str], split: str = "train", limit: int | None = None, seed: int = 0) -> list[Record]:
    """The ``split`` records of ``paths`` that score two or more models; with ``limit``, a seeded
    random sample of at most that many per file."""
    records: list[Record] = []
    for path in paths:
        records.extend(sample_records(comparable(load_records([path], split)), limit, seed))
    if not records:
        raise RecordError(f"no '{split}' record of {[str(path) for path in paths]} scores two models")
    return records


def build_comparisons(records: list[Record], models: list[str] | None = None) -> Comparisons:
    """Every unordered model pair scored on each record; each record weighs 1 in total.

    Models are told apart by ``normal_form``, so one model spelled differently in different files
    (``mistralai/Mixtral-8x7B-Instruct-v0.1``, ``Mixtral-8x7B-Instruct-v0.1``) is one output; two
    spellings scored on the same record count as their mean. Without ``models`` the model list is
    the sorted normal forms of every scored name; a given list is kept as given, and must not
    name one model twice."""
    models = models or sorted({normal_form(name) for record in records for name in record["scores"]})
    index = {normal_form(name): position for position, name in enumerate(models)}
    if len(index) < len(models):
        raise ValueError(f"{models} names one model twice (compared by normal form)")
    prompt, model_a, model_b, target, weight = [], [], [], [], []
    for number, record in enumerate(records):
        scored = sorted((index[name], score) for name, score in scores_by_model(record["scores"]).items() if name in index)
        pairs = list(combinations(scored, 2))
        for (a, score_a), (b, score_b) in pairs:
            prompt.append(number)
            model_a.append(a)
            model_b.append(b)
            target.append((1.0 + score_a - score_b) / 2.0)
            weight.append(1.0 / len(pairs))
    if not weight:
        raise RecordError(f"no record scores two of the {len(models)} models compared: nothing to learn")
    return Comparisons(
        prompts=[record["prompt"] for record in records],
        models=models,
        prompt=np.asarray(prompt, dtype=np.int64),
        model_a=np.asarray(model_a, dtype=np.int64),
        model_b=np.asarray(model_b, dtype=np.int64),
        target=np.asarray(target, dtype=np.float32),
        weight=np.asarray(weight, dtype=np.float32),
    )


def pairwise_loss(logits: torch.Tensor, comparisons: Comparisons) -> torch.Tensor:
    """Weighted logistic loss of every comparison's margin, per prompt; ``logits`` is (prompts, models)."""
    prompt, model_a, model_b, target, weight = (
        torch.from_numpy(values).to(logits.device)
        for values in (comparisons.prompt, comparisons.model_a, comparisons.model_b, comparisons.target, comparisons.weight)
    )
    margin = logits[prompt, model_a] - logits[prompt, model_b]
    losses = torch.nn.functional.binary_cross_entropy_with_logits(margin, target, reduction="none")
    return (losses * weight).sum() / len(comparisons.prompts)
