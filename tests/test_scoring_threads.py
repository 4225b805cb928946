"""Loading a router holds numpy's BLAS to one thread (its per-core threads spin on the cores torch
and the event loop need) and gives torch the configured thread count, in the thread that scores.

Measured in a fresh process (``python -m tests.test_scoring_threads``): BLAS thread limits are
process state that other tests in this process may have set."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from routers import registry
from routers.base import Router
from routers.registry import RouterOptions
from server.scoring import ScorerPool, available_cores, scoring_threads

REPO = Path(__file__).resolve().parent.parent
SEEN: list[dict[str, object]] = []


class ThreadCountingRouter(Router):
    """Records, from inside ``score``, the BLAS and torch thread counts of the scoring thread."""

    name = "thread-counting"

    @classmethod
    def from_options(cls, options: RouterOptions) -> ThreadCountingRouter:
        return cls()

    def score(self, prompts: Sequence[str]) -> list[float]:
        np.ones((64, 64)) @ np.ones((64, 64))
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        SEEN.append({"blas": blas, "torch": torch.get_num_threads()})
        return [0.5 for _ in prompts]


def measure(torch_threads: int) -> dict[str, object]:
    """Load the router through a ScorerPool, score one text; what the router saw while scoring it."""
    registry.register(ThreadCountingRouter.name, f"{__name__}:ThreadCountingRouter.from_options")

    async def score() -> float:
        pool = ScorerPool(RouterOptions(), batch_size=8, batch_wait=0.0, cache_size=0, torch_threads=torch_threads)
        try:
            return await (await pool.get(ThreadCountingRouter.name)).score("hello")
        finally:
            await pool.aclose()

    assert asyncio.run(score()) == 0.5
    return SEEN[-1]  # the request's score, after the warm-up's


def test_the_scoring_thread_uses_one_blas_thread_and_the_configured_torch_threads() -> None:
    environment = {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}  # as on a 2-core machine
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_scoring_threads", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **environment},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["blas"] and all(count == 1 for count in seen["blas"])
    assert seen["torch"] == 3


POOL_LOAD = """
import asyncio, json, sys
from routers.registry import RouterOptions
from server.scoring import ScorerPool

async def load():
    pool = ScorerPool(RouterOptions(device="auto"), batch_size=8, batch_wait=0.0, cache_size=0, score_threads={threads})
    await pool.get("{router}")
    await pool.aclose()

asyncio.run(load())
torch = sys.modules.get("torch")
print(json.dumps({{"torch": torch.get_num_threads() if torch else None}}))
"""


def torch_threads_after_loading(router: str, score_threads: int, **environment: str) -> int | None:
    """In a fresh process: torch's thread count once a ScorerPool loaded ``router`` (None: no torch)."""
    result = subprocess.run(
        [sys.executable, "-c", POOL_LOAD.format(router=router, threads=score_threads)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **environment},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["torch"]


def test_the_default_router_gets_the_torch_thread_share_though_it_imports_torch_lazily() -> None:
    """``mf`` imports torch only when its encoder loads: the limit must follow that, not precede it."""
    expected = max(1, (available_cores() - 1) // 2)  # the cores less one, shared by the two scoring threads
    assert torch_threads_after_loading("mf", 2, OMP_NUM_THREADS="4") == expected


def test_loading_a_router_without_a_torch_model_does_not_import_torch() -> None:
    """``random`` serves in ~90 MiB: working out its scoring threads must not pull in torch (~180 MiB)."""
    assert torch_threads_after_loading("random", 0) is None


@pytest.mark.parametrize(("device", "expected"), [("cpu", available_cores()), ("cuda", 1), ("cuda:1", 1)])
def test_scoring_threads_default_to_one_per_core_on_the_cpu_and_one_on_a_gpu(device: str, expected: int) -> None:
    assert scoring_threads(0, device) == expected
    assert scoring_threads(3, device) == 3


@pytest.mark.parametrize(
    ("cpu_max", "cores"), [("200000 100000\n", 2), ("50000 100000\n", 1), ("150000 100000\n", 2), ("max 100000\n", 64)]
)
def test_a_container_cpu_limit_caps_the_cores_threads_are_sized_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str, cores: int
) -> None:
    """Kubernetes' ``cpu: 2`` on a 64-core node: 2 scoring threads, not 64 (affinity shows all 64)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))  # the node's cores
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert available_cores(tmp_path / "cpu.max") == cores
    assert available_cores(tmp_path / "missing") == 64


if __name__ == "__main__":
    np.ones((64, 64)) @ np.ones((64, 64))  # BLAS loaded and used by the main thread first, as in a server
    print(json.dumps(measure(int(sys.argv[1]))))
