"""Several worker processes: every worker's /metrics reports the total over all workers."""

from __future__ import annotations

import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import proxy_env, running_proxy
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream
from tests.metrics_text import metric_sum

STRONG_COST = (PROMPT_TOKENS * 10 + COMPLETION_TOKENS * 30) / 1e6  # proxy_env's strong prices


def _send(api: str, count: int) -> None:
    """``count`` requests routed to the strong tier, concurrently, each on its own connection."""

    def one(_: int) -> None:
        with OpenAI(base_url=api, api_key="unused", max_retries=0) as client:
            reply = client.chat.completions.create(model="router-random-0.0", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "answer from strong"

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(count)))


def _requests_by_process(metrics_dir: Path, scratch: Path) -> dict[str, float]:
    """Routed requests counted by each process, read from its own counter file."""
    counted = {}
    for path in metrics_dir.glob("counter_*.db"):
        alone = scratch / path.stem
        alone.mkdir(parents=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counted[path.stem] = sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "routegate_requests_total" and sample.labels.get("router") == "random"
        )
    return counted


def _scraped_totals(url: str, scrapes: int) -> list[tuple[float, float]]:
    """(routed requests, cost) from ``scrapes`` scrapes, each on a new connection."""
    totals = []
    for _ in range(scrapes):
        text = httpx.get(f"{url}/metrics", headers={"connection": "close"}).text
        totals.append(
            (metric_sum(text, "routegate_requests_total", router="random"), metric_sum(text, "routegate_cost_usd_total"))
        )
    return totals


def test_two_workers_report_the_total(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    strong.behaviour.delay = 0.05  # requests overlap, so both workers take some
    metrics_dir = tmp_path / "metrics"
    env = {**proxy_env(strong, weak), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    sent = 0
    with running_proxy(env, tmp_path, "--workers", "2") as proxy:
        deadline = time.monotonic() + 60
        while True:  # the kernel picks the worker of each connection: send until both served some
            _send(proxy.api, 30)
            sent += 30
            by_process = _requests_by_process(metrics_dir, tmp_path / f"split-{sent}")
            if sum(1 for counted in by_process.values() if counted > 0) == 2:
                break
            assert time.monotonic() < deadline, f"one worker took all {sent} requests: {by_process}"
        totals = _scraped_totals(proxy.url, 12)
        log = proxy.log()
        supervisors = list(metrics_dir.glob(f"*_{proxy.process.pid}.db"))
    assert not supervisors, "the supervisor, which never dies, would add its gauges to the workers' through every SIGHUP"
    assert len(strong.received) == sent
    assert log.count("INFO routegate.proxy request_id=") == sent  # each worker logs its requests
    assert log.count("INFO routegate router random loaded") == 2 and "Clearing labels" not in log
    assert sum(by_process.values()) == sent
    for requests, cost in totals:  # every scrape, whichever worker answered it
        assert requests == sent
        assert cost == pytest.approx(sent * STRONG_COST)


def test_restart_does_not_count_the_previous_run(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """A given PROMETHEUS_MULTIPROC_DIR is reused across runs (one worker: the same code path, started faster)."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**proxy_env(strong, weak), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    for run, sent in enumerate((5, 3)):
        with running_proxy(env, tmp_path) as proxy:
            _send(proxy.api, sent)
            totals = _scraped_totals(proxy.url, 4)
        assert all(requests == sent for requests, _ in totals), (run, totals)


def test_a_retired_workers_gauges_leave_the_sums(strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path) -> None:
    """SIGHUP replaces both workers: what the old ones remembered (sticky conversations, in
    process memory) is gone, and so is their share of the summed gauges."""
    with running_proxy(proxy_env(strong, weak, workers="2", route_on="sticky"), tmp_path) as proxy:
        for number in range(4):
            with OpenAI(base_url=proxy.api, api_key="unused", max_retries=0) as client:
                client.chat.completions.create(
                    model="router-random-0.0",
                    messages=[{"role": "user", "content": "hi"}],
                    extra_headers={"x-routegate-conversation-id": f"conversation-{number}"},
                )
        assert metric_sum(proxy.metrics(), "routegate_sticky_conversations") == 4
        proxy.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while proxy.log().count("Finished server process") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # until both old workers are retired
        assert proxy.log().count("Finished server process") == 2, proxy.log()
        while metric_sum(proxy.metrics(), "routegate_sticky_conversations") and time.monotonic() < deadline:
            time.sleep(0.2)  # the supervisor marks a worker dead once it has joined it
        metrics = proxy.metrics()
    assert metric_sum(metrics, "routegate_sticky_conversations") == 0


def _pids_with_files(metrics_dir: Path) -> set[str]:
    return {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("*.db")} - {"archive"}


def test_restarts_keep_the_totals_and_leave_no_files_of_ended_workers(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """Each SIGHUP replaces both workers; the counts of the ended ones stay in the totals, folded
    into one archive file per kind, so the files a scrape reads do not grow with every restart."""
    metrics_dir = tmp_path / "metrics"
    env = {**proxy_env(strong, weak), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    sent, ended = 0, set()
    with running_proxy(env, tmp_path, "--workers", "2") as proxy:
        for restart in (1, 2):
            _send(proxy.api, 10)
            sent += 10
            ended |= _pids_with_files(metrics_dir)
            proxy.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while proxy.log().count("Finished server process") < 2 * restart and time.monotonic() < deadline:
                time.sleep(0.2)
            while ended & _pids_with_files(metrics_dir) and time.monotonic() < deadline:
                time.sleep(0.2)  # folded once the supervisor has joined the ended worker
            assert not ended & _pids_with_files(metrics_dir), (ended, sorted(p.name for p in metrics_dir.iterdir()))
        _send(proxy.api, 10)
        sent += 10
        totals = _scraped_totals(proxy.url, 6)
        text = proxy.metrics()
    assert len(ended) >= 4  # two workers per run before each restart
    assert totals == [(sent, pytest.approx(sent * STRONG_COST))] * 6
    assert metric_sum(text, "routegate_upstream_duration_seconds_count", tier="strong") == sent
    assert {"counter_archive.db", "histogram_archive.db"} <= {path.name for path in metrics_dir.glob("*_archive.db")}


def test_a_retired_worker_holding_requests_adds_nothing_to_the_budget_left(
    strong: FakeUpstream, weak: FakeUpstream, tmp_path: Path
) -> None:
    """The budget left is summed over live workers, each reporting its part; a worker that SIGHUP
    retires lives on beside its replacement while it finishes its requests, and reports 0 then."""
    weak.behaviour.delay = 6.0
    env = proxy_env(strong, weak, workers="2", daily_budget_usd="100", shutdown_grace_seconds="10")
    with running_proxy(env, tmp_path) as proxy, ThreadPoolExecutor(6) as pool:
        deadline = time.monotonic() + 30
        while metric_sum(proxy.metrics(), "routegate_budget_remaining_usd") < 100 and time.monotonic() < deadline:
            time.sleep(0.05)  # each worker reports its half once its app has started
        held = [
            pool.submit(
                httpx.post,
                f"{proxy.api}/chat/completions",
                json={"model": "router-random-1.0", "messages": [{"role": "user", "content": "hi"}]},
                timeout=60,
            )
            for _ in range(6)
        ]
        deadline = time.monotonic() + 10
        while len(weak.received) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        proxy.process.send_signal(signal.SIGHUP)
        while "Shutting down" not in proxy.log().split("Received SIGHUP")[-1] and time.monotonic() < deadline:
            time.sleep(0.05)  # the first old worker is retired, its requests still running
        readings = [metric_sum(proxy.metrics(), "routegate_budget_remaining_usd") for _ in range(10)]
        assert [reply.result(timeout=60).status_code for reply in held] == [200] * 6
        assert "Shutting down" in proxy.log().split("Received SIGHUP")[-1]
    assert readings == [100] * 10
