"""The learned routers serve real requests through the gateway (each loaded once per process)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from routers.calibration import CALIBRATION_FILE, read_calibration
from routers.registry import CHECKPOINT_ROOT, RouterOptions, load_router
from tests.conftest import Proxy, proxy_env, running_proxy, started_proxy
from tests.fake_upstream import FakeUpstream
from tests.metric_values import MetricDelta, wait_for
from tests.metrics_text import metric_sum
from tests.router_fixtures import tiny_causal_lm, write_slice

PROMPTS = ["What is 2 + 2?", "Which of the following is a mammal?\nA. Shark\nB. Whale\nC. Trout\nD. Salmon"]


def _routed(client: OpenAI, model: str, prompt: str) -> tuple[str, float, str]:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": prompt}])
    completion = raw.parse()
    return raw.headers["x-routegate-tier"], float(raw.headers["x-routegate-score"]), completion.choices[0].message.content or ""


def test_default_proxy_serves_shipped_routers(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    env = proxy_env(strong, weak)
    del env["ROUTEGATE_ROUTER"]  # the default router: mf, from the shipped checkpoint
    env["ROUTEGATE_ROUTERS"] = '["sw_ranking", "bert"]'  # clients may name these too
    with running_proxy(env, tmp_path, ready_timeout=180) as proxy:
        client = OpenAI(base_url=proxy.api, api_key="unused")
        for router in ("mf", "sw_ranking", "bert"):
            for threshold, expected_tier in (("0.0", "strong"), ("1.0", "weak")):
                for prompt in PROMPTS:
                    tier, score, _ = _routed(client, f"router-{router}-{threshold}", prompt)
                    assert 0.0 < score < 1.0
                    assert tier == expected_tier, (router, threshold, score)
            # just below a prompt's own score it goes strong, just above it goes weak
            score = _routed(client, f"router-{router}-0.0", PROMPTS[1])[1]  # header: 6 decimals
            assert _routed(client, f"router-{router}-{score - 2e-6:.6f}", PROMPTS[1])[0] == "strong"
            assert _routed(client, f"router-{router}-{score + 2e-6:.6f}", PROMPTS[1])[0] == "weak"
        auto = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": PROMPTS[0]}])
        assert auto.headers["x-routegate-router"] == "mf"
        log = proxy.log()
    sent = [received.body["messages"][-1]["content"] for received in strong.received + weak.received]
    assert sorted(set(sent)) == sorted(PROMPTS)
    # the log holds routegate's lines, not the model libraries' progress bars and INFO lines
    assert "router mf loaded" in log and "Loading weights" not in log and "it/s]" not in log
    assert " INFO sentence_transformers" not in log and " INFO transformers" not in log


def test_proxy_serves_a_trained_causal_llm_router(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    from server.cli import main

    base = tiny_causal_lm(tmp_path / "tiny-lm")
    data = write_slice(tmp_path / "slice.jsonl.gz", {"train": 12})
    checkpoints = tmp_path / "checkpoints"
    assert (
        main(
            [
                "train",
                "causal_llm",
                "--data",
                str(data),
                "--out",
                str(checkpoints / "causal_llm"),
                "--base-model",
                str(base),
                "--epochs",
                "5",
            ]
        )
        == 0
    )
    env = proxy_env(strong, weak, router="causal_llm", checkpoint_dir=str(checkpoints), device="cpu")
    with running_proxy(env, tmp_path, ready_timeout=120) as proxy:
        client = OpenAI(base_url=proxy.api, api_key="unused")
        tier, score, _ = _routed(client, "router-causal_llm-0.0", PROMPTS[0])
        assert tier == "strong" and 0.0 < score < 1.0
        tier, _, _ = _routed(client, "router-causal_llm-1.0", PROMPTS[0])
        assert tier == "weak"
    assert len(strong.received) == 1 and len(weak.received) == 1


HI = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


def test_unknown_model_name_reports_a_failed_router_load(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    env = proxy_env(strong, weak, router="mf", router_strong_model="no-such-model")
    with started_proxy(env, tmp_path) as proxy:
        url = proxy.url
        status = None
        for _ in range(1200):  # until the background load has failed (at most ~2 minutes)
            try:
                status = httpx.get(f"{url}/ready", timeout=1).json()["status"]
            except httpx.TransportError:
                pass
            if status == "failed":
                break
            time.sleep(0.1)
        assert status == "failed"
        refused = httpx.post(f"{url}/v1/chat/completions", json=HI)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
        assert metric_sum(proxy.metrics(), "routegate_requests_total", router="none", status="503") == 1
        assert not strong.received and not weak.received
        log = proxy.log()
        assert "no-such-model" in log and "gpt-4-1106-preview" in log  # names the models the checkpoint knows


def test_a_request_that_arrives_while_the_router_loads_is_held_until_it_is_ready(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    (tmp_path / "checkpoints" / "slow").mkdir(parents=True)
    env = proxy_env(strong, weak, router="slow", checkpoint_dir=str(tmp_path / "checkpoints"))
    env["ROUTEGATE_MAX_CONCURRENT_REQUESTS"], env["ROUTEGATE_MAX_QUEUED_REQUESTS"] = "1", "0"  # room to hold one
    env["SLOW_ROUTER_LOAD_SECONDS"], env["SLOW_ROUTER_SECONDS"] = "6", "0"
    with started_proxy(env, tmp_path, module="tests.slow_router") as proxy:
        url = proxy.url
        assert wait_for(lambda: _answers(f"{url}/health"), timeout=30)
        loading = httpx.get(f"{url}/ready")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        with ThreadPoolExecutor(2) as pool:  # sent while loading: one is held, the other finds no room
            sent = [pool.submit(httpx.post, f"{url}/v1/chat/completions", json=HI, timeout=30) for _ in range(2)]
            answers = sorted((future.result() for future in sent), key=lambda answer: answer.status_code)
        held, refused = answers
        assert held.status_code == 200 and held.headers["x-routegate-router"] == "slow"
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
        assert httpx.get(f"{url}/ready").status_code == 200


def test_a_default_router_that_failed_to_load_is_loaded_again_until_it_loads(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    (tmp_path / "checkpoints" / "slow").mkdir(parents=True)
    mounted_late = tmp_path / "checkpoints" / "slow" / "weights"  # say, a volume mounted after start
    env = proxy_env(strong, weak, router="slow", checkpoint_dir=str(tmp_path / "checkpoints"), router_retry_seconds="0.5")
    env["SLOW_ROUTER_SECONDS"], env["SLOW_ROUTER_NEEDS"] = "0", str(mounted_late)
    with started_proxy(env, tmp_path, module="tests.slow_router") as proxy:
        url = proxy.url
        assert wait_for(lambda: _answers(f"{url}/health"), timeout=30)
        assert wait_for(lambda: httpx.get(f"{url}/ready").json()["status"] == "failed", timeout=30)
        refused = httpx.post(f"{url}/v1/chat/completions", json=HI)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
        assert refused.headers["retry-after"] == "1"  # the next try, ROUTEGATE_ROUTER_RETRY_SECONDS=0.5, in whole seconds
        assert wait_for(lambda: "router slow still cannot be loaded" in proxy.log(), timeout=30)
        mounted_late.write_text("weights")
        assert wait_for(lambda: _answers(f"{url}/ready"), timeout=30)
        served = httpx.post(f"{url}/v1/chat/completions", json=HI, timeout=30)
        log = proxy.log()
    assert served.status_code == 200 and served.headers["x-routegate-router"] == "slow"
    assert len(strong.received) + len(weak.received) == 1
    assert "router slow loaded" in log
    # the traceback once, then a line a try
    assert log.count("could not load router slow") == 1 and "router slow still cannot be loaded" in log


def test_a_router_loaded_on_a_request_is_waited_for_within_the_score_timeout_and_loaded_once(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """A router that failed at start (its files came late) is loaded again by the next request
    naming it. That request waits for it only ROUTEGATE_SCORE_TIMEOUT, like any score (then the
    scoring overload rule: 429 here), and the load it started goes on for the requests after it
    instead of being thrown away and started again."""
    (tmp_path / "checkpoints" / "slow").mkdir(parents=True)
    mounted_late, loads = tmp_path / "checkpoints" / "slow" / "weights", tmp_path / "loads"
    env = proxy_env(
        strong,
        weak,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        routers='["random", "slow"]',
        router_retry_seconds="0.5",
        score_timeout="1",
    )
    env["SLOW_ROUTER_SECONDS"], env["SLOW_ROUTER_NEEDS"] = "0", str(mounted_late)
    env["SLOW_ROUTER_LOAD_SECONDS"], env["SLOW_ROUTER_LOADS"] = "3", str(loads)
    routed = {**HI, "model": "router-slow-0.5"}
    with running_proxy(env, tmp_path, module="tests.slow_router") as proxy:  # ready: the default router, random
        assert wait_for(lambda: "could not load router slow" in proxy.log(), timeout=30)
        mounted_late.write_text("weights")
        time.sleep(1.5)  # well past ROUTEGATE_ROUTER_RETRY_SECONDS
        delta = MetricDelta(proxy.metrics)
        waited = httpx.post(f"{proxy.api}/chat/completions", json=routed, timeout=30)
        assert waited.status_code == 429 and waited.json()["error"]["code"] == "overloaded"
        assert "still loading" in waited.json()["error"]["message"]
        assert wait_for(lambda: _loaded(proxy, "slow"), timeout=30)  # the load went on without a caller
        served = httpx.post(f"{proxy.api}/chat/completions", json=routed, timeout=30)
        delta.after()
    assert served.status_code == 200 and served.headers["x-routegate-router"] == "slow"
    assert delta("routegate_scoring_overload_total", router="slow", reason="loading") == 1
    assert loads.read_text().count("load") == 2  # at start (failed), then once for both requests


def _loaded(proxy: Proxy, router: str) -> bool:
    listing = httpx.get(f"{proxy.api}/routers", timeout=5).json()["data"]
    return any(entry["id"] == router and entry["loaded"] for entry in listing)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("router", ["mf", "bert"])
def test_the_scored_pair_follows_the_upstream_models(
    router: str, strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    env = proxy_env(strong, weak, router=router, strong__model="gpt-4o", weak__model="meta-llama/Llama-3.1-8B-Instruct")
    with running_proxy(env, tmp_path, ready_timeout=180) as proxy:
        ready = httpx.get(f"{proxy.url}/ready").json()
        assert (ready["pair"]["strong"], ready["pair"]["weak"]) == ("gpt-4o-2024-05-13", "llama-3.1-8b-instruct")
        listing = httpx.get(f"{proxy.api}/routers").json()
        listed = next(entry for entry in listing["data"] if entry["id"] == router)
        assert listed["loaded"] and listed["pair"] == ready["pair"]
        assert {"gpt-4o-2024-05-13", "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"} <= set(listed["models"])
        assert f"router {router} scores gpt-4o-2024-05-13 (strong) vs llama-3.1-8b-instruct (weak)" in proxy.log()


def test_a_target_route_starts_from_the_calibration_of_the_scored_pair(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """The default upstreams: mf scores gpt-4o vs gpt-4o-mini, whose scores are on another scale
    than the default pair's (at the default pair's 30% threshold it would send about 5%)."""
    env = proxy_env(strong, weak, router="mf", strong__model="gpt-4o", weak__model="gpt-4o-mini")
    with running_proxy(env, tmp_path, ready_timeout=180) as proxy:
        raw = OpenAI(base_url=proxy.api, api_key="unused").chat.completions.with_raw_response.create(
            model="router-mf-30%", messages=[{"role": "user", "content": PROMPTS[0]}]
        )
    calibration = CHECKPOINT_ROOT / "mf" / CALIBRATION_FILE
    scored = read_calibration(calibration, ("gpt-4o-2024-05-13", "gpt-4o-mini-2024-07-18"))[0.3]
    assert float(raw.headers["x-routegate-threshold"]) == pytest.approx(scored, abs=0.01)
    assert abs(read_calibration(calibration)[0.3] - scored) > 0.1  # the default pair's, which it started from before


def test_upstream_models_the_router_does_not_know_get_the_default_pair(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    with running_proxy(proxy_env(strong, weak, router="mf"), tmp_path, ready_timeout=180) as proxy:
        pair = httpx.get(f"{proxy.url}/ready").json()["pair"]
        assert (pair["strong"], pair["weak"]) == ("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1")
        assert "fake-strong" in pair["why"] and "default pair" in pair["why"]


def test_one_named_model_is_matched_and_the_other_follows_its_upstream(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """ROUTEGATE_ROUTER_STRONG_MODEL alone, in another spelling than the router's: the strong side
    is the named model, the weak side its upstream's model when the router knows it, else the
    default pair's weak model (the gateway used to fail to load the router)."""
    env = proxy_env(strong, weak, router="mf", router_strong_model="gpt-4o", weak__model="my-local-llm")
    with running_proxy(env, tmp_path, ready_timeout=180) as proxy:
        ready = httpx.get(f"{proxy.url}/ready").json()
        assert ready["status"] == "ready"
        assert (ready["pair"]["strong"], ready["pair"]["weak"]) == ("gpt-4o-2024-05-13", "mixtral-8x7b-instruct-v0.1")
        assert ready["pair"]["why"].startswith("named by ROUTEGATE_ROUTER_STRONG_MODEL")
        assert "my-local-llm" in ready["pair"]["why"] and "default pair" in ready["pair"]["why"]
        tier, _, _ = _routed(OpenAI(base_url=proxy.api, api_key="unused"), "auto", PROMPTS[0])
        assert tier in ("strong", "weak")


def test_a_pair_the_router_knows_but_never_saw_scored_together_gets_the_default_pair(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    # sw_ranking knows both models, but no training prompt scored Claude 3 Opus beside GPT-4-1106
    env = proxy_env(strong, weak, router="sw_ranking", strong__model="claude-3-opus-20240229", weak__model="gpt-4-1106-preview")
    with running_proxy(env, tmp_path, ready_timeout=180) as proxy:
        pair = httpx.get(f"{proxy.url}/ready").json()["pair"]
        assert (pair["strong"], pair["weak"]) == ("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1")
        assert "never scored on the same prompt" in pair["why"] and "default pair" in pair["why"]
        client = OpenAI(base_url=proxy.api, api_key="unused")
        tier, score, _ = _routed(client, "auto", PROMPTS[1])
    default_pair = load_router("sw_ranking", RouterOptions(strong_model=pair["strong"], weak_model=pair["weak"]))
    assert score == pytest.approx(default_pair.score([PROMPTS[1]])[0], abs=2e-6)  # scored as the default pair
    assert tier == ("strong" if score >= 0.5 else "weak")
