"""uvicorn's httptools HTTP/1.1 protocol with a cap on the size of a request's head, and
connections dropped at once when a response is left unfinished.

httptools buffers a request line and headers of any size (a 20 MB header is read whole), so a
client could make the process hold as much memory as it sends. Past ``max_header_bytes`` the
request is answered 431 with an OpenAI-style error and the connection closed.

A connection is the app's only from a complete request head to the end of its response. Outside
that (a new connection, a head arriving, a body still trickling in after its answer) the client
has ``head_timeout`` seconds from its first byte (or from connecting) to finish a head; then it is
answered 408 (mid-head) or closed. uvicorn's own keep-alive timer stops at the first byte of the
next request, so a client sending one byte a minute would otherwise hold its connection forever.

A request httptools cannot parse (``Content-Length: abc``, a non-ASCII byte in the path) is
answered 400 with an OpenAI-style error, as everything else is, and counted rather than logged
(uvicorn's warning line for each would let a client fill the log). Each refusal here counts in
``routegate_http_refused_total``.

A response the app leaves unfinished (a streaming client that stopped reading was let go, see
``server.relay.SendWatch``) makes uvicorn close the connection, which waits for the client to read
what is buffered: a client that never reads would keep it, and its buffer, open. It is aborted.

Requests sent one behind another without waiting for the answers (pipelined) each hold a request
object until their turn: past ``MAX_PIPELINED`` waiting on one connection it is aborted (counted
``pipelined``), so that what a client that does not read its answers makes the process hold is bounded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server import metrics
from server.errors import APIError

INVALID_REQUEST_WARNING = "Invalid HTTP request received."  # uvicorn's, for each; counted instead
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_HEAD_TIMEOUT = 20.0
#: seconds a connection whose request is on its way when the server stops has to send its head
SHUTDOWN_HEAD_GRACE = 2.0
#: a connection accepted this recently, no byte received yet, counts as one whose request is on its way
JUST_ACCEPTED = 1.0
#: requests waiting behind the one being answered on one connection; more abort it (clients that
#: pipeline at all send a few)
MAX_PIPELINED = 16


class WithoutInvalidRequestWarnings(logging.Filter):
    """Drops uvicorn's warning line for each request that is not HTTP (counted in metrics instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != INVALID_REQUEST_WARNING


logging.getLogger("uvicorn.error").addFilter(WithoutInvalidRequestWarnings())


class BoundedHeadersProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses request heads over ``max_header_bytes`` or slower than
    ``head_timeout`` (both set per process)."""

    max_header_bytes = DEFAULT_MAX_HEADER_BYTES
    head_timeout = DEFAULT_HEAD_TIMEOUT

    def _unsupported_upgrade_warning(self) -> None:
        """Nothing: uvicorn logs two warnings for each request asking to upgrade (h2c, WebSocket),
        which routegate answers as plain HTTP; a client sending them in a loop would fill the log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = False
        self._received = 0  # bytes received since this request began: bounds what httptools buffers
        self._head_size = 0  # the exact size of the parsed request line and headers
        self._refused = False
        self._head_deadline: asyncio.TimerHandle | None = None
        self._upgraded = False
        self._requests_begun = 0
        self._stopping = False
        self._accepted_at = 0.0
        self._running: Any = None  # the cycle being answered; uvicorn's ``cycle`` is the last one parsed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._accepted_at = self.loop.time()
        self._start_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Also tell the request being answered, when pipelined ones were parsed behind it (uvicorn
        tells only the last parsed): its handler then sees its client gone (499, the upstream
        request cancelled) instead of answering a closed connection."""
        self._stop_head_deadline()
        running = self._running
        if running is not None and running is not self.cycle and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def shutdown(self) -> None:
        """The server stops (a drained process, a retired worker). uvicorn closes every connection
        that is not being answered, also one accepted a moment ago whose request is on its way,
        which its client then sees cut without an answer; such a connection (no request begun yet,
        or a head coming in) has SHUTDOWN_HEAD_GRACE seconds for its request, which is answered
        and the connection closed. An idle connection between requests is closed at once."""
        self._stopping = True
        # within what is left of the server's own graceful timeout: past it, the app is shut down
        grace = min(SHUTDOWN_HEAD_GRACE, (self.config.timeout_graceful_shutdown or 0.0) - 0.2)
        just_accepted = self._requests_begun == 0 and self.loop.time() - self._accepted_at < JUST_ACCEPTED
        if grace > 0 and not self._answering() and (just_accepted or self._reading_head):
            self.loop.call_later(grace, self._close_unless_answering)
            return
        super().shutdown()

    def _close_unless_answering(self) -> None:
        if not self._answering() and not self.transport.is_closing():
            self.transport.close()

    def _start_head_deadline(self) -> None:
        if self._head_deadline is None:  # a trickling client does not push its deadline back
            self._head_deadline = self.loop.call_later(self.head_timeout, self._head_deadline_passed)

    def _stop_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self._answering():  # a pipelined head behind a response: looked at again after it
            self._start_head_deadline()
            return
        if self._reading_head:
            self._refused = True
            metrics.HTTP_REFUSED.labels("head_timeout").inc()
            message = f"The request head was not received within {self.head_timeout:g} seconds."
            self.transport.write(APIError(408, message, code="request_timeout").to_http())
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools cannot parse, as an OpenAI-style error; while an
        earlier request is being answered (the bytes came pipelined behind it) the connection is only
        closed: the error would be taken for that request's answer, or garble it."""
        self._refused = True
        self._stop_head_deadline()
        metrics.HTTP_REFUSED.labels("invalid_http").inc()
        if not self._answering():
            message = "The request is not valid HTTP/1.1."
            self.transport.write(APIError(400, message, code="invalid_http").to_http())
        self.transport.close()

    def handle_websocket_upgrade(self) -> None:
        self._upgraded = True  # the transport is the WebSocket protocol's from here
        self._stop_head_deadline()
        super().handle_websocket_upgrade()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        running = set(self.tasks)
        super()._start_asgi_task(cycle, app)
        for task in self.tasks - running:
            task.add_done_callback(lambda _: self._abort_if_unfinished(cycle))

    def _abort_if_unfinished(self, cycle: Any) -> None:
        if cycle.response_started and not cycle.response_complete and not cycle.disconnected:
            self.transport.abort()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._requests_begun += 1
        self._reading_head = True
        self._received = self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:  # more heads in the bytes that made this connection's refusal
            return
        self._reading_head = False
        self._stop_head_deadline()  # the app's from here: its body read has its own timeout
        if self._head_size > self.max_header_bytes:
            self._refused = True  # answered once the parser returns; the app never sees it
            return
        super().on_headers_complete()
        if len(self.pipeline) > MAX_PIPELINED:  # each waiting request holds its objects until its turn
            self._refused = True
            metrics.HTTP_REFUSED.labels("pipelined").inc()
            self.transport.abort()
            return
        if self._stopping and self.cycle is not None:  # answered, then closed: the server is stopping
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        begun = self._requests_begun
        super().data_received(data)
        if self._reading_head:  # a head that began in these bytes has what the parser took of it, not the
            # bytes before it (a pipelined request's body)
            self._received = self._head_size if self._requests_begun != begun else self._received + len(data)
        if self._upgraded:
            return
        if self._refused or (self._reading_head and self._received > self.max_header_bytes):
            self._refuse_head()
        elif self._reading_head or not self._answering():
            self._start_head_deadline()

    def _refuse_head(self) -> None:
        """Answer 431 and close; behind a request being answered (a pipelined head) only close: the
        error would be taken for that request's answer, or garble it."""
        self._reading_head = False
        self._refused = True
        message = f"Request headers are larger than the {self.max_header_bytes} bytes allowed."
        if not self.transport.is_closing():
            metrics.HTTP_REFUSED.labels("headers_too_large").inc()
            if not self._answering():
                self.transport.write(APIError(431, message, code="headers_too_large").to_http())
            self.transport.close()
