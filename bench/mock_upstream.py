"""A minimal, fast OpenAI-compatible upstream for benchmarks: raw asyncio HTTP/1.1 with keep-alive.

``POST /v1/chat/completions`` answers a fixed completion with usage, or, when the body has
``"stream": true``, a short server-sent event stream (role, three content chunks, finish, a usage
chunk, ``data: [DONE]``). ``GET /v1/models`` lists the model; ``GET /stats`` counts the answered
completions. No framework, no per-request logging: it should never be the bottleneck.

    python bench/mock_upstream.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

MAX_HEADER_BYTES = 64 * 1024
CONTENT = ["Hash tables", " resolve collisions", " by chaining or probing."]
PROMPT_TOKENS = 24
COMPLETION_TOKENS = 9
USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
}

STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
}


def completion_body(model: str) -> bytes:
    """The JSON body of a non-streamed chat completion for ``model``."""
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(CONTENT)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        },
        separators=(",", ":"),
    ).encode()


def stream_events(model: str) -> list[bytes]:
    """The server-sent events of a streamed chat completion for ``model``, one per list item."""
    created = int(time.time())

    def chunk(choices: list[dict], usage: dict | None = None) -> bytes:
        event = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            event["usage"] = usage
        return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

    events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    events += [chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}]) for piece in CONTENT]
    events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    events.append(chunk([], USAGE))
    events.append(b"data: [DONE]\n\n")
    return events


def _response(status: int, body: bytes, content_type: bytes = b"application/json", keep_alive: bool = True) -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
        status,
        STATUS_TEXT.get(status, "Error").encode(),
        content_type,
        len(body),
    )
    return head + (b"" if keep_alive else b"connection: close\r\n") + b"\r\n" + body


def _chunked_stream(events: list[bytes], keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
    head += b"" if keep_alive else b"connection: close\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events)
    return head + b"\r\n" + body + b"0\r\n\r\n"


def _error(status: int, message: str, keep_alive: bool = True) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}).encode()
    return _response(status, body, keep_alive=keep_alive)


class MockUpstream(asyncio.Protocol):
    """One client connection: parses pipelined HTTP/1.1 requests and answers each at once."""

    completions = 0  # answered chat completions, all connections together

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self._send(_error(413, "headers too large", keep_alive=False), close=True)
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, _, rest = head[0].partition(" ")
            path = rest.rsplit(" ", 1)[0]
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._send(_error(411, "send a content-length", keep_alive=False), close=True)
                return
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            keep_alive = headers.get("connection", "").lower() != "close"
            self._send(self._answer(method, path.split("?", 1)[0], body, keep_alive), close=not keep_alive)

    def _answer(self, method: str, path: str, body: bytes, keep_alive: bool) -> bytes:
        if path in ("/v1/chat/completions", "/chat/completions"):
            if method != "POST":
                return _error(405, "use POST", keep_alive)
            try:
                request = json.loads(body)
                model = str(request["model"])
            except (ValueError, KeyError, TypeError):
                return _error(400, "body must be a JSON object with a model", keep_alive)
            MockUpstream.completions += 1
            if request.get("stream") is True:
                return _chunked_stream(stream_events(model), keep_alive)
            return _response(200, completion_body(model), keep_alive=keep_alive)
        if path in ("/v1/models", "/models"):
            listing = {"object": "list", "data": [{"id": "mock", "object": "model", "owned_by": "bench"}]}
            return _response(200, json.dumps(listing).encode(), keep_alive=keep_alive)
        if path == "/stats":
            return _response(200, json.dumps({"completions": MockUpstream.completions}).encode(), keep_alive=keep_alive)
        return _error(404, f"no route {path}", keep_alive)

    def _send(self, data: bytes, close: bool) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if close:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MockUpstream, host, port, backlog=4096, reuse_address=True)
    print(f"mock upstream listening on http://{host}:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="Fast OpenAI-compatible mock upstream for benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
