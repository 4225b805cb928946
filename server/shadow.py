"""Shadow judging: a sampled share of routed answers is also sent, once the client has its whole
answer, to the tier that was not chosen (non-streamed, same body), and a judge compares the two.

Everything here runs off the request path, in at most ``shadow_max_concurrent`` worker tasks fed
by a bounded queue: a full queue drops the job (counted), a spent daily budget skips it
(counted), a failed call is counted and forgotten. Shadow and judge calls have their own HTTP
client and are metered in ``routegate_shadow_cost_usd_total``, never as served traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from server import feedback_metrics as fm
from server.feedback_store import FeedbackStore, JudgementRow
from server.judge import answer_text, chosen_side, combine, judge_messages, parse_verdict, question_text
from server.metrics import reported_tokens, tokens_cost
from server.settings import Settings
from server.shared_state import SharedState
from server.shared_targets import SharedBudget
from server.shutdown import seconds_left
from server.token_estimate import answer_tokens, bytes_tokens, prompt_tokens

log = logging.getLogger("routegate.shadow")
# request fields the shadow call leaves out: one answer is judged, so one is asked for (``n``); it is
# not streamed, not stored with the client's completions, and not bought at another service tier
_NOT_SHADOWED = frozenset({"stream", "stream_options", "n", "logprobs", "top_logprobs", "store", "metadata", "service_tier"})
OTHER_TIER = {"strong": "weak", "weak": "strong"}
FLUSH_TIMEOUT_S = 2.0  # at shutdown, for sending the spend of cancelled jobs to Redis
NO_SHADOW_HEADER = "x-routegate-no-shadow"
TOOL_ROLES = frozenset({"tool", "function"})


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat completions endpoint with its model, key and prices."""

    base_url: str
    api_key: str | None
    model: str
    prices: tuple[float, float]

    def cost(self, tokens: tuple[int, int]) -> float:
        """USD of ``(prompt, completion)`` tokens at this endpoint's prices."""
        return tokens_cost(tokens, self.prices)


def endpoints(settings: Settings) -> tuple[dict[str, Endpoint], Endpoint]:
    """The two tiers' endpoints and the judge's (each unset judge field is the strong upstream's;
    the strong key is only sent to the strong upstream's own URL)."""
    tiers = {
        tier: Endpoint(
            upstream.base_url,
            upstream.api_key.get_secret_value() if upstream.api_key else None,
            upstream.model,
            (upstream.input_price, upstream.output_price),
        )
        for tier, upstream in (("strong", settings.strong), ("weak", settings.weak))
    }
    judge, strong, secret = settings.judge, tiers["strong"], settings.judge_api_key
    prices = (
        strong.prices[0] if judge.input_price is None else judge.input_price,
        strong.prices[1] if judge.output_price is None else judge.output_price,
    )
    api_key = secret.get_secret_value() if secret else None
    return tiers, Endpoint(settings.judge_base_url, api_key, judge.model or strong.model, prices)


def excluded(headers: Any, payload: dict[str, Any], shadow_tools: bool) -> bool:
    """Whether a request may not be shadowed: the opt-out header, a message with more than text
    (an image, audio, a file: the judge reads text only, so its verdict would be a guess), or
    tools when they are not shadowed."""
    if headers.get(NO_SHADOW_HEADER, "").strip() == "1":
        return True
    if any(_beyond_text(message.get("content")) for message in payload["messages"]):
        return True
    if shadow_tools:
        return False
    if payload.get("tools") or payload.get("functions"):
        return True
    return any(
        message.get("role") in TOOL_ROLES or message.get("tool_calls") or message.get("function_call")
        for message in payload["messages"]
    )


def _beyond_text(content: object) -> bool:
    """Whether a message's content holds a part that is not text."""
    return isinstance(content, list) and any(not (isinstance(part, dict) and part.get("type") == "text") for part in content)


@dataclass
class ShadowJob:
    """A routed, answered request to shadow: what was asked and what the chosen tier answered."""

    request_id: str
    router: str
    chosen_tier: str
    payload: dict[str, Any]
    chosen_answer: str
    client: str = ""  # whose request it is (server.feedback.Feedback.client_of)
    decided_at: float | None = None  # its decision row's created_at: a judgement is stored against that row only


def job_bytes(job: ShadowJob) -> int:
    """What a queued job holds, about: its request body as JSON and the chosen answer, in UTF-8 bytes."""
    return len(json.dumps(job.payload, ensure_ascii=False).encode("utf-8", "replace")) + len(
        job.chosen_answer.encode("utf-8", "replace")
    )


class CallFailed(Exception):
    """A shadow or judge call got no usable answer. ``answer_bytes``: None when the endpoint never
    had the request or refused it (nothing to pay), else how much answer came before it failed
    (a timeout, an answer too large or not JSON: the endpoint may bill it)."""

    def __init__(self, reason: str, answer_bytes: int | None = None) -> None:
        super().__init__(reason)
        self.answer_bytes = answer_bytes


class ShadowBudget:
    """USD per UTC day for shadow and judge calls; None = unlimited. With Redis the replicas share
    it (``SharedBudget`` under its own key), else each worker process keeps its part."""

    def __init__(
        self, budget_usd: float | None, workers: int = 1, state: SharedState | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._daily = None if budget_usd is None else SharedBudget.of(budget_usd, state, workers, "shadow_budget", clock)

    def exhausted(self) -> bool:
        """Whether today's budget is spent, as last read."""
        return self._daily is not None and self._daily.local.remaining_usd <= 0

    async def refresh(self) -> None:
        """Read what every replica has spent today (nothing to read in-process)."""
        if self._daily is not None:
            await self._daily.refresh()

    async def flush(self) -> None:
        """Send what earlier failures left unsent, as this replica stops."""
        if self._daily is not None:
            await self._daily.flush()

    async def spend(self, usd: float) -> None:
        """Count ``usd`` spent (with Redis, added to the replicas' total and read back)."""
        if self._daily is not None and usd > 0:
            await self._daily.record_cost("strong", usd, 0.0)


class Shadower:
    """Samples answered requests, queues them and runs shadow calls and judgements in workers."""

    def __init__(self, settings: Settings, store: FeedbackStore | None, state: SharedState | None = None) -> None:
        self.rate = settings.shadow_rate
        self.shadow_tools = settings.shadow_tools
        self.store = store
        self.tiers, self.judge = endpoints(settings)
        self.budget = ShadowBudget(settings.shadow_daily_budget_usd, settings.workers, state)
        self.workers = settings.shadow_max_concurrent
        self.max_response_bytes = settings.max_response_bytes
        self.max_job_bytes = settings.shadow_max_job_bytes
        self.total_timeout = settings.total_timeout
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(max(1, settings.shadow_queue_size))
        self._queue_size = settings.shadow_queue_size
        self._timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._abandoned = 0  # jobs the shutdown stopped
        self._closed = False

    def sampled(self) -> bool:
        """Whether this answer is drawn for shadowing."""
        return self.rate > 0 and random.random() < self.rate

    def start(self) -> None:
        """Start the worker tasks (in the serving event loop)."""
        limits = httpx.Limits(max_connections=3 * self.workers, max_keepalive_connections=3 * self.workers)
        # as the serving pool: straight to the configured URLs (no proxy from the environment: the calls carry
        # upstream keys), trusting the system's certificate authorities (and SSL_CERT_FILE)
        self._client = httpx.AsyncClient(
            timeout=self._timeout,
            limits=limits,
            headers={"user-agent": "routegate-shadow"},
            trust_env=False,
            verify=ssl.create_default_context(),
        )
        self._tasks = [asyncio.create_task(self._work(), name=f"routegate-shadow-{n}") for n in range(self.workers)]

    async def aclose(self, deadline: float) -> None:
        """Stop the workers and close the client; queued and running jobs are abandoned (counted
        and logged). The spend of cancelled jobs is sent to Redis by ``deadline`` (event-loop time)."""
        self._closed = True  # a job offered from here on (a stream closing late) is abandoned at once
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._queue.empty():
            self._abandon(self._queue.get_nowait())
        if self._abandoned:
            log.warning("shutdown abandoned %d shadow jobs, queued or under way", self._abandoned)
        with contextlib.suppress(Exception):  # spend a cancelled job had not yet added to the replicas' total
            await asyncio.wait_for(self.budget.flush(), seconds_left(deadline, FLUSH_TIMEOUT_S))
        if self._client is not None:
            await self._client.aclose()

    def offer(self, job: ShadowJob, headers: Any) -> None:
        """Queue a sampled job unless it is excluded, over budget or the queue is full (each counted)."""
        if self._closed:
            self._abandon(job)
            return
        other = OTHER_TIER[job.chosen_tier]
        if excluded(headers, job.payload, self.shadow_tools):
            outcome = "excluded"
        elif self.budget.exhausted():
            outcome = "over_budget"
        elif self._queue_size == 0 or self._queue.full():
            outcome = "dropped"
        elif job_bytes(job) > self.max_job_bytes:  # last: it writes the request out
            outcome = "too_large"
        else:
            self._queue.put_nowait(job)
            return
        fm.SHADOW_REQUESTS.labels(other, outcome).inc()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                self._abandon(job)
                raise
            except Exception:
                log.exception("request_id=%s shadow job failed", job.request_id)

    def _abandon(self, job: ShadowJob) -> None:
        """Count a job the shutdown stopped before its outcome."""
        self._abandoned += 1
        fm.SHADOW_REQUESTS.labels(OTHER_TIER[job.chosen_tier], "abandoned").inc()

    async def _run(self, job: ShadowJob) -> None:
        other = OTHER_TIER[job.chosen_tier]
        await self.budget.refresh()
        if self.budget.exhausted():
            fm.SHADOW_REQUESTS.labels(other, "over_budget").inc()
            return
        if not job.chosen_answer.strip():  # nothing for a judge to compare
            fm.SHADOW_REQUESTS.labels(other, "no_answer").inc()
            return
        endpoint = self.tiers[other]
        body = {key: value for key, value in job.payload.items() if key not in _NOT_SHADOWED}
        try:
            completion = await self._call(endpoint, {**body, "model": endpoint.model}, job.request_id)
        except CallFailed as failure:
            log.info("request_id=%s shadow call to the %s tier failed: %s", job.request_id, other, failure)
            await self.budget.spend(self._meter_failed("shadow", endpoint, body, failure))
            fm.SHADOW_REQUESTS.labels(other, "shadow_failed").inc()
            return
        shadow_cost = self._meter("shadow", endpoint, body, completion)
        await self.budget.spend(shadow_cost)
        other_answer = answer_text(completion) or ""
        if not other_answer.strip():
            log.info("request_id=%s the %s tier's shadow answer is empty: not judged", job.request_id, other)
            fm.SHADOW_REQUESTS.labels(other, "no_answer").inc()
            return
        if self.budget.exhausted():  # the shadow answer may have spent the rest
            fm.SHADOW_REQUESTS.labels(other, "over_budget").inc()
            return
        question = question_text(job.payload["messages"])
        orders = ((job.chosen_answer, other_answer), (other_answer, job.chosen_answer))
        asked = [{"model": self.judge.model, "messages": judge_messages(question, a, b)} for a, b in orders]
        replies = await asyncio.gather(*(self._call(self.judge, body, job.request_id) for body in asked), return_exceptions=True)
        judge_cost = sum(
            self._meter("judge", self.judge, body, reply)
            if isinstance(reply, dict)
            else self._meter_failed("judge", self.judge, body, reply)
            for body, reply in zip(asked, replies, strict=True)
        )
        await self.budget.spend(judge_cost)
        failed = [reply for reply in replies if isinstance(reply, BaseException)]
        if failed:
            log.info("request_id=%s judge call failed: %s", job.request_id, failed[0])
            fm.SHADOW_REQUESTS.labels(other, "judge_failed").inc()
            return
        first = chosen_side(parse_verdict(answer_text(replies[0])), chosen_is_a=True)
        second = chosen_side(parse_verdict(answer_text(replies[1])), chosen_is_a=False)
        verdict = combine(first, second)
        fm.SHADOW_REQUESTS.labels(other, "judged").inc()
        fm.JUDGEMENTS.labels(job.router, job.chosen_tier, verdict).inc()
        log.info("request_id=%s judged router=%s chosen=%s verdict=%s", job.request_id, job.router, job.chosen_tier, verdict)
        if self.store is not None:
            self.store.record(
                JudgementRow(
                    job.request_id,
                    time.time(),
                    job.router,
                    job.chosen_tier,
                    verdict,
                    first,
                    second,
                    self.judge.model,
                    shadow_cost,
                    judge_cost,
                ),
                job.client,
                job.decided_at,
            )

    def _meter(self, kind: str, endpoint: Endpoint, body: dict[str, Any], completion: dict[str, Any]) -> float:
        """Count a call's cost: from its usage, or estimated from its text when it reported none."""
        tokens = reported_tokens(completion.get("usage")) or (prompt_tokens(body), answer_tokens(completion))
        return self._cost(kind, endpoint, tokens)

    def _meter_failed(self, kind: str, endpoint: Endpoint, body: dict[str, Any], failure: BaseException) -> float:
        """Count what a failed call may still cost: its prompt and the answer bytes that came, estimated."""
        if not isinstance(failure, CallFailed) or failure.answer_bytes is None:
            return 0.0
        return self._cost(kind, endpoint, (prompt_tokens(body), bytes_tokens(failure.answer_bytes)))

    def _cost(self, kind: str, endpoint: Endpoint, tokens: tuple[int, int]) -> float:
        """The cost of ``(prompt, completion)`` tokens at ``endpoint``, metered (the caller spends it from the budget)."""
        cost = endpoint.cost(tokens)
        fm.SHADOW_COST_USD.labels(kind, endpoint.model).inc(cost)
        return cost

    async def _call(self, endpoint: Endpoint, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        """POST a chat completion; its JSON object, or CallFailed (one try, no retries)."""
        assert self._client is not None
        headers = {"x-request-id": request_id, "x-routegate-shadow": "1", "accept-encoding": "identity"}
        if endpoint.api_key:
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.total_timeout):
                async with self._client.stream(
                    "POST", f"{endpoint.base_url}/chat/completions", json=body, headers=headers
                ) as response:
                    async for chunk in response.aiter_raw():
                        size += len(chunk)
                        if size > self.max_response_bytes:  # only an answer, not an error, may be billed
                            raise CallFailed("answer too large", size if response.is_success else None)
                        chunks.append(chunk)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:  # the endpoint never had the request
            raise CallFailed(type(error).__name__) from None
        except (httpx.HTTPError, TimeoutError) as error:
            raise CallFailed(type(error).__name__, size) from None
        if not response.is_success:
            raise CallFailed(f"HTTP {response.status_code}")
        try:
            completion = json.loads(b"".join(chunks))
        except (ValueError, RecursionError):
            raise CallFailed("not JSON", size) from None
        if not isinstance(completion, dict):
            raise CallFailed("not a JSON object", size)
        return completion
