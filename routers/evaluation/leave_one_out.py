"""``routegate eval --leave-one-out``: train on every domain family but one, measure APGR on the
held-out family's dev records (or those of another split), for every family; beside the
prompt-length and random baselines.

For a router with a trainer, each fold's training records are written as record files into a
work folder (one per source file, ``train`` split only, minus every prompt that occurs in the
held-out family) and the router's own ``routegate train`` command fits them; the fold's router is
then loaded from there. A router named ``shipped:<name>`` is scored from its shipped checkpoint
instead, without retraining: held out only where its training files are outside the family.
"""

from __future__ import annotations

import gzip
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from routers.data import Record, iter_records, sample_records
from routers.evaluation.families import EVAL_PAIRS, FAMILIES, EvalPair, data_path, eval_records, training_records
from routers.evaluation.metrics import MIN_GAP_Z, PairQuality, apgr

RANDOM = "random"
LENGTH = "prompt length"


@dataclass
class LeaveOneOutTable:
    """APGR per (router, family, pair), and each family's average over its pairs. A pair whose
    sampled prompts do not show the strong model ahead by more than noise (``PairQuality.separable``)
    is shown as n/a and left out of the averages."""

    pairs: dict[str, list[EvalPair]] = field(default_factory=dict)
    apgr: dict[tuple[str, str, EvalPair], float] = field(default_factory=dict)
    quality: dict[tuple[str, EvalPair], PairQuality] = field(default_factory=dict)  # of the sampled prompts
    split: str = "dev"  # the held-out records' split ("all": every record)

    def counted(self, family: str, pair: EvalPair) -> bool:
        return self.quality[(family, pair)].separable

    def family_mean(self, router: str, family: str) -> float:
        values = [self.apgr[(router, family, pair)] for pair in self.pairs[family] if self.counted(family, pair)]
        return float(np.mean(values)) if values else float("nan")

    def routers(self) -> list[str]:
        return list(dict.fromkeys(router for router, _, _ in self.apgr))

    def format(self) -> str:
        """The table as Markdown: one row per router, one column per family, plus the average."""
        families = list(self.pairs)
        lines = ["| router | " + " | ".join(families) + " | mean |", "|---|" + "---:|" * (len(families) + 1)]
        for router in self.routers():
            means = [self.family_mean(router, family) for family in families]
            known = [m for m in means if not np.isnan(m)]
            overall = float(np.mean(known)) if known else float("nan")
            lines.append(f"| {router} | " + " | ".join(map(_cell, means)) + f" | {_cell(overall)} |")
        heading = "prompts" if self.split == "all" else f"{self.split} prompts"
        lines += ["", f"| family | file | strong | weak | {heading} | " + " | ".join(self.routers()) + " |"]
        lines.append("|---|---|---|---|---:|" + "---:|" * len(self.routers()))
        for family in families:
            for pair in self.pairs[family]:
                counted = self.counted(family, pair)
                values = " | ".join(
                    _cell(self.apgr[(router, family, pair)] if counted else float("nan")) for router in self.routers()
                )
                prompts = len(self.quality[(family, pair)].strong)
                lines.append(f"| {family} | {pair.file} | {pair.strong} | {pair.weak} | {prompts} | {values} |")
        skipped = [(family, pair) for family in families for pair in self.pairs[family] if not self.counted(family, pair)]
        if skipped:
            lines.append("")
        for family, pair in skipped:
            quality = self.quality[(family, pair)]
            lines.append(
                f"n/a: on these {len(quality.strong)} {pair.file} prompts {pair.strong} leads {pair.weak} by "
                f"{quality.gap:.3f} ({quality.gap_z:.1f} standard errors, under {MIN_GAP_Z:g}): "
                "no gap to recover beyond noise, so not counted."
            )
        return "\n".join(lines)


def _cell(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


#: what a fold's training files keep of a record (responses: what lookahead learns from)
FOLD_FIELDS = ("id", "prompt", "scores", "split", "category", "responses")


def write_fold(data_dir: Path, held_out: str, work: Path) -> list[Path]:
    """The fold's training files (``train`` records outside ``held_out``, no shared question),
    with the records' responses where they have them."""
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, records in training_records(data_dir, held_out).items():
        path = work / f"{stem}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps({key: record[key] for key in FOLD_FIELDS if key in record}) + "\n")
        paths.append(path)
    return paths


def train_fold(router: str, paths: list[Path], out: Path, extra: list[str]) -> None:
    """Fit ``router`` on ``paths`` with its own trainer (``routegate train <router>``)."""
    from routers.commands import run_trainer

    run_trainer(router, ["--data", *map(str, paths), "--out", str(out), *extra])


def run_leave_one_out(
    routers: list[str],
    data_dir: Path,
    work: Path,
    families: list[str],
    device: str,
    batch_size: int,
    train_options: dict[str, list[str]],
    checkpoint_dir: Path,
    max_prompts: int | None = None,
    split: str = "dev",
    max_chars: int | None = None,
) -> LeaveOneOutTable:
    """Train and score every router on every held-out family, on its records of ``split``; a
    router reads the first ``max_chars`` characters of each prompt (all with None)."""
    from routers.commands import score_all
    from routers.registry import RouterOptions, load_router_for_pair

    table = LeaveOneOutTable(pairs={family: list(EVAL_PAIRS[family]) for family in families}, split=split)
    for family in families:
        records: dict[str, list[Record]] = {stem: list(iter_records(data_path(data_dir, stem))) for stem in FAMILIES[family]}
        paths = write_fold(data_dir, family, work / family / "data") if any(not r.startswith("shipped:") for r in routers) else []
        cases: dict[EvalPair, tuple[list[str], PairQuality]] = {}
        for pair in table.pairs[family]:
            selected = sample_records(eval_records(records[pair.file], pair, split), max_prompts)
            quality = PairQuality.of([r["scores"][pair.strong] for r in selected], [r["scores"][pair.weak] for r in selected])
            prompts = [r["prompt"] for r in selected]
            cases[pair] = ([prompt[:max_chars] for prompt in prompts], quality)
            table.quality[(family, pair)] = quality
            table.apgr[(RANDOM, family, pair)] = 0.5
            table.apgr[(LENGTH, family, pair)] = apgr([float(len(p)) for p in prompts], quality)
        for name in routers:
            router_name = name.removeprefix("shipped:")
            directory = checkpoint_dir
            if not name.startswith("shipped:"):
                directory = work / family / "checkpoints"
                print(f"leave-one-out: training {router_name} without {family}: {' '.join(train_options.get(router_name, []))}")
                train_fold(router_name, paths, directory / router_name, train_options.get(router_name, []))
            for pair, (prompts, quality) in cases.items():
                options = RouterOptions(checkpoint_dir=directory, device=device)
                router, _ = load_router_for_pair(router_name, options, pair.strong, pair.weak)
                scores = score_all(router, prompts, batch_size, f"{pair.file} {pair.strong} vs {pair.weak}")
                table.apgr[(name, family, pair)] = apgr(scores, quality)
                note = "" if quality.separable else " (not counted: no gap beyond noise)"
                print(f"  {family:<10} {pair.file:<26} {name:<20} APGR {table.apgr[(name, family, pair)]:.3f}{note}")
    return table


def check_train_options(options: dict[str, list[str]], retrained: list[str]) -> None:
    """SystemExit before any fold: options for a router this run does not retrain, or that its
    trainer refuses (argparse names the option, exit status 2)."""
    from routers.commands import trainer_parser

    stray = sorted(set(options) - set(retrained))
    if stray:
        raise SystemExit(f"routegate eval: --train-options for {stray}, which this run does not retrain: {retrained}")
    for router, extra in options.items():
        trainer_parser(router).parse_args(["--data", "data.jsonl", "--out", "checkpoint", *extra])


def parse_train_options(items: list[str]) -> dict[str, list[str]]:
    """``ROUTER=OPTIONS`` items -> {router: [option, ...]}."""
    options: dict[str, list[str]] = {}
    for item in items:
        router, equals, text = item.partition("=")
        if not equals or not router:
            raise SystemExit(f"routegate eval: --train-options takes ROUTER=OPTIONS items, not {item!r}")
        try:
            options[router] = shlex.split(text)
        except ValueError as error:  # an unbalanced quote
            raise SystemExit(f"routegate eval: --train-options {item!r}: {error}") from None
    return options
