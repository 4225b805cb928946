"""The HTTP side: one pooled client per upstream tier, with retries under a total deadline."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from server import metrics
from server.delivery import Delivery
from server.http_client import (
    ConnectionPool,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from server.relay import ERROR_OBJECT, EVENT_SEPARATOR, data_fields, error_of, json_value
from server.settings import Settings, UpstreamSettings

log = logging.getLogger("routegate.upstream")
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_T = TypeVar("_T")
# One try: (failure reason or None, whether it timed out, Retry-After seconds, what came back).
_Outcome = tuple[str | None, bool, float | None, _T | None]
# failures a second try would only repeat
NOT_RETRIED = frozenset({"too_large", "http_auth", "http_not_found", "http_redirect", "stream_ignored", "not_event_stream"})
REDACTED = b"[redacted]"
#: a key this long is blanked out of answers too; a shorter one (``ollama``, ``EMPTY``) is a word an
#: answer may hold, and only error bodies and events are searched for it
ANSWER_SECRET_CHARS = 20
#: a stream's first event (a ``data:`` line): what commits it to the client, ending retries and fallback
_FIRST_EVENT = re.compile(rb"(?:^(?:\xef\xbb\xbf)?|[\r\n])data[:\r\n]")  # a data line (after a BOM)
#: comments held before the first event at most (and ROUTEGATE_STREAM_HOLD_SECONDS): then the stream is relayed as it is
MAX_HELD_BYTES = 64 * 1024


class UpstreamFailure(Exception):
    """Every try of one tier failed; ``timeout`` tells 504 from 502, ``response`` holds a last 429."""

    def __init__(self, tier: str, reason: str, *, timeout: bool = False, response: CompletedResponse | None = None):
        super().__init__(f"{tier} upstream failed: {reason}")
        self.tier = tier
        self.reason = reason
        self.timeout = timeout
        self.response = response


@dataclass
class StreamStart:
    """A 2xx streamed answer whose first event has arrived (``first_chunk``: the bytes up to it,
    comments held before it included); ``chunks`` yields the rest."""

    response: UpstreamResponse
    chunks: AsyncIterator[bytes]
    first_chunk: bytes
    ttfb: float
    client_error: int | None = None  # the first event is the upstream's error naming the client's mistake: its status


@dataclass
class CompletedResponse:
    """A non-streamed upstream answer, read whole."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    answer: object = None  # a 2xx body's JSON value, parsed once here for every reader after


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Parse ``Retry-After`` (seconds or an HTTP date); None when absent or unreadable."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (ValueError, TypeError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def status_failure(response: UpstreamResponse) -> tuple[str | None, float | None]:
    """Why an upstream status counts as a failure (None: an answer to relay) and its Retry-After."""
    if response.status_code in (401, 403):  # the upstream refused routegate's own key: not the client's error
        return "http_auth", None
    if response.status_code == 404:  # routegate names the model and the URL: the tier is misconfigured
        return "http_not_found", None
    if response.status_code == 429:
        return "http_429", retry_after_seconds(response.headers)
    if response.status_code in RETRYABLE_STATUSES:
        return "http_5xx", retry_after_seconds(response.headers)
    if response.status_code >= 500:
        return "http_5xx", None
    if 300 <= response.status_code < 400:  # not followed: an upstream URL that redirects is misconfigured
        return "http_redirect", None
    return None, None


def _encoded(headers: Mapping[str, str]) -> bool:
    """Whether the body comes compressed (routegate asks for ``identity``): not relayable as events."""
    return headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")


def media_type(content_type: str) -> str:
    """A ``content-type`` value without its parameters, in lower case."""
    return content_type.split(";")[0].strip().lower()


class Upstream:
    """An OpenAI-compatible upstream: its model, prices and a keep-alive connection pool."""

    def __init__(self, tier: str, upstream: UpstreamSettings, settings: Settings) -> None:
        self.tier = tier
        self.model = upstream.model
        self.prices = (upstream.input_price, upstream.output_price)
        self.max_response_bytes = settings.max_response_bytes
        self.refuses_stream_options = False  # set once it answered 400 to the include_usage routegate added
        self.base_url = upstream.base_url
        self._url = f"{upstream.base_url}/chat/completions"
        # identity: bodies are relayed byte for byte and read for usage, so they must not be compressed
        self._headers = {"content-type": "application/json", "accept-encoding": "identity", "user-agent": "routegate"}
        self._secrets: tuple[bytes, ...] = ()  # the key as sent, and as a JSON string may spell it ("\/" for "/")
        self._answer_secrets: tuple[bytes, ...] = ()  # those blanked out of answers too
        if upstream.api_key is not None:
            key = upstream.api_key.get_secret_value()
            self._headers["authorization"] = f"Bearer {key}"
            self._secrets = tuple({key.encode(), json.dumps(key)[1:-1].replace("/", "\\/").encode()} - {b""})
            self._answer_secrets = self._secrets if len(key) >= ANSWER_SECRET_CHARS else ()
        self._pool = ConnectionPool(settings.max_connections, settings.connect_timeout, settings.read_timeout)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._pool.aclose()

    async def open_stream(self, body: bytes, request_id: str, delivery: Delivery) -> UpstreamResponse:
        """Send the request, followed by ``delivery``, and return once the response headers arrived;
        the body is not read."""
        return await self._pool.post(self._url, {**self._headers, "x-request-id": request_id}, body, self.tier, delivery)

    @property
    def longest_secret(self) -> int:
        """Bytes of the longest spelling of this upstream's key (0 without one)."""
        return max(map(len, self._secrets), default=0)

    def redact(self, data: bytes) -> bytes:
        """``data`` with this upstream's key blanked out (upstream error bodies and events may quote it)."""
        return _blanked(data, self._secrets)

    def redact_answer(self, data: bytes) -> bytes:
        """An answer's ``data`` (a 2xx body, stream events) with the key blanked out: everywhere in an
        error object (``"error"``), elsewhere only a key of ``ANSWER_SECRET_CHARS`` or more, so that
        an answer about ``ollama`` is not changed by a key that reads ``ollama``."""
        return _blanked(data, self._secrets if b'"error"' in data else self._answer_secrets)


def _blanked(data: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """``data`` with each of ``secrets`` replaced by ``REDACTED``."""
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, REDACTED)
    return data


class Attempts:
    """Tries one upstream up to ``1 + retries`` times inside the request's total deadline."""

    def __init__(
        self, settings: Settings, deadline: float, on_try: Callable[[Delivery | None], None], on_spent: Callable[[int], None]
    ) -> None:
        self.retries = settings.retries
        self.backoff = settings.retry_backoff
        self.hold = settings.stream_hold_seconds
        self.deadline = deadline
        self._on_try = on_try  # told as each try starts (with its body's delivery) and fails (None)
        # told of a failed try the upstream worked on, and may bill (it timed out after sending, or its
        # answer was too large, not JSON or not a stream): the answer bytes that came
        self._on_spent = on_spent

    async def _pause(self, tier: str, reason: str, attempt: int, retry_after: float | None) -> bool:
        """Sleep before the next try; False when no try is left or the deadline would pass."""
        if attempt >= self.retries:
            return False
        delay = retry_after if retry_after is not None else self.backoff * (2**attempt)
        if time.monotonic() + delay >= self.deadline:
            return False
        metrics.UPSTREAM_RETRIES.labels(tier, reason).inc()
        await asyncio.sleep(delay)
        return True

    async def _retrying(self, upstream: Upstream, try_once: Callable[[Delivery], Awaitable[_Outcome[_T]]]) -> _T:
        """Call ``try_once`` until it succeeds, no try is left, or the deadline would pass."""
        attempt = 0
        while True:
            delivery = Delivery()
            self._on_try(delivery)
            reason, timeout, retry_after, result = await try_once(delivery)
            if reason is None:
                assert result is not None, "a try without a failure brings its result"
                return result
            self._on_try(None)
            metrics.UPSTREAM_ERRORS.labels(upstream.tier, reason).inc()
            if reason in NOT_RETRIED or not await self._pause(upstream.tier, reason, attempt, retry_after):
                # a 429 is relayed when nothing else answers
                last = result[0] if isinstance(result, tuple) else result
                relayed = last if reason == "http_429" and isinstance(last, CompletedResponse) else None
                raise UpstreamFailure(upstream.tier, reason, timeout=timeout, response=relayed)
            attempt += 1

    async def complete(self, upstream: Upstream, body: bytes, request_id: str) -> tuple[CompletedResponse, float]:
        """A non-streamed request: the upstream's answer (2xx or a relayable 4xx) and its TTFB."""
        return await self._retrying(upstream, lambda delivery: self._try_complete(upstream, body, request_id, delivery))

    async def _try_complete(
        self, upstream: Upstream, body: bytes, request_id: str, delivery: Delivery
    ) -> _Outcome[tuple[CompletedResponse, float]]:
        started = time.monotonic()
        remaining = self.deadline - started
        if remaining <= 0:
            return "timeout", True, None, None
        try:
            async with asyncio.timeout(remaining):
                response = await upstream.open_stream(body, request_id, delivery)
                try:
                    read = await read_at_most(response, upstream.max_response_bytes)
                finally:
                    await response.aclose()
                if read is None:
                    if response.is_success:  # an answer was made: at least this large
                        self._on_spent(upstream.max_response_bytes)
                    return "too_large", False, None, None
        except (UpstreamTimeout, TimeoutError) as error:
            log.debug("%s upstream timed out: %r", upstream.tier, error)
            self._spent_on_timeout(delivery)
            return "timeout", True, None, None
        except UpstreamConnectError as error:
            log.debug("%s upstream connect failed: %r", upstream.tier, error)
            return "connect", False, None, None
        except UpstreamError as error:
            log.debug("%s upstream protocol error: %r", upstream.tier, error)
            return "protocol", False, None, None
        body, first_byte_at = read
        completed = CompletedResponse(response.status_code, body, response.headers)
        result = (completed, (first_byte_at if first_byte_at is not None else time.monotonic()) - started)
        reason, retry_after = status_failure(response)
        if reason is None and response.is_success:
            completed.answer = json_value(body)
            if not isinstance(completed.answer, dict):
                reason = "invalid_response"
                self._on_spent(len(body))
            elif (own := _own_error(completed.answer)) is not None:  # a gateway upstream's error object in a 200
                reason = _error_failure(own, "invalid_response")
            elif not isinstance(completed.answer.get("choices"), list):  # {}, {"error": "..."}: no answer either
                reason = "invalid_response"
        return reason, False, retry_after, result

    def _spent_on_timeout(self, delivery: Delivery) -> None:
        """A timeout after the whole request was sent: the upstream may have answered it (and bill it)."""
        if delivery.whole:
            self._on_spent(0)

    async def stream(self, upstream: Upstream, body: bytes, request_id: str) -> StreamStart | CompletedResponse:
        """A streamed request: the open 2xx stream with its first chunk, or a relayable 4xx read whole.

        Failures before its first event are retried like non-streamed ones (comments before it
        are held: ``_held_start``); a 2xx that is not an event stream is ``not_event_stream``.
        """
        return await self._retrying(upstream, lambda delivery: self._try_stream(upstream, body, request_id, delivery))

    async def _try_stream(
        self, upstream: Upstream, body: bytes, request_id: str, delivery: Delivery
    ) -> _Outcome[StreamStart | CompletedResponse]:
        started = time.monotonic()
        remaining = self.deadline - started
        if remaining <= 0:
            return "timeout", True, None, None
        response: UpstreamResponse | None = None
        try:
            async with asyncio.timeout(remaining):
                response = await upstream.open_stream(body, request_id, delivery)
                if not response.is_success:
                    read = await read_at_most(response, upstream.max_response_bytes)
                    await response.aclose()
                    if read is None:
                        return "too_large", False, None, None
                    reason, retry_after = status_failure(response)
                    return reason, False, retry_after, CompletedResponse(response.status_code, read[0], response.headers)
                sent_type = media_type(response.headers.get("content-type", ""))
                if sent_type == "application/json":  # it ignored "stream": no events to relay
                    read = await read_at_most(response, upstream.max_response_bytes)  # a whole answer, billed
                    await response.aclose()
                    self._on_spent(upstream.max_response_bytes if read is None else len(read[0]))
                    return "stream_ignored", False, None, None
                if sent_type not in ("", "text/event-stream") or _encoded(response.headers):
                    await response.aclose()  # a page or a compressed body, not events: it would be so again
                    self._on_spent(0)
                    return "not_event_stream", False, None, None
                first, first_event = await _held_start(response, self.hold)
                if not first:
                    await response.aclose()
                    return "stream_cut", False, None, None
                own = _event_error(first_event) if first_event is not None else None
                failure = _error_failure(own, "stream_error") if own is not None else None
                if failure is not None:  # failed before its answer began: nothing reached the client
                    await response.aclose()
                    return failure, False, None, None
                chunks = response.aiter_raw()
        except (UpstreamTimeout, TimeoutError) as error:
            log.debug("%s upstream timed out: %r", upstream.tier, error)
            if response is not None:
                await response.aclose()
            self._spent_on_timeout(delivery)
            return "timeout", True, None, None
        except UpstreamConnectError as error:
            log.debug("%s upstream connect failed: %r", upstream.tier, error)
            return "connect", False, None, None
        except UpstreamError as error:
            log.debug("%s upstream protocol error: %r", upstream.tier, error)
            if response is not None:
                await response.aclose()
            return "protocol", False, None, None
        except asyncio.CancelledError:  # the client left: close the upstream connection too
            if response is not None:
                await response.aclose()
            raise
        client_error = None if own is None else client_error_status(own)
        return None, False, None, StreamStart(response, chunks, first, time.monotonic() - started, client_error)


async def _held_start(response: UpstreamResponse, hold_seconds: float) -> tuple[bytes, bytes | None]:
    """A stream's bytes up to the end of its first event (empty when it ends before any), and
    that event (None when the hold ended before it was whole): comments before it (keep-alives)
    do not commit the stream to the client, so a failure after them, or an error as that event,
    is still retried; for ``hold_seconds`` after the first byte at most (a load balancer's idle
    timeout must not fire meanwhile) and ``MAX_HELD_BYTES``."""
    held, hold_ends = b"", None
    while (event := _first_event(held)) is None and len(held) < MAX_HELD_BYTES:
        within = None if hold_ends is None else max(0.0, hold_ends - time.monotonic())
        chunk = await response.next_chunk(within)
        if chunk is None:  # held long enough: relayed as it is, the rest as it comes
            return held, None
        if not chunk:
            return b"", None
        held += chunk
        hold_ends = hold_ends or time.monotonic() + hold_seconds
    return held, event


def _first_event(held: bytes) -> bytes | None:
    """The first event with a data line, whole in ``held`` (up to its blank line); None before."""
    line = _FIRST_EVENT.search(held)
    end = EVENT_SEPARATOR.search(held, line.start()) if line is not None else None
    return held[line.start() : end.start()] if line is not None and end is not None else None


def _event_error(event: bytes) -> dict | None:
    """The error object of a stream's first event when it is an error of the upstream's own
    without choices, as gateways report a provider's failure; else None."""
    data = b"\n".join(data_fields(event.lstrip(b"\xef\xbb\xbf\r\n")))
    return _own_error(json_value(data) if ERROR_OBJECT.search(data) else None)  # most first events are no error: no parse


def _own_error(value: object) -> dict | None:
    """The error object of a parsed answer or event that reports the upstream's own failure (no
    choices beside it), as gateways report a provider's failure; else None."""
    return error_of(value) if isinstance(value, dict) and not value.get("choices") else None


def answer_error_status(answer: object) -> int | None:
    """The status a 2xx answer that is an error object of the upstream's own stands for (a
    client error, relayed as it came; a failure would have been retried); None for an answer."""
    own = _own_error(answer)
    return None if own is None else client_error_status(own)


def client_error_status(error: dict) -> int:
    """The 4xx an upstream's relayed error object names as its ``code`` or ``status``, else 400."""
    status = _status_of(error)
    return status if status is not None and 400 <= status < 500 else 400


def _error_failure(error: dict, retried_as: str) -> str | None:
    """The failure an upstream's own error object stands for: ``http_auth`` when it names 401/403
    (routegate's key, not the client's, was refused), ``retried_as`` when another try may go
    otherwise, None when it names the client's error (relayed as it came)."""
    if _status_of(error) in (401, 403):
        return "http_auth"
    return retried_as if _retryable(error) else None


def _retryable(error: dict) -> bool:
    """Whether an upstream's error event may go another way on another try: not one that names a
    client error (a 4xx other than 429 as its code or status, or an invalid request), which the
    client gets as it was sent."""
    status = _status_of(error)
    if status is not None and 400 <= status < 500 and status != 429:
        return False
    return error.get("type") != "invalid_request_error"


def _status_of(error: dict) -> int | None:
    """The HTTP status an upstream's error event names as its ``code`` or ``status``, if any."""
    return next((value for value in (error.get("code"), error.get("status")) if isinstance(value, int)), None)


async def read_at_most(response: UpstreamResponse, limit: int) -> tuple[bytes, float | None] | None:
    """The response's whole body and when its first byte arrived (``time.monotonic()``; None for
    an empty body), or None when it declares or passes more than ``limit`` bytes (nothing more is read)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size, first_byte_at = [], 0, None
    async for chunk in response.aiter_raw():
        if first_byte_at is None:
            first_byte_at = time.monotonic()
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks), first_byte_at
