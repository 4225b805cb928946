"""The ``routegate`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence

from routers.commands import add_router_commands
from server.settings import SettingsError, load_settings


def _serve(args: argparse.Namespace) -> int:
    """Run the proxy with uvicorn until interrupted."""
    overrides = {key: value for key, value in (("host", args.host), ("port", args.port), ("workers", args.workers)) if value is not None}
    try:
        settings = load_settings(args.config, **overrides)
    except SettingsError as error:
        print(f"routegate: {error}", file=sys.stderr)
        return 2
    for key, value in overrides.items():  # worker processes read their settings from the environment
        os.environ[f"ROUTEGATE_{key.upper()}"] = str(value)
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="routegate-metrics-")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)

    import uvicorn

    from server.app import create_app

    try:
        app = create_app(settings)  # fails here, once, on settings the gateway cannot use
    except SettingsError as error:
        print(f"routegate: {error}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        uvicorn.run(
            "server.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
        )
    else:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``routegate`` subcommand."""
    parser = argparse.ArgumentParser(prog="routegate", description="OpenAI-compatible strong/weak routing proxy.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML settings file (environment variables override it)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.set_defaults(run=_serve)
    add_router_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``routegate`` console script."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
