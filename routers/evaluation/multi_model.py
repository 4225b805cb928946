"""``routegate eval --models A,B,C --data FILE``: quality against cost when routing among several
models, on one record file's dev split.

* **Cost per prompt** (USD): RouterBench files carry it (``meta.cost``) and it is used as is.
  Otherwise ``input tokens x input price + output tokens x output price`` with input tokens =
  prompt characters / 4 and output tokens = the model's recorded response characters / 4 where
  the file has responses, else ``--output-tokens`` (default 256); prices from
  ``routers.evaluation.prices`` unless ``--prices`` names them.
* **Routers** give per-model predictions (``mf``'s quality deltas, ``lookahead``'s logits); the
  policy of ``routers.multi_model`` turns them into one choice per prompt at each threshold, and
  the sweep over thresholds gives the router's quality/cost curve.
* **Baselines:** each fixed model, the best fixed model at each cost (the dearest model within
  the budget that scores best), kNN (a model's predicted quality = its mean score on the ``k``
  nearest train prompts by MiniLM embedding), random choice, and the oracle (the cheapest model
  with the best score on each prompt).
* **Gap closed** (the Lookahead paper's metric): routing every prompt to the model with the best
  prediction, the share of the gap from random choice to the oracle that is closed.
"""

from __future__ import annotations

import argparse
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from routers.data import Record, load_records
from routers.evaluation.plot import save_figure
from routers.evaluation.prices import Price, list_price, parse_prices
from routers.model_names import match_model
from routers.multi_model import beaten_from_logits, beaten_from_scores, most_capable, picked, sweep
from routers.output_files import check_writable

CHARS_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 256
SCORE_BATCH = 64  # prompts per router call by default, so that the progress bar moves
FILE_COSTS = "meta.cost of the file"  # where the costs come from when the records carry them


@dataclass
class ModelSet:
    """One file's evaluation prompts with each candidate's score and cost, and its train split."""

    name: str
    models: list[str]
    prompts: list[str]
    quality: np.ndarray  # (prompts, models)
    costs: np.ndarray  # (prompts, models), USD
    cost_source: str
    train_prompts: list[str]
    train_quality: np.ndarray  # (train prompts, models), nan where a model has no score


@dataclass
class Curve:
    """A router's predictions and the quality/cost points of its threshold sweep."""

    name: str
    predicted: np.ndarray  # (prompts, models)
    costs: np.ndarray  # mean USD per prompt at each threshold
    qualities: np.ndarray  # mean quality at each threshold
    most_capable: str


def resolve_models(spec: str, records: list[Record]) -> list[str]:
    """The file's spelling of each ``--models`` name (``all``: every model scored on every record)."""
    known = sorted(set.intersection(*(set(record["scores"]) for record in records)))
    if spec.strip() == "all":
        if len(known) < 2:
            raise SystemExit(f"routegate eval: --models all needs two models scored on every record; those are {known}")
        return known
    models = []
    for asked in filter(None, (part.strip() for part in spec.split(","))):
        found = asked if asked in known else match_model(asked, known)
        if found is None:
            raise SystemExit(f"routegate eval: model {asked!r} is not scored on every record; known: {known}")
        if found in models:
            raise SystemExit(f"routegate eval: --models names {found!r} twice ({asked!r} is another spelling of it)")
        models.append(found)
    if len(set(models)) < 2:
        raise SystemExit("routegate eval: --models needs at least two different models")
    return models


def _field(record: object, name: str) -> dict:
    """``record[name]`` when both are objects, else an empty one (a ``null`` or missing field)."""
    value = record.get(name) if isinstance(record, dict) else None
    return value if isinstance(value, dict) else {}


def _is_price(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf


def prompt_costs(
    records: list[Record], models: list[str], prices: dict[str, Price], output_tokens: int | None
) -> tuple[np.ndarray, str]:
    """(prompts, models) USD per call and a note on where the numbers come from."""
    if all(set(models) <= set(_field(_field(record, "meta"), "cost")) for record in records):
        costs = np.array([[record["meta"]["cost"][model] for model in models] for record in records], dtype=object)
        if not all(_is_price(value) for value in costs.flat):
            raise SystemExit("routegate eval: meta.cost holds a value that is not a number of USD at least 0")
        return costs.astype(float), FILE_COSTS
    missing = [model for model in models if model not in prices]
    if missing:
        raise SystemExit(f"routegate eval: no list price for {missing}; give them with --prices MODEL=IN/OUT,...")
    with_responses = output_tokens is None and all(
        set(models) <= set(_field(record, "responses")) and all(isinstance(record["responses"][model], str) for model in models)
        for record in records
    )
    fixed = output_tokens or DEFAULT_OUTPUT_TOKENS
    costs = np.array(
        [
            [
                prices[model].cost(
                    len(record["prompt"]) / CHARS_PER_TOKEN,
                    len(record["responses"][model]) / CHARS_PER_TOKEN if with_responses else fixed,
                )
                for model in models
            ]
            for record in records
        ]
    )
    output = "recorded response chars/4" if with_responses else f"{fixed} tokens"
    return costs, f"list prices x (prompt chars/4 in, {output} out)"


def load_model_set(path: Path, models_spec: str, price_spec: str, output_tokens: int | None, split: str) -> ModelSet:
    """The evaluation records of ``path`` scored for every chosen model, and the train records."""
    evaluated = [record for record in load_records([path], None if split == "all" else split) if record.get("scores")]
    if not evaluated:
        raise SystemExit(f"routegate eval: no '{split}' records in {path}")
    models = resolve_models(models_spec, evaluated)
    evaluated = [record for record in evaluated if set(models) <= set(record["scores"])]
    try:
        asked_prices = parse_prices(price_spec)
    except ValueError as error:
        raise SystemExit(f"routegate eval: --prices: {error}") from None
    given = {}
    for asked, price in asked_prices.items():
        found = asked if asked in models else match_model(asked, models)
        if found is None:
            raise SystemExit(f"routegate eval: --prices names {asked!r}, which is not among --models {models}")
        given[found] = price
    prices = {model: given.get(model) or list_price(model) for model in models}
    costs, source = prompt_costs(evaluated, models, {m: p for m, p in prices.items() if p is not None}, output_tokens)
    if source == FILE_COSTS and (given or output_tokens is not None):
        raise SystemExit(
            "routegate eval: the file's records carry meta.cost, which prices them: leave out --prices and --output-tokens"
        )
    train = [record for record in load_records([path], "train") if record["scores"]]  # a scored record has a prompt
    return ModelSet(
        name=path.name.split(".")[0],
        models=models,
        prompts=[record["prompt"] for record in evaluated],
        quality=np.array([[float(record["scores"][model]) for model in models] for record in evaluated]),
        costs=costs,
        cost_source=source,
        train_prompts=[record["prompt"] for record in train],
        train_quality=np.array([[float(record["scores"].get(model, np.nan)) for model in models] for record in train]).reshape(
            -1, len(models)
        ),
    )


def knn_predictions(data: ModelSet, k: int, device: str) -> np.ndarray:
    """Each model's mean score on the ``k`` train prompts nearest to each prompt (cosine, MiniLM)."""
    from routers.embedding import encode

    train, query = encode(data.train_prompts, device, progress=True), encode(data.prompts, device, progress=True)
    similarity = query @ train.T
    positions: dict[str, list[int]] = {}
    for position, prompt in enumerate(data.train_prompts):
        positions.setdefault(prompt, []).append(position)
    for row, prompt in enumerate(data.prompts):  # a prompt evaluated is never its own neighbour (--split all)
        similarity[row, positions.get(prompt, [])] = -np.inf
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    with warnings.catch_warnings():  # a model none of the neighbours scored: its mean over the train split
        warnings.simplefilter("ignore", RuntimeWarning)
        predicted = np.nanmean(data.train_quality[nearest], axis=1)
        overall = np.nan_to_num(np.nanmean(data.train_quality, axis=0))  # 0 for a model no train record scores
    return np.where(np.isnan(predicted), overall, predicted)


def check_routers(names: list[str]) -> None:
    """SystemExit unless every name is a router that predicts each model's quality (before any scoring)."""
    from routers.registry import available_routers, multi_model_routers

    unknown = [name for name in names if name not in available_routers()]
    if unknown:
        raise SystemExit(f"routegate eval: unknown routers {unknown}; known: {available_routers()}")
    pair_only = [name for name in names if name not in multi_model_routers()]
    if pair_only:
        raise SystemExit(
            f"routegate eval: {pair_only} score only a strong/weak pair; routing among several models needs one "
            f"prediction per model ({', '.join(multi_model_routers())})"
        )


def router_predictions(
    name: str, data: ModelSet, checkpoint_dir: Path, device: str, max_chars: int | None = None, batch_size: int = SCORE_BATCH
) -> np.ndarray:
    """Per-model logits of a registry router on the prompts (``Router.model_logits``), (prompts,
    models); it reads the first ``max_chars`` characters of each prompt (all with None)."""
    from routers.registry import RouterOptions, load_router_or_exit, router_models_or_exit

    known = router_models_or_exit(name, checkpoint_dir) or list(data.models)  # random knows every name
    matched = [match_model(model, known) for model in data.models]
    unknown = [model for model, found in zip(data.models, matched, strict=True) if found is None]
    if unknown:
        raise SystemExit(f"routegate eval: the {name} checkpoint does not know {unknown}; it knows {known}")
    names = [found for found in matched if found is not None]
    router = load_router_or_exit(name, RouterOptions(checkpoint_dir, device, strong_model=names[0], weak_model=names[1]))
    logits = []
    with tqdm(total=len(data.prompts), desc=f"{name} on {data.name}", unit="prompt") as progress:
        for start in range(0, len(data.prompts), batch_size):
            batch = [prompt[:max_chars] for prompt in data.prompts[start : start + batch_size]]
            batch_logits = router.model_logits(batch, names)
            assert batch_logits is not None  # a multi-model router
            logits.append(np.asarray(batch_logits))
            progress.update(len(batch))
    return np.concatenate(logits) if logits else np.zeros((0, len(names)))


def routing_curve(name: str, predicted: np.ndarray, data: ModelSet, logits: bool) -> Curve:
    """Sweep the threshold of the multi-model policy over the prompts."""
    best = most_capable(predicted)
    beaten = beaten_from_logits(predicted, best) if logits else beaten_from_scores(predicted, best)
    _, choices = sweep(beaten, data.costs.mean(axis=0), best)
    costs = np.array([picked(data.costs, choice).mean() for choice in choices])
    qualities = np.array([picked(data.quality, choice).mean() for choice in choices])
    return Curve(name, predicted, costs, qualities, data.models[best])


COST_TOLERANCE = 1e-9


def quality_at_cost(costs: np.ndarray, qualities: np.ndarray, budget: float) -> float:
    """The best mean quality a sweep reaches spending at most ``budget`` per prompt, by one
    threshold or by mixing two neighbouring ones at random; nan when even the cheapest is dearer."""
    within = budget * (1 + COST_TOLERANCE)  # a mean over prompts of the budget's own costs may round above it
    reachable = [quality for cost, quality in zip(costs, qualities, strict=True) if cost <= within]
    for c1, q1, c2, q2 in zip(costs[:-1], qualities[:-1], costs[1:], qualities[1:], strict=True):
        if min(c1, c2) <= budget <= max(c1, c2) and c1 != c2:
            reachable.append(q1 + (q2 - q1) * (budget - c1) / (c2 - c1))
    return float(max(reachable)) if reachable else float("nan")


def best_fixed_at_cost(data: ModelSet, budget: float) -> float:
    """Mean quality of the best single model whose mean cost is within ``budget`` (nan if none)."""
    means, costs = data.quality.mean(axis=0), data.costs.mean(axis=0)
    within = means[costs <= budget * (1 + COST_TOLERANCE)]
    return float(within.max()) if len(within) else float("nan")


def oracle_point(data: ModelSet) -> tuple[float, float]:
    """(mean cost, mean quality) of the cheapest model with the best score on each prompt."""
    top = data.quality.max(axis=1, keepdims=True)
    cost = np.where(data.quality >= top, data.costs, np.inf).min(axis=1)
    return float(cost.mean()), float(top.mean())


def summary_rows(data: ModelSet, curves: list[Curve]) -> tuple[str, list[list[str]]]:
    """The best fixed model, and per router/baseline: gap closed, quality at the best fixed model's
    cost and the share of its quality kept at half that cost."""
    from routers.lookahead.evaluation import gap_closed

    means, costs = data.quality.mean(axis=0), data.costs.mean(axis=0)
    best = int(np.lexsort((costs, -means))[0])  # the best mean quality; on a tie the cheaper model
    budget, reference = float(costs[best]), float(means[best])
    rows = []
    for curve in curves:
        at_cost = quality_at_cost(curve.costs, curve.qualities, budget)
        at_half = quality_at_cost(curve.costs, curve.qualities, budget / 2)
        rows.append(
            [
                curve.name,
                f"{gap_closed(curve.predicted.argmax(axis=1), data.quality):.3f}",
                f"{at_cost:.4f}",
                _share(at_half, reference),
                curve.most_capable,
            ]
        )
    fixed_gap = gap_closed(np.full(len(data.prompts), best), data.quality)
    rows.append(
        [
            "best fixed model",
            f"{fixed_gap:.3f}",
            f"{reference:.4f}",
            _share(best_fixed_at_cost(data, budget / 2), reference),
            data.models[best],
        ]
    )
    return data.models[best], rows


def _share(quality: float, reference: float) -> str:
    """``quality`` as a share of the best fixed model's ``reference`` (none when that scores 0)."""
    if np.isnan(quality):
        return "below every model's cost"
    return f"{quality / reference:.1%}" if reference > 0 else "n/a (the best model scores 0)"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def report(data: ModelSet, curves: list[Curve]) -> str:
    """The printed tables: every fixed model, the random and oracle points, then the routers."""
    means, costs = data.quality.mean(axis=0), data.costs.mean(axis=0)
    fixed = [
        [model, f"{1000 * cost:.4f}", f"{quality:.4f}"]
        for model, cost, quality in sorted(zip(data.models, costs, means, strict=True), key=lambda row: row[1])
    ]
    oracle_cost, oracle_quality = oracle_point(data)
    fixed.append(["random model", f"{1000 * costs.mean():.4f}", f"{means.mean():.4f}"])
    fixed.append(["oracle", f"{1000 * oracle_cost:.4f}", f"{oracle_quality:.4f}"])
    best, rows = summary_rows(data, curves)
    return "\n\n".join(
        [
            f"{data.name}: {len(data.prompts)} prompts, {len(data.models)} models; cost: {data.cost_source}",
            markdown(["model", "USD / 1k prompts", "mean quality"], fixed),
            markdown(
                [
                    "router",
                    "gap closed",
                    f"quality at {best}'s cost ({means.max():.4f})",
                    "quality kept at 50% of that cost",
                    "most capable (predicted)",
                ],
                rows,
            ),
        ]
    )


def plot(data: ModelSet, curves: list[Curve], path: Path) -> None:
    """PNG: each router's quality/cost curve, the fixed models, the best fixed model at each cost,
    random and oracle; cost on a log axis in USD per 1000 prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means, costs = data.quality.mean(axis=0), 1000 * data.costs.mean(axis=0)
    figure, axes = plt.subplots(figsize=(8, 5.5))
    order = np.argsort(costs)
    staircase = np.maximum.accumulate(means[order])
    axes.step(costs[order], staircase, where="post", color="grey", linestyle="--", label="best fixed model at this cost")
    axes.scatter(costs, means, color="black", zorder=3, s=18)
    for model, cost, quality in zip(data.models, costs, means, strict=True):
        axes.annotate(model, (cost, quality), fontsize=7, xytext=(3, 3), textcoords="offset points")
    oracle_cost, oracle_quality = oracle_point(data)
    axes.scatter([1000 * oracle_cost], [oracle_quality], marker="*", s=120, color="black", label="oracle")
    axes.scatter([costs.mean()], [means.mean()], marker="x", color="grey", label="random model")
    for curve in curves:
        axes.plot(1000 * curve.costs, curve.qualities, label=f"{curve.name} (threshold sweep)")
    if (costs > 0).all():  # prices of 0 (local models) have no place on a log scale
        axes.set_xscale("log")
    axes.set_xlabel(f"USD per 1000 prompts ({data.cost_source})")
    axes.set_ylabel("mean quality")
    axes.set_title(f"{data.name}: {len(data.prompts)} prompts, {len(data.models)} models", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    save_figure(figure, path)


def run(args: argparse.Namespace) -> int:
    """The ``routegate eval --models`` command."""
    from routers.embedding import use_disk_cache

    check_routers(args.router)
    use_disk_cache()
    data = load_model_set(args.data, args.models, args.prices, args.output_tokens, args.split)
    path = args.plot or Path(f"eval-models-{data.name}-{args.split}.png")
    check_writable(path, replaced=True)  # before the scoring, as a given --plot is
    curves = [
        routing_curve(
            name,
            router_predictions(
                name, data, Path(args.checkpoint_dir), args.device, args.max_chars, args.batch_size or SCORE_BATCH
            ),
            data,
            logits=True,
        )
        for name in args.router
    ]
    if data.train_prompts:
        curves.append(routing_curve(f"kNN (k={args.knn})", knn_predictions(data, args.knn, args.device), data, logits=False))
    else:
        print(f"{data.name} has no train records: no kNN baseline")
    print(report(data, curves))
    plot(data, curves, path)
    print(f"\nplot: {path}")
    return 0
