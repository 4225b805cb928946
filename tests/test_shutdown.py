"""Graceful shutdown: on SIGTERM, requests in flight (streams included) finish, new ones get a 503
``shutting_down`` error, and whatever outlives ROUTEGATE_SHUTDOWN_GRACE_SECONDS is cut."""

from __future__ import annotations

import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from server.shutdown import CLOSING_SECONDS
from tests.conftest import STRONG_MODEL, WEAK_MODEL, Proxy, proxy_env, running_proxy, started_proxy
from tests.fake_upstream import Blackhole, FakeUpstream
from tests.metric_values import wait_for

MESSAGES = [{"role": "user", "content": "Hello?"}]
GRACE_SECONDS = 3


def _stream_pieces(api: str) -> list[str]:
    client = openai.OpenAI(base_url=api, api_key="unused", max_retries=0, timeout=30)
    stream = client.chat.completions.create(model=STRONG_MODEL, messages=MESSAGES, stream=True)
    return [choice.delta.content or "" for chunk in stream for choice in chunk.choices]


def _plain_answer(api: str) -> str:
    client = openai.OpenAI(base_url=api, api_key="unused", max_retries=0, timeout=30)
    return client.chat.completions.create(model=WEAK_MODEL, messages=MESSAGES).choices[0].message.content


def _hung_client(url: str) -> socket.socket:
    """A client that sends headers announcing a body it never sends: in flight until cut."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: routegate\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n{"
    )
    return sock


def _drains(url: str, probes: int = 1, within: float = 5) -> bool:
    """Whether ``probes`` successive /ready calls, each on a new connection, all say draining within ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            statuses = {httpx.get(f"{url}/ready", headers={"connection": "close"}).json()["status"] for _ in range(probes)}
        except httpx.TransportError:  # a worker that had nothing in flight stops at once
            continue
        if statuses == {"draining"}:
            return True
        time.sleep(0.02)
    return False


def _last_ready_answer(url: str, seconds: float) -> float:
    """Probe /ready on a new connection each time for ``seconds`` s: how many seconds after the
    first probe the last answer that said ready came (0 if none did)."""
    start = time.monotonic()
    last_ready = 0.0
    while time.monotonic() < start + seconds:
        with suppress(httpx.TransportError):  # no worker accepting, or one just stopped
            if httpx.get(f"{url}/ready", headers={"connection": "close"}, timeout=1).json()["status"] == "ready":
                last_ready = time.monotonic() - start
        time.sleep(0.02)
    return last_ready


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(strong: FakeUpstream, weak: FakeUpstream, tmp_path) -> None:
    strong.behaviour.chunks, strong.behaviour.chunk_delay = 6, 0.15  # a 0.9 s stream
    weak.behaviour.delay = 1.0  # a 1 s plain answer
    env = proxy_env(strong, weak, shutdown_grace_seconds=str(GRACE_SECONDS))
    with running_proxy(env, tmp_path) as proxy, ThreadPoolExecutor(2) as pool:
        streamed = pool.submit(_stream_pieces, proxy.api)
        answered = pool.submit(_plain_answer, proxy.api)
        hung = _hung_client(proxy.url)
        deadline = time.monotonic() + 10
        while not (strong.chunk_sent_at and weak.received) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert strong.chunk_sent_at and weak.received, "both requests are in flight"

        proxy.process.send_signal(signal.SIGTERM)
        assert _drains(proxy.url)  # the signal is handled on the server's next tick

        refused = httpx.post(f"{proxy.api}/chat/completions", json={"model": WEAK_MODEL, "messages": MESSAGES})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "shutting_down" and refused.headers["x-request-id"]
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
        assert httpx.get(f"{proxy.url}/ready").json()["status"] == "draining"

        assert streamed.result(timeout=10) == [f"strong-{index} " for index in range(6)]
        assert answered.result(timeout=10) == "answer from weak"
        assert proxy.process.wait(timeout=GRACE_SECONDS + 10) == 0
        # The hung request held the process until the grace period ran out, and was then cut.
        assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in proxy.log()
        hung.settimeout(5)
        cut = hung.recv(65536)
        hung.close()
        assert cut.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: 1\r\n" in cut.lower()
        assert b'"code": "shutting_down"' in cut


def _ready_status(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/ready", timeout=1).status_code
    except httpx.TransportError:
        return None


def test_a_request_held_while_the_router_loads_is_refused_at_the_drain_and_the_load_holds_no_exit(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path
) -> None:
    """A request held for the default router, still loading, gets 503 ``shutting_down`` when the
    drain begins (it used to get uvicorn's bare 500 at the end of the grace period, uncounted), and
    the load under way does not keep the process alive past the grace period."""
    (tmp_path / "checkpoints" / "slow").mkdir(parents=True)
    env = proxy_env(strong, weak, router="slow", checkpoint_dir=str(tmp_path / "checkpoints"), shutdown_grace_seconds="2")
    env["SLOW_ROUTER_LOAD_SECONDS"], env["SLOW_ROUTER_SECONDS"] = "60", "0"
    held_request = {"model": "router-slow-0.5", "messages": MESSAGES}
    with started_proxy(env, tmp_path, module="tests.slow_router") as proxy:
        assert wait_for(lambda: _ready_status(proxy.url) == 503, timeout=30)  # up, its router loading
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(httpx.post, f"{proxy.api}/chat/completions", json=held_request, timeout=30)
            time.sleep(1)  # the request is held while the router loads
            signalled_at = time.monotonic()
            proxy.process.send_signal(signal.SIGTERM)
            refused = held.result()
        assert proxy.process.wait(timeout=30) == 0
        exited_after = time.monotonic() - signalled_at
        log = proxy.log()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "shutting_down"
    assert exited_after < 15  # the grace period and the clean-up, not the 60 s load
    assert "status=503 error=shutting_down" in log and "Traceback" not in log


def test_a_stream_outliving_the_grace_period_ends_with_an_error_event(strong: FakeUpstream, weak: FakeUpstream, tmp_path) -> None:
    """The client gets a 503 ``shutting_down`` event, and the request is counted as that 503, not
    as a client that left (499)."""
    strong.behaviour.chunks, strong.behaviour.chunk_delay = 1000, 0.05  # 50 s: longer than any grace
    with running_proxy(proxy_env(strong, weak, shutdown_grace_seconds="1"), tmp_path) as proxy:
        client = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0, timeout=30)
        stream = client.chat.completions.create(
            model=STRONG_MODEL, messages=MESSAGES, stream=True, extra_headers={"x-request-id": "cut-stream"}
        )
        pieces = [next(iter(stream)).choices[0].delta.content]
        proxy.process.send_signal(signal.SIGTERM)
        try:
            for chunk in stream:
                pieces.extend(choice.delta.content or "" for choice in chunk.choices)
        except openai.APIError as error:
            assert error.body["code"] == "shutting_down"
        else:
            raise AssertionError("the stream ended without an error event")
        assert proxy.process.wait(timeout=15) == 0
        line = next(line for line in proxy.log().splitlines() if "request_id=cut-stream" in line)
    assert 8 <= len(pieces) < 1000  # it ran on through the 1 s grace period (a chunk every 0.05 s), then was cut
    assert "tier=strong" in line and "status=503" in line, line


@contextmanager
def _proxy_with_silent_redis(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, redis_timeout_ms: str) -> Iterator[Proxy]:
    """A gateway with a 1 s grace period, its feedback store in ``tmp_path / "feedback.sqlite3"``,
    a Redis that never answers (each call takes the whole timeout) and a strong upstream whose
    streams last 50 s: longer than any grace."""
    strong.behaviour.chunks, strong.behaviour.chunk_delay = 1000, 0.05
    hole = Blackhole()
    env = proxy_env(
        strong, weak, feedback_db=str(tmp_path / "feedback.sqlite3"), shutdown_grace_seconds="1",
        daily_budget_usd="100", redis_url=f"redis://127.0.0.1:{hole.port}/0", redis_timeout_ms=redis_timeout_ms,
    )  # fmt: skip
    try:
        with running_proxy(env, tmp_path) as proxy:
            yield proxy
    finally:
        hole.close()


def _stream_cut_by_sigterm(proxy: Proxy, request_id: str = "cut-stream") -> None:
    """Start a stream, send SIGTERM, read the stream up to the error event that cuts it and wait
    for the process to exit."""
    client = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model=STRONG_MODEL, messages=MESSAGES, stream=True, extra_headers={"x-request-id": request_id}
    )
    next(iter(stream))
    proxy.process.send_signal(signal.SIGTERM)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert proxy.process.wait(timeout=60) == 0


def test_a_stream_cut_by_the_shutdown_while_redis_is_slow_keeps_its_decision_row(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path
) -> None:
    """A stream cut at the end of the grace period records its decision as it closes, which waits
    on Redis (the spend, up to its timeout per call) while the gateway already stops: the store
    waits for it, so that the user can still rate the answer they were sent."""
    with _proxy_with_silent_redis(strong, weak, tmp_path, redis_timeout_ms="3000") as proxy:
        _stream_cut_by_sigterm(proxy, "cut-stream")
        log = proxy.log()
    stored = sqlite3.connect(tmp_path / "feedback.sqlite3").execute("SELECT request_id, tier FROM routegate_decisions")
    assert stored.fetchall() == [("cut-stream", "strong")], log[-2000:]


def test_the_clean_up_after_the_grace_period_ends_in_time_and_logs_what_it_could_not_write(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path
) -> None:
    """Everything after the grace period (a cut stream's recording, which waits on Redis; the
    store's queue, whose database is locked; the spend for Redis) shares one deadline,
    CLOSING_SECONDS, which the deploy files leave before they kill the process: the writes it
    could not make are logged as lost, not cut off unseen by a kill."""
    with _proxy_with_silent_redis(strong, weak, tmp_path, redis_timeout_ms="6000") as proxy:
        lock = sqlite3.connect(tmp_path / "feedback.sqlite3", timeout=30)
        lock.execute("BEGIN EXCLUSIVE")  # the store's writes wait on it, then fail
        assert _plain_answer(proxy.api)
        stopping_from = time.monotonic()
        _stream_cut_by_sigterm(proxy)
        took = time.monotonic() - stopping_from
        log = proxy.log()
        lock.close()
    assert took < 1 + CLOSING_SECONDS + 1.5, log[-2000:]  # the grace period, the clean-up, the interpreter's exit
    assert "writes lost" in log, log[-2000:]


def test_a_request_cut_at_its_upstream_by_the_shutdown_is_recorded_under_its_decision(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path
) -> None:
    """A plain answer that outlives the grace period: the client gets 503 shutting_down, and the
    request is counted under its router and the upstream that had it (whose prompt may be billed,
    so it is charged an estimate), not as one refused before routing."""
    strong.behaviour.delay = 30.0
    with running_proxy(proxy_env(strong, weak, shutdown_grace_seconds="1"), tmp_path) as proxy:
        headers = {"x-request-id": "cut-at-upstream"}
        with ThreadPoolExecutor(1) as pool:
            body = {"model": "router-random-0", "messages": MESSAGES}
            cut = pool.submit(httpx.post, f"{proxy.api}/chat/completions", json=body, headers=headers, timeout=30)
            assert wait_for(lambda: len(strong.received) == 1)
            proxy.process.send_signal(signal.SIGTERM)
            answer = cut.result(timeout=20)
        assert proxy.process.wait(timeout=15) == 0
        log = proxy.log()
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down"
    assert answer.headers["x-request-id"] == "cut-at-upstream"
    line = next(line for line in log.splitlines() if "request_id=cut-at-upstream" in line)
    assert "router=random" in line and "tier=strong" in line and "status=503" in line


def test_a_second_signal_ends_the_grace_period_at_once(strong: FakeUpstream, weak: FakeUpstream, tmp_path) -> None:
    strong.behaviour.chunks, strong.behaviour.chunk_delay = 1000, 0.05  # 50 s
    with running_proxy(proxy_env(strong, weak, shutdown_grace_seconds="40"), tmp_path) as proxy:
        client = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0, timeout=60)
        stream = client.chat.completions.create(model=STRONG_MODEL, messages=MESSAGES, stream=True)
        pieces = [next(iter(stream)).choices[0].delta.content]
        proxy.process.send_signal(signal.SIGTERM)
        assert _drains(proxy.url)
        proxy.process.send_signal(signal.SIGTERM)  # say, an operator who will not wait 40 s
        with pytest.raises(openai.APIError) as cut:
            for chunk in stream:
                pieces.extend(choice.delta.content or "" for choice in chunk.choices)
        assert cut.value.body["code"] == "shutting_down"
        # well inside the 40 s grace period; uvicorn raises the second signal again once it has stopped
        assert proxy.process.wait(timeout=15) == -signal.SIGTERM
        log = proxy.log()
    assert len(pieces) < 300  # cut within 15 s of the signals (a piece every 0.05 s), not after the 40 s grace period
    assert "Cancel 1 running task(s)" in log


def test_with_several_workers_each_worker_drains(strong: FakeUpstream, weak: FakeUpstream, tmp_path) -> None:
    # A plain answer in flight when the signal comes, still running through the probes below:
    # the idle worker stops at once, so this one is the only one left to answer them.
    weak.behaviour.delay = 4.0
    env = proxy_env(strong, weak, shutdown_grace_seconds="8", workers="2")
    with running_proxy(env, tmp_path) as proxy, ThreadPoolExecutor(1) as pool:
        answered = pool.submit(_plain_answer, proxy.api)
        deadline = time.monotonic() + 10
        while not weak.received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert weak.received, "the request is in flight"

        proxy.process.send_signal(signal.SIGTERM)  # to uvicorn's supervisor, which passes it on to each worker
        assert _drains(proxy.url, probes=6)  # each new connection may reach either worker
        refused = httpx.post(f"{proxy.api}/chat/completions", json={"model": WEAK_MODEL, "messages": MESSAGES})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"

        assert answered.result(timeout=10) == "answer from weak"
        assert proxy.process.wait(timeout=10) == 0
    assert len(weak.received) == 1  # the refused request never went upstream


def test_restarting_the_workers_refuses_nothing(strong: FakeUpstream, weak: FakeUpstream, tmp_path) -> None:
    """SIGHUP replaces each worker: a retired one stops taking connections at once instead of
    draining, so new requests reach the other workers and none gets 503 (a replacement still
    loading its router holds a request until it is ready; its /ready may say 503 meanwhile)."""
    weak.behaviour.delay = 3.0  # answers in flight on the workers being retired
    env = proxy_env(strong, weak, shutdown_grace_seconds=str(GRACE_SECONDS), workers="2")
    with running_proxy(env, tmp_path) as proxy, ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(_plain_answer, proxy.api) for _ in range(4)]
        assert wait_for(lambda: len(weak.received) == 4, timeout=10)  # in flight when the workers are replaced
        proxy.process.send_signal(signal.SIGHUP)
        statuses = []
        deadline = time.monotonic() + 8  # the replacements start, the old workers retire
        while time.monotonic() < deadline:
            probe = {"model": "router-random-0.0", "messages": MESSAGES}  # to strong, which answers at once
            statuses.append(httpx.post(f"{proxy.api}/chat/completions", json=probe, headers={"connection": "close"}).status_code)
            time.sleep(0.05)
        answers = [future.result(timeout=15) for future in in_flight]
        assert wait_for(lambda: proxy.log().count("Finished server process") == 2, timeout=20), proxy.log()  # both retired
    assert set(statuses) == {200}, statuses
    assert answers == ["answer from weak"] * 4  # cut or finished, every in-flight request was answered


def test_a_connection_opened_just_before_the_server_stops_is_answered_not_cut(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path
) -> None:
    """A client that connected a moment before the drain ended sends its request after uvicorn
    began closing connections: it is answered (and the connection closed), not cut without a word."""
    weak.behaviour.delay = 0.5  # in flight: the drain lasts until it is answered
    env = proxy_env(strong, weak, shutdown_grace_seconds=str(GRACE_SECONDS))
    with running_proxy(env, tmp_path) as proxy, ThreadPoolExecutor(1) as pool:
        answered = pool.submit(_plain_answer, proxy.api)
        assert wait_for(lambda: len(weak.received) == 1, timeout=10)
        port = int(proxy.url.rsplit(":", 1)[1])
        proxy.process.send_signal(signal.SIGTERM)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as late:  # less than a second before the end
            assert answered.result(timeout=10) == "answer from weak"
            assert wait_for(lambda: "Shutting down" in proxy.log(), timeout=10)
            late.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            reply = b""
            while received := late.recv(65536):
                reply += received
        assert reply.startswith(b"HTTP/1.1 200 ") and b'{"status":"ok"}' in reply.replace(b" ", b"")
        assert proxy.process.wait(timeout=15) == 0


@contextmanager
def _two_workers_then_a_broken_checkpoint(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path, ready_timeout: str
) -> Iterator[Proxy]:
    """Two workers that loaded the slow router; then its checkpoint breaks: a replacement cannot load it."""
    (tmp_path / "checkpoints" / "slow").mkdir(parents=True)
    weights = tmp_path / "checkpoints" / "slow" / "weights"
    weights.write_text("weights")
    env = proxy_env(
        strong, weak, router="slow", checkpoint_dir=str(tmp_path / "checkpoints"), workers="2", worker_ready_timeout=ready_timeout
    )
    env["SLOW_ROUTER_SECONDS"], env["SLOW_ROUTER_NEEDS"] = "0", str(weights)
    with running_proxy(env, tmp_path, module="tests.slow_router") as proxy:
        assert wait_for(lambda: proxy.log().count("router slow loaded") == 2, timeout=30)  # by both workers
        weights.unlink()
        yield proxy


def test_a_restart_whose_new_workers_cannot_load_their_router_keeps_the_old_ones(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path
) -> None:
    """SIGHUP's replacement counts as ready once its router is loaded: one that fails (its checkpoint
    went bad since the start) ends the restart, and the old workers serve on. (While it is tried,
    the replacement takes its share of new connections, and answers them 503 not_ready.)"""
    with _two_workers_then_a_broken_checkpoint(strong, weak, tmp_path, ready_timeout="2") as proxy:
        proxy.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "was not ready in time; keeping worker" in proxy.log(), timeout=30)
        probe = {"model": "router-slow-0.0", "messages": MESSAGES}
        answers = [httpx.post(f"{proxy.api}/chat/completions", json=probe, headers={"connection": "close"}) for _ in range(20)]
        log = proxy.log()
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {200}, statuses  # both old workers serve on
    assert log.count("router slow loaded") == 2  # the replacement never did


def test_sighup_to_a_single_process_is_ignored_not_fatal(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """A systemd ``ExecReload=kill -HUP`` must not end a one-process gateway (SIGHUP's default
    action), nor the request it is answering."""
    weak.behaviour.delay = 1.0
    with running_proxy(proxy_env(strong, weak), tmp_path) as proxy, ThreadPoolExecutor(1) as pool:
        held = pool.submit(_plain_answer, proxy.api)
        assert wait_for(lambda: bool(weak.received), timeout=10)
        proxy.process.send_signal(signal.SIGHUP)
        assert held.result(timeout=30) == "answer from weak"
        assert httpx.get(f"{proxy.url}/health").status_code == 200
        assert proxy.process.poll() is None
        assert "SIGHUP ignored" in proxy.log()


def test_requests_held_by_a_replacement_that_never_gets_ready_are_answered(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """A replacement whose router load hangs takes its share of new connections and holds their
    requests while it waits for the router; given up on, it is drained, so each of them is
    answered (503 ``shutting_down``) instead of cut by SIGKILL."""
    hang = tmp_path / "hang"
    env = proxy_env(strong, weak, router="slow", checkpoint_dir=str(tmp_path / "checkpoints"), workers="2")
    env.update(ROUTEGATE_WORKER_READY_TIMEOUT="3", SLOW_ROUTER_SECONDS="0", SLOW_ROUTER_HANG_WHILE=str(hang))
    (tmp_path / "checkpoints" / "slow").mkdir(parents=True)

    def one() -> tuple[int, str | None] | str:
        """The status and error code of one request on a new connection, or the transport error that cut it."""
        try:
            body = {"model": "router-slow-0.0", "messages": MESSAGES}
            reply = httpx.post(f"{proxy.api}/chat/completions", json=body, headers={"connection": "close"}, timeout=60)
            return reply.status_code, reply.json()["error"]["code"] if reply.status_code != 200 else None
        except httpx.TransportError as error:
            return type(error).__name__

    with running_proxy(env, tmp_path, module="tests.slow_router") as proxy, ThreadPoolExecutor(16) as pool:
        assert wait_for(lambda: proxy.log().count("router slow loaded") == 2, timeout=30)
        hang.touch()
        proxy.process.send_signal(signal.SIGHUP)
        sent = []
        for _ in range(50):  # across the replacement's 3 s
            sent.append(pool.submit(one))
            time.sleep(0.1)
        outcomes = [future.result(timeout=90) for future in sent]
        assert wait_for(lambda: "was not ready in time; keeping worker" in proxy.log(), timeout=30)
        assert one() == (200, None)  # the old workers serve on
    # the replacement took some of the 50 connections: each of their requests answered, none cut
    assert (503, "shutting_down") in outcomes and set(outcomes) <= {(200, None), (503, "shutting_down")}, outcomes


def test_a_request_cut_on_a_retired_worker_is_answered_shutting_down(strong: FakeUpstream, weak: FakeUpstream, tmp_path) -> None:
    weak.behaviour.delay = 300.0  # outlives the retired worker's grace period, however long the restart takes
    env = proxy_env(strong, weak, shutdown_grace_seconds="1", workers="2")
    with running_proxy(env, tmp_path) as proxy, ThreadPoolExecutor(1) as pool:
        held = pool.submit(
            httpx.post, f"{proxy.api}/chat/completions", json={"model": WEAK_MODEL, "messages": MESSAGES}, timeout=240
        )
        assert wait_for(lambda: bool(weak.received), timeout=10)
        proxy.process.send_signal(signal.SIGHUP)  # every worker is replaced, the one holding it among them
        cut = held.result(timeout=240)
    assert cut.status_code == 503, cut.text
    assert cut.json()["error"]["code"] == "shutting_down"


def test_a_stop_signal_during_a_restart_is_acted_on_at_once(strong: FakeUpstream, weak: FakeUpstream, tmp_path) -> None:
    # the restart's first replacement waits (up to 120 s) for a router that will not load
    with _two_workers_then_a_broken_checkpoint(strong, weak, tmp_path, ready_timeout="120") as proxy:
        proxy.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "router slow" in proxy.log().split("Received SIGHUP")[-1], timeout=30)
        proxy.process.send_signal(signal.SIGTERM)  # say, Kubernetes stopping the pod
        assert proxy.process.wait(timeout=30) == 0  # not after the 120 s the restart would have waited


def test_a_stop_signal_while_a_restart_retires_a_worker_drains_every_worker_at_once(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path
) -> None:
    """SIGHUP has brought a replacement in and waits for the worker it retires to finish its
    requests; a stop signal then drains every worker at once, the replacement too, rather than
    after that wait (which would leave the pod ready and taking requests for its grace period)."""
    weak.behaviour.delay = 300.0  # requests in flight on both old workers until the grace period ends
    env = proxy_env(strong, weak, shutdown_grace_seconds="15", workers="2")
    with running_proxy(env, tmp_path) as proxy, ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(httpx.post, f"{proxy.api}/chat/completions", json={"model": WEAK_MODEL, "messages": MESSAGES}, timeout=60)
        assert wait_for(lambda: len(weak.received) == 8, timeout=10)
        proxy.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "Waiting for child process" in proxy.log().split("Received SIGHUP")[-1], timeout=30)
        proxy.process.send_signal(signal.SIGTERM)
        # Without the drain at once, the replacement (and the worker not yet retired) would answer
        # ready for the 15 s grace period. Which workers still listen depends on where the eight
        # requests landed, so a probe may also find no worker accepting.
        assert _last_ready_answer(proxy.url, seconds=8) < 2
        assert proxy.process.wait(timeout=60) == 0


def test_a_second_signal_reaches_every_worker(strong: FakeUpstream, weak: FakeUpstream, tmp_path) -> None:
    strong.behaviour.chunks, strong.behaviour.chunk_delay = 1000, 0.05  # 50 s
    with running_proxy(proxy_env(strong, weak, shutdown_grace_seconds="40", workers="2"), tmp_path) as proxy:
        client = openai.OpenAI(base_url=proxy.api, api_key="unused", max_retries=0, timeout=60)
        stream = client.chat.completions.create(model=STRONG_MODEL, messages=MESSAGES, stream=True)
        pieces = [next(iter(stream)).choices[0].delta.content]
        proxy.process.send_signal(signal.SIGTERM)  # to the supervisor: every worker drains
        assert _drains(proxy.url, probes=6)
        proxy.process.send_signal(signal.SIGTERM)  # passed on: the workers end their grace period
        with pytest.raises(openai.APIError) as cut:
            for chunk in stream:
                pieces.extend(choice.delta.content or "" for choice in chunk.choices)
        assert cut.value.body["code"] == "shutting_down"
        assert proxy.process.wait(timeout=30) == 0
    assert len(pieces) < 300  # cut within 15 s of the signals (a piece every 0.05 s), not after the 40 s grace period
