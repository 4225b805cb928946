"""The forward step: send the request to the decided tier's upstream, with retries and, when
that tier fails, a fallback to the other tier (``dataclasses.replace`` of the Decision)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from server import metrics
from server.decision import Decision
from server.settings import Settings
from server.upstream import (
    Attempts,
    CompletedResponse,
    StreamStart,
    Upstream,
    UpstreamFailure,
)

log = logging.getLogger("routegate.proxy")
OTHER_TIER = {"strong": "weak", "weak": "strong"}


@dataclass(frozen=True)
class Exchange:
    """What the last upstream tried gave back: an open stream, a whole answer or a failure.
    ``decision.tier`` is that upstream's tier; ``sent_at`` when its last try was sent."""

    decision: Decision
    upstream: Upstream
    sent_at: float
    result: StreamStart | CompletedResponse | UpstreamFailure
    headers: dict[str, str] = field(default_factory=dict)  # x-request-id, x-routegate-fallback


class Forwarder:
    """Sends requests to the strong and weak upstreams."""

    def __init__(self, settings: Settings, upstreams: dict[str, Upstream]) -> None:
        self.settings = settings
        self.upstreams = upstreams

    async def forward(self, decision: Decision, payload: dict[str, Any], strong_allowed: bool = True) -> Exchange:
        """Try the decided tier, then (with fallback on, and the strong tier affordable) the other."""
        stream = payload.get("stream") is True
        tiers = [decision.tier]
        other = OTHER_TIER[decision.tier]
        if self.settings.fallback and (other != "strong" or strong_allowed):
            tiers.append(other)
        headers = {"x-request-id": decision.request_id}
        for position, tier in enumerate(tiers):
            upstream = self.upstreams[tier]
            decision = dataclasses.replace(decision, tier=tier)
            attempts = Attempts(self.settings, time.monotonic() + self.settings.total_timeout)
            body = json.dumps({**payload, "model": upstream.model}, ensure_ascii=False, separators=(",", ":")).encode()
            log.debug("request_id=%s forwarding %d bytes to the %s upstream", decision.request_id, len(body), tier)
            sent_at = time.monotonic()
            try:
                if stream:
                    result: StreamStart | CompletedResponse = await attempts.stream(upstream, body, decision.request_id)
                    if isinstance(result, StreamStart):
                        metrics.UPSTREAM_TTFB_SECONDS.labels(tier, upstream.model).observe(result.ttfb)
                else:
                    result, ttfb = await attempts.complete(upstream, body, decision.request_id)
                    metrics.UPSTREAM_TTFB_SECONDS.labels(tier, upstream.model).observe(ttfb)
            except UpstreamFailure as failure:
                if position + 1 < len(tiers):
                    next_tier = tiers[position + 1]
                    metrics.FALLBACKS.labels(tier, next_tier, failure.reason).inc()
                    headers["x-routegate-fallback"] = f"{tier}->{next_tier}:{failure.reason}"
                    log.warning("request_id=%s fallback %s->%s reason=%s", decision.request_id, tier, next_tier, failure.reason)
                    continue
                return Exchange(decision, upstream, sent_at, failure, headers)
            return Exchange(decision, upstream, sent_at, result, headers)
        raise AssertionError("unreachable: the last tier either answers or fails")
