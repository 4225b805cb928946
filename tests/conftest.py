"""Shared fixtures: two fake upstreams (strong, weak) and a real routegate process in front of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.fake_upstream import FakeUpstream, free_port

REPO = Path(__file__).resolve().parent.parent
STRONG_MODEL = "fake-strong"
WEAK_MODEL = "fake-weak"
STRONG_KEY = "sk-strong-upstream-secret-0123456789"
WEAK_KEY = "sk-weak-upstream-secret-9876543210"
CACHE_ENV = "ROUTEGATE_CACHE_DIR"
FEEDBACK_ENV = "ROUTEGATE_FEEDBACK_DB"


def pytest_configure(config: pytest.Config) -> None:
    """Caches (embeddings, hidden states, converted models) go to a temporary directory for the whole
    session, subprocesses included, never into the user's ``~/.cache/routegate``. Set here, before any
    test module imports ``routers.embedding`` (which reads it at import)."""
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="routegate-test-cache-")
    # the feedback store's default SQLite file lives in the user's home: tests use one in the cache dir
    os.environ[FEEDBACK_ENV] = os.path.join(os.environ[CACHE_ENV], "feedback.sqlite3")


def pytest_unconfigure(config: pytest.Config) -> None:
    os.environ.pop(FEEDBACK_ENV, None)
    shutil.rmtree(os.environ.pop(CACHE_ENV, ""), ignore_errors=True)


class Proxy:
    """A routegate process: its URL, its log file and its process."""

    def __init__(self, url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics").text


def proxy_env(strong: FakeUpstream, weak: FakeUpstream, **settings: str) -> dict[str, str]:
    """Environment for a routegate in front of the two fakes, with ``settings`` as ROUTEGATE_* vars."""
    env = {
        key: value for key, value in os.environ.items() if key in (CACHE_ENV, FEEDBACK_ENV) or not key.startswith("ROUTEGATE_")
    }
    env.update(
        {
            "ROUTEGATE_STRONG__BASE_URL": strong.url,
            "ROUTEGATE_STRONG__MODEL": STRONG_MODEL,
            "ROUTEGATE_STRONG__API_KEY": STRONG_KEY,
            "ROUTEGATE_STRONG__INPUT_PRICE": "10",
            "ROUTEGATE_STRONG__OUTPUT_PRICE": "30",
            "ROUTEGATE_WEAK__BASE_URL": weak.url,
            "ROUTEGATE_WEAK__MODEL": WEAK_MODEL,
            "ROUTEGATE_WEAK__API_KEY": WEAK_KEY,
            "ROUTEGATE_WEAK__INPUT_PRICE": "0.5",
            "ROUTEGATE_WEAK__OUTPUT_PRICE": "1.5",
            "ROUTEGATE_ROUTER": "random",
            "ROUTEGATE_RETRY_BACKOFF": "0.01",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"ROUTEGATE_{key.upper()}": value for key, value in settings.items()})
    return env


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not ended within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def started_proxy(env: dict[str, str], tmp_path: Path, *args: str, module: str = "server.cli") -> Iterator[Proxy]:
    """Start ``routegate serve`` (``python -m <module> serve``) on a free port, without waiting for it."""
    port = free_port()
    log_path = tmp_path / f"routegate-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "serve", "--port", str(port), *args],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Proxy(f"http://127.0.0.1:{port}", process, log_path)
    finally:
        stop_process(process)


@contextmanager
def running_proxy(
    env: dict[str, str], tmp_path: Path, *args: str, ready_timeout: float = 60, module: str = "server.cli"
) -> Iterator[Proxy]:
    """``started_proxy``, once ``/ready`` answers 200."""
    with started_proxy(env, tmp_path, *args, module=module) as proxy:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proxy.process.poll() is not None:
                raise RuntimeError(f"routegate exited with {proxy.process.returncode}:\n{proxy.log()}")
            try:
                if httpx.get(f"{proxy.url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"routegate not ready after {ready_timeout}s:\n{proxy.log()}")
            time.sleep(0.05)
        yield proxy


@pytest.fixture(scope="session")
def strong() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream("strong").start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def weak() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream("weak").start()
    yield upstream
    upstream.stop()


@pytest.fixture(autouse=True)
def _reset_upstreams(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts with empty, well-behaved fakes, and leaves them so: a module fixture set up
    before the next test's reset (a proxy that shadows, say) never meets the faults a test left."""
    upstreams = [request.getfixturevalue(name) for name in ("strong", "weak") if name in request.fixturenames]
    for upstream in upstreams:
        upstream.reset()
    yield
    for upstream in upstreams:
        upstream.reset()


@pytest.fixture(scope="session")
def proxy(strong: FakeUpstream, weak: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """One routegate with the random router, shared by tests that do not read exact metric values."""
    with running_proxy(proxy_env(strong, weak), tmp_path_factory.mktemp("proxy")) as running:
        yield running
