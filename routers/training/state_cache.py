"""Per-prompt arrays computed by a frozen model, cached outside the repository by text hash.

Trainers that run a frozen network once per training prompt (the bert trainer's frozen layers,
the causal_llm trainer's base LM) keep each prompt's output in ``~/.cache/routegate/<name>/``,
so a retrain with other options skips the frozen network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from routers import embedding
from routers.embedding import text_key


def cached_states(
    name: str, prompts: Sequence[str], compute: Callable[[list[str]], Iterable[np.ndarray]], batch_size: int, description: str
) -> list[np.ndarray]:
    """One array per prompt from ``compute`` (a batch of prompts in, one array per prompt out),
    computed only for prompts not yet in the cache ``name``, in batches of similar length."""
    cache = embedding.CACHE_DIR / name  # read at call time: tests point it elsewhere
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / f"{text_key(prompt)}.npy" for prompt in prompts]
    todo = sorted({prompt for prompt, path in zip(prompts, paths, strict=True) if not path.exists()}, key=len)
    for start in tqdm(range(0, len(todo), batch_size), desc=description, unit="batch"):
        batch = todo[start : start + batch_size]
        for prompt, state in zip(batch, compute(batch), strict=True):
            path = cache / f"{text_key(prompt)}.npy"
            partial = path.with_suffix(f".{os.getpid()}.tmp")  # a run killed mid-write leaves no broken entry
            with partial.open("wb") as file:
                np.save(file, state)
            partial.replace(path)
    return [np.load(path) for path in paths]
