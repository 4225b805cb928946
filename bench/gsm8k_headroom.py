"""How well can any prompt-only router rank GSM8K prompts for GPT-4 vs Mixtral? Dev APGR side by side.

    python bench/gsm8k_headroom.py --data-dir ../shared/data [--folds 5]

Rows on ``routellm-gsm8k`` dev, each with a bootstrap standard deviation over dev prompts:
prompt-only scores (length, a linear score on the structural features fitted on train, the
shipped ``mf`` checkpoint) beside scores that use what no router can see before answering: the
six ``lookahead-gsm8k`` models' actual outcomes on the same dev question, and the number of
steps in GPT-4's own dev answer. With ``--folds K`` it also trains ``mf`` K times, each time
holding out a K-th of the GSM8K ``train`` records (all MMLU ``train`` records stay in), and prints
the held-out APGR of ``mf`` and of length per fold: how ``mf`` does on unseen prompts of the same
distribution beside the 255 dev prompts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from routers.data import Record, load_records
from routers.evaluation.metrics import PairQuality, apgr
from routers.feature_head import FeatureHead
from routers.features import Standardizer, feature_matrix
from routers.mf import training as mf_training
from routers.mf.router import MFRouter
from routers.training.feature_head import fit_alone
from routers.training.pairwise import build_comparisons

STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def quality_of(records: Sequence[Record]) -> PairQuality:
    return PairQuality.of([r["scores"][STRONG] for r in records], [r["scores"][WEAK] for r in records])


def bootstrap_sd(scores: np.ndarray, quality: PairQuality, resamples: int = 500) -> float:
    """Standard deviation of APGR over dev prompts resampled with replacement."""
    generator = np.random.default_rng(0)
    values = []
    for _ in range(resamples):
        pick = generator.integers(0, len(scores), len(scores))
        values.append(apgr(scores[pick], PairQuality(quality.strong[pick], quality.weak[pick])))
    return float(np.std(values))


def fit_linear(inputs: np.ndarray, records: Sequence[Record]) -> Callable[[np.ndarray], np.ndarray]:
    """A linear score on standardised ``inputs``, fitted on ``records`` as routegate's feature head
    is (``routers.training.feature_head.fit_alone``: pairwise logistic loss with soft targets)."""
    standardize = Standardizer.fit(inputs)
    head = FeatureHead(standardize, torch.zeros(2, inputs.shape[1]), torch.zeros(2))
    fit_alone(head, torch.from_numpy(standardize(inputs)), build_comparisons(list(records), [STRONG, WEAK]))

    def score(new: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = head(torch.from_numpy(standardize(new)))
        return (logits[:, 0] - logits[:, 1]).numpy()

    return score


def answer_steps(answer: str) -> float:
    """Computation steps in a GSM8K answer: its '=' signs."""
    return float(answer.count("="))


def dev_rows(data_dir: Path, checkpoint: Path) -> tuple[list[tuple[str, np.ndarray]], PairQuality]:
    """(label, dev scores) for every row of the dev table, and the dev prompts' quality."""
    gsm8k = load_records([data_dir / "routellm-gsm8k.jsonl.gz"])
    others = {r["id"]: r["scores"] for r in load_records([data_dir / "lookahead-gsm8k.jsonl.gz"])}
    train = [r for r in gsm8k if r["split"] == "train" and r["id"] in others]
    dev = [r for r in gsm8k if r["split"] == "dev"]
    models = sorted(others[dev[0]["id"]])

    def outcomes(records: Sequence[Record]) -> np.ndarray:
        return np.asarray([[others[r["id"]][m] for m in models] for r in records], dtype=np.float32)

    def structure(records: Sequence[Record]) -> np.ndarray:
        return feature_matrix([r["prompt"] for r in records])

    structural = fit_linear(structure(train), train)
    with_outcomes = fit_linear(np.concatenate([structure(train), outcomes(train)], axis=1), train)
    router = MFRouter(checkpoint, "cpu", STRONG, WEAK)
    return [
        ("prompt length in characters (baseline)", np.asarray([len(r["prompt"]) for r in dev], dtype=float)),
        ("structural features, linear score fitted on train", structural(structure(dev))),
        (f"shipped mf checkpoint ({checkpoint})", np.asarray(router.score([r["prompt"] for r in dev]))),
        ("NOT A ROUTER: six other models' actual dev outcomes (1 - mean)", 1.0 - outcomes(dev).mean(axis=1)),
        (
            "NOT A ROUTER: those outcomes + structural features, fitted on train",
            with_outcomes(np.concatenate([structure(dev), outcomes(dev)], axis=1)),
        ),
        ("NOT A ROUTER: steps in GPT-4's own dev answer", np.asarray([answer_steps(r["responses"][STRONG]) for r in dev])),
    ], quality_of(dev)


def fold_of(record: Record, folds: int) -> int:
    return int(hashlib.sha1(("fold:" + record["id"]).encode()).hexdigest(), 16) % folds


def write_records(path: Path, records: Sequence[Record]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")


def cross_validate_mf(data_dir: Path, folds: int) -> list[tuple[float, float, int]]:
    """Per fold: (mf APGR, length APGR, prompts) on the held-out GSM8K train records."""
    gsm8k = load_records([data_dir / "routellm-gsm8k.jsonl.gz"], "train")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for fold in tqdm(range(folds), desc="mf folds", unit="fold"):
            kept = Path(scratch) / "gsm8k-kept.jsonl"
            write_records(kept, [r for r in gsm8k if fold_of(r, folds) != fold])
            held_out = [r for r in gsm8k if fold_of(r, folds) == fold]
            out = Path(scratch) / f"mf-{fold}"
            parser = argparse.ArgumentParser()
            mf_training.add_arguments(parser)
            mf_training.run(
                parser.parse_args(
                    ["--data", str(data_dir / "routellm-mmlu.jsonl.gz"), str(kept), "--out", str(out), "--device", "cpu"]
                )
            )
            quality = quality_of(held_out)
            scores = MFRouter(out, "cpu", STRONG, WEAK).score([r["prompt"] for r in held_out])
            results.append((apgr(scores, quality), apgr([len(r["prompt"]) for r in held_out], quality), len(held_out)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--checkpoint", type=Path, default=Path("routers/checkpoints/mf"))
    parser.add_argument(
        "--folds", type=int, default=0, help="also cross-validate mf over this many folds of GSM8K train (0: skip)"
    )
    args = parser.parse_args()
    rows, quality = dev_rows(args.data_dir, args.checkpoint)
    print(f"routellm-gsm8k dev, {STRONG} vs {WEAK}: {len(quality.strong)} prompts")
    print(f"{'dev APGR':>8}  {'sd':>5}  scores")
    for label, scores in rows:
        print(f"{apgr(scores, quality):8.3f}  {bootstrap_sd(scores, quality):5.3f}  {label}")
    if args.folds:
        results = cross_validate_mf(args.data_dir, args.folds)
        print(f"\nmf, {args.folds}-fold cross-validation over routellm-gsm8k train (held-out APGR):")
        print(f"{'fold':>4}  {'prompts':>7}  {'mf':>6}  {'length':>6}")
        for fold, (mf_apgr, length_apgr, prompts) in enumerate(results):
            print(f"{fold:4d}  {prompts:7d}  {mf_apgr:6.3f}  {length_apgr:6.3f}")
        mf_values, length_values = np.asarray([r[0] for r in results]), np.asarray([r[1] for r in results])
        print(
            f"mean  {'':7}  {mf_values.mean():6.3f}  {length_values.mean():6.3f}   (sd over folds: mf "
            f"{mf_values.std():.3f}, length {length_values.std():.3f})"
        )


if __name__ == "__main__":
    main()
