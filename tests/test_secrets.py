"""Upstream and client keys never leave the process: not in its debug log, /metrics, error bodies,
response headers, /v1/models or the OpenAPI document, whatever path a request takes."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import STRONG_KEY, STRONG_MODEL, WEAK_KEY, proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream

CLIENT_KEYS = ["rg-client-key-alpha-5f1c2e9a7b", "rg-client-key-beta-0d4e8c3b16"]
SECRETS = [STRONG_KEY, WEAK_KEY, *CLIENT_KEYS]
MESSAGES = [{"role": "user", "content": "Hello?"}]
WINDOW = 10


def dump(response: httpx.Response) -> str:
    """Everything a client saw of one response: status line, headers and body."""
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())
    return f"{response.status_code}\n{headers}\n{response.text}"


def test_keys_appear_nowhere(strong: FakeUpstream, weak: FakeUpstream, tmp_path: pytest.TempPathFactory) -> None:
    env = proxy_env(strong, weak, log_level="debug", api_keys=json.dumps(CLIENT_KEYS), retries="1")
    seen: list[str] = []
    with running_proxy(env, tmp_path) as proxy:
        good = {"authorization": f"Bearer {CLIENT_KEYS[1]}"}

        def chat(headers: dict[str, str], **payload: object) -> httpx.Response:
            body = {"model": "router-random-0", "messages": MESSAGES, **payload}
            response = httpx.post(f"{proxy.api}/chat/completions", json=body, headers=headers, timeout=30)
            seen.append(dump(response))
            return response

        assert chat(good).status_code == 200
        assert chat(good, stream=True, stream_options={"include_usage": True}).status_code == 200
        for bad in ({}, {"authorization": f"Bearer {CLIENT_KEYS[0]}x"}, {"authorization": CLIENT_KEYS[0]}):
            refused = chat(bad)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"

        # Upstreams that quote the key they were sent: a relayed 4xx, and 5xx all the way to a 502.
        strong.behaviour.echo_key, strong.behaviour.fail_statuses = True, [400]
        relayed = chat(good)
        assert relayed.status_code == 400 and "[redacted]" in relayed.json()["error"]["message"]
        assert STRONG_KEY in strong.received[-1].headers["authorization"]  # the upstream did get its key
        for upstream in (strong, weak):
            upstream.behaviour.echo_key, upstream.behaviour.fail_statuses = True, [503] * 10
        assert chat(good).status_code == 502
        strong.reset()
        weak.reset()
        strong.behaviour.cut_after = 1
        assert chat(good, stream=True).status_code == 200  # cut mid-stream: a final error event
        # A gateway upstream's error events that quote the key: one after the answer began (relayed,
        # the key blanked out), and a first event saying 401 (routegate's key refused: the other tier answers).
        strong.reset()
        strong.behaviour.chunks, strong.behaviour.end_after_extra_event = 2, True
        strong.behaviour.extra_event = json.dumps({"error": {"message": f"quota spent for {STRONG_KEY}"}}).encode()
        quoted = chat(good, stream=True)
        assert quoted.status_code == 200 and "quota spent for [redacted]" in quoted.text
        strong.reset()  # the same error object as a whole answer in a 200, as gateway upstreams send it: sent as its 400
        strong.behaviour.answer_body = json.dumps(
            {"error": {"message": f"bad request for {STRONG_KEY}", "type": "invalid_request_error", "param": None, "code": None}}
        ).encode()
        in_200 = chat(good)
        assert in_200.status_code == 400 and in_200.json()["error"]["message"] == "bad request for [redacted]"
        strong.reset()
        refusal = json.dumps({"error": {"code": 401, "message": f"Incorrect API key provided: {STRONG_KEY}"}})
        strong.behaviour.stream_preamble = f"data: {refusal}\n\n".encode()
        strong.behaviour.cut_after, strong.behaviour.cut_mode = 0, "abort"
        fell_back = chat(good, stream=True)
        assert fell_back.status_code == 200 and "weak-0" in fell_back.text
        assert fell_back.headers["x-routegate-fallback"] == "strong->weak:http_auth"
        assert len(strong.received) == 1  # a refused key is not tried again

        # The SDK's own view, including /v1/models.
        sdk = openai.OpenAI(base_url=proxy.api, api_key=CLIENT_KEYS[0], max_retries=0)
        raw = sdk.chat.completions.with_raw_response.create(model=STRONG_MODEL, messages=MESSAGES)
        seen.append(f"{raw.headers}\n{raw.text}")
        seen.append(sdk.models.list().model_dump_json())
        for path in ("/v1/models", "/metrics", "/health", "/ready", "/openapi.json", "/nowhere"):
            seen.append(dump(httpx.get(f"{proxy.url}{path}", headers=good)))
        log = proxy.log()

    assert "DEBUG" in log  # the process really logged at debug level
    upstream_keys = {f"Bearer {STRONG_KEY}", f"Bearer {WEAK_KEY}"}
    assert all(received.headers["authorization"] in upstream_keys for received in [*strong.received, *weak.received])
    everything = "\n".join([log, *seen])
    for secret in SECRETS:  # not the key, nor any 10 characters of it
        for start in range(len(secret) - WINDOW + 1):
            assert secret[start : start + WINDOW] not in everything, f"part of a key leaked: {secret[:6]}..."


def test_a_short_key_that_is_a_word_is_blanked_out_of_errors_not_answers(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: pytest.TempPathFactory
) -> None:
    """Local servers take any key, and the docs' own is ``ollama``: an answer about ollama arrives
    as sent, whole and streamed, while an error that quotes the key still has it blanked out."""
    text = "Install ollama, then run `ollama serve`."
    weak.behaviour.answer = text
    weak.behaviour.extra_event = json.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}}],
        }
    ).encode()
    with running_proxy(proxy_env(strong, weak, weak__api_key="ollama", retries="0", fallback="false"), tmp_path) as proxy:
        sdk = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
        whole = sdk.chat.completions.create(model="router-random-1", messages=MESSAGES)
        streamed = "".join(
            choice.delta.content or ""
            for chunk in sdk.chat.completions.create(model="router-random-1", messages=MESSAGES, stream=True)
            for choice in chunk.choices
        )
        # an answer event over 64 KiB passes on in pieces, as it is
        weak.behaviour.extra_event = json.dumps(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": "y" * 200_000 + text}}],
            }
        ).encode()
        large = httpx.post(
            f"{proxy.api}/chat/completions", json={"model": "router-random-1", "messages": MESSAGES, "stream": True}, timeout=30
        )
        # an error event over 64 KiB passes on in pieces, only the first of which says "error"
        weak.behaviour.extra_event = json.dumps({"error": {"message": "x" * 200_000 + " bad key ollama"}}).encode()
        oversized = httpx.post(
            f"{proxy.api}/chat/completions", json={"model": "router-random-1", "messages": MESSAGES, "stream": True}, timeout=30
        )
        weak.behaviour.echo_key, weak.behaviour.fail_statuses = True, [400]
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(model="router-random-1", messages=MESSAGES)
    assert whole.choices[0].message.content == text
    assert text in streamed
    assert refused.value.body["message"] == "weak failed for Bearer [redacted]"
    assert "bad key [redacted]" in oversized.text and "ollama" not in oversized.text
    assert text in large.text


def test_a_client_cannot_tell_from_the_score_cache_what_another_client_sent(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: pytest.TempPathFactory
) -> None:
    """With client keys, scores are cached per client: a second client's guess at a first client's
    prompt is scored anew (no hit in the metrics, no time saved), the first client's repeat is a hit."""
    from tests.conftest import running_proxy as started
    from tests.metrics_text import metric_sum

    (tmp_path / "checkpoints" / "standin").mkdir(parents=True)
    env = proxy_env(
        strong, weak, router="standin", checkpoint_dir=str(tmp_path / "checkpoints"), api_keys=json.dumps(CLIENT_KEYS)
    )
    secret = [{"role": "user", "content": "Our Q3 layoff list: Alice, Bob"}]
    with started(env, tmp_path, module="tests.standin_router") as proxy:

        def hits_after(key: str) -> float:
            sdk = openai.OpenAI(base_url=proxy.api, api_key=key, max_retries=0)
            sdk.chat.completions.create(model="router-standin-0.5", messages=secret)
            scraped = httpx.get(f"{proxy.url}/metrics", headers={"authorization": f"Bearer {key}"}).text
            return metric_sum(scraped, "routegate_score_cache_lookups_total", result="hit")

        assert [hits_after(CLIENT_KEYS[0]), hits_after(CLIENT_KEYS[1]), hits_after(CLIENT_KEYS[0])] == [0, 0, 1]
