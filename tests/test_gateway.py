"""The gateway end to end: the openai SDK against a real routegate in front of two fake upstreams."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import STRONG_KEY, STRONG_MODEL, WEAK_KEY, WEAK_MODEL, Proxy, proxy_env, running_proxy
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream
from tests.metric_values import MetricDelta, wait_for
from tests.metrics_text import metric_sum

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    }
]
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "facts": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"k": {"type": "string"}, "v": {"type": "number"}}},
                },
            },
            "required": ["city", "facts"],
            "additionalProperties": False,
        },
    },
}


def client(proxy: Proxy, key: str = "client-key-not-checked") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.api, api_key=key, max_retries=0)


def test_threshold_zero_goes_strong_with_body_untouched_but_model(proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream):
    extra = {"logprobs": True, "top_logprobs": 2, "n": 1, "stop": ["\n\n"], "seed": 7, "user": "u-1"}
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="router-random-0.0", messages=MESSAGES, extra_body={"vendor_field": {"nested": [1, 2]}}, **extra
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "answer from strong"
    assert raw.headers["x-routegate-router"] == "random"
    assert raw.headers["x-routegate-tier"] == "strong"
    assert raw.headers["x-routegate-model"] == STRONG_MODEL
    assert raw.headers["x-routegate-threshold"] == "0"
    assert 0.0 <= float(raw.headers["x-routegate-score"]) <= 1.0
    assert raw.headers["x-request-id"]
    assert len(strong.received) == 1 and not weak.received
    received = strong.received[0]
    assert received.body == {
        "model": STRONG_MODEL,
        "messages": MESSAGES,
        "vendor_field": {"nested": [1, 2]},
        **extra,
    }
    assert received.headers["authorization"] == f"Bearer {STRONG_KEY}"


def test_threshold_one_goes_weak_with_weak_key(proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream):
    raw = client(proxy, key="sk-client-secret").chat.completions.with_raw_response.create(
        model="router-random-1.0", messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content == "answer from weak"
    assert raw.headers["x-routegate-tier"] == "weak"
    assert not strong.received
    assert weak.received[0].headers["authorization"] == f"Bearer {WEAK_KEY}"
    assert "sk-client-secret" not in json.dumps(weak.received[0].headers)


def test_tools_and_nested_response_format_pass_through(proxy: Proxy, strong: FakeUpstream):
    reply = client(proxy).chat.completions.create(
        model="router-random-0.0",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        response_format=RESPONSE_FORMAT,
    )
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    body = strong.received[0].body
    assert body["tools"] == TOOLS
    assert body["response_format"] == RESPONSE_FORMAT
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False


def test_upstream_model_name_bypasses_routing(proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream):
    raw = client(proxy).chat.completions.with_raw_response.create(model=WEAK_MODEL, messages=MESSAGES)
    assert raw.headers["x-routegate-router"] == "none"
    assert raw.headers["x-routegate-decision"] == "direct"
    assert "x-routegate-score" not in raw.headers
    assert weak.received[0].body["model"] == WEAK_MODEL and not strong.received


def test_auto_alias_uses_default_router_and_threshold(proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream):
    tiers = set()
    for _ in range(24):  # the random router's scores fall on both sides of 0.5 (all on one: 1 in 8 million)
        raw = client(proxy).chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
        assert raw.headers["x-routegate-router"] == "random"
        assert raw.headers["x-routegate-threshold"] == "0.5"
        expected = "strong" if float(raw.headers["x-routegate-score"]) >= 0.5 else "weak"
        assert raw.headers["x-routegate-tier"] == expected
        assert raw.parse().choices[0].message.content == f"answer from {expected}"  # the upstream that answered
        tiers.add(expected)
    assert tiers == {"strong", "weak"} and len(strong.received) + len(weak.received) == 24


def test_client_request_id_is_kept(proxy: Proxy, strong: FakeUpstream):
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="router-random-0.0", messages=MESSAGES, extra_headers={"x-request-id": "req-abc-123"}
    )
    assert raw.headers["x-request-id"] == "req-abc-123"
    assert strong.received[0].headers["x-request-id"] == "req-abc-123"


def test_stream_arrives_incrementally_and_ends_with_done(proxy: Proxy, strong: FakeUpstream):
    strong.behaviour.chunks = 4
    strong.behaviour.chunk_delay = 0.4
    with httpx.stream(
        "POST",
        f"{proxy.api}/chat/completions",
        json={"model": "router-random-0.0", "messages": MESSAGES, "stream": True},
        timeout=10,
    ) as response:
        assert response.headers["x-routegate-tier"] == "strong"
        assert response.headers["content-type"].startswith("text/event-stream")
        arrivals: list[tuple[float, bytes]] = [(time.monotonic(), chunk) for chunk in response.iter_raw()]
    first_arrival = next(at for at, chunk in arrivals if b"strong-0" in chunk)
    last_sent = strong.chunk_sent_at[-1]
    assert first_arrival < last_sent, "the first chunk must reach the client before the upstream sends the last"
    body = b"".join(chunk for _, chunk in arrivals)
    assert body.rstrip().endswith(b"data: [DONE]")
    assert [f"strong-{i}" for i in range(4)] == [
        json.loads(line[6:])["choices"][0]["delta"]["content"].strip()
        for line in body.decode().splitlines()
        if line.startswith("data: {")
    ]


def test_sdk_stream_sync(proxy: Proxy, weak: FakeUpstream):
    stream = client(proxy).chat.completions.create(
        model="router-random-1.0", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "weak-0 weak-1 weak-2 weak-3 weak-4 "
    assert chunks[-1].usage.prompt_tokens == 11
    assert weak.received[0].body["stream_options"] == {"include_usage": True}


def test_a_stream_is_metered_and_charged_though_the_client_did_not_ask_for_usage(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
):
    with running_proxy(proxy_env(strong, weak, daily_budget_usd="100"), tmp_path) as proxy:
        delta = MetricDelta(proxy.metrics)
        stream = client(proxy).chat.completions.create(model="router-random-0.0", messages=MESSAGES, stream=True)
        chunks = list(stream)
        assert wait_for(lambda: delta.after()("routegate_tokens_total", tier="strong") == PROMPT_TOKENS + COMPLETION_TOKENS)
        remaining = metric_sum(proxy.metrics(), "routegate_budget_remaining_usd")
    assert strong.received[0].body["stream_options"] == {"include_usage": True}  # asked upstream by routegate
    assert all(chunk.choices for chunk in chunks)  # but the usage-only chunk did not reach the client
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "strong-0 strong-1 strong-2 strong-3 strong-4 "
    assert delta("routegate_cost_usd_total", tier="strong") == pytest.approx((11 * 10 + 7 * 30) / 1e6)
    assert remaining == pytest.approx(100 - (11 * 10 + 7 * 30) / 1e6)


# MESSAGES' estimated prompt tokens: one per message plus a quarter of its characters (14 and 30)
ESTIMATED_PROMPT_TOKENS = (1 + 14 // 4) + (1 + 30 // 4)


def test_a_stream_keeps_the_clients_stream_options_and_can_be_left_unasked(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
):
    with running_proxy(proxy_env(strong, weak, stream_usage="false"), tmp_path) as proxy:
        delta = MetricDelta(proxy.metrics)
        plain = list(client(proxy).chat.completions.create(model="router-random-0.0", messages=MESSAGES, stream=True))
        asked = list(
            client(proxy).chat.completions.create(
                model="router-random-0.0", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
        assert wait_for(lambda: delta.after()("routegate_requests_total", status="200") == 2)
    assert "stream_options" not in strong.received[0].body and all(chunk.choices for chunk in plain)
    assert strong.received[1].body["stream_options"] == {"include_usage": True}
    assert asked[-1].choices == [] and asked[-1].usage.prompt_tokens == PROMPT_TOKENS
    # the second stream's reported usage; the first one's estimated: one token per chunk of the 5
    estimated = ESTIMATED_PROMPT_TOKENS + 5
    assert delta("routegate_tokens_total", tier="strong") == PROMPT_TOKENS + COMPLETION_TOKENS + estimated
    assert delta("routegate_usage_estimated_total", tier="strong") == 1


def test_an_answer_with_odd_content_parts_is_relayed_and_estimated(proxy: Proxy, strong: FakeUpstream):
    strong.behaviour.omit_usage = True
    strong.behaviour.answer = ["a bare string part", {"type": "text", "text": "x" * 8}, None]
    delta = MetricDelta(proxy.metrics)
    body = {"model": "router-random-0.0", "messages": MESSAGES}
    response = httpx.post(f"{proxy.api}/chat/completions", json=body, timeout=10)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == strong.behaviour.answer  # relayed as sent
    assert wait_for(lambda: delta.after()("routegate_usage_estimated_total", tier="strong") == 1)
    assert delta("routegate_tokens_total", tier="strong", kind="completion") == 2  # the 8 characters of text parts


def test_reported_zero_usage_is_not_replaced_by_an_estimate(proxy: Proxy, strong: FakeUpstream):
    strong.behaviour.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    delta = MetricDelta(proxy.metrics)
    client(proxy).chat.completions.create(model="router-random-0.0", messages=MESSAGES)
    assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="200") == 1)
    assert delta("routegate_usage_estimated_total") == 0 and delta("routegate_tokens_total") == 0


@pytest.mark.parametrize("usage", [{"total_tokens": 500}, {}, {"prompt_tokens": 12.0, "completion_tokens": "7"}])
def test_a_usage_object_without_token_counts_is_charged_an_estimate(proxy: Proxy, strong: FakeUpstream, usage: dict):
    strong.behaviour.usage, strong.behaviour.answer = usage, "x" * 399
    delta = MetricDelta(proxy.metrics)
    client(proxy).chat.completions.create(model="router-random-0.0", messages=MESSAGES)
    assert wait_for(lambda: delta.after()("routegate_usage_estimated_total", tier="strong") == 1)
    assert delta("routegate_tokens_total", tier="strong", kind="prompt") == ESTIMATED_PROMPT_TOKENS
    assert delta("routegate_tokens_total", tier="strong", kind="completion") == 100  # 399 characters, rounded up


def test_an_answer_without_usage_is_charged_an_estimate(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    strong.behaviour.omit_usage, strong.behaviour.answer = True, "x" * 399
    with running_proxy(proxy_env(strong, weak, daily_budget_usd="100"), tmp_path) as proxy:
        delta = MetricDelta(proxy.metrics)
        answer = client(proxy).chat.completions.create(model="router-random-0.0", messages=MESSAGES)
        assert answer.usage is None  # relayed as the upstream sent it
        assert wait_for(lambda: delta.after()("routegate_usage_estimated_total", tier="strong") == 1)
        remaining = metric_sum(proxy.metrics(), "routegate_budget_remaining_usd")
    assert delta("routegate_tokens_total", tier="strong", kind="prompt") == ESTIMATED_PROMPT_TOKENS
    assert delta("routegate_tokens_total", tier="strong", kind="completion") == 100  # 399 characters, rounded up
    cost = (ESTIMATED_PROMPT_TOKENS * 10 + 100 * 30) / 1e6
    assert delta("routegate_cost_usd_total", tier="strong") == pytest.approx(cost)
    assert remaining == pytest.approx(100 - cost)


@pytest.mark.parametrize(("status", "relayed"), [(400, openai.BadRequestError), (422, openai.UnprocessableEntityError)])
def test_an_upstream_that_refuses_stream_options_is_asked_without_them(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, status: int, relayed: type[openai.APIStatusError]
):
    strong.behaviour.refuse_stream_options, strong.behaviour.refusal_status = True, status
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        first, second = (
            list(client(proxy).chat.completions.create(model="router-random-0.0", messages=MESSAGES, stream=True))
            for _ in range(2)
        )
        with pytest.raises(relayed):  # a client's own stream_options: the upstream's answer
            client(proxy).chat.completions.create(
                model="router-random-0.0", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        log = proxy.log()
    answer = "strong-0 strong-1 strong-2 strong-3 strong-4 "
    assert ["".join(chunk.choices[0].delta.content or "" for chunk in chunks) for chunks in (first, second)] == [answer] * 2
    assert ["stream_options" in received.body for received in strong.received] == [True, False, False, True]
    assert not weak.received and "refuses stream_options" in log


@pytest.mark.parametrize(
    "detail",
    [
        [{"type": "missing", "loc": ["body", "temperature"], "msg": "Field required", "input": {"stream_options": {}}}],
        [{"loc": 3, "msg": "stream_options? no: field 3"}, "stream_options"],  # odd shapes: read, never a 500
    ],
    ids=["echoed_input", "odd_shapes"],
)
def test_a_422_that_only_echoes_stream_options_is_relayed_not_taken_for_a_refusal(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, detail: list
):
    """A FastAPI-style 422 about another field echoes the whole body (routegate's stream_options
    included) as its input: the client gets it, and the stream is not sent again without them."""
    strong.behaviour.fail_statuses, strong.behaviour.fail_body = [422], json.dumps({"detail": detail})
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        with pytest.raises(openai.UnprocessableEntityError):
            list(client(proxy).chat.completions.create(model="router-random-0.0", messages=MESSAGES, stream=True))
    assert len(strong.received) == 1 and not weak.received


def test_a_clients_own_refused_stream_options_do_not_stop_metering(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path):
    strong.behaviour.refuse_stream_options = True  # as an upstream would refuse a field it does not know
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        with pytest.raises(openai.BadRequestError):  # the client's own field: its error to read
            client(proxy).chat.completions.create(
                model="router-random-0.0", messages=MESSAGES, stream=True, extra_body={"stream_options": {"x_field": 1}}
            )
        strong.behaviour.refuse_stream_options = False
        list(client(proxy).chat.completions.create(model="router-random-0.0", messages=MESSAGES, stream=True))
        log = proxy.log()
    assert strong.received[-1].body["stream_options"] == {"include_usage": True}  # still metered
    assert "refuses stream_options" not in log


def test_a_null_stream_options_is_not_the_clients_own_to_an_upstream_that_refuses_the_field(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
):
    strong.behaviour.refuse_stream_options = True  # it refuses a null one too
    body = {"model": "router-random-0.0", "messages": MESSAGES, "stream": True, "stream_options": None}
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy:
        response = httpx.post(f"{proxy.api}/chat/completions", json=body, timeout=10)
        log = proxy.log()
    assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]")
    assert ["stream_options" in received.body for received in strong.received] == [True, False]
    assert "refuses stream_options" in log


def test_a_stream_with_null_stream_options_is_answered(proxy: Proxy, strong: FakeUpstream):
    body = {"model": "router-random-0.0", "messages": MESSAGES, "stream": True, "stream_options": None}
    response = httpx.post(f"{proxy.api}/chat/completions", json=body, timeout=10)
    assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]")
    assert '"usage": {' not in response.text
    assert strong.received[0].body["stream_options"] == {"include_usage": True}


async def test_sdk_async_plain_and_stream(proxy: Proxy, strong: FakeUpstream):
    async_client = openai.AsyncOpenAI(base_url=proxy.api, api_key="k", max_retries=0)
    replies = await asyncio.gather(
        *[async_client.chat.completions.create(model="router-random-0.0", messages=MESSAGES) for _ in range(8)]
    )
    assert {reply.choices[0].message.content for reply in replies} == {"answer from strong"}
    stream = await async_client.chat.completions.create(model="router-random-0.0", messages=MESSAGES, stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text.startswith("strong-0 ")
    assert len(strong.received) == 9
    await async_client.close()


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("content", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_type"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model", "missing_required_parameter"),
        (b'{"model": "auto"}', "messages", "missing_required_parameter"),
        (b'{"model": "auto", "messages": "hi"}', "messages", "invalid_type"),
        (b'{"model": "auto", "messages": []}', "messages", "empty_array"),
        (b'{"model": "auto", "messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role", "invalid_value"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": 5}]}', "messages[0].content", "invalid_type"),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
            "temperature",
            "invalid_type",
        ),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream", "invalid_type"),
        (b'{"model": "router-random-1.5", "messages": [{"role": "user", "content": "hi"}]}', "model", "invalid_threshold"),
        (b'{"model": "router-random-1e0", "messages": [{"role": "user", "content": "hi"}]}', "model", "invalid_threshold"),
        (
            '{"model": "router-random-\u0660.\u0665", "messages": [{"role": "user", "content": "hi"}]}'.encode(),
            "model",
            "invalid_threshold",
        ),
        (b'{"model": "router-nosuch-0.5", "messages": [{"role": "user", "content": "hi"}]}', "model", "unknown_router"),
    ],
)
def test_bad_requests_get_openai_400(proxy: Proxy, strong: FakeUpstream, content: bytes, param: str | None, code: str):
    response = httpx.post(f"{proxy.api}/chat/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert "Traceback" not in response.text
    assert not strong.received


def test_a_model_a_client_may_name_can_be_retrieved(proxy: Proxy):
    models = client(proxy).models
    for name in ("auto", "router-random-0.5", "router-random-0.42", "router-random-30%", STRONG_MODEL):
        retrieved = models.retrieve(name)
        assert (retrieved.id, retrieved.object, retrieved.owned_by) == (name, "model", "routegate")
        assert isinstance(retrieved.created, int) and retrieved.created > 1_700_000_000  # typed clients require it
    for name in ("gpt-9", "router-nosuch-0.5", "router-random-1.5", "a/b"):
        with pytest.raises(openai.NotFoundError) as raised:
            models.retrieve(name)
        assert raised.value.body["code"] == "model_not_found" and raised.value.body["param"] == "model"
    assert "auto" in {model["id"] for model in httpx.get(f"{proxy.api}/models/").json()["data"]}


def test_unknown_model_is_404_listing_valid_names(proxy: Proxy):
    with pytest.raises(openai.NotFoundError) as raised:
        client(proxy).chat.completions.create(model="gpt-9", messages=MESSAGES)
    error = raised.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    for name in ("auto", "router-random-0.5", STRONG_MODEL, WEAK_MODEL):
        assert name in error["message"]
    with pytest.raises(openai.BadRequestError) as raised:  # no line break after a threshold either
        client(proxy).chat.completions.create(model="router-random-0.5\n", messages=MESSAGES)
    assert raised.value.body["code"] == "invalid_threshold"


def test_models_endpoint_lists_routers_aliases_and_upstreams(proxy: Proxy):
    listed = client(proxy).models.list().data
    assert {"auto", "router-random-0.5", STRONG_MODEL, WEAK_MODEL} <= {model.id for model in listed}
    assert all(isinstance(model.created, int) and model.created > 1_700_000_000 for model in listed)


def test_every_gateway_process_gives_a_model_the_same_created(proxy: Proxy, strong, weak, tmp_path):
    """Workers and replicas of one install list their models alike: ``created`` is when routegate
    was installed, not when the answering process began."""
    listed = {model.id: model.created for model in client(proxy).models.list().data}
    time.sleep(1.1)  # a process started a second later
    with running_proxy(proxy_env(strong, weak), tmp_path) as later:
        assert {model.id: model.created for model in client(later).models.list().data} == listed


def test_health_and_ready(proxy: Proxy):
    assert httpx.get(f"{proxy.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{proxy.url}/ready").json() == {"status": "ready", "router": "random"}


def test_upstream_client_error_is_relayed(proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream):
    strong.behaviour.fail_statuses = [400]
    with pytest.raises(openai.BadRequestError) as raised:
        client(proxy).chat.completions.create(model="router-random-0.0", messages=MESSAGES)
    assert raised.value.body["message"] == "strong failed"
    assert len(strong.received) == 1 and not weak.received, "a 4xx is neither retried nor sent to the other tier"


def test_5xx_is_retried_then_falls_back_to_the_other_tier(proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream):
    strong.behaviour.fail_statuses = [500, 502, 503]
    raw = client(proxy).chat.completions.with_raw_response.create(model="router-random-0.0", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "answer from weak"
    assert raw.headers["x-routegate-tier"] == "weak"
    assert raw.headers["x-routegate-fallback"] == "strong->weak:http_5xx"
    assert len(strong.received) == 3, "one try and two retries (ROUTEGATE_RETRIES=2)"
    assert weak.received[0].body["model"] == WEAK_MODEL
    assert weak.received[0].body["messages"] == MESSAGES


def test_retry_recovers_on_the_same_tier(proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream):
    strong.behaviour.fail_statuses = [503]
    raw = client(proxy).chat.completions.with_raw_response.create(model="router-random-0.0", messages=MESSAGES)
    assert raw.headers["x-routegate-tier"] == "strong"
    assert "x-routegate-fallback" not in raw.headers
    assert len(strong.received) == 2 and not weak.received


def test_stream_falls_back_before_its_first_byte(proxy: Proxy, strong: FakeUpstream, weak: FakeUpstream):
    strong.behaviour.fail_statuses = [502, 502, 502]
    with httpx.stream(
        "POST", f"{proxy.api}/chat/completions", json={"model": "router-random-0.0", "messages": MESSAGES, "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-routegate-tier"] == "weak"
        assert response.headers["x-routegate-fallback"] == "strong->weak:http_5xx"
        body = response.read()
    assert b"weak-0" in body and body.rstrip().endswith(b"data: [DONE]")
    assert len(strong.received) == 3 and len(weak.received) == 1
