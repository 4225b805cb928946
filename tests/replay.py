"""Replaying a stream of real prompts through a running routegate, for the target-share test and
``bench/target_share_plot.py``.

The stream shifts its mix: MMLU questions first, then prompts the shipped ``mf`` router scores
higher (LLMRouter's task mix and Winogrande sentences), all from the dev split of
``$ROUTEGATE_DATA_DIR`` (default ``../shared/data`` beside the repository).
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass
from pathlib import Path

from openai import AsyncOpenAI

from routers.data import iter_records

REPO = Path(__file__).resolve().parent.parent
EASY = ("routellm-mmlu.jsonl.gz",)
HARD = ("llmrouter.jsonl.gz", "routerbench-winogrande.jsonl.gz")


def data_dir() -> Path:
    """Where the routing records are: ``$ROUTEGATE_DATA_DIR``, else ``../shared/data``."""
    return Path(os.environ.get("ROUTEGATE_DATA_DIR") or REPO.parent / "shared" / "data")


def _dev_prompts(name: str) -> list[str]:
    return [record["prompt"] for record in iter_records(data_dir() / name) if record.get("split") == "dev"]


def shifted_stream(easy: int, hard: int, seed: int = 0) -> list[str]:
    """``easy`` MMLU prompts, then ``hard`` prompts of the second mix, shuffled within each phase."""
    rng = random.Random(seed)
    easy_pool = _dev_prompts(EASY[0])
    hard_pool = [prompt for name in HARD for prompt in _dev_prompts(name)]
    return rng.sample(easy_pool, easy) + rng.sample(hard_pool, hard)


@dataclass(frozen=True)
class Routed:
    """What the proxy decided for one prompt of the stream."""

    index: int
    tier: str
    score: float
    threshold: float
    effective_target: float


async def replay(api: str, model: str, prompts: list[str], concurrency: int = 16) -> list[Routed]:
    """Send ``prompts`` in order, ``concurrency`` at a time, with the async openai SDK; the decisions in stream order."""
    client = AsyncOpenAI(base_url=api, api_key="unused", max_retries=0)
    slots = asyncio.Semaphore(concurrency)

    async def send(index: int, prompt: str) -> Routed:
        async with slots:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=16
            )
        headers = raw.headers
        return Routed(
            index,
            headers["x-routegate-tier"],
            float(headers["x-routegate-score"]),
            float(headers["x-routegate-threshold"]),
            float(headers["x-routegate-effective-target"]),
        )

    try:
        return list(await asyncio.gather(*(send(index, prompt) for index, prompt in enumerate(prompts))))
    finally:
        await client.close()
