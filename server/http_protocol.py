"""uvicorn's httptools HTTP/1.1 protocol with a cap on the size of a request's head, and
connections dropped at once when a response is left unfinished.

httptools buffers a request line and headers of any size (a 20 MB header is read whole), so a
client could make the process hold as much memory as it sends. Past ``max_header_bytes`` the
request is answered 431 with an OpenAI-style error and the connection closed.

A response the app leaves unfinished (a streaming client that stopped reading was let go, see
``server.relay.SendWatch``) makes uvicorn close the connection, which waits for the client to read
what is buffered: a client that never reads would keep it, and its buffer, open. It is aborted.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_HEADER_BYTES = 64 * 1024


class BoundedHeadersProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses request heads over ``max_header_bytes`` (set per process)."""

    max_header_bytes = DEFAULT_MAX_HEADER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = False
        self._received = 0  # bytes received since this request began: bounds what httptools buffers
        self._head_size = 0  # the exact size of the parsed request line and headers
        self._refused = False

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        running = set(self.tasks)
        super()._start_asgi_task(cycle, app)
        for task in self.tasks - running:
            task.add_done_callback(lambda _: self._abort_if_unfinished(cycle))

    def _abort_if_unfinished(self, cycle: Any) -> None:
        if cycle.response_started and not cycle.response_complete and not cycle.disconnected:
            self.transport.abort()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._received = self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        if self._head_size > self.max_header_bytes:
            self._refused = True  # answered once the parser returns; the app never sees it
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._reading_head:
            self._received += len(data)
        if self._refused or (self._reading_head and self._received > self.max_header_bytes):
            self._refuse_head()

    def _refuse_head(self) -> None:
        self._reading_head = False
        self._refused = True
        message = f"Request headers are larger than the {self.max_header_bytes} bytes allowed."
        error = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "headers_too_large"}}
        body = json.dumps(error).encode()
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
        )
        if not self.transport.is_closing():
            self.transport.write(head + body)
            self.transport.close()
