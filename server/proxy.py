"""``POST /v1/chat/completions``: check the request, route it, forward it, relay the answer and
record the decision."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response

from server import metrics
from server.admission import Admission
from server.chat_request import parse_chat_request, read_body, routed_text
from server.conversations import CONVERSATION_HEADER, conversation_keys
from server.errors import APIError
from server.model_names import ModelNames, Target
from server.overrides import read_override
from server.relay import RelayResponse, StreamWatcher
from server.scoring import ScorerPool
from server.settings import Settings
from server.shared_sticky import SharedSticky
from server.shared_targets import SharedTargets
from server.shutdown import DRAIN
from server.upstream import Attempts, CompletedResponse, StreamStart, Upstream, UpstreamFailure, is_json_object

log = logging.getLogger("routegate.proxy")
OTHER_TIER = {"strong": "weak", "weak": "strong"}
_RELAYED_HEADERS = ("content-type", "retry-after")


@dataclass
class Decision:
    """Where one request goes and why."""

    router: str
    tier: str
    reason: str
    request_id: str
    score: float | None = None
    threshold: float | None = None
    target: float | None = None
    effective_target: float | None = None

    def headers(self, model: str) -> dict[str, str]:
        """The ``x-routegate-*`` headers that tell the client the decision."""
        headers = {
            "x-routegate-router": self.router,
            "x-routegate-tier": self.tier,
            "x-routegate-model": model,
            "x-routegate-decision": self.reason,
        }
        if self.score is not None:
            headers["x-routegate-score"] = f"{self.score:.6f}"
        if self.threshold is not None:
            headers["x-routegate-threshold"] = f"{self.threshold:g}"
        if self.target is not None:
            headers["x-routegate-target"] = f"{self.target:g}"
        if self.effective_target is not None:
            headers["x-routegate-effective-target"] = f"{self.effective_target:g}"
        return headers


def request_id_of(request: Request) -> str:
    """The client's ``x-request-id`` when it is short and printable, else a new one."""
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex


class ChatProxy:
    """Handles chat completion requests for one gateway."""

    def __init__(
        self,
        settings: Settings,
        upstreams: dict[str, Upstream],
        names: ModelNames,
        scorers: ScorerPool,
        targets: SharedTargets | None = None,
        sticky: SharedSticky | None = None,
    ) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.names = names
        self.scorers = scorers
        self.targets = targets
        self.sticky = sticky
        self._strong_prices = upstreams["strong"].prices
        self.admission = Admission(
            settings.max_concurrent_requests, settings.max_queued_requests, settings.queue_timeout
        )

    async def handle(self, request: Request) -> Response:
        """Answer one ``POST /v1/chat/completions``."""
        request_id = request_id_of(request)
        started = time.monotonic()
        metrics.IN_FLIGHT.inc()
        admitted = handed_to_stream = False
        try:
            body = await read_body(request, self.settings.max_body_bytes, self.settings.body_timeout)
            payload = parse_chat_request(body)
            decision = await self._decide(self.names.resolve(payload["model"]), payload, request_id, request)
            await self.admission.acquire()
            admitted = True
            response = await self._forward(decision, payload, started)
            handed_to_stream = isinstance(response, RelayResponse)  # its on_close releases what is held
            return response
        except APIError as error:
            metrics.REQUESTS.labels("none", "none", "none", str(error.status)).inc()
            log.info("request_id=%s status=%d error=%s", request_id, error.status, error.code)
            return error.to_response({"x-request-id": request_id})
        except asyncio.CancelledError:
            if not DRAIN.draining:
                raise
            # The shutdown grace period ran out: answer rather than leave the client a bare 500.
            metrics.REQUESTS.labels("none", "none", "none", "503").inc()
            log.warning("request_id=%s cut by shutdown", request_id)
            error = APIError(
                503, "routegate shut down before this request finished.", type="server_error", code="shutting_down"
            )
            return error.to_response({"x-request-id": request_id, "connection": "close"})
        finally:
            if not handed_to_stream:
                metrics.IN_FLIGHT.dec()
                if admitted:
                    self.admission.release()

    async def _decide(self, target: Target, payload: dict[str, Any], request_id: str, request: Request) -> Decision:
        if target.tier is not None:
            return Decision(router="none", tier=target.tier, reason="direct", request_id=request_id)
        assert target.router is not None
        override = read_override(request.headers, self.settings)
        keys = None
        if self.settings.route_on == "sticky" and self.sticky is not None:
            keys = conversation_keys(payload["messages"], request.headers.get(CONVERSATION_HEADER))
        if override.tier is not None:
            decision = Decision(router=target.router, tier=override.tier, reason="forced", request_id=request_id)
        elif keys is not None and self.sticky is not None and await self.sticky.is_strong(keys.previous):
            decision = Decision(router=target.router, tier="strong", reason="sticky", request_id=request_id)
        else:
            score = await self._score(target.router, payload)
            decision = await self._compare(target, score, override.threshold, request_id)
        if keys is not None and self.sticky is not None:
            if decision.tier == "strong":
                await self.sticky.remember(keys.current)
            metrics.STICKY_CONVERSATIONS.set(len(self.sticky))
        if target.target is not None and self.targets is not None:
            await self._record_target(target.router, target.target, decision)
        return decision

    async def _compare(self, target: Target, score: float, forced_threshold: float | None, request_id: str) -> Decision:
        """Score against the forced threshold, the target route's current threshold or the fixed one."""
        assert target.router is not None
        effective_target = None
        if forced_threshold is not None:
            threshold, reason = forced_threshold, "forced"
        elif target.target is not None and self.targets is not None:
            chosen = await self.targets.decide(target.router, target.target, score)
            threshold, effective_target, reason = chosen.threshold, chosen.effective_target, "score"
        else:
            assert target.threshold is not None
            threshold, reason = target.threshold, "score"
        metrics.ROUTER_THRESHOLD.labels(target.router).set(threshold)
        return Decision(
            router=target.router,
            tier="strong" if score >= threshold else "weak",
            reason=reason,
            request_id=request_id,
            score=score,
            threshold=threshold,
            target=target.target,
            effective_target=effective_target,
        )

    async def _record_target(self, router: str, target: float, decision: Decision) -> None:
        """Feed a target route's decision back to its controller and publish its state."""
        assert self.targets is not None
        effective = decision.effective_target
        if effective is None:
            effective = await self.targets.effective_target(target)
            decision.target, decision.effective_target = target, effective
        await self.targets.record(router, target, effective, decision.tier == "strong")
        if self.targets.budget is not None:
            await self.targets.budget.count_request()
            metrics.BUDGET_REMAINING_USD.set(self.targets.budget.remaining_usd)
        labels = (router, f"{target:g}")
        metrics.TARGET_SHARE.labels(*labels).set(target)
        metrics.TARGET_EFFECTIVE_SHARE.labels(*labels).set(effective)
        realised = self.targets.realised_share(router, target)
        if realised is not None:
            metrics.TARGET_REALISED_SHARE.labels(*labels).set(realised)
        if decision.threshold is not None and decision.reason == "score":
            metrics.TARGET_THRESHOLD.labels(*labels).set(decision.threshold)

    async def _score(self, router: str, payload: dict[str, Any]) -> float:
        scorer = await self.scorers.get(router)
        text = routed_text(
            payload["messages"], self.settings.route_on, self.settings.conversation_turns, self.settings.max_router_chars
        )
        try:
            return await scorer.score(text)
        except Exception:
            log.exception("router %s failed", router)
            raise APIError(500, f"The router '{router}' failed.", type="server_error", code="router_error") from None

    def _body_for(self, payload: dict[str, Any], upstream: Upstream) -> bytes:
        return json.dumps({**payload, "model": upstream.model}, ensure_ascii=False, separators=(",", ":")).encode()

    async def _forward(self, decision: Decision, payload: dict[str, Any], started: float) -> Response:
        request_id = decision.request_id
        stream = payload.get("stream") is True
        tiers = [decision.tier]
        if self.settings.fallback:
            tiers.append(OTHER_TIER[decision.tier])
        extra_headers = {"x-request-id": request_id}
        for position, tier in enumerate(tiers):
            upstream = self.upstreams[tier]
            attempts = Attempts(self.settings, time.monotonic() + self.settings.total_timeout)
            body = self._body_for(payload, upstream)
            log.debug("request_id=%s forwarding %d bytes to the %s upstream at %s", request_id, len(body), tier, upstream.base_url)
            sent_at = time.monotonic()
            try:
                if stream:
                    result: StreamStart | CompletedResponse = await attempts.stream(upstream, body, request_id)
                else:
                    result, ttfb = await attempts.complete(upstream, body, request_id)
            except UpstreamFailure as failure:
                if position + 1 < len(tiers):
                    next_tier = tiers[position + 1]
                    metrics.FALLBACKS.labels(tier, next_tier, failure.reason).inc()
                    extra_headers["x-routegate-fallback"] = f"{tier}->{next_tier}:{failure.reason}"
                    log.warning("request_id=%s fallback %s->%s reason=%s", request_id, tier, next_tier, failure.reason)
                    continue
                return await self._failure_response(decision, upstream, failure, extra_headers)
            decision.tier = tier
            headers = {**decision.headers(upstream.model), **extra_headers}
            if isinstance(result, StreamStart):
                metrics.UPSTREAM_TTFB_SECONDS.labels(tier, upstream.model).observe(result.ttfb)
                return self._relay(decision, upstream, result, headers, sent_at, started)
            if not stream:
                metrics.UPSTREAM_TTFB_SECONDS.labels(tier, upstream.model).observe(ttfb)
            return await self._complete(decision, upstream, result, headers, sent_at, started)
        raise AssertionError("unreachable: the last tier either answers or fails")

    async def _complete(
        self,
        decision: Decision,
        upstream: Upstream,
        result: CompletedResponse,
        headers: dict[str, str],
        sent_at: float,
        started: float,
    ) -> Response:
        metrics.UPSTREAM_SECONDS.labels(upstream.tier, upstream.model).observe(time.monotonic() - sent_at)
        if 200 <= result.status < 300:
            try:
                usage = json.loads(result.body).get("usage")
            except (ValueError, AttributeError):
                usage = None
            await self._record_usage(upstream, usage)
        for name in _RELAYED_HEADERS:
            if name in result.headers:
                headers[name] = result.headers[name]
        self._count(decision, upstream, result.status, started)
        body = result.body
        if result.status >= 400:
            body = upstream.redact(body)
            if not is_json_object(body):  # e.g. an HTML page from a load balancer: the SDK needs JSON
                message = f"The {upstream.tier} upstream answered {result.status} without a JSON error body."
                body = json.dumps(APIError(result.status, message, type="upstream_error", code="upstream_error").body()).encode()
                headers["content-type"] = "application/json"
        return Response(body, status_code=result.status, headers=headers)

    def _relay(
        self,
        decision: Decision,
        upstream: Upstream,
        start: StreamStart,
        headers: dict[str, str],
        sent_at: float,
        started: float,
    ) -> RelayResponse:
        watcher = StreamWatcher()

        async def chunks() -> AsyncIterator[bytes]:
            watcher.feed(start.first_chunk)
            yield start.first_chunk
            try:
                async for chunk in start.chunks:
                    watcher.feed(chunk)
                    yield chunk
            except httpx.HTTPError as error:
                reason = "timeout" if isinstance(error, httpx.TimeoutException) else "stream_cut"
                yield self._stream_error(upstream, reason)
                return
            if not watcher.done:
                yield self._stream_error(upstream, "stream_cut")

        relayed = chunks()

        async def on_close(completed: bool) -> None:
            await relayed.aclose()
            await start.response.aclose()
            metrics.UPSTREAM_SECONDS.labels(upstream.tier, upstream.model).observe(time.monotonic() - sent_at)
            await self._record_usage(upstream, watcher.usage)
            status = 200 if completed else 499
            self._count(decision, upstream, status, started)
            metrics.IN_FLIGHT.dec()
            self.admission.release()

        media_type = start.response.headers.get("content-type", "text/event-stream")
        return RelayResponse(relayed, headers, on_close, media_type=media_type, on_cancel=_shutdown_event)

    async def _record_usage(self, upstream: Upstream, usage: object) -> None:
        """Meter an answer's tokens and cost; charge the daily budget."""
        cost, all_strong_cost = metrics.record_usage(
            upstream.tier, upstream.model, usage, upstream.prices, self._strong_prices
        )
        budget = self.targets.budget if self.targets is not None else None
        if budget is not None:
            await budget.record_cost(upstream.tier, cost, all_strong_cost)
            metrics.BUDGET_REMAINING_USD.set(budget.remaining_usd)

    def _stream_error(self, upstream: Upstream, reason: str) -> bytes:
        metrics.UPSTREAM_ERRORS.labels(upstream.tier, reason).inc()
        message = f"The {upstream.tier} upstream stream ended early ({reason})."
        return APIError(502, message, type="upstream_error", code=reason).to_sse()

    async def _failure_response(
        self, decision: Decision, upstream: Upstream, failure: UpstreamFailure, headers: dict[str, str]
    ) -> Response:
        decision.tier = upstream.tier  # the tier that failed last, named with its model
        headers = {**decision.headers(upstream.model), **headers}
        if failure.response is not None:  # a 429 after every try: the client should back off too
            return await self._complete(decision, upstream, failure.response, headers, time.monotonic(), time.monotonic())
        if failure.timeout:
            error = APIError(504, f"The {upstream.tier} upstream timed out.", type="upstream_error", code="upstream_timeout")
        else:
            error = APIError(
                502, f"The {upstream.tier} upstream failed ({failure.reason}).", type="upstream_error", code="upstream_error"
            )
        metrics.REQUESTS.labels(decision.router, upstream.tier, upstream.model, str(error.status)).inc()
        return error.to_response(headers)

    def _count(self, decision: Decision, upstream: Upstream, status: int, started: float) -> None:
        metrics.REQUESTS.labels(decision.router, upstream.tier, upstream.model, str(status)).inc()
        log.info(
            "request_id=%s router=%s score=%s tier=%s model=%s status=%d duration_ms=%.1f",
            decision.request_id,
            decision.router,
            "-" if decision.score is None else f"{decision.score:.4f}",
            upstream.tier,
            upstream.model,
            status,
            (time.monotonic() - started) * 1000,
        )


def _shutdown_event() -> bytes | None:
    """The final SSE event of a stream cut because the shutdown grace period ran out."""
    if not DRAIN.draining:
        return None
    message = "routegate shut down before this stream finished."
    return APIError(503, message, type="server_error", code="shutting_down").to_sse()
