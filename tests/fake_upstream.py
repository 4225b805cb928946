"""A small OpenAI-compatible chat completions server for tests, run on 127.0.0.1 in a thread.

It records what it receives and answers with a fixed completion and usage, plain or streamed;
``behaviour`` makes it misbehave on purpose (error statuses, HTML pages, malformed JSON, slow or
cut streams, huge answers). ``Blackhole`` and ``closed_port_url`` stand in for upstreams that cannot
be reached at all. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7


@dataclass
class Received:
    """One request as the upstream saw it."""

    headers: dict[str, str]
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass
class Behaviour:
    """How the fake answers. ``fail_statuses`` is consumed one per request before answering normally;
    the other faults hold until ``reset``."""

    chunk_delay: float = 0.0
    chunks: int = 5
    fail_statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    delay: float = 0.0
    fail_body: str | None = None  # sent with fail_statuses instead of the JSON error (e.g. an HTML page)
    fail_content_type: str = "application/json"
    echo_key: bool = False  # error bodies quote the caller's Authorization header, as careless upstreams do
    malformed_json: bool = False  # 200 with a truncated JSON body
    answer_body: bytes | None = None  # non-streamed answers are these bytes (200, application/json)
    finish_without_done: bool = False  # streams end with a finish_reason chunk and close without [DONE]
    extra_event: bytes | None = None  # streams carry an event with this data before the usage chunk
    end_after_extra_event: bool = False  # streams close cleanly right after that event (no usage, no [DONE])
    open_finish_reason: str | None = None  # streams' content chunks carry this finish_reason (null by default)
    cut_in_usage: bool = False  # streams drop the connection half-way through their usage chunk
    cut_after: int | None = None  # streams stop after this many content chunks, by dropping the
    cut_mode: str = "abort"  # connection ("abort", or "mid_event": after half the next event), ending the body
    # ("end") or sending [DONE] ("done")
    huge_bytes: int = 0  # non-streamed answers carry this many bytes of content
    answer: str | None = None  # non-streamed answers' text instead of "answer from <name>"
    refuse_stream_options: bool = False  # 400 for a body with stream_options, as some older servers answer
    refusal_status: int = 400  # the status of that refusal (422 from servers that validate a body's fields)
    omit_usage: bool = False  # non-streamed answers carry no usage object
    no_choices: bool = False  # non-streamed answers carry an empty choices list
    ignore_stream: bool = False  # streamed requests get the non-streamed JSON answer, as some servers send
    stream_preamble: bytes = b""  # streams begin with these bytes (SSE comments: keep-alives)
    preamble_delay: float = 0.0  # seconds between the preamble and the first event
    preamble_split: int = 0  # the preamble goes in two writes, split at this byte (0: one write)
    stream_content_type: str = "text/event-stream"  # the content-type of streams
    stream_headers: dict[str, str] = field(default_factory=dict)  # more headers on streams
    answer_headers: dict[str, str] = field(default_factory=dict)  # more headers on whole answers and failures
    usage: dict | None = None  # non-streamed answers carry this usage object instead of the usual one
    fault_rate: float = 0.0  # this share of requests gets one of RANDOM_FAULTS (the soak's faults)


# Faults drawn at random with ``fault_rate``: plain requests get one of the first three, streams
# one of 503, 429, a cut before the first byte or (the only unrecoverable one) a cut mid-way.
RANDOM_FAULTS = {
    False: ("http_503", "http_429", "malformed_json"),
    True: ("http_503", "http_429", "cut_before_first_byte", "cut_midway"),
}


class StreamAborted(Exception):
    """Raised inside a stream to make the server drop the connection mid-body."""


class Blackhole:
    """A port on 127.0.0.1 whose accept queue is full, so new connections time out instead of
    being refused (a connect timeout without leaving the machine)."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._fillers: list[socket.socket] = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self._fillers.append(filler)

    def close(self) -> None:
        for sock in [*self._fillers, self._listener]:
            sock.close()


class NeverReads:
    """A port on 127.0.0.1 that takes connections and never reads from them: a request body larger
    than the sockets between can buffer is never all sent (an upstream that stalls mid-upload)."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # its connections' too
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.setblocking(False)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self._connections: list[socket.socket] = []
        self._first_at = 0.0

    def connected(self, for_seconds: float = 0.0) -> bool:
        """Whether a connection came at least ``for_seconds`` ago (it is taken and held, unread)."""
        try:
            self._connections.append(self._listener.accept()[0])
            self._first_at = self._first_at or time.monotonic()
        except BlockingIOError:
            pass
        return bool(self._connections) and time.monotonic() - self._first_at >= for_seconds

    def reset(self) -> bool:
        """Whether the sender reset a connection (what it had sent and this side had not read is
        then dropped) rather than closing it or leaving it open."""
        for connection in self._connections:
            try:
                while connection.recv(1 << 20, socket.MSG_DONTWAIT):
                    pass
            except ConnectionResetError:
                return True
            except BlockingIOError:
                pass
        return False

    def close(self) -> None:
        for sock in [*self._connections, self._listener]:
            sock.close()


class SlowReader:
    """A port on 127.0.0.1 that reads what one connection sends, 64 KiB every 5 ms (at most 13 MB/s),
    and never answers: ``received`` counts the bytes, and ``ended`` is set once the sender closed."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self.received = 0
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            connection = self._listener.accept()[0]
        except OSError:  # closed before anyone came
            return
        with connection:
            try:
                while chunk := connection.recv(65536):
                    self.received += len(chunk)
                    time.sleep(0.005)
            except OSError:
                pass
        self.ended.set()

    def close(self) -> None:
        self._listener.close()


def closed_port_url() -> str:
    """The ``/v1`` URL of a port on 127.0.0.1 that nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}/v1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeUpstream:
    """An OpenAI-compatible upstream called ``name`` serving on ``url`` (``.../v1``)."""

    def __init__(self, name: str, tls: tuple[str, str] | None = None) -> None:
        """``tls``: the certificate and key files to serve HTTPS with."""
        self.name = name
        self.received: list[Received] = []
        self.behaviour = Behaviour()
        self.chunk_sent_at: list[float] = []
        self.streams_finished = 0
        self.streams_disconnected = 0  # streams that ended before their last chunk (client gone, or cut)
        self.abandoned = 0  # delayed answers whose caller disconnected before they were sent
        self.faults_injected: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/v1"
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        certificate, key = tls or (None, None)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ssl_certfile=certificate, ssl_keyfile=key
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeUpstream:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fake upstream {self.name} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def reset(self) -> None:
        """Forget what was received and answer normally again."""
        self.received.clear()
        self.chunk_sent_at.clear()
        self.streams_finished = self.streams_disconnected = self.abandoned = 0
        self.faults_injected.clear()
        self.max_in_flight = self.in_flight
        self.behaviour = Behaviour()

    def open_connections(self) -> int:
        """TCP connections to this fake that are open right now."""
        return len(self._server.server_state.connections)

    def completion(self, model: str) -> dict[str, Any]:
        """The non-streamed answer this fake sends."""
        return {
            "id": f"chatcmpl-{self.name}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": f"answer from {self.name}"}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            },
        }

    async def _chat(self, request: Request) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        body = await request.json()
        self.received.append(Received(dict(request.headers), body))
        behaviour = self.behaviour
        if behaviour.fail_statuses:
            return self._failure(behaviour.fail_statuses.pop(0), request.headers.get("authorization", ""))
        if behaviour.refuse_stream_options and "stream_options" in body:
            return self._invalid("Unrecognized request argument supplied: stream_options", behaviour.refusal_status)
        stream = body.get("stream") is True
        fault = self._draw_fault(stream)
        if fault in ("http_503", "http_429"):
            error = {"error": {"message": f"{self.name} injected {fault}", "type": "server_error", "param": None, "code": None}}
            return JSONResponse(error, status_code=int(fault[-3:]), headers={"retry-after": "0"})
        if fault in ("cut_before_first_byte", "cut_midway"):
            cut_after = 0 if fault == "cut_before_first_byte" else 1
            return StreamingResponse(self._stream(body["model"], False, cut_after), media_type="text/event-stream")
        if behaviour.delay and not await self._wait_unless_abandoned(request, behaviour.delay):
            return Response(status_code=499)  # nobody reads it: the caller closed the connection
        if behaviour.malformed_json or fault == "malformed_json":
            return Response(b'{"id": "chatcmpl-broken", "choices": [{"mess', media_type="application/json")
        if behaviour.answer_body is not None and not stream:
            return Response(behaviour.answer_body, media_type="application/json")
        if body.get("tools") and body.get("tool_choice") != "none":
            try:
                answer = self._tool_call(body)
            except (KeyError, IndexError, TypeError):
                return self._invalid("Invalid 'tools': each tool needs a function with a name.")
            if stream:
                return StreamingResponse(self._tool_call_events(answer), media_type="text/event-stream")
            return JSONResponse(answer)
        if stream and not behaviour.ignore_stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return StreamingResponse(
                self._stream(body["model"], include_usage),
                media_type=behaviour.stream_content_type,
                headers=behaviour.stream_headers,
            )
        answer = self.completion(body["model"])
        if behaviour.huge_bytes:
            answer["choices"][0]["message"]["content"] = "x" * behaviour.huge_bytes
        if behaviour.answer is not None:
            answer["choices"][0]["message"]["content"] = behaviour.answer
        if behaviour.usage is not None:
            answer["usage"] = behaviour.usage
        if behaviour.omit_usage:
            del answer["usage"]
        if behaviour.no_choices:
            answer["choices"] = []
        return JSONResponse(answer, headers=behaviour.answer_headers)

    async def _wait_unless_abandoned(self, request: Request, seconds: float) -> bool:
        """Wait ``seconds``; False (and counted in ``abandoned``) if the caller disconnects first."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                self.abandoned += 1
                return False
            await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        return True

    def _draw_fault(self, stream: bool) -> str | None:
        if not self.behaviour.fault_rate or random.random() >= self.behaviour.fault_rate:
            return None
        fault = random.choice(RANDOM_FAULTS[stream])
        self.faults_injected[fault] += 1
        return fault

    def _failure(self, status: int, authorization: str) -> Response:
        behaviour = self.behaviour
        headers = {"retry-after": behaviour.retry_after} if behaviour.retry_after else {}
        headers.update(behaviour.answer_headers)
        if behaviour.fail_body is not None:
            return Response(behaviour.fail_body, status_code=status, headers=headers, media_type=behaviour.fail_content_type)
        message = f"{self.name} failed" + (f" for {authorization}" if behaviour.echo_key else "")
        error = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        return JSONResponse(error, status_code=status, headers=headers)

    @staticmethod
    def _invalid(message: str, status: int = 400) -> Response:
        error = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        return JSONResponse(error, status_code=status)

    def _tool_call(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.completion(body["model"])
        name = body["tools"][0]["function"]["name"]
        answer["choices"][0]["message"] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps({"city": "Paris"})}}
            ],
        }
        answer["choices"][0]["finish_reason"] = "tool_calls"
        return answer

    @staticmethod
    async def _tool_call_events(answer: dict[str, Any]):
        """A tool-call answer streamed as OpenAI does: the call's id, type and name first, then its arguments in two parts."""
        call = answer["choices"][0]["message"]["tool_calls"][0]
        arguments = call["function"]["arguments"]
        pieces = [
            {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}},
            {"index": 0, "function": {"arguments": arguments[: len(arguments) // 2]}},
            {"index": 0, "function": {"arguments": arguments[len(arguments) // 2 :]}},
        ]
        deltas = [{"role": "assistant", "content": ""}] + [
            {"tool_calls": [piece]} for piece in pieces
        ]  # an empty text, as vLLM sends
        for delta, finish in [(delta, None) for delta in deltas] + [({}, "tool_calls")]:
            chunk = {key: answer[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
            chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def _stream(self, model: str, include_usage: bool, cut_after: int | None = None):
        finished = False
        try:
            async for event in self._events(model, include_usage, cut_after):
                yield event
            finished = True
        finally:
            if finished:
                self.streams_finished += 1
            else:
                self.streams_disconnected += 1

    async def _events(self, model: str, include_usage: bool, cut_after: int | None):
        behaviour = self.behaviour
        cut_mode = "abort" if cut_after is not None else behaviour.cut_mode
        cut_after = behaviour.cut_after if cut_after is None else cut_after
        if behaviour.stream_preamble:
            split = behaviour.preamble_split or len(behaviour.stream_preamble)
            yield behaviour.stream_preamble[:split]
            if split < len(behaviour.stream_preamble):
                await asyncio.sleep(0.05)  # a read of its own
                yield behaviour.stream_preamble[split:]
            await asyncio.sleep(behaviour.preamble_delay)
        for index in range(behaviour.chunks):
            chunk = {
                "id": f"chatcmpl-{self.name}",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [
                    {"index": 0, "delta": {"content": f"{self.name}-{index} "}, "finish_reason": behaviour.open_finish_reason}
                ],
            }
            event = f"data: {json.dumps(chunk)}\n\n".encode()
            if index == cut_after:
                if cut_mode == "mid_event":
                    yield event[: len(event) // 2]
                if cut_mode in ("abort", "mid_event"):
                    raise StreamAborted(f"{self.name} drops the stream after {index} chunks")
                if cut_mode == "done":
                    yield b"data: [DONE]\n\n"
                return
            self.chunk_sent_at.append(time.monotonic())
            yield event
            if self.behaviour.chunk_delay:
                await asyncio.sleep(self.behaviour.chunk_delay)
        if behaviour.extra_event is not None:
            yield b"data: " + behaviour.extra_event + b"\n\n"
            if behaviour.end_after_extra_event:
                return
        if behaviour.finish_without_done:
            last = {"id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
            last["choices"] = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
            yield f"data: {json.dumps(last)}\n\n".encode()
        if include_usage:
            usage = {
                "id": f"chatcmpl-{self.name}",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": 18},
            }
            event = f"data: {json.dumps(usage)}\n\n".encode()
            if behaviour.cut_in_usage:
                yield event[: len(event) // 2]
                raise StreamAborted(f"{self.name} drops the stream in its usage chunk")
            yield event
        if behaviour.finish_without_done:
            return
        yield b"data: [DONE]\n\n"
