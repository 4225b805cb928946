"""A real Prometheus scrapes a real routegate after a known mix of requests; every PromQL
expression of the Grafana dashboard and of the alert rules runs against it.

The known mix: 30 requests routed with threshold 0 (strong), 70 with threshold 1 (weak; 10 of
them streamed with usage), one request that names the strong model while the strong upstream
fails twice (one retry, then a fallback to weak) and one unknown model (404). The exact values
are read at the last scrape after it. Then 10 requests to a target route (``router-random-30%``)
feed the target-route panel and alert, which are read at the last scrape after those.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import STRONG_MODEL, Proxy, proxy_env, running_proxy
from tests.dashboard import (
    QUALITY_PANELS,
    alert_rules,
    panel_queries,
    substitute,
    variable_queries,
    without_threshold,
)
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream
from tests.prometheus_server import PrometheusServer, running_prometheus
from tests.tools import require_tool

STRONG_ROUTED, WEAK_ROUTED, WEAK_STREAMED = 30, 70, 10
STRONG_COST = (PROMPT_TOKENS * 10 + COMPLETION_TOKENS * 30) / 1e6  # proxy_env's prices
WEAK_COST = (PROMPT_TOKENS * 0.5 + COMPLETION_TOKENS * 1.5) / 1e6
ANSWERED = STRONG_ROUTED + WEAK_ROUTED + 1  # + the fallback
REALISED = STRONG_ROUTED * STRONG_COST + (WEAK_ROUTED + 1) * WEAK_COST
ALL_STRONG = ANSWERED * STRONG_COST
DASHBOARD_VARIABLES = {"deployment": ".*", "router": ".*", "model": ".*"}  # Grafana's "All"
RATE_INTERVAL, TIME_RANGE = "5m", "15m"  # both cover the whole test
TARGET_ROUTE, TARGET_REQUESTS = "router-random-30%", 10


@dataclass
class Stack:
    """routegate and the Prometheus scraping it; the last scrape after the known mix (``at``) and
    after the target-route requests (``later``); the alerts pending after the known mix."""

    proxy: Proxy
    prometheus: PrometheusServer
    at: float
    later: float
    pending_after_mix: set[str]

    def values(self, expr: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        found = self.prometheus.query(expr, self.at if at is None else at)
        return [(item["metric"], float(item["value"][1])) for item in found]


def _send_mix(proxy: Proxy, strong: FakeUpstream) -> None:
    client = OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "How far is the moon?"}]
    for _ in range(STRONG_ROUTED):
        assert (
            client.chat.completions.with_raw_response.create(model="router-random-0.0", messages=messages).headers[
                "x-routegate-tier"
            ]
            == "strong"
        )
    for index in range(WEAK_ROUTED):
        if index < WEAK_STREAMED:
            chunks = client.chat.completions.create(
                model="router-random-1.0", messages=messages, stream=True, stream_options={"include_usage": True}
            )
            assert any(chunk.usage for chunk in chunks)
        else:
            reply = client.chat.completions.with_raw_response.create(model="router-random-1.0", messages=messages)
            assert reply.headers["x-routegate-tier"] == "weak"
    strong.behaviour.fail_statuses = [500, 500]
    fallback = client.chat.completions.with_raw_response.create(model=STRONG_MODEL, messages=messages)
    assert fallback.headers["x-routegate-fallback"] == "strong->weak:http_5xx"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=messages)


@pytest.fixture(scope="module")
def stack(strong: FakeUpstream, weak: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary = require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    # the mix's thresholds as aliases: their series are exported at 0 from the start, as auto's are
    aliases = '{"all-strong": "router-random-0.0", "all-weak": "router-random-1.0"}'
    with running_proxy(proxy_env(strong, weak, retries="1", aliases=aliases), workdir) as proxy:
        target = proxy.url.removeprefix("http://")
        with running_prometheus(prometheus_binary, [target], workdir) as prometheus:
            prometheus.wait_until(lambda: bool(prometheus.query('up{job="routegate"} == 1')), "a first scrape")
            _send_mix(proxy, strong)

            _wait_for_scrapes(prometheus, 'sum(routegate_requests_total{status="404"})', 1)
            at = _last_scrape(prometheus)
            prometheus.wait_until(lambda: "RoutegateUpstreamErrorRate" in _pending(prometheus), "the error-rate alert")
            pending_after_mix = _pending(prometheus)

            client = OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
            for sent in range(TARGET_REQUESTS):
                client.chat.completions.create(model=TARGET_ROUTE, messages=[{"role": "user", "content": "And the sun?"}])
                if sent == 0:  # the route's series scraped once before the rest, so that increase() counts them
                    _wait_for_scrapes(prometheus, "count(routegate_target_realised_share)", 1)
            _wait_for_scrapes(prometheus, "sum(routegate_target_decisions_total)", TARGET_REQUESTS)
            yield Stack(proxy, prometheus, at, _last_scrape(prometheus), pending_after_mix)


def _wait_for_scrapes(prometheus: PrometheusServer, expr: str, expected: float) -> None:
    """Wait until ``expr`` reads ``expected`` and every routegate series has a few samples for rate()."""

    def scraped() -> bool:
        found = prometheus.query(expr)
        if not found or float(found[0]["value"][1]) != expected:
            return False
        return all(
            float(prometheus.query(f"min(count_over_time({name}[5m]))")[0]["value"][1]) >= 3
            for name in prometheus.metric_names("routegate_")
        )

    prometheus.wait_until(scraped, f"Prometheus to scrape {expr} == {expected}")


def _last_scrape(prometheus: PrometheusServer) -> float:
    """Time of the latest scrape: evaluated there, increase() and rate() need no extrapolation."""
    return float(prometheus.query('timestamp(up{job="routegate"})')[0]["value"][1])


def _pending(prometheus: PrometheusServer) -> set[str]:
    return {alert["labels"]["alertname"] for alert in prometheus.alerts()}


def _finite(values: list[tuple[dict[str, str], float]]) -> list[float]:
    return [value for _, value in values if math.isfinite(value)]


@pytest.mark.parametrize(
    "query",
    [query for query in panel_queries() if not query.panel.startswith(QUALITY_PANELS)],  # their own test
    ids=lambda query: f"{query.panel}/{query.legend}",
)
def test_every_dashboard_query_returns_data(stack: Stack, query: Any) -> None:
    expr = substitute(query.expr, DASHBOARD_VARIABLES, RATE_INTERVAL, TIME_RANGE)
    assert _finite(stack.values(expr, stack.later)), f"no data for {expr}"


def test_dashboard_variables_list_the_router_and_models(stack: Stack) -> None:
    queries = variable_queries()
    assert {labels["router"] for labels, _ in stack.values(queries["router"])} == {"random"}  # the routers clients may name
    assert {labels["deployment"] for labels, _ in stack.values(queries["deployment"])} == {"openai"}
    assert {labels["model"] for labels, _ in stack.values(queries["model"])} == {"fake-strong", "fake-weak"}


def _panel_value(stack: Stack, title: str, legend: str | None = None) -> float:
    [query] = [query for query in panel_queries() if query.panel == title and legend in (None, query.legend)]
    # routers that served nothing (exported at 0 from start) have a 0/0 fraction: no value
    [value] = _finite(stack.values(substitute(query.expr, DASHBOARD_VARIABLES, RATE_INTERVAL, TIME_RANGE)))
    return value


def test_dashboard_shows_the_known_split_and_cost(stack: Stack) -> None:
    assert _panel_value(stack, "Strong-call fraction") == pytest.approx(0.3, rel=1e-9)
    assert _panel_value(stack, "Strong-call fraction by router", "{{router}}") == pytest.approx(0.3, rel=1e-9)
    assert _panel_value(stack, "Realised cost") == pytest.approx(REALISED, rel=1e-9)
    assert _panel_value(stack, "All-strong cost") == pytest.approx(ALL_STRONG, rel=1e-9)
    assert _panel_value(stack, "Savings") == pytest.approx(ALL_STRONG - REALISED, rel=1e-9)
    assert _panel_value(stack, "Savings %") == pytest.approx(1 - REALISED / ALL_STRONG, rel=1e-9)
    assert _panel_value(stack, "Cost ratio") == pytest.approx(REALISED / ALL_STRONG, rel=1e-9)
    assert _panel_value(stack, "Cost ratio over time") == pytest.approx(REALISED / ALL_STRONG, rel=1e-9)


def test_every_alert_expression_evaluates_to_the_known_values(stack: Stack) -> None:
    rules = alert_rules()
    assert stack.values(rules["routegate:strong_fraction_target"]["expr"]) == [({}, 0.3)]
    expected = {
        # each threshold's share over 15m against the last day: |1 - 1| at 0, |0 - 0| at 1
        "RoutegateStrongFractionDrift": {
            (("router", "random"), ("threshold", "0")): 0.0,
            (("router", "random"), ("threshold", "1")): 0.0,
        },
        # two failed attempts at strong, 30 answers from strong; no failures at weak
        "RoutegateUpstreamErrorRate": {(("tier", "strong"),): 2 / (2 + STRONG_ROUTED), (("tier", "weak"),): 0.0},
        # one fallback from strong (http_5xx) in 101 answers
        "RoutegateFallbackRate": {(("from_tier", "strong"),): 1 / ANSWERED},
        # the gateway is scraped
        "RoutegateDown": {(("job", "routegate"),): 1.0},
    }
    without_redis = {"RoutegateSharedStateDown"}  # this gateway has no Redis: no series, so nothing to call down
    assert set(expected) <= {name for name, rule in rules.items() if "alert" in rule}  # a renamed alert fails here
    for name, rule in rules.items():
        if "alert" not in rule:
            continue
        at = stack.later if name == "RoutegateTargetShareMissed" else stack.at
        values = stack.values(without_threshold(rule["expr"]), at)
        assert bool(_finite(values)) != (name in without_redis), f"{name}: {values}"
        stack.values(rule["expr"])  # the whole expression is valid PromQL too
        for labels, value in expected.get(name, {}).items():
            matching = [found for metric, found in values if all(metric.get(key) == want for key, want in labels)]
            assert matching == [pytest.approx(value, abs=1e-12)], (name, labels, values)
    assert 0 < _finite(stack.values(without_threshold(rules["RoutegateRoutingLatencyHigh"]["expr"])))[0] < 60


def test_error_rate_alert_goes_pending_and_the_others_stay_quiet(stack: Stack) -> None:
    assert stack.pending_after_mix == {"RoutegateUpstreamErrorRate"}  # 6.25% > 5%; fallbacks 1% < 2%; drift 0


def test_target_route_panel_shows_its_target(stack: Stack) -> None:
    [query] = [query for query in panel_queries() if query.legend == "target {{router}} {{target}}"]
    found = stack.values(substitute(query.expr, DASHBOARD_VARIABLES, RATE_INTERVAL, TIME_RANGE), stack.later)
    assert found == [({"router": "random", "target": "0.3"}, 0.3)]


def test_metrics_pass_promtool_check_metrics(stack: Stack) -> None:
    body = httpx.get(f"{stack.proxy.url}/metrics").text
    assert "routegate_router_score_bucket" in body
    result = subprocess.run([require_tool("promtool"), "check", "metrics"], input=body, capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_dashboard_shows_the_split_across_models_and_the_all_best_cost(stack: Stack) -> None:
    """With two tiers the models are strong and weak, and the all-best-model cost is the all-strong cost."""

    def by_tier(title: str) -> dict[str, float]:
        [query] = [query for query in panel_queries() if query.panel == title]
        found = stack.values(substitute(query.expr, DASHBOARD_VARIABLES, RATE_INTERVAL, TIME_RANGE))
        return {labels["tier"]: value for labels, value in found if math.isfinite(value)}

    assert by_tier("Requests by model") == {"strong": pytest.approx(0.3), "weak": pytest.approx(0.7)}
    shares = by_tier("Cost by model, share of the all-best-model cost")
    assert shares == {
        "strong": pytest.approx(STRONG_ROUTED * STRONG_COST / ALL_STRONG),
        "weak": pytest.approx((WEAK_ROUTED + 1) * WEAK_COST / ALL_STRONG),
    }
    assert _panel_value(stack, "Cost per hour by model and all-best-model", "all-best-model") == pytest.approx(
        _panel_value(stack, "Cost per hour: realised, all-strong, saved", "all-strong")
    )
