"""A 30% strong-call target on a shifting stream of real prompts, through a real routegate.

The stream is 700 MMLU questions, then 700 prompts the router scores higher (see ``tests/replay.py``). The
router is the shipped ``mf`` router when its checkpoint is present, else the deterministic
stand-in of ``tests/standin_router.py``.
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

from routers.registry import installed_routers
from tests.conftest import proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream
from tests.replay import data_dir, replay, shifted_stream
from tests.tools import missing

TARGET = 0.30
EASY, HARD = 700, 700  # the MMLU phase is judged on its last 500: the first 200 let the controller settle
LEARNED = "mf"
USE_LEARNED = LEARNED in installed_routers()
ROUTER = LEARNED if USE_LEARNED else "standin"
MODULE = "server.cli" if USE_LEARNED else "tests.standin_router"


def test_realised_share_converges_to_the_target_through_a_shift(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    if not data_dir().is_dir():
        missing(f"no routing data at {data_dir()}")
    prompts = shifted_stream(EASY, HARD)
    # every prompt must be scored, however busy the CPU: no scoring overload
    env = proxy_env(strong, weak, router=ROUTER, score_cache_size="0", log_level="warning", score_timeout="120")
    with running_proxy(env, tmp_path, module=MODULE, ready_timeout=180) as proxy:
        routed = asyncio.run(replay(proxy.api, f"router-{ROUTER}-30%", prompts, concurrency=32))
    strong_flags = [decision.tier == "strong" for decision in routed]
    assert sum(strong_flags) == len(strong.received) and len(routed) - sum(strong_flags) == len(weak.received)

    last_500 = sum(strong_flags[-500:]) / 500
    settled_easy = sum(strong_flags[EASY - 500 : EASY]) / 500
    assert abs(last_500 - TARGET) <= 0.03, f"last 500: {last_500:.3f}"
    assert abs(settled_easy - TARGET) <= 0.03, f"easy phase: {settled_easy:.3f}"

    easy_threshold = statistics.median(decision.threshold for decision in routed[EASY - 200 : EASY])
    hard_threshold = statistics.median(decision.threshold for decision in routed[-200:])
    assert abs(hard_threshold - easy_threshold) >= 0.02, (easy_threshold, hard_threshold)
    # the shift is real: the easy phase's threshold would have missed the same ±3 points on the hard prompts
    stale_share = sum(decision.score >= easy_threshold for decision in routed[-500:]) / 500
    assert abs(stale_share - TARGET) > 0.03, f"a fixed threshold would have given {stale_share:.3f}"
