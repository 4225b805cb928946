"""Soak: many requests through a real routegate in front of fake upstreams that fail at random.

    python bench/soak.py                      # 20,000 requests, concurrency 256, 5% upstream faults
    python bench/soak.py --requests 2000      # a quick look

Half the requests stream. The fakes (in their own process, on 127.0.0.1) answer 5% of upstream
requests with a 503, a 429, malformed JSON or a stream cut before its first byte, all of which
retries and fallback can recover, or a stream cut after its first chunk, which nothing can (the
client already has part of the answer). Prints the errors the clients saw next to the
unrecoverable faults injected, latency percentiles, and routegate's resident memory along the way.
Not a CI test: the numbers depend on the machine (and on whatever else shares its CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from routers.registry import available_routers  # noqa: E402
from tests.conftest import proxy_env, running_proxy  # noqa: E402
from tests.fake_upstream import Behaviour, FakeUpstream  # noqa: E402

MESSAGES = [{"role": "user", "content": "Explain, briefly, why the sky is blue."}]


def serve_fakes(connection: Connection, fault_rate: float) -> None:
    """Child process: run the strong and weak fakes until told to stop, then report their faults."""
    import logging

    fakes = [FakeUpstream(name).start() for name in ("strong", "weak")]
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # injected stream cuts log tracebacks
    for fake in fakes:
        fake.behaviour = Behaviour(fault_rate=fault_rate, chunks=8)
    connection.send([(fake.url, fake.port) for fake in fakes])
    connection.recv()
    faults = {fake.name: dict(fake.faults_injected) for fake in fakes}
    connection.send({**faults, "received": sum(len(fake.received) for fake in fakes)})
    for fake in fakes:
        fake.stop()


class _Address:
    """Stands in for a FakeUpstream in ``proxy_env``: only the URL is read."""

    def __init__(self, url: str) -> None:
        self.url = url


def resident_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def one_request(session: aiohttp.ClientSession, url: str, model: str, stream: bool) -> tuple[float, str]:
    """Send one chat request; its latency and outcome (``ok`` or what went wrong)."""
    started = time.perf_counter()
    payload = {"model": model, "messages": MESSAGES, "stream": stream}
    try:
        async with session.post(url, json=payload) as response:
            text = await response.text()
        if response.status != 200:
            outcome = f"http_{response.status}"
        elif not stream:
            outcome = "ok"
        elif '"error"' in text:
            outcome = "stream_" + json.loads(text.rsplit("data: ", 1)[1])["error"]["code"]
        else:
            outcome = "ok" if text.rstrip().endswith("data: [DONE]") else "stream_truncated"
    except (TimeoutError, aiohttp.ClientError) as error:
        outcome = type(error).__name__
    return time.perf_counter() - started, outcome


async def drive(url: str, model: str, total: int, concurrency: int, on_checkpoint) -> list[tuple[float, str, bool]]:
    """``total`` requests from ``concurrency`` workers, every other one streamed."""
    results: list[tuple[float, str, bool]] = []
    next_index = 0
    checkpoints = {warm_up(total): "start", total // 2: "middle", total: "end"}
    progress = tqdm(total=total, unit="req", desc="soak")

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < total:
            index = next_index
            next_index += 1
            stream = index % 2 == 1
            latency, outcome = await one_request(session, url, model, stream)
            results.append((latency, outcome, stream))
            progress.update(1)
            if len(results) in checkpoints:
                on_checkpoint(checkpoints[len(results)])

    # aiohttp rather than httpx: its pool costs the client far less CPU, which here is shared.
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    progress.close()
    return results


def warm_up(total: int) -> int:
    """Requests after which the "start" memory is read (the pools and caches have filled by then)."""
    return min(1000, total // 4)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(results: list[tuple[float, str, bool]], injected: dict, memory: dict[str, int], metrics: str) -> None:
    """Print what the clients saw next to what was injected, latencies and memory."""
    faults = {name: counts for name, counts in injected.items() if name != "received"}
    all_faults = sum(sum(counts.values()) for counts in faults.values())
    unrecoverable = sum(counts.get("cut_midway", 0) for counts in faults.values())
    outcomes = Counter(outcome for _, outcome, _ in results)
    share = all_faults / injected["received"]
    print(f"upstream requests {injected['received']}, faults injected {all_faults} ({share:.1%}): {faults}")
    print(f"client outcomes: {dict(outcomes)}")
    errors = len(results) - outcomes["ok"]
    print(f"client errors {errors}; unrecoverable faults injected (streams cut mid-way) {unrecoverable}")
    print(f"{'':10} {'p50 ms':>8} {'p99 ms':>8}")
    groups = {
        "all": [latency for latency, _, _ in results],
        "plain": [latency for latency, _, stream in results if not stream],
        "streamed": [latency for latency, _, stream in results if stream],
    }
    for kind, values in groups.items():
        print(f"{kind:10} {percentile(values, 0.5) * 1000:8.1f} {percentile(values, 0.99) * 1000:8.1f}")
    print("routegate resident memory (MiB): " + ", ".join(f"{at} {kib / 1024:.1f}" for at, kib in memory.items()))
    print(f"start -> end: {memory['end'] / memory['start'] - 1:+.1%} (start = after the first {warm_up(len(results))} requests)")
    for line in metrics.splitlines():
        if line.startswith(("routegate_fallbacks_total", "routegate_upstream_retries_total")) and not line.endswith(" 0.0"):
            print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--router", default="mf", help="falls back to random when this router is not available")
    args = parser.parse_args()

    router = args.router if args.router in available_routers() else "random"
    if router != args.router:
        print(f"router {args.router!r} is not available here; using 'random'")
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    fakes = context.Process(target=serve_fakes, args=(child, args.fault_rate), daemon=True)
    fakes.start()
    (strong_url, _), (weak_url, _) = parent.recv()
    settings = {"retries": "2", "fallback": "true", "log_level": "warning", "read_timeout": "10"}
    env = proxy_env(_Address(strong_url), _Address(weak_url), router=router, **settings)
    memory: dict[str, int] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as logs, running_proxy(env, Path(logs), ready_timeout=600) as proxy:
        pid = proxy.process.pid
        memory["before load"] = resident_kib(pid)
        url, model = f"{proxy.api}/chat/completions", f"router-{router}-0.5"
        started = time.perf_counter()
        results = asyncio.run(
            drive(url, model, args.requests, args.concurrency, lambda at: memory.__setitem__(at, resident_kib(pid)))
        )
        elapsed = time.perf_counter() - started
        metrics = proxy.metrics()
    parent.send("stop")
    injected = parent.recv()
    fakes.join(timeout=10)
    print(
        f"\nrouter {router}, {len(results)} requests, concurrency {args.concurrency}, {elapsed:.1f} s "
        f"({len(results) / elapsed:.0f} req/s) on {os.cpu_count()} CPUs, "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    report(results, injected, memory, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
