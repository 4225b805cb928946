"""``routegate train sw_ranking``: store training prompts, their battles and global Bradley-Terry ratings."""

from __future__ import annotations

import argparse

import numpy as np
from tqdm import tqdm

from routers.checkpoint import write_manifest
from routers.embedding import cached_encode
from routers.features import FEATURE_NAMES, Standardizer, feature_matrix
from routers.sw_ranking.router import WEIGHTS, battle_statistics, similarity_vectors
from routers.training.pairwise import add_training_data_arguments, build_comparisons, load_training_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``routegate train sw_ranking``."""
    add_training_data_arguments(parser)
    parser.add_argument("--tau", type=float, default=10.0, help="similarity sharpness: weight = exp(tau * (sim - max_sim))")
    parser.add_argument("--ridge", type=float, default=0.05, help="pull of each prompt's ratings toward the global ratings")
    parser.add_argument("--feature-weight", type=float, default=3.0, help="weight of the structural features in the similarity")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (encoder)")


def fit_ratings(
    prompt: np.ndarray,
    model_a: np.ndarray,
    model_b: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    models: int,
    iterations: int = 30,
) -> np.ndarray:
    """Global Bradley-Terry ratings by Newton's method (mean rating 0, tiny ridge for identifiability)."""
    ratings = np.zeros(models)
    for _ in tqdm(range(iterations), desc="fit ratings", unit="step"):
        gradient, hessian = battle_statistics(ratings, np.zeros_like(prompt), model_a, model_b, target, weight, 1)
        step = np.linalg.solve(hessian[0].reshape(models, models).astype(np.float64) + 1e-6 * np.eye(models), gradient[0])
        ratings += step
        ratings -= ratings.mean()
        if np.abs(step).max() < 1e-7:
            break
    return ratings


def run(args: argparse.Namespace) -> None:
    """Write ``battles.npz`` and ``router.json`` into ``args.out``."""
    records = load_training_records(args.data, limit=args.limit)
    comparisons = build_comparisons(records)
    print(f"sw_ranking: {len(records)} prompts, {len(comparisons.target)} battles, {len(comparisons.models)} models")
    raw = feature_matrix(comparisons.prompts)
    standardize = Standardizer.fit(raw)
    vectors = similarity_vectors(cached_encode(comparisons.prompts, args.device), standardize(raw), args.feature_weight)
    ratings = fit_ratings(
        comparisons.prompt,
        comparisons.model_a,
        comparisons.model_b,
        comparisons.target.astype(np.float64),
        comparisons.weight.astype(np.float64),
        len(comparisons.models),
    )
    scale = np.abs(vectors).max(axis=1) / 127.0  # int8 rows keep the checkpoint small
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out / WEIGHTS,
        vectors=np.round(vectors / scale[:, None]).astype(np.int8),
        vector_scale=scale.astype(np.float32),
        feature_mean=standardize.mean,
        feature_std=standardize.std,
        ratings=ratings.astype(np.float32),
        prompt=comparisons.prompt.astype(np.int32),
        model_a=comparisons.model_a.astype(np.int16),
        model_b=comparisons.model_b.astype(np.int16),
        target=comparisons.target.astype(np.float16),
        weight=comparisons.weight.astype(np.float16),
    )
    write_manifest(
        args.out,
        "sw_ranking",
        args.data,
        comparisons.models,
        features=["minilm-embedding", *FEATURE_NAMES],
        tau=args.tau,
        ridge=args.ridge,
        feature_weight=args.feature_weight,
        limit=args.limit,
        prompts=len(records),
        battles=int(len(comparisons.target)),
    )
    print(f"sw_ranking: wrote {args.out}")
