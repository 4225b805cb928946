"""The ``routegate`` command."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from routers.arguments import port
from routers.checkpoint import CheckpointError
from routers.commands import add_router_commands
from routers.data import RecordError
from server.client_keys import short_key_warnings
from server.feedback_cli import add_feedback_commands
from server.log_setup import configure_logging, quiet_progress_bars
from server.settings import Settings, SettingsError, load_settings, unknown_variable_warnings
from server.upstream_keys import warn_missing_keys


def _serve(args: argparse.Namespace) -> int:
    """Run the proxy with uvicorn until interrupted."""
    overrides = {
        key: value for key, value in (("host", args.host), ("port", args.port), ("workers", args.workers)) if value is not None
    }
    try:
        settings = load_settings(args.config, **overrides)
    except SettingsError as error:
        print(f"routegate: {error}", file=sys.stderr)
        return 2
    for key, value in overrides.items():  # worker processes read their settings from the environment
        os.environ[f"ROUTEGATE_{key.upper()}"] = str(value)
    made_dir = _prepare_multiprocess_dir(settings.workers)
    try:
        return _run(settings)
    finally:
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)


def _prepare_multiprocess_dir(workers: int) -> str | None:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory the workers share their metrics in.

    A given directory is emptied of a previous run's files (they would add old counts to the
    totals); with several workers and none given, a new one is made and returned for removal at exit.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in list(path.glob("*.db")):
            stale.unlink(missing_ok=True)  # a file another process removed first is gone all the same
        return None
    if workers > 1:
        made = tempfile.mkdtemp(prefix="routegate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
        return made
    return None


def _run(settings: Settings) -> int:
    """Start uvicorn with ``settings``: one process, or ``settings.workers`` worker processes."""
    configure_logging(settings.log_level)
    warn_missing_keys(settings)
    for line in unknown_variable_warnings(os.environ) + short_key_warnings(settings.api_keys, settings.metrics_key):
        logging.getLogger("routegate").warning(line)

    import uvicorn

    from server.app import create_app
    from server.http_protocol import BoundedHeadersProtocol

    try:
        app = create_app(settings)  # fails here, once, on settings the gateway cannot use
    except SettingsError as error:
        print(f"routegate: {error}", file=sys.stderr)
        return 2
    if settings.metrics_port is not None:
        from server.metrics_server import start_metrics_server

        start_metrics_server(settings.host, settings.metrics_port, settings.metrics_key, settings.head_timeout)
    # routegate logs one line per chat request itself (request id, router, tier, status, duration);
    # uvicorn's graceful shutdown lets in-flight requests finish while new connections are refused
    server_options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "http": BoundedHeadersProtocol,
        "ws": "none",  # no WebSocket routes: an upgrade request is answered as plain HTTP, an OpenAI-style 404
    }
    if settings.workers > 1:
        from server.workers import forget_own_metrics, run_workers

        forget_own_metrics()  # the app was made to check the settings; its series are not a worker's
        run_workers(
            uvicorn.Config("server.app:create_app", factory=True, workers=settings.workers, **server_options),
            settings.worker_ready_timeout,
        )
    else:
        from server.shutdown import DrainingServer

        server = DrainingServer(uvicorn.Config(app, **server_options))
        signal.signal(signal.SIGHUP, _restart_needs_workers)  # its default action would end the process at once
        server.run()
        if not server.started:
            return 1
    return 0


def _restart_needs_workers(sig: int, frame: FrameType | None) -> None:
    """SIGHUP to a single process: nothing to replace it with while it serves on."""
    logging.getLogger("routegate").warning(
        "SIGHUP ignored: it replaces worker processes one by one, and this is one process (ROUTEGATE_WORKERS=1); "
        "restart it to apply new settings"
    )


def _demo(args: argparse.Namespace) -> int:
    """Run routegate in front of a local LLM: no key, no network."""
    configure_logging("info")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo polls /health and /ready until its banner
    from demo.run import run_demo

    return run_demo(args.host, args.port, args.llm_port, args.router)


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

    demo = commands.add_parser("demo", help="run the proxy in front of a local LLM (no key, no network)")
    demo.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    demo.add_argument("--port", type=port, default=8000, help="listen port (default 8000)")
    demo.add_argument("--llm-port", type=port, help="port of the local LLM server (default: a free one)")
    demo.add_argument("--router", help="router (default: ROUTEGATE_ROUTER when its checkpoint is here, else random)")
    demo.set_defaults(run=_demo)
    add_router_commands(commands)
    add_feedback_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``routegate`` console script."""
    args = build_parser().parse_args(argv)
    quiet_progress_bars()  # the model libraries' bars (loading weights) would cut into each command's own
    try:
        return args.run(args)
    except OSError as error:  # a file named on the command line that is missing or unreadable; a full disk
        where = f": {error.filename}" if error.filename is not None else ""
        print(f"routegate: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except (RecordError, CheckpointError) as error:  # a record file line that is not a JSON object; a missing checkpoint
        print(f"routegate: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
