"""Upstream faults injected into real fake upstreams behind a real routegate process.

For each fault: what the client (the official openai SDK) gets, what the upstreams received
(retries, fallback) and the metric that counts it. The strong tier misbehaves; the weak tier
stays healthy unless a test breaks it too. Requests name ``router-random-0`` (score >= 0: strong).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.responses import JSONResponse

from tests.conftest import STRONG_MODEL, WEAK_MODEL, Proxy, proxy_env, running_proxy
from tests.fake_upstream import Blackhole, FakeUpstream, closed_port_url
from tests.metric_values import MetricDelta, wait_for
from tests.metrics_text import metric_sum
from tests.raw_upstream import RawUpstream, raw_response

ROUTED_STRONG = "router-random-0"
MESSAGES = [{"role": "user", "content": "Say something."}]
MAX_RESPONSE_BYTES = 1024 * 1024
FAULT_SETTINGS = {
    "retries": "1",
    "read_timeout": "1",
    "connect_timeout": "0.5",
    "total_timeout": "5",
    "max_response_bytes": str(MAX_RESPONSE_BYTES),
}
PROMPT_ESTIMATE = 1 + len("Say something.") // 4  # a token per message and per four characters
HTML_PAGE = "<html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>"


@pytest.fixture(scope="module")
def fault_proxy(strong: FakeUpstream, weak: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with running_proxy(proxy_env(strong, weak, **FAULT_SETTINGS), tmp_path_factory.mktemp("faults")) as running:
        yield running


def client(proxy: Proxy) -> openai.OpenAI:
    """An SDK client that never retries on its own, so every retry seen is routegate's."""
    return openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0, timeout=30)


def chat(proxy: Proxy, **extra: object) -> Any:
    """A routed-to-strong chat request; the raw response (headers, ``parse()``)."""
    return client(proxy).chat.completions.with_raw_response.create(model=ROUTED_STRONG, messages=MESSAGES, **extra)


def error_of(raised: pytest.ExceptionInfo[openai.APIStatusError]) -> dict:
    body = raised.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def raw_stream(proxy: Proxy, **fields: Any) -> httpx.Response:
    """A streamed request to the strong tier, read whole as the bytes that came (``fields``: more of the body)."""
    body = {"model": ROUTED_STRONG, "messages": MESSAGES, "stream": True, **fields}
    return httpx.post(f"{proxy.api}/chat/completions", json=body, timeout=30)


def stream_events(proxy: Proxy) -> tuple[list[str], dict | None]:
    """Stream through the SDK: the content pieces received and the error it raised, if any."""
    pieces: list[str] = []
    stream = client(proxy).chat.completions.create(model=ROUTED_STRONG, messages=MESSAGES, stream=True)
    try:
        for chunk in stream:
            pieces.extend(choice.delta.content or "" for choice in chunk.choices)
    except openai.APIError as error:
        return pieces, error.body
    return pieces, None


# --- 5xx, 429 and Retry-After -----------------------------------------------------------------


def test_one_5xx_is_retried_on_the_same_tier(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.fail_statuses = [503]
    delta = MetricDelta(fault_proxy.metrics)
    raw = chat(fault_proxy)
    delta.after()
    assert raw.headers["x-routegate-tier"] == "strong"
    assert "x-routegate-fallback" not in raw.headers
    assert raw.parse().choices[0].message.content == "answer from strong"
    assert len(strong.received) == 2 and not weak.received
    assert delta("routegate_upstream_errors_total", tier="strong", reason="http_5xx") == 1
    assert delta("routegate_upstream_retries_total", tier="strong", reason="http_5xx") == 1
    assert delta("routegate_fallbacks_total") == 0


@pytest.mark.parametrize(
    ("status", "reason", "tries"),
    # 5xx are retried; 401 / 403 (the upstream refused routegate's key for it) and 404 (its model
    # name or URL is wrong) would only repeat
    [(status, "http_5xx", 2) for status in (500, 501, 502, 503, 504)]
    + [(401, "http_auth", 1), (403, "http_auth", 1), (404, "http_not_found", 1)],
)
def test_a_persistent_failure_falls_back_to_the_other_tier(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream, status: int, reason: str, tries: int
) -> None:
    strong.behaviour.fail_statuses = [status] * 10
    delta = MetricDelta(fault_proxy.metrics)
    raw = chat(fault_proxy)
    delta.after()
    assert raw.headers["x-routegate-tier"] == "weak"
    assert raw.headers["x-routegate-fallback"] == f"strong->weak:{reason}"
    assert raw.parse().choices[0].message.content == "answer from weak"
    assert len(strong.received) == tries and len(weak.received) == 1
    assert weak.received[0].body["model"] == WEAK_MODEL
    assert delta("routegate_upstream_errors_total", tier="strong", reason=reason) == tries
    assert delta("routegate_fallbacks_total", from_tier="strong", to_tier="weak", reason=reason) == 1
    assert delta("routegate_requests_total", tier="weak", status="200") == 1


def test_5xx_on_both_tiers_is_a_502(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.fail_statuses = [503] * 10
    weak.behaviour.fail_statuses = [500] * 10
    delta = MetricDelta(fault_proxy.metrics)
    with pytest.raises(openai.InternalServerError) as raised:
        chat(fault_proxy)
    delta.after()
    assert raised.value.status_code == 502
    error = error_of(raised)
    assert error["code"] == "upstream_error" and error["type"] == "upstream_error"
    assert "weak upstream" in error["message"]
    assert len(strong.received) == 2 and len(weak.received) == 2
    assert delta("routegate_requests_total", status="502") == 1


def test_a_fallback_counts_as_the_routers_choice_not_as_the_tier_that_answered(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream
) -> None:
    weak.behaviour.fail_statuses = [503] * 10
    delta = MetricDelta(fault_proxy.metrics)
    raw = client(fault_proxy).chat.completions.with_raw_response.create(model="router-random-1.0", messages=MESSAGES)
    delta.after()
    assert (raw.headers["x-routegate-tier"], raw.headers["x-routegate-decision"]) == ("strong", "score")
    assert raw.headers["x-routegate-fallback"] == "weak->strong:http_5xx"
    assert delta("routegate_threshold_decisions_total", router="random", tier="weak") == 1  # what the score chose
    assert delta("routegate_threshold_decisions_total", router="random", tier="strong") == 0
    assert delta("routegate_requests_total", tier="strong", status="200") == 1  # what answered


def test_retry_after_is_honoured(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.fail_statuses = [429]
    strong.behaviour.retry_after = "0.3"
    delta = MetricDelta(fault_proxy.metrics)
    raw = chat(fault_proxy)
    delta.after()
    assert raw.headers["x-routegate-tier"] == "strong"
    first, second = strong.received
    assert second.at - first.at >= 0.3  # the retry waited as long as the upstream asked
    assert not weak.received
    assert delta("routegate_upstream_retries_total", tier="strong", reason="http_429") == 1


@pytest.mark.parametrize("value", ["soon", "nan", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_unreadable_or_past_retry_after_is_retried_after_the_usual_backoff(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream, value: str
) -> None:
    strong.behaviour.fail_statuses = [503]
    strong.behaviour.retry_after = value  # not a number of seconds ahead: retried after the usual backoff
    delta = MetricDelta(fault_proxy.metrics)
    raw = chat(fault_proxy)
    delta.after()
    assert raw.status_code == 200 and raw.headers["x-routegate-tier"] == "strong"
    assert len(strong.received) == 2 and not weak.received
    assert delta("routegate_upstream_retries_total", tier="strong", reason="http_5xx") == 1


def test_retry_after_past_the_deadline_is_not_waited_for(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.fail_statuses = [429]
    strong.behaviour.retry_after = "60"  # beyond ROUTEGATE_TOTAL_TIMEOUT=5: fall back instead
    delta = MetricDelta(fault_proxy.metrics)
    raw = chat(fault_proxy)
    delta.after()
    assert raw.headers["x-routegate-fallback"] == "strong->weak:http_429"
    assert len(strong.received) == 1 and len(weak.received) == 1
    assert delta("routegate_upstream_retries_total") == 0


def test_429_on_both_tiers_is_relayed_with_retry_after(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    for upstream in (strong, weak):
        upstream.behaviour.fail_statuses = [429] * 10
        upstream.behaviour.retry_after = "30"
    delta = MetricDelta(fault_proxy.metrics)
    with pytest.raises(openai.RateLimitError) as raised:
        chat(fault_proxy)
    delta.after()
    assert raised.value.response.headers["retry-after"] == "30"
    assert error_of(raised)["message"] == "weak failed"
    assert len(strong.received) == 1 and len(weak.received) == 1
    assert delta("routegate_upstream_errors_total", reason="http_429") == 2
    assert delta("routegate_requests_total", tier="weak", status="429") == 1


# --- transport faults -------------------------------------------------------------------------


def test_read_timeout_falls_back(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.delay = 3.0  # ROUTEGATE_READ_TIMEOUT=1
    delta = MetricDelta(fault_proxy.metrics)
    raw = chat(fault_proxy)
    delta.after()
    assert raw.headers["x-routegate-fallback"] == "strong->weak:timeout"
    assert len(strong.received) == 2 and len(weak.received) == 1
    assert delta("routegate_upstream_errors_total", tier="strong", reason="timeout") == 2
    assert delta("routegate_fallbacks_total", from_tier="strong", to_tier="weak", reason="timeout") == 1
    # the strong upstream had both tries, and may bill their prompts: charged an estimate of each
    assert delta("routegate_usage_estimated_total", tier="strong") == 2
    assert delta("routegate_tokens_total", tier="strong", kind="prompt") == 2 * PROMPT_ESTIMATE
    assert delta("routegate_tokens_total", tier="strong", kind="completion") == 0
    assert delta("routegate_cost_usd_total", tier="strong") > 0
    # the all-strong counterfactual counts the answer once, not the tries that failed
    assert delta("routegate_all_strong_cost_usd_total", tier="strong") == 0
    assert delta("routegate_all_strong_cost_usd_total", tier="weak") > 0


def test_read_timeout_on_both_tiers_is_a_504(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.delay = weak.behaviour.delay = 3.0
    delta = MetricDelta(fault_proxy.metrics)
    with pytest.raises(openai.APIStatusError) as raised:
        chat(fault_proxy)
    delta.after()
    assert raised.value.status_code == 504
    assert error_of(raised)["code"] == "upstream_timeout"
    assert delta("routegate_upstream_errors_total", reason="timeout") == 4
    assert delta("routegate_requests_total", status="504") == 1


def test_a_tier_that_hangs_leaves_its_fallback_time_within_the_total_timeout(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    settings = {**FAULT_SETTINGS, "read_timeout": "10", "total_timeout": "3"}
    strong.behaviour.delay = 10.0  # would hold the request past the whole deadline
    with running_proxy(proxy_env(strong, weak, **settings), tmp_path) as proxy:
        raw = chat(proxy)
    assert raw.headers["x-routegate-fallback"] == "strong->weak:timeout"
    assert raw.parse().choices[0].message.content == "answer from weak"
    assert len(strong.received) == 1 and len(weak.received) == 1  # no retry: the fallback's time is kept
    # strong's time ended at half the 3 s deadline (less than a read timeout was left), leaving weak the rest
    assert 1.0 < weak.received[0].at - strong.received[0].at < 2.5


@pytest.fixture(scope="module")
def refused_proxy(weak: FakeUpstream, strong: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """Strong upstream on a closed port (connection refused); weak is the healthy fake."""
    env = proxy_env(strong, weak, **FAULT_SETTINGS)
    env["ROUTEGATE_STRONG__BASE_URL"] = closed_port_url()
    with running_proxy(env, tmp_path_factory.mktemp("refused")) as running:
        yield running


def test_connection_refused_falls_back(refused_proxy: Proxy, weak: FakeUpstream) -> None:
    delta = MetricDelta(refused_proxy.metrics)
    raw = chat(refused_proxy)
    delta.after()
    assert raw.headers["x-routegate-fallback"] == "strong->weak:connect"
    assert len(weak.received) == 1
    assert delta("routegate_upstream_errors_total", tier="strong", reason="connect") == 2
    assert delta("routegate_fallbacks_total", from_tier="strong", to_tier="weak", reason="connect") == 1


def test_connection_refused_without_a_healthy_tier_is_a_502(refused_proxy: Proxy, weak: FakeUpstream) -> None:
    weak.behaviour.fail_statuses = [503] * 10
    delta = MetricDelta(refused_proxy.metrics)
    with pytest.raises(openai.InternalServerError) as raised:
        client(refused_proxy).chat.completions.create(model=WEAK_MODEL, messages=MESSAGES)
    delta.after()
    assert raised.value.status_code == 502
    assert error_of(raised)["message"] == "The strong upstream failed (connect)."
    assert delta("routegate_fallbacks_total", from_tier="weak", to_tier="strong", reason="http_5xx") == 1
    assert delta("routegate_requests_total", tier="strong", status="502") == 1


@pytest.fixture(scope="module")
def blackhole_proxy(weak: FakeUpstream, strong: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """Strong upstream whose accept queue is full: connecting times out."""
    blackhole = Blackhole()
    env = proxy_env(strong, weak, **{**FAULT_SETTINGS, "connect_timeout": "0.3"})
    env["ROUTEGATE_STRONG__BASE_URL"] = blackhole.url
    try:
        with running_proxy(env, tmp_path_factory.mktemp("blackhole")) as running:
            yield running
    finally:
        blackhole.close()


def test_connect_timeout_falls_back(blackhole_proxy: Proxy, weak: FakeUpstream) -> None:
    delta = MetricDelta(blackhole_proxy.metrics)
    raw = chat(blackhole_proxy)
    delta.after()
    assert raw.headers["x-routegate-fallback"] == "strong->weak:timeout"
    assert len(weak.received) == 1
    assert delta("routegate_upstream_errors_total", tier="strong", reason="timeout") == 2
    # it never had the request: nothing charged to it
    assert delta("routegate_usage_estimated_total", tier="strong") == 0 and delta("routegate_tokens_total", tier="strong") == 0


def test_connect_timeout_without_a_healthy_tier_is_a_504(blackhole_proxy: Proxy, weak: FakeUpstream) -> None:
    weak.behaviour.fail_statuses = [503] * 10
    delta = MetricDelta(blackhole_proxy.metrics)
    with pytest.raises(openai.APIStatusError) as raised:
        client(blackhole_proxy).chat.completions.create(model=WEAK_MODEL, messages=MESSAGES)
    delta.after()
    assert raised.value.status_code == 504
    assert error_of(raised)["code"] == "upstream_timeout"
    assert delta("routegate_upstream_errors_total", tier="strong", reason="timeout") == 2
    assert delta("routegate_requests_total", tier="strong", status="504") == 1


# --- bodies that are not what they should be -------------------------------------------------------


NO_ANSWERS = {
    "error_object": b'{"error": {"message": "provider overloaded", "code": 502}}',
    "refused_key": b'{"error": {"message": "Invalid API key", "code": 401}}',
    "error_text": b'{"error": "provider overloaded"}',  # no choices: not an answer either
    "error_kind": b'{"object": "error", "message": "upstream overloaded", "code": 503}',
    "empty_object": b"{}",
    "not_json_constant": b'{"id": "c", "choices": [], "created": NaN}',  # strict JSON parsers cannot read it
}


@pytest.mark.parametrize("body", ["malformed_json", *NO_ANSWERS])
def test_a_200_that_is_no_answer_falls_back(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream, body: str) -> None:
    """Malformed JSON (NaN is not JSON), an object without choices, or a gateway upstream
    reporting its provider's failure as a 200 holding only an error object: retried, then answered
    by the other tier, as a 5xx would be; an error object naming 401 is routegate's key refused, as
    a 401 status is: not tried again."""
    if body == "malformed_json":
        strong.behaviour.malformed_json = True
    else:
        strong.behaviour.answer_body = NO_ANSWERS[body]
    reason, tries = ("http_auth", 1) if body == "refused_key" else ("invalid_response", 2)
    delta = MetricDelta(fault_proxy.metrics)
    raw = chat(fault_proxy)
    delta.after()
    assert raw.headers["x-routegate-fallback"] == f"strong->weak:{reason}"
    assert raw.parse().choices[0].message.content == "answer from weak"
    assert delta("routegate_upstream_errors_total", tier="strong", reason=reason) == tries == len(strong.received)
    assert delta("routegate_requests_total", tier="strong", status="200") == 0
    # a malformed answer was made and thrown away: each charged its prompt and a token per four bytes
    made = 2 if body in ("malformed_json", "not_json_constant") else 0
    assert delta("routegate_usage_estimated_total", tier="strong") == made
    assert delta("routegate_tokens_total", tier="strong", kind="prompt") == made * PROMPT_ESTIMATE
    assert (delta("routegate_tokens_total", tier="strong", kind="completion") > 0) == bool(made)


NESTED = b"[" * 100_000 + b"]" * 100_000  # valid JSON, deeper than Python's parser recurses


def test_a_too_deeply_nested_answer_is_an_invalid_response(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.answer_body = b'{"choices": ' + NESTED + b"}"
    delta = MetricDelta(fault_proxy.metrics)
    raw = chat(fault_proxy)
    delta.after()
    assert raw.headers["x-routegate-fallback"] == "strong->weak:invalid_response"  # not a 500 and a traceback
    assert raw.parse().choices[0].message.content == "answer from weak"
    assert delta("routegate_upstream_errors_total", tier="strong", reason="invalid_response") == 2


def test_a_too_deeply_nested_stream_event_is_relayed(fault_proxy: Proxy, strong: FakeUpstream) -> None:
    """An event routegate reads for its usage but cannot parse is passed on as it came, and the
    stream ends as it should: a client that parses it can say so, routegate does not cut it."""
    strong.behaviour.extra_event = b'{"choices": [], "usage": {"x": ' + NESTED + b"}}"
    delta = MetricDelta(fault_proxy.metrics)
    body = {"model": ROUTED_STRONG, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{fault_proxy.api}/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        received = b"".join(response.iter_bytes())
    delta.after()
    events = [event for event in received.split(b"\n\n") if event]
    assert events[-1] == b"data: [DONE]" and events[-2].startswith(b'data: {"id"')  # the usage chunk, then the end
    assert b'data: {"choices": [], "usage": {"x": [[[' in received
    assert delta("routegate_requests_total", tier="strong", status="200") == 1


def test_malformed_json_on_both_tiers_is_a_502(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.malformed_json = weak.behaviour.malformed_json = True
    delta = MetricDelta(fault_proxy.metrics)
    with pytest.raises(openai.InternalServerError) as raised:
        chat(fault_proxy)
    delta.after()
    assert raised.value.status_code == 502
    assert error_of(raised)["message"] == "The weak upstream failed (invalid_response)."
    assert delta("routegate_upstream_errors_total", reason="invalid_response") == 4
    assert delta("routegate_requests_total", tier="weak", status="502") == 1


def test_html_error_page_falls_back(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.fail_statuses = [502] * 10
    strong.behaviour.fail_body, strong.behaviour.fail_content_type = HTML_PAGE, "text/html"
    delta = MetricDelta(fault_proxy.metrics)
    raw = chat(fault_proxy)
    delta.after()
    assert raw.headers["x-routegate-fallback"] == "strong->weak:http_5xx"
    assert raw.parse().choices[0].message.content == "answer from weak"
    assert delta("routegate_upstream_errors_total", tier="strong", reason="http_5xx") == 2
    assert delta("routegate_fallbacks_total", from_tier="strong", to_tier="weak", reason="http_5xx") == 1


def test_html_error_page_becomes_an_openai_error(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    for upstream in (strong, weak):
        upstream.behaviour.fail_statuses = [400] * 10  # a 4xx is relayed, not retried ...
        upstream.behaviour.fail_body, upstream.behaviour.fail_content_type = HTML_PAGE, "text/html"
    delta = MetricDelta(fault_proxy.metrics)
    with pytest.raises(openai.BadRequestError) as raised:
        chat(fault_proxy)
    delta.after()
    assert raised.value.response.headers["content-type"] == "application/json"  # ... but as JSON
    assert error_of(raised)["message"] == "The strong upstream answered 400 without an OpenAI-style error body."
    assert len(strong.received) == 1 and not weak.received
    assert delta("routegate_requests_total", tier="strong", status="400") == 1
    assert delta("routegate_upstream_errors_total") == 0


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ('{"detail": "Not Found"}', "Not Found"),  # FastAPI, vLLM
        (  # FastAPI's validation error: which field, and what is wrong with it
            '{"detail": [{"type": "missing", "loc": ["body", "messages", 0, "content"], "msg": "Field required"}]}',
            "body.messages.0.content: Field required",
        ),
        ('{"detail": [{"msg": "Input should be a valid list"}, "more"]}', "Input should be a valid list"),
        ('{"detail": [7]}', None),
        ('{"error": "model \'llama\' not found"}', "model 'llama' not found"),  # Ollama
        ('{"object": "error", "message": "max_tokens is too large"}', "max_tokens is too large"),  # older vLLM
        ('{"error": {"code": 400}}', None),  # an error object without a message
    ],
)
def test_an_error_body_of_another_shape_becomes_an_openai_error(
    fault_proxy: Proxy, strong: FakeUpstream, body: str, said: str | None
) -> None:
    strong.behaviour.fail_statuses = [400]
    strong.behaviour.fail_body, strong.behaviour.fail_content_type = body, "application/json"
    with pytest.raises(openai.BadRequestError) as raised:
        chat(fault_proxy)
    error = error_of(raised)
    prefix = "The strong upstream answered 400 without an OpenAI-style error body"
    assert error["message"] == (f"{prefix}: {said}" if said else f"{prefix}.")
    assert (error["type"], error["code"], error["param"]) == ("upstream_error", "upstream_error", None)


@pytest.mark.parametrize("stream", [False, True])
def test_a_redirect_falls_back_without_a_retry(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream, stream: bool
) -> None:
    strong.behaviour.fail_statuses = [301] * 10  # an http:// base URL that moved to https://, say
    strong.behaviour.fail_body, strong.behaviour.fail_content_type = "<html>Moved Permanently</html>", "text/html"
    delta = MetricDelta(fault_proxy.metrics)
    if stream:
        pieces, error = stream_events(fault_proxy)
        assert error is None and pieces == [f"weak-{index} " for index in range(5)]
    else:
        raw = chat(fault_proxy)
        assert raw.headers["x-routegate-fallback"] == "strong->weak:http_redirect"
        assert raw.parse().choices[0].message.content == "answer from weak"
    delta.after()
    assert len(strong.received) == 1 and len(weak.received) == 1
    assert delta("routegate_upstream_errors_total", tier="strong", reason="http_redirect") == 1


def test_redirects_on_both_tiers_are_a_502_naming_the_base_url(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream
) -> None:
    for upstream in (strong, weak):
        upstream.behaviour.fail_statuses = [308] * 10
        upstream.behaviour.fail_body, upstream.behaviour.fail_content_type = "", "text/plain"
    with pytest.raises(openai.InternalServerError) as raised:
        chat(fault_proxy)
    assert raised.value.status_code == 502
    error = error_of(raised)
    assert error["code"] == "upstream_error" and "redirect" in error["message"] and "base URL" in error["message"]


def test_404_on_both_tiers_is_a_502_naming_the_model_and_base_url(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream
) -> None:
    for upstream in (strong, weak):
        upstream.behaviour.fail_statuses = [404] * 10
        upstream.behaviour.fail_body = (
            '{"error": {"message": "The model `upstream-secret-name` does not exist", "code": "model_not_found"}}'
        )
    with pytest.raises(openai.InternalServerError) as raised:
        chat(fault_proxy)
    assert raised.value.status_code == 502
    error = error_of(raised)
    assert error["code"] == "upstream_error" and "model name and base URL" in error["message"]
    assert "upstream-secret-name" not in str(raised.value.body)
    assert len(strong.received) == 1 and len(weak.received) == 1


def test_a_json_answer_to_a_streamed_request_falls_back_without_a_retry(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream
) -> None:
    strong.behaviour.ignore_stream = True
    delta = MetricDelta(fault_proxy.metrics)
    pieces, error = stream_events(fault_proxy)
    delta.after()
    assert error is None and pieces == [f"weak-{index} " for index in range(5)]
    assert len(strong.received) == 1  # it would ignore "stream" again: each try is a whole answer thrown away
    assert delta("routegate_fallbacks_total", from_tier="strong", to_tier="weak", reason="stream_ignored") == 1
    answer_bytes = len(JSONResponse(strong.completion(STRONG_MODEL)).body)  # what the fake sent
    assert delta("routegate_usage_estimated_total", tier="strong") == 1
    assert delta("routegate_tokens_total", tier="strong", kind="prompt") == PROMPT_ESTIMATE
    assert delta("routegate_tokens_total", tier="strong", kind="completion") == -(-answer_bytes // 4)


def test_upstreams_refusing_routegates_keys_are_a_502_not_the_clients_401(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream
) -> None:
    for upstream in (strong, weak):
        upstream.behaviour.fail_statuses, upstream.behaviour.echo_key = [401] * 10, True
    with pytest.raises(openai.InternalServerError) as raised:
        chat(fault_proxy)
    error = error_of(raised)
    assert raised.value.status_code == 502 and error["code"] == "upstream_auth_error"
    assert "failed for" not in raised.value.response.text  # the upstream's body, quoting its key, stays behind
    assert len(strong.received) == 1 and len(weak.received) == 1


def test_a_huge_error_body_before_a_stream_is_refused(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.fail_statuses, strong.behaviour.fail_body = [400], "x" * (MAX_RESPONSE_BYTES + 1)
    delta = MetricDelta(fault_proxy.metrics)
    pieces, error = stream_events(fault_proxy)
    delta.after()
    assert error is None and pieces == [f"weak-{index} " for index in range(5)]
    assert len(strong.received) == 1 and len(weak.received) == 1
    assert delta("routegate_upstream_errors_total", tier="strong", reason="too_large") == 1
    assert delta("routegate_fallbacks_total", from_tier="strong", to_tier="weak", reason="too_large") == 1
    assert delta("routegate_tokens_total", tier="strong") == 0  # an error, however large, is no answer


def test_huge_response_under_the_limit_is_relayed_whole(fault_proxy: Proxy, strong: FakeUpstream) -> None:
    strong.behaviour.huge_bytes = MAX_RESPONSE_BYTES // 2
    delta = MetricDelta(fault_proxy.metrics)
    completion = client(fault_proxy).chat.completions.create(model=ROUTED_STRONG, messages=MESSAGES)
    delta.after()
    assert completion.choices[0].message.content == "x" * (MAX_RESPONSE_BYTES // 2)
    assert delta("routegate_upstream_errors_total") == 0


def test_huge_response_over_the_limit_is_refused_without_retry(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream
) -> None:
    strong.behaviour.huge_bytes = weak.behaviour.huge_bytes = 2 * MAX_RESPONSE_BYTES
    delta = MetricDelta(fault_proxy.metrics)
    with pytest.raises(openai.InternalServerError) as raised:
        chat(fault_proxy)
    delta.after()
    assert raised.value.status_code == 502
    assert error_of(raised)["message"] == "The weak upstream failed (too_large)."
    assert len(strong.received) == 1 and len(weak.received) == 1  # tried once per tier
    assert delta("routegate_upstream_errors_total", tier="strong", reason="too_large") == 1
    assert delta("routegate_upstream_retries_total") == 0
    for tier in ("strong", "weak"):  # each made an answer over the limit: charged at least the limit
        assert delta("routegate_tokens_total", tier=tier, kind="prompt") == PROMPT_ESTIMATE
        assert delta("routegate_tokens_total", tier=tier, kind="completion") == MAX_RESPONSE_BYTES // 4


# --- streams ----------------------------------------------------------------------------------


def test_slow_trickling_stream_is_relayed_to_the_end(fault_proxy: Proxy, strong: FakeUpstream) -> None:
    strong.behaviour.chunks, strong.behaviour.chunk_delay = 6, 0.2  # 1.2 s in all, each gap well under the 1 s read timeout
    delta = MetricDelta(fault_proxy.metrics)
    pieces, error = stream_events(fault_proxy)
    delta.after()
    assert error is None
    assert pieces == [f"strong-{index} " for index in range(6)]
    assert delta("routegate_upstream_errors_total") == 0


def test_stream_stalling_past_the_read_timeout_ends_with_an_error_event(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream
) -> None:
    strong.behaviour.chunks, strong.behaviour.chunk_delay = 3, 2.5
    delta = MetricDelta(fault_proxy.metrics)
    pieces, error = stream_events(fault_proxy)
    delta.after()
    assert pieces == ["strong-0 "]
    assert error is not None and error["code"] == "timeout" and error["type"] == "upstream_error"
    assert not weak.received  # the stream had reached the client: never replayed elsewhere
    assert delta("routegate_upstream_errors_total", tier="strong", reason="timeout") == 1
    assert delta("routegate_fallbacks_total") == 0
    assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="504") == 1)


@pytest.mark.parametrize("mode", ["abort", "end", "mid_event"])  # mid_event: the client never sees half an event
def test_stream_cut_midway_without_done_ends_with_an_error_event(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream, mode: str
) -> None:
    strong.behaviour.cut_after, strong.behaviour.cut_mode = 2, mode
    delta = MetricDelta(fault_proxy.metrics)
    pieces, error = stream_events(fault_proxy)
    delta.after()
    assert pieces == ["strong-0 ", "strong-1 "]
    assert error is not None and error["code"] == "stream_cut"
    assert not weak.received
    assert delta("routegate_upstream_errors_total", tier="strong", reason="stream_cut") == 1
    assert delta("routegate_fallbacks_total") == 0
    assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="502") == 1)
    assert delta("routegate_requests_total", status="200") == 0  # not counted as answered
    assert delta("routegate_threshold_decisions_total") == 0  # nor as the router's answered choice
    assert delta("routegate_usage_estimated_total", tier="strong") == 1  # its spend is still metered
    assert delta("routegate_cost_usd_total", tier="strong") > 0
    assert delta("routegate_all_strong_cost_usd_total") == 0  # and is no answer of the counterfactual


def test_an_upstream_content_type_with_a_byte_beyond_ascii_is_relayed_not_a_500(fault_proxy: Proxy, strong: FakeUpstream) -> None:
    """A load balancer's ``charset`` with a Latin-1 byte: the answer, the upstream's 400 and a stream
    still reach the client (with a content type that can be sent), each counted once."""
    delta = MetricDelta(fault_proxy.metrics)
    strong.behaviour.fail_statuses = [400]
    strong.behaviour.fail_body = '{"error": {"message": "bad", "type": "invalid_request_error", "param": null, "code": null}}'
    strong.behaviour.fail_content_type = "application/json; note=\u00e9"  # sent as the byte 0xE9
    refused = httpx.post(f"{fault_proxy.api}/chat/completions", json={"model": ROUTED_STRONG, "messages": MESSAGES})
    strong.behaviour.stream_content_type = "text/event-stream; note=\u00e9"
    streamed = raw_stream(fault_proxy)
    counted = delta.after()
    assert refused.status_code == 400 and refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]["message"] == "bad"
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert counted("routegate_requests_total") == 2 and counted("routegate_requests_total", status="500") == 0


UPSTREAM_HEADERS = {
    "x-request-id": "req_upstream_7",
    "openai-processing-ms": "412",
    "retry-after-ms": "1500",
    "x-ratelimit-remaining-requests": "4",
}


def test_the_upstreams_own_headers_a_client_uses_are_relayed_and_its_rate_limits_are_not(
    fault_proxy: Proxy, strong: FakeUpstream
) -> None:
    """Its request id (as ``x-upstream-request-id``, beside routegate's), processing time and
    retry hints reach the client on answers, errors and streams; its rate-limit headers, which
    speak of routegate's key, do not."""
    strong.behaviour.answer_headers = strong.behaviour.stream_headers = UPSTREAM_HEADERS
    plain = client(fault_proxy).chat.completions.with_raw_response.create(
        model=ROUTED_STRONG, messages=MESSAGES, extra_headers={"x-request-id": "mine-1"}
    )
    streamed = raw_stream(fault_proxy)
    strong.behaviour.fail_statuses = [400]
    refused = httpx.post(f"{fault_proxy.api}/chat/completions", json={"model": ROUTED_STRONG, "messages": MESSAGES})
    for response in (plain, streamed, refused):
        assert response.headers["x-upstream-request-id"] == "req_upstream_7"
        assert response.headers["openai-processing-ms"] == "412" and response.headers["retry-after-ms"] == "1500"
        assert "x-ratelimit-remaining-requests" not in response.headers
        assert response.headers["x-request-id"] != "req_upstream_7"
    assert plain.headers["x-request-id"] == "mine-1"
    assert refused.status_code == 400


ANSWER = json.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": STRONG_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "raw answer"}, "finish_reason": "stop"}],
    }
).encode()
EVENT = {
    "id": "c",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": STRONG_MODEL,
    "choices": [{"index": 0, "delta": {"content": "raw"}, "finish_reason": "stop"}],
}
EVENTS = b"data: " + json.dumps(EVENT).encode() + b"\n\ndata: [DONE]\n\n"


def test_an_upstream_header_value_with_a_control_character_is_replaced_not_a_dropped_connection(
    weak: FakeUpstream, tmp_path: Path
) -> None:
    """The HTTP server refuses to send a header value holding a control character by dropping the
    connection: the client got no response while the request was counted answered. Such a
    ``content-type`` is sent as its stand-in, such a ``retry-after`` not at all."""
    with RawUpstream().running() as strong:
        env = proxy_env(strong, weak, retries="0", fallback="false")  # type: ignore[arg-type]
        with running_proxy(env, tmp_path) as proxy:
            delta = MetricDelta(proxy.metrics)
            strong.answer = raw_response(b"HTTP/1.1 200 OK", [b"content-type: application/json\x7f"], ANSWER)
            plain = client(proxy).chat.completions.with_raw_response.create(model=STRONG_MODEL, messages=MESSAGES)
            refusal = b'{"error": {"message": "slow down", "type": "rate_limit", "param": null, "code": null}}'
            strong.answer = raw_response(b"HTTP/1.1 429 X", [b"content-type: application/json", b"retry-after: 1\x01"], refusal)
            limited = httpx.post(f"{proxy.api}/chat/completions", json={"model": STRONG_MODEL, "messages": MESSAGES})
            strong.answer = raw_response(b"HTTP/1.1 200 OK", [b"content-type: text/event-stream; x=\x01"], EVENTS)
            streamed = httpx.post(
                f"{proxy.api}/chat/completions", json={"model": STRONG_MODEL, "messages": MESSAGES, "stream": True}
            )
            counted = delta.after()
            log = proxy.log()
    assert plain.headers["content-type"] == "application/json" and plain.parse().choices[0].message.content == "raw answer"
    assert (
        limited.status_code == 429 and "retry-after" not in limited.headers and limited.json()["error"]["message"] == "slow down"
    )
    assert streamed.status_code == 200 and streamed.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert counted("routegate_requests_total", status="200") == 2 and counted("routegate_requests_total", status="429") == 1
    assert "Traceback" not in log


def test_an_answer_is_sent_as_json_whatever_type_the_upstream_gave_it(weak: FakeUpstream, tmp_path: Path) -> None:
    """A JSON answer or error that an upstream labelled ``text/html`` would render as a page, with
    whatever a prompt made the model write, on the gateway's origin: whole answers go out as
    ``application/json`` (an upstream's own spelling of JSON is kept), and every relayed answer
    says ``nosniff``."""
    refusal = b'{"error": {"message": "slow down", "type": "rate_limit", "param": null, "code": null}}'
    with RawUpstream().running() as strong:
        env = proxy_env(strong, weak, retries="0", fallback="false")  # type: ignore[arg-type]
        with running_proxy(env, tmp_path) as proxy:
            sent = {}
            for name, status, content_type, body in (
                ("html answer", b"200 OK", b"text/html", ANSWER),
                ("html refusal", b"429 X", b"text/html; charset=utf-8", refusal),
                ("json answer", b"200 OK", b"application/json; charset=utf-8", ANSWER),
            ):
                strong.answer = raw_response(b"HTTP/1.1 " + status, [b"content-type: " + content_type], body)
                sent[name] = httpx.post(f"{proxy.api}/chat/completions", json={"model": STRONG_MODEL, "messages": MESSAGES})
            strong.answer = raw_response(b"HTTP/1.1 200 OK", [b"content-type: text/event-stream"], EVENTS)
            streamed = httpx.post(
                f"{proxy.api}/chat/completions", json={"model": STRONG_MODEL, "messages": MESSAGES, "stream": True}
            )
    assert sent["html answer"].status_code == 200 and sent["html answer"].headers["content-type"] == "application/json"
    assert sent["html answer"].json()["choices"][0]["message"]["content"] == "raw answer"
    assert sent["html refusal"].status_code == 429 and sent["html refusal"].headers["content-type"] == "application/json"
    assert sent["html refusal"].json()["error"]["message"] == "slow down"
    assert sent["json answer"].headers["content-type"] == "application/json; charset=utf-8"
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    for response in (*sent.values(), streamed):
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("line_end", [b"\r", b"\r\n", b"\n"])
def test_a_stream_with_any_sse_line_end_is_relayed_whole(weak: FakeUpstream, tmp_path: Path, line_end: bytes) -> None:
    """SSE lines may end in CRLF, LF or a bare CR: whichever an upstream sends, its events are
    relayed as sent and the stream counts as an answer, not as one cut short."""
    events = b"data: " + json.dumps(EVENT).encode() + line_end * 2 + b"data: [DONE]" + line_end * 2
    with RawUpstream().running() as strong:
        env = proxy_env(strong, weak, retries="0", fallback="false")  # type: ignore[arg-type]
        with running_proxy(env, tmp_path) as proxy:
            delta = MetricDelta(proxy.metrics)
            strong.answer = raw_response(b"HTTP/1.1 200 OK", [b"content-type: text/event-stream"], events)
            streamed = httpx.post(
                f"{proxy.api}/chat/completions", json={"model": STRONG_MODEL, "messages": MESSAGES, "stream": True}
            )
            assert wait_for(lambda: delta.after()("routegate_requests_total", status="200") == 1)
            assert delta("routegate_upstream_errors_total") == 0
    assert streamed.status_code == 200 and streamed.content == events  # no stream_cut error event added


def test_stream_cut_midway_with_done_is_relayed_as_sent(fault_proxy: Proxy, strong: FakeUpstream) -> None:
    strong.behaviour.cut_after, strong.behaviour.cut_mode = 2, "done"
    delta = MetricDelta(fault_proxy.metrics)
    raw = raw_stream(fault_proxy)
    events = [line for line in raw.text.split("\n\n") if line]
    assert len(events) == 3 and events[-1] == "data: [DONE]"
    assert all("error" not in json.loads(event[6:]) for event in events[:-1])
    assert delta.after()("routegate_upstream_errors_total") == 0  # nothing a proxy could tell from a short answer


@pytest.mark.parametrize("answers", [1, 2])
def test_a_stream_that_finished_every_choice_is_whole_without_done(
    fault_proxy: Proxy, strong: FakeUpstream, answers: int
) -> None:
    strong.behaviour.finish_without_done = True  # as some OpenAI-compatible servers end a stream
    delta = MetricDelta(fault_proxy.metrics)
    raw = raw_stream(fault_proxy, n=answers)
    events = [json.loads(line[6:]) for line in raw.text.split("\n\n") if line]
    assert [event["choices"][0]["delta"].get("content") for event in events if event.get("choices")][:5] == [
        f"strong-{index} " for index in range(5)
    ]
    if answers == 1:  # its one choice finished: relayed as sent, an answer
        assert "error" not in events[-1] and events[-1]["choices"][0]["finish_reason"] == "stop"
        assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="200") == 1)
        assert delta("routegate_upstream_errors_total") == 0
    else:  # one of two choices finished: the stream was cut
        assert events[-1]["error"]["code"] == "stream_cut"
        assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="502") == 1)


def test_a_cut_after_every_choice_finished_sends_no_half_event(fault_proxy: Proxy, strong: FakeUpstream) -> None:
    """The answer was whole when the connection broke in the usage chunk (which the client did not
    ask for): the client gets the answer without a fragment of that chunk, and it counts as an answer."""
    strong.behaviour.finish_without_done = strong.behaviour.cut_in_usage = True
    delta = MetricDelta(fault_proxy.metrics)
    raw = raw_stream(fault_proxy)
    assert raw.status_code == 200 and raw.text.endswith("\n\n") and '"usage"' not in raw.text
    events = [json.loads(block[6:]) for block in raw.text.split("\n\n") if block]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="200") == 1)
    assert delta("routegate_upstream_errors_total") == 0


@pytest.mark.parametrize(
    "failure",
    [
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "error"}], "error": {"message": "provider failed", "code": 502}},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "abort"}]},
    ],
    ids=["error_event", "abort"],
)
def test_a_stream_the_upstream_ends_with_its_own_error_is_not_an_answer(
    fault_proxy: Proxy, strong: FakeUpstream, failure: dict
) -> None:
    """OpenRouter ends a stream that failed upstream with an error event and finish_reason "error",
    vLLM with "abort": the client gets the events as sent; routegate counts a failed stream, not an answer."""
    strong.behaviour.chunks, strong.behaviour.extra_event = 2, json.dumps(failure).encode()
    delta = MetricDelta(fault_proxy.metrics)
    raw = raw_stream(fault_proxy)
    assert raw.status_code == 200 and raw.text.endswith("data: [DONE]\n\n")
    assert json.loads(raw.text.split("\n\n")[2][6:]) == failure  # relayed as sent, nothing added after [DONE]
    assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="502") == 1)
    assert delta("routegate_requests_total", tier="strong", status="200") == 0
    assert delta("routegate_upstream_errors_total", tier="strong", reason="stream_cut") == 1


def test_an_upstream_error_event_then_a_clean_close_gets_no_second_error(fault_proxy: Proxy, strong: FakeUpstream) -> None:
    """The upstream reported its failure in an event of its own and closed without [DONE]: the
    client has that error, as sent, and no routegate error event after it."""
    failure = {"error": {"message": "provider failed", "type": "server_error", "code": 502}}
    strong.behaviour.chunks, strong.behaviour.extra_event = 2, json.dumps(failure).encode()
    strong.behaviour.end_after_extra_event = True
    delta = MetricDelta(fault_proxy.metrics)
    raw = raw_stream(fault_proxy)
    events = [block for block in raw.text.split("\n\n") if block]
    assert raw.status_code == 200 and len(events) == 3 and json.loads(events[-1][6:]) == failure
    assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="502") == 1)


def test_an_empty_finish_reason_does_not_end_the_answer(fault_proxy: Proxy, strong: FakeUpstream) -> None:
    """Some servers send "finish_reason": "" on every content chunk: a cut after them is still a
    cut answer, which the client is told about, not a whole one."""
    strong.behaviour.open_finish_reason = ""
    strong.behaviour.cut_after, strong.behaviour.cut_mode = 2, "abort"
    delta = MetricDelta(fault_proxy.metrics)
    pieces, error = stream_events(fault_proxy)
    assert pieces == ["strong-0 ", "strong-1 "] and error is not None and error["code"] == "stream_cut"
    assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="502") == 1)


def test_stream_cut_before_the_first_byte_falls_back(fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream) -> None:
    strong.behaviour.cut_after, strong.behaviour.cut_mode = 0, "abort"
    delta = MetricDelta(fault_proxy.metrics)
    pieces, error = stream_events(fault_proxy)
    delta.after()
    assert error is None and pieces == [f"weak-{index} " for index in range(5)]
    assert len(strong.received) == 2 and len(weak.received) == 1
    assert delta("routegate_fallbacks_total", from_tier="strong", to_tier="weak", reason="protocol") == 1


def test_keep_alive_comments_before_a_failure_do_not_commit_the_stream(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream
) -> None:
    """Some upstreams send SSE comments while they work (": PROCESSING"): a failure after them and
    before any event is still retried and falls back; the comments of the stream that answers are relayed."""
    strong.behaviour.stream_preamble = b": PROCESSING\n\n"
    strong.behaviour.cut_after, strong.behaviour.cut_mode = 0, "abort"
    weak.behaviour.stream_preamble = b": PROCESSING\n\n: PROCESSING\n\n"
    delta = MetricDelta(fault_proxy.metrics)
    raw = raw_stream(fault_proxy)
    delta.after()
    assert raw.status_code == 200 and raw.text.startswith(": PROCESSING\n\n: PROCESSING\n\ndata: ")
    events = [json.loads(block[6:]) for block in raw.text.split("\n\n") if block.startswith("data: {")]
    assert [event["choices"][0]["delta"]["content"] for event in events if event.get("choices")] == [
        f"weak-{index} " for index in range(5)
    ]
    assert len(strong.received) == 2 and len(weak.received) == 1
    assert delta("routegate_fallbacks_total", from_tier="strong", to_tier="weak", reason="protocol") == 1


@pytest.mark.parametrize("split", [0, 8, 60], ids=["one_read", "split_in_data", "split_before_blank_line"])
def test_a_stream_whose_first_event_is_an_error_is_retried_and_falls_back(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream, split: int
) -> None:
    """A gateway upstream reporting its provider's failure as a 200 stream's first event: nothing
    reached the client, so it is a failed try like a 5xx, however the event's bytes arrive."""
    strong.behaviour.stream_preamble = b'data: {"error": {"message": "provider overloaded", "code": 502}}\n\n'
    strong.behaviour.preamble_split = split
    strong.behaviour.cut_after, strong.behaviour.cut_mode = 0, "abort"
    delta = MetricDelta(fault_proxy.metrics)
    pieces, error = stream_events(fault_proxy)
    delta.after()
    assert error is None and pieces == [f"weak-{index} " for index in range(5)]
    assert len(strong.received) == 2 and len(weak.received) == 1  # retried once, then the other tier
    assert delta("routegate_upstream_errors_total", tier="strong", reason="stream_error") == 2
    assert delta("routegate_fallbacks_total", from_tier="strong", to_tier="weak", reason="stream_error") == 1


def test_a_first_event_that_names_a_client_error_is_relayed_not_retried(fault_proxy: Proxy, strong: FakeUpstream) -> None:
    """The same error on every try (a prompt over the context length): the client gets the
    upstream's own words, as sent, and the request counts as the client's error it names, not as
    an answer nor as the upstream's failure (a client's long prompts must not page anyone)."""
    error = {"message": "This model's maximum context length is 8192 tokens.", "type": "invalid_request_error", "code": 400}
    strong.behaviour.stream_preamble = b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
    strong.behaviour.cut_after, strong.behaviour.cut_mode = 0, "abort"
    delta = MetricDelta(fault_proxy.metrics)
    raw = raw_stream(fault_proxy)
    assert raw.status_code == 200 and json.loads(raw.text.split("\n\n")[0][6:]) == {"error": error}
    assert len(strong.received) == 1 and raw.headers.get("x-routegate-fallback") is None
    assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="400") == 1)
    assert delta("routegate_requests_total", tier="strong", status="502") == 0
    assert delta("routegate_upstream_errors_total", tier="strong") == 0
    assert delta("routegate_usage_estimated_total", tier="strong") == 0


def test_a_200_holding_an_error_that_names_a_client_error_is_relayed_and_counted_as_it(
    fault_proxy: Proxy, strong: FakeUpstream
) -> None:
    """The same in a whole 200 body: sent with the 400 it names (an SDK raises it, where a 200 would
    be read as an answer without choices), counted as that 400, not as an answer (no estimated
    tokens charged, no upstream error)."""
    strong.behaviour.answer_body = b'{"error": {"message": "context length exceeded", "type": "invalid_request_error"}}'
    delta = MetricDelta(fault_proxy.metrics)
    response = httpx.post(f"{fault_proxy.api}/chat/completions", json={"model": ROUTED_STRONG, "messages": MESSAGES}, timeout=30)
    delta.after()
    assert response.status_code == 400 and response.json()["error"]["message"] == "context length exceeded"
    assert len(strong.received) == 1
    assert delta("routegate_requests_total", tier="strong", status="400") == 1
    assert delta("routegate_requests_total", tier="strong", status="200") == 0
    assert delta("routegate_upstream_errors_total", tier="strong") == 0
    assert delta("routegate_usage_estimated_total", tier="strong") == 0
    with pytest.raises(openai.BadRequestError, match="context length exceeded"):
        openai.OpenAI(base_url=fault_proxy.api, api_key="unused", max_retries=0).chat.completions.create(
            model=ROUTED_STRONG, messages=MESSAGES
        )


def test_keep_alive_comments_are_relayed_once_held_long_enough(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """An upstream that takes its time after its keep-alives: they reach the client after
    ROUTEGATE_STREAM_HOLD_SECONDS, before its first event, and the stream goes on to its end."""
    strong.behaviour.stream_preamble, strong.behaviour.preamble_delay = b": PROCESSING\n\n", 5.0
    env = proxy_env(strong, weak, stream_hold_seconds="0.5")
    with running_proxy(env, tmp_path) as proxy:
        body = {"model": ROUTED_STRONG, "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", f"{proxy.api}/chat/completions", json=body, timeout=30) as response:
            started = time.monotonic()
            parts = response.iter_raw()
            kept_alive = next(parts)
            waited = time.monotonic() - started
            rest = b"".join(parts)
    assert kept_alive == b": PROCESSING\n\n" and waited < 4.0  # relayed before the first event came (at 5 s)
    events = [json.loads(block[6:]) for block in rest.decode().split("\n\n") if block.startswith("data: {")]
    assert [event["choices"][0]["delta"]["content"] for event in events] == [f"strong-{index} " for index in range(5)]
    assert len(strong.received) == 1 and not weak.received


@pytest.mark.parametrize(
    ("content_type", "headers"), [("text/html", {}), ("text/event-stream", {"content-encoding": "gzip"})], ids=["html", "gzip"]
)
def test_a_streamed_2xx_that_is_not_an_event_stream_falls_back(
    fault_proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream, content_type: str, headers: dict[str, str]
) -> None:
    strong.behaviour.stream_content_type, strong.behaviour.stream_headers = content_type, headers
    delta = MetricDelta(fault_proxy.metrics)
    pieces, error = stream_events(fault_proxy)
    delta.after()
    assert error is None and pieces == [f"weak-{index} " for index in range(5)]
    assert len(strong.received) == 1 and len(weak.received) == 1  # not retried: it would be so again
    assert delta("routegate_upstream_errors_total", tier="strong", reason="not_event_stream") == 1
    assert delta("routegate_fallbacks_total", from_tier="strong", to_tier="weak", reason="not_event_stream") == 1


# --- router faults ----------------------------------------------------------------------------


def test_a_router_that_raises_is_a_500_without_its_details(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "failing").mkdir(parents=True)  # it needs no checkpoint, only its folder
    env = proxy_env(strong, weak, router="failing", checkpoint_dir=str(tmp_path / "checkpoints"))
    with running_proxy(env, tmp_path, module="tests.failing_router") as proxy:
        sdk = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:
            sdk.chat.completions.create(model="router-failing-0.5", messages=[{"role": "user", "content": "FAIL now"}])
        after = sdk.chat.completions.with_raw_response.create(
            model="router-failing-0.5", messages=[{"role": "user", "content": "fine"}]
        )
        log = proxy.log()
    error = error_of(raised)
    assert raised.value.status_code == 500 and error["code"] == "router_error" and error["type"] == "server_error"
    assert "secret detail" not in raised.value.response.text and "Traceback" not in raised.value.response.text
    assert "router failing failed" in log and "Traceback" in log  # the operator gets the details
    assert after.headers["x-routegate-tier"] == "weak"  # the next request is routed as usual
    assert len(weak.received) == 1 and not strong.received


@pytest.mark.parametrize("blocking", ["0", "1"])
def test_a_router_that_lets_stop_iteration_out_is_a_router_error(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, blocking: str
) -> None:
    """A ``StopIteration`` cannot be set on an asyncio Future: from a router scored on a thread it
    would leave its batch, and every request after it, waiting for ever."""
    (tmp_path / "checkpoints" / "failing").mkdir(parents=True)
    env = proxy_env(strong, weak, router="failing", checkpoint_dir=str(tmp_path / "checkpoints"), score_timeout="10")
    env["FAILING_ROUTER_BLOCKING"] = blocking
    with running_proxy(env, tmp_path, module="tests.failing_router") as proxy:
        sdk = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0, timeout=30)
        with pytest.raises(openai.InternalServerError) as stopped:
            sdk.chat.completions.create(model="router-failing-0.5", messages=[{"role": "user", "content": "STOP now"}])
        after = sdk.chat.completions.with_raw_response.create(
            model="router-failing-0.5", messages=[{"role": "user", "content": "fine"}]
        )
    assert error_of(stopped)["code"] == "router_error"
    assert after.headers["x-routegate-tier"] == "weak"  # the next request is scored as usual


def test_a_defect_in_routegate_is_a_counted_500_without_its_details(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    (tmp_path / "checkpoints" / "failing").mkdir(parents=True)
    env = proxy_env(strong, weak, router="failing", checkpoint_dir=str(tmp_path / "checkpoints"))
    with running_proxy(env, tmp_path, module="tests.failing_router") as proxy:
        sdk = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:  # a defect while deciding
            sdk.chat.completions.create(
                model="router-failing-0.5", messages=[{"role": "user", "content": "DEFECT"}], extra_headers={"x-request-id": "r1"}
            )
        with pytest.raises(openai.InternalServerError) as late:  # a defect once the weak upstream has answered
            sdk.chat.completions.create(
                model="router-failing-0.5",
                messages=[{"role": "user", "content": "a question"}],
                extra_headers={"x-request-id": "late-defect"},
            )
        with pytest.raises(openai.InternalServerError) as building:  # a defect while its response is built
            sdk.chat.completions.create(
                model="router-failing-0.5",
                messages=[{"role": "user", "content": "a question"}],
                extra_headers={"x-request-id": "while-building"},
            )
        with pytest.raises(openai.InternalServerError) as recorded:  # a defect once the answer is recorded
            sdk.chat.completions.create(
                model="router-failing-0.5",
                messages=[{"role": "user", "content": "a question"}],
                extra_headers={"x-request-id": "after-recording"},
            )
        sdk.chat.completions.create(model="router-failing-0.5", messages=[{"role": "user", "content": "fine"}])
        metrics_text, log = proxy.metrics(), proxy.log()
    for error in (raised, late, building, recorded):
        assert (error_of(error)["code"], error_of(error)["type"]) == ("internal_error", "server_error")
        assert "secret detail" not in error.value.response.text and "Traceback" not in error.value.response.text
    assert raised.value.response.headers["x-request-id"] == "r1"
    assert "request_id=r1 unhandled error" in log and "planted defect" in log  # the operator gets the details
    assert "request_id=late-defect unhandled error" in log
    # the error-rate alert sees both; the one an upstream had is its upstream's, its prompt charged (estimated)
    assert metric_sum(metrics_text, "routegate_requests_total", router="none", status="500") == 1
    # one while its response was built: counted as the 500 its client got (recorded once built)
    assert metric_sum(metrics_text, "routegate_requests_total", router="failing", tier="weak", status="500") == 2
    assert metric_sum(metrics_text, "routegate_usage_estimated_total", tier="weak") == 2
    assert metric_sum(metrics_text, "routegate_requests_in_flight") == 0  # their slots were given back
    assert len(weak.received) == 4 and not strong.received
    # the one recorded before the defect is counted once, as recorded, not a second time as refused
    assert metric_sum(metrics_text, "routegate_requests_total") == 5
    assert "request_id=after-recording unhandled error" in log


def test_a_router_score_that_is_not_a_number_is_a_router_error(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "failing").mkdir(parents=True)
    env = proxy_env(strong, weak, router="failing", checkpoint_dir=str(tmp_path / "checkpoints"))
    with running_proxy(env, tmp_path, module="tests.failing_router") as proxy:
        sdk = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:
            sdk.chat.completions.create(model="router-failing-0.5", messages=[{"role": "user", "content": "NAN please"}])
        sdk.chat.completions.create(model="router-failing-0.5", messages=[{"role": "user", "content": "fine"}])
        metrics_text = proxy.metrics()
    assert error_of(raised)["code"] == "router_error"
    assert metric_sum(metrics_text, "routegate_router_score_count", router="failing") == 1  # the fine one only
    assert metric_sum(metrics_text, "routegate_router_score_sum", router="failing") == 0.0  # not NaN
    assert not strong.received and len(weak.received) == 1
