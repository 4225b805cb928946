"""``/metrics`` on its own port (ROUTEGATE_METRICS_PORT), so that the API port need not expose
it: a small threaded HTTP server in the serving process (the parent of the workers, which reads
their shared metrics directory), with the same optional Bearer key as the API port's /metrics.

A thread serves each connection, so connections are bounded: at most ``MAX_CONNECTIONS`` at once
(more get a 503 and are closed), each closed ``timeout`` seconds after it was accepted, however
slowly it sends (one request per connection: HTTP/1.0)."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import SecretStr
from starlette.datastructures import Headers

from server.client_keys import bearer_matches
from server.errors import APIError
from server.metrics import render_metrics

log = logging.getLogger("routegate.metrics")

#: connections the metrics port serves at once (Prometheus needs one per scrape)
MAX_CONNECTIONS = 16
_BUSY = APIError(503, "The metrics port is serving its limit of connections; retry.", type="server_error", code="overloaded")


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them, each cut ``deadline`` seconds
    after it was accepted."""

    daemon_threads = True
    request_queue_size = 64  # the listen backlog: socketserver's 5 drops connections a burst of scrapes opens

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int, deadline: float):
        if ":" in address[0]:  # an IPv6 address ("::", "::1"): socketserver's default family is IPv4
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadline = deadline
        self._open: dict[socket.socket, float] = {}  # connection -> when it is cut; at most max_connections
        self._lock = threading.Lock()
        self._closed = threading.Event()  # before binding: a failed bind calls server_close
        super().__init__(address, handler)
        threading.Thread(target=self._cut_late_connections, name="metrics-deadlines", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        with self._lock:
            self._open[request] = time.monotonic() + self._deadline
        try:
            super().process_request(request, client_address)  # its thread ends with shutdown_request
        except BaseException:  # no thread to serve it
            self.shutdown_request(request)
            raise

    def shutdown_request(self, request: Any) -> None:
        """Give the connection's place back, then close it: the deadline thread never sees it closed."""
        with self._lock:
            held = self._open.pop(request, None) is not None
        if held:
            self._slots.release()
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection cut by its client or at its deadline is no error worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def _cut_late_connections(self) -> None:
        while not self._closed.wait(min(1.0, self._deadline / 4)):
            now = time.monotonic()
            with self._lock:  # held while cutting: a connection still listed is not closed yet
                for connection, cut_at in self._open.items():
                    if cut_at < now:
                        try:
                            connection.shutdown(socket.SHUT_RDWR)  # its thread's read or write ends, and the thread
                        except OSError:
                            pass


def _refuse(connection: socket.socket) -> None:
    """A 503 to a connection past the limit, without waiting on a client that does not read; what
    the client sent is read off first, so that closing sends no reset in place of the answer."""
    try:
        connection.setblocking(False)
        connection.send(_BUSY.to_http())
        connection.shutdown(socket.SHUT_WR)
        while connection.recv(65536):
            pass
    except OSError:
        pass


def start_metrics_server(host: str, port: int, key: SecretStr | None, timeout: float) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` on ``host:port`` from a daemon thread; the server, for shutdown. A
    connection is closed ``timeout`` seconds after it was accepted (it would hold its thread)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._send_error(APIError(404, "Not Found", code="not_found"))
                return
            given = Headers({"authorization": self.headers.get("authorization", "")})
            if key is not None and not bearer_matches(given, [key]):  # as on the API port
                self._send_error(
                    APIError(401, "/metrics needs 'Authorization: Bearer <ROUTEGATE_METRICS_KEY>'.", code="invalid_api_key")
                )
                return
            body, content_type = render_metrics()
            self._send(200, body, content_type)

        def _send_error(self, error: APIError) -> None:
            self._send(error.status, json.dumps(error.body()).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes are not logged

    Handler.timeout = timeout
    server = BoundedHTTPServer((host, port), Handler, MAX_CONNECTIONS, timeout)
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
