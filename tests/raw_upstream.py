"""An upstream that answers every request with the bytes it is given, as no well-behaved HTTP
server would send them (header values with control characters, say): for what routegate does
with an upstream's malformed response."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RawUpstream:
    """Serves ``answer`` (set it before a request) to every request on 127.0.0.1, then closes."""

    def __init__(self) -> None:
        self.answer = b""
        self.requests = 0
        upstream = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = self.rfile.readline()
                    if not line:
                        return
                    head += line
                length = next(
                    (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
                    0,
                )
                self.rfile.read(length)
                upstream.requests += 1
                self.wfile.write(upstream.answer)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @contextmanager
    def running(self) -> Iterator[RawUpstream]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def raw_response(status_line: bytes, headers: list[bytes], body: bytes) -> bytes:
    """An HTTP/1.1 response, the headers as given, closed after its body."""
    lines = [status_line, *headers, b"content-length: " + str(len(body)).encode(), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
