"""Latency of one Lookahead routing decision on CPU, batch 1 and batched.

    python bench/lookahead_speed.py [--checkpoint-dir routers/checkpoints] [--repeats 20]

Prints, per batch size, the median seconds per call and per prompt, and the per-prompt ratio
against batch 1. Prompts are real dev prompts (routellm-gsm8k and lookahead-alpacaeval), scored
for the GPT-4 / Mixtral pair as the gateway does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from routers.data import load_records  # noqa: E402
from routers.registry import CHECKPOINT_ROOT, RouterOptions, load_router  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATA = [str(DATA_DIR / "routellm-gsm8k.jsonl.gz"), str(DATA_DIR / "lookahead-alpacaeval.jsonl.gz")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint-dir", type=Path, default=CHECKPOINT_ROOT)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data", nargs="+", default=DATA)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    router = load_router("lookahead", RouterOptions(checkpoint_dir=args.checkpoint_dir, device="cpu"))
    prompts = [record["prompt"] for record in load_records(args.data, split="dev")]
    router.score(prompts[:8])  # warm-up
    rows = []
    for batch_size in args.batch_sizes:
        timings = []
        for repeat in range(args.repeats):
            start = (repeat * batch_size) % max(1, len(prompts) - batch_size)
            batch = prompts[start : start + batch_size]
            began = time.perf_counter()
            router.score(batch)
            timings.append(time.perf_counter() - began)
        median = statistics.median(timings)
        rows.append((batch_size, median, median / batch_size))
    base = rows[0][2]
    print(f"lookahead router, CPU, {args.threads} thread(s), {args.repeats} calls per batch size, median")
    print(f"{'batch':>6} {'s/call':>10} {'ms/prompt':>10} {'vs batch 1':>11}")
    for batch_size, per_call, per_prompt in rows:
        print(f"{batch_size:>6} {per_call:>10.4f} {per_prompt * 1000:>10.2f} {per_prompt / base:>10.2f}x")


if __name__ == "__main__":
    main()
