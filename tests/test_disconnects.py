"""Clients that leave mid-stream: the upstream request is cancelled at once, and after 1,000 of
them no upstream response, connection, slot or asyncio task is left behind."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import Proxy, proxy_env, running_proxy
from tests.fake_upstream import FakeUpstream, NeverReads, SlowReader
from tests.leaving_client import post_and_leave
from tests.metric_values import MetricDelta, wait_for
from tests.metrics_text import metric_sum

REQUEST = {"model": "router-random-0", "messages": [{"role": "user", "content": "Talk for a long time."}], "stream": True}
DISCONNECTS = 1000
CONCURRENCY = 50


def long_stream(upstream: FakeUpstream) -> None:
    upstream.behaviour.chunks, upstream.behaviour.chunk_delay = 10_000, 0.05  # 500 s if nobody stops it


def gauges(proxy: Proxy) -> dict[str, float]:
    text = proxy.metrics()
    return {
        name: metric_sum(text, name)
        for name in (
            "routegate_upstream_responses_open",
            "routegate_requests_in_flight",
            "routegate_upstream_requests_active",
            "routegate_event_loop_tasks",
        )
    }


def test_client_disconnect_cancels_the_upstream_stream(proxy: Proxy, strong: FakeUpstream) -> None:
    long_stream(strong)
    delta = MetricDelta(proxy.metrics)
    with httpx.stream("POST", f"{proxy.api}/chat/completions", json=REQUEST, timeout=10) as response:
        first = next(response.iter_raw())
        assert first.startswith(b"data: ")
    # The client is gone; the fake upstream must see its stream end long before its 10,000 chunks.
    assert wait_for(lambda: strong.streams_disconnected == 1, timeout=5)
    assert strong.streams_finished == 0
    assert len(strong.chunk_sent_at) < 200
    assert wait_for(lambda: gauges(proxy)["routegate_upstream_responses_open"] == 0, timeout=5)
    delta.after()
    assert delta("routegate_requests_total", tier="strong", status="499") == 1
    # The upstream produced tokens before the client left: the answer is charged an estimate.
    assert wait_for(lambda: delta.after()("routegate_cost_usd_total", tier="strong") > 0, timeout=5)
    assert delta("routegate_usage_estimated_total", tier="strong") == 1
    prompt = delta("routegate_tokens_total", tier="strong", kind="prompt")
    completion = delta("routegate_tokens_total", tier="strong", kind="completion")
    assert prompt == 1 + len(REQUEST["messages"][0]["content"]) // 4 and completion >= 1
    assert delta("routegate_cost_usd_total", tier="strong") == pytest.approx((prompt * 10 + completion * 30) / 1e6)


def test_a_client_that_leaves_before_the_answer_is_charged_its_prompt(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """Not streamed: the strong upstream has the prompt (and bills it) when the client gives up
    waiting, so the daily budget and the cost metrics get its prompt estimated, as a stream left
    early gets what it received."""
    strong.behaviour.delay = 5.0
    body = {**REQUEST, "stream": False}
    with running_proxy(proxy_env(strong, weak, daily_budget_usd="1"), tmp_path) as proxy:
        delta = MetricDelta(proxy.metrics)
        post_and_leave(f"{proxy.api}/chat/completions", body, leave_when=lambda: bool(strong.received))
        assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="499") == 1, timeout=5)
        prompt = 1 + len(REQUEST["messages"][0]["content"]) // 4
        assert delta("routegate_usage_estimated_total", tier="strong") == 1
        assert delta("routegate_tokens_total", tier="strong", kind="prompt") == prompt
        assert delta("routegate_tokens_total", tier="strong", kind="completion") == 0
        assert delta("routegate_cost_usd_total", tier="strong") == pytest.approx(prompt * 10 / 1e6)
        remaining = metric_sum(proxy.metrics(), "routegate_budget_remaining_usd")
        assert remaining == pytest.approx(1 - prompt * 10 / 1e6)


def test_a_client_that_leaves_an_https_upstream_with_its_prompt_is_charged_it(weak: FakeUpstream, tmp_path: Path) -> None:
    """Over TLS too: closing the connection queues a TLS alert of its own, which must not read as
    part of the prompt the upstream has not acknowledged."""
    certificate, key = tmp_path / "upstream.pem", tmp_path / "upstream-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True,
        capture_output=True,
    )
    secure = FakeUpstream("strong", tls=(str(certificate), str(key))).start()
    secure.behaviour.delay = 5.0
    env = proxy_env(secure, weak, daily_budget_usd="1")
    env["SSL_CERT_FILE"] = str(certificate)  # the upstream's self-signed certificate is the one trusted
    body = {**REQUEST, "stream": False, "messages": [{"role": "user", "content": "x" * 200_000}]}
    try:
        with running_proxy(env, tmp_path) as proxy:
            delta = MetricDelta(proxy.metrics)
            post_and_leave(f"{proxy.api}/chat/completions", body, leave_when=lambda: bool(secure.received))
            assert wait_for(lambda: delta.after()("routegate_requests_total", tier="strong", status="499") == 1, timeout=10)
            assert delta("routegate_usage_estimated_total", tier="strong") == 1
            assert delta("routegate_tokens_total", tier="strong", kind="prompt") == 1 + 200_000 // 4
    finally:
        secure.stop()


def test_a_client_that_leaves_while_a_refused_try_waits_to_be_retried_is_not_charged(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """The strong upstream answered 429 (not billed) and asked for 3 s before the retry: a client
    that leaves meanwhile left no upstream with its prompt, so nothing is charged."""
    strong.behaviour.fail_statuses, strong.behaviour.retry_after = [429], "3"
    body = {**REQUEST, "stream": False}
    with running_proxy(proxy_env(strong, weak, daily_budget_usd="1"), tmp_path) as proxy:
        delta = MetricDelta(proxy.metrics)
        post_and_leave(f"{proxy.api}/chat/completions", body, leave_when=lambda: bool(strong.received))
        assert wait_for(lambda: delta.after()("routegate_requests_total", status="499") == 1, timeout=5)
        assert delta("routegate_requests_total", tier="none", status="499") == 1
        assert delta("routegate_tokens_total", kind="prompt") == 0 and delta("routegate_usage_estimated_total") == 0
        assert metric_sum(proxy.metrics(), "routegate_budget_remaining_usd") == 1
    assert len(strong.received) == 1  # the retry never went


def test_a_client_that_leaves_while_its_prompt_is_still_being_sent_is_not_charged(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """An upstream bills a prompt only once it has all of it: a client that leaves while its large
    body is still on the way to a slow upstream is not charged the prompt's estimate (24 MB here,
    about $60 at the strong price), so abandoned uploads cannot spend the daily budget, and the
    upstream never gets the whole body (what routegate had buffered must not follow as it closes)."""
    upstream = SlowReader()
    env = proxy_env(strong, weak, daily_budget_usd="1", max_body_bytes=str(32 << 20))
    env["ROUTEGATE_STRONG__BASE_URL"] = upstream.url
    body = {**REQUEST, "stream": False, "messages": [{"role": "user", "content": "x" * 24_000_000}]}
    try:
        with running_proxy(env, tmp_path) as proxy:
            delta = MetricDelta(proxy.metrics)
            post_and_leave(f"{proxy.api}/chat/completions", body, leave_when=lambda: upstream.received > 1 << 20)
            assert wait_for(lambda: delta.after()("routegate_requests_total", status="499") == 1, timeout=10)
            assert upstream.ended.wait(timeout=10), "routegate kept the upstream connection open"
            assert delta("routegate_requests_total", tier="none", status="499") == 1
            assert delta("routegate_tokens_total", kind="prompt") == 0 and delta("routegate_usage_estimated_total") == 0
            assert metric_sum(proxy.metrics(), "routegate_budget_remaining_usd") == 1
    finally:
        upstream.close()
    assert upstream.received < 12_000_000  # a part only: it cannot have answered, or billed


def test_a_prompt_queued_on_this_machine_for_an_upstream_that_never_read_it_is_not_charged(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """A 200 KB body fits in this machine's socket buffers, so routegate hands all of it over at
    once, but the stalled upstream has read none of it when the client leaves: it is not charged,
    and the connection is reset, so that the queued body never reaches the upstream later."""
    upstream = NeverReads()
    env = proxy_env(strong, weak, daily_budget_usd="1")
    env["ROUTEGATE_STRONG__BASE_URL"] = upstream.url
    body = {**REQUEST, "stream": False, "messages": [{"role": "user", "content": "x" * 200_000}]}
    try:
        with running_proxy(env, tmp_path) as proxy:
            delta = MetricDelta(proxy.metrics)
            post_and_leave(f"{proxy.api}/chat/completions", body, leave_when=lambda: upstream.connected(for_seconds=0.5))
            assert wait_for(lambda: delta.after()("routegate_requests_total", status="499") == 1, timeout=10)
            assert delta("routegate_requests_total", tier="none", status="499") == 1
            assert (
                delta("routegate_usage_estimated_total") == 0
                and metric_sum(proxy.metrics(), "routegate_budget_remaining_usd") == 1
            )
            assert wait_for(upstream.reset, timeout=5)
    finally:
        upstream.close()


@pytest.mark.parametrize("prompt_chars", [200_000, 24_000_000], ids=["queued-here", "mid-upload"])
def test_a_try_that_times_out_before_its_prompt_was_all_sent_is_not_charged(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, prompt_chars: int
) -> None:
    """The strong upstream stalls while taking a body; its try runs out of time and the weak
    upstream answers. A try that timed out after the whole prompt was sent is charged its estimate
    (the upstream may have answered it); this one never had the whole prompt, so it costs nothing,
    whether the body was still being sent or all queued on this machine."""
    upstream = NeverReads()
    env = proxy_env(strong, weak, max_body_bytes=str(32 << 20), total_timeout="4", read_timeout="2")
    env["ROUTEGATE_STRONG__BASE_URL"] = upstream.url
    body = {**REQUEST, "stream": False, "messages": [{"role": "user", "content": "x" * prompt_chars}]}
    try:
        with running_proxy(env, tmp_path) as proxy:
            delta = MetricDelta(proxy.metrics)
            answer = httpx.post(f"{proxy.api}/chat/completions", json=body, timeout=30)
            delta.after()
    finally:
        upstream.close()
    assert answer.status_code == 200 and answer.headers["x-routegate-fallback"] == "strong->weak:timeout"
    assert len(weak.received) == 1
    assert delta("routegate_usage_estimated_total", tier="strong") == 0
    assert delta("routegate_cost_usd_total", tier="strong") == 0
    assert delta("routegate_cost_usd_total", tier="weak") > 0


async def _leave_after_first_chunk(client: httpx.AsyncClient, url: str, slots: asyncio.Semaphore) -> None:
    async with slots:
        async with client.stream("POST", url, json=REQUEST) as response:
            async for chunk in response.aiter_raw():
                assert chunk.startswith(b"data: ")
                break


async def _disconnect_many(url: str) -> None:
    slots = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(_leave_after_first_chunk(client, url, slots) for _ in range(DISCONNECTS)))


def test_a_thousand_disconnects_leak_nothing(proxy: Proxy, strong: FakeUpstream) -> None:
    long_stream(strong)
    before = gauges(proxy)
    connections_before = strong.open_connections()
    asyncio.run(_disconnect_many(f"{proxy.api}/chat/completions"))
    assert wait_for(lambda: strong.streams_disconnected == DISCONNECTS)
    assert strong.streams_finished == 0
    assert wait_for(lambda: gauges(proxy)["routegate_upstream_responses_open"] == 0)
    after = gauges(proxy)
    assert after["routegate_requests_in_flight"] == 0
    assert after["routegate_upstream_requests_active"] == 0
    # The proxy's own tasks are back where they were (a few may belong to the /metrics request itself).
    assert after["routegate_event_loop_tasks"] <= before["routegate_event_loop_tasks"] + 2
    assert wait_for(lambda: strong.open_connections() <= connections_before)


def holds_connection(proxy: Proxy, proxy_port: int, client_port: int) -> bool:
    """Whether the gateway process still holds its end of the TCP connection from ``client_port``
    to its ``proxy_port`` (Linux /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
        if (local_port, remote_port) == (proxy_port, client_port):
            inodes.add(f"socket:[{fields[9]}]")
    held = set()
    for descriptor in Path(f"/proc/{proxy.process.pid}/fd").iterdir():
        try:
            held.add(os.readlink(descriptor))
        except OSError:  # closed while listed
            pass
    return bool(inodes & held)


def test_a_client_that_stops_reading_a_whole_answer_has_its_connection_dropped(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """A large non-streamed answer is sent in pieces: a client that stops reading it is cut after
    ROUTEGATE_CLIENT_SEND_TIMEOUT, so the answer is not held in the gateway's memory (several
    MB a connection) until the client reads it, as long as its connection stays open."""
    strong.behaviour.huge_bytes = 20_000_000  # far more than the sockets between them can buffer
    env = proxy_env(strong, weak, client_send_timeout="1")
    with running_proxy(env, tmp_path) as proxy:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = proxy.url.removeprefix("http://").split(":")
        stalled.connect((host, int(port)))
        client_port, proxy_port = stalled.getsockname()[1], int(port)
        body = json.dumps({**REQUEST, "stream": False}).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        stalled.sendall(head.encode() + f"content-length: {len(body)}\r\n\r\n".encode() + body)  # never read
        try:
            assert wait_for(lambda: bool(strong.received))
            assert wait_for(lambda: not holds_connection(proxy, proxy_port, client_port), timeout=15)
            received = 0
            stalled.settimeout(5)
            try:
                while chunk := stalled.recv(1 << 20):
                    received += len(chunk)
            except OSError:  # reset: what it had not read was dropped
                pass
        finally:
            stalled.close()
    assert received < 20_000_000


def test_a_client_that_stops_reading_a_stream_gives_its_slot_back(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    strong.behaviour.chunks = 200_000  # far more than the sockets between them can buffer
    env = proxy_env(strong, weak, client_send_timeout="1", max_concurrent_requests="1", queue_timeout="0.5")
    with running_proxy(env, tmp_path) as proxy:
        delta = MetricDelta(proxy.metrics)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = proxy.url.removeprefix("http://").split(":")
        stalled.connect((host, int(port)))
        client_port, proxy_port = stalled.getsockname()[1], int(port)
        body = json.dumps(REQUEST).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(body)}\r\n\r\n"
        stalled.sendall(head.encode() + body)  # ... and never reads the answer
        try:
            assert wait_for(lambda: holds_connection(proxy, proxy_port, client_port))  # accepted
            assert wait_for(lambda: bool(strong.received))  # it took the one slot and reached the upstream ...
            assert wait_for(lambda: gauges(proxy)["routegate_requests_in_flight"] == 0, timeout=30)  # ... and ended
            assert gauges(proxy)["routegate_upstream_responses_open"] == 0
            answered = httpx.post(f"{proxy.api}/chat/completions", json={**REQUEST, "stream": False}, timeout=10)
            # its connection is dropped, not held open (with what it buffers) until the client reads
            assert wait_for(lambda: not holds_connection(proxy, proxy_port, client_port), timeout=5)
        finally:
            stalled.close()
        delta.after()
    assert answered.status_code == 200  # the one upstream slot is free again
    assert delta("routegate_requests_total", tier="strong", status="499") == 1
