"""Target-share routes: the controller, the calibration seed, the daily budget, and the route
through a real routegate."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openai
import pytest
from openai import OpenAI

from routers.calibration import read_calibration, write_calibration
from server.cost_targets import CostTargets
from server.targets import DailyBudget, ShareController, Targets, seed_scores, utc_day_start
from tests.conftest import proxy_env, running_proxy
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream

NOON = utc_day_start(1_800_000_000.0) + 43_200.0


def _run(controller: ShareController, scores: list[float], share: float) -> tuple[list[bool], list[float]]:
    decisions, thresholds = [], []
    for score in scores:
        threshold = controller.threshold(share)
        controller.observe(score)
        decisions.append(score >= threshold)
        thresholds.append(threshold)
        controller.record(decisions[-1], share)
    return decisions, thresholds


def test_controller_tracks_the_share_through_a_shift_in_scores() -> None:
    rng = random.Random(7)
    low = [rng.betavariate(2, 5) for _ in range(1000)]  # easy traffic: low scores
    high = [rng.betavariate(5, 2) for _ in range(1000)]  # hard traffic: high scores
    decisions, thresholds = _run(ShareController(window=300, feedback_horizon=100), low + high, 0.3)
    assert abs(sum(decisions[500:1000]) / 500 - 0.3) <= 0.03
    assert abs(sum(decisions[-500:]) / 500 - 0.3) <= 0.03
    assert thresholds[-1] - thresholds[999] > 0.3  # the threshold followed the scores up


def test_a_full_share_sends_every_prompt_to_the_best_even_one_below_every_recent_score() -> None:
    """router-<router>-100% sends everything to the strong tier (among several models: to the
    most capable), not all but the prompts that score lower than the window's lowest."""
    from routers.multi_model import choose
    from server.cost_targets import CostShareController

    rng = random.Random(3)
    scores = [rng.random() for _ in range(500)]
    decisions, _ = _run(ShareController(window=10, feedback_horizon=100), scores, 1.0)
    assert all(decisions)
    cost_share = CostShareController(window=10, feedback_horizon=100, best=2)
    for _ in range(10):
        cost_share.observe([0.5, 0.4, 0.0])
    threshold = cost_share.threshold(1.0, unit_costs=[1.0, 2.0, 10.0], prices=[1.0, 2.0, 10.0])
    assert list(choose(np.array([[0.1, 0.1, 0.0]]), [1.0, 2.0, 10.0], 2, threshold)) == [2]


def test_calibration_seeds_the_first_threshold(tmp_path: Path) -> None:
    router_dir = tmp_path / "mf"
    router_dir.mkdir()
    table = {"0.0": 0.95, "0.1": 0.8, "0.3": 0.62, "0.5": 0.5, "0.9": 0.2, "1.0": 0.05}
    (router_dir / "calibration.json").write_text(json.dumps({"router": "mf", "thresholds": table}))
    assert read_calibration(router_dir / "calibration.json")[0.3] == 0.62
    seeds = seed_scores(read_calibration(router_dir / "calibration.json"), 200)
    assert len(seeds) == 200 and max(seeds) <= 0.95 and min(seeds) >= 0.05
    seeded = Targets(window=500, feedback_horizon=100, checkpoint_dir=tmp_path)
    assert abs(seeded.decide("mf", 0.3).threshold - 0.62) < 0.02
    unseeded = Targets(window=500, feedback_horizon=100, checkpoint_dir=tmp_path / "none")
    assert unseeded.decide("mf", 0.3).threshold == 0.7  # no calibration: 1 - share until scores arrive
    for twentieth in range(1, 10):
        unseeded.controller("mf", 0.3).observe(twentieth / 20)
    assert 0.3 <= unseeded.decide("mf", 0.3).threshold <= 0.4  # then the 70% quantile of the scores seen (0.05-0.45)


def test_written_calibration_reads_back_and_seeds_the_quantile(tmp_path: Path) -> None:
    rng = random.Random(3)
    reference = [rng.betavariate(2, 3) for _ in range(2000)]
    write_calibration(tmp_path / "mf" / "calibration.json", reference, router="mf", data="reference.jsonl")
    table = read_calibration(tmp_path / "mf" / "calibration.json")
    assert len(table) == 101 and table[0.5] == sorted(reference)[-1000]
    first = Targets(window=500, feedback_horizon=100, checkpoint_dir=tmp_path).decide("mf", 0.2).threshold
    assert abs(first - sorted(reference)[-400]) < 0.01  # the reference's 80% quantile


def test_a_calibration_written_later_or_again_seeds_the_next_new_route(tmp_path: Path) -> None:
    """A checkpoint volume mounted late, or ``routegate calibrate --write`` on a running gateway:
    the next new route starts from the calibration on disk, not from what an earlier route read."""
    import os

    targets = Targets(window=500, feedback_horizon=100, checkpoint_dir=tmp_path)
    assert targets.decide("mf", 0.3).threshold == 0.7  # no calibration yet: 1 - share
    path = tmp_path / "mf" / "calibration.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"router": "mf", "thresholds": {"0.0": 0.95, "0.3": 0.62, "1.0": 0.05}}))
    assert abs(targets.decide("mf", 0.31).threshold - 0.61) < 0.02
    path.write_text(json.dumps({"router": "mf", "thresholds": {"0.0": 0.95, "0.3": 0.4, "1.0": 0.05}}))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a later modification time, whatever the clock's step
    assert abs(targets.decide("mf", 0.32).threshold - 0.39) < 0.02


def test_a_route_starts_from_the_calibration_of_the_pair_its_router_scores(tmp_path: Path) -> None:
    """One router scores two pairs on two scales: a gateway on gpt-4o vs gpt-4o-mini starts from that
    pair's thresholds, not from the default pair's (with the shipped mf, 5% instead of 30% strong)."""
    path = tmp_path / "mf" / "calibration.json"
    default_pair = [0.75 + 0.2 * index / 999 for index in range(1000)]  # the 70% quantile: about 0.89
    upstreams = [0.35 + 0.2 * index / 999 for index in range(1000)]  # about 0.49
    write_calibration(path, default_pair, router="mf", strong="gpt-4-1106-preview", weak="mistralai/Mixtral-8x7B-Instruct-v0.1")
    write_calibration(path, upstreams, router="mf", strong="gpt-4o", weak="gpt-4o-mini")  # as given to calibrate
    write_calibration(path, upstreams, router="mf", strong="gpt-4o", weak="gpt-4o-mini")  # again: replaced, not added
    written = json.loads(path.read_text())
    assert (written["strong"], [entry["weak"] for entry in written["pairs"]]) == ("gpt-4-1106-preview", ["gpt-4o-mini"])
    scored = {"mf": ("gpt-4o-2024-05-13", "gpt-4o-mini-2024-07-18")}  # the router's names, as the gateway loads it
    targets = Targets(window=500, feedback_horizon=100, checkpoint_dir=tmp_path, scored_pair=scored.get)
    assert abs(targets.decide("mf", 0.3).threshold - 0.49) < 0.01
    loaded: dict[str, tuple[str, str]] = {}
    lazily = Targets(window=500, feedback_horizon=100, checkpoint_dir=tmp_path, scored_pair=loaded.get)
    assert abs(lazily.decide("mf", 0.3).threshold - 0.89) < 0.01  # the route opens before its router loads: the first
    loaded.update(scored)  # then the router loads, before the route has decided anything
    assert abs(lazily.decide("mf", 0.3).threshold - 0.49) < 0.01
    lazily.record("mf", 0.3, 0.3, True, 0.5)
    assert lazily.controller("mf", 0.3) is lazily.controller("mf", 0.3)  # once it decides, it keeps its window
    assert read_calibration(path, ("claude-3-5-sonnet-20240620", "gpt-3.5-turbo-0125")) == read_calibration(path)


def test_unusable_calibration_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "calibration.json").write_text('{"thresholds": [1, 2]}')
    assert read_calibration(tmp_path / "calibration.json") == {}
    assert read_calibration(tmp_path / "missing.json") == {}


def test_budget_projects_the_rest_of_the_day_and_resets_at_midnight() -> None:
    now = [NOON - 3600.0]
    budget = DailyBudget(10.0, clock=lambda: now[0])
    now[0] = NOON
    for _ in range(3600):  # one routed request a second for the last hour
        budget.count_request()
    budget.record_cost("weak", 0.0001, 0.001)  # an average request costs 0.001 USD on the strong tier
    # 43,200 s left x 1 request/s x 0.001 USD = 43.2 USD at share 1; 10 USD pays for 10 / 43.2
    assert abs(budget.affordable_share() - 10 / 43.2) < 1e-3
    budget.record_cost("strong", 10.5, 10.5)
    assert budget.remaining_usd == -0.5 and budget.affordable_share() == 0.0
    now[0] = NOON + 43_200.0 + 1.0  # the next UTC day
    assert budget.remaining_usd == 10.0
    budget.count_request()
    budget.record_cost("weak", 0.0001, 0.01)  # today's average: 0.01 USD, not yesterday's 0.001 or a mix of both
    now[0] += 3600.0  # one request in an hour, 82,799 s left: 0.23 requests x 0.01 USD fits 10 USD whole
    assert budget.affordable_share() == 1.0
    for _ in range(35_999):  # ten a second this hour: 82,799 s x 10 x 0.01 USD = 8,280 USD at share 1
        budget.count_request()
    assert abs(budget.affordable_share() - 10 / (36_000 / 3600 * 82_799 * 0.01)) < 1e-4


def test_target_route_through_the_proxy_with_a_budget(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    strong_cost = (PROMPT_TOKENS * 10 + COMPLETION_TOKENS * 30) / 1e6  # proxy_env's strong prices
    budget = 5 * strong_cost
    env = proxy_env(strong, weak, daily_budget_usd=str(budget), target_window="50")
    with running_proxy(env, tmp_path) as proxy:
        client = OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
        listed = [model.id for model in client.models.list()]
        headers = [
            client.chat.completions.with_raw_response.create(
                model="router-random-50%", messages=[{"role": "user", "content": f"question {index}"}]
            ).headers
            for index in range(60)
        ]
        metrics = proxy.metrics()
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="router-random-150%", messages=[{"role": "user", "content": "x"}])
    assert bad.value.body["code"] == "invalid_target" and bad.value.body["param"] == "model"
    assert "router-random-30%" in listed
    assert all(h["x-routegate-target"] == "0.5" and h["x-routegate-decision"] == "score" for h in headers)
    strong_calls = sum(h["x-routegate-tier"] == "strong" for h in headers)
    assert 1 <= strong_calls == len(strong.received) <= 6  # the budget pays for 5; one may be under way
    assert float(headers[-1]["x-routegate-effective-target"]) < 0.5
    remaining = float(re.search(r"^routegate_budget_remaining_usd (\S+)$", metrics, re.M).group(1))
    assert abs(remaining - (budget - strong_calls * strong_cost)) < 1e-9
    assert 'routegate_target_share{router="random",target="0.5"} 0.5' in metrics
    assert re.search(r'^routegate_target_threshold\{router="random",target="0.5"\} \S+$', metrics, re.M)
    realised = float(
        re.search(r'^routegate_target_realised_share\{router="random",target="0.5"\} (\S+)$', metrics, re.M).group(1)
    )
    assert realised == sum(h["x-routegate-tier"] == "strong" for h in headers[-50:]) / 50  # window: last 50


def test_budget_left_is_the_sum_over_workers(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """Each of two workers keeps half the budget; the gauge adds up the serving processes only."""
    strong_cost = (PROMPT_TOKENS * 10 + COMPLETION_TOKENS * 30) / 1e6
    env = proxy_env(strong, weak, daily_budget_usd="1", workers="2")
    with running_proxy(env, tmp_path, ready_timeout=120) as proxy:
        client = OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
        client.chat.completions.create(model="router-random-0", messages=[{"role": "user", "content": "hi"}])
        deadline = time.monotonic() + 30  # /ready answered from one worker; the other may still be starting
        while True:
            remaining = float(re.search(r"^routegate_budget_remaining_usd (\S+)$", proxy.metrics(), re.M).group(1))
            if abs(remaining - (1.0 - strong_cost)) < 1e-9 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert abs(remaining - (1.0 - strong_cost)) < 1e-9


def _route_tables(tmp_path: Path, max_routes: int, clock: Callable[[], float]) -> list[Targets | CostTargets]:
    """Both tables of target routes (shares of strong calls; cost shares among several models), router-mf-30% listed."""
    listed = [("mf", 0.3)]
    return [
        Targets(window=50, feedback_horizon=50, checkpoint_dir=tmp_path, max_routes=max_routes, pinned=listed, clock=clock),
        CostTargets(50, 50, best=1, prices=[(0.1, 0.4), (2.5, 10.0)], max_routes=max_routes, pinned=listed, clock=clock),
    ]


def test_a_client_key_opens_at_most_a_quarter_of_the_target_routes(tmp_path: Path) -> None:
    """One client key filling every place would keep the others from target routes for ten minutes:
    each key holds a quarter of them; its own least recently used route gives its place up once
    idle; a route another key opened is served to it as to anyone; without client keys ("") the
    only bound is the table's."""
    from server.targets import ROUTE_IDLE_SECONDS, TooManyRoutes

    now = [0.0]
    tables = _route_tables(tmp_path, max_routes=8, clock=lambda: now[0])
    for table in tables:
        now[0] = 0.0
        table.controller("mf", 0.1, "key-a")
        table.controller("mf", 0.2, "key-a")
        with pytest.raises(TooManyRoutes, match="this client key opened 2 target routes"):
            table.controller("mf", 0.4, "key-a")
        table.controller("mf", 0.3, "key-a")  # a listed route takes no place
        table.controller("mf", 0.4, "key-b")  # another key's share is its own
        table.controller("mf", 0.4, "key-a")  # and its route is served to every client
        for percent in range(5, 11):  # without client keys: the table's eight places
            table.controller("mf", percent / 100, "")
        with pytest.raises(TooManyRoutes, match="8 target routes are live"):
            table.controller("mf", 0.11, "")
        now[0] = ROUTE_IDLE_SECONDS + 1
        table.controller("mf", 0.2, "key-a")  # in use again
        table.controller("mf", 0.12, "key-a")  # key-a's idle 0.1 gives its place up
        assert ("mf", 0.1) not in table._controllers and {("mf", 0.2), ("mf", 0.12)} <= set(table._controllers)


def test_a_route_idle_for_ten_minutes_gives_its_place_to_a_new_one(tmp_path: Path) -> None:
    """One client opening every route it may does not close target routes to the others for good:
    the least recently used route that has been idle ten minutes goes; a busy table still refuses."""
    from server.targets import ROUTE_IDLE_SECONDS, TooManyRoutes

    now = [0.0]
    tables = _route_tables(tmp_path, max_routes=2, clock=lambda: now[0])
    for table in tables:
        now[0] = 0.0
        table.controller("mf", 0.1)
        table.controller("mf", 0.2)
        now[0] = ROUTE_IDLE_SECONDS - 1
        table.controller("mf", 0.2)  # in use
        with pytest.raises(TooManyRoutes):
            table.controller("mf", 0.5)  # both were used less than ten minutes ago
        table.controller("mf", 0.3)  # a listed route is always served
        now[0] = ROUTE_IDLE_SECONDS + 1
        table.controller("mf", 0.5)  # 0.1 has been idle ten minutes: it goes
        assert set(table._controllers) == {("mf", 0.2), ("mf", 0.3), ("mf", 0.5)}
        # a request of the evicted route that was still running is answered: its books are skipped, not refused
        if isinstance(table, Targets):
            table.record("mf", 0.1, 0.1, strong=True, score=0.9)
        else:
            table.record("mf", 0.1, 0.1, (0.1, 0.9), (0.001, 0.01), (10, 10))
        assert table.realised_share("mf", 0.1) is None and ("mf", 0.1) not in table._controllers
