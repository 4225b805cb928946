"""Request bodies are read and parsed before admission and kept until their request is answered, so
ROUTEGATE_MAX_PENDING_BODY_BYTES bounds how many bytes of them a process holds at once, counted as
they arrive: a request whose body does not fit gets the 429 ``overloaded`` of a full queue.
Clients that upload slowly, or send many large requests, cannot make the gateway hold unbounded
memory, and clients that only promise large bodies cannot lock others out."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.conftest import Proxy, proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream
from tests.metric_values import MetricDelta, wait_for
from tests.metrics_text import metric_sum

BODY_LIMIT = 4096
SETTINGS = {
    "max_body_bytes": str(BODY_LIMIT),
    "max_pending_body_bytes": str(2 * BODY_LIMIT),
    "queue_timeout": "1.5",
    "body_timeout": "8",
}
REQUEST = {"model": "router-random-0", "messages": [{"role": "user", "content": "Hello?"}]}


@pytest.fixture(scope="module")
def budget_proxy(strong: FakeUpstream, weak: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with running_proxy(proxy_env(strong, weak, **SETTINGS), tmp_path_factory.mktemp("body-budget")) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_bodies_pending(budget_proxy: Proxy) -> Iterator[None]:
    """Each test starts and ends with the budget empty (the uploads it left closed)."""
    assert wait_for(lambda: _pending(budget_proxy) == 0)
    yield
    assert wait_for(lambda: _pending(budget_proxy) == 0)


def _full_body() -> bytes:
    """A valid chat request padded with spaces to exactly BODY_LIMIT bytes."""
    body = json.dumps(REQUEST).encode()
    return body + b" " * (BODY_LIMIT - len(body))


def _start_upload(proxy: Proxy, stack: ExitStack, sent: int, key: str | None = None) -> socket.socket:
    """A connection that declared a body of BODY_LIMIT bytes and sent only its first ``sent``."""
    port = int(proxy.url.rsplit(":", 1)[1])
    connection = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
    authorization = f"authorization: Bearer {key}\r\n" if key else ""
    connection.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: routegate\r\ncontent-type: application/json\r\n"
        + f"{authorization}content-length: {BODY_LIMIT}\r\n\r\n".encode()
        + _full_body()[:sent]
    )
    return connection


def _finish_upload(connection: socket.socket, sent: int) -> bytes:
    """Send the rest of the body; the status line and headers of the answer."""
    connection.sendall(_full_body()[sent:])
    answer = b""
    while b"\r\n\r\n" not in answer:
        received = connection.recv(65536)
        if not received:
            break
        answer += received
    return answer


def _pending(proxy: Proxy) -> float:
    return metric_sum(proxy.metrics(), "routegate_request_body_bytes_pending")


def test_a_body_past_the_budget_gets_429_until_bytes_are_given_back(budget_proxy: Proxy, strong: FakeUpstream) -> None:
    delta = MetricDelta(budget_proxy.metrics)
    sent = BODY_LIMIT - 100  # two uploads this far along leave 200 bytes of the budget
    with ExitStack() as uploads:
        first, _second = (_start_upload(budget_proxy, uploads, sent) for _ in range(2))
        assert wait_for(lambda: _pending(budget_proxy) == 2 * sent)
        refused = httpx.post(f"{budget_proxy.api}/chat/completions", json={**REQUEST, "user": "x" * 200}, timeout=30)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "overloaded" and refused.json()["error"]["type"] == "requests"
        assert refused.headers["retry-after"] == "2"
        assert not strong.received
        assert _finish_upload(first, sent).startswith(b"HTTP/1.1 200 ")  # it fits: it had its bytes already
        answered = httpx.post(f"{budget_proxy.api}/chat/completions", json={**REQUEST, "user": "x" * 200}, timeout=30)
        assert answered.status_code == 200  # the finished upload gave its bytes back
    delta.after()
    assert delta("routegate_requests_rejected_total", reason="body_budget_full") == 1
    assert delta("routegate_requests_total", status="429") == 1
    assert [received.body["messages"] for received in strong.received] == [REQUEST["messages"]] * 2


def test_requests_being_answered_hold_their_bodies_until_they_end(budget_proxy: Proxy, strong: FakeUpstream) -> None:
    """Two full bodies at a slow upstream hold the whole budget: a third request waits for none of
    the memory they keep, it gets 429; once they are answered their bytes are given back."""
    strong.behaviour.delay = 2.0
    with ThreadPoolExecutor(2) as pool:
        slow = [
            pool.submit(httpx.post, f"{budget_proxy.api}/chat/completions", content=_full_body(), timeout=30) for _ in range(2)
        ]
        assert wait_for(lambda: len(strong.received) == 2)
        assert _pending(budget_proxy) == 2 * BODY_LIMIT
        refused = httpx.post(f"{budget_proxy.api}/chat/completions", json=REQUEST, timeout=30)
        answers = [future.result() for future in slow]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "overloaded"
    assert [answer.status_code for answer in answers] == [200, 200]
    assert wait_for(lambda: _pending(budget_proxy) == 0)
    strong.behaviour.delay = 0.0
    assert httpx.post(f"{budget_proxy.api}/chat/completions", json=REQUEST, timeout=30).status_code == 200


def test_a_chunked_body_past_the_budget_gets_429(budget_proxy: Proxy, strong: FakeUpstream) -> None:
    delta = MetricDelta(budget_proxy.metrics)
    with ExitStack() as uploads:
        for _ in range(2):
            _start_upload(budget_proxy, uploads, BODY_LIMIT - 1)
        assert wait_for(lambda: _pending(budget_proxy) == 2 * (BODY_LIMIT - 1))
        chunked = httpx.post(f"{budget_proxy.api}/chat/completions", content=iter([json.dumps(REQUEST).encode()]), timeout=30)
    assert chunked.status_code == 429 and chunked.json()["error"]["code"] == "overloaded"
    assert delta.after()("routegate_requests_rejected_total", reason="body_budget_full") == 1
    assert not strong.received


def test_promised_bodies_reserve_nothing(budget_proxy: Proxy, strong: FakeUpstream) -> None:
    with ExitStack() as uploads:
        for _ in range(8):  # eight times the budget declared, a byte of it sent
            _start_upload(budget_proxy, uploads, 1)
        assert wait_for(lambda: _pending(budget_proxy) == 8)
        answered = httpx.post(f"{budget_proxy.api}/chat/completions", content=_full_body(), timeout=30)
        chunked = httpx.post(f"{budget_proxy.api}/chat/completions", content=iter([json.dumps(REQUEST).encode()]), timeout=30)
    assert answered.status_code == 200 and chunked.status_code == 200
    assert len(strong.received) == 2


KEYS = ["rg-slow-uploader", "rg-other-client"]


def test_one_client_key_holds_at_most_half_of_the_budget(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """With several client keys, one key's slow uploads cannot take the whole budget: its own next
    body gets 429 past half of it, while another key's body is read and answered."""
    settings = {**SETTINGS, "max_pending_body_bytes": str(4 * BODY_LIMIT), "api_keys": json.dumps(KEYS)}
    with running_proxy(proxy_env(strong, weak, **settings), tmp_path) as proxy, ExitStack() as uploads:
        sent = BODY_LIMIT - 100  # two uploads this far along leave the key 200 bytes of its half
        for _ in range(2):
            _start_upload(proxy, uploads, sent, key=KEYS[0])
        assert wait_for(lambda: _pending(proxy) == 2 * sent)
        delta = MetricDelta(proxy.metrics)
        body = {**REQUEST, "user": "x" * 200}
        refused = httpx.post(f"{proxy.api}/chat/completions", json=body, headers={"authorization": f"Bearer {KEYS[0]}"})
        answered = httpx.post(f"{proxy.api}/chat/completions", json=body, headers={"authorization": f"Bearer {KEYS[1]}"})
        delta.after()
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "overloaded"
    assert "this client key's share of 8192 bytes" in refused.json()["error"]["message"]
    assert KEYS[0] not in refused.text
    assert answered.status_code == 200
    assert delta("routegate_requests_rejected_total", reason="body_budget_full") == 1
    assert len(strong.received) == 1


@pytest.mark.parametrize(
    ("declared", "code"),
    [
        ("0" * 5000 + "5", b'"code": "missing_required_parameter"'),  # five bytes: the body "{}   ", without a model
        ("9" * 5000, b'"code": "invalid_http"'),  # beyond what the HTTP parser reads as a number
    ],
)
def test_a_content_length_of_thousands_of_digits_is_not_a_500(budget_proxy: Proxy, declared: str, code: bytes) -> None:
    port = int(budget_proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: routegate\r\ncontent-type: application/json\r\n"
            + f"content-length: {declared}\r\n\r\n".encode()
            + b"{}   "
        )
        answer = _whole_answer(connection)
    assert answer.split(b" ", 2)[1] == b"400" and code in answer, answer
    assert b"Traceback" not in answer and "Traceback" not in budget_proxy.log()


def _whole_answer(connection: socket.socket) -> bytes:
    """An HTTP answer's head and its whole body, which may arrive in more than one segment."""
    answer = connection.recv(65536)
    while b"\r\n\r\n" not in answer and (more := connection.recv(65536)):
        answer += more
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(body) < length and (more := connection.recv(65536)):
        body += more
    return head + b"\r\n\r\n" + body
