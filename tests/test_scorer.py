"""The Scorer's micro-batching, parallel scoring threads, score cache and error delivery, with a
router that records the batches it is given."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from routers.base import Router
from server.scoring import Scorer


class RecordingRouter(Router):
    """Scores a text by its length; records each batch and how many batches were inside ``score`` at once.

    With ``meet`` > 1, each call waits (up to 2 s) until that many calls are inside ``score`` together;
    with ``hold``, calls wait (up to 5 s) until ``release``.
    """

    name = "recording"

    def __init__(self, meet: int = 1, hold: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.most_at_once = 0
        self._inside = 0
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(meet, timeout=2) if meet > 1 else None
        self._gate = threading.Event() if hold else None

    def release(self) -> None:
        """Let held calls go on."""
        if self._gate is not None:
            self._gate.set()

    def score(self, prompts: Sequence[str]) -> list[float]:
        with self._lock:
            self.batches.append(list(prompts))
            self._inside += 1
            self.most_at_once = max(self.most_at_once, self._inside)
        try:
            if self._barrier is not None:
                self._barrier.wait()
            if self._gate is not None:
                self._gate.wait(5)
            if any(prompt == "fail" for prompt in prompts):
                raise RuntimeError("router broke")
            return [len(prompt) / 100 for prompt in prompts]
        finally:
            with self._lock:
                self._inside -= 1


async def queue_behind_a_held_batch(
    scorer: Scorer, router: RecordingRouter, first: str, others: list[str]
) -> tuple[asyncio.Task[float], list[asyncio.Task[float]]]:
    """Score ``first`` and hold its batch inside the router while ``others`` queue up; then let it go."""
    held = asyncio.create_task(scorer.score(first))
    while not router.batches:
        await asyncio.sleep(0.01)
    queued = [asyncio.create_task(scorer.score(text)) for text in others]
    await asyncio.sleep(0.05)
    router.release()
    return held, queued


async def test_texts_queued_while_a_batch_runs_are_scored_together_up_to_the_batch_size() -> None:
    router = RecordingRouter(hold=True)
    scorer = Scorer(router, batch_size=3, batch_wait=0.0, cache_size=0, threads=1)
    try:
        first, rest = await queue_behind_a_held_batch(scorer, router, "a", ["b" * n for n in range(1, 6)])
        scores = await asyncio.gather(first, *rest)
    finally:
        await scorer.aclose()
    assert scores == [0.01, 0.01, 0.02, 0.03, 0.04, 0.05]
    assert router.batches == [["a"], ["b", "bb", "bbb"], ["bbbb", "bbbbb"]]


@pytest.mark.parametrize("threads", [1, 2])
async def test_with_two_scoring_threads_two_batches_are_scored_at_once(threads: int) -> None:
    router = RecordingRouter(meet=2)  # each call returns only once two calls are inside score
    scorer = Scorer(router, batch_size=1, batch_wait=0.0, cache_size=0, threads=threads)
    try:
        results = await asyncio.gather(scorer.score("x"), scorer.score("yy"), return_exceptions=True)
    finally:
        await scorer.aclose()
    if threads == 2:
        assert results == [0.01, 0.02]
        assert router.most_at_once == 2
    else:  # one thread: the second batch waits for the first, which waits for the second
        assert all(isinstance(result, threading.BrokenBarrierError) for result in results)
        assert router.most_at_once == 1


async def test_a_cached_text_is_not_scored_again() -> None:
    router = RecordingRouter()
    scorer = Scorer(router, batch_size=8, batch_wait=0.0, cache_size=4, threads=2)
    try:
        assert await scorer.score("same") == 0.04
        assert await scorer.score("same") == 0.04
    finally:
        await scorer.aclose()
    assert router.batches == [["same"]]


async def test_a_text_cached_for_one_client_is_scored_anew_for_another() -> None:
    """With client keys, a cache hit would tell a client (in the metrics, or by the time it saves)
    that another client sent the very same text: each client's scores are cached apart."""
    router = RecordingRouter()
    scorer = Scorer(router, batch_size=8, batch_wait=0.0, cache_size=4, threads=2)
    try:
        assert await scorer.score("payroll", scope="client-a") == 0.07
        assert await scorer.score("payroll", scope="client-b") == 0.07
        assert await scorer.score("payroll", scope="client-a") == 0.07
    finally:
        await scorer.aclose()
    assert router.batches == [["payroll"], ["payroll"]]


async def test_a_score_that_comes_after_its_caller_timed_out_is_kept_for_the_next_request() -> None:
    """A router slower than the score timeout: the score its batch computes for a caller that
    stopped waiting is cached, so the next request for that text has it at once instead of
    starting (and timing out) again."""
    router = RecordingRouter(hold=True)
    scorer = Scorer(router, batch_size=8, batch_wait=0.0, cache_size=4, threads=1)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await scorer.score("slow text")
        router.release()
        for _ in range(200):  # the batch finishes on its own
            if scorer.cache.get("slow text") is not None:
                break
            await asyncio.sleep(0.01)
        assert await scorer.score("slow text") == 0.09
    finally:
        await scorer.aclose()
    assert router.batches == [["slow text"]]


async def test_a_router_failure_reaches_every_request_of_its_batch_and_the_scorer_goes_on() -> None:
    router = RecordingRouter(hold=True)
    scorer = Scorer(router, batch_size=8, batch_wait=0.0, cache_size=0, threads=1)
    try:
        held, failing = await queue_behind_a_held_batch(scorer, router, "hold", ["ok", "fail"])
        assert await held == 0.04
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
        assert await scorer.score("after") == 0.05
    finally:
        await scorer.aclose()
    assert router.batches == [["hold"], ["ok", "fail"], ["after"]]
