"""Overload: at most ROUTEGATE_MAX_CONCURRENT_REQUESTS upstream requests at once; the rest wait in
a bounded queue for a bounded time, then get a 429 with Retry-After. Clients that stall mid-upload
are answered 408 after ROUTEGATE_BODY_TIMEOUT, and clients that trickle a request head (or bytes
outside a request) after ROUTEGATE_HEAD_TIMEOUT, instead of holding their connection for ever."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Proxy, proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream
from tests.metric_values import MetricDelta, wait_for
from tests.metrics_text import metric_sum

MESSAGES = [{"role": "user", "content": "Hello?"}]
OVERLOAD_SETTINGS = {"max_concurrent_requests": "2", "max_queued_requests": "2", "queue_timeout": "1", "body_timeout": "0.5"}
OVERLOAD_SETTINGS["head_timeout"] = "1"


@pytest.fixture(scope="module")
def small_proxy(strong: FakeUpstream, weak: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with running_proxy(proxy_env(strong, weak, **OVERLOAD_SETTINGS), tmp_path_factory.mktemp("overload")) as running:
        yield running


async def _concurrent_chats(proxy: Proxy, count: int) -> list[object]:
    client = openai.AsyncOpenAI(base_url=proxy.api, api_key="unused", max_retries=0, timeout=30)
    async with client:
        calls = [client.chat.completions.create(model="router-random-0", messages=MESSAGES) for _ in range(count)]
        return await asyncio.gather(*calls, return_exceptions=True)


def test_every_refusal_reason_is_a_series_before_its_first_refusal(small_proxy: Proxy) -> None:
    """A counter series that first appears with its first increment loses that increment in
    ``rate()``/``increase()``: a process's first refusal of each kind must count on the dashboard."""
    from prometheus_client.parser import text_string_to_metric_families

    from server.metrics import REJECTED_REASONS, UNSCORED_REASONS

    series = {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(small_proxy.metrics())
        for sample in family.samples
    }
    for reason in REJECTED_REASONS:
        assert ("routegate_requests_rejected_total", (("reason", reason),)) in series
    routers = {dict(labels)["router"] for name, labels in series if name == "routegate_routing_duration_seconds_count"}
    assert routers  # the routers the gateway serves
    for router in routers:
        for reason in UNSCORED_REASONS:
            assert ("routegate_scoring_overload_total", (("reason", reason), ("router", router))) in series


def test_requests_past_the_cap_and_the_queue_get_429(small_proxy: Proxy, strong: FakeUpstream) -> None:
    strong.behaviour.delay = 3.0  # both slots stay busy well past the 1 s queue wait
    delta = MetricDelta(small_proxy.metrics)
    results = asyncio.run(_concurrent_chats(small_proxy, 6))
    delta.after()
    answered = [result for result in results if isinstance(result, openai.types.chat.ChatCompletion)]
    refused = [result for result in results if isinstance(result, openai.RateLimitError)]
    assert len(answered) == 2 and len(refused) == 4, results
    for error in refused:
        assert error.response.headers["retry-after"] == "1"
        assert error.body["code"] == "overloaded" and error.body["type"] == "requests"
    assert len(strong.received) == 2 and strong.max_in_flight == 2
    assert delta("routegate_requests_rejected_total", reason="queue_full") == 2  # the queue holds two ...
    assert delta("routegate_requests_rejected_total", reason="queue_timeout") == 2  # ... who wait 1 s in vain
    assert delta("routegate_requests_total", status="429") == 4


def test_one_client_key_cannot_take_every_slot_and_queue_place(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """With two client keys and 4 slots, 4 queue places: the busy key holds 2 slots and waits with
    2 places, the rest of its requests refused at once; the other key is served at once. Before,
    the busy key's 8 requests took all 8 and the other key got 429."""
    settings = {**OVERLOAD_SETTINGS, "max_concurrent_requests": "4", "max_queued_requests": "4"}
    keys = ["busy-client-key-0123456789", "quiet-client-key-0123456789"]
    strong.behaviour.delay = 3.0  # the busy key's slots stay taken past its queue wait (1 s)

    async def both(proxy: Proxy) -> tuple[list[object], object]:
        busy = openai.AsyncOpenAI(base_url=proxy.api, api_key=keys[0], max_retries=0, timeout=30)
        quiet = openai.AsyncOpenAI(base_url=proxy.api, api_key=keys[1], max_retries=0, timeout=30)
        async with busy, quiet:
            flood = [
                asyncio.ensure_future(busy.chat.completions.create(model="router-random-0", messages=MESSAGES)) for _ in range(8)
            ]
            await asyncio.sleep(0.5)  # the flood is in
            started = time.monotonic()
            answer = await quiet.chat.completions.create(model="router-random-0", messages=MESSAGES)
            assert time.monotonic() - started < 5.0
            return list(await asyncio.gather(*flood, return_exceptions=True)), answer

    env = proxy_env(strong, weak, api_keys=json.dumps(keys), **settings)
    with running_proxy(env, tmp_path) as proxy:
        flood, answer = asyncio.run(both(proxy))
    assert isinstance(answer, openai.types.chat.ChatCompletion)
    answered = [result for result in flood if isinstance(result, openai.types.chat.ChatCompletion)]
    refused = [result for result in flood if isinstance(result, openai.RateLimitError)]
    assert len(answered) == 2 and len(refused) == 6, flood
    assert sum("this client key's share" in error.body["message"] for error in refused) == 4  # the 2 queued timed out


def test_a_short_wait_in_the_queue_is_served(small_proxy: Proxy, strong: FakeUpstream) -> None:
    strong.behaviour.delay = 0.3  # long enough for two requests to overlap; a slot frees up well inside the 1 s queue wait
    delta = MetricDelta(small_proxy.metrics)
    results = asyncio.run(_concurrent_chats(small_proxy, 3))
    delta.after()
    assert all(isinstance(result, openai.types.chat.ChatCompletion) for result in results), results
    assert strong.max_in_flight == 2
    assert delta("routegate_requests_rejected_total") == 0


def test_open_streams_hold_their_slots_until_they_end(small_proxy: Proxy, strong: FakeUpstream) -> None:
    strong.behaviour.chunks, strong.behaviour.chunk_delay = 10_000, 0.05
    request = {"model": "router-random-0", "messages": MESSAGES, "stream": True}
    with httpx.Client(base_url=small_proxy.api, timeout=10) as streams, ExitStack() as open_streams:
        readers = []  # kept alive: dropping a reader closes its connection
        for _ in range(2):
            response = open_streams.enter_context(streams.stream("POST", "/chat/completions", json=request))
            readers.append(response.iter_raw())
            assert next(readers[-1]).startswith(b"data: ")
        assert metric_sum(small_proxy.metrics(), "routegate_upstream_requests_active") == 2
        refused = httpx.post(f"{small_proxy.api}/chat/completions", json={**request, "stream": False}, timeout=10)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "overloaded"
    # The clients left: their streams end and give their slots back.
    deadline = time.monotonic() + 5
    while metric_sum(small_proxy.metrics(), "routegate_upstream_requests_active") and time.monotonic() < deadline:
        time.sleep(0.05)
    answered = httpx.post(f"{small_proxy.api}/chat/completions", json={**request, "stream": False}, timeout=10)
    assert answered.status_code == 200


def test_a_client_leaving_mid_upload_is_counted_as_gone_without_a_traceback(small_proxy: Proxy, strong: FakeUpstream) -> None:
    delta = MetricDelta(small_proxy.metrics)
    port = int(small_proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as leaving:
        leaving.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: routegate\r\ncontent-type: application/json\r\n"
            b'content-length: 1000\r\n\r\n{"model": '
        )
    assert wait_for(lambda: delta.after()("routegate_requests_total", status="499") == 1)
    assert "Traceback" not in small_proxy.log() and "unhandled error" not in small_proxy.log()
    assert not strong.received


def test_a_client_stalling_mid_body_gets_408(small_proxy: Proxy, strong: FakeUpstream) -> None:
    port = int(small_proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        stalled.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: routegate\r\ncontent-type: application/json\r\n"
            b'content-length: 1000\r\n\r\n{"model": '
        )
        answer = b""
        while b"}}" not in answer:  # the whole error body, ROUTEGATE_BODY_TIMEOUT=0.5 later
            received = stalled.recv(65536)
            if not received:
                break
            answer += received
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code": "request_timeout"' in answer
    assert not strong.received
    assert metric_sum(small_proxy.metrics(), "routegate_requests_in_flight") == 0


def _read_until_closed(connection: socket.socket) -> bytes:
    answer = b""
    while received := connection.recv(65536):  # the socket's own timeout fails a connection left open
        answer += received
    return answer


def test_a_client_trickling_its_request_head_gets_408_and_a_silent_one_is_closed(small_proxy: Proxy) -> None:
    delta = MetricDelta(small_proxy.metrics)
    port = int(small_proxy.url.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=15) as trickling,
        socket.create_connection(("127.0.0.1", port), timeout=15) as silent,
    ):
        trickling.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: routegate\r\n")
        trickling.settimeout(0.2)
        answer = b""
        for _ in range(75):  # a header byte every 0.2 s for up to 15 s; the deadline is 1 s from the first byte
            try:
                trickling.sendall(b"x")
                answer += trickling.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer.endswith(b"}}"):
                break
        silent_answer = _read_until_closed(silent)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code": "request_timeout"' in answer and b"connection: close" in answer
    assert silent_answer == b""
    assert delta.after()("routegate_http_refused_total", reason="head_timeout") == 1  # the trickling one; silence is no head


def test_bytes_trickling_after_an_answer_do_not_hold_the_connection(small_proxy: Proxy) -> None:
    port = int(small_proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        # answered without its body being read; the client then sends that body a byte at a time
        connection.sendall(b"GET /v1/models HTTP/1.1\r\nhost: routegate\r\ncontent-length: 100000\r\n\r\n")
        connection.settimeout(0.2)
        received = b""
        closed = False
        for _ in range(75):
            try:
                connection.sendall(b"x")
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")
    assert closed


def test_a_pipelined_head_waits_for_the_answer_before_it(small_proxy: Proxy, strong: FakeUpstream) -> None:
    strong.behaviour.delay = 2.5  # the answer takes longer than the 1 s head deadline
    port = int(small_proxy.url.rsplit(":", 1)[1])
    body = b'{"model": "router-random-0", "messages": [{"role": "user", "content": "Hello?"}]}'
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: routegate\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body + b"GET /v1/models HTTP/1.1\r\n"
        )
        answer = _read_until_closed(connection)
    first, _, second = answer.partition(b"HTTP/1.1 408 ")
    assert first.startswith(b"HTTP/1.1 200 ") and b'"answer from strong"' in first
    assert b'"code": "request_timeout"' in second
    assert len(strong.received) == 1


def test_bytes_that_are_not_http_behind_a_stream_do_not_garble_it(small_proxy: Proxy, strong: FakeUpstream) -> None:
    strong.behaviour.chunks, strong.behaviour.chunk_delay = 40, 0.05
    port = int(small_proxy.url.rsplit(":", 1)[1])
    body = b'{"model": "router-random-0", "stream": true, "messages": [{"role": "user", "content": "Hello?"}]}'
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: routegate\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        answer = connection.recv(65536)
        while b"data: " not in answer:  # the stream has begun
            answer += connection.recv(65536)
        connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer += _read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b"HTTP/1.1 ") == 1  # no 400 status line written into the stream
