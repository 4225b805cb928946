"""Scoring off the event loop: concurrent requests' prompts are micro-batched into router calls
on dedicated scoring threads (several batches at once on a multi-core CPU), and scores are kept in
a per-process LRU cache. Routing among more than two models, a router gives each prompt a vector
of per-model logits (``Router.model_logits``) instead of one score; it is batched and cached the
same way."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import math
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from routers.base import Router
from routers.embedding import resolve_device
from routers.model_names import match_model
from routers.registry import RouterOptions, ScoredPair, load_router, load_router_for_pair
from server import metrics
from server.errors import APIError, retry_after
from server.settings import ModelEntry
from server.shared_scores import SharedScores, scorer_identity

log = logging.getLogger("routegate.scoring")
#: a router's answer for one text: the pair score, or one logit per ladder model
Score = float | tuple[float, ...]


class ScoreCache:
    """A bounded least-recently-used map from routed text to score."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._scores: OrderedDict[str, Score] = OrderedDict()

    def get(self, text: str) -> Score | None:
        score = self._scores.get(text)
        if score is not None:
            self._scores.move_to_end(text)
        return score

    def put(self, text: str, score: Score) -> None:
        if self.size <= 0:
            return
        self._scores[text] = score
        self._scores.move_to_end(text)
        if len(self._scores) > self.size:
            self._scores.popitem(last=False)


class ScoreQueueFull(Exception):
    """The router's queue already holds ``queue_size`` texts: this one is not scored."""


class Scorer:
    """Scores texts with one router, batching concurrent calls (at most ``batch_size`` texts,
    waiting at most ``batch_wait`` seconds for a batch to fill); up to ``threads`` batches are
    scored at once, each on its own thread. At most ``queue_size`` texts wait (0: no bound).
    With ``models`` (the router's names for the ladder's models) it gives per-model logits."""

    def __init__(
        self,
        router: Router,
        batch_size: int,
        batch_wait: float,
        cache_size: int,
        threads: int = 1,
        queue_size: int = 0,
        shared: SharedScores | None = None,
        models: Sequence[str] | None = None,
        shared_as: str = "",
    ) -> None:
        self.router = router
        #: the name its scores are shared under (``scorer_identity``); the router's name by default
        self.shared_as = shared_as or router.name
        self.models = tuple(models) if models is not None else None
        # Redis keeps pair scores only: per-model logits stay in the process's cache
        self.shared = shared if router.cacheable and self.models is None else None
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.threads = threads
        self.cache = ScoreCache(cache_size if router.cacheable else 0)
        self._queue: asyncio.Queue[tuple[str, str, asyncio.Future[Score]]] = asyncio.Queue(queue_size)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"score-{router.name}")
        self._workers: list[asyncio.Task[None]] = []
        self._hit = metrics.SCORE_CACHE_LOOKUPS.labels(router.name, "hit")
        self._miss = metrics.SCORE_CACHE_LOOKUPS.labels(router.name, "miss")

    def _call(self, texts: Sequence[str]) -> list[Score]:
        """The router's answers for ``texts``, in order; ValueError for a score outside [0, 1] (NaN
        included) or a logit that is not finite: it would poison the score histogram and a target
        route's window."""
        try:
            return self._answers(texts)
        except StopIteration as error:  # an asyncio Future cannot hold it: the batch would never end
            raise RuntimeError(f"the router {self.router.name} let a StopIteration out") from error

    def _answers(self, texts: Sequence[str]) -> list[Score]:
        if self.models is None:
            scores = [float(score) for score in self.router.score(texts)]
            if not all(0.0 <= score <= 1.0 for score in scores):
                raise ValueError(f"the router {self.router.name} returned a score outside [0, 1]")
            return list(scores)
        logits = self.router.model_logits(texts, self.models)
        if logits is None:
            raise ValueError(f"the router {self.router.name} scores only a strong/weak pair")
        rows = [tuple(float(value) for value in row) for row in logits]
        if not all(math.isfinite(value) for row in rows for value in row):
            raise ValueError(f"the router {self.router.name} returned a logit that is not finite")
        return list(rows)

    async def score(self, text: str, scope: str = "") -> float:
        """The router's pair score for ``text``; ``scope`` (a client key's fingerprint) keeps its
        cached score to that client's requests, so that no client learns from a cache hit (in the
        metrics, or by the time it saves) that another one sent the same text."""
        score = await self._answer(text, scope)
        assert isinstance(score, float)
        metrics.ROUTER_SCORE.labels(self.router.name).observe(score)
        return score

    async def model_logits(self, text: str, scope: str = "") -> tuple[float, ...]:
        """The router's logit for each ladder model on ``text`` (``models`` order); ``scope`` as in ``score``."""
        logits = await self._answer(text, scope)
        assert isinstance(logits, tuple)
        return logits

    async def _answer(self, text: str, scope: str) -> Score:
        """Cached, shared or newly computed; records the time taken in the metrics, also when the
        wait ends in a timeout (a router too slow to answer is what the latency alert is for)."""
        started = time.perf_counter()
        try:
            return await self._lookup_or_compute(text, f"{scope}\0{text}" if scope else text)
        finally:
            metrics.ROUTING_SECONDS.labels(self.router.name).observe(time.perf_counter() - started)

    async def _lookup_or_compute(self, text: str, key: str) -> Score:
        """``text``'s score, cached under ``key`` (the text, or the text in a client's scope)."""
        score = self.cache.get(key) if self.cache.size else None
        if score is None and self.shared is not None:
            score = await self.shared.get(self.shared_as, key)
            if score is not None:
                self.cache.put(key, score)
        if score is not None:
            self._hit.inc()
        else:
            if self.cache.size or self.shared is not None:
                self._miss.inc()
            if self.router.blocking:
                score = await self._batched(text, key)
            else:
                score = self._call([text])[0]
            self.cache.put(key, score)
            if self.shared is not None and isinstance(score, float):
                await self.shared.put(self.shared_as, key, score)
        return score

    async def _batched(self, text: str, key: str) -> Score:
        if not self._workers:  # each worker forms a batch from the queue, scores it, and takes the next
            self._workers = [
                asyncio.create_task(self._run_batches(), name=f"scorer-{self.router.name}-{index}")
                for index in range(self.threads)
            ]
        future: asyncio.Future[Score] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((text, key, future))
        except asyncio.QueueFull:
            raise ScoreQueueFull(self.router.name) from None
        return await future

    async def _next_batch(self) -> list[tuple[str, str, asyncio.Future[Score]]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.batch_wait
        while len(batch) < self.batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [(text, key, future) for text, key, future in batch if not future.done()]

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            texts = list(dict.fromkeys(text for text, _, _ in batch))
            try:
                scores = await loop.run_in_executor(self._executor, self._call, texts)
                by_text = dict(zip(texts, scores, strict=True))
            except Exception as error:  # the router failed: every waiting request hears of it
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for text, key, future in batch:  # cached also for callers that stopped waiting: the next one has it
                self.cache.put(key, by_text[text])
                if not future.done():
                    future.set_result(by_text[text])

    async def aclose(self) -> None:
        """Stop the batching tasks and the scoring threads."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)


def available_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit, which affinity does not show), at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 limit to read
        pass
    return max(1, cores)


def scoring_threads(requested: int, device: str) -> int:
    """Batches a router scores at once: ``requested``, or (0) one per available core on the CPU
    (``available_cores``: a container's CPU limit counts), one on a GPU.

    On the CPU, batches side by side on one torch thread each beat one batch at a time on all
    cores: MiniLM on 2 cores did 198-225 prompts/s as two single-thread batches against 155-178
    as one two-thread batch (docs/benchmarks.md).
    """
    if requested:
        return requested
    # "auto" would import torch to ask; a router that has not loaded torch runs no torch model, so not on a GPU
    on_gpu = (device != "auto" or "torch" in sys.modules) and resolve_device(device).startswith("cuda")
    return 1 if on_gpu else available_cores()


def limit_inference_threads(torch_threads: int, scoring_threads: int) -> None:
    """Give torch ``torch_threads`` intra-op threads (0: the cores less one left to the event loop,
    shared out among the ``scoring_threads``, at least one each) and numpy's BLAS one thread.

    The routers' numpy work (a neighbourhood lookup, a small MLP) is far too small to split; BLAS
    threads left at one per core spin on the cores torch and the event loop need: on 2 cores, one
    BLAS thread took ``mf`` from 26.9 to 23.7 ms p50 at concurrency 1 and from 104 to 112
    requests/s at 32 (medians of three interleaved runs; docs/benchmarks.md). Called from the thread
    that loads the router, before the scoring threads start.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(torch_threads or max(1, (available_cores() - 1) // scoring_threads))


class UnknownModel(ValueError):
    """A router that does not know a ladder entry's model."""

    def __init__(self, router: str, model: str, entry: str) -> None:
        self.router, self.model, self.entry = router, model, entry
        super().__init__(
            f"ROUTEGATE_MODELS: the router '{router}' does not know the model {model!r} of entry '{entry}'; set its "
            f"router_model to one of the models in the router's router.json (GET /v1/routers lists them once routegate runs)"
        )


def ladder_router_models(router: str, entries: Sequence[ModelEntry], known: Sequence[str]) -> tuple[str, ...]:
    """Each ladder entry's model by ``router``'s name for it: its ``router_model``, else its ``model``,
    matched among ``known`` (the router's checkpoint's models; none known: taken as given) as a
    pair's models are. UnknownModel naming the first entry the router does not know."""
    names = []
    for entry in entries:
        asked = entry.router_model or entry.model
        found = match_model(asked, known) if known else asked
        if found is None:
            raise UnknownModel(router, asked, entry.name)
        names.append(found)
    return tuple(names)


T = TypeVar("T")


async def in_daemon_thread(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` on a daemon thread of its own: a router still loading when the process
    stops does not hold its exit past the shutdown grace period, as a thread of the event loop's
    executor (``asyncio.to_thread``) would."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: T | None, error: BaseException | None) -> None:
        if outcome.done():  # its caller is gone (cancelled): nobody takes the result
            return
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = context.run(function, *args), None
        except BaseException as failure:  # noqa: BLE001 - handed to the awaiting task
            result, error = None, failure
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the event loop closed meanwhile: nobody waits
            pass

    threading.Thread(target=run, name=f"routegate-load-{getattr(function, '__name__', 'work')}", daemon=True).start()
    return await outcome


class ScorerPool:
    """One Scorer per router, each router loaded once per process, off the event loop."""

    def __init__(
        self,
        options: RouterOptions,
        batch_size: int,
        batch_wait: float,
        cache_size: int,
        torch_threads: int = 0,
        score_threads: int = 1,
        queue_size: int = 0,
        named_pair: tuple[bool, bool] = (False, False),
        named_by: str = "",
        shared: SharedScores | None = None,
        ladder_models: dict[str, tuple[str, ...]] | None = None,
        ladder_pair: tuple[int, int] = (1, 0),
        retry_seconds: float = 30.0,
        shared_names: bool = False,
    ) -> None:
        self.options = options
        #: True when other replicas share state by scorer (target routes in Redis): each router is
        #: then named by ``scorer_identity`` even without a shared score cache
        self.shared_names = shared_names or shared is not None
        #: after a router failed to load, its requests get its 503 this long before a new try
        self.retry_seconds = retry_seconds
        #: which of the (strong, weak) models the operator named (by the setting ``named_by``): a
        #: named model must be known to the router, no stand-in
        self.named_pair, self.named_by = named_pair, named_by
        self.shared = shared
        self.torch_threads = torch_threads
        self.score_threads = score_threads
        self.queue_size = queue_size
        self._settings = (batch_size, batch_wait, cache_size)
        self._scorers: dict[str, Scorer] = {}
        self._failed: dict[str, tuple[float, APIError]] = {}  # router -> (when to try again, its 503)
        self._loading: dict[str, asyncio.Task[Scorer]] = {}  # router -> its load under way
        self._lock = asyncio.Lock()  # one load at a time
        #: router -> the (strong, weak) pair it scores and why, once loaded
        self.pairs: dict[str, ScoredPair] = {}
        #: router -> its names for the ladder's models (more than two models); the ladder's
        #: (most capable, cheapest) positions are the pair it loads with
        self.ladder_models = ladder_models or {}
        self.ladder_pair = ladder_pair

    def scored_pair(self, name: str) -> tuple[str, str] | None:
        """The (strong, weak) models router ``name`` scores, by its names for them; None until it is loaded."""
        pair = self.pairs.get(name)
        return (pair.strong, pair.weak) if pair is not None else None

    def loaded(self, name: str) -> bool:
        """Whether the router called ``name`` is ready to score."""
        return name in self._scorers

    def shared_name(self, name: str) -> str | None:
        """The name router ``name``'s scores are shared under (``scorer_identity``; None until it
        is loaded): replicas scoring another pair, or with another checkpoint, never share them."""
        scorer = self._scorers.get(name)
        return scorer.shared_as if scorer is not None else None

    async def get(self, name: str) -> Scorer:
        """The Scorer of router ``name``, loading the router on first use. The load is its own
        task: a caller that stops waiting (a timeout, a client gone) leaves it to finish for the
        next one, and callers that come meanwhile wait for the same load."""
        scorer = self._scorers.get(name)
        if scorer is not None:
            return scorer
        self._raise_if_failed_lately(name)
        load = self._loading.get(name)
        if load is None:
            load = self._loading[name] = asyncio.create_task(self._load_scorer(name))
            load.add_done_callback(lambda done: done.cancelled() or done.exception())  # its failure is each caller's
        return await asyncio.shield(load)

    async def _load_scorer(self, name: str) -> Scorer:
        try:
            return await self._load_scorer_in_turn(name)
        finally:
            del self._loading[name]

    async def _load_scorer_in_turn(self, name: str) -> Scorer:
        async with self._lock:
            if name not in self._scorers:
                try:
                    router, threads, shared_as = await in_daemon_thread(self._load, name)
                except Exception as error:  # a broken checkpoint: say so, keep serving other routers
                    if name in self._failed:  # the traceback was logged at the first failure
                        log.error("router %s still cannot be loaded (%s); tried again in %g s", name, error, self.retry_seconds)
                    else:
                        log.exception("could not load router %s; tried again in %g s", name, self.retry_seconds)
                    refusal = APIError(
                        503,
                        f"The router '{name}' could not be loaded; the gateway's log says why.",
                        type="server_error",
                        code="router_unavailable",
                        headers={"retry-after": retry_after(self.retry_seconds)},
                    )
                    self._failed[name] = (time.monotonic() + self.retry_seconds, refusal)
                    raise refusal from None
                self._scorers[name] = Scorer(
                    router,
                    *self._settings,
                    threads=threads,
                    queue_size=self.queue_size,
                    shared=self.shared,
                    models=self.ladder_models.get(name),
                    shared_as=shared_as,
                )
        return self._scorers[name]

    def _raise_if_failed_lately(self, name: str) -> None:
        """The 503 of a load that failed less than ``retry_seconds`` ago: requests do not
        load a broken router again one after the other."""
        failed = self._failed.get(name)
        if failed is not None and time.monotonic() < failed[0]:
            raise failed[1]

    def _load(self, name: str) -> tuple[Router, int, str]:
        """Load a router and score once, so that lazy parts (encoder, kernels) are ready before
        traffic; the router, the number of its scoring threads and the name its scores are
        shared under (``scorer_identity``; empty without shared state)."""
        models = self.ladder_models.get(name)
        if models is None:
            strong, weak = self.options.strong_model, self.options.weak_model
            router, pair = load_router_for_pair(name, self.options, strong, weak, self.named_pair, self.named_by)
        else:
            strong, weak = models[self.ladder_pair[0]], models[self.ladder_pair[1]]
            pair = ScoredPair(strong, weak, f"ROUTEGATE_MODELS: it predicts each of {list(models)}")
            router = load_router(name, dataclasses.replace(self.options, strong_model=strong, weak_model=weak))
        if name != "random":
            log.info("router %s scores %s (strong) vs %s (weak): %s", name, pair.strong, pair.weak, pair.why)
            self.pairs[name] = pair
        if models is None:  # first: a router imports torch lazily, and the thread counts depend on it
            router.score(["warm-up"])
        else:  # among more than two models only the per-model logits are asked for
            router.model_logits(["warm-up"], models)
        threads = scoring_threads(self.score_threads, self.options.device)
        limit_inference_threads(self.torch_threads, threads)
        shared_as = (
            scorer_identity(name, (pair.strong, pair.weak, pair.why), Path(self.options.checkpoint_dir) / name)
            if self.shared_names and models is None
            else ""
        )
        return router, threads, shared_as

    async def aclose(self) -> None:
        """Stop every Scorer."""
        for scorer in self._scorers.values():
            await scorer.aclose()
