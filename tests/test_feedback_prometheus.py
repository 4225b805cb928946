"""The dashboard's quality panels against a real Prometheus scraping a real routegate that shadows
every routed answer and asks a fake judge whose verdict depends on the question.

The known mix (router ``random`` at thresholds 0 and 1): strong chosen for 5 "hard" questions
(strong judged better), 1 "easy" (weak better) and 1 "same" (tie); weak chosen for 3 "hard", 2
"easy", 2 "same" and 1 "noise" (the judge gives no verdict). So regret = 3/7, waste = 2/7 and the
quality retained (5 - 1) / (5 + 3 - 1 - 2) = 0.8, with the interval of server.quality.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from openai import OpenAI

from server.quality import Verdicts, quality
from tests.conftest import Proxy, proxy_env, running_proxy
from tests.dashboard import QUALITY_PANELS, panel_queries, substitute
from tests.fake_judge import FakeJudge, prefer
from tests.fake_upstream import FakeUpstream
from tests.prometheus_server import PrometheusServer, running_prometheus
from tests.tools import require_tool

MIX = {"strong": {"hard": 5, "easy": 1, "same": 1}, "weak": {"hard": 3, "easy": 2, "same": 2, "noise": 1}}
ROUTE = {"strong": "router-random-0.0", "weak": "router-random-1.0"}
EXPECTED = Verdicts.of(
    (
        tier,
        "unparsable"
        if kind == "noise"
        else "tie"
        if kind == "same"
        else ("chosen_better" if (kind == "hard") == (tier == "strong") else "other_better"),
    )
    for tier, kinds in MIX.items()
    for kind, count in kinds.items()
    for _ in range(count)
)
VARIABLES = {"deployment": ".*", "router": ".*", "model": ".*"}


def by_question(question: str, answer_a: str, answer_b: str) -> str:
    if "hard" in question:
        return prefer("strong")(question, answer_a, answer_b)
    if "easy" in question:
        return prefer("weak")(question, answer_a, answer_b)
    return "[[C]]" if "same" in question else "Hard to say."


@dataclass
class Stack:
    proxy: Proxy
    prometheus: PrometheusServer
    at: float

    def values(self, expr: str) -> list[tuple[dict[str, str], float]]:
        return [(item["metric"], float(item["value"][1])) for item in self.prometheus.query(expr, self.at)]


@pytest.fixture(scope="module")
def stack(strong: FakeUpstream, weak: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary = require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("feedback-prometheus")
    judge = FakeJudge().start()
    judge.verdict = by_question
    env = proxy_env(
        strong,
        weak,
        shadow_rate="1",
        feedback_db=str(workdir / "feedback.sqlite3"),
        judge__base_url=judge.url,
        judge__model="fake-judge",
    )
    try:
        with (
            running_proxy(env, workdir) as proxy,
            running_prometheus(prometheus_binary, [proxy.url.removeprefix("http://")], workdir) as prometheus,
        ):
            prometheus.wait_until(lambda: bool(prometheus.query('up{job="routegate"} == 1')), "a first scrape")
            client = OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
            for tier, kinds in MIX.items():
                for kind, count in kinds.items():
                    for index in range(count):
                        question = [{"role": "user", "content": f"A {kind} question, number {index}."}]
                        reply = client.chat.completions.with_raw_response.create(model=ROUTE[tier], messages=question)
                        assert reply.headers["x-routegate-tier"] == tier
            feedback = httpx.post(f"{proxy.api}/feedback", json={"request_id": reply.headers["x-request-id"], "rating": "up"})
            assert feedback.status_code == 200
            judged = sum(sum(kinds.values()) for kinds in MIX.values())

            def scraped() -> bool:
                found = prometheus.query('sum(routegate_shadow_requests_total{outcome="judged"}) + sum(routegate_feedback_total)')
                if not found or float(found[0]["value"][1]) != judged + 1:
                    return False
                return all(
                    float(prometheus.query(f"min(count_over_time({name}[5m]))")[0]["value"][1]) >= 3
                    for name in prometheus.metric_names("routegate_")
                )

            prometheus.wait_until(scraped, "every judgement scraped", timeout=60)
            at = float(prometheus.query('timestamp(up{job="routegate"})')[0]["value"][1])
            yield Stack(proxy, prometheus, at)
    finally:
        judge.stop()


QUERIES = [query for query in panel_queries() if query.panel.startswith(QUALITY_PANELS)]


def test_the_quality_panels_exist() -> None:
    assert {query.panel.removeprefix(QUALITY_PANELS) for query in QUERIES} >= {
        "regret rate by router",
        "waste rate by router",
        "estimated quality retained by router",
    }


@pytest.mark.parametrize("query", QUERIES, ids=lambda query: f"{query.panel}/{query.legend}")
def test_every_quality_query_returns_data(stack: Stack, query) -> None:
    expr = substitute(query.expr, VARIABLES, "5m", "15m")
    assert [value for _, value in stack.values(expr) if math.isfinite(value)], f"no data for {expr}"


def panel(stack: Stack, title: str, legend: str = "{{router}}") -> float:
    [query] = [query for query in QUERIES if query.panel == QUALITY_PANELS + title and query.legend == legend]
    found = [(labels, value) for labels, value in stack.values(substitute(query.expr, VARIABLES, "5m", "15m"))]
    found = [(labels, value) for labels, value in found if math.isfinite(value)]
    assert [labels for labels, _ in found] == [{"router": "random"}], found  # routers without judgements: no value
    return found[0][1]


def test_regret_waste_and_retained_quality_with_its_interval(stack: Stack) -> None:
    expected = quality(EXPECTED)
    assert (expected.regret_rate, expected.waste_rate, expected.retained) == pytest.approx((3 / 7, 2 / 7, 0.8))
    half = 1.96 * math.sqrt(6 * 0.2**2 + 5 * 0.8**2) / 5
    assert (expected.retained_low, expected.retained_high) == pytest.approx((0.8 - half, 0.8 + half))
    assert panel(stack, "regret rate by router") == pytest.approx(expected.regret_rate, rel=1e-9)
    assert panel(stack, "waste rate by router") == pytest.approx(expected.waste_rate, rel=1e-9)
    title = "estimated quality retained by router"
    assert panel(stack, title) == pytest.approx(0.8, rel=1e-9)
    assert panel(stack, title, "{{router}} 95% low") == pytest.approx(expected.retained_low, rel=1e-9)
    assert panel(stack, title, "{{router}} 95% high") == pytest.approx(expected.retained_high, rel=1e-9)


def test_verdict_counts_reach_prometheus(stack: Stack) -> None:
    found = stack.values('sum by (chosen_tier, verdict) (routegate_judgements_total{router="random"})')
    counts = Verdicts()
    for labels, value in found:
        counts.add(labels["chosen_tier"], labels["verdict"], int(value))
    assert counts == EXPECTED
