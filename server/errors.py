"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

from __future__ import annotations

import json
import math
from http import HTTPStatus

from starlette.responses import Response


class APIError(Exception):
    """An error answered to the client as an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        """The JSON body the OpenAI API would send for this error."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_response(self, headers: dict[str, str] | None = None) -> Response:
        """Render as an HTTP response, with ``headers`` added to the error's own."""
        return Response(
            json.dumps(self.body()).encode(),
            status_code=self.status,
            media_type="application/json",
            headers={**self.headers, **(headers or {})},
        )

    def to_http(self) -> bytes:
        """Render as a whole HTTP/1.1 response that closes the connection, for the HTTP layer
        (server.http_protocol), which answers before any app sees the request."""
        body = json.dumps(self.body()).encode()
        return (
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )

    def to_sse(self) -> bytes:
        """Render as a final server-sent event, for a stream that has already started."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400 for a request the OpenAI API would refuse."""
    return APIError(400, message, param=param, code=code)


def overloaded(message: str, retry_after_value: str) -> APIError:
    """429 ``overloaded`` with ``Retry-After``: routegate is at one of its limits, which ``message`` names."""
    return APIError(
        429,
        f"{message}; retry after {retry_after_value} s.",
        type="requests",
        code="overloaded",
        headers={"retry-after": retry_after_value},
    )


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))
