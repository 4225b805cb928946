"""A real Redis (the Debian ``redis-server`` binary) on 127.0.0.1 on a free port, with its files
in a temporary folder; it can be killed and started again on the same port."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.conftest import stop_process
from tests.fake_upstream import free_port
from tests.tools import require_tool


class RedisServer:
    """A redis-server process without persistence: a restart starts empty, as after a crash."""

    def __init__(self, binary: str, workdir: Path, password: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5, decode_responses=True)

    def start(self, timeout: float = 20) -> None:
        """Start redis-server and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "redis.log", "ab") as log_file:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.workdir),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--requirepass",
                    self.password,
                    "--enable-debug-command",
                    "local",  # DEBUG SLEEP: a Redis that stalls
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{(self.workdir / 'redis.log').read_text()}")
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: Redis dies as in a crash, its data with it."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)


@contextmanager
def running_redis(workdir: Path, password: str = "redis-test-password-0123") -> Iterator[RedisServer]:
    """A started RedisServer on a free 127.0.0.1 port, requiring ``password``; stopped on exit."""
    server = RedisServer(require_tool("redis-server"), workdir, password)
    server.start()
    try:
        yield server
    finally:
        server.stop()
