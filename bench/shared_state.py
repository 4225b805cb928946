"""What sharing state through Redis costs a request, and what replicas behind a balancer buy.

One run, loopback only, every process on this machine, four cells side by side:

- one replica with in-process state, and the same replica settings with ``ROUTEGATE_REDIS_URL``
  (the cost of sharing: p50/p99 added per request at concurrency 1, throughput at ``-c``);
- nginx in front of one replica and nginx in front of three, all three sharing one Redis.

Every request takes every shared path: a ``router-random-30%`` target route (threshold and
feedback in Redis), sticky conversations by ``x-routegate-conversation-id`` (a pool of ids, so
some follow-ups are sticky) and a daily budget too large to bind (read and added to per request).
The router is ``random``, so the gateway's own work, not scoring, is what is measured. Redis's CPU
time and command count per request (the commands the Lua scripts run included) are read from the
server itself (``/proc`` and ``INFO``): they say how many requests per second one Redis core can
carry. "shared-state fallbacks" counts Redis operations that failed or timed out (the replica
decided with its in-process state): on a loaded machine they mean the cell measured less sharing.

Needs ``redis-server`` and ``nginx`` (Debian packages) and the mock upstream of this folder.

    python bench/shared_state.py                       # ~1 minute: 8 s per cell and concurrency
    python bench/shared_state.py --duration 3 --concurrency 16 --json-out shared.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
MODEL = "router-random-30%"
CONVERSATIONS = 500  # ids drawn at random: most requests after the first few hundred are follow-ups


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, what: str, timeout: float = 90) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout}s")
        time.sleep(0.1)


def wait_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


@contextmanager
def started(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A process that is terminated (then killed) on exit."""
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def routegate(
    stack: ExitStack, scratch: Path, upstream: int, redis_port: int | None, timeout_ms: float
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ROUTEGATE_")}
    env.update(
        {
            "ROUTEGATE_STRONG__BASE_URL": f"http://127.0.0.1:{upstream}/v1",
            "ROUTEGATE_WEAK__BASE_URL": f"http://127.0.0.1:{upstream}/v1",
            "ROUTEGATE_STRONG__API_KEY": "sk-bench",
            "ROUTEGATE_WEAK__API_KEY": "sk-bench",
            "ROUTEGATE_ROUTER": "random",
            "ROUTEGATE_ROUTE_ON": "sticky",
            "ROUTEGATE_DAILY_BUDGET_USD": "1000000",
            "ROUTEGATE_LOG_LEVEL": "warning",
            "ROUTEGATE_PORT": str(port),
            "ROUTEGATE_FEEDBACK_DB": str(scratch / f"feedback-{port}.sqlite3"),  # its own, not the user's store
        }
    )
    if redis_port is not None:
        env["ROUTEGATE_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        env["ROUTEGATE_REDIS_PREFIX"] = f"bench-{uuid.uuid4().hex[:8]}:"
        env["ROUTEGATE_REDIS_TIMEOUT_MS"] = str(timeout_ms)
    process = stack.enter_context(started([sys.executable, "-m", "server.cli", "serve"], scratch / f"routegate-{port}.log", env))
    wait_for(f"http://127.0.0.1:{port}/ready", process, f"routegate on {port}")
    return process, port


def nginx(stack: ExitStack, binary: str, scratch: Path, backends: list[int]) -> int:
    """nginx on a free port balancing (least connections, keep-alive) over ``backends``."""
    port = free_port()
    folder = scratch / f"nginx-{port}"
    folder.mkdir()
    servers = "\n".join(f"    server 127.0.0.1:{backend};" for backend in backends)
    (folder / "nginx.conf").write_text(
        f"""worker_processes 1;
error_log {folder}/error.log warn;
pid {folder}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fastcgi;
  uwsgi_temp_path {folder}/uwsgi;
  scgi_temp_path {folder}/scgi;
  upstream routegate {{
    least_conn;
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://routegate;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""
    )
    process = stack.enter_context(
        started([binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"], folder / "out.log")
    )
    wait_port(port, process, "nginx")
    return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_commands(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"INFO stats\r\n")
        data = b""
        while b"total_commands_processed" not in data or not data.endswith(b"\r\n"):
            data += sock.recv(65536)
    line = next(line for line in data.decode().splitlines() if line.startswith("total_commands_processed:"))
    return int(line.split(":")[1])


@dataclass
class Cell:
    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    shared_state_errors: float | None = None  # Redis operations that fell back to in-process state
    redis_cpu_us_per_request: float | None = None
    redis_commands_per_request: float | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def drive(url: str, concurrency: int, duration: float, tag: str) -> tuple[list[float], int, float]:
    """Requests from ``concurrency`` clients for ``duration`` seconds: latencies (s), errors, elapsed."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    stop = time.monotonic() + duration
    rng = random.Random(tag)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors, counter
        while time.monotonic() < stop:
            counter += 1
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"{tag} question {counter}"}]}
            headers = {"x-routegate-conversation-id": f"{tag}-{rng.randrange(CONVERSATIONS)}"}
            started_at = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as reply:
                    await reply.read()
                    ok = reply.status == 200
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.perf_counter() - started_at)
            errors += not ok

    began = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return latencies, errors, time.monotonic() - began


def shared_state_errors(replicas: list[int]) -> float:
    """Shared-state errors counted so far by the replicas on ``replicas`` (ports)."""
    total = 0.0
    for port in replicas:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("routegate_shared_state_errors_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def measure(name: str, url: str, concurrency: int, duration: float, redis: tuple[int, int] | None, replicas: list[int]) -> Cell:
    asyncio.run(drive(url, concurrency, min(2.0, duration / 2), f"warm-{uuid.uuid4().hex[:6]}"))
    before = (cpu_seconds(redis[0]), redis_commands(redis[1])) if redis else None
    errors_before = shared_state_errors(replicas)
    latencies, errors, elapsed = asyncio.run(drive(url, concurrency, duration, uuid.uuid4().hex[:8]))
    latencies.sort()
    cell = Cell(
        name,
        concurrency,
        len(latencies),
        errors,
        elapsed,
        1000 * latencies[len(latencies) // 2],
        1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )
    cell.shared_state_errors = shared_state_errors(replicas) - errors_before if redis else None
    if redis and before:
        cell.redis_cpu_us_per_request = 1e6 * (cpu_seconds(redis[0]) - before[0]) / len(latencies)
        cell.redis_commands_per_request = (redis_commands(redis[1]) - before[1] - 1) / len(latencies)
    return cell


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per cell and concurrency")
    parser.add_argument("--concurrency", type=int, default=32, help="clients of the throughput run")
    parser.add_argument(
        "--redis-timeout-ms",
        type=float,
        default=2000.0,
        help=(
            "ROUTEGATE_REDIS_TIMEOUT_MS of the replicas: above the default so that a machine shared with other "
            "work measures sharing, not fallbacks"
        ),
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # Debian's nginx: /usr/sbin
    binaries = {name: shutil.which(name, path=search_path) for name in ("redis-server", "nginx")}
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install redis-server nginx)", file=sys.stderr)
        return 2
    cells: list[Cell] = []
    load_before = " ".join(f"{value:.1f}" for value in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="routegate-shared-bench-") as folder, ExitStack() as stack:
        scratch = Path(folder)
        upstream = free_port()
        mock = stack.enter_context(
            started([sys.executable, str(REPO / "bench/mock_upstream.py"), "--port", str(upstream)], scratch / "mock.log")
        )
        wait_port(upstream, mock, "mock upstream")
        redis_port = free_port()
        redis = stack.enter_context(
            started(
                [binaries["redis-server"], "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--dir", folder],
                scratch / "redis.log",
            )
        )
        wait_port(redis_port, redis, "redis-server")
        _, alone = routegate(stack, scratch, upstream, None, args.redis_timeout_ms)
        shared = [routegate(stack, scratch, upstream, redis_port, args.redis_timeout_ms)[1] for _ in range(3)]
        one_behind = nginx(stack, binaries["nginx"], scratch, shared[:1])
        three_behind = nginx(stack, binaries["nginx"], scratch, shared)
        redis_ids = (redis.pid, redis_port)
        targets = [
            ("1 replica, in-process state", alone, None, [alone]),
            ("1 replica, Redis", shared[0], redis_ids, shared[:1]),
            ("nginx -> 1 replica, Redis", one_behind, redis_ids, shared[:1]),
            ("nginx -> 3 replicas, Redis", three_behind, redis_ids, shared),
        ]
        for concurrency in (1, args.concurrency):
            for name, port, redis_of, replicas in targets:
                cells.append(measure(name, f"http://127.0.0.1:{port}", concurrency, args.duration, redis_of, replicas))
                print(
                    f"{name:32} c={concurrency:<3} {cells[-1].rate:7.1f} req/s  p50 {cells[-1].p50_ms:6.2f} ms  p99 "
                    f"{cells[-1].p99_ms:6.2f} ms",
                    file=sys.stderr,
                )
    print(
        f"cores: {os.cpu_count()}; load average before: {load_before}; {args.duration:g} s per cell; router random; "
        f"model {MODEL}; sticky ids; budget on; Redis timeout {args.redis_timeout_ms:g} ms\n"
    )
    print(
        "| setup | c | req/s | p50 ms | p99 ms | failed requests | shared-state fallbacks | Redis CPU "
        "µs/request | Redis commands/request (scripts' own included) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for cell in cells:
        redis_cpu = "" if cell.redis_cpu_us_per_request is None else f"{cell.redis_cpu_us_per_request:.0f}"
        redis_ops = "" if cell.redis_commands_per_request is None else f"{cell.redis_commands_per_request:.1f}"
        fallbacks = "" if cell.shared_state_errors is None else f"{cell.shared_state_errors:.0f}"
        print(
            f"| {cell.name} | {cell.concurrency} | {cell.rate:.0f} | {cell.p50_ms:.2f} | {cell.p99_ms:.2f} | {cell.errors} "
            f"| {fallbacks} | {redis_cpu} | {redis_ops} |"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps([{**asdict(cell), "rate": cell.rate} for cell in cells], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
