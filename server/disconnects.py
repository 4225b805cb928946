"""Cancel a request's work when its client goes away before the answer is ready.

Inside ``cancelled_on_disconnect(request)``, the serving task is cancelled as soon as the
client's connection closes (the work in hand, e.g. a non-streamed upstream request, is then
abandoned and its upstream connection closed); leaving the block raises ClientGone instead of
the cancellation. The request body must have been read before the block is entered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import Request


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


@asynccontextmanager
async def cancelled_on_disconnect(request: Request) -> AsyncIterator[None]:
    """Run the block; cancel it and raise ClientGone if the client disconnects meanwhile."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch(), name="disconnect-watch")
    try:
        yield
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()
