"""Several worker processes (``ROUTEGATE_WORKERS`` > 1) on one socket, under uvicorn's supervisor.

Every worker drains like a single process when the service stops: the supervisor's SIGTERM or
SIGINT reaches each worker as SIGTERM, which it drains on (server/shutdown.py). A worker retired
while the others serve on (SIGHUP restarts the workers, SIGTTOU removes one) gets SIGINT and stops
the usual uvicorn way, at once refusing new connections, so that they go to the other workers
instead of a draining worker's 503.

This builds on uvicorn's supervisor internals (``uvicorn.supervisors.multiprocess``, uvicorn >= 0.54):
its workers are made from the module's ``Process`` class, which is replaced here.
"""

from __future__ import annotations

import contextlib
import os
import signal

import uvicorn
from prometheus_client import multiprocess as prometheus_multiprocess
from uvicorn.supervisors import multiprocess

from server.shutdown import DrainingServer


class DrainingWorker(multiprocess.Process):
    """A worker process whose server drains on SIGTERM and stops at once on SIGINT."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config, drain_signals=(signal.SIGTERM,))
        return self._server

    def terminate(self) -> None:
        """Retire this worker while the others serve on: SIGINT, no drain phase."""
        if self.process.exitcode is None and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGINT)
            self.parent_conn.close()
            self.child_conn.close()

    def drain(self) -> None:
        """Stop this worker with the service: SIGTERM, it drains."""
        super().terminate()

    def join(self) -> None:
        """Wait for the process to end (the supervisor joins every worker it retires or loses);
        then its ``live*`` gauges (requests in flight, queued, sticky conversations ...) leave the
        sums the other workers report."""
        super().join()
        if self.pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            with contextlib.suppress(FileNotFoundError):  # listed, then removed by another process first
                prometheus_multiprocess.mark_process_dead(self.pid)


class DrainingSupervisor(multiprocess.Multiprocess):
    """uvicorn's supervisor, whose workers drain when it stops."""

    def terminate_all(self) -> None:
        for worker in self.processes:
            if isinstance(worker, DrainingWorker):
                worker.drain()
            else:  # not started by run_workers: uvicorn's own stop
                worker.terminate()


def run_workers(config: uvicorn.Config) -> None:
    """Serve ``config.workers`` worker processes on one socket until the supervisor stops."""
    multiprocess.Process = DrainingWorker  # type: ignore[misc]  # the name the supervisor makes its workers with
    DrainingSupervisor(config, sockets=[config.bind_socket()]).run()
