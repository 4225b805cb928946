"""The relay step: the client's response to an upstream exchange, streamed or whole. Each
reply reports its outcome once through ``finish``: at once for a whole answer or an error,
when the stream closes for a streamed one. An answer comes with the usage the upstream reported
and, for when it reported none, a token estimate (server/token_estimate.py)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from starlette.responses import Response

from server import metrics
from server.errors import APIError
from server.forwarding import Exchange
from server.http_client import UpstreamError, UpstreamTimeout
from server.metrics import reported_tokens
from server.recording import Outcome
from server.relay import EventGate, RelayResponse, StreamWatcher, WholeResponse, json_value
from server.shutdown import DRAIN
from server.token_estimate import answer_tokens
from server.upstream import (
    CompletedResponse,
    StreamStart,
    Upstream,
    UpstreamFailure,
    answer_error_status,
    media_type,
)

#: the upstream's headers a client may use, by the name each is sent on as: when to retry, how long
#: the upstream worked, and its own request id (for its operator's support). Not its rate-limit
#: headers: they speak of routegate's key, which every client shares.
_RELAYED_HEADERS = {
    "retry-after": "retry-after",
    "retry-after-ms": "retry-after-ms",
    "openai-processing-ms": "openai-processing-ms",
    "x-request-id": "x-upstream-request-id",
}
#: sent with every relayed answer: a browser must not read an answer as anything but its content-type
_NO_SNIFFING = {"x-content-type-options": "nosniff"}
MAX_RELAYED_MESSAGE = 500  # characters of another server's error text kept in the OpenAI-style message
Finish = Callable[[Outcome], Awaitable[None]]
PromptTokens = Callable[[], int]


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # not allowed in a header value (a tab is)


def _relayed_headers(upstream_headers: Mapping[str, str]) -> dict[str, str]:
    """``_RELAYED_HEADERS`` that the upstream sent, each under its name to the client; one that
    cannot be sent on is left out."""
    return {
        sent: value
        for name, sent in _RELAYED_HEADERS.items()
        if name in upstream_headers and (value := _sendable(upstream_headers[name])) is not None
    }


def _sendable(value: str) -> str | None:
    """An upstream's header value when it can be sent on: Latin-1 without control characters,
    which the HTTP server would refuse by dropping the connection. None for one holding either (a
    byte that its client decoded as a stand-in character: obs-text, as a charset's Latin-1 letter)."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return None
    return None if _CONTROL.search(value) else value


async def reply(
    exchange: Exchange, started: float, finish: Finish, prompt_tokens: PromptTokens, send_timeout: float | None = None
) -> Response:
    """The response to send the client for ``exchange``; ``prompt_tokens`` estimates the request's
    prompt tokens, called only for an answer without usage; a stream whose client takes over
    ``send_timeout`` seconds to accept a chunk ends as if the client had left, and a whole answer's
    connection is aborted."""
    headers = {**exchange.decision.headers(exchange.upstream.model), **exchange.headers}
    result = exchange.result
    if isinstance(result, StreamStart):
        return _relay_stream(exchange, result, headers, started, finish, prompt_tokens, send_timeout)
    if isinstance(result, CompletedResponse):
        return await _whole(exchange, result, headers, started, finish, prompt_tokens, send_timeout)
    if result.response is not None:  # a 429 after every try: the client should back off too
        return await _whole(exchange, result.response, headers, started, finish, prompt_tokens, send_timeout)
    error = _failure_error(exchange.upstream, result)
    response = error.to_response(headers)
    await finish(Outcome(exchange.decision, exchange.upstream, error.status, started, exchange.sent_at))
    return response


def _failure_error(upstream: Upstream, failure: UpstreamFailure) -> APIError:
    if failure.timeout:
        return APIError(504, f"The {upstream.tier} upstream timed out.", type="upstream_error", code="upstream_timeout")
    if failure.reason == "http_auth":
        message = (
            f"The {upstream.tier} upstream refused routegate's credentials for it (401/403); the operator must check its key."
        )
        return APIError(502, message, type="upstream_error", code="upstream_auth_error")
    if failure.reason == "http_not_found":
        message = f"The {upstream.tier} upstream answered 404 Not Found; the operator must check its model name and base URL."
        return APIError(502, message, type="upstream_error", code="upstream_error")
    if failure.reason == "http_redirect":
        message = f"The {upstream.tier} upstream answered with a redirect (3xx); the operator must check its base URL."
        return APIError(502, message, type="upstream_error", code="upstream_error")
    return APIError(502, f"The {upstream.tier} upstream failed ({failure.reason}).", type="upstream_error", code="upstream_error")


async def _whole(
    exchange: Exchange,
    result: CompletedResponse,
    headers: dict[str, str],
    started: float,
    finish: Finish,
    prompt_tokens: PromptTokens,
    send_timeout: float | None,
) -> Response:
    upstream = exchange.upstream
    usage = estimate = None
    status = result.status  # what the upstream's answer stands for: its error object's 4xx in a 200
    if 200 <= result.status < 300:
        answer = result.answer
        status = answer_error_status(answer) or status
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if reported_tokens(usage) is None and status < 300:
            estimate = (prompt_tokens(), answer_tokens(answer))
    headers.update(_relayed_headers(result.headers), **_NO_SNIFFING)
    # every whole answer is JSON (an answer, an OpenAI-style error, or the error that replaces another body):
    # the upstream's own spelling of that type is kept, any other type (text/html) is not relayed
    sent_type = _sendable(result.headers.get("content-type", "")) or ""
    headers["content-type"] = sent_type if media_type(sent_type) == "application/json" else "application/json"
    # an error body may quote the key, also as an answer's error object in a 200
    body = upstream.redact_answer(result.body) if result.status < 300 else upstream.redact(result.body)
    if status >= 400:
        parsed = json_value(body)
        if not _is_openai_error(parsed):  # an HTML page from a load balancer, FastAPI's {"detail": ...}: the SDK needs one
            message = f"The {upstream.tier} upstream answered {result.status} without an OpenAI-style error body"
            said = _message_in(parsed)
            message += f": {said[:MAX_RELAYED_MESSAGE]}" if said else "."
            body = json.dumps(APIError(status, message, type="upstream_error", code="upstream_error").body()).encode()
            headers["content-type"] = "application/json"
    # an error object in a 2xx goes out with the 4xx it names: an SDK raises it rather than read an answer without choices
    response = WholeResponse(body, status, headers, send_timeout)
    await finish(Outcome(exchange.decision, upstream, status, started, exchange.sent_at, usage, status, estimate))  # once built
    return response


def _is_openai_error(parsed: object) -> bool:
    """Whether a parsed body is ``{"error": {"message": ...}}``, what OpenAI SDKs read."""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def _message_in(parsed: object) -> str | None:
    """The text of another server's parsed JSON error (``detail``, ``message`` or a string ``error``;
    of a FastAPI validation error's list of details, the first one's place and message)."""
    if not isinstance(parsed, dict):
        return None
    details = parsed.get("detail")
    if isinstance(details, list) and details and isinstance(first := details[0], dict) and isinstance(first.get("msg"), str):
        place = first.get("loc")
        where = ".".join(str(part) for part in place) if isinstance(place, list) else ""
        return f"{where}: {first['msg']}" if where else first["msg"]
    return next((value for key in ("detail", "message", "error") if isinstance(value := parsed.get(key), str)), None)


def _relay_stream(
    exchange: Exchange,
    start: StreamStart,
    headers: dict[str, str],
    started: float,
    finish: Finish,
    prompt_tokens: PromptTokens,
    send_timeout: float | None,
) -> RelayResponse:
    upstream = exchange.upstream
    watcher = StreamWatcher(choices=exchange.choices)
    events = EventGate(
        exchange.hide_usage, redact=upstream.redact_answer, hold=upstream.longest_secret, redact_pieces=upstream.redact
    )

    def to_client(chunk: bytes) -> bytes:
        watcher.feed(chunk)
        return events.feed(chunk)

    async def chunks() -> AsyncGenerator[bytes, None]:
        if first := to_client(start.first_chunk):
            yield first
        broken: UpstreamError | None = None
        try:
            async for chunk in start.chunks:
                if part := to_client(chunk):
                    yield part
        except UpstreamError as error:
            broken = error
        if not (watcher.complete or watcher.failed):
            watcher.cut = "timeout" if isinstance(broken, UpstreamTimeout) else "stream_cut"
            yield events.cut_off() + _stream_error(upstream, watcher.cut)
        elif rest := events.cut_off() if broken or not watcher.complete else events.flush():  # never half an event
            yield rest  # (the client has the upstream's own error event: no second one)

    relayed = chunks()
    shut_down = False  # the shutdown's grace period ran out: the client got a 503 shutting_down event

    def on_cancel() -> bytes | None:
        nonlocal shut_down
        final = _shutdown_event()
        shut_down = final is not None
        return None if final is None else events.cut_off() + final

    async def on_close(completed: bool) -> None:
        await relayed.aclose()
        await start.response.aclose()
        if start.client_error is not None:  # the client's mistake, relayed as the upstream's first event: no answer
            status = upstream_status = start.client_error
            estimate = None
        else:
            if watcher.failed and watcher.cut is None:  # an error event of the upstream's own, which the client has
                watcher.cut = "stream_cut"  # not an answer
                metrics.UPSTREAM_ERRORS.labels(upstream.tier, watcher.cut).inc()
            status = _stream_status(watcher.cut, completed, shut_down)
            estimate = (prompt_tokens(), watcher.choice_chunks) if reported_tokens(watcher.usage) is None else None
            upstream_status = start.response.status_code
        await finish(
            Outcome(exchange.decision, upstream, status, started, exchange.sent_at, watcher.usage, upstream_status, estimate)
        )

    stream_type = _sendable(start.response.headers.get("content-type", "")) or "text/event-stream"
    return RelayResponse(
        relayed,
        {**headers, **_relayed_headers(start.response.headers), **_NO_SNIFFING},
        on_close,
        media_type=stream_type,
        on_cancel=on_cancel,
        watcher=watcher,
        send_timeout=send_timeout,
    )


def _stream_status(cut: str | None, completed: bool, shut_down: bool) -> int:
    """The status a relayed stream is counted as: 502/504 for an upstream that cut it, 200 when
    the client had it all, 503 when the shutdown cut it, 499 when the client left."""
    if cut:
        return 504 if cut == "timeout" else 502
    if completed:
        return 200
    return 503 if shut_down else 499


def _stream_error(upstream: Upstream, reason: str) -> bytes:
    metrics.UPSTREAM_ERRORS.labels(upstream.tier, reason).inc()
    message = f"The {upstream.tier} upstream stream ended early ({reason})."
    return APIError(502, message, type="upstream_error", code=reason).to_sse()


def _shutdown_event() -> bytes | None:
    """The final SSE event of a stream cut because the shutdown grace period ran out."""
    if not DRAIN.stopping:
        return None
    message = "routegate shut down before this stream finished."
    return APIError(503, message, type="server_error", code="shutting_down").to_sse()
