"""The least a Python proxy on uvicorn can cost: a bare ASGI relay, for ``bench/proxy_overhead.py``.

No framework, no validation, no routing, no metrics: each request's body goes unchanged to
``--upstream`` on one pooled aiohttp session (routegate's upstream pool), and the answer comes
back chunk by chunk. It is served by uvicorn with routegate's options (httptools, uvloop when
installed, no access log). Any gateway built this way pays at least what this pays, so its
requests/s over the direct upstream's bounds what routegate can reach on the same machine.

    python bench/asgi_floor.py --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import uvicorn

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Relay:
    """An ASGI app that relays every HTTP request to ``upstream`` (same method, path and body)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._relay(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _relay(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {"Content-Type": "application/json", "Authorization": "Bearer floor"}
        async with self.session.request(scope["method"], self.upstream + scope["path"], data=body, headers=headers) as response:
            content_type = response.headers.get("Content-Type", "application/json").encode()
            await send({"type": "http.response.start", "status": response.status, "headers": [(b"content-type", content_type)]})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL (paths are appended unchanged)")
    args = parser.parse_args()
    uvicorn.run(Relay(args.upstream), host="127.0.0.1", port=args.port, log_level="warning", access_log=False, http="httptools")


if __name__ == "__main__":
    main()
