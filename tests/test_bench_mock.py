"""The benchmark's mock upstream speaks enough OpenAI for the official SDK: a completion and a stream;
the bare relay (``bench/asgi_floor.py``) passes both through unchanged."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from bench.mock_upstream import CONTENT, USAGE
from tests.conftest import REPO, stop_process
from tests.fake_upstream import free_port


def serve(script: str, *args: str) -> tuple[subprocess.Popen, int]:
    """Start ``bench/<script>`` on a free port; return it once the port accepts connections."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / script), "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    f"{script} did not start: {process.stderr.read().decode() if process.stderr else ''}"
                ) from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def mock_port() -> Iterator[int]:
    process, port = serve("mock_upstream.py")
    try:
        yield port
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def mock_client(mock_port: int) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"http://127.0.0.1:{mock_port}/v1", api_key="sk-bench", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def floor_client(mock_port: int) -> Iterator[OpenAI]:
    process, port = serve("asgi_floor.py", "--upstream", f"http://127.0.0.1:{mock_port}")
    try:
        with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-bench", max_retries=0) as client:
            yield client
    finally:
        stop_process(process)


def test_completion_has_content_usage_and_echoes_model(mock_client: OpenAI) -> None:
    reply = mock_client.chat.completions.create(model="mock-strong", messages=[{"role": "user", "content": "hi 1"}])
    assert reply.model == "mock-strong"
    assert reply.choices[0].message.content == "".join(CONTENT)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens == USAGE["total_tokens"]


def test_stream_has_chunks_usage_and_ends(mock_client: OpenAI) -> None:
    stream = mock_client.chat.completions.create(
        model="mock-weak",
        messages=[{"role": "user", "content": "hi 2"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "".join(CONTENT)
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == USAGE["completion_tokens"]
    assert {chunk.model for chunk in chunks} == {"mock-weak"}


def test_one_connection_answers_pipelined_requests_and_rejects_bad_bodies(mock_client: OpenAI) -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"q"}]}'
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    with socket.create_connection((mock_client.base_url.host, mock_client.base_url.port), timeout=5) as connection:
        connection.sendall(request * 3)
        received = b""
        while received.count(b"HTTP/1.1 200 OK") < 3 or not received.endswith(b"}}"):
            data = connection.recv(65536)
            assert data, f"connection closed after {received!r}"
            received += data
    assert received.count(b'"content":"' + "".join(CONTENT).encode()) == 3
    with pytest.raises(Exception) as error:
        mock_client.post("/chat/completions", body={"messages": []}, cast_to=object)
    assert getattr(error.value, "status_code", None) == 400


def test_floor_relay_passes_completion_and_stream_through(floor_client: OpenAI, mock_port: int) -> None:
    stats = f"http://127.0.0.1:{mock_port}/stats"
    reply = floor_client.chat.completions.create(model="mock-strong", messages=[{"role": "user", "content": "hi 3"}])
    assert reply.model == "mock-strong" and reply.choices[0].message.content == "".join(CONTENT)
    before = httpx.get(stats).json()["completions"]
    chunks = list(
        floor_client.chat.completions.create(model="mock-weak", messages=[{"role": "user", "content": "hi 4"}], stream=True)
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "".join(CONTENT)
    assert httpx.get(stats).json()["completions"] == before + 1  # the mock answered it: relayed, not made up
