"""``routegate train mf``: fit the matrix-factorisation router on pairwise comparisons from many
record files (benchmarks, judges and model sets).

Why the recipe looks like this (the leave-one-out table in docs/ is what chose it):

* **Comparisons within a prompt, never across files.** Scores mean different things in different
  files (0/1 correctness, a judge's win probability against a reference answer, a test pass
  rate), so only "model a scored s_a and model b scored s_b on this prompt" is used, as the soft
  target ``(1 + s_a - s_b) / 2``.
* **An optional nuisance offset per (file, model)** (``--offset-l2``): how often a model wins in a
  file depends on that file's judge, reference and answer format as much as on its prompts; a
  free offset per (file, model), used in training and dropped at serving, can absorb that. The
  default all but switches it off (``--offset-l2 1000000``): held out it changes nothing, and
  without it the per-model qualities keep what each model is good at across domains, which
  routing among several models needs.
* **Files weighted by the square root of their size**, so 20,000 multiple-choice questions do not
  drown 500 open-ended prompts.
* **Model names in normal form** (``routers.model_names``): ``gpt4_1106_preview`` in AlpacaEval
  and ``gpt-4-1106-preview`` in RouteLLM's files share one model vector.
* **A neighbour step for the scored pair** (``--neighbour-weight``, ``routers/neighbours.py``):
  the pair's outcomes on the most similar training prompts. On prompts like those the pair was
  scored on (MMLU, GSM8K for GPT-4 vs Mixtral) it adds what a global latent model smooths away;
  held out it moved the leave-one-out mean by less than seed noise.
* **Structural features limited to 3 standard deviations** (``--feature-clip``). A feature that
  training hardly saw vary (answer options when no multiple-choice file is in training, code
  markers without code files) would otherwise reach 40 or more standard deviations on a new
  domain's prompts and move the score by whatever the untrained weights say; held out, the
  limit kept the leave-one-out mean and made it steadier across seeds.
* **Format failures stay with their format.** The neighbour table counts an outcome that holds a
  score of an unparsed answer (``routers.format_failures``) only for prompts in its prompt's format
  (answer options or none), so MMLU's LaTeX grading does not tell free-form math that GPT-4 loses
  it. ``--drop-format-failures`` (the default) also leaves such scores out of the
  latent model, which otherwise scores one-line math requests for GPT-4 vs Mixtral further below
  writing ones; held out it changed the leave-one-out mean by less than seed noise.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from routers.arguments import non_negative_float, positive_float, positive_int, probability, random_seed, torch_device
from routers.checkpoint import published_path, write_manifest
from routers.data import Record, RecordError, comparable, load_records
from routers.embedding import cached_encode, resolve_device
from routers.features import FEATURE_NAMES, Standardizer, feature_matrix
from routers.format_failures import format_failures, without_format_failures
from routers.mf.router import WEIGHTS, prompt_inputs
from routers.model_names import DEFAULT_PAIR, normal_form, scores_by_model
from routers.neighbours import DIMS, FEATURE_WEIGHT, RIDGE, TAU, NeighbourTable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``routegate train mf``."""
    parser.add_argument(
        "--data", nargs="+", required=True, help="record files (.jsonl or .jsonl.gz); only 'train' records are used"
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument(
        "--limit", type=positive_int, help="at most this many train records per file (the same every run: lowest sha1 of the id)"
    )
    parser.add_argument(
        "--weight",
        nargs="*",
        default=[],
        metavar="FILE=W",
        help="extra weight for a file's records, e.g. my-traffic.jsonl=5 (in-domain data)",
    )
    parser.add_argument("--hidden", type=positive_int, default=128, help="width of the text projection's hidden layer")
    parser.add_argument("--dim", type=positive_int, default=32, help="latent dimension shared by prompts and models")
    parser.add_argument("--pairs", type=positive_int, default=48, help="model pairs sampled per prompt (all pairs when fewer)")
    parser.add_argument(
        "--offset-l2",
        type=positive_float,
        default=1e6,
        help="L2 penalty of the per-(file, model) offsets, used in training and dropped at serving; the default all but "
        "switches them off (0.001 lets them absorb each file's judge and answer format)",
    )
    parser.add_argument("--epochs", type=positive_int, default=12)
    parser.add_argument("--batch-size", type=positive_int, default=256, help="prompts per step (with all their comparisons)")
    parser.add_argument("--lr", type=positive_float, default=2e-3)
    parser.add_argument("--weight-decay", type=non_negative_float, default=1e-4)
    parser.add_argument("--dropout", type=probability, default=0.2)
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument(
        "--neighbour-weight",
        type=non_negative_float,
        default=8.0,
        help="weight of the scored pair's outcomes on the most similar training prompts (every train record, "
        "not only --limit's) in the pair's score; 0: the latent model alone",
    )
    parser.add_argument(
        "--drop-format-failures",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave out of the latent model a model's scores on a file's task category where they record unparsed "
        "answers rather than ability (routers/format_failures.py); the neighbour table keeps them for prompts in their format",
    )
    parser.add_argument(
        "--feature-clip",
        type=non_negative_float,
        default=3.0,
        help="limit standardised structural features to +-this many standard deviations, in the latent model and the "
        "neighbour table (a feature rare in training cannot push a prompt's score arbitrarily far); 0: no limit",
    )
    parser.add_argument("--device", type=torch_device, default="auto", help="auto, cpu or cuda (encoder and training)")


@dataclass
class TrainingSet:
    """Prompts (with their file) and the model comparisons on them."""

    prompts: list[str]
    files: list[str]
    models: list[str]
    prompt_file: np.ndarray
    prompt: np.ndarray
    model_a: np.ndarray
    model_b: np.ndarray
    target: np.ndarray
    weight: np.ndarray


def file_stem(path: str | Path) -> str:
    return Path(path).name.split(".")[0]


def build_training_set(
    records_by_file: dict[str, list[Record]], pairs: int, seed: int, file_weights: dict[str, float]
) -> TrainingSet:
    """Comparisons of up to ``pairs`` model pairs per prompt; a file's records weigh
    ``file_weight * sqrt(n) / n`` each, so a file counts by the square root of its size."""
    rng = random.Random(seed)
    files = sorted(records_by_file)
    models = sorted(
        {normal_form(name) for records in records_by_file.values() for record in records for name in record["scores"]}
    )
    index = {name: position for position, name in enumerate(models)}
    prompts: list[str] = []
    prompt_file, prompt, model_a, model_b, target, weight = [], [], [], [], [], []
    for file_number, stem in enumerate(files):
        records = records_by_file[stem]
        record_weight = file_weights.get(stem, 1.0) / np.sqrt(max(len(records), 1))
        for record in records:
            scored = sorted((index[name], score) for name, score in scores_by_model(record["scores"]).items())
            candidates = list(combinations(scored, 2))
            if len(candidates) > pairs:
                candidates = rng.sample(candidates, pairs)
            if not candidates:
                continue
            number = len(prompts)
            prompts.append(record["prompt"])
            prompt_file.append(file_number)
            for (a, score_a), (b, score_b) in candidates:
                prompt.append(number)
                model_a.append(a)
                model_b.append(b)
                target.append((1.0 + score_a - score_b) / 2.0)
                weight.append(record_weight / len(candidates))
    if not weight:
        raise RecordError(f"no 'train' record of {sorted(records_by_file)} scores two models: nothing to learn")
    weights = np.asarray(weight, dtype=np.float32)
    return TrainingSet(
        prompts=prompts,
        files=files,
        models=models,
        prompt_file=np.asarray(prompt_file, dtype=np.int64),
        prompt=np.asarray(prompt, dtype=np.int64),
        model_a=np.asarray(model_a, dtype=np.int64),
        model_b=np.asarray(model_b, dtype=np.int64),
        target=np.asarray(target, dtype=np.float32),
        weight=weights / weights.mean(),
    )


def first_by_hash(records: list[Record], limit: int | None) -> list[Record]:
    """At most ``limit`` records: those with the lowest sha1 of their id. The choice of a record
    does not depend on which others are there, so a fold that drops a few keeps the rest."""
    if limit is None or len(records) <= limit:
        return records
    return sorted(records, key=lambda record: hashlib.sha1(str(record["id"]).encode()).hexdigest())[:limit]


def parse_weights(pairs: list[str], stems: list[str]) -> dict[str, float]:
    """``FILE=W`` options -> {file stem: weight} for the ``--data`` files they name; each W above 0."""
    weights = {}
    for item in pairs:
        name, _, value = item.rpartition("=")
        try:
            weight = positive_float(value)
        except argparse.ArgumentTypeError:
            weight = None
        if not name or weight is None:
            raise SystemExit(f"routegate train mf: --weight takes FILE=W with W above 0, not {item!r}")
        if file_stem(name) not in stems:  # a typo, or a leave-one-out fold without that file: say so, go on
            print(f"routegate train mf: --weight {item!r} names no --data file (their names: {stems})", file=sys.stderr)
            continue
        weights[file_stem(name)] = weight
    return weights


def run(args: argparse.Namespace) -> None:
    """Train and write ``weights.npz``, ``neighbours.npz`` (unless ``--neighbour-weight 0``) and
    ``router.json`` into ``args.out``."""
    stems = [file_stem(path) for path in args.data]
    if len(set(stems)) < len(stems):  # files are told apart (and --weight keyed) by their stem
        twice = sorted({str(path) for path, stem in zip(args.data, stems, strict=True) if stems.count(stem) > 1})
        raise SystemExit(f"routegate train mf: two data files have one name, rename one: {twice}")
    file_weights = parse_weights(args.weight, stems)
    torch.manual_seed(args.seed)
    # the neighbour table takes them all; a record scoring one model has no place in the limit or the weights
    train_records = {path: comparable(load_records([path], "train")) for path in args.data}
    # judged once, on every train record of a file: the neighbour table marks them; --drop-format-failures drops them
    failures = {path: format_failures(records) for path, records in train_records.items()}
    dropped = failures if args.drop_format_failures else {path: set() for path in train_records}
    records_by_file = {
        file_stem(path): first_by_hash(without_format_failures(records, dropped[path]), args.limit)
        for path, records in train_records.items()
    }
    data = build_training_set(records_by_file, args.pairs, args.seed, file_weights)
    print(
        f"mf: {len(data.prompts)} prompts from {len(data.files)} files, {len(data.target)} comparisons, {len(data.models)} models"
    )
    raw = feature_matrix(data.prompts)
    clip = args.feature_clip or None
    standardize = Standardizer.fit(raw, clip)
    features = prompt_inputs(cached_encode(data.prompts, args.device), standardize(raw))

    device = resolve_device(args.device)
    model = MFNet(features.shape[1], args.hidden, args.dim, len(data.models), len(data.files), args.dropout).to(device)
    optimizer = torch.optim.AdamW(
        [
            {
                "params": [p for name, p in model.named_parameters() if name != "offsets.weight"],
                "weight_decay": args.weight_decay,
            },
            {"params": [model.offsets.weight], "weight_decay": 0.0},
        ],
        lr=args.lr,
    )
    x = torch.from_numpy(features).to(device)
    model_a, model_b, target, weight = (
        torch.from_numpy(values).to(device) for values in (data.model_a, data.model_b, data.target, data.weight)
    )
    prompt_file = torch.from_numpy(data.prompt_file).to(device)
    # comparisons are stored prompt by prompt: prompt p's are starts[p]:starts[p + 1]
    starts = np.concatenate([[0], np.cumsum(np.bincount(data.prompt, minlength=len(data.prompts)))])
    batches_per_epoch = (len(data.prompts) + args.batch_size - 1) // args.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * batches_per_epoch)
    progress = tqdm(total=args.epochs * batches_per_epoch, desc="train mf", unit="step")
    generator = np.random.default_rng(args.seed)
    for _ in range(args.epochs):
        model.train()
        order = generator.permutation(len(data.prompts))
        for start in range(0, len(order), args.batch_size):
            rows = order[start : start + args.batch_size]
            counts = starts[rows + 1] - starts[rows]
            batch = torch.from_numpy(np.concatenate([np.arange(starts[row], starts[row + 1]) for row in rows]))
            local = torch.from_numpy(np.repeat(np.arange(len(rows)), counts))
            rows_tensor = torch.from_numpy(rows)
            logits = model(x[rows_tensor], prompt_file[rows_tensor], local, model_a[batch], model_b[batch])
            loss = (
                nn.functional.binary_cross_entropy_with_logits(logits, target[batch], reduction="none") * weight[batch]
            ).mean()
            loss = loss + args.offset_l2 * model.offsets.weight.square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.4f}")
    progress.close()
    model.eval()
    state = {name: value.detach().cpu().numpy().astype(np.float32) for name, value in model.state_dict().items()}
    if not all(np.isfinite(value).all() for value in state.values()):
        raise SystemExit("routegate train mf: training diverged (weights not finite); nothing written: try a lower --lr")
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out / WEIGHTS,
        w1=state["hidden.weight"].T.copy(),
        b1=state["hidden.bias"],
        w2=state["projection.weight"].T.copy(),
        b2=state["projection.bias"],
        model_vectors=state["model_vectors.weight"],
        model_bias=state["model_bias.weight"][:, 0],
        classifier=state["classifier.weight"][0],
        **standardize.arrays(),
    )
    neighbours = {}
    if args.neighbour_weight > 0:
        table = NeighbourTable.build(train_records, DIMS, FEATURE_WEIGHT, args.device, failures, clip)
        table.save(args.out)
        neighbours = {"weight": args.neighbour_weight, "tau": TAU, "ridge": RIDGE, "prompts": len(table.vectors)}
    write_manifest(
        args.out,
        "mf",
        args.data,
        data.models,
        default_pair=list(DEFAULT_PAIR),
        features=["minilm-embedding", *FEATURE_NAMES],
        hyperparameters={
            key: getattr(args, key)
            for key in (
                "hidden",
                "dim",
                "pairs",
                "offset_l2",
                "epochs",
                "batch_size",
                "lr",
                "weight_decay",
                "dropout",
                "seed",
                "limit",
                "drop_format_failures",
                "feature_clip",
            )
        },
        file_weights=file_weights,
        neighbours=neighbours,
        format_failures={file_stem(path): sorted(map(list, cells)) for path, cells in dropped.items() if cells},
        prompts=len(data.prompts),
        comparisons=len(data.target),
    )
    print(f"mf: wrote {published_path(args.out)}")


class MFNet(nn.Module):
    """delta_m(q) = w . (v_m * proj(q)) + c_m (+ a per-(file, m) offset in training);
    P(a beats b) = sigmoid(delta_a - delta_b)."""

    def __init__(self, inputs: int, hidden: int, dim: int, models: int, files: int, dropout: float) -> None:
        super().__init__()
        self.models = models
        self.hidden = nn.Linear(inputs, hidden)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(hidden, dim)
        self.model_vectors = nn.Embedding(models, dim)
        self.model_bias = nn.Embedding(models, 1)
        self.classifier = nn.Linear(dim, 1, bias=False)
        self.offsets = nn.Embedding(files * models, 1)
        nn.init.normal_(self.model_vectors.weight, std=0.5)
        nn.init.zeros_(self.model_bias.weight)
        nn.init.zeros_(self.offsets.weight)

    def delta(self, latent: torch.Tensor, file: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
        quality = self.classifier(self.model_vectors(model) * latent)[:, 0] + self.model_bias(model)[:, 0]
        return quality + self.offsets(file * self.models + model)[:, 0]

    def forward(
        self, x: torch.Tensor, file: torch.Tensor, prompt: torch.Tensor, model_a: torch.Tensor, model_b: torch.Tensor
    ) -> torch.Tensor:
        """Logits of "a beats b" for comparisons on rows ``prompt`` of the prompts ``x`` (from ``file``)."""
        latent = self.projection(self.dropout(nn.functional.gelu(self.hidden(x), approximate="tanh")))[prompt]
        return self.delta(latent, file[prompt], model_a) - self.delta(latent, file[prompt], model_b)
