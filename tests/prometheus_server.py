"""A real Prometheus server (the Debian ``prometheus`` binary) on 127.0.0.1, scraping given targets
with the repository's alert rules, and a small client for its HTTP API."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import REPO, stop_process
from tests.fake_upstream import free_port

PROMETHEUS_CONFIG = REPO / "config/prometheus.yml"
ALERT_RULES = REPO / "config/prometheus/alerts.yml"


class PrometheusServer:
    """A running Prometheus: its URL and HTTP API queries."""

    def __init__(self, url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    def _get(self, path: str, **params: Any) -> Any:
        reply = httpx.get(f"{self.url}{path}", params=params, timeout=10).json()
        if reply.get("status") != "success":
            raise AssertionError(f"{path} {params}: {reply.get('errorType')}: {reply.get('error')}")
        return reply["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query at ``at`` (default now): the result vector."""
        data = self._get("/api/v1/query", query=expr, **({"time": at} if at is not None else {}))
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range query: one series per label set, ``values`` as [timestamp, "value"] pairs."""
        return self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)["result"]

    def metric_names(self, prefix: str) -> list[str]:
        """Names of the stored metrics that start with ``prefix``."""
        return [name for name in self._get("/api/v1/label/__name__/values") if name.startswith(prefix)]

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now."""
        return self._get("/api/v1/alerts")["alerts"]

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)


def scrape_config(targets: list[str], scrape_interval: str) -> dict[str, Any]:
    """config/prometheus.yml with its routegate job pointed at ``targets`` and faster intervals."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=scrape_interval, evaluation_interval=scrape_interval)
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / path) for path in config["rule_files"]]
    job = config["scrape_configs"][0]
    job["static_configs"] = [{"targets": targets, "labels": {"deployment": "openai"}}]  # as the compose file labels it
    job.pop("dns_sd_configs", None)  # the compose scale profile's replicas: no such name here
    config["scrape_configs"] = [job]
    return config


@contextmanager
def running_prometheus(binary: str, targets: list[str], workdir: Path, scrape_interval: str = "1s") -> Iterator[PrometheusServer]:
    """Start Prometheus on a free 127.0.0.1 port scraping ``targets``; stop it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(scrape_config(targets, scrape_interval)))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log_path)

    def ready() -> bool:
        try:
            return httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        server.wait_until(ready, "prometheus to be ready")
        yield server
    finally:
        stop_process(process)
