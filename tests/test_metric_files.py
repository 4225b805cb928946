"""Folding an ended worker's Prometheus files: the scraped totals stay what they were, and the
files of ended processes do not pile up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from server.metric_files import fold_retired, reading

#: a process's metrics, one of each kind the gateway uses; the process's number scales its values
WORKER = textwrap.dedent(
    """
    import sys, time
    from prometheus_client import Counter, Gauge, Histogram
    n = int(sys.argv[1])
    requests = Counter("requests_total", "Requests.", ["tier"])
    requests.labels("strong").inc(n)
    requests.labels("weak").inc(10 * n)
    Histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0)).observe(0.05 * n)
    Gauge("share", "Share.", multiprocess_mode="max").set(0.1 * n)
    Gauge("threshold", "Latest threshold.", multiprocess_mode="mostrecent").set(n)
    Gauge("in_flight", "In flight.", multiprocess_mode="livesum").set(n)
    Gauge("per_process", "Per process.", multiprocess_mode="all").set(n)
    print(__import__("os").getpid())
    """
)


def _scrape(directory: Path) -> dict[str, float]:
    """Every sample of the directory's files, as ``/metrics`` reports them: {name{labels}: value}."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    lines = generate_latest(registry).decode().splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}


def _run_worker(directory: Path, number: int) -> int:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run([sys.executable, "-c", WORKER, str(number)], env=env, check=True, capture_output=True, text=True)
    return int(done.stdout)


def test_folding_keeps_every_total_and_leaves_one_file_per_kind(tmp_path: Path) -> None:
    pids = [_run_worker(tmp_path, number) for number in (1, 2, 3)]
    for pid in pids:  # what mark_process_dead does first: the live gauges leave
        (tmp_path / f"gauge_livesum_{pid}.db").unlink()
    before = _scrape(tmp_path)
    assert before['requests_total{tier="weak"}'] == 60 and before['latency_seconds_bucket{le="0.1"}'] == 2
    assert before["share"] == pytest.approx(0.3) and before["threshold"] == 3

    for pid in pids:
        fold_retired(tmp_path, pid)
        assert _scrape(tmp_path) == pytest.approx(before)  # sums added in another order

    names = sorted(path.name for path in tmp_path.glob("*.db"))
    kept = [f"gauge_all_{pid}.db" for pid in pids]  # labelled by pid: nothing to fold it into
    assert names == sorted(
        ["counter_archive.db", "histogram_archive.db", "gauge_max_archive.db", "gauge_mostrecent_archive.db", *kept]
    )


def test_a_fold_adds_to_the_archive_of_earlier_folds(tmp_path: Path) -> None:
    first = _run_worker(tmp_path, 1)
    fold_retired(tmp_path, first)
    second = _run_worker(tmp_path, 4)  # after the first fold: its values newer, its gauge larger
    fold_retired(tmp_path, second)
    scraped = _scrape(tmp_path)
    assert scraped['requests_total{tier="strong"}'] == 5
    assert scraped['latency_seconds_bucket{le="0.1"}'] == 1 and scraped['latency_seconds_bucket{le="1.0"}'] == 2
    assert scraped["share"] == pytest.approx(0.4) and scraped["threshold"] == 4


def test_a_scrape_during_folds_counts_every_worker_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``/metrics`` collects under the lock that folds take: scraped while twenty workers' files are
    folded one after another, every scrape reads the same total."""
    from server.metrics import render_metrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    pids = [_run_worker(tmp_path, 1) for _ in range(20)]

    def total() -> float:
        lines = render_metrics()[0].decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("requests_total{"))

    assert total() == 20 * 11
    totals: list[float] = []
    folding = threading.Event()
    folding.set()

    def scrape() -> None:
        while folding.is_set():
            totals.append(total())

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for pid in pids:
            fold_retired(tmp_path, pid)
            time.sleep(0.005)
    finally:
        folding.clear()
        scraper.join()
    assert len(totals) > 20 and set(totals) == {20 * 11}


def test_a_fold_that_cannot_have_the_lock_leaves_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = _run_worker(tmp_path, 2)
    before = _scrape(tmp_path)
    monkeypatch.setattr("server.metric_files.LOCK_TIMEOUT_SECONDS", 0.1)
    with reading(tmp_path):  # a scrape that does not finish
        assert fold_retired(tmp_path, pid) is False
    assert (tmp_path / f"counter_{pid}.db").exists() and not list(tmp_path.glob("*archive*"))
    assert not list(tmp_path.glob(".*"))  # no staged file left behind
    assert _scrape(tmp_path) == before
    assert fold_retired(tmp_path, pid) is True
    assert _scrape(tmp_path) == pytest.approx(before)
