"""A client that sends a request and leaves before its answer, at a moment the test chooses."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tests.metric_values import wait_for


def post_and_leave(url: str, body: dict[str, Any], leave_when: Callable[[], bool], timeout: float = 10) -> None:
    """POST ``body`` (JSON) to ``url`` and close the connection, unanswered, once ``leave_when()``
    holds (say, once the upstream has the request): not after a client timeout, which a busy
    machine may reach before routegate has forwarded anything."""
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as connection:
        connection.sendall(head.encode() + data)
        assert wait_for(leave_when, timeout), "the moment to leave never came"
