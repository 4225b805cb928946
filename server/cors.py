"""CORS for the sites of ROUTEGATE_ALLOWED_ORIGINS, on the API's paths (``/v1/...``) only: a page
of such a site may call the API and read its answers, not ``/metrics`` or ``/openapi.json``."""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

#: the answers' headers such a page may read
BROWSER_READABLE_HEADERS = [
    "x-request-id",
    "retry-after",
    *(f"x-routegate-{name}" for name in ("router", "tier", "upstream", "model", "decision", "score", "threshold")),
    *(f"x-routegate-{name}" for name in ("predicted-quality", "target", "effective-target", "fallback")),
]


class ApiCors:
    """Starlette's ``CORSMiddleware`` for ``origins`` in front of the ``/v1/`` paths: preflights for
    ``GET`` and ``POST`` with any request headers (the openai SDKs send their own; the client key is
    still checked), also from a public site to a private address (Chrome's Private Network Access),
    and answers that name the page's site."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            allow_private_network=True,  # a listed site's page may call a gateway on this machine or network
            expose_headers=BROWSER_READABLE_HEADERS,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = scope["type"] == "http" and scope["path"].startswith("/v1/")
        await (self.cors if api else self.app)(scope, receive, send)
