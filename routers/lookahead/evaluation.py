"""Lookahead vs its ablation (MLC) on the dev splits: the table and a PNG.

    python -m routers.lookahead.evaluation --checkpoint Lookahead=routers/checkpoints/lookahead \
        --checkpoint MLC=/tmp/lookahead-mlc --data ../shared/data/lookahead-*.jsonl.gz \
        ../shared/data/routellm-gsm8k.jsonl.gz --png docs/lookahead_ablation.png

Per dev set with several candidates: the share of the random->oracle gap closed when picking
the candidate with the highest predicted score, ``(q_router - q_random) / (q_oracle - q_random)``
with ``q_random`` the mean over candidates. Per file, APGR for the strongest vs the weakest model
(by mean *train* score), from the same forward pass (logit difference of the two). Files whose
records have two models (routellm-gsm8k) get APGR only. Columns may add registry routers
(``--router mf``) for the pair rows.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from routers.arguments import positive_int
from routers.data import load_records
from routers.evaluation.metrics import PairQuality, apgr
from routers.evaluation.plot import save_figure


@dataclass
class DevSet:
    """One file's dev records with their candidate pool and the file's strong/weak pair."""

    name: str
    prompts: list[str]
    models: list[str]
    quality: np.ndarray  # [n_prompts, n_models]
    strong: str
    weak: str
    best_fixed: str  # the model with the best mean train score


def load_dev_set(path: str, limit: int | None = None) -> DevSet | None:
    """The dev split of ``path`` (its first ``limit`` records if given; None when it has none)."""
    train = load_records([path], split="train")
    dev = load_records([path], split="dev")[:limit]
    if not dev:
        return None
    models = sorted(dev[0]["scores"])
    dev = [record for record in dev if all(model in record["scores"] for model in models)]
    means = {model: np.mean([record["scores"][model] for record in train if model in record["scores"]]) for model in models}
    ranked = sorted(models, key=means.__getitem__, reverse=True)
    name = Path(path).name.removesuffix(".jsonl.gz").removesuffix(".jsonl")
    quality = np.array([[float(record["scores"][model]) for model in models] for record in dev])
    return DevSet(name, [record["prompt"] for record in dev], models, quality, ranked[0], ranked[-1], ranked[0])


def gap_closed(choice: np.ndarray, quality: np.ndarray) -> float:
    """Share of the random->oracle gap closed by picking column ``choice[i]`` for prompt ``i``
    (NaN where there is no gap: every model scores alike)."""
    picked = quality[np.arange(len(quality)), choice].mean()
    random_mean, oracle = quality.mean(axis=1).mean(), quality.max(axis=1).mean()
    if oracle == random_mean:
        return float("nan")
    return float((picked - random_mean) / (oracle - random_mean))


def pair_apgr(scores: np.ndarray, dev: DevSet) -> float:
    quality = PairQuality.of(dev.quality[:, dev.models.index(dev.strong)], dev.quality[:, dev.models.index(dev.weak)])
    return apgr(scores, quality)


def evaluate_lookahead(directory: Path, dev_sets: list[DevSet]) -> dict[str, dict[str, float]]:
    """Gap closed and pair APGR of one Lookahead checkpoint on every dev set."""
    from routers.lookahead.router import LookaheadRouter

    router = LookaheadRouter.from_directory(directory)
    results = {}
    for dev in tqdm(dev_sets, desc=f"scoring {directory}", unit="set"):
        logits = router.logits(dev.prompts, [router.candidates.index(model) for model in dev.models])
        row = {"apgr": pair_apgr(logits[:, dev.models.index(dev.strong)] - logits[:, dev.models.index(dev.weak)], dev)}
        if len(dev.models) > 2:
            row["gap_closed"] = gap_closed(logits.argmax(axis=1), dev.quality)
        results[dev.name] = row
    return results


def evaluate_registry_router(name: str, dev_sets: list[DevSet]) -> dict[str, dict[str, float]]:
    """Pair APGR of a registry router (e.g. ``mf``) on the dev sets whose pair it knows."""
    from routers.registry import RouterOptions, load_router

    results = {}
    for dev in dev_sets:
        try:
            router = load_router(name, RouterOptions(device="cpu", strong_model=dev.strong, weak_model=dev.weak))
        except (KeyError, ValueError, FileNotFoundError) as error:
            print(f"{name} on {dev.name}: not available ({type(error).__name__}: {error})")
            continue
        results[dev.name] = {"apgr": pair_apgr(np.asarray(router.score(dev.prompts)), dev)}
    return results


def fixed_choice(dev: DevSet) -> dict[str, float]:
    """The prompt-blind baseline: always the model with the best mean train score."""
    row = {"apgr": 0.5}
    if len(dev.models) > 2:
        row["gap_closed"] = gap_closed(np.full(len(dev.prompts), dev.models.index(dev.best_fixed)), dev.quality)
    return row


def table(dev_sets: list[DevSet], columns: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: one row per (dev set, metric), one column per router, plus dev averages."""
    names = list(columns)
    lines = [
        "| dev set | n | metric (pair for APGR) | " + " | ".join(names) + " |",
        "|---|---:|---|" + "---:|" * len(names),
    ]
    for metric in ("gap_closed", "apgr"):
        for dev in dev_sets:
            if not any(metric in columns[name].get(dev.name, {}) for name in names):
                continue
            label = "gap closed" if metric == "gap_closed" else f"APGR {dev.strong} vs {dev.weak}"
            cells = [_cell(columns[name].get(dev.name, {}).get(metric)) for name in names]
            lines.append(f"| {dev.name} | {len(dev.prompts)} | {label} | " + " | ".join(cells) + " |")
        averages = []
        for name in names:
            values = [columns[name][dev.name][metric] for dev in dev_sets if metric in columns[name].get(dev.name, {})]
            averages.append(_cell(float(np.mean(values)) if values else None))
        lines.append(f"| **average** | | {'gap closed' if metric == 'gap_closed' else 'APGR'} | " + " | ".join(averages) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot(dev_sets: list[DevSet], columns: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    """Two bar charts: gap closed and APGR per dev set, one bar per router."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for axis, metric, title in (
        (axes[0], "gap_closed", "share of random→oracle gap closed (best candidate)"),
        (axes[1], "apgr", "APGR, strongest vs weakest model"),
    ):
        sets = [dev.name for dev in dev_sets if any(metric in column.get(dev.name, {}) for column in columns.values())]
        width = 0.8 / len(columns)
        for offset, (name, column) in enumerate(columns.items()):
            values = [column.get(dev, {}).get(metric, np.nan) for dev in sets]
            axis.bar(np.arange(len(sets)) + offset * width, values, width, label=name)
        axis.set_xticks(np.arange(len(sets)) + 0.4 - width / 2, [name.replace("lookahead-", "") for name in sets], rotation=30)
        axis.axhline(0.5 if metric == "apgr" else 0.0, color="grey", linewidth=0.8, linestyle="--")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    save_figure(figure, path, dpi=110, tight=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m routers.lookahead.evaluation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="LABEL=DIR of a Lookahead checkpoint (repeatable)")
    parser.add_argument("--router", action="append", default=[], help="a registry router to add for the pair rows (e.g. mf)")
    parser.add_argument("--data", nargs="+", required=True, help="record files; their dev split is evaluated")
    parser.add_argument("--png", type=Path, required=True, help="the figure to write (docs/lookahead_ablation.png for the docs')")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--limit", type=positive_int, help="only the first N dev prompts per file (a smoke run)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    for spec in args.checkpoint:
        label, _, directory = spec.partition("=")
        if not label or not (Path(directory) / "config.json").is_file():
            parser.error(f"--checkpoint {spec!r}: give LABEL=DIR, DIR a lookahead checkpoint folder (with config.json)")
    torch.set_num_threads(args.threads)
    dev_sets = [dev for dev in (load_dev_set(path, args.limit) for path in args.data) if dev is not None]
    columns: dict[str, dict[str, dict[str, float]]] = {}
    for spec in args.checkpoint:
        label, _, directory = spec.partition("=")
        columns[label] = evaluate_lookahead(Path(directory), dev_sets)
    for name in args.router:
        columns[name] = evaluate_registry_router(name, dev_sets)
    columns["best fixed model"] = {dev.name: fixed_choice(dev) for dev in dev_sets}
    print(table(dev_sets, columns))
    plot(dev_sets, columns, args.png)
    print(f"wrote {args.png}")
    if args.json:
        args.json.write_text(json.dumps(columns, indent=2) + "\n")


if __name__ == "__main__":
    main()
