"""Several worker processes (``ROUTEGATE_WORKERS`` > 1) on one socket, under uvicorn's supervisor.

Every worker drains like a single process when the service stops: the supervisor's SIGTERM or
SIGINT reaches each worker as SIGTERM, which it drains on (server/shutdown.py). A worker retired
while the others serve on (SIGHUP restarts the workers, SIGTTOU removes one) gets SIGINT and stops
the usual uvicorn way, at once refusing new connections, so that they go to the other workers
instead of a draining worker's 503. A replacement counts as ready (and the worker it replaces is
retired) once its routers are loaded, not when its server has started: one whose router does not
load ends the restart, and the old workers serve on.

This builds on uvicorn's supervisor internals (``uvicorn.supervisors.multiprocess``, uvicorn >= 0.54):
its workers are made from the module's ``Process`` class, which is replaced here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import ClassVar

import uvicorn
from prometheus_client import multiprocess as prometheus_multiprocess
from uvicorn.supervisors import multiprocess

from server.log_setup import configure_logging
from server.metric_files import fold_retired
from server.shutdown import CLOSING_SECONDS, DrainingServer

log = logging.getLogger("routegate")
KILL_MARGIN_SECONDS = CLOSING_SECONDS + 2.0  # past its grace period, a worker that has not ended is killed


class DrainingWorker(multiprocess.Process):
    """A worker process whose server drains on SIGTERM and stops at once on SIGINT."""

    ready_timeout = 120.0  # seconds a replacement may take to load its routers (set by run_workers)
    #: workers started and not yet joined: the supervisor's, and a SIGHUP replacement not yet among them
    running: ClassVar[list[DrainingWorker]] = []
    _drained = False
    _given_up = False  # a replacement not ready in time: the supervisor will stop it

    def start(self) -> None:
        super().start()
        DrainingWorker.running.append(self)

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config, drain_signals=(signal.SIGTERM,))
        return self._server

    def target(self, sockets: list[socket.socket] | None = None) -> None:
        """The worker process's main: its own log set-up first (a spawned process has none, and
        routegate's request lines would be lost)."""
        configure_logging(self.config.log_level if self.config.log_level is not None else "info")
        super().target(sockets)

    def pong(self) -> None:
        """Answer the supervisor's health check: whether this worker can serve (its app started and
        its routers loaded), where uvicorn answers whether its server started."""
        self.child_conn.recv()
        self.child_conn.send(self.server.started and _gateway_ready(self.server.config))

    def wait_until_ready(self, timeout: float, should_exit: threading.Event | None = None) -> bool:
        """uvicorn waits ``timeout_worker_healthcheck`` (5 s), less than a router takes to load."""
        ready = super().wait_until_ready(self.ready_timeout, should_exit)
        self._given_up = not ready
        return ready

    def terminate(self) -> None:
        """Retire this worker while the others serve on: SIGINT, no drain phase."""
        if self.process.exitcode is None and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGINT)
            self.parent_conn.close()
            self.child_conn.close()

    def drain(self, again: bool = False) -> None:
        """Stop this worker with the service: SIGTERM, it drains (once: a second SIGTERM, ``again``,
        ends its grace period)."""
        if again or not self._drained:
            self._drained = True
            super().terminate()

    def kill(self) -> None:
        """Stop a replacement the supervisor gave up on (not ready in time, or the service stopping)
        drained, so that the requests it holds waiting for its routers are answered (503
        ``shutting_down``) rather than cut by SIGKILL, which follows only if it outlives its grace.
        A worker that stopped answering the supervisor's health check is killed at once, as uvicorn does."""
        if not self._given_up:
            super().kill()
            return
        self.drain()
        self.process.join((self.config.timeout_graceful_shutdown or 0.0) + KILL_MARGIN_SECONDS)
        if self.process.exitcode is None:
            self.process.kill()

    def join(self) -> None:
        """Wait for the process to end (the supervisor joins every worker it retires or loses);
        then its ``live*`` gauges (requests in flight, queued, sticky conversations ...) leave the
        sums the other workers report, and its other metric files are folded into the archive."""
        super().join()
        with contextlib.suppress(ValueError):
            DrainingWorker.running.remove(self)
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if self.pid is not None and directory:
            with contextlib.suppress(FileNotFoundError):  # listed, then removed by another process first
                prometheus_multiprocess.mark_process_dead(self.pid)
            try:
                if not fold_retired(Path(directory), self.pid):
                    log.warning("metric files of ended worker %d left unfolded: scrapes held them too long", self.pid)
            except Exception as error:  # a file it left half-written, a full disk: housekeeping must not stop the supervisor
                log.warning("could not fold the metric files of ended worker %d: %s", self.pid, error)


class DrainingSupervisor(multiprocess.Multiprocess):
    """uvicorn's supervisor, whose workers drain when it stops. A stop signal is acted on at once,
    even during a SIGHUP restart (uvicorn would only queue it, and finish retiring a worker first):
    every running worker drains, a replacement being tried and one being retired included; a
    second one is passed on to the workers, which then end their grace period."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, self._on_stop_signal)

    def _on_stop_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signal_queue.append(sig)
        again = self.should_exit.is_set()
        for worker in list(DrainingWorker.running):
            worker.drain(again)
        self.should_exit.set()

    def terminate_all(self) -> None:
        for worker in self.processes:
            if isinstance(worker, DrainingWorker):
                worker.drain()  # done already, unless it started after the stop signal
            else:  # not started by run_workers: uvicorn's own stop
                worker.terminate()


def _gateway_ready(config: uvicorn.Config) -> bool:
    """Whether the gateway of the app ``config`` loaded (inside uvicorn's middleware) is ready."""
    app = getattr(config, "loaded_app", None)
    while app is not None:
        gateway = getattr(getattr(app, "state", None), "gateway", None)
        if gateway is not None:
            return bool(gateway.ready)
        app = getattr(app, "app", None)
    return False


def forget_own_metrics() -> None:
    """Remove this (supervisor) process's files from ``PROMETHEUS_MULTIPROC_DIR``: it never dies
    while the service runs, so a gauge it set (the most capable tier, say) would be summed with the
    workers' values through every SIGHUP that changes them."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for path in Path(directory).glob(f"*_{os.getpid()}.db"):
            path.unlink(missing_ok=True)


def run_workers(config: uvicorn.Config, ready_timeout: float) -> None:
    """Serve ``config.workers`` worker processes on one socket until the supervisor stops; a SIGHUP
    replacement has ``ready_timeout`` seconds to load its routers."""
    DrainingWorker.ready_timeout = ready_timeout
    multiprocess.Process = DrainingWorker  # type: ignore[misc]  # the name the supervisor makes its workers with
    DrainingSupervisor(config, sockets=[config.bind_socket()]).run()
