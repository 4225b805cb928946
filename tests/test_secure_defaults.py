"""Safe defaults: no open listener without client keys, keyed /metrics and /openapi.json, a
budget that caps every strong-tier request, and no upstream work for clients that left."""

from __future__ import annotations

import select
import socket
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from server.settings import SettingsError, load_settings
from server.token_estimate import prompt_tokens
from tests.conftest import STRONG_MODEL, proxy_env, running_proxy
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream, free_port
from tests.leaving_client import post_and_leave
from tests.metric_values import wait_for
from tests.metrics_text import metric_sum

MESSAGES = [{"role": "user", "content": "Hello?"}]
STRONG_COST = (PROMPT_TOKENS * 10 + COMPLETION_TOKENS * 30) / 1e6  # proxy_env's strong prices


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_listener_open_to_the_network_needs_keys_or_consent(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROUTEGATE_API_KEYS", "ROUTEGATE_ALLOW_UNAUTHENTICATED", "ROUTEGATE_HOST"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SettingsError, match="ROUTEGATE_ALLOW_UNAUTHENTICATED"):
        load_settings(host=host)
    assert load_settings(host=host, api_keys=["client-key"]).host == host
    assert load_settings(host=host, allow_unauthenticated=True).host == host
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert load_settings(host=loopback).host == loopback


@pytest.mark.parametrize("setting", ["api_keys", "override_keys", "metrics_key"])
def test_a_blank_key_is_refused_because_a_bare_bearer_would_match_it(setting: str) -> None:
    blank = ["client-key", " "] if setting != "metrics_key" else ""
    with pytest.raises(SettingsError, match=f"ROUTEGATE_{setting.upper()}: .*empty or blank") as refused:
        load_settings(**{setting: blank})
    assert "client-key" not in str(refused.value)


@pytest.mark.parametrize("setting", ["api_keys", "override_keys", "metrics_key"])
def test_a_key_no_client_could_send_is_refused(setting: str) -> None:
    """Header values travel as bytes read as Latin-1: a key with 'é' would never match (401 for every client)."""
    key = "cl\u00e9-secr\u00e8te"
    with pytest.raises(SettingsError, match=f"ROUTEGATE_{setting.upper()}: .*not printable ASCII") as refused:
        load_settings(**{setting: [key] if setting != "metrics_key" else key})
    assert key not in str(refused.value)


def test_metrics_key(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    with running_proxy(proxy_env(strong, weak, metrics_key="metrics-secret-key"), tmp_path) as proxy:
        anonymous = httpx.get(f"{proxy.url}/metrics")
        wrong = httpx.get(f"{proxy.url}/metrics", headers={"authorization": "Bearer metrics-secret-kex"})
        keyed = httpx.get(f"{proxy.url}/metrics", headers={"authorization": "Bearer metrics-secret-key"})
    for refused in (anonymous, wrong):
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert "metrics-secret" not in refused.text
    assert keyed.status_code == 200 and "routegate_requests_total" in keyed.text


@pytest.mark.parametrize(
    ("host", "keys", "anonymous_status"),
    [("0.0.0.0", "client-key-for-metrics", 401), ("0.0.0.0", None, 200), ("127.0.0.1", "client-key-for-metrics", 200)],
)
def test_metrics_of_a_gateway_other_hosts_reach_need_a_client_key(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, host: str, keys: str | None, anonymous_status: int
) -> None:
    """Without a metrics key or port of their own, the API port's /metrics is guarded as its API is
    where other hosts reach it (a loopback gateway's stay open to the machine's Prometheus)."""
    settings = {"api_keys": f'["{keys}"]'} if keys else {"allow_unauthenticated": "true"}
    with running_proxy(proxy_env(strong, weak, host=host, **settings), tmp_path) as proxy:
        anonymous = httpx.get(f"{proxy.url}/metrics")
        keyed = httpx.get(f"{proxy.url}/metrics", headers={"authorization": f"Bearer {keys}"}) if keys else anonymous
    assert anonymous.status_code == anonymous_status
    if anonymous_status == 401:
        assert anonymous.json()["error"]["code"] == "invalid_api_key" and "routegate_" not in anonymous.text
    assert keyed.status_code == 200 and "routegate_requests_total" in keyed.text


def test_metrics_on_their_own_port(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    port = free_port()
    env = proxy_env(strong, weak, metrics_port=str(port), metrics_key="metrics-secret-key", head_timeout="1")
    with running_proxy(env, tmp_path) as proxy:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as silent:
            silent.sendall(b"GET /metrics HTTP/1.1\r\n")  # and then nothing: the port's thread is let go
            assert silent.recv(65536) == b""
        openai.OpenAI(base_url=proxy.api, api_key="unused").chat.completions.create(model="router-random-0", messages=MESSAGES)
        on_api_port = httpx.get(f"{proxy.url}/metrics")
        anonymous = httpx.get(f"http://127.0.0.1:{port}/metrics")
        keyed = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"authorization": "Bearer metrics-secret-key"})
        spelled = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"authorization": "bearer  metrics-secret-key"})
    assert on_api_port.status_code == 404
    assert anonymous.status_code == 401
    assert keyed.status_code == 200
    assert spelled.status_code == 200  # as the API port reads it: any case of the scheme, spaces around the key
    assert metric_sum(keyed.text, "routegate_requests_total", router="random", status="200") == 1
    assert metric_sum(keyed.text, "routegate_event_loop_tasks") > 0  # sampled on the loop, not by this port's thread


def test_the_metrics_port_listens_on_an_ipv6_address() -> None:
    """ROUTEGATE_HOST=::1 (or ::) with ROUTEGATE_METRICS_PORT: the metrics listener takes the same address."""
    from server.metrics_server import start_metrics_server

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    port = free_port()
    server = start_metrics_server("::1", port, None, timeout=5.0)
    try:
        scraped = httpx.get(f"http://[::1]:{port}/metrics", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert scraped.status_code == 200 and "routegate_requests_total" in scraped.text


def test_a_metrics_port_in_use_is_the_bind_error() -> None:
    """Not an AttributeError from closing a server that never bound: ``routegate serve`` turns
    the OSError into one line."""
    from server.metrics_server import start_metrics_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            start_metrics_server("127.0.0.1", taken.getsockname()[1], None, timeout=5.0)


def _bytes_sent_before_the_cut(connection: socket.socket, data: bytes) -> int | None:
    """Send ``data`` a byte every 0.5 s (more often than any read timeout); how many bytes went
    out before the other end closed the connection, None when it never did."""
    for sent, byte in enumerate(data, 1):
        try:
            connection.sendall(bytes([byte]))
            if select.select([connection], [], [], 0.5)[0] and connection.recv(65536) == b"":
                return sent
        except OSError:  # reset by the other end
            return sent
    return None


def test_the_metrics_port_bounds_its_connections(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    from server.metrics_server import MAX_CONNECTIONS

    port = free_port()
    env = proxy_env(strong, weak, metrics_port=str(port), head_timeout="3")
    with running_proxy(env, tmp_path) as proxy, ExitStack() as held:
        trickling = held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=15))
        idle = [held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=15)) for _ in range(MAX_CONNECTIONS - 1)]
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 503  # every place is taken
        sent = _bytes_sent_before_the_cut(trickling, b"GET /metrics HTTP/1.1\r\nx-slow: " + b"a" * 40)  # no end of head
        assert sent is not None and sent <= 12  # cut about 3 s (6 bytes) after it was accepted, not after a silence
        for connection in idle:
            assert connection.recv(65536) == b""  # the silent ones were cut too
        # their places are given back once their threads have closed them
        assert wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200)
        assert "Traceback" not in proxy.log()  # cut connections are not logged as errors


def test_openapi_document_and_router_list_need_a_client_key(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    env = proxy_env(strong, weak, api_keys='["client-key-one"]', aliases='{"secret-alias": "router-random-0.2"}')
    keyed_headers = {"authorization": "Bearer client-key-one"}
    with running_proxy(env, tmp_path) as proxy:
        anonymous = httpx.get(f"{proxy.url}/openapi.json")
        keyed = httpx.get(f"{proxy.url}/openapi.json", headers=keyed_headers)
        docs = httpx.get(f"{proxy.url}/docs")
        routers_anonymous = httpx.get(f"{proxy.api}/routers")  # it names the upstream models
        routers_keyed = httpx.get(f"{proxy.api}/routers", headers=keyed_headers)
        alias_anonymous = httpx.get(f"{proxy.api}/models/secret-alias")  # would say the alias exists
        alias_keyed = httpx.get(f"{proxy.api}/models/secret-alias", headers=keyed_headers)
    assert anonymous.status_code == 401 and "secret-alias" not in anonymous.text
    assert keyed.status_code == 200 and "secret-alias" in keyed.text and keyed.json()["openapi"].startswith("3.")
    assert docs.status_code == 404
    assert routers_anonymous.status_code == 401 and routers_anonymous.json()["error"]["code"] == "invalid_api_key"
    assert routers_keyed.status_code == 200 and "random" in routers_keyed.text
    assert alias_anonymous.status_code == 401 and alias_keyed.json()["id"] == "secret-alias"


def test_without_client_keys_a_page_of_another_site_cannot_spend_the_upstreams(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """Any web page the operator opens could post to http://127.0.0.1:8000 (a text/plain "simple"
    request needs no preflight), or read it through a DNS name rebound to 127.0.0.1: without client
    keys a loopback gateway refuses a browser's request from another site, and serves this machine's."""
    body = '{"model": "router-random-0.5", "messages": [{"role": "user", "content": "Hello?"}]}'
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:

        def post(origin: str | None) -> httpx.Response:
            headers = {"content-type": "text/plain"} | ({"origin": origin} if origin else {})
            return httpx.post(f"{proxy.api}/chat/completions", content=body, headers=headers, timeout=30)

        refused = [post(origin) for origin in ("https://evil.example", "http://rebound.example:8000", "null")]
        listing = httpx.get(f"{proxy.api}/models", headers={"origin": "http://rebound.example:8000"})
        served = [post(origin) for origin in (None, "http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:8080")]
    env = proxy_env(strong, weak, allowed_origins='["https://Chat.example.com/"]')
    (tmp_path / "allowed").mkdir()
    with running_proxy(env, tmp_path / "allowed") as proxy:
        served.append(post("https://chat.example.com"))
        refused.append(post("https://chat.example.com.evil.example"))
    for answer in [*refused, listing]:
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "cross_origin_refused"
    assert [answer.status_code for answer in served] == [200] * 5
    assert len(strong.received) + len(weak.received) == 5  # only the served ones reached an upstream


def test_pages_of_allowed_origins_may_call_with_a_client_key(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """A browser sends a JSON POST with a key only after a preflight (``OPTIONS``) allows it, and
    lets the page read the answer and its headers only when they name its origin: routegate answers
    both for ROUTEGATE_ALLOWED_ORIGINS and for no other site, on the API's paths only (not
    /metrics); the client key is still checked."""
    site, other = "https://chat.example.com", "https://evil.example"
    env = proxy_env(strong, weak, api_keys='["client-key-1"]', allowed_origins=f'["{site}"]')
    asked = {"access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type"}
    body = {"model": "router-random-0.5", "messages": [{"role": "user", "content": "Hello?"}]}
    with running_proxy(env, tmp_path) as proxy:
        url = f"{proxy.api}/chat/completions"
        preflight = httpx.options(url, headers={"origin": site, **asked})
        # Chrome asks a page of a public site for leave to call a private address (this loopback gateway)
        private = httpx.options(url, headers={"origin": site, **asked, "access-control-request-private-network": "true"})
        refused_preflight = httpx.options(url, headers={"origin": other, **asked})
        answer = httpx.post(url, json=body, headers={"origin": site, "authorization": "Bearer client-key-1"}, timeout=30)
        keyless = httpx.post(url, json=body, headers={"origin": site}, timeout=30)
        elsewhere = httpx.post(url, json=body, headers={"origin": other, "authorization": "Bearer client-key-1"}, timeout=30)
        metrics_page = httpx.get(f"{proxy.url}/metrics", headers={"origin": site})  # the API only
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == site
    assert private.status_code == 200 and private.headers["access-control-allow-private-network"] == "true"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert refused_preflight.status_code == 400 and "access-control-allow-origin" not in refused_preflight.headers
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == site
    exposed = answer.headers["access-control-expose-headers"].lower()
    assert "x-routegate-tier" in exposed and "x-request-id" in exposed
    assert keyless.status_code == 401 and keyless.json()["error"]["code"] == "invalid_api_key"
    assert elsewhere.status_code == 200 and "access-control-allow-origin" not in elsewhere.headers  # unreadable there
    assert metrics_page.status_code == 200 and "access-control-allow-origin" not in metrics_page.headers
    assert len(strong.received) + len(weak.received) == 2


def test_without_allowed_origins_no_preflight_is_answered(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    asked = {"origin": "https://chat.example.com", "access-control-request-method": "POST"}
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        preflight = httpx.options(f"{proxy.api}/chat/completions", headers=asked)
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers
    assert preflight.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("exhausted", ["weak", "reject"])
def test_the_budget_caps_strong_requests_by_model_name(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, exhausted: str
) -> None:
    env = proxy_env(strong, weak, daily_budget_usd=str(STRONG_COST / 2), budget_exhausted=exhausted, fallback="true")
    with running_proxy(env, tmp_path) as proxy:
        body = {"model": STRONG_MODEL, "messages": MESSAGES}
        first = httpx.post(f"{proxy.api}/chat/completions", json=body)  # the budget is not spent yet
        second = httpx.post(f"{proxy.api}/chat/completions", json=body)
        weak.behaviour.fail_statuses = [503] * 10  # nor may a failing weak tier fall back to strong
        third = httpx.post(f"{proxy.api}/chat/completions", json={"model": "router-random-1.0", "messages": MESSAGES})
        metrics = proxy.metrics()
    assert first.status_code == 200 and first.headers["x-routegate-tier"] == "strong"
    assert len(strong.received) == 1
    assert metric_sum(metrics, "routegate_budget_remaining_usd") == pytest.approx(STRONG_COST / 2 - STRONG_COST)
    if exhausted == "weak":
        assert second.status_code == 200
        assert (second.headers["x-routegate-tier"], second.headers["x-routegate-decision"]) == ("weak", "budget")
        assert second.json()["choices"][0]["message"]["content"] == "answer from weak"
    else:
        assert second.status_code == 429 and second.json()["error"]["code"] == "budget_exhausted"
        assert second.headers["x-should-retry"] == "false"  # the openai SDKs would otherwise try twice more
        midnight = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        off_by = (int(second.headers["retry-after"]) - (midnight - datetime.now(UTC)).total_seconds()) % 86400
        assert min(off_by, 86400 - off_by) < 5  # also when 00:00 UTC passed in between
        assert metric_sum(metrics, "routegate_requests_rejected_total", reason="budget_exhausted") == 1
    assert third.status_code == 502 and "x-routegate-fallback" not in third.headers


def test_a_client_that_leaves_cancels_its_plain_request_upstream(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        strong.behaviour.delay = 5.0
        body = {"model": STRONG_MODEL, "messages": MESSAGES}
        post_and_leave(f"{proxy.api}/chat/completions", body, leave_when=lambda: bool(strong.received))
        deadline = time.monotonic() + 4  # well before the upstream's 5 s answer
        while not strong.abandoned and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = proxy.metrics()
    assert len(strong.received) == 1 and strong.abandoned == 1  # the upstream saw its caller leave
    assert metric_sum(metrics, "routegate_requests_total", status="499") == 1
    assert metric_sum(metrics, "routegate_requests_total", status="200") == 0
    # the upstream had the prompt: its estimate is metered (and charged), no answer tokens
    assert metric_sum(metrics, "routegate_tokens_total", kind="prompt") == prompt_tokens({"messages": MESSAGES})
    assert metric_sum(metrics, "routegate_tokens_total", kind="completion") == 0
    assert metric_sum(metrics, "routegate_requests_in_flight") == 0
    assert metric_sum(metrics, "routegate_upstream_requests_active") == 0
