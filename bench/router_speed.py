"""Scores per second of each router: batch 1 and batched, short (~50 tokens) and long (~500 tokens) prompts.

    python bench/router_speed.py [--device cpu|cuda] [--routers mf sw_ranking ...] [--batch 32]

Each cell is the median of ``--repeats`` timed passes over distinct prompts, with numpy's BLAS on
one thread as in ``routegate serve`` (``server.scoring.limit_inference_threads``). The first row,
``encoder``, is the shared MiniLM encoder alone: the embedding routers cannot be faster.
Routers without a checkpoint in ``--checkpoint-dir`` are listed as unavailable.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from routers.registry import CHECKPOINT_ROOT, RouterOptions, available_routers, load_router  # noqa: E402

WORDS = (
    "the a of to and in is that for it as with was on be by this are from at or an which have not but what all were when "
    "we there can been one if would more will about how up out them then she many some so these number time two may first "
    "water people way each long write could find use word call now over find day did get come made part model prompt "
    "compute integral prove theorem function python list sort graph energy protein history court law market price"
).split()


def make_prompts(count: int, words: int, seed: int) -> list[str]:
    """``count`` distinct pseudo-sentences of about ``words`` words (~1.3 tokens each)."""
    rng = random.Random(seed)
    return [f"Question {index}: " + " ".join(rng.choice(WORDS) for _ in range(words)) + "?" for index in range(count)]


def rate(score: Callable[[Sequence[str]], object], prompts: list[str], batch: int, repeats: int) -> float:
    """Median prompts per second over ``repeats`` passes, ``batch`` prompts per call."""
    score(prompts[:batch])  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(prompts), batch):
            score(prompts[start : start + batch])
        rates.append(len(prompts) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--routers", nargs="+", default=[name for name in available_routers()])
    parser.add_argument("--checkpoint-dir", type=Path, default=CHECKPOINT_ROOT)
    parser.add_argument("--batch", type=int, default=32, help="prompts per call in the batched columns")
    parser.add_argument("--prompts", type=int, default=64, help="distinct prompts per pass")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from routers import embedding

    threadpool_limits(1, user_api="blas")  # as the server does: BLAS threads left spinning slow the encoder

    short, long = make_prompts(args.prompts, 38, 1), make_prompts(args.prompts, 380, 2)
    print(
        f"device {embedding.resolve_device(args.device)}, torch threads {torch.get_num_threads()}, "
        f"{args.prompts} prompts per pass, median of {args.repeats}"
    )
    print(
        f"{'router':<12} {'load s':>7} {'short b=1':>10} {'short b=' + str(args.batch):>11} {'long b=1':>9} "
        f"{'long b=' + str(args.batch):>10}   (scores/s)"
    )
    scorers: list[tuple[str, Callable[[Sequence[str]], object], float]] = []
    started = time.perf_counter()
    embedding.encoder(args.device)
    scorers.append(("encoder", lambda texts: embedding.encode(texts, args.device), time.perf_counter() - started))
    options = RouterOptions(checkpoint_dir=args.checkpoint_dir, device=args.device)
    for name in args.routers:
        started = time.perf_counter()
        try:
            router = load_router(name, options)
        except Exception as error:  # no checkpoint shipped (causal_llm) or unknown name
            print(f"{name:<12} unavailable: {str(error)[:100]}")
            continue
        scorers.append((name, router.score, time.perf_counter() - started))
    for name, score, load_seconds in scorers:
        cells = [rate(score, prompts, batch, args.repeats) for prompts in (short, long) for batch in (1, args.batch)]
        print(f"{name:<12} {load_seconds:7.2f} {cells[0]:10.1f} {cells[1]:11.1f} {cells[2]:9.1f} {cells[3]:10.1f}", flush=True)


if __name__ == "__main__":
    main()
