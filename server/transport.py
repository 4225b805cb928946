"""An httpx transport on aiohttp's connection pool.

httpx's own pool (httpcore 1.0) re-scans every pooled connection on each request, which made the
upstream hop cost about 1-2.5 ms of CPU per request at 32-128 concurrent requests here, against
about 0.1-0.2 ms for aiohttp (numbers and the command: README, "Speed"). routegate keeps httpx's
client API (requests, responses, timeouts, exceptions) and swaps the transport underneath.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx

# Hop-by-hop or computed headers that aiohttp sets itself.
_SKIPPED_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


class _AiohttpStream(httpx.AsyncByteStream):
    """A response body read from aiohttp, with aiohttp's errors turned into httpx's."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as error:
            raise httpx.ReadTimeout(str(error) or "read timeout") from error
        except aiohttp.ClientError as error:
            raise httpx.RemoteProtocolError(str(error) or type(error).__name__) from error

    async def aclose(self) -> None:
        # A body read to the end hands its connection back to the pool; otherwise it is closed,
        # which also tells the upstream that nobody listens any more.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests over one aiohttp connection pool (HTTP/1.1, keep-alive)."""

    def __init__(self, max_connections: int, keepalive_expiry: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _session_in_loop(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the running event loop
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=self._keepalive_expiry
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.get("pool"), sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read")
        )
        headers = [(name, value) for name, value in request.headers.multi_items() if name not in _SKIPPED_HEADERS]
        try:
            response = await self._session_in_loop().request(
                request.method,
                str(request.url),
                headers=headers,
                data=request.content,
                timeout=timeout,
                allow_redirects=False,
                skip_auto_headers=("accept-encoding", "user-agent"),
            )
        except aiohttp.ConnectionTimeoutError as error:
            raise httpx.ConnectTimeout(str(error) or "connect timeout", request=request) from error
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as error:
            raise httpx.ReadTimeout(str(error) or "read timeout", request=request) from error
        except aiohttp.ClientConnectorError as error:
            raise httpx.ConnectError(str(error), request=request) from error
        except aiohttp.ClientError as error:
            raise httpx.RemoteProtocolError(str(error) or type(error).__name__, request=request) from error
        return httpx.Response(
            status_code=response.status,
            headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.raw_headers],
            stream=_AiohttpStream(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
