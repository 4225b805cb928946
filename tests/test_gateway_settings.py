"""Gateway behaviour that depends on settings, each on a routegate process of its own."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, STRONG_KEY, STRONG_MODEL, WEAK_KEY, WEAK_MODEL, proxy_env, running_proxy
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream, free_port


def without_routegate_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every ROUTEGATE_ variable for the test (the settings then come from it alone)."""
    for name in list(os.environ):
        if name.startswith("ROUTEGATE_"):
            monkeypatch.delenv(name)


MESSAGES = [{"role": "user", "content": "Name a prime number."}]
STRONG_COST = (PROMPT_TOKENS * 10 + COMPLETION_TOKENS * 30) / 1e6  # prices in proxy_env
WEAK_COST = (PROMPT_TOKENS * 0.5 + COMPLETION_TOKENS * 1.5) / 1e6


def samples(metrics_text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels; an AssertionError when the page has none."""
    key = (name, tuple(sorted(labels.items())))
    assert key in metrics, f"no sample {name}{labels}"
    return metrics[key]


def test_metrics_after_a_known_sequence(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        sdk = openai.OpenAI(base_url=proxy.api, api_key="k", max_retries=0)
        for _ in range(10):
            sdk.chat.completions.create(model="router-random-0.0", messages=MESSAGES)
        for _ in range(4):
            sdk.chat.completions.create(model="router-random-1.0", messages=MESSAGES)
        stream = sdk.chat.completions.create(
            model="router-random-1.0", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        assert len(list(stream)) == 6
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="nope", messages=MESSAGES)
        targeted = sdk.chat.completions.with_raw_response.create(model="router-random-50%", messages=MESSAGES)
        metrics = samples(proxy.metrics())

    targeted_tier = targeted.headers["x-routegate-tier"]
    strong_answers, weak_answers = 10 + (targeted_tier == "strong"), 5 + (targeted_tier == "weak")
    requests = "routegate_requests_total"
    assert value(metrics, requests, router="random", tier="strong", model=STRONG_MODEL, status="200") == strong_answers
    assert value(metrics, requests, router="random", tier="weak", model=WEAK_MODEL, status="200") == weak_answers
    assert value(metrics, requests, router="none", tier="none", model="none", status="404") == 1
    assert value(metrics, "routegate_router_score_count", router="random") == 16
    assert value(metrics, "routegate_routing_duration_seconds_count", router="random") == 16
    tokens, cost = "routegate_tokens_total", "routegate_cost_usd_total"
    assert value(metrics, tokens, tier="strong", model=STRONG_MODEL, kind="prompt") == strong_answers * PROMPT_TOKENS
    assert value(metrics, tokens, tier="weak", model=WEAK_MODEL, kind="completion") == weak_answers * COMPLETION_TOKENS
    assert value(metrics, cost, tier="strong", model=STRONG_MODEL) == pytest.approx(strong_answers * STRONG_COST)
    assert value(metrics, cost, tier="weak", model=WEAK_MODEL) == pytest.approx(weak_answers * WEAK_COST)
    assert value(metrics, "routegate_all_strong_cost_usd_total", tier="weak", model=WEAK_MODEL) == pytest.approx(
        weak_answers * STRONG_COST
    )
    assert value(metrics, "routegate_upstream_duration_seconds_count", tier="strong", model=STRONG_MODEL) == strong_answers
    assert value(metrics, "routegate_upstream_ttfb_seconds_count", tier="weak", model=WEAK_MODEL) == weak_answers
    assert value(metrics, "routegate_router_threshold", router="random") == 1.0  # the threshold routes', not the target route's
    assert value(metrics, "routegate_target_decisions_total", router="random", target="0.5", tier=targeted_tier) == 1
    other_tier = {"strong": "weak", "weak": "strong"}[targeted_tier]  # at 0 from the route's first answer, for increase()
    assert value(metrics, "routegate_target_decisions_total", router="random", target="0.5", tier=other_tier) == 0
    threshold_decisions = "routegate_threshold_decisions_total"  # the 15 threshold-route answers, not the target route's
    assert value(metrics, threshold_decisions, router="random", threshold="0", tier="strong") == 10
    assert value(metrics, threshold_decisions, router="random", threshold="1", tier="weak") == 5
    assert value(metrics, threshold_decisions, router="random", threshold="0.5", tier="strong") == 0  # auto's, from the start
    assert value(metrics, "routegate_most_capable_tier_info", tier="strong") == 1
    assert ("routegate_most_capable_tier_info", (("tier", "weak"),)) not in metrics
    assert not [key for key in metrics if key[0] == "routegate_shared_state_up"]  # no Redis: no "down" to alert on
    assert not [key for key in metrics if key[0] == "routegate_budget_remaining_usd"]  # no budget: none "spent"
    assert value(metrics, "routegate_requests_in_flight") == 0


def test_failure_without_fallback_is_502_naming_the_tier_not_the_key(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    with running_proxy(proxy_env(strong, weak, fallback="false", retries="1", read_timeout="1"), tmp_path) as proxy:
        strong.behaviour.fail_statuses = [500, 500]
        response = httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-random-0.0", "messages": MESSAGES})
        assert response.status_code == 502
        assert (response.headers["x-routegate-tier"], response.headers["x-routegate-model"]) == ("strong", STRONG_MODEL)
        error = response.json()["error"]
        assert error["code"] == "upstream_error" and "strong" in error["message"]
        assert STRONG_KEY not in response.text and STRONG_KEY not in str(response.headers)
        assert len(strong.received) == 2 and not weak.received

        strong.behaviour.delay = 3.0
        response = httpx.post(
            f"{proxy.api}/chat/completions", json={"model": "router-random-0.0", "messages": MESSAGES}, timeout=20
        )
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "upstream_timeout"
        metrics = samples(proxy.metrics())
    assert value(metrics, "routegate_upstream_errors_total", tier="strong", reason="http_5xx") == 2
    assert value(metrics, "routegate_upstream_errors_total", tier="strong", reason="timeout") == 2
    assert value(metrics, "routegate_upstream_retries_total", tier="strong", reason="http_5xx") == 1


def test_fallback_is_counted(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    with running_proxy(proxy_env(strong, weak, retries="0"), tmp_path) as proxy:
        weak.behaviour.fail_statuses = [503]
        raw = openai.OpenAI(base_url=proxy.api, api_key="k", max_retries=0).chat.completions.with_raw_response.create(
            model="router-random-1.0", messages=MESSAGES
        )
        assert raw.headers["x-routegate-tier"] == "strong"
        metrics = samples(proxy.metrics())
    assert value(metrics, "routegate_fallbacks_total", from_tier="weak", to_tier="strong", reason="http_5xx") == 1
    assert value(metrics, "routegate_requests_total", router="random", tier="strong", model=STRONG_MODEL, status="200") == 1


def test_client_keys(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    env = proxy_env(strong, weak, api_keys='["rg-key-one", "rg-key-two"]')
    with running_proxy(env, tmp_path) as proxy:
        with pytest.raises(openai.AuthenticationError) as raised:
            openai.OpenAI(base_url=proxy.api, api_key="wrong", max_retries=0).chat.completions.create(
                model="auto", messages=MESSAGES
            )
        assert raised.value.body["code"] == "invalid_api_key"
        anonymous = httpx.post(
            f"{proxy.api}/chat/completions", json={"model": "auto", "messages": MESSAGES}, headers={"x-request-id": "trace-7"}
        )
        assert anonymous.status_code == 401 and anonymous.headers["x-request-id"] == "trace-7"
        assert httpx.get(f"{proxy.api}/models").status_code == 401
        refused = value(
            samples(proxy.metrics()), "routegate_requests_total", router="none", tier="none", model="none", status="401"
        )
        assert refused == 2  # both refused chat requests, before routing
        reply = openai.OpenAI(base_url=proxy.api, api_key="rg-key-two", max_retries=0).chat.completions.create(
            model="router-random-0.0", messages=MESSAGES
        )
        assert reply.choices[0].message.content == "answer from strong"
        assert strong.received[0].headers["authorization"] == f"Bearer {STRONG_KEY}"
        assert "rg-key" not in proxy.log()


def test_body_over_the_limit_is_413(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    with running_proxy(proxy_env(strong, weak, max_body_bytes="2048"), tmp_path) as proxy:
        big = [{"role": "user", "content": "x" * 4000}]
        response = httpx.post(f"{proxy.api}/chat/completions", json={"model": "auto", "messages": big})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        small = httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-random-0.0", "messages": MESSAGES})
        assert small.status_code == 200
        assert len(strong.received) == 1


def test_yaml_config_file_with_env_override(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    config = tmp_path / "routegate.yaml"
    config.write_text(
        f"threshold: 1.0\naliases:\n  everything-weak: router-random-1.0\nweak:\n  base_url: {weak.url}\n"
        f"  model: yaml-weak-model\n"
    )
    env = proxy_env(strong, weak)
    del env["ROUTEGATE_WEAK__MODEL"]  # from the file
    env["ROUTEGATE_WEAK__API_KEY"] = WEAK_KEY
    env["ROUTEGATE_THRESHOLD"] = "0.0"  # the environment wins over the file's 1.0 (everything weak)
    with running_proxy(env, tmp_path, "--config", str(config)) as proxy:
        sdk = openai.OpenAI(base_url=proxy.api, api_key="k", max_retries=0)
        raw = sdk.chat.completions.with_raw_response.create(model="everything-weak", messages=MESSAGES)
        assert raw.headers["x-routegate-model"] == "yaml-weak-model"
        assert weak.received[0].body["model"] == "yaml-weak-model"
        assert (
            sdk.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES).headers["x-routegate-tier"] == "strong"
        )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ROUTEGATE_PORT": "not-a-port"}, "ROUTEGATE_PORT"),
        ({"ROUTEGATE_THRESHOLD": "1.5"}, "ROUTEGATE_THRESHOLD"),
        ({"ROUTEGATE_STRONG__BASE_URL": "ftp://x"}, "ROUTEGATE_STRONG__BASE_URL"),
        # a password in a URL is logged and shown where a key is not
        ({"ROUTEGATE_WEAK__BASE_URL": "https://me:hunter2@llm.example/v1"}, "ROUTEGATE_WEAK__BASE_URL"),
        ({"ROUTEGATE_JUDGE__BASE_URL": "http://me:hunter2@127.0.0.1:9/v1"}, "ROUTEGATE_JUDGE__BASE_URL"),
        # /chat/completions would land inside the query
        ({"ROUTEGATE_WEAK__BASE_URL": "http://127.0.0.1:9/v1?api-version=2024-02-01"}, "must not hold a query"),
        ({"ROUTEGATE_WEAK__INPUT_PRICE": "-1"}, "ROUTEGATE_WEAK__INPUT_PRICE"),
        ({"ROUTEGATE_ROUTER": "no-such-router"}, "ROUTEGATE_ROUTER"),
        ({"ROUTEGATE_ALIASES": '{"x": "router-random-7"}'}, "ROUTEGATE_ALIASES"),
        ({"ROUTEGATE_ALIASES": '{"router-random-0.5": "router-random-0.9"}'}, "alias 'router-random-0.5' is a router route's"),
        ({"ROUTEGATE_ALLOWED_ORIGINS": '["chat.example.com"]'}, "ROUTEGATE_ALLOWED_ORIGINS"),
        ({"ROUTEGATE_ROUTERS": '["random", "no-such-router"]'}, "ROUTEGATE_ROUTERS"),
        ({"ROUTEGATE_TARGET_SHARE": "0.305"}, "ROUTEGATE_TARGET_SHARE"),
        ({"ROUTEGATE_HOST": "0.0.0.0"}, "ROUTEGATE_ALLOW_UNAUTHENTICATED"),  # open to the network without client keys
        ({"ROUTEGATE_HOST": "::"}, "ROUTEGATE_API_KEYS"),
        ({"ROUTEGATE_API_KEYS": "not-json"}, "ROUTEGATE_API_KEYS: not valid JSON"),
        ({"ROUTEGATE_CONFIG": "/no/such/routegate.yaml"}, "config file not found: /no/such/routegate.yaml"),
        ({"ROUTEGATE_FEEDBACK_DB": "mysql://routegate:hunter2@db/feedback"}, "ROUTEGATE_FEEDBACK_DB"),
        ({"ROUTEGATE_MAX_PENDING_BODY_BYTES": "2048"}, "ROUTEGATE_MAX_PENDING_BODY_BYTES"),  # below the largest body
        ({"ROUTEGATE_PORT": "18123", "ROUTEGATE_METRICS_PORT": "18123"}, "ROUTEGATE_METRICS_PORT"),
        ({"ROUTEGATE_FIXED_ROUTES": "true", "ROUTEGATE_ALLOW_OVERRIDES": "true"}, "ROUTEGATE_OVERRIDE_KEYS"),
        ({"ROUTEGATE_SHARED_SCORE_CACHE": "true"}, "set ROUTEGATE_REDIS_URL too"),  # it would do nothing
        ({"ROUTEGATE_FEEDBACK_MAX_ROWS": str(2**63)}, "ROUTEGATE_FEEDBACK_MAX_ROWS"),  # beyond a 64-bit OFFSET
    ],
)
def test_invalid_settings_fail_at_start_naming_the_setting(env: dict[str, str], named: str):
    base = proxy_env(FakeUpstream("unused"), FakeUpstream("unused"), port=str(free_port()))
    base.update(env)
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"],
        cwd=REPO,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("env", "said"),
    [
        # an endless wait put into a Retry-After header is an error, not a 429
        ({"ROUTEGATE_QUEUE_TIMEOUT": "inf"}, "ROUTEGATE_QUEUE_TIMEOUT"),
        ({"ROUTEGATE_SCORE_TIMEOUT": "Infinity"}, "ROUTEGATE_SCORE_TIMEOUT"),
        ({"ROUTEGATE_ROUTER_RETRY_SECONDS": "inf"}, "ROUTEGATE_ROUTER_RETRY_SECONDS"),
        ({"ROUTEGATE_STRONG__OUTPUT_PRICE": "inf"}, "ROUTEGATE_STRONG__OUTPUT_PRICE"),
        # no HTTP header keeps the spaces around a key, so no client could present it
        ({"ROUTEGATE_API_KEYS": '[" key-1"]'}, "spaces around it"),
        ({"ROUTEGATE_API_KEYS": '["key-1"]', "ROUTEGATE_METRICS_KEY": "m-key "}, "spaces around it"),
        ({"ROUTEGATE_API_KEYS": '["key-1"]', "ROUTEGATE_OVERRIDE_KEYS": '["key-2"]'}, "not in ROUTEGATE_API_KEYS"),
        # the model is also the x-routegate-model header, which holds printable ASCII only
        ({"ROUTEGATE_WEAK__MODEL": "modèle"}, "ROUTEGATE_WEAK__MODEL"),
        ({"ROUTEGATE_STRONG__MODEL": "gpt-4o "}, "ROUTEGATE_STRONG__MODEL"),
        ({"ROUTEGATE_SCORE_BATCH_WAIT_MS": "5000"}, "ROUTEGATE_SCORE_BATCH_WAIT_MS"),  # = the 5 s score timeout
        ({"ROUTEGATE_TARGET_WINDOW": str(2**63)}, "ROUTEGATE_TARGET_WINDOW"),
        ({"ROUTEGATE_SHADOW_QUEUE_SIZE": "0"}, "ROUTEGATE_SHADOW_QUEUE_SIZE"),  # shadowing that never runs
        ({"ROUTEGATE_CLIENT_SEND_TIMEOUT": "1e-9"}, "ROUTEGATE_CLIENT_SEND_TIMEOUT"),  # checked every loop turn
        ({"ROUTEGATE_REDIS_RETRY_SECONDS": "1e-9"}, "ROUTEGATE_REDIS_RETRY_SECONDS"),  # pinged every loop turn
        ({"ROUTEGATE_ROUTER_STRONG_MODEL": "gpt-4o", "ROUTEGATE_ROUTER_WEAK_MODEL": "GPT-4o"}, "both name 'gpt-4o'"),
    ],
)
def test_settings_that_could_never_work_are_refused(env: dict[str, str], said: str, monkeypatch: pytest.MonkeyPatch):
    from server.settings import SettingsError, load_settings

    without_routegate_variables(monkeypatch)
    monkeypatch.setenv("ROUTEGATE_FEEDBACK_DB", "off")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=re.escape(said)):
        load_settings()


def test_an_allowed_origin_is_kept_as_a_browser_sends_it(monkeypatch: pytest.MonkeyPatch):
    """A browser leaves its scheme's default port out of ``Origin``: ``https://a:443`` would never match."""
    from server.settings import load_settings

    monkeypatch.setenv(
        "ROUTEGATE_ALLOWED_ORIGINS",
        '["https://chat.example.com:443", "HTTP://a.test:80/", "http://b.test:8080", "https://bücher.test"]',
    )
    assert load_settings().allowed_origins == [
        "https://chat.example.com",
        "http://a.test",
        "http://b.test:8080",
        "https://xn--bcher-kva.test",  # browsers send a host in punycode
    ]


@pytest.mark.parametrize(
    "origin",
    [
        "https://*.example.com",
        "https://user@chat.example.com",
        "https://chat.example.com/app",
        "https://a.test?x=1",
        "ws://a.test",
    ],
)
def test_an_origin_no_browser_sends_is_refused(monkeypatch: pytest.MonkeyPatch, origin: str):
    """A wildcard, a user, a path, a query or another scheme could never match a browser's ``Origin``:
    refused at start rather than silently serving no one."""
    from server.settings import SettingsError, load_settings

    monkeypatch.setenv("ROUTEGATE_ALLOWED_ORIGINS", json.dumps([origin]))
    with pytest.raises(SettingsError, match="ROUTEGATE_ALLOWED_ORIGINS.*is not an origin"):
        load_settings()


def test_a_tier_given_in_part_keeps_the_other_defaults(monkeypatch: pytest.MonkeyPatch):
    from server.settings import load_settings

    without_routegate_variables(monkeypatch)
    monkeypatch.setenv("ROUTEGATE_STRONG__BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ROUTEGATE_WEAK__MODEL", "my-small-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-env")
    settings = load_settings()
    assert (settings.strong.base_url, settings.strong.model, settings.strong.input_price) == (
        "http://127.0.0.1:9/v1",
        "gpt-4o",
        2.5,
    )
    assert settings.strong.api_key is None, "OPENAI_API_KEY is only for upstreams on the OpenAI API"
    assert (settings.weak.model, settings.weak.output_price) == ("my-small-model", 0.6)
    assert settings.weak.api_key.get_secret_value() == "sk-from-openai-env"


def test_a_judge_on_the_openai_api_takes_openai_api_key_and_one_elsewhere_without_a_key_is_warned_about(
    monkeypatch: pytest.MonkeyPatch,
):
    """With the strong tier on a local server, a judge on the OpenAI API got no key: every judgement
    was refused (401) after its shadow call had been paid for, and nothing said why at start."""
    from server.settings import load_settings
    from server.shadow import endpoints
    from server.upstream_keys import missing_key_warnings

    without_routegate_variables(monkeypatch)
    monkeypatch.setenv("ROUTEGATE_STRONG__BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ROUTEGATE_STRONG__API_KEY", "sk-local-strong-0123456789")
    monkeypatch.setenv("ROUTEGATE_SHADOW_RATE", "0.1")
    monkeypatch.setenv("ROUTEGATE_JUDGE__BASE_URL", "https://api.openai.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-env")
    settings = load_settings()
    assert endpoints(settings)[1].api_key == "sk-from-openai-env"
    assert missing_key_warnings(settings) == []
    monkeypatch.setenv("ROUTEGATE_JUDGE__BASE_URL", "http://127.0.0.1:10/v1")  # a judge of its own, no key
    warnings = missing_key_warnings(load_settings())
    assert endpoints(load_settings())[1].api_key is None  # never the strong tier's key, on another URL
    assert len(warnings) == 1 and "the judge (http://127.0.0.1:10/v1) has no API key" in warnings[0]
    assert "ROUTEGATE_JUDGE__API_KEY" in warnings[0] and "sk-" not in warnings[0]
    monkeypatch.setenv("ROUTEGATE_SHADOW_RATE", "0")  # no judging: nothing to warn about
    assert missing_key_warnings(load_settings()) == []
    # a judge on the strong upstream's URL takes the strong key, before OPENAI_API_KEY
    monkeypatch.setenv("ROUTEGATE_STRONG__BASE_URL", "https://api.openai.com/v1")
    monkeypatch.setenv("ROUTEGATE_JUDGE__BASE_URL", "https://api.openai.com/v1")
    assert endpoints(load_settings())[1].api_key == "sk-local-strong-0123456789"


def test_shadow_judging_among_several_models_fails_at_start(monkeypatch: pytest.MonkeyPatch):
    """It compares the strong and the weak tier's answers; among several models it would start workers that never run."""
    from server.settings import SettingsError, load_settings

    without_routegate_variables(monkeypatch)
    nowhere = {"base_url": "http://127.0.0.1:9/v1", "api_key": "k", "input_price": 1, "output_price": 1}
    monkeypatch.setenv(
        "ROUTEGATE_MODELS", json.dumps([{"name": "a", "model": "x", **nowhere}, {"name": "b", "model": "y", **nowhere}])
    )
    assert load_settings().shadow_rate == 0
    monkeypatch.setenv("ROUTEGATE_SHADOW_RATE", "0.1")
    with pytest.raises(SettingsError, match="ROUTEGATE_SHADOW_RATE judges each answer against the other of two tiers"):
        load_settings()


def test_routers_without_a_usable_checkpoint(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "mf").mkdir(parents=True)  # a folder, but no checkpoint in it
    env = proxy_env(strong, weak, checkpoint_dir=str(checkpoints), routers='["random", "mf"]')
    with running_proxy(env, tmp_path) as proxy:
        names = {model.id for model in openai.OpenAI(base_url=proxy.api, api_key="k").models.list()}
        assert "router-mf-0.5" in names and "router-bert-0.5" not in names
        broken = httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-mf-0.5", "messages": MESSAGES})
        assert broken.status_code == 503
        assert broken.json()["error"]["code"] == "router_unavailable"
        assert str(checkpoints) not in broken.text, "the client is not told the server's paths"
        assert broken.headers["retry-after"] == "30"  # when the router is loaded again
        missing = httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-bert-0.5", "messages": MESSAGES})
        assert (missing.status_code, missing.json()["error"]["code"]) == (400, "unknown_router")
        served = httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-random-0.0", "messages": MESSAGES})
        assert served.status_code == 200
        again = [
            httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-mf-0.5", "messages": MESSAGES}) for _ in range(3)
        ]
        assert [answer.status_code for answer in again] == [503] * 3
        log = proxy.log()
    assert not weak.received and len(strong.received) == 1
    assert log.count("could not load router mf") == 1  # at start; the requests after it did not load it again


def test_both_tiers_failing_is_a_502_naming_the_last_tier_tried(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    with running_proxy(proxy_env(strong, weak, retries="0"), tmp_path) as proxy:
        weak.behaviour.fail_statuses = [500]
        strong.behaviour.fail_statuses = [503]
        response = httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-random-1.0", "messages": MESSAGES})
    assert response.status_code == 502
    assert response.headers["x-routegate-fallback"] == "weak->strong:http_5xx"
    assert (response.headers["x-routegate-tier"], response.headers["x-routegate-model"]) == ("strong", STRONG_MODEL)
    assert "strong upstream" in response.json()["error"]["message"]
    assert len(weak.received) == 1 and len(strong.received) == 1


def test_a_setting_is_named_where_it_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A problem in the config file names the file and its key, one in a variable the variable
    (also where it overrides the file's key); a misspelt name, nested or not, gets the nearest
    setting; one problem is one line, without pydantic's "Value error, " prefix."""
    from server.settings import SettingsError, load_settings

    without_routegate_variables(monkeypatch)
    monkeypatch.setenv("ROUTEGATE_FEEDBACK_DB", "off")
    config = tmp_path / "routegate.yaml"
    monkeypatch.setenv("ROUTEGATE_CONFIG", str(config))  # load_settings sets it: undone after the test
    config.write_text("treshold: 0.3\nstrong:\n  modle: gpt-4o\ntarget_share: 0.305\n")
    with pytest.raises(SettingsError) as refused:
        load_settings(config)
    lines = str(refused.value).splitlines()
    assert lines[0] == "invalid settings:"
    assert sorted(line.strip() for line in lines[1:]) == [
        f"{config}: strong.modle: not a routegate setting (did you mean strong.model?)",
        f"{config}: target_share: must be a whole percent (e.g. 0.3 for 30%)",
        f"{config}: treshold: not a routegate setting (did you mean threshold?)",
    ]
    config.write_text("threshold: 0.3\n")
    monkeypatch.setenv("ROUTEGATE_THRESHOLD", "2")  # the variable wins over the file, and is what is wrong
    with pytest.raises(SettingsError) as refused:
        load_settings(config)
    assert str(refused.value) == "invalid settings: ROUTEGATE_THRESHOLD: Input should be less than or equal to 1"
    monkeypatch.setenv("ROUTEGATE_THRESHOLD", "")  # an empty variable is ignored: the file's value is the one
    config.write_text("threshold: 2\nweak:\n  modle: x\n")
    monkeypatch.setenv("ROUTEGATE_WEAK__BASE_URL", "http://127.0.0.1:9/v1")  # a sibling sets nothing of weak.modle
    with pytest.raises(SettingsError) as refused:
        load_settings(config)
    assert sorted(line.strip() for line in str(refused.value).splitlines()[1:]) == [
        f"{config}: threshold: Input should be less than or equal to 1",
        f"{config}: weak.modle: not a routegate setting (did you mean weak.model?)",
    ]
    monkeypatch.delenv("ROUTEGATE_THRESHOLD")
    monkeypatch.delenv("ROUTEGATE_WEAK__BASE_URL")
    monkeypatch.delenv("ROUTEGATE_CONFIG")
    monkeypatch.setenv("ROUTEGATE_WEAK__MODLE", "gpt-4o-mini")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == (
        "invalid settings: ROUTEGATE_WEAK__MODLE: not a routegate setting (did you mean ROUTEGATE_WEAK__MODEL?)"
    )


@pytest.mark.parametrize(
    ("config", "said"),
    [('strong:\n  api_key: "sk-in-a-broken-file\n  model: x\n', "not valid YAML (line 4"), ("- a\n- b\n", "must be a mapping")],
)
def test_a_broken_config_file_is_named_without_quoting_it(config: str, said: str, tmp_path: Path):
    path = tmp_path / "routegate.yaml"
    path.write_text(config)
    env = proxy_env(FakeUpstream("unused"), FakeUpstream("unused"), port=str(free_port()))
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and said in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr and "sk-in-a-broken-file" not in result.stderr


def test_a_feedback_store_file_that_cannot_be_written_stops_start_up(tmp_path: Path):
    """Else the gateway would serve and lose every decision row, a warning a batch."""
    env = proxy_env(FakeUpstream("unused"), FakeUpstream("unused"), port=str(free_port()), feedback_db=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"ROUTEGATE_FEEDBACK_DB: cannot write sqlite:{tmp_path}: Is a directory" in result.stderr


def test_a_missing_input_file_is_one_line_not_a_traceback(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "score", "--router", "random", "--input", str(tmp_path / "none.jsonl")]
        + ["--output", str(tmp_path / "scores.jsonl")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"routegate: No such file or directory: {tmp_path / 'none.jsonl'}"


def test_an_idle_client_connection_is_closed_after_keep_alive_seconds(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """ROUTEGATE_KEEP_ALIVE_SECONDS reaches the server: a connection idle after its answer is closed
    then (uvicorn's own 5 s would keep it open past the 4 s this waits)."""
    with running_proxy(proxy_env(strong, weak, keep_alive_seconds="1"), tmp_path) as proxy:
        address = httpx.URL(proxy.url)
        with socket.create_connection((address.host, address.port), timeout=10) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: routegate\r\n\r\n")
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(4096)
            assert received.startswith(b"HTTP/1.1 200")
            connection.settimeout(4)
            while connection.recv(4096):  # the rest of the answer, then the close
                pass
