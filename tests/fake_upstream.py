"""A small OpenAI-compatible chat completions server for tests, run on 127.0.0.1 in a thread.

It records what it receives and answers with a fixed completion and usage, plain or streamed;
``behaviour`` makes it misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
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


@dataclass
class Behaviour:
    """How the fake answers. ``fail_statuses`` is consumed one per request before answering normally."""

    chunk_delay: float = 0.0
    chunks: int = 5
    fail_statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    delay: float = 0.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeUpstream:
    """An OpenAI-compatible upstream called ``name`` serving on ``url`` (``.../v1``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[Received] = []
        self.behaviour = Behaviour()
        self.chunk_sent_at: list[float] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
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
        self.behaviour = Behaviour()

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
        body = await request.json()
        self.received.append(Received(dict(request.headers), body))
        behaviour = self.behaviour
        if behaviour.fail_statuses:
            status = behaviour.fail_statuses.pop(0)
            headers = {"retry-after": behaviour.retry_after} if behaviour.retry_after else {}
            error = {"error": {"message": f"{self.name} failed", "type": "server_error", "param": None, "code": None}}
            return JSONResponse(error, status_code=status, headers=headers)
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if body.get("tools") and body.get("tool_choice") != "none":
            return JSONResponse(self._tool_call(body))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._stream(body["model"], include_usage), media_type="text/event-stream")
        return JSONResponse(self.completion(body["model"]))

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

    async def _stream(self, model: str, include_usage: bool):
        for index in range(self.behaviour.chunks):
            chunk = {
                "id": f"chatcmpl-{self.name}",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": f"{self.name}-{index} "}, "finish_reason": None}],
            }
            self.chunk_sent_at.append(time.monotonic())
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            if self.behaviour.chunk_delay:
                await asyncio.sleep(self.behaviour.chunk_delay)
        if include_usage:
            usage = {
                "id": f"chatcmpl-{self.name}",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": 18},
            }
            yield f"data: {json.dumps(usage)}\n\n".encode()
        yield b"data: [DONE]\n\n"
