"""The router commands of ``routegate``: train, score, eval and calibrate."""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from routers.arguments import positive_int
from routers.base import Router
from routers.output_files import check_writable, replaced_on_success
from routers.registry import (
    CHECKPOINT_ROOT,
    RouterOptions,
    available_routers,
    installed_routers,
    load_router_or_exit,
    load_trainer,
    router_models_or_exit,
    trainable_routers,
)

#: characters of a prompt the gateway gives its router (server.settings' max_router_chars default)
MAX_ROUTER_CHARS = 4000
#: what a plot can be written as
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def add_router_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``score``, ``eval`` and ``calibrate`` to the ``routegate`` parser."""
    train = subparsers.add_parser(
        "train",
        help="train a router from record files",
        description="Train a router. `routegate train ROUTER --help` lists that router's options.",
    )
    train.add_argument("router", choices=trainable_routers(), help="router to train")
    train.add_argument("options", nargs=argparse.REMAINDER, help="the router's own options (--data FILE... --out DIR ...)")
    train.set_defaults(run=_train)

    score = subparsers.add_parser("score", help="score the prompts of a record file")
    _router_options(score)
    score.add_argument("--router", required=True, help="router name")
    score.add_argument("--input", required=True, type=Path, help="records with id and prompt (.jsonl or .jsonl.gz)")
    score.add_argument("--output", required=True, type=Path, help='JSON lines {"id": ..., "score": ...}')
    score.add_argument("--batch-size", type=positive_int, default=64)
    _max_chars_option(score)
    score.set_defaults(run=_score)

    evaluate = subparsers.add_parser(
        "eval",
        help="APGR / CPT of routers on a record file, or across domain families (--leave-one-out), with a plot",
        description="Either --data FILE --strong M --weak M (one file, one pair), --data FILE --models A,B,C "
        "(routing among several models: quality against cost), or --leave-one-out --data-dir DIR "
        "(train on every domain family but one, APGR on the held-out family's dev records).",
    )
    _router_options(evaluate)
    evaluate.add_argument(
        "--router",
        nargs="+",
        required=True,
        help="router names (with --leave-one-out, shipped:NAME scores the shipped checkpoint without retraining)",
    )
    evaluate.add_argument("--data", type=Path, help="record file")
    evaluate.add_argument(
        "--score-as",
        nargs=2,
        metavar=("STRONG", "WEAK"),
        help="score the prompts as this pair (names the router knows), ranked against the outcomes of --strong/--weak: "
        "as a gateway scores upstreams the router knows under other names, or the default pair for upstreams it does not know",
    )
    evaluate.add_argument(
        "--by-category",
        action="store_true",
        help="also print, per record category, the strong model's lead and where each router ranks its prompts",
    )
    evaluate.add_argument(
        "--split",
        default="dev",
        help="records of this split ('all' for every record; default dev); with --leave-one-out, the held-out family's "
        "records (none of either split is trained on in its fold)",
    )
    evaluate.add_argument(
        "--plot",
        type=Path,
        help="PNG to write (default eval-<data>-<split>.png; eval-models-<data>-<split>.png with --models; leave-one-out.png)",
    )
    evaluate.add_argument("--batch-size", type=positive_int, help="prompts scored at once (default 64; 256 with --leave-one-out)")
    evaluate.add_argument(
        "--leave-one-out",
        action="store_true",
        help="cross-domain evaluation over the data's 19 record files, found by name in --data-dir, in five families",
    )
    evaluate.add_argument("--data-dir", type=Path, help="folder of the record files (--leave-one-out; default ../shared/data)")
    evaluate.add_argument("--families", nargs="+", help="held-out families to run (default all)")
    evaluate.add_argument("--work-dir", type=Path, help="fold data and checkpoints (--leave-one-out; default leave-one-out)")
    evaluate.add_argument(
        "--train-options",
        nargs="*",
        metavar="ROUTER=OPTIONS",
        help="extra trainer options per router, e.g. 'mf=--epochs 6' (--leave-one-out)",
    )
    evaluate.add_argument("--table", type=Path, help="also write the Markdown table here (--leave-one-out)")
    evaluate.add_argument(
        "--max-prompts", type=positive_int, help="a seeded sample of at most this many prompts per pair (--leave-one-out)"
    )
    evaluate.add_argument("--models", help="route among these models of --data (comma-separated, or 'all'): quality/cost curves")
    evaluate.add_argument("--prices", help="MODEL=IN/OUT,... USD per 1M tokens (--models; default: routers/evaluation/prices.py)")
    evaluate.add_argument(
        "--output-tokens", type=positive_int, help="output tokens per call for costs (--models; default: recorded ones, else 256)"
    )
    evaluate.add_argument("--knn", type=positive_int, help="neighbours of the kNN baseline (--models; default 20)")
    _max_chars_option(evaluate)
    evaluate.set_defaults(run=_eval, strong=None, weak=None)  # filled in for one pair, refused with --models and --leave-one-out

    calibrate = subparsers.add_parser("calibrate", help="threshold that sends a given share of prompts to the strong model")
    _router_options(calibrate)
    calibrate.add_argument("--router", required=True)
    calibrate.add_argument(
        "--data", required=True, type=Path, nargs="+", help="record files with a prompt (e.g. your own prompt log)"
    )
    calibrate.add_argument(
        "--per-file",
        type=positive_int,
        help="a seeded random sample of at most this many prompts per file (a mixed reference set)",
    )
    calibrate.add_argument("--strong-fraction", required=True, type=float, help="share of prompts for the strong model, 0..1")
    calibrate.add_argument("--split", default="all", help="records of this split (default all)")
    calibrate.add_argument("--batch-size", type=positive_int, default=64)
    _max_chars_option(calibrate)
    calibrate.add_argument(
        "--write",
        type=Path,
        metavar="FILE",
        help="also write the threshold of every share for this pair, into FILE beside its other pairs' (the gateway "
        "seeds target routes from the entry of the pair it scores in <checkpoint_dir>/<router>/calibration.json)",
    )
    calibrate.set_defaults(run=_calibrate)


def check_device(device: str) -> None:
    """SystemExit, before any work, when ``device`` names CUDA and torch finds none."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"routegate: --device {device}, but torch finds no CUDA device here (use --device auto or cpu)")


def _max_chars_option(parser: argparse.ArgumentParser) -> None:
    """``--max-chars``: how much of each prompt a command that stands in for the gateway scores."""
    parser.add_argument(
        "--max-chars",
        type=positive_int,
        default=MAX_ROUTER_CHARS,
        help=f"score the first this many characters of each prompt (default {MAX_ROUTER_CHARS}, the gateway's default "
        "ROUTEGATE_MAX_ROUTER_CHARS with ROUTEGATE_ROUTE_ON=last_user; give your gateway's value if you changed it)",
    )


def _router_options(parser: argparse.ArgumentParser) -> None:
    defaults = RouterOptions()
    parser.add_argument("--checkpoint-dir", type=Path, default=CHECKPOINT_ROOT, help="directory holding <router>/ checkpoints")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--strong", default=defaults.strong_model, help="strong model (name in the data / the router's training)")
    parser.add_argument("--weak", default=defaults.weak_model, help="weak model (name in the data / the router's training)")


def _load(name: str, args: argparse.Namespace, pair: Sequence[str] | None = None) -> Router:
    """Router ``name`` scoring ``pair`` (default ``--strong``/``--weak``)."""
    from routers.embedding import use_disk_cache

    use_disk_cache()
    from routers.model_names import match_model, normal_form

    strong, weak = pair or (args.strong, args.weak)
    check_device(args.device)
    if name not in available_routers():
        raise SystemExit(f"routegate: unknown router '{name}'; known: {available_routers()}")
    options = RouterOptions(checkpoint_dir=args.checkpoint_dir, device=args.device, strong_model=strong, weak_model=weak)
    router = load_router_or_exit(name, options)
    models = router_models_or_exit(name, args.checkpoint_dir)
    if (match_model(strong, models) or normal_form(strong)) == (match_model(weak, models) or normal_form(weak)):
        raise SystemExit(f"routegate: --strong {strong!r} and --weak {weak!r} name one model: a router scores two")
    return router


def score_all(router: Router, prompts: list[str], batch_size: int, label: str) -> list[float]:
    """Scores of ``prompts`` (in their order) with a progress bar; batches group prompts of similar
    length, so that little of each batch is padding. SystemExit for a score outside [0, 1] (NaN
    included): a broken checkpoint, whose numbers would look plausible in a table."""
    from tqdm import tqdm

    by_length = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    scores = [0.0] * len(prompts)
    with tqdm(total=len(prompts), desc=label, unit="prompt") as progress:
        for start in range(0, len(prompts), batch_size):
            batch = by_length[start : start + batch_size]
            for index, score in zip(batch, router.score([prompts[index] for index in batch]), strict=True):
                scores[index] = float(score)
                if not 0.0 <= scores[index] <= 1.0:
                    raise SystemExit(
                        f"routegate: router {router.name} scored {scores[index]} (not in [0, 1]): its checkpoint is broken"
                    )
            progress.update(len(batch))
    return scores


def _train(args: argparse.Namespace) -> int:
    run_trainer(args.router, args.options)
    return 0


def run_trainer(router: str, argv: list[str]) -> None:
    """Run ``routegate train ROUTER ARGV...``: the router's trainer with its own options."""
    from routers.checkpoint import check_same_router, staged_checkpoint, training_command

    module = load_trainer(router)
    args = trainer_parser(router, module).parse_args(argv)
    check_device(getattr(args, "device", "auto"))
    check_same_router(router, args.out)
    with training_command(router, argv), staged_checkpoint(args.out) as staging:
        module.run(argparse.Namespace(**{**vars(args), "out": staging}))


def trainer_parser(router: str, module: ModuleType | None = None) -> argparse.ArgumentParser:
    """The parser of ``routegate train ROUTER``'s options (of ``module``, the router's trainer)."""
    module = module or load_trainer(router)
    parser = argparse.ArgumentParser(prog=f"routegate train {router}", description=(module.__doc__ or "").strip())
    module.add_arguments(parser)
    return parser


def _select(path: Path, split: str, scores: bool = True) -> list[dict]:
    from routers.data import load_records

    records = load_records([path], None if split == "all" else split, scores, require=("prompt",))
    if not records:
        hint = " (records without a 'split' are in none: --split all reads every record)" if split != "all" else ""
        raise SystemExit(f"routegate: no '{split}' records in {path}{hint}")
    return records


def _file_spelling(model: str, records: list[dict]) -> str:
    """How the file spells ``model`` (``gpt-4o`` is ``gpt-4o-2024-05-13`` there); as given when unknown."""
    from routers.model_names import match_model

    known = {name for record in records for name in record.get("scores") or {}}
    return model if model in known else match_model(model, known) or model


def _score(args: argparse.Namespace) -> int:
    from routers.data import iter_records

    records = [(record["id"], record["prompt"]) for record in iter_records(args.input, scores=False, require=("id", "prompt"))]
    if not records:
        raise SystemExit(f"routegate: no records in {args.input}")
    check_writable(args.output, replaced=True)
    router = _load(args.router, args)
    print(f"score {args.router}: {args.strong} (strong) vs {args.weak} (weak)", file=sys.stderr)
    prompts = [prompt[: args.max_chars] for _, prompt in records]
    scores = score_all(router, prompts, args.batch_size, f"score {args.router}")
    opener = gzip.open if args.output.suffix == ".gz" else open  # a .gz name is read back as gzip
    with replaced_on_success(args.output) as staging, opener(staging, "wt", encoding="utf-8") as output:
        for (record_id, _), value in zip(records, scores, strict=True):
            output.write(json.dumps({"id": record_id, "score": value}) + "\n")
    print(f"wrote {len(scores)} scores to {args.output}", file=sys.stderr)  # not into an --output of /dev/stdout
    return 0


def _eval(args: argparse.Namespace) -> int:
    check_device(args.device)
    if args.plot is not None and args.plot.suffix.lower() not in PLOT_SUFFIXES:
        raise SystemExit(f"routegate eval: --plot {args.plot} must end in {', '.join(PLOT_SUFFIXES)}")
    for option, given in (
        ("--strong", args.strong),
        ("--weak", args.weak),
        ("--score-as", args.score_as),
        ("--by-category", args.by_category),
    ):
        if given and (args.leave_one_out or args.models):
            raise SystemExit(f"routegate eval: {option} applies to one pair (--data FILE --strong M --weak M)")
    defaults = RouterOptions()
    args.strong, args.weak = args.strong or defaults.strong_model, args.weak or defaults.weak_model
    _check_mode_options(args)
    for path in (args.plot, args.table):
        if path is not None:
            check_writable(path, replaced=True)
    if args.leave_one_out:
        return _eval_leave_one_out(args)
    if args.data is None:
        raise SystemExit("routegate eval: --data FILE is required (or --leave-one-out)")
    if args.models:
        from routers.evaluation.multi_model import run

        return run(args)
    from routers.data import pair_records
    from routers.evaluation.metrics import PairQuality, apgr, cpt
    from routers.evaluation.plot import plot_routing_curves

    selected = _select(args.data, args.split)
    strong, weak = (_file_spelling(name, selected) for name in (args.strong, args.weak))
    records = pair_records(selected, strong, weak)
    if not records:
        raise SystemExit(f"routegate: no records in {args.data} score both {args.strong!r} and {args.weak!r}")
    plot = args.plot or Path(f"eval-{args.data.name.split('.')[0]}-{args.split}.png")
    check_writable(plot, replaced=True)  # before the scoring, as a given --plot is
    quality = PairQuality.of([r["scores"][strong] for r in records], [r["scores"][weak] for r in records])
    prompts = [record["prompt"] for record in records]
    print(f"{args.data.name} ({args.split}): {len(records)} prompts, strong {strong}, weak {weak}")
    if args.score_as:
        print(f"  scored as the pair {args.score_as[0]} vs {args.score_as[1]}")
    print(
        f"  strong mean {quality.strong.mean():.4f}  weak mean {quality.weak.mean():.4f}  oracle mean {quality.oracle_mean:.4f}"
    )
    if not quality.separable:
        print(
            f"  warning: the strong model leads by {quality.gap:.4f} ({quality.gap_z:.1f} standard errors) on these "
            "prompts: APGR and CPT divide by that lead, so they mean little here (NaN when there is no lead)"
        )
    if quality.gap > 0:
        print("  random baseline: APGR 0.5000, CPT(50%) 0.5000, CPT(80%) 0.8000")
    curves: dict[str, list[float]] = {"prompt length (baseline)": [float(len(p)) for p in prompts]}
    routers = {name: _load(name, args, args.score_as) for name in args.router}  # all found before any is scored
    routed = [prompt[: args.max_chars] for prompt in prompts]  # what the gateway gives its router
    for name, router in routers.items():
        curves[name] = score_all(router, routed, args.batch_size or 64, f"eval {name}")
    print(f"  {'router':<26} {'APGR':>7} {'CPT(50%)':>9} {'CPT(80%)':>9}")
    for name, scores in curves.items():
        print(f"  {name:<26} {apgr(scores, quality):7.4f} {cpt(scores, quality, 0.5):9.4f} {cpt(scores, quality, 0.8):9.4f}")
    if args.by_category:
        from routers.evaluation.categories import category_table

        print(category_table([record.get("category") for record in records], quality, curves))
    plot_routing_curves(curves, quality, plot, title=f"{args.data.name} ({args.split}): {strong} vs {weak}")
    print(f"  plot: {plot}")
    return 0


#: eval options that only one way of running it reads, and the default each stands for
_LEAVE_ONE_OUT_OPTIONS: dict[str, object] = {
    "data_dir": Path("../shared/data"),
    "families": None,
    "work_dir": Path("leave-one-out"),
    "train_options": [],
    "table": None,
    "max_prompts": None,
}
_MODELS_OPTIONS: dict[str, object] = {"prices": "", "output_tokens": None, "knn": 20}


def _check_mode_options(args: argparse.Namespace) -> None:
    """SystemExit for an option of another way of running ``eval`` (it would be ignored); then
    fill in the defaults of the options left out."""
    for options, mode, chosen in (
        (_LEAVE_ONE_OUT_OPTIONS, "--leave-one-out", args.leave_one_out),
        (_MODELS_OPTIONS, "--models", bool(args.models)),
    ):
        given = [f"--{name.replace('_', '-')}" for name in options if getattr(args, name) is not None]
        if given and not chosen:
            raise SystemExit(f"routegate eval: {' '.join(given)} only apply with {mode}")
        for name, default in options.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    if args.leave_one_out and args.data is not None:
        raise SystemExit("routegate eval: --leave-one-out reads every file in --data-dir; --data names one file to evaluate")


def _eval_leave_one_out(args: argparse.Namespace) -> int:
    from routers.embedding import use_disk_cache
    from routers.evaluation.families import FAMILIES
    from routers.evaluation.leave_one_out import check_train_options, parse_train_options, run_leave_one_out
    from routers.evaluation.plot import plot_leave_one_out

    families = args.families or list(FAMILIES)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"routegate eval: unknown families {unknown}; known: {list(FAMILIES)}")
    retrained = sorted({name for name in args.router if not name.startswith("shipped:")} - set(trainable_routers()))
    if retrained:
        raise SystemExit(
            f"routegate eval: {retrained} cannot be retrained per fold; trainable: {trainable_routers()} "
            "(shipped:NAME scores a shipped checkpoint as it is)"
        )
    shipped = [name.removeprefix("shipped:") for name in args.router if name.startswith("shipped:")]
    if args.split not in ("dev", "train", "all"):
        raise SystemExit(f"routegate eval: --leave-one-out --split is dev, train or all, not {args.split!r}")
    if shipped and args.split != "dev":
        raise SystemExit(
            f"routegate eval: --split {args.split} scores records that shipped checkpoints were trained on: "
            "shipped:NAME is measured on dev records only"
        )
    installed = installed_routers(args.checkpoint_dir)
    missing = sorted(name for name in shipped if name not in installed)
    if missing:
        raise SystemExit(f"routegate eval: no checkpoint in {args.checkpoint_dir} for {missing}; installed: {installed}")
    train_options = parse_train_options(args.train_options)
    check_train_options(train_options, [name for name in args.router if not name.startswith("shipped:")])
    plot = args.plot or Path("leave-one-out.png")
    check_writable(plot, replaced=True)  # before the folds, as a given --plot is
    use_disk_cache()
    table = run_leave_one_out(
        args.router,
        args.data_dir,
        args.work_dir,
        families,
        args.device,
        args.batch_size or 256,
        train_options,
        args.checkpoint_dir,
        args.max_prompts,
        args.split,
        args.max_chars,
    )
    text = table.format()
    print(text)
    if args.table is not None:  # before the plot: a plot that cannot be written loses no table
        with replaced_on_success(args.table) as staging:
            staging.write_text(text + "\n")
    plot_leave_one_out(table, plot)
    print(f"plot: {plot}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from routers.calibration import check_calibration_target, format_threshold, threshold_for_share, write_calibration
    from routers.model_names import match_model

    if not 0.0 <= args.strong_fraction <= 1.0:
        raise SystemExit("routegate: --strong-fraction must be in [0, 1]")
    if args.write is not None:
        check_writable(args.write, replaced=True)
        check_calibration_target(args.write, args.data)
    prompts = []
    for path in args.data:
        selected = [record["prompt"][: args.max_chars] for record in _select(path, args.split, scores=False)]
        if args.per_file is not None and len(selected) > args.per_file:
            selected = random.Random(0).sample(selected, args.per_file)
        prompts += selected
    router = _load(args.router, args)
    print(f"calibrate {args.router}: {args.strong} (strong) vs {args.weak} (weak)", file=sys.stderr)
    scores = score_all(router, prompts, args.batch_size, f"calibrate {args.router}")
    threshold = threshold_for_share(scores, args.strong_fraction)
    share = sum(score >= threshold for score in scores) / len(scores)
    print(f"threshold {threshold!r} sends {share:.1%} of {len(scores)} prompts to the strong model")
    print(
        f"ROUTEGATE_ROUTER={args.router} ROUTEGATE_THRESHOLD={threshold!r}  (or the model name "
        f"router-{args.router}-{format_threshold(threshold)})"
    )
    print(
        f"  for a gateway whose {args.router} scores {args.strong} vs {args.weak} (its /ready and GET /v1/routers "
        "name the pair it scores); another pair's scores have another scale: give its models with --strong and --weak"
    )
    if args.write is not None:
        data = [path.name for path in args.data]
        known = router_models_or_exit(args.router, args.checkpoint_dir)
        write_calibration(
            args.write,
            scores,
            router=args.router,
            strong=match_model(args.strong, known) or args.strong,  # the router's names, as the gateway's pair
            weak=match_model(args.weak, known) or args.weak,
            data=data,
            split=args.split,
            per_file=args.per_file,
        )
        print(f"  calibration of every share written to {args.write}")
    return 0
