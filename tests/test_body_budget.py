"""Request bodies are read and parsed before admission, so ROUTEGATE_MAX_PENDING_BODY_BYTES bounds
how many bytes of them a process holds at once: past it a request waits in line for up to
ROUTEGATE_QUEUE_TIMEOUT, then gets the 429 ``overloaded`` of a full queue, and a line of
ROUTEGATE_MAX_QUEUED_REQUESTS is refused at once. Clients that upload slowly cannot make the
gateway hold unbounded memory."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from tests.conftest import Proxy, proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream
from tests.metric_values import MetricDelta, wait_for
from tests.metrics_text import metric_sum

BODY_LIMIT = 4096
SETTINGS = {
    "max_body_bytes": str(BODY_LIMIT),
    "max_pending_body_bytes": str(2 * BODY_LIMIT),  # two bodies of the largest size
    "max_queued_requests": "1",
    "queue_timeout": "1.5",
    "body_timeout": "8",
}
REQUEST = {"model": "router-random-0", "messages": [{"role": "user", "content": "Hello?"}]}


@pytest.fixture(scope="module")
def budget_proxy(strong: FakeUpstream, weak: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with running_proxy(proxy_env(strong, weak, **SETTINGS), tmp_path_factory.mktemp("body-budget")) as running:
        yield running


def _full_body() -> bytes:
    """A valid chat request padded with spaces to exactly BODY_LIMIT bytes."""
    body = json.dumps(REQUEST).encode()
    return body + b" " * (BODY_LIMIT - len(body))


def _start_upload(proxy: Proxy, stack: ExitStack) -> socket.socket:
    """A connection that declared a body of BODY_LIMIT bytes and sent only its first byte."""
    port = int(proxy.url.rsplit(":", 1)[1])
    connection = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
    connection.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: routegate\r\ncontent-type: application/json\r\n"
        + f"content-length: {BODY_LIMIT}\r\n\r\n".encode()
        + _full_body()[:1]
    )
    return connection


def _finish_upload(connection: socket.socket) -> bytes:
    """Send the rest of the body; the status line and headers of the answer."""
    connection.sendall(_full_body()[1:])
    answer = b""
    while b"\r\n\r\n" not in answer:
        received = connection.recv(65536)
        if not received:
            break
        answer += received
    return answer


def _pending(proxy: Proxy) -> float:
    return metric_sum(proxy.metrics(), "routegate_request_body_bytes_pending")


def _post_in_background(proxy: Proxy, results: list[httpx.Response]) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: results.append(httpx.post(f"{proxy.api}/chat/completions", json=REQUEST, timeout=30)), daemon=True
    )
    thread.start()
    return thread


def test_bodies_past_the_budget_wait_in_a_bounded_line_then_get_429(budget_proxy: Proxy, strong: FakeUpstream) -> None:
    delta = MetricDelta(budget_proxy.metrics)
    with ExitStack() as uploads:
        for _ in range(2):
            _start_upload(budget_proxy, uploads)
        assert wait_for(lambda: _pending(budget_proxy) == 2 * BODY_LIMIT)
        waiting: list[httpx.Response] = []
        waiter = _post_in_background(budget_proxy, waiting)  # the one place in line
        assert wait_for(lambda: delta.after()("routegate_requests_in_flight") == 3)
        no_place = httpx.post(f"{budget_proxy.api}/chat/completions", json=REQUEST, timeout=30)
        assert no_place.status_code == 429
        assert no_place.json()["error"]["code"] == "overloaded" and no_place.headers["retry-after"] == "2"
        waiter.join(timeout=10)
        assert waiting[0].status_code == 429 and waiting[0].json()["error"]["type"] == "requests"
    delta.after()
    assert delta("routegate_requests_rejected_total", reason="body_queue_full") == 1
    assert delta("routegate_requests_rejected_total", reason="body_queue_timeout") == 1
    assert not strong.received  # neither the refused requests nor the stalled uploads reached an upstream
    assert wait_for(lambda: _pending(budget_proxy) == 0)  # the stalled clients left: their bytes are given back


def test_a_body_waiting_in_line_is_read_when_an_upload_finishes(budget_proxy: Proxy, strong: FakeUpstream) -> None:
    with ExitStack() as uploads:
        first, _second = (_start_upload(budget_proxy, uploads) for _ in range(2))
        assert wait_for(lambda: _pending(budget_proxy) == 2 * BODY_LIMIT)
        waiting: list[httpx.Response] = []
        waiter = _post_in_background(budget_proxy, waiting)
        assert wait_for(lambda: metric_sum(budget_proxy.metrics(), "routegate_requests_in_flight") == 3)
        assert _finish_upload(first).startswith(b"HTTP/1.1 200 ")
        waiter.join(timeout=10)
        assert waiting[0].status_code == 200, waiting[0].text
    assert len(strong.received) == 2
    assert strong.received[0].body["messages"] == REQUEST["messages"]


def test_a_chunked_body_past_the_budget_gets_429(budget_proxy: Proxy, strong: FakeUpstream) -> None:
    with ExitStack() as uploads:
        for _ in range(2):
            _start_upload(budget_proxy, uploads)
        assert wait_for(lambda: _pending(budget_proxy) == 2 * BODY_LIMIT)
        chunked = httpx.post(f"{budget_proxy.api}/chat/completions", content=iter([json.dumps(REQUEST).encode()]), timeout=30)
    assert chunked.status_code == 429 and chunked.json()["error"]["code"] == "overloaded"
    assert not strong.received
    assert wait_for(lambda: _pending(budget_proxy) == 0)
    answered = httpx.post(f"{budget_proxy.api}/chat/completions", content=iter([json.dumps(REQUEST).encode()]), timeout=30)
    assert answered.status_code == 200  # a chunked body that fits is read as before
