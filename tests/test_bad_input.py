"""Bad input: every malformed, mistyped, oversized or odd request gets a 4xx OpenAI error or is
passed through as the OpenAI API would accept it; never a 500, never a hang."""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from server.chat_request import FIELD_TYPES, MAX_CONTAINERS, MAX_MEMBERS, MAX_NESTING, RANGES
from tests.conftest import Proxy
from tests.fake_upstream import FakeUpstream
from tests.metrics_text import metric_sum

MODEL = "router-random-0"
MESSAGES = [{"role": "user", "content": "Hello?"}]
MAX_BODY_BYTES = 10 * 1024 * 1024  # the default ROUTEGATE_MAX_BODY_BYTES
WRONG_VALUES = ["text", 1.5, 7, True, [1], {"a": 1}]


def post(proxy: Proxy, content: bytes | Iterator[bytes], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{proxy.api}/chat/completions",
        content=content,
        headers={"content-type": "application/json", **headers},
        timeout=30,
    )


def post_json(proxy: Proxy, payload: object) -> httpx.Response:
    return post(proxy, json.dumps(payload).encode())


def openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return error


def wrong_value(accepted: tuple[type, ...]) -> object:
    """A value of a type the field does not accept (a bool is not a number)."""
    for value in WRONG_VALUES:
        if isinstance(value, bool):
            if bool not in accepted:
                return value
        elif not isinstance(value, accepted):
            return value
    raise AssertionError(accepted)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b'{"model": "router-random-0", "messages": [', "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b'{"model": "router-random-0", "messages": [{"role": "user", "content": "caf\xe9"}]}', "invalid_json"),
        (b'{"model": "router-random-0", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_json"),
        (b'{"model": "router-random-0", "messages": [{"role": "user", "content": "hi \xed\xa0\x80"}]}', "invalid_json"),
        (b'{"model": "router-random-0", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "invalid_json"),
        (
            b'{"model": "router-random-0", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 1e999}}',
            "invalid_json",
        ),
        (
            b'{"model": "router-random-0", "messages": [{"role": "user", "content": "x"}], "seed": 1' + b"0" * 5000 + b"}",
            "invalid_json",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b"[]", "invalid_type"),
        (b'"a string"', "invalid_type"),
        (b"null", "invalid_type"),
    ],
    ids=[
        "empty",
        "truncated",
        "binary",
        "invalid-utf8",
        "lone-surrogate",
        "lone-surrogate-bytes",
        "nan",
        "overflowing-number",
        "huge-int",
        "deep-nesting",
        "array",
        "string",
        "null",
    ],
)
def test_unparseable_bodies_are_400(proxy: Proxy, strong: FakeUpstream, body: bytes, code: str) -> None:
    error = openai_error(post(proxy, body), 400)
    assert error["code"] == code
    assert not strong.received


@pytest.mark.parametrize("name", sorted(FIELD_TYPES))
def test_every_checked_field_refuses_a_wrong_type(proxy: Proxy, strong: FakeUpstream, name: str) -> None:
    accepted, _ = FIELD_TYPES[name]
    error = openai_error(post_json(proxy, {"model": MODEL, "messages": MESSAGES, name: wrong_value(accepted)}), 400)
    assert error["param"] == name and error["code"] == "invalid_type"
    assert not strong.received


@pytest.mark.parametrize("include_usage", [1, "true", [True]])
def test_a_stream_options_include_usage_that_is_not_a_boolean_is_refused(
    proxy: Proxy, strong: FakeUpstream, include_usage: object
) -> None:
    """Not read as false: the usage chunk the client asked for would be taken out of its stream."""
    payload = {"model": MODEL, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": include_usage}}
    error = openai_error(post_json(proxy, payload), 400)
    assert error["param"] == "stream_options.include_usage" and error["code"] == "invalid_type"
    assert not strong.received


#: the ranges of OpenAI's Chat Completions API reference, written out so that a loosened check fails
OPENAI_RANGES = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
    "n": (1, 128),
    "top_logprobs": (0, 20),
    "max_tokens": (1, float("inf")),
    "max_completion_tokens": (1, float("inf")),
}


def test_the_checked_ranges_are_openais() -> None:
    assert RANGES == OPENAI_RANGES


@pytest.mark.parametrize(
    ("name", "outside"),
    [(name, RANGES[name][0] - 1) for name in sorted(RANGES)]
    + [(name, RANGES[name][1] + 1) for name in sorted(RANGES) if RANGES[name][1] != float("inf")],
)
def test_every_range_is_checked_on_both_sides(proxy: Proxy, name: str, outside: float) -> None:
    value = int(outside) if int in FIELD_TYPES[name][0] and float not in FIELD_TYPES[name][0] else outside
    error = openai_error(post_json(proxy, {"model": MODEL, "messages": MESSAGES, name: value}), 400)
    assert error["param"] == name and error["code"] == "invalid_value"


@pytest.mark.parametrize(
    ("name", "edge"),
    [(name, RANGES[name][0]) for name in sorted(RANGES)]
    + [(name, RANGES[name][1]) for name in sorted(RANGES) if RANGES[name][1] != float("inf")],
)
def test_every_range_accepts_its_ends(proxy: Proxy, strong: FakeUpstream, name: str, edge: float) -> None:
    value = int(edge) if int in FIELD_TYPES[name][0] and float not in FIELD_TYPES[name][0] else edge
    answer = post_json(proxy, {"model": MODEL, "messages": MESSAGES, name: value})
    assert answer.status_code == 200, answer.text
    assert strong.received[-1].body[name] == value  # relayed as sent


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": 5, "messages": MESSAGES}, "model"),
        ({"model": "", "messages": MESSAGES}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": "Hello?"}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": ["Hello?"]}, "messages[0]"),
        ({"model": MODEL, "messages": [{"content": "Hello?"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": 5, "content": "Hello?"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "Hello?"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": MODEL, "messages": [{"role": "user", "content": ["Hello?"]}]}, "messages[0].content"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content"),
        ({"model": MODEL, "messages": MESSAGES, "tools": ["get_weather"]}, "tools[0]"),
        ({"model": "router-nosuch-0.5", "messages": MESSAGES}, "model"),
        ({"model": "router-random-1.5", "messages": MESSAGES}, "model"),
    ],
)
def test_wrong_messages_and_models_are_400(proxy: Proxy, strong: FakeUpstream, payload: dict, param: str) -> None:
    assert openai_error(post_json(proxy, payload), 400)["param"] == param
    assert not strong.received


def test_unknown_model_is_404(proxy: Proxy) -> None:
    client = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-9" + "x" * 10_000, messages=MESSAGES)
    assert raised.value.body["code"] == "model_not_found"
    assert len(raised.value.body["message"]) < 1000  # the name is not echoed whole


def test_body_over_the_limit_is_413_declared_or_streamed(proxy: Proxy, strong: FakeUpstream) -> None:
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1)}]}).encode()
    assert openai_error(post(proxy, big), 413)["code"] == "request_too_large"
    chunked = (big[start : start + 65536] for start in range(0, len(big), 65536))  # no content-length
    assert openai_error(post(proxy, chunked), 413)["code"] == "request_too_large"
    assert not strong.received


def test_ten_megabyte_string_under_the_limit_passes_through(proxy: Proxy, strong: FakeUpstream) -> None:
    content = "y" * 10_000_000
    response = post_json(proxy, {"model": MODEL, "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200
    assert strong.received[0].body["messages"][0]["content"] == content


def test_thousands_of_messages_pass_through(proxy: Proxy, strong: FakeUpstream) -> None:
    messages = [{"role": ("user", "assistant")[index % 2], "content": f"turn {index}"} for index in range(2001)]
    client = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
    client.chat.completions.create(model=MODEL, messages=messages)
    assert strong.received[0].body["messages"] == messages


def test_image_parts_and_deep_vendor_fields_pass_through_untouched(proxy: Proxy, strong: FakeUpstream) -> None:
    deep: object = "bottom"
    for _ in range(200):
        deep = {"down": [deep]}
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ]
    payload = {"model": MODEL, "messages": [{"role": "user", "content": content}], "vendor_extension": deep}
    assert post_json(proxy, payload).status_code == 200
    received = strong.received[0].body
    assert received["messages"][0]["content"] == content and received["vendor_extension"] == deep


@pytest.mark.parametrize("stream", [False, True])
def test_nesting_past_the_limit_is_a_400_at_every_depth_python_could_still_decode(
    proxy: Proxy, strong: FakeUpstream, stream: bool
) -> None:
    statuses = {}
    for depth in (MAX_NESTING - 1, MAX_NESTING, *range(MAX_NESTING + 1, 1100, 7)):  # levels, the body's object included
        nested = b"[" * (depth - 1) + b"]" * (depth - 1)
        body = b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "stream": %s, "vendor_extension": %s}' % (
            MODEL.encode(),
            b"true" if stream else b"false",
            nested,
        )
        statuses[depth] = post(proxy, body).status_code
    assert statuses.pop(MAX_NESTING - 1) == 200 and statuses.pop(MAX_NESTING) == 200
    assert set(statuses.values()) == {400}, statuses  # never a 500 from re-encoding it for the upstream
    assert len(strong.received) == 2


def _with_containers(count: int, text: str = "x") -> bytes:
    """A chat request of ``count`` objects and arrays: its own object, messages and message, and empty arrays."""
    head = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()[:-1]
    return head + b', "vendor_extension": [' + b",".join([b"[]"] * (count - 4)) + b"]}"


def _with_members(count: int, text: str = "x") -> bytes:
    """A chat request of ``count`` members after each object's or array's first: its own three
    (model|messages, role|content, messages|metadata) and those of one flat object of keys."""
    head = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()[:-1]
    return head + b', "metadata": {' + b",".join(b'"k%d":%d' % (index, index) for index in range(count - 2)) + b"}}"


@pytest.mark.parametrize(
    ("build", "limit", "said", "text"),
    [
        (_with_containers, MAX_CONTAINERS, f"more than {MAX_CONTAINERS} objects and arrays", "[{" * MAX_CONTAINERS),
        (_with_members, MAX_MEMBERS, f"more than {MAX_MEMBERS} members", ", ".join(["word"] * (MAX_MEMBERS + 1))),
    ],
    ids=["containers", "members"],
)
def test_a_body_past_a_structure_limit_is_a_400_and_text_does_not_count(
    proxy: Proxy, strong: FakeUpstream, build: Callable[..., bytes], limit: int, said: str, text: str
) -> None:
    """Objects and arrays, and their members (one flat object of a million keys opens no more
    containers than a chat message, but takes seconds to decode and re-encode), are counted
    before decoding; brackets and commas inside strings are text."""
    at_the_limit = post(proxy, build(limit))
    past_it = post(proxy, build(limit + 1))
    in_text = post(proxy, build(5, text))
    assert at_the_limit.status_code == 200
    error = openai_error(past_it, 400)
    assert error["code"] == "invalid_json" and said in error["message"]
    assert in_text.status_code == 200
    assert len(strong.received) == 2 and strong.received[1].body["messages"][0]["content"] == text


def test_a_string_that_never_closes_in_a_body_of_many_brackets_is_refused_not_a_hang(proxy: Proxy) -> None:
    """Past the bracket count, strings are taken out before brackets are counted again; a string of
    escaped quotes that never closes (half a megabyte) is read once, not once per quote."""
    opening = b"[" * (MAX_CONTAINERS + 1) + b'"'
    for tail in (b'\\"' * 200_000, b'\\"' * 200_000 + b"\\", b'\\\n"' * 150_000):
        error = openai_error(post(proxy, opening + tail), 400)
        assert error["code"] == "invalid_json"
    assert httpx.get(f"{proxy.url}/health", timeout=5).status_code == 200


def test_a_compressed_body_is_a_415_not_malformed_json(proxy: Proxy, strong: FakeUpstream) -> None:
    body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
    gzipped = openai_error(post(proxy, gzip.compress(body), **{"content-encoding": "gzip"}), 415)
    assert gzipped["code"] == "unsupported_content_encoding" and "'gzip'" in gzipped["message"]
    assert not strong.received
    assert post(proxy, body, **{"content-encoding": "identity"}).status_code == 200


def test_unicode_passes_through(proxy: Proxy, strong: FakeUpstream) -> None:
    text = "emoji \U0001f600 (sent as a surrogate pair), RTL \u05e9\u05dc\u05d5\u05dd, NUL \u0000, CJK \u4f60\u597d"
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()  # ASCII escapes
    assert post(proxy, body).status_code == 200
    assert strong.received[0].body["messages"][0]["content"] == text


def test_oversized_headers_are_431(proxy: Proxy, strong: FakeUpstream) -> None:
    before = metric_sum(proxy.metrics(), "routegate_http_refused_total", reason="headers_too_large")
    body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
    one_huge = post(proxy, body, **{"x-padding": "a" * 200_000})
    assert openai_error(one_huge, 431)["code"] == "headers_too_large"
    many = httpx.post(
        f"{proxy.api}/chat/completions", content=body, headers={f"x-h{index}": "v" * 20 for index in range(5000)}, timeout=30
    )
    assert openai_error(many, 431)["code"] == "headers_too_large"
    assert not strong.received
    assert metric_sum(proxy.metrics(), "routegate_http_refused_total", reason="headers_too_large") == before + 2
    # Headers under the limit are fine, and an overlong request id is replaced, not echoed.
    ok = post(proxy, body, **{"x-padding": "a" * 8_000, "x-request-id": "r" * 1000})
    assert ok.status_code == 200 and len(ok.headers["x-request-id"]) == 32
    # so is one that is not ASCII (HTTP clients, shadow and judge requests among them, send ASCII only)
    latin = httpx.post(
        f"{proxy.api}/chat/completions", content=body, headers={"content-type": "application/json", "x-request-id": b"caf\xe9"}
    )
    assert latin.status_code == 200 and len(latin.headers["x-request-id"]) == 32
    assert strong.received[-1].headers["x-request-id"] == latin.headers["x-request-id"]
    # and one with spaces, which would forge fields of the log line (request_id=abc status=200 ...)
    forged = post(proxy, body, **{"x-request-id": "abc router=mf status=200"})
    assert forged.status_code == 200 and len(forged.headers["x-request-id"]) == 32


def test_a_pipelined_request_behind_a_large_body_is_not_taken_for_oversized_headers(proxy: Proxy) -> None:
    """Bytes of the request before it (its body) arrive in the same read as the start of its head:
    they are not its head's."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 100_000}]}).encode()
    first = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    first += b"content-length: %d\r\n\r\n" % len(body) + body
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(first + b"GET /health HTTP/1.1\r\nhost: x\r\n")  # the second head, not yet whole
        time.sleep(0.3)
        connection.sendall(b"connection: close\r\n\r\n")
        answer = b""
        while received := connection.recv(65536):
            answer += received
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200", b"200"]


def test_a_request_answered_when_its_connection_is_cut_for_pipelining_sees_its_client_gone(
    proxy: Proxy, strong: FakeUpstream
) -> None:
    """The cut reaches the request being answered, not only the last one parsed behind it: it is
    counted as a client that left (499), keeps no books, and logs no traceback for a closed connection."""
    strong.behaviour.delay = 2.0
    before = proxy.metrics()
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}).encode()
    post = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(post + b"content-length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.5)  # at the upstream
        connection.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n" * 20)
        with contextlib.suppress(ConnectionResetError):
            while connection.recv(65536):
                pass

    def counted(name: str, **labels: str) -> float:
        return metric_sum(proxy.metrics(), name, **labels) - metric_sum(before, name, **labels)

    deadline = time.monotonic() + 10
    while counted("routegate_requests_total", status="499") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.5)  # past the upstream's answer, which nobody waits for any more
    assert counted("routegate_requests_total", status="499") == 1
    assert counted("routegate_requests_total", status="200") == 0
    assert counted("routegate_threshold_decisions_total") == 0
    assert "Exception in ASGI application" not in proxy.log()


def test_integers_too_long_to_be_parameters_are_refused_and_long_ones_pass_as_sent(proxy: Proxy, strong: FakeUpstream) -> None:
    """Python reads and writes an integer in time that grows with the square of its digits: a body
    of 4,000-digit integers held the event loop twelve times longer than a body of text its size."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    refused = httpx.post(f"{proxy.api}/chat/completions", json={**body, "metadata": {"n": int("9" * 101)}})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_json"
    kept = 10**99 + 7  # 100 digits: passed on exactly, as a vendor's field may need
    answered = httpx.post(f"{proxy.api}/chat/completions", json={**body, "seed": -(2**63), "vendor_id": kept})
    assert answered.status_code == 200
    assert strong.received[-1].body["vendor_id"] == kept and strong.received[-1].body["seed"] == -(2**63)


def test_a_connection_piling_up_pipelined_requests_is_cut(proxy: Proxy) -> None:
    """Each request waiting behind the one being answered holds its objects until its turn: a client
    sending hundreds at once (and reading nothing) would make the gateway hold tens of MB."""
    before = metric_sum(proxy.metrics(), "routegate_http_refused_total", reason="pipelined")
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n" * 500)
        answers = b""
        with contextlib.suppress(ConnectionResetError):
            while received := connection.recv(65536):
                answers += received
    assert answers.count(b"HTTP/1.1 200 ") < 100  # cut, not answered 500 times
    assert metric_sum(proxy.metrics(), "routegate_http_refused_total", reason="pipelined") == before + 1
    assert httpx.get(f"{proxy.url}/health").status_code == 200


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
        b"GET /v1/models/\xff HTTP/1.1\r\nhost: x\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
    ],
)
def test_requests_that_are_not_http_get_an_openai_error(proxy: Proxy, strong: FakeUpstream, head: bytes) -> None:
    before = metric_sum(proxy.metrics(), "routegate_http_refused_total", reason="invalid_http")
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(head)
        answer = b""
        while received := connection.recv(65536):
            answer += received
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in status
    assert json.loads(body)["error"]["code"] == "invalid_http"
    assert not strong.received
    # counted, not logged: a client sending garbage in a loop does not fill the log
    assert metric_sum(proxy.metrics(), "routegate_http_refused_total", reason="invalid_http") == before + 1
    assert "Invalid HTTP request received" not in proxy.log()


def _whole(answer: bytes) -> bool:
    """Whether ``answer`` holds a whole HTTP response with a content-length (the connection stays open)."""
    head, separator, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(separator) and length is not None and len(body) >= int(length[1])


@pytest.mark.parametrize(
    ("path", "upgrade"),
    [
        ("/health", b"h2c\r\nhttp2-settings: AAMAAABkAAQAAP__"),
        ("/v1/realtime", b"websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13"),
    ],
)
def test_requests_asking_to_upgrade_are_answered_as_http_and_not_logged(proxy: Proxy, path: str, upgrade: bytes) -> None:
    """No HTTP/2 and no WebSocket routes: a plain answer (an OpenAI-style 404 for a path that does
    not exist, not a bare 403), and no warning line per request."""
    port = int(proxy.url.rsplit(":", 1)[1])
    head = f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\n".encode() + b"upgrade: " + upgrade + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(head)
        answer = b""
        while not _whole(answer) and (received := connection.recv(65536)):
            answer += received
    status, _, body = answer.partition(b"\r\n\r\n")
    if path == "/health":
        assert status.startswith(b"HTTP/1.1 200 ")
    else:
        assert status.startswith(b"HTTP/1.1 404 ") and b"content-type: application/json" in status
        assert json.loads(body)["error"]["code"] == "not_found"
    assert "upgrade" not in proxy.log().lower()


def test_health_and_readiness_answer_head_as_load_balancers_check(proxy: Proxy) -> None:
    for path in ("/health", "/ready"):
        answer = httpx.head(f"{proxy.url}{path}", timeout=5)
        assert answer.status_code == 200 and answer.content == b""


def test_wrong_method_and_path_are_openai_errors(proxy: Proxy) -> None:
    assert openai_error(httpx.get(f"{proxy.api}/chat/completions"), 405)["code"] == "method_not_allowed"
    assert openai_error(httpx.post(f"{proxy.api}/completions", json={}), 404)["code"] == "not_found"
    # not a bare 307 to the path without its slash, which clients would follow without the body
    assert openai_error(httpx.post(f"{proxy.api}/chat/completions/", json={}), 404)["code"] == "not_found"


def test_an_endpoint_routegate_does_not_serve_is_named_with_those_it_serves(proxy: Proxy) -> None:
    """An SDK call to embeddings or the Responses API says what routegate serves instead."""
    client = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    message = raised.value.body["message"]  # type: ignore[index]
    assert "'/v1/embeddings'" in message and "POST /v1/chat/completions" in message
