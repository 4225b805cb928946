"""The forward step: send the request to the decided upstream, with retries and, when it fails,
fallbacks (``dataclasses.replace`` of the Decision): to each more capable upstream in turn, the
most capable to the next less capable (two tiers: strong <-> weak); see server/ladder.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server import metrics
from server.decision import Decision
from server.delivery import Delivery
from server.ladder import Ladder
from server.relay import json_value
from server.settings import Settings
from server.token_estimate import bytes_tokens, prompt_tokens
from server.upstream import (
    Attempts,
    CompletedResponse,
    StreamStart,
    Upstream,
    UpstreamFailure,
)

log = logging.getLogger("routegate.proxy")


def request_body(payload: dict[str, Any], upstream: Upstream) -> bytes:
    """The JSON body sent to ``upstream``: the client's, with the upstream's model."""
    return json.dumps({**payload, "model": upstream.model}, ensure_ascii=False, separators=(",", ":")).encode()


def asks_for_usage(payload: dict[str, Any]) -> bool:
    """Whether a streamed request asked for the final usage chunk itself."""
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


@dataclass(frozen=True)
class Exchange:
    """What the last upstream tried gave back: an open stream, a whole answer or a failure.
    ``decision.tier`` is that upstream's tier; ``sent_at`` when its first try was sent (its
    retries and their waits are in the upstream time)."""

    decision: Decision
    upstream: Upstream
    sent_at: float
    result: StreamStart | CompletedResponse | UpstreamFailure
    headers: dict[str, str] = field(default_factory=dict)  # x-request-id, x-routegate-fallback
    hide_usage: bool = False  # a stream's usage was asked upstream for metering, not by the client
    choices: int = 1  # the answers asked for (``n``): a stream that finished each one is whole without [DONE]


@dataclass
class Sent:
    """The upstream whose try has the request now (None before a try, after a failed one and while
    waiting to retry), and how much of the request it has: what a client that leaves while waiting
    for the answer is charged for."""

    decision: Decision | None = None
    upstream: Upstream | None = None
    delivery: Delivery | None = None  # of the request's body to ``upstream``
    # failed tries an upstream worked on: the upstream and their estimated (prompt, completion) tokens
    spent: list[tuple[Upstream, tuple[int, int]]] = field(default_factory=list)

    @property
    def billing(self) -> Upstream | None:
        """The upstream that has the whole request now and may bill its prompt: None also while its
        body is still being sent."""
        return self.upstream if self.delivery is not None and self.delivery.whole else None

    def trying(self, decision: Decision, upstream: Upstream) -> Callable[[Delivery | None], None]:
        """The callback ``Attempts`` calls as a try of ``upstream`` starts (with its body's delivery)
        and fails (None)."""

        def mark(delivery: Delivery | None) -> None:
            self.decision, self.upstream, self.delivery = decision, upstream if delivery is not None else None, delivery

        return mark

    def spending(self, upstream: Upstream, payload: dict[str, Any]) -> Callable[[int], None]:
        """The callback ``Attempts`` calls with the answer bytes of a failed try that ``upstream``
        worked on: charged its prompt and those bytes, estimated."""

        def spend(answer_bytes: int) -> None:
            self.spent.append((upstream, (prompt_tokens(payload), bytes_tokens(answer_bytes))))

        return spend


class Forwarder:
    """Sends requests to the ladder's upstreams."""

    def __init__(self, settings: Settings, ladder: Ladder, upstreams: dict[str, Upstream]) -> None:
        self.settings = settings
        self.ladder = ladder
        self.upstreams = upstreams

    async def forward(self, decision: Decision, payload: dict[str, Any], sent: Sent, strong_allowed: bool = True) -> Exchange:
        """Try the decided upstream, then (with fallback on) its fallbacks; once the budget is spent
        (``strong_allowed`` false) only the cheapest upstream is a fallback. ``sent`` follows the
        upstream whose try has the request."""
        stream = payload.get("stream") is True
        hide_usage = stream and self.settings.stream_usage and not asks_for_usage(payload)
        tiers = [decision.tier]
        if self.settings.fallback:
            fallbacks = self.ladder.fallbacks(decision.tier)
            tiers += [tier for tier in fallbacks if strong_allowed or tier == self.ladder.lowest_price]
        headers = {"x-request-id": decision.request_id}
        deadline = time.monotonic() + self.settings.total_timeout  # one deadline for every tier
        for position, tier in enumerate(tiers):
            upstream = self.upstreams[tier]
            if tier != decision.tier:
                decision = dataclasses.replace(decision, tier=tier, quality=None, fallback_from=decision.chosen)
            tier_deadline = self._tier_deadline(deadline, fallbacks_left=len(tiers) - position - 1)
            attempts = Attempts(self.settings, tier_deadline, sent.trying(decision, upstream), sent.spending(upstream, payload))
            sent_at = time.monotonic()
            try:
                if stream:
                    result: StreamStart | CompletedResponse
                    result = await self._stream(attempts, upstream, payload, hide_usage, decision.request_id)
                    if isinstance(result, StreamStart):
                        metrics.UPSTREAM_TTFB_SECONDS.labels(tier, upstream.model).observe(result.ttfb)
                else:
                    result, ttfb = await attempts.complete(upstream, request_body(payload, upstream), decision.request_id)
                    metrics.UPSTREAM_TTFB_SECONDS.labels(tier, upstream.model).observe(ttfb)
            except UpstreamFailure as failure:
                if position + 1 < len(tiers):
                    next_tier = tiers[position + 1]
                    metrics.FALLBACKS.labels(tier, next_tier, failure.reason).inc()
                    step = f"{tier}->{next_tier}:{failure.reason}"
                    previous = headers.get("x-routegate-fallback")
                    headers["x-routegate-fallback"] = f"{previous},{step}" if previous else step
                    log.warning("request_id=%s fallback %s->%s reason=%s", decision.request_id, tier, next_tier, failure.reason)
                    continue
                return Exchange(decision, upstream, sent_at, failure, headers)
            return Exchange(decision, upstream, sent_at, result, headers, hide_usage, int(payload.get("n") or 1))
        raise AssertionError("unreachable: the last tier either answers or fails")

    async def _stream(
        self, attempts: Attempts, upstream: Upstream, payload: dict[str, Any], meter: bool, request_id: str
    ) -> StreamStart | CompletedResponse:
        """Open a stream; with ``meter``, ask for its usage too, unless the upstream refused that
        once (a 400 naming ``stream_options`` to a client that sent none, and a stream without
        them; a 422 for servers that validate a request's fields so): then it is asked again
        without, from then on. A client's own ``stream_options`` that the upstream refuses are the
        client's to read: its 400 is relayed."""
        if meter and not upstream.refuses_stream_options:
            options = payload.get("stream_options")
            metered = {**payload, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}
            result = await attempts.stream(upstream, request_body(metered, upstream), request_id)
            refused = isinstance(result, CompletedResponse) and _refuses_stream_options(result)
            if not refused or options is not None:
                return result
            unmetered = {key: value for key, value in payload.items() if key != "stream_options"}  # a null one too
            result = await attempts.stream(upstream, request_body(unmetered, upstream), request_id)
            if isinstance(result, StreamStart):
                upstream.refuses_stream_options = True
                log.warning("the %s upstream refuses stream_options: its streams are not metered", upstream.tier)
            return result
        return await attempts.stream(upstream, request_body(payload, upstream), request_id)

    def _tier_deadline(self, deadline: float, fallbacks_left: int) -> float:
        """When this tier's tries must end: the request's deadline for the last tier; for one with
        fallbacks after it, early enough to leave each of them a read timeout, or an equal share
        of the time left when there is less (on a ladder of several models the most capable one,
        tried last, is not left the scraps of the rungs before it)."""
        now = time.monotonic()
        return max(deadline - fallbacks_left * self.settings.read_timeout, now + (deadline - now) / (fallbacks_left + 1))


def _refuses_stream_options(result: CompletedResponse) -> bool:
    """Whether an upstream's 400 names ``stream_options``, or its 422 puts it in a validation
    error's ``loc`` or message (a 422 that echoes the whole body as its ``input`` names it too)."""
    if result.status == 400:
        return b"stream_options" in result.body
    if result.status != 422:
        return False
    parsed = json_value(result.body)
    if not isinstance(parsed, dict):
        return False
    details = parsed.get("detail")
    for detail in details if isinstance(details, list) else []:
        location = detail.get("loc") if isinstance(detail, dict) else None
        if isinstance(location, list | tuple) and "stream_options" in location:
            return True
    error = parsed.get("error")
    said = [details, error.get("message") if isinstance(error, dict) else error, parsed.get("message")]
    return any(isinstance(text, str) and "stream_options" in text for text in said)
