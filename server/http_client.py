"""routegate's one HTTP client for upstream calls: a keep-alive aiohttp connection pool per
upstream, and its errors as routegate's own.

aiohttp's pool was picked over httpx's (httpcore), which re-scans every pooled connection on each
request: 1.6-2.6 ms of CPU per request at 32-128 concurrent requests against 0.1-0.17 ms for
aiohttp's (docs/benchmarks.md); the fault matrix (tests/test_faults.py, tests/test_disconnects.py)
runs on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import aiohttp

from server import metrics
from server.delivery import TRYING, Delivery, DeliveryConnector


class UpstreamError(Exception):
    """The upstream could not be talked to: no HTTP answer, or its body broke off."""


class UpstreamTimeout(UpstreamError):
    """Connecting, or waiting for the next bytes, took longer than allowed."""


class UpstreamConnectTimeout(UpstreamTimeout):
    """Connecting took longer than allowed: the upstream never had the request."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made."""


class UpstreamProtocolError(UpstreamError):
    """The connection broke or the answer was not valid HTTP."""


@contextmanager
def _read_errors() -> Iterator[None]:
    """aiohttp's errors while reading a body, as routegate's: a timeout, or a broken protocol."""
    try:
        yield
    except (aiohttp.ServerTimeoutError, TimeoutError) as error:
        raise UpstreamTimeout(str(error) or "read timeout") from error
    except aiohttp.ClientError as error:
        raise UpstreamProtocolError(str(error) or type(error).__name__) from error


class UpstreamResponse:
    """An upstream answer whose status and headers arrived; read its body with ``aiter_raw`` or
    ``aread`` and always ``aclose`` it. Counted in ``routegate_upstream_responses_open`` while open."""

    def __init__(self, response: aiohttp.ClientResponse, tier: str) -> None:
        self._response = response
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers  # case-insensitive
        self._open = metrics.UPSTREAM_RESPONSES_OPEN.labels(tier)
        self._closed = False
        self._open.inc()

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive."""
        with _read_errors():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def next_chunk(self, within: float | None = None) -> bytes | None:
        """The body's next bytes (``b""`` at its end), or None when none arrive within ``within``
        seconds: then nothing was read, and ``aiter_raw`` goes on from there."""
        hold = asyncio.timeout(within)  # not wait_for: on Python 3.11 it can swallow the caller's cancellation
        with _read_errors():
            try:
                async with hold:
                    return await self._response.content.readany()
            except TimeoutError as error:
                if hold.expired() and not isinstance(error, aiohttp.ServerTimeoutError):
                    return None
                raise

    async def aread(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        """A body read to the end hands its connection back to the pool; otherwise the connection
        is closed, which also tells the upstream that nobody listens any more."""
        if not self._closed:
            self._closed = True
            self._open.dec()
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class ConnectionPool:
    """Up to ``max_connections`` keep-alive HTTP/1.1 connections, created in the running loop on first use."""

    def __init__(self, max_connections: int, connect_timeout: float, read_timeout: float, keepalive_expiry: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def _session_in_loop(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = DeliveryConnector(limit=self._max_connections, limit_per_host=0, keepalive_timeout=self._keepalive_expiry)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)
        return self._session

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, tier: str, delivery: Delivery) -> UpstreamResponse:
        """Send ``body``, followed by ``delivery``; return once the response headers arrived. A try
        that ends before then settles how much of the body the upstream has (``Delivery.cut``)."""
        trying = TRYING.set(delivery)
        try:
            return UpstreamResponse(await self._send(url, headers, body, delivery), tier)
        except BaseException:  # a failure, a timeout, or the client left (cancelled)
            delivery.cut()
            raise
        finally:
            TRYING.reset(trying)

    async def _send(self, url: str, headers: Mapping[str, str], body: bytes, delivery: Delivery) -> aiohttp.ClientResponse:
        try:
            return await self._session_in_loop().post(
                url,
                headers={**headers, "content-length": str(len(body))},  # not chunked: the size is known
                data=delivery.pieces(body),
                timeout=self._timeout,
                allow_redirects=False,
                skip_auto_headers=("accept-encoding", "user-agent"),
            )
        except aiohttp.ConnectionTimeoutError as error:
            raise UpstreamConnectTimeout(str(error) or "connect timeout") from error
        except (aiohttp.ServerTimeoutError, TimeoutError) as error:
            raise UpstreamTimeout(str(error) or "read timeout") from error
        except aiohttp.ClientConnectorError as error:
            raise UpstreamConnectError(str(error)) from error
        except aiohttp.ClientError as error:
            raise UpstreamProtocolError(str(error) or type(error).__name__) from error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
