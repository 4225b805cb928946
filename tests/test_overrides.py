"""Per-request overrides through a real routegate: off by default, then for trusted clients only."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.conftest import STRONG_MODEL, Proxy, proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream
from tests.metric_values import wait_for

MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]
TRUSTED_KEY = "rg-trusted-client-key-0001"
PLAIN_KEY = "rg-plain-client-key-0002"


def _ask(proxy: Proxy, model: str, headers: dict[str, str], api_key: str = "unused"):
    client = OpenAI(base_url=proxy.api, api_key=api_key, max_retries=0)
    return client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, extra_headers=headers).headers


def test_override_headers_are_ignored_by_default(proxy: Proxy, strong: FakeUpstream) -> None:
    headers = _ask(proxy, "router-random-1", {"x-routegate-force-tier": "strong", "x-routegate-force-threshold": "0"})
    assert (headers["x-routegate-tier"], headers["x-routegate-decision"]) == ("weak", "score")
    assert strong.received == []


def test_trusted_clients_force_a_tier_or_a_threshold(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    env = proxy_env(
        strong, weak, allow_overrides="true", api_keys=f'["{TRUSTED_KEY}", "{PLAIN_KEY}"]', override_keys=f'["{TRUSTED_KEY}"]'
    )
    with running_proxy(env, tmp_path) as proxy:
        forced_tier = _ask(proxy, "router-random-1", {"x-routegate-force-tier": "strong"}, TRUSTED_KEY)
        forced_weak = _ask(proxy, "router-random-0", {"x-routegate-force-tier": "weak"}, TRUSTED_KEY)
        forced_threshold = _ask(proxy, "router-random-1", {"x-routegate-force-threshold": "0"}, TRUSTED_KEY)
        # a forced threshold is the request's own: not the router's threshold on the dashboard
        assert 'routegate_router_threshold{router="random"}' not in proxy.metrics()
        untrusted = _ask(proxy, "router-random-1", {"x-routegate-force-tier": "strong"}, PLAIN_KEY)
        with pytest.raises(openai.BadRequestError) as bad:
            _ask(proxy, "router-random-1", {"x-routegate-force-threshold": "1.5"}, TRUSTED_KEY)
        with pytest.raises(openai.BadRequestError) as bad_tier:
            _ask(proxy, "router-random-1", {"x-routegate-force-tier": "gold"}, TRUSTED_KEY)
    assert (forced_tier["x-routegate-tier"], forced_tier["x-routegate-decision"]) == ("strong", "forced")
    assert "x-routegate-score" not in forced_tier
    assert (forced_weak["x-routegate-tier"], forced_weak["x-routegate-decision"]) == ("weak", "forced")
    assert (forced_threshold["x-routegate-tier"], forced_threshold["x-routegate-decision"]) == ("strong", "forced")
    assert forced_threshold["x-routegate-threshold"] == "0" and "x-routegate-score" in forced_threshold
    assert (untrusted["x-routegate-tier"], untrusted["x-routegate-decision"]) == ("weak", "score")
    assert bad.value.body["param"] == "x-routegate-force-threshold" and bad.value.body["code"] == "invalid_value"
    assert bad_tier.value.body["param"] == "x-routegate-force-tier"
    assert len(strong.received) == 2 and len(weak.received) == 2


def test_without_override_keys_every_client_may_override(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    env = proxy_env(strong, weak, allow_overrides="true", api_keys=f'["{PLAIN_KEY}"]')
    with running_proxy(env, tmp_path) as proxy:
        forced = _ask(proxy, "router-random-1", {"x-routegate-force-tier": "strong"}, PLAIN_KEY)
    assert (forced["x-routegate-tier"], forced["x-routegate-decision"]) == ("strong", "forced")
    assert len(strong.received) == 1 and not weak.received


def test_a_malformed_override_is_refused_before_it_waits_for_a_slot(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """The only slot is taken and nothing may queue: a request with a bad override header gets its
    400, not the 429 of a request that was admitted first."""
    import threading

    env = proxy_env(strong, weak, allow_overrides="true", max_concurrent_requests="1", max_queued_requests="0")
    with running_proxy(env, tmp_path) as proxy:
        weak.behaviour.delay = 2.0
        busy = threading.Thread(target=lambda: _ask(proxy, "router-random-1", {}))
        busy.start()
        try:
            assert wait_for(lambda: bool(weak.received))  # the slow request holds the slot
            with pytest.raises(openai.BadRequestError) as bad:
                _ask(proxy, "router-random-1", {"x-routegate-force-threshold": "abc"})
        finally:
            busy.join()
    assert bad.value.body["param"] == "x-routegate-force-threshold" and bad.value.body["code"] == "invalid_value"


def test_fixed_routes_leave_clients_auto_and_the_aliases(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """ROUTEGATE_FIXED_ROUTES: a client cannot pick a threshold, a share or an upstream of its own
    (router-random-0 would send everything to the strong tier); an override client still may."""
    env = proxy_env(
        strong,
        weak,
        fixed_routes="true",
        aliases='{"cheap": "router-random-1"}',
        allow_overrides="true",
        api_keys=f'["{TRUSTED_KEY}", "{PLAIN_KEY}"]',
        override_keys=f'["{TRUSTED_KEY}"]',
    )
    with running_proxy(env, tmp_path) as proxy:
        client = OpenAI(base_url=proxy.api, api_key=PLAIN_KEY, max_retries=0)
        assert [model.id for model in client.models.list()] == ["auto", "cheap"]
        assert _ask(proxy, "cheap", {}, PLAIN_KEY)["x-routegate-tier"] == "weak"
        assert _ask(proxy, "auto", {}, PLAIN_KEY)["x-routegate-router"] == "random"
        refused = []
        for model in ("router-random-0", "router-random-100%", STRONG_MODEL):
            with pytest.raises(openai.PermissionDeniedError) as raised:
                _ask(proxy, model, {}, PLAIN_KEY)
            refused.append((raised.value.body["code"], raised.value.body["param"]))
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("router-random-0")
        trusted = _ask(proxy, "router-random-0", {}, TRUSTED_KEY)
    assert refused == [("model_not_allowed", "model")] * 3
    assert trusted["x-routegate-tier"] == "strong"
    assert len(strong.received) + len(weak.received) == 3  # auto, cheap and the trusted client's: nothing refused went on
