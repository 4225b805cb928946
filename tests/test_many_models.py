"""Routing among three models (``ROUTEGATE_MODELS``) end to end: three fake upstreams, a real
``routegate serve`` with the deterministic stand-in of ``tests/standin_multi_router.py`` (a prompt
states each model's logit), and the official openai SDK, plain and streamed."""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from server.ladder import Ladder
from server.settings import SettingsError, load_settings
from tests.conftest import CACHE_ENV, FEEDBACK_ENV, Proxy, running_proxy
from tests.dashboard import panel_queries, substitute
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream
from tests.metric_values import MetricDelta
from tests.metrics_text import metric_sum
from tests.prometheus_server import running_prometheus
from tests.redis_server import running_redis
from tests.tools import require_tool

MODULE = "tests.standin_multi_router"
# name, upstream model, input and output USD per 1M tokens: cheapest first
LADDER = [("small", "small-model", 0.1, 0.4), ("mid", "mid-model", 1.0, 4.0), ("big", "big-model", 10.0, 30.0)]
KNOWN = ["small-model", "mid-model", "big-model"]  # the stand-in's checkpoint's models

# What the stand-in predicts (logits stated in the prompt) and where t = 0.5 must send it:
# the cheapest model whose P(big beats it) = sigmoid(q_big - q_m) is below 0.5, else big.
TO_SMALL = "small-model=3 mid-model=1 big-model=2.5 What is the capital of France?"  # small: sigmoid(-0.5) = 0.38
TO_MID = "small-model=0 mid-model=2.2 big-model=2 Prove the theorem."  # small: 0.88; mid: sigmoid(-0.2) = 0.45
TO_BIG = "big-model=3 Write a compiler."  # small and mid: sigmoid(3) = 0.95


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


# prompt -> the router's score: P(big beats small), the most capable against the cheapest
SCORES = {TO_SMALL: sigmoid(2.5 - 3), TO_MID: sigmoid(2 - 0), TO_BIG: sigmoid(3)}
# prompt -> (entry, predicted quality = 1 - P(big beats it))
EXPECTED = {
    TO_SMALL: ("small", 1 - sigmoid(2.5 - 3)),
    TO_MID: ("mid", 1 - sigmoid(2 - 2.2)),
    TO_BIG: ("big", 0.5),
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    upstreams = {name: FakeUpstream(name).start() for name, *_ in LADDER}
    yield upstreams
    for upstream in upstreams.values():
        upstream.stop()


@pytest.fixture(autouse=True)
def _reset(fakes: dict[str, FakeUpstream]) -> None:
    for upstream in fakes.values():
        upstream.reset()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint folder for the stand-ins: ``standin_multi`` knows the three models."""
    root = tmp_path_factory.mktemp("checkpoints")
    (root / "standin_multi").mkdir()
    (root / "standin_multi" / "router.json").write_text(json.dumps({"router": "standin_multi", "models": KNOWN}))
    (root / "standin").mkdir()  # the pair-only stand-in needs only its folder
    return root


def entries(
    fakes: dict[str, FakeUpstream], names: list[str] | None = None, extra: dict[str, dict[str, str]] | None = None
) -> list[dict]:
    """ROUTEGATE_MODELS entries for the fakes (``names`` of them), with ``extra`` fields per name."""
    extra = extra or {}
    return [
        {
            "name": name,
            "base_url": fakes[name].url,
            "api_key": f"sk-{name}-upstream-secret",
            "model": model,
            "input_price": input_price,
            "output_price": output_price,
            **extra.get(name, {}),
        }
        for name, model, input_price, output_price in LADDER
        if names is None or name in names
    ]


def many_env(models: list[dict], checkpoints: Path, **settings: str) -> dict[str, str]:
    """Environment for a routegate routing among ``models`` with the stand-in routers."""
    env = {
        key: value for key, value in os.environ.items() if key in (CACHE_ENV, FEEDBACK_ENV) or not key.startswith("ROUTEGATE_")
    }
    env.update(
        {
            "ROUTEGATE_MODELS": json.dumps(models),
            "ROUTEGATE_ROUTER": "standin_multi",
            "ROUTEGATE_ROUTERS": '["standin_multi", "standin"]',
            "ROUTEGATE_CHECKPOINT_DIR": str(checkpoints),
            "ROUTEGATE_RETRIES": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"ROUTEGATE_{key.upper()}": value for key, value in settings.items()})
    return env


@pytest.fixture(scope="module")
def proxy(fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with running_proxy(many_env(entries(fakes), checkpoints), tmp_path_factory.mktemp("many"), module=MODULE) as running:
        yield running


def client(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.api, api_key="client-key-not-checked", max_retries=0)


def ask(proxy: Proxy, prompt: str, stream: bool, model: str = "router-standin_multi-0.5", **kwargs) -> tuple[dict, str]:
    """The response headers and the answer's text, plain or streamed."""
    messages = [{"role": "user", "content": prompt}]
    raw = client(proxy).chat.completions.with_raw_response.create(model=model, messages=messages, stream=stream, **kwargs)
    if stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    else:
        text = raw.parse().choices[0].message.content or ""
    return dict(raw.headers), text


def only_received(fakes: dict[str, FakeUpstream], name: str, count: int = 1) -> None:
    """``name``'s fake got ``count`` requests, each for its own model; the others none."""
    model = dict((entry, model) for entry, model, *_ in LADDER)[name]
    for other, upstream in fakes.items():
        assert len(upstream.received) == (count if other == name else 0), other
    assert [received.body["model"] for received in fakes[name].received] == [model] * count
    assert fakes[name].received[0].headers["authorization"] == f"Bearer sk-{name}-upstream-secret"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("prompt", list(EXPECTED), ids=["to-small", "to-mid", "to-big"])
def test_the_cheapest_good_enough_model_answers(proxy: Proxy, fakes: dict[str, FakeUpstream], prompt: str, stream: bool):
    name, quality = EXPECTED[prompt]
    headers, text = ask(proxy, prompt, stream)
    only_received(fakes, name)
    assert text.startswith(f"{name}-0" if stream else f"answer from {name}")
    assert headers["x-routegate-tier"] == headers["x-routegate-upstream"] == name
    assert headers["x-routegate-model"] == f"{name}-model"
    assert headers["x-routegate-decision"] == "score"
    assert headers["x-routegate-threshold"] == "0.5"
    assert float(headers["x-routegate-predicted-quality"]) == pytest.approx(quality, abs=1e-6)
    # the score, as with two tiers: the most capable model's chance of beating the cheapest one
    assert float(headers["x-routegate-score"]) == pytest.approx(SCORES[prompt], abs=1e-6)


def test_the_threshold_moves_the_choice(proxy: Proxy, fakes: dict[str, FakeUpstream]):
    """TO_BIG's small and mid are beaten with sigmoid(3) = 0.9526: big at t = 0.95, small (the
    cheapest below t) at t = 0.96; t = 0 sends everything to the most capable."""
    assert ask(proxy, TO_BIG, False, "router-standin_multi-0.95")[0]["x-routegate-upstream"] == "big"
    assert ask(proxy, TO_BIG, False, "router-standin_multi-0.96")[0]["x-routegate-upstream"] == "small"
    assert ask(proxy, TO_SMALL, False, "router-standin_multi-0.0")[0]["x-routegate-upstream"] == "big"


def test_models_are_listed_and_named_directly(proxy: Proxy, fakes: dict[str, FakeUpstream]):
    listed = [model.id for model in client(proxy).models.list()]
    assert {"small", "mid", "big"} <= set(listed)
    headers, _ = ask(proxy, TO_BIG, False, model="mid")
    assert (headers["x-routegate-upstream"], headers["x-routegate-decision"]) == ("mid", "direct")
    headers, _ = ask(proxy, TO_BIG, True, model="small-model")  # an entry's upstream model names it too
    assert (headers["x-routegate-upstream"], headers["x-routegate-decision"]) == ("small", "direct")
    assert len(fakes["mid"].received) == len(fakes["small"].received) == 1 and not fakes["big"].received


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_metrics_carry_the_model_and_the_all_best_cost(proxy: Proxy, stream: bool):
    delta = MetricDelta(proxy.metrics)
    headers, _ = ask(proxy, TO_MID, stream, stream_options={"include_usage": True} if stream else None)
    delta.after()
    labels = {"router": "standin_multi", "tier": "mid", "model": "mid-model", "status": "200"}
    assert delta("routegate_requests_total", **labels) == 1
    assert delta("routegate_router_score_count", router="standin_multi") == 1
    assert delta("routegate_router_score_sum", router="standin_multi") == pytest.approx(SCORES[TO_MID])
    logged = [line for line in proxy.log().splitlines() if f"request_id={headers['x-request-id']} " in line]
    assert logged and f"score={SCORES[TO_MID]:.4f} tier=mid" in logged[-1]
    assert delta("routegate_tokens_total", tier="mid", model="mid-model", kind="prompt") == PROMPT_TOKENS
    cost = (PROMPT_TOKENS * 1.0 + COMPLETION_TOKENS * 4.0) / 1e6
    all_best = (PROMPT_TOKENS * 10.0 + COMPLETION_TOKENS * 30.0) / 1e6
    assert delta("routegate_cost_usd_total", tier="mid", model="mid-model") == pytest.approx(cost)
    assert delta("routegate_all_strong_cost_usd_total", tier="mid", model="mid-model") == pytest.approx(all_best)
    # every entry's series exist from the start (bounded: one per ROUTEGATE_MODELS entry)
    text = proxy.metrics()
    for name, model, *_ in LADDER:
        assert f'routegate_cost_usd_total{{model="{model}",tier="{name}"}}' in text
    metered = [line for line in text.splitlines() if line.startswith(("routegate_requests_total", "routegate_cost_usd_total"))]
    assert metered and not any('tier="strong"' in line or 'tier="weak"' in line for line in metered)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_fallback_climbs_the_ladder(proxy: Proxy, fakes: dict[str, FakeUpstream], stream: bool):
    fakes["small"].behaviour.fail_statuses = [500]
    fakes["mid"].behaviour.fail_statuses = [503]
    delta = MetricDelta(proxy.metrics)
    headers, text = ask(proxy, TO_SMALL, stream)
    delta.after()
    assert text.startswith("big-0" if stream else "answer from big")
    assert headers["x-routegate-upstream"] == headers["x-routegate-tier"] == "big"
    assert headers["x-routegate-fallback"] == "small->mid:http_5xx,mid->big:http_5xx"
    assert [len(fakes[name].received) for name in ("small", "mid", "big")] == [1, 1, 1]
    assert delta("routegate_fallbacks_total", from_tier="small", to_tier="mid", reason="http_5xx") == 1
    assert delta("routegate_fallbacks_total", from_tier="mid", to_tier="big", reason="http_5xx") == 1


def test_each_rung_of_a_hanging_ladder_gets_its_share_of_the_total_timeout(
    fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path
):
    """small and mid hold the request past the whole deadline (3 s, less than a read timeout):
    each rung's tries end at an equal share of the time left, so big, tried last, has a third of
    it. Before, each rung left only the next one half of what remained: big had 0.75 s."""
    fakes["small"].behaviour.delay = fakes["mid"].behaviour.delay = 10.0
    env = many_env(entries(fakes), checkpoints, read_timeout="10", total_timeout="3")
    with running_proxy(env, tmp_path, module=MODULE) as running:
        headers, text = ask(running, TO_SMALL, False)
    assert text == "answer from big" and headers["x-routegate-fallback"] == "small->mid:timeout,mid->big:timeout"
    small, mid, big = (fakes[name].received[0].at for name in ("small", "mid", "big"))
    assert 0.8 < mid - small < 1.3 and 0.8 < big - mid < 1.3


def test_the_most_capable_falls_back_to_the_next_less_capable(proxy: Proxy, fakes: dict[str, FakeUpstream]):
    fakes["big"].behaviour.fail_statuses = [502]
    headers, text = ask(proxy, TO_BIG, False)
    assert text == "answer from mid" and headers["x-routegate-fallback"] == "big->mid:http_5xx"
    assert not fakes["small"].received


def test_every_upstream_failing_is_a_502_naming_the_last(proxy: Proxy, fakes: dict[str, FakeUpstream]):
    for name in ("mid", "big"):
        fakes[name].behaviour.fail_statuses = [500]
    with pytest.raises(openai.APIStatusError) as raised:
        ask(proxy, TO_MID, False)
    assert raised.value.status_code == 502
    assert raised.value.response.headers["x-routegate-fallback"] == "mid->big:http_5xx"  # the top is the last try
    assert raised.value.response.headers["x-routegate-upstream"] == "big"
    assert not fakes["small"].received


def test_a_pair_only_router_is_refused(proxy: Proxy, fakes: dict[str, FakeUpstream]):
    with pytest.raises(openai.BadRequestError) as raised:
        ask(proxy, TO_MID, False, model="router-standin-0.5")
    error = raised.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["param"], error["type"]) == ("router_not_multi_model", "model", "invalid_request_error")
    assert "standin_multi" in error["message"] and "3 models" in error["message"]
    assert not any(upstream.received for upstream in fakes.values())
    listed = [model.id for model in client(proxy).models.list()]
    assert "router-standin_multi-0.5" in listed and not any(name.startswith("router-standin-") for name in listed)


def test_sticky_conversations_never_go_down_the_ladder(fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path) -> None:
    env = many_env(entries(fakes), checkpoints, route_on="sticky")
    with running_proxy(env, tmp_path, module=MODULE) as sticky_proxy:
        conversation = {"x-routegate-conversation-id": "c-1"}

        def turn(prompt: str) -> tuple[str, str]:
            headers, _ = ask(sticky_proxy, prompt, False, extra_headers=conversation)
            return headers["x-routegate-upstream"], headers["x-routegate-decision"]

        assert turn(TO_MID) == ("mid", "score")
        assert turn(TO_SMALL) == ("mid", "sticky")  # would be small: stays on mid
        assert turn(TO_BIG) == ("big", "score")  # a more capable model is allowed
        assert turn(TO_SMALL) == ("big", "sticky")  # and then kept
        headers, _ = ask(sticky_proxy, TO_SMALL, False)  # another conversation is not affected
        assert headers["x-routegate-upstream"] == "small"


def test_a_fallback_does_not_move_a_sticky_conversation_down_the_ladder(
    fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path
) -> None:
    env = many_env(entries(fakes), checkpoints, route_on="sticky")
    with running_proxy(env, tmp_path, module=MODULE) as sticky_proxy:
        conversation = {"x-routegate-conversation-id": "c-fallback"}
        assert ask(sticky_proxy, TO_BIG, False, extra_headers=conversation)[0]["x-routegate-upstream"] == "big"
        fakes["big"].behaviour.fail_statuses = [500]
        headers, _ = ask(sticky_proxy, TO_SMALL, False, extra_headers=conversation)
        assert (headers["x-routegate-upstream"], headers["x-routegate-fallback"]) == ("mid", "big->mid:http_5xx")
        headers, _ = ask(sticky_proxy, TO_SMALL, False, extra_headers=conversation)  # big is back: so is the conversation
        assert (headers["x-routegate-upstream"], headers["x-routegate-decision"]) == ("big", "sticky")


def test_a_sticky_conversation_stays_up_the_ladder_when_it_cannot_be_scored(
    fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path
) -> None:
    env = many_env(entries(fakes), checkpoints, route_on="sticky", score_timeout="0.8", scoring_overload="weak")
    with running_proxy(env, tmp_path, module=MODULE) as sticky_proxy:
        conversation = {"x-routegate-conversation-id": "c-overload"}
        headers, _ = ask(sticky_proxy, TO_MID, False, extra_headers=conversation)
        assert headers["x-routegate-upstream"] == "mid"
        headers, _ = ask(sticky_proxy, "wait=1 " + TO_SMALL, False, extra_headers=conversation)  # not scored in time
        assert (headers["x-routegate-upstream"], headers["x-routegate-decision"]) == ("mid", "sticky")  # not small
        headers, _ = ask(sticky_proxy, "wait=1 " + TO_SMALL, False)  # a new conversation: the overload rule
        assert (headers["x-routegate-upstream"], headers["x-routegate-decision"]) == ("small", "unscored")


def test_sticky_conversations_hold_across_replicas(fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path) -> None:
    """With Redis the conversation's model is shared: a turn on another replica stays on it."""
    with running_redis(tmp_path / "redis") as redis_server:
        # a Redis timeout that a busy machine does not reach
        redis = {"redis_url": redis_server.url, "redis_prefix": "many:", "redis_timeout_ms": "2000"}
        env = many_env(entries(fakes), checkpoints, route_on="sticky", **redis)
        with running_proxy(env, tmp_path, module=MODULE) as first, running_proxy(env, tmp_path, module=MODULE) as second:
            conversation = {"x-routegate-conversation-id": "shared"}
            assert ask(first, TO_MID, False, extra_headers=conversation)[0]["x-routegate-upstream"] == "mid"
            assert redis_server.client().get("many:sticky:id:shared") == "mid"
            headers, _ = ask(second, TO_SMALL, False, extra_headers=conversation)
            assert (headers["x-routegate-upstream"], headers["x-routegate-decision"]) == ("mid", "sticky")


def test_two_entries_are_the_two_tier_rule(fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path) -> None:
    """small and big only: big exactly when the pair score sigmoid(q_big - q_small) >= t."""
    env = many_env(entries(fakes, ["small", "big"]), checkpoints)
    with running_proxy(env, tmp_path, module=MODULE) as pair_proxy:
        for prompt, (q_small, q_big) in {"small-model=1 big-model=2": (1, 2), "small-model=2 big-model=1": (2, 1)}.items():
            score = sigmoid(q_big - q_small)
            for threshold in (0.2, 0.5, 0.8):
                headers, _ = ask(pair_proxy, prompt, False, f"router-standin_multi-{threshold}")
                assert float(headers["x-routegate-score"]) == pytest.approx(score, abs=1e-6)
                assert headers["x-routegate-upstream"] == ("big" if score >= threshold else "small")
        headers, _ = ask(pair_proxy, "no logits stated", False, "router-standin-0.0")  # a pair router serves two
        assert headers["x-routegate-upstream"] == "big"


def test_an_unknown_router_model_fails_start_up(fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path) -> None:
    models = entries(fakes, extra={"mid": {"router_model": "no-such-model"}})
    with pytest.raises(RuntimeError, match="exited") as raised:
        with running_proxy(many_env(models, checkpoints), tmp_path, module=MODULE):
            pass
    message = str(raised.value)
    assert "'no-such-model' of entry 'mid'" in message and "GET /v1/routers" in message
    assert "sk-mid-upstream-secret" not in message


def test_a_second_router_that_lacks_a_model_is_left_out_with_a_warning(
    fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path
) -> None:
    """ROUTEGATE_ROUTERS names a second per-model router whose checkpoint does not know mid's
    model: routegate starts and routes with the default; that router is not listed, its routes
    get 400 ``router_not_multi_model`` naming the routers that can, and the log says why."""
    both = tmp_path / "checkpoints"
    (both / "standin_multi_b").mkdir(parents=True)
    (both / "standin_multi_b" / "router.json").write_text(
        json.dumps({"router": "standin_multi_b", "models": ["small-model", "big-model"]})
    )
    (both / "standin_multi").symlink_to(checkpoints / "standin_multi")
    env = many_env(entries(fakes), both, routers='["standin_multi", "standin_multi_b"]')
    with running_proxy(env, tmp_path, module=MODULE) as proxy:
        headers, _ = ask(proxy, TO_MID, False)
        with pytest.raises(openai.BadRequestError) as raised:
            ask(proxy, TO_MID, False, model="router-standin_multi_b-0.5")
        listed = [model.id for model in client(proxy).models.list()]
        log_text = proxy.log()
    assert headers["x-routegate-upstream"] == "mid"
    error = raised.value.body
    assert isinstance(error, dict) and error["code"] == "router_not_multi_model"
    assert "use one of: standin_multi." in error["message"]
    assert "router-standin_multi-0.5" in listed and not any(name.startswith("router-standin_multi_b") for name in listed)
    assert "router 'standin_multi_b' cannot route among ROUTEGATE_MODELS and is left out" in log_text
    assert "'mid-model' of entry 'mid'" in log_text and "sk-mid-upstream-secret" not in log_text
    warning = next(line for line in log_text.splitlines() if "is left out" in line)
    assert "leave it out of ROUTEGATE_ROUTERS" in warning and "router_model" not in warning  # it would break the default
    assert len(fakes["mid"].received) == 1


def test_a_broken_router_manifest_fails_start_up_in_one_line(fakes: dict[str, FakeUpstream], tmp_path: Path) -> None:
    """A ``router.json`` whose model list is not a list is named at start-up, not a traceback;
    among two models, ``GET /v1/routers`` still lists the routers (the broken one knowing none)."""
    (tmp_path / "checkpoints" / "standin_multi").mkdir(parents=True)
    (tmp_path / "checkpoints" / "standin_multi" / "router.json").write_text('{"router": "standin_multi", "models": null}')
    (tmp_path / "checkpoints" / "standin").mkdir()
    with pytest.raises(RuntimeError, match="exited") as raised:
        with running_proxy(many_env(entries(fakes), tmp_path / "checkpoints"), tmp_path, module=MODULE):
            pass
    message = str(raised.value)
    assert "invalid settings" in message and "'models' is not a list of model names" in message
    assert "Traceback" not in message
    two = many_env(entries(fakes, ["small", "big"]), tmp_path / "checkpoints", router="standin")
    with running_proxy(two, tmp_path, module=MODULE) as pair_proxy:
        listing = httpx.get(f"{pair_proxy.api}/routers", timeout=5)
    assert listing.status_code == 200
    assert {entry["id"]: entry["models"] for entry in listing.json()["data"]} == {"standin_multi": [], "standin": []}


def test_a_router_model_in_another_spelling_is_found_as_a_pairs_models_are(
    fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path
) -> None:
    """As ``meta-llama/Meta-Llama-3.1-70B-Instruct`` finds mf's ``llama-3.1-70b-instruct``."""
    models = entries(fakes, extra={"mid": {"model": "served-as-this", "router_model": "Vendor/Mid-Model"}})
    with running_proxy(many_env(models, checkpoints), tmp_path, module=MODULE) as proxy:
        headers, _ = ask(proxy, TO_MID, False)
    assert headers["x-routegate-upstream"] == "mid"
    assert fakes["mid"].received[-1].body["model"] == "served-as-this"


def test_a_pair_only_default_router_fails_start_up(fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited") as raised:
        with running_proxy(many_env(entries(fakes), checkpoints, router="standin"), tmp_path, module=MODULE):
            pass
    assert "ROUTEGATE_ROUTER: router 'standin' scores only a strong/weak pair" in str(raised.value)
    with pytest.raises(RuntimeError, match="exited") as raised:
        with running_proxy(
            many_env(entries(fakes), checkpoints, aliases='{"cheap": "router-standin-0.5"}'), tmp_path, module=MODULE
        ):
            pass
    assert "alias 'cheap': router 'standin' scores only a strong/weak pair" in str(raised.value)


def test_target_routes_control_the_share_of_the_all_best_cost(proxy: Proxy, fakes: dict[str, FakeUpstream]):
    """router-<r>-30% spends about 30% of what the most capable model would have cost; 0% and
    100% are the cheapest and the most capable model for everything."""
    rng = random.Random(7)
    prompts = [
        f"small-model={rng.gauss(0, 1):.3f} mid-model={rng.gauss(1, 1):.3f} big-model={rng.gauss(1.5, 1):.3f} q{index}"
        for index in range(120)
    ]
    delta = MetricDelta(proxy.metrics)
    for prompt in prompts:
        headers, _ = ask(proxy, prompt, False, "router-standin_multi-30%")
        assert (headers["x-routegate-target"], headers["x-routegate-decision"]) == ("0.3", "score")
    delta.after()
    spent = delta("routegate_cost_usd_total")
    all_best = delta("routegate_all_strong_cost_usd_total")
    realised = metric_sum(proxy.metrics(), "routegate_target_realised_share", router="standin_multi", target="0.3")
    assert realised == pytest.approx(spent / all_best)  # the gauge is the cost share of the route's answers
    assert 0.2 <= realised <= 0.4
    assert all(len(fakes[name].received) > 0 for name in ("small", "mid", "big"))  # a split, not one model
    for target, name in (("0%", "small"), ("100%", "big")):
        assert {
            ask(proxy, prompt, False, f"router-standin_multi-{target}")[0]["x-routegate-upstream"] for prompt in prompts[:5]
        } == {name}


def test_a_spent_budget_leaves_only_the_cheapest_model(fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path):
    env = many_env(entries(fakes), checkpoints, daily_budget_usd="0.00001")  # less than one answer from mid
    with running_proxy(env, tmp_path, module=MODULE) as budget_proxy:
        assert ask(budget_proxy, TO_MID, False)[0]["x-routegate-upstream"] == "mid"  # spends 0.000039 USD
        headers, text = ask(budget_proxy, TO_BIG, False)
        assert (headers["x-routegate-upstream"], headers["x-routegate-decision"], text) == (
            "small",
            "budget",
            "answer from small",
        )
        fakes["small"].behaviour.fail_statuses = [500]
        with pytest.raises(openai.InternalServerError) as failed:  # no fallback to a dearer model either
            ask(budget_proxy, TO_SMALL, False)
        assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_error"
        assert len(fakes["mid"].received) == 1 and not fakes["big"].received


def test_a_spent_budget_keeps_a_most_capable_model_that_is_also_the_cheapest(
    fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path
):
    models = entries(fakes, extra={"small": {"most_capable": True}})  # a free-to-run model marked most capable
    env = many_env(models, checkpoints, daily_budget_usd="0.00001")
    with running_proxy(env, tmp_path, module=MODULE) as budget_proxy:
        assert ask(budget_proxy, "spend", False, model="mid")[0]["x-routegate-upstream"] == "mid"  # the budget is spent
        headers, text = ask(budget_proxy, "hello", False, model="small")
        redirected, _ = ask(budget_proxy, "hello", False, model="big")
    assert (headers["x-routegate-upstream"], headers["x-routegate-decision"], text) == ("small", "direct", "answer from small")
    assert (redirected["x-routegate-upstream"], redirected["x-routegate-decision"]) == ("small", "budget")  # mid's spend counted
    assert len(fakes["mid"].received) == 1 and not fakes["big"].received  # nothing moved to a paid model


def test_weak_means_the_cheapest_model_even_when_it_is_the_most_capable(
    fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path
):
    """``x-routegate-force-tier: weak`` and ``ROUTEGATE_SCORING_OVERLOAD=weak`` mean the cheapest
    model: with the cheapest marked most capable that is it, not the next dearer one."""
    models = entries(fakes, extra={"small": {"most_capable": True}})
    env = many_env(models, checkpoints, allow_overrides="true", scoring_overload="weak", score_timeout="0.2")
    with running_proxy(env, tmp_path, module=MODULE) as proxy:
        forced, _ = ask(proxy, "hello", False, extra_headers={"x-routegate-force-tier": "weak"})
        unscored, _ = ask(proxy, "wait=1 hello", False)  # the stand-in takes a second: over the score timeout
    assert (forced["x-routegate-upstream"], forced["x-routegate-decision"]) == ("small", "forced")
    assert (unscored["x-routegate-upstream"], unscored["x-routegate-decision"]) == ("small", "unscored")
    assert not fakes["mid"].received and not fakes["big"].received


def test_the_dashboard_shows_the_split_across_models(fakes: dict[str, FakeUpstream], checkpoints: Path, tmp_path: Path):
    """A real Prometheus scrapes a routegate that sent 5 requests to small, 3 to mid and 2 to big."""
    prometheus_binary = require_tool("prometheus")
    mix = {TO_SMALL: 5, TO_MID: 3, TO_BIG: 2}
    every = {"deployment": ".*", "router": ".*", "model": ".*"}  # Grafana's "All"
    with running_proxy(many_env(entries(fakes), checkpoints), tmp_path, module=MODULE) as fresh:
        with running_prometheus(prometheus_binary, [fresh.url.removeprefix("http://")], tmp_path) as prometheus:
            prometheus.wait_until(lambda: bool(prometheus.query('up{job="routegate"} == 1')), "a first scrape")
            for prompt, count in mix.items():
                for _ in range(count):
                    ask(fresh, prompt, False)

            def scraped() -> bool:
                found = prometheus.query('sum(routegate_requests_total{router="standin_multi"})')
                samples = prometheus.query("min(count_over_time(routegate_cost_usd_total[5m]))")
                return bool(found) and float(found[0]["value"][1]) == 10 and float(samples[0]["value"][1]) >= 3

            prometheus.wait_until(scraped, "the mix scraped")
            at = float(prometheus.query('timestamp(up{job="routegate"})')[0]["value"][1])

            def by_tier(title: str) -> dict[str, float]:
                [query] = [query for query in panel_queries() if query.panel == title and "all-best" not in query.legend]
                expr = substitute(query.expr, every, "5m", "15m")
                found = prometheus.query(expr, at)
                return {
                    item["metric"]["tier"]: float(item["value"][1]) for item in found if math.isfinite(float(item["value"][1]))
                }

            assert by_tier("Requests by model") == {"small": 0.5, "mid": pytest.approx(0.3), "big": pytest.approx(0.2)}
            per_request = {
                name: PROMPT_TOKENS * price_in + COMPLETION_TOKENS * price_out for name, _, price_in, price_out in LADDER
            }
            all_best = 10 * per_request["big"]
            expected = {EXPECTED[prompt][0]: count * per_request[EXPECTED[prompt][0]] / all_best for prompt, count in mix.items()}
            assert by_tier("Cost by model, share of the all-best-model cost") == pytest.approx(expected)
            hourly = by_tier("Cost per hour by model and all-best-model")
            assert set(hourly) == {"small", "mid", "big"} and all(value > 0 for value in hourly.values())
            [fraction] = [query for query in panel_queries() if query.panel == "Strong-call fraction"]
            [share] = prometheus.query(substitute(fraction.expr, every, "5m", "15m"), at)
            assert float(share["value"][1]) == pytest.approx(0.2)  # the most capable entry's share, whatever its name


def _ladder(models: list[dict]) -> Ladder:
    return Ladder.from_settings(load_settings(models=models))


def test_feedback_is_refused_as_off_not_as_an_unknown_request(proxy: Proxy) -> None:
    headers, _ = ask(proxy, "Rate this answer.", stream=False)
    refused = httpx.post(f"{proxy.url}/v1/feedback", json={"request_id": headers["x-request-id"], "rating": "up"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "feedback_off"  # the store records pairs only


def test_the_ladder_orders_by_price_and_climbs_by_capability():
    def entry(name: str, price: float, **extra: object) -> dict:
        return {"name": name, "model": f"{name}-model", "input_price": price, "output_price": price, **extra}

    ladder = _ladder([entry("big", 10), entry("small", 0.1), entry("huge", 50), entry("mid", 1)])
    assert ladder.names == ["small", "mid", "big", "huge"] and ladder.best == "huge"  # none marked: the dearest
    assert [ladder.fallbacks(name) for name in ladder.names] == [["mid", "big", "huge"], ["big", "huge"], ["huge"], ["big"]]
    marked = _ladder([entry("big", 10, most_capable=True), entry("small", 0.1), entry("huge", 50), entry("mid", 1)])
    assert marked.best == "big" and marked.by_capability() == ["small", "mid", "huge", "big"]
    assert marked.fallbacks("big") == ["huge"] and marked.fallbacks("huge") == ["big"]
    two_tiers = Ladder.from_settings(load_settings(strong={"input_price": 0.0}, weak={"input_price": 5.0}))
    assert (two_tiers.best, two_tiers.cheapest, two_tiers.pair) == ("strong", "weak", True)  # whatever the prices
    assert two_tiers.fallbacks("strong") == ["weak"] and two_tiers.fallbacks("weak") == ["strong"]
    with pytest.raises(SettingsError, match="at most one model may set most_capable"):
        _ladder([entry("a", 1, most_capable=True), entry("b", 2, most_capable=True)])


# The ladder of docs/serving-many-models.md, as its users spell the models.
DOCUMENTED = [
    ("mini", "gpt-4o-mini", 0.15, 0.6),
    ("llama", "meta-llama/Llama-3.1-70B-Instruct", 0.9, 0.9),
    ("gpt4o", "gpt-4o", 2.5, 10.0),
]


def test_the_shipped_mf_routes_the_documented_ladder(tmp_path: Path) -> None:
    """The shipped ``mf`` knows the documented models by their API names and routes among them:
    t = 0 sends a prompt to the most capable, t = 1 to the cheapest, a threshold between the
    middle and the cheapest model's predicted chance of being beaten to the middle one, each with
    the predicted quality the router computes, and each answer comes from the upstream its
    headers name."""
    from routers.model_names import match_model
    from routers.multi_model import beaten_from_logits
    from routers.registry import RouterOptions, load_router

    prompt = "Which of the following is a mammal?\nA. Shark\nB. Whale\nC. Trout\nD. Salmon"
    checkpoints = Path("routers/checkpoints").resolve()
    router = load_router("mf", RouterOptions(checkpoint_dir=checkpoints, strong_model="gpt-4o", weak_model="gpt-4o-mini"))
    names = [match_model(model, router.models) for _, model, *_ in DOCUMENTED]
    beaten = beaten_from_logits(router.model_logits([prompt], names), 2)[0]  # type: ignore[attr-defined]
    assert beaten[0] > beaten[1]  # the premise: the router rates Llama-70B above gpt-4o-mini on this prompt
    middle = (beaten[0] + beaten[1]) / 2
    upstreams = {name: FakeUpstream(name).start() for name, *_ in DOCUMENTED}
    models = [
        {"name": name, "base_url": upstreams[name].url, "model": model, "input_price": price_in, "output_price": price_out}
        for name, model, price_in, price_out in DOCUMENTED
    ]
    env = many_env(models, checkpoints, router="mf", routers='["mf"]')
    try:
        with running_proxy(env, tmp_path, ready_timeout=180) as proxy:
            top, _ = ask(proxy, prompt, stream=False, model="router-mf-0")
            bottom, _ = ask(proxy, prompt, stream=True, model="router-mf-1")
            between, _ = ask(proxy, prompt, stream=False, model=f"router-mf-{middle:.6f}")
    finally:
        for upstream in upstreams.values():
            upstream.stop()
    assert (top["x-routegate-upstream"], top["x-routegate-model"]) == ("gpt4o", "gpt-4o")
    assert float(top["x-routegate-predicted-quality"]) == pytest.approx(0.5)
    assert (bottom["x-routegate-upstream"], bottom["x-routegate-model"]) == ("mini", "gpt-4o-mini")
    assert float(bottom["x-routegate-predicted-quality"]) == pytest.approx(1 - beaten[0], abs=1e-3)
    assert (between["x-routegate-upstream"], between["x-routegate-model"]) == ("llama", "meta-llama/Llama-3.1-70B-Instruct")
    assert float(between["x-routegate-predicted-quality"]) == pytest.approx(1 - beaten[1], abs=1e-3)
    assert [[received.body["model"] for received in upstreams[name].received] for name, *_ in DOCUMENTED] == [
        ["gpt-4o-mini"],
        ["meta-llama/Llama-3.1-70B-Instruct"],
        ["gpt-4o"],
    ]
