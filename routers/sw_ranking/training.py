"""``routegate train sw_ranking``: store the training prompts' similarity vectors and every model's score on them."""

from __future__ import annotations

import argparse
from pathlib import Path

from routers.arguments import non_negative_float, positive_float, positive_int, torch_device
from routers.checkpoint import published_path, write_manifest
from routers.data import RecordError, comparable, load_records, sample_records
from routers.features import FEATURE_NAMES
from routers.format_failures import format_failures
from routers.neighbours import DIMS, FEATURE_WEIGHT, RIDGE, TAU, NeighbourTable
from routers.training.pairwise import add_training_data_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``routegate train sw_ranking``."""
    add_training_data_arguments(parser)
    parser.add_argument(
        "--tau", type=positive_float, default=TAU, help="similarity sharpness: weight = exp(tau * (sim - max_sim))"
    )
    parser.add_argument(
        "--ridge", type=positive_float, default=RIDGE, help="pull of each prompt's margin toward the pair's overall rate"
    )
    parser.add_argument(
        "--feature-weight", type=non_negative_float, default=FEATURE_WEIGHT, help="weight of the structural features"
    )
    parser.add_argument("--dims", type=positive_int, default=DIMS, help="principal components of the embedding in the similarity")
    parser.add_argument("--device", type=torch_device, default="auto", help="auto, cpu or cuda (encoder)")


def run(args: argparse.Namespace) -> None:
    """Write ``neighbours.npz`` and ``router.json`` into ``args.out``."""
    if len({Path(path).resolve() for path in args.data}) < len(args.data):
        raise SystemExit("routegate train sw_ranking: a file is named twice; its neighbour table holds each file's prompts once")
    every_record = {path: comparable(load_records([path], "train")) for path in args.data}
    for path in [path for path, records in every_record.items() if not records]:
        print(f"sw_ranking: skipping {path}: no train record scores two models")
        del every_record[path]
    if not every_record:
        raise RecordError(f"no 'train' record of {[str(path) for path in args.data]} scores two models")
    records_by_file = {path: sample_records(records, args.limit) for path, records in every_record.items()}
    # format failures are judged on every train record of a file, as mf's are, not on --limit's sample
    failures = {path: format_failures(records) for path, records in every_record.items()}
    table = NeighbourTable.build(records_by_file, args.dims, args.feature_weight, args.device, failures)
    records = sum(map(len, records_by_file.values()))
    print(f"sw_ranking: {records} records, {len(table.vectors)} rows (distinct prompts per file), {len(table.models)} models")
    args.out.mkdir(parents=True, exist_ok=True)
    table.save(args.out)
    write_manifest(
        args.out,
        "sw_ranking",
        list(every_record),  # the files it learned from
        table.models,
        features=["minilm-embedding", *FEATURE_NAMES],
        tau=args.tau,
        ridge=args.ridge,
        feature_weight=args.feature_weight,
        dims=int(table.similarity.basis.shape[0]),
        limit=args.limit,
        prompts=len(table.vectors),  # rows: distinct prompts per file
    )
    print(f"sw_ranking: wrote {published_path(args.out)}")
