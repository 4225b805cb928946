"""``/metrics`` on its own port (ROUTEGATE_METRICS_PORT), so that the API port need not expose
it: a small threaded HTTP server in the serving process (the parent of the workers, which reads
their shared metrics directory), with the same optional Bearer key as the API port's /metrics.

A thread serves each connection, so connections are bounded: at most ``MAX_CONNECTIONS`` at once
(more get a 503 and are closed), each closed ``timeout`` seconds after it was accepted, however
slowly it sends (one request per connection: HTTP/1.0)."""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import SecretStr

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
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadline = deadline
        self._open: dict[socket.socket, float] = {}  # connection -> when it is cut; at most max_connections
        self._lock = threading.Lock()
        threading.Thread(target=self._cut_late_connections, name="metrics-deadlines", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        with self._lock:
            self._open[request] = time.monotonic() + self._deadline
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread to serve it: give its place back
            self._forget(request)
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: socket.socket) -> None:
        with self._lock:
            if self._open.pop(request, None) is None:
                return
        self._slots.release()

    def _cut_late_connections(self) -> None:
        while True:
            time.sleep(min(1.0, self._deadline / 4))
            now = time.monotonic()
            with self._lock:
                late = [connection for connection, cut_at in self._open.items() if cut_at < now]
            for connection in late:
                try:
                    connection.shutdown(socket.SHUT_RDWR)  # its thread's read or write ends, and the thread with it
                except OSError:
                    pass


def _refuse(connection: socket.socket) -> None:
    """A 503 to a connection past the limit, without waiting on a client that does not read."""
    body = json.dumps(_BUSY.body()).encode()
    head = f"HTTP/1.0 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    try:
        connection.setblocking(False)
        connection.send(head.encode() + body)
    except OSError:
        pass


def start_metrics_server(host: str, port: int, key: SecretStr | None, timeout: float) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` on ``host:port`` from a daemon thread; the server, for shutdown. A
    connection is closed ``timeout`` seconds after it was accepted (it would hold its thread)."""
    expected = b"Bearer " + key.get_secret_value().encode() if key is not None else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._send_error(APIError(404, "Not Found", code="not_found"))
                return
            given = self.headers.get("authorization", "").strip().encode()
            if expected is not None and not hmac.compare_digest(given, expected):
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
