"""Relaying an upstream's server-sent events to the client as they arrive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class StreamWatcher:
    """Watches relayed SSE bytes for the ``usage`` object and the closing ``data: [DONE]``,
    without holding more than one incomplete event."""

    def __init__(self) -> None:
        self.usage: dict | None = None
        self.done = False
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        events = (self._pending + chunk).replace(b"\r\n", b"\n").split(b"\n\n")
        self._pending = events.pop()
        for event in events:
            self._read_event(event)

    def _read_event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
            elif b'"usage"' in data:
                try:
                    usage = json.loads(data).get("usage")
                except (ValueError, AttributeError):
                    continue
                if isinstance(usage, dict):
                    self.usage = usage


class RelayResponse(Response):
    """Streams ``chunks`` to the client; stops reading upstream as soon as the client leaves,
    and always calls ``on_close(completed)`` once, shielded from cancellation.

    When the serving task itself is cancelled (a shutdown whose grace period ran out) and
    ``on_cancel`` returns a final event, that event ends the stream instead of a bare close."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        headers: dict[str, str],
        on_close: Callable[[bool], Awaitable[None]],
        media_type: str = "text/event-stream",
        on_cancel: Callable[[], bytes | None] | None = None,
    ) -> None:
        self.chunks = chunks
        self.on_close = on_close
        self.on_cancel = on_cancel
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers({**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completed = started = False
        try:
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch_disconnect)
                try:
                    await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                    started = True
                    async for chunk in self.chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    completed = True
                except OSError:  # the client went away while we were sending
                    pass
                finally:
                    group.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            final = self.on_cancel() if started and self.on_cancel is not None else None
            if final is None:
                raise
            with anyio.CancelScope(shield=True):
                try:
                    await send({"type": "http.response.body", "body": final, "more_body": False})
                except OSError:
                    pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.on_close(completed)
