"""``/metrics`` on its own port (ROUTEGATE_METRICS_PORT), so that the API port need not expose
it: a small threaded HTTP server in the serving process (the parent of the workers, which reads
their shared metrics directory), with the same optional Bearer key as the API port's /metrics."""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pydantic import SecretStr

from server.errors import APIError
from server.metrics import render_metrics

log = logging.getLogger("routegate.metrics")


def start_metrics_server(host: str, port: int, key: SecretStr | None, timeout: float) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` on ``host:port`` from a daemon thread; the server, for shutdown. A
    connection silent for ``timeout`` seconds is closed (it would hold its thread)."""
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
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
