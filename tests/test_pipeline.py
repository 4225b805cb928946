"""The request path's order and its books: admission before scoring, scoring overload, and
sticky memory, target feedback, budget and metrics recorded once from each request's outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import STRONG_MODEL, proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream
from tests.metric_values import MetricDelta
from tests.metrics_text import metric_sum


def _question(index: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question number {index}: what is {index} squared?"}]


async def _burst(url: str, model: str, count: int, **payload: object) -> list[httpx.Response]:
    """``count`` chat requests sent at once, each with its own prompt."""
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        calls = [
            client.post("/v1/chat/completions", json={"model": model, "messages": _question(index), **payload})
            for index in range(count)
        ]
        return await asyncio.gather(*calls)


def test_refused_requests_leave_no_sticky_target_or_budget_trace(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    env = proxy_env(
        strong,
        weak,
        route_on="sticky",
        max_concurrent_requests="1",
        max_queued_requests="0",
        daily_budget_usd="100",
    )
    strong.behaviour.delay = 3.0  # the one slot stays busy while the others arrive
    with running_proxy(env, tmp_path) as proxy:
        budget_before = metric_sum(proxy.metrics(), "routegate_budget_remaining_usd")
        responses = asyncio.run(_burst(proxy.url, "router-random-100%", 20))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] + [429] * 19
        metrics = proxy.metrics()
        assert metric_sum(metrics, "routegate_sticky_conversations") == 1
        assert metric_sum(metrics, "routegate_target_decisions_total", router="random", target="1") == 1
        spent = budget_before - metric_sum(metrics, "routegate_budget_remaining_usd")
        assert spent == pytest.approx((11 * 10 + 7 * 30) / 1e6)  # the one answer's tokens at proxy_env's prices

        strong.behaviour.delay = 0.0
        served = next(index for index, response in enumerate(responses) if response.status_code == 200)
        refused = next(index for index, response in enumerate(responses) if response.status_code == 429)
        decisions = {}
        for index in (served, refused):
            follow_up = [
                *_question(index),
                {"role": "assistant", "content": "answer from strong"},
                {"role": "user", "content": "And cubed?"},
            ]
            response = httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-random-100%", "messages": follow_up})
            decisions[index] = response.headers["x-routegate-decision"]
    assert decisions == {served: "sticky", refused: "score"}  # the refused conversation was never remembered


def test_a_relayed_upstream_429_is_timed_for_what_it_took(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    env = proxy_env(strong, weak, retries="2", fallback="false")
    strong.behaviour.fail_statuses = [429, 429, 429]
    strong.behaviour.retry_after = "0.4"  # two waits of 0.4 s before the last 429 is relayed
    with running_proxy(env, tmp_path) as proxy:
        delta = MetricDelta(proxy.metrics)
        response = httpx.post(f"{proxy.api}/chat/completions", json={"model": STRONG_MODEL, "messages": _question(1)}, timeout=30)
        delta.after()
    assert response.status_code == 429 and len(strong.received) == 3
    assert delta("routegate_upstream_duration_seconds_count", tier="strong") == 1
    assert delta("routegate_upstream_duration_seconds_sum", tier="strong") >= 0.8
    assert delta("routegate_requests_total", tier="strong", status="429") == 1


def _slow_router_env(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, **settings: str) -> dict[str, str]:
    (tmp_path / "checkpoints" / "slow").mkdir(parents=True)
    env = proxy_env(
        strong,
        weak,
        router="slow",
        checkpoint_dir=str(tmp_path / "checkpoints"),
        score_threads="1",
        score_batch_size="1",
        score_cache_size="0",
        score_queue_size="1",
        score_timeout="0.2",
        **settings,
    )
    env["SLOW_ROUTER_SECONDS"] = "0.6"
    return env


def test_scoring_overload_sheds_with_429(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    env = _slow_router_env(strong, weak, tmp_path, scoring_overload="shed")
    with running_proxy(env, tmp_path, module="tests.slow_router") as proxy:
        delta = MetricDelta(proxy.metrics)
        responses = asyncio.run(_burst(proxy.url, "router-slow-0.5", 3))
        delta.after()
    for response in responses:  # one is being scored, one waits in the queue of one, one finds it full
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "overloaded"
    assert delta("routegate_scoring_overload_total", router="slow") == 3
    assert delta("routegate_scoring_overload_total", router="slow", reason="queue_full") >= 1
    assert delta("routegate_requests_rejected_total", reason="scoring_overload") == 3
    assert not strong.received and not weak.received


@pytest.mark.parametrize(("tier", "model"), [("weak", "router-slow-0.0"), ("strong", "router-slow-1.0")])
def test_scoring_overload_can_route_unscored(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, tier: str, model: str
) -> None:
    env = _slow_router_env(strong, weak, tmp_path, scoring_overload=tier)
    with running_proxy(env, tmp_path, module="tests.slow_router") as proxy:
        client = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model=model, messages=_question(1))
        metrics = proxy.metrics()
    # the threshold would have sent a scored request to the other tier
    assert raw.headers["x-routegate-decision"] == "unscored" and raw.headers["x-routegate-tier"] == tier
    assert "x-routegate-score" not in raw.headers
    other = weak if tier == "strong" else strong
    assert raw.parse().choices[0].message.content == f"answer from {tier}" and not other.received
    assert metric_sum(metrics, "routegate_scoring_overload_total", router="slow", reason="timeout") == 1
    # the wait that timed out is in the scoring-time histogram (the latency alert reads it)
    assert metric_sum(metrics, "routegate_routing_duration_seconds_count", router="slow") >= 1


def test_a_burst_past_capacity_is_refused_before_scoring(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """With ``mf``: clients past the slots and the queue get 429 at once, without router time."""
    env = proxy_env(
        strong,
        weak,
        routers='["mf"]',
        max_concurrent_requests="4",
        max_queued_requests="4",
        queue_timeout="0.5",
        score_cache_size="0",
    )
    strong.behaviour.delay = weak.behaviour.delay = 0.3
    with running_proxy(env, tmp_path, ready_timeout=180) as proxy:
        assert "router mf loaded" in proxy.log()  # at start, not on a first request
        delta = MetricDelta(proxy.metrics)
        responses = asyncio.run(_burst(proxy.url, "router-mf-0.5", 300))
        delta.after()
    answered = [response for response in responses if response.status_code == 200]
    refused = [response for response in responses if response.status_code == 429]
    assert len(answered) + len(refused) == 300 and len(refused) >= 100  # 8 places for 300 at once
    assert all(response.headers["retry-after"] == "1" for response in refused)
    assert delta("routegate_routing_duration_seconds_count", router="mf") == len(answered)  # refused: never scored
    assert delta("routegate_requests_rejected_total") == len(refused)
    assert max(strong.max_in_flight, weak.max_in_flight) <= 4
