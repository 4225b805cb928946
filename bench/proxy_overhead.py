"""What the routing hop costs: direct vs routegate (random, mf) vs RouteLLM's server vs LiteLLM's proxy.

One run on this machine, all targets in front of the same fast mock upstream
(``bench/mock_upstream.py``), loaded by ``wrk`` with a Lua script that gives every request a
unique prompt (so no score cache hides the router's cost), plain and streamed, at each
concurrency for a fixed duration after a short warm-up. Also measured in the same run: the
MiniLM encoder's raw batched rate, each server's time from start to ready and its resident
memory after its load. RouteLLM and LiteLLM are installed by this script into their own venvs
under ``--scratch`` (never in the repository; reused when present).

    python bench/proxy_overhead.py                 # full run (see --help)
    python bench/proxy_overhead.py --quick         # smoke run: short cells, c=1 and 32
    python bench/proxy_overhead.py --json-out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from encoder_rate import PROMPT_TEMPLATE  # noqa: E402  (the same prompt style for the encoder and every request)

TORCH = "torch==2.13.0"  # pinned CPU build, installed first: an unpinned torch pulls a multi-GB CUDA build
LITELLM = "litellm==1.81.13"  # pinned: a release from before the compromised ones pulled from PyPI
SERVER_STACK = "uvicorn[standard]"  # uvloop and httptools, as routegate installs: every server on the same loop and parser
ROUTELLM_STEPS = [[TORCH], ["routellm[serve]==0.2.0", LITELLM, SERVER_STACK]]
LITELLM_STEPS = [[LITELLM.replace("litellm==", "litellm[proxy]=="), SERVER_STACK]]
UPSTREAM_KEY = "sk-bench-upstream"
CLIENT_KEY = "sk-bench-master"
STRONG_MODEL = "mock-strong"
WEAK_MODEL = "mock-weak"
THRESHOLD = "0.5"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm fetches its price map at import otherwise
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}

WARNING_LOG_CONFIG = {  # uvicorn logging at warning level without access log lines
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}

WRK_LUA = r"""
-- Every request carries a unique prompt: run tag, thread and counter are in the text.
-- Arguments after "--": model, "stream" or "plain", run tag.
local thread_count = 0
function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end
function init(args)
  model = args[1]
  extra = args[2] == "stream" and ',"stream":true' or ""
  run = args[3]
  counter = 0
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(key)s"}
end
function request()
  counter = counter + 1
  local prompt = string.format("%(template)s", run, thread_id, counter)
  local body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"' .. prompt
    .. '"}],"max_tokens":16' .. extra .. '}'
  return wrk.format("POST", nil, headers, body)
end
"""


@dataclass
class Cell:
    """One load run against one target."""

    target: str
    stream: bool
    concurrency: int
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    non_2xx: int = 0
    socket_errors: int = 0
    upstream_completions: int = 0
    error: str | None = None


@dataclass
class TargetReport:
    """How a target started and what it held after its load."""

    name: str
    status: str = "not run"
    ready_s: float | None = None
    rss_mb: float | None = None
    log: str | None = None


@dataclass
class Run:
    """Everything one benchmark run measured."""

    settings: dict
    machine: dict
    encoder: dict = field(default_factory=dict)
    targets: dict[str, TargetReport] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    ratios: dict = field(default_factory=dict)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process in its own session, logging to a file, stopped by its process group id."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path, cwd: Path = REPO) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, url: str, timeout: float) -> float:
        """Seconds from process start until ``url`` answers 200; RuntimeError when it exits or times out."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 6) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"

    def rss_mb(self) -> float:
        """Resident memory of the process and its descendants, MiB."""
        return sum(_rss_kib(pid) for pid in _process_tree(self.process.pid)) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------- load generation


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}[unit]


def parse_wrk(output: str) -> dict:
    """requests/s, p50 and p99 (ms), request and error counts from ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output: {output.strip()[-300:]}")
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.MULTILINE))
    requests = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _milliseconds(percentiles["50"]) if "50" in percentiles else None,
        "p99_ms": _milliseconds(percentiles["99"]) if "99" in percentiles else None,
        "requests": int(requests.group(1)) if requests else 0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    }


class LoadGenerator:
    """Runs wrk against a URL with the unique-prompt Lua script."""

    def __init__(self, scratch: Path, threads: int) -> None:
        self.wrk = shutil.which("wrk")
        if self.wrk is None:
            raise SystemExit("wrk not found: install it (apt-get install wrk)")
        self.threads = threads
        self.script = scratch / "unique_prompt.lua"
        lua_template = PROMPT_TEMPLATE.replace("%", "%%").replace('"', '\\"').format(run="%s", thread="%d", n="%d")
        self.script.write_text(WRK_LUA % {"key": CLIENT_KEY, "template": lua_template})
        self.runs = 0

    def run(self, url: str, model: str, stream: bool, concurrency: int, seconds: int) -> dict:
        self.runs += 1
        tag = f"r{os.getpid()}x{self.runs}"  # unique across runs: warm-up prompts never repeat in a cell
        command = [
            self.wrk, "-t", str(min(self.threads, concurrency)), "-c", str(concurrency), "-d", f"{seconds}s",
            "--timeout", "30s", "--latency", "-s", str(self.script), url, "--", model, "stream" if stream else "plain", tag,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
        return parse_wrk(done.stdout)


def upstream_completions(mock_url: str) -> int:
    with urllib.request.urlopen(f"{mock_url}/stats", timeout=5) as response:
        return json.loads(response.read())["completions"]


def wait_drained(mock_url: str, settle: float = 0.5, limit: float = 60.0) -> None:
    """Wait until the upstream stops receiving: the requests a proxy still had queued when wrk stopped
    must not steal CPU from the next cell."""
    deadline = time.monotonic() + limit
    last = upstream_completions(mock_url)
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = upstream_completions(mock_url)
        if now == last:
            return
        last = now


def check_answers(url: str, model: str) -> None:
    """One plain and one streamed request must come back 200 with the mock's answer; RuntimeError otherwise."""
    for stream in (False, True):
        prompt = PROMPT_TEMPLATE.format(run="check", thread=0, n=int(stream) + int(time.time() * 1000))
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16, "stream": stream}
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{'stream' if stream else 'plain'} request got {error.code}: {error.read()[:300]!r}") from None
        expected = "data: [DONE]" if stream else "chaining or probing"
        if expected not in text:
            raise RuntimeError(f"{'stream' if stream else 'plain'} answer lacks {expected!r}: {text[:300]!r}")


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    """A server to measure: how to start it, where to send load, which model to ask for."""

    name: str
    model: str
    start: Callable[[], tuple[Server | None, str]]  # -> (process or None, chat completions URL)
    ready_path: str = "/ready"


def venv_python(scratch: Path, name: str, steps: list[list[str]]) -> Path:
    """The python of venv ``name`` under ``scratch``, with ``steps`` (pip installs, in order) done once."""
    venv = scratch / "venvs" / name
    marker = venv / ".bench-installed"
    wanted = "\n".join(" ".join(step) for step in steps)
    python = venv / "bin" / "python"
    if marker.is_file() and marker.read_text().strip() == wanted and python.exists():
        return python
    log_path = scratch / "logs" / f"install-{name}.log"
    say(f"installing {name} into {venv} (first run only; minutes); log: {log_path}")
    with open(log_path, "w") as log:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=log, stderr=subprocess.STDOUT)
        for step in steps:
            done = subprocess.run([str(python), "-m", "pip", "install", "-q", *step], stdout=log, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                tail = [line for line in log_path.read_text().splitlines() if "WARNING: Location" not in line][-3:]
                raise RuntimeError(f"pip install {' '.join(step)} failed: {' | '.join(tail)}")
    marker.write_text(wanted + "\n")
    return python


def install_venvs(args: argparse.Namespace, scratch: Path) -> dict[str, Path | str]:
    """RouteLLM's and LiteLLM's venvs, installed before any measurement; a string says why one failed."""
    wanted = {"routellm": ROUTELLM_STEPS, "litellm": LITELLM_STEPS}
    pythons: dict[str, Path | str] = {}
    for name, steps in wanted.items():
        if name in args.targets:
            try:
                pythons[name] = venv_python(scratch, name, steps)
            except (RuntimeError, subprocess.CalledProcessError) as error:
                pythons[name] = f"install failed: {error}"
    return pythons


def setting_pair(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (or ``ROUTEGATE_NAME=VALUE``) from the command line as a pair."""
    name, separator, value = text.partition("=")
    name = name.removeprefix("ROUTEGATE_").removeprefix("routegate_")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def source_commit() -> str:
    """The routegate commit measured, ``+dirty`` when the working tree has changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty.stdout.strip() else "")


def base_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ROUTEGATE_", "OPENAI_", "LITELLM_"))}
    env.update(OFFLINE_ENV)
    env.update(extra)
    return env


def build_targets(
    args: argparse.Namespace, mock_url: str, log_dir: Path, scratch: Path, pythons: dict[str, Path | str]
) -> list[Target | str]:
    """The targets to measure, in order; a string stands for a target that cannot run and says why."""
    upstream = f"{mock_url}/v1"
    targets: list[Target | str] = []
    if "direct" in args.targets:
        targets.append(Target("direct", STRONG_MODEL, lambda: (None, f"{upstream}/chat/completions")))

    if "floor" in args.targets:

        def start_floor() -> tuple[Server, str]:
            port = free_port()
            command = [sys.executable, str(REPO / "bench" / "asgi_floor.py"), "--port", str(port), "--upstream", mock_url]
            return Server("asgi-floor", command, base_env(), log_dir), f"http://127.0.0.1:{port}"

        targets.append(Target("asgi-floor", STRONG_MODEL, start_floor, ready_path="/v1/models"))

    for router in args.routers if "routegate" in args.targets else []:
        if router == "mf" and not (REPO / "routers" / "checkpoints" / "mf").is_dir():
            targets.append(f"routegate-mf: not available (no routers/checkpoints/mf in {REPO})")
            continue

        def start_routegate(router: str = router) -> tuple[Server, str]:
            port = free_port()
            env = base_env(
                ROUTEGATE_STRONG__BASE_URL=upstream, ROUTEGATE_STRONG__MODEL=STRONG_MODEL, ROUTEGATE_STRONG__API_KEY=UPSTREAM_KEY,
                ROUTEGATE_WEAK__BASE_URL=upstream, ROUTEGATE_WEAK__MODEL=WEAK_MODEL, ROUTEGATE_WEAK__API_KEY=UPSTREAM_KEY,
                ROUTEGATE_ROUTER=router, ROUTEGATE_LOG_LEVEL="warning",
                ROUTEGATE_API_KEYS=json.dumps([CLIENT_KEY]),  # a key checked per request, as LiteLLM's master key is
                ROUTEGATE_FEEDBACK_DB=str(scratch / f"feedback-{router}-{port}.sqlite3"),  # a fresh store, not the user's
            )  # fmt: skip
            env.update({f"ROUTEGATE_{name.upper()}": value for name, value in args.setting})
            command = [sys.executable, "-m", "server.cli", "serve", "--port", str(port)]
            return Server(f"routegate-{router}", command, env, log_dir), f"http://127.0.0.1:{port}"

        targets.append(Target(f"routegate-{router}", f"router-{router}-{THRESHOLD}", start_routegate))

    if isinstance(pythons.get("routellm"), str):
        targets.append(f"routellm-random: {pythons['routellm']}")
    elif "routellm" in args.targets:

        def start_routellm(python: Path = pythons["routellm"]) -> tuple[Server, str]:
            port = free_port()
            # RouteLLM's own __main__, but on 127.0.0.1 and at routegate's log level (no access log)
            launcher = (
                "import sys, uvicorn\n"
                f"sys.argv = ['openai_server', '--routers', 'random', '--port', '{port}', '--base-url', '{upstream}',"
                f" '--api-key', '{UPSTREAM_KEY}', '--strong-model', 'openai/{STRONG_MODEL}', '--weak-model', "
                f"'openai/{WEAK_MODEL}']\n"
                "import routellm.openai_server as server\n"
                f"uvicorn.run(server.app, host='127.0.0.1', port={port}, log_level='warning', access_log=False)\n"
            )
            env = base_env(OPENAI_API_KEY=UPSTREAM_KEY)
            return Server("routellm-random", [str(python), "-c", launcher], env, log_dir, cwd=scratch), f"http://127.0.0.1:{port}"

        targets.append(Target("routellm-random", f"router-random-{THRESHOLD}", start_routellm, ready_path="/openapi.json"))

    if isinstance(pythons.get("litellm"), str):
        targets.append(f"litellm: {pythons['litellm']}")
    elif "litellm" in args.targets:

        def start_litellm(python: Path = pythons["litellm"]) -> tuple[Server, str]:
            port = free_port()
            config = scratch / "litellm_config.yaml"
            deployments = [
                {
                    "model_name": f"router-random-{THRESHOLD}",
                    "litellm_params": {"model": f"openai/{model}", "api_base": upstream, "api_key": UPSTREAM_KEY},
                }
                for model in (STRONG_MODEL, WEAK_MODEL)
            ]  # two deployments of one name, picked at random per request: LiteLLM's nearest to a random router
            config.write_text(
                json.dumps(
                    {
                        "model_list": deployments,
                        "router_settings": {"routing_strategy": "simple-shuffle"},
                        "general_settings": {"master_key": CLIENT_KEY},
                        "litellm_settings": {"telemetry": False},
                    },
                    indent=2,
                )
            )  # JSON is YAML
            log_config = scratch / "litellm_log_config.json"  # routegate's log level: warnings, no access log
            log_config.write_text(json.dumps(WARNING_LOG_CONFIG))
            command = [
                str(python.parent / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                "--num_workers", "1", "--log_config", str(log_config),
            ]  # fmt: skip
            env = base_env(LITELLM_LOG="ERROR")
            return Server("litellm", command, env, log_dir, cwd=scratch), f"http://127.0.0.1:{port}"

        targets.append(Target("litellm", f"router-random-{THRESHOLD}", start_litellm, ready_path="/health/liveliness"))
    return targets


# ---------------------------------------------------------------- the run


def measure_encoder(args: argparse.Namespace) -> dict:
    say(f"encoder: {args.encoder_batches} batches of {args.encoder_batch_size} prompts")
    command = [
        sys.executable, str(REPO / "bench" / "encoder_rate.py"), "--batch-size", str(args.encoder_batch_size),
        "--batches", str(args.encoder_batches), "--device", args.device,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=base_env(), timeout=900)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip()[-400:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_target(target: Target, args: argparse.Namespace, load: LoadGenerator, mock_url: str, run: Run) -> None:
    report = run.targets[target.name] = TargetReport(target.name)
    server = None
    try:
        say(f"{target.name}: starting")
        server, base = target.start()
        url = base if server is None else f"{base}/v1/chat/completions"
        if server is not None:
            report.log = str(server.log_path)
            report.ready_s = server.wait_ready(base + target.ready_path, args.ready_timeout)
            say(f"{target.name}: ready after {report.ready_s:.1f} s")
        check_answers(url, target.model)
        for stream in (False, True):
            for concurrency in args.concurrency:
                load.run(url, target.model, stream, concurrency, args.warmup)
                wait_drained(mock_url)
                cell = Cell(target.name, stream, concurrency)
                before = upstream_completions(mock_url)
                try:
                    result = load.run(url, target.model, stream, concurrency, args.duration)
                    cell.__dict__.update(result)
                    if cell.requests < concurrency:  # each connection finished less than one request
                        cell.error = (
                            f"only {cell.requests} requests finished in {args.duration} s over {concurrency} connections: "
                            "raise --duration"
                        )
                    if cell.requests == 0:
                        cell.p50_ms = cell.p99_ms = None
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
                    cell.error = str(error)
                cell.upstream_completions = upstream_completions(mock_url) - before
                cell.error = "; ".join(filter(None, (cell.error, failed_requests(cell)))) or None
                run.cells.append(cell)
                say(f"  {target.name:16} {'stream' if stream else 'plain':6} c={concurrency:<4} {_cell_text(cell)}")
        report.status = "ok"
        if server is not None:
            report.rss_mb = server.rss_mb()
    except Exception as error:  # one target failing must not stop the others
        report.status = f"failed: {type(error).__name__}: {error}"
        say(f"{target.name}: {report.status}")
    finally:
        if server is not None:
            server.stop()


def _cell_text(cell: Cell) -> str:
    if cell.rps is None:
        return f"error: {cell.error}"
    return f"{cell.rps:9.1f} req/s  p50 {_fmt(cell.p50_ms, '8.2f')} ms  p99 {_fmt(cell.p99_ms, '8.2f')} ms  {_cell_note(cell)}"


def _cell_note(cell: Cell) -> str:
    """What makes a cell's numbers doubtful, or an empty string."""
    notes = [cell.error] if cell.error else []
    if cell.rps is not None and cell.upstream_completions < cell.requests:
        notes.append(f"upstream saw only {cell.upstream_completions} of {cell.requests}")
    return "; ".join(notes)


def failed_requests(cell: Cell) -> str | None:
    """Why a cell's rate is not the rate of answered requests (None when every request was answered):
    such a cell is reported but left out of the ratios."""
    if cell.non_2xx or cell.socket_errors:
        return f"{cell.non_2xx} non-2xx answers and {cell.socket_errors} socket errors in {cell.requests} requests"
    return None


def _find(run: Run, target: str, stream: bool, concurrency: int) -> Cell | None:
    for cell in run.cells:
        if (cell.target, cell.stream, cell.concurrency) == (target, stream, concurrency) and cell.rps and not cell.error:
            return cell
    return None


def compute_ratios(run: Run, concurrency: list[int]) -> dict:
    """The issue's ratios, per stream mode and concurrency where they are per cell."""
    ratios: dict = {"per_cell": []}
    pairs = [
        ("routegate_random_over_direct", "routegate-random", "direct"),
        ("floor_over_direct", "asgi-floor", "direct"),
        ("routegate_random_over_floor", "routegate-random", "asgi-floor"),
        ("routegate_random_over_routellm", "routegate-random", "routellm-random"),
        ("routegate_random_over_litellm", "routegate-random", "litellm"),
        ("routegate_mf_over_routellm", "routegate-mf", "routellm-random"),
    ]
    for stream in (False, True):
        for c in concurrency:
            row: dict = {"stream": stream, "concurrency": c}
            for key, top, bottom in pairs:
                a, b = _find(run, top, stream, c), _find(run, bottom, stream, c)
                row[key] = a.rps / b.rps if a and b else None
            ratios["per_cell"].append(row)
        random1, direct1, mf1 = (_find(run, name, stream, 1) for name in ("routegate-random", "direct", "routegate-mf"))
        mode = "stream" if stream else "plain"
        ratios[f"p50_added_ms_c1_routegate_random_{mode}"] = random1.p50_ms - direct1.p50_ms if random1 and direct1 else None
        ratios[f"p50_ms_c1_routegate_mf_{mode}"] = mf1.p50_ms if mf1 else None
        ratios[f"p50_added_ms_c1_routegate_mf_{mode}"] = mf1.p50_ms - direct1.p50_ms if mf1 and direct1 else None
    mf_cells = [cell for cell in run.cells if cell.target == "routegate-mf" and not cell.stream and cell.rps and not cell.error]
    best = max(mf_cells, key=lambda cell: cell.rps or 0) if mf_cells else None
    ratios["mf_rps_over_encoder_rate_cell"] = f"plain c={best.concurrency}" if best else None
    for key, rate_key in (
        ("mf_rps_over_encoder_rate", "prompts_per_s"),
        ("mf_rps_over_encoder_side_by_side_rate", "side_by_side_prompts_per_s"),
    ):
        rate = run.encoder.get(rate_key)
        ratios[key] = best.rps / rate if best and rate else None
    for name in ("routegate-random", "routegate-mf"):
        report = run.targets.get(name)
        key = name.replace("-", "_")
        ratios[f"ready_s_{key}"] = report.ready_s if report else None
        ratios[f"rss_mb_{key}_after_run"] = report.rss_mb if report else None
    return ratios


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(run: Run) -> None:
    print(f"\nproxy overhead, {run.machine['cpus']} CPUs, load average {run.machine['loadavg_start']} at start, "
          f"{run.machine['loadavg_end']} at end; {run.settings['duration_s']:g} s per cell "
          f"after {run.settings['warmup_s']:g} s warm-up")  # fmt: skip
    print(f"routegate {run.settings['routegate_commit']}, settings {run.settings['routegate_settings'] or 'default'}")
    print(f"\n{'target':18} {'mode':6} {'c':>4} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9}  note")
    for cell in run.cells:
        note = _cell_note(cell)
        print(f"{cell.target:18} {'stream' if cell.stream else 'plain':6} {cell.concurrency:>4} {_fmt(cell.rps, '.1f'):>10} "
              f"{_fmt(cell.p50_ms, '.2f'):>9} {_fmt(cell.p99_ms, '.2f'):>9}  {note}")  # fmt: skip
    print(f"\n{'target':18} {'status':8} {'ready s':>8} {'RSS MiB':>8}")
    for report in run.targets.values():
        print(
            f"{report.name:18} {report.status if report.status == 'ok' else '-':8} "
            f"{_fmt(report.ready_s, '.2f'):>8} {_fmt(report.rss_mb, '.0f'):>8}"
        )
    for report in run.targets.values():
        if report.status != "ok":
            print(f"{report.name}: {report.status}")
    encoder = run.encoder
    if "prompts_per_s" in encoder:
        print(f"\nencoder ({encoder['source']}, {encoder['device']}, {encoder['torch_threads']} threads): "
              f"{encoder['prompts_per_s']:.1f} prompts/s at batch {encoder['batch_size']}, "
              f"one prompt p50 {encoder['single_prompt_p50_ms']:.1f} ms")  # fmt: skip
        if "side_by_side_prompts_per_s" in encoder:
            print(f"encoder as {encoder['side_by_side_threads']} side-by-side batches of 1 thread each: "
                  f"{encoder['side_by_side_prompts_per_s']:.1f} prompts/s")  # fmt: skip
    else:
        print(f"\nencoder: failed: {encoder.get('error')}")
    ratios = run.ratios
    print(f"\n{'mode':6} {'c':>4} {'rg/direct':>10} {'floor/direct':>13} {'rg/floor':>9} "
          f"{'rg/RouteLLM':>12} {'rg/LiteLLM':>11} {'mf/RouteLLM':>12}"
          "   (rg = routegate random, floor = bare uvicorn relay; req/s ratios)")  # fmt: skip
    for row in ratios["per_cell"]:
        print(f"{'stream' if row['stream'] else 'plain':6} {row['concurrency']:>4} "
              f"{_fmt(row['routegate_random_over_direct'], '.2f'):>10} "
              f"{_fmt(row['floor_over_direct'], '.2f'):>13} {_fmt(row['routegate_random_over_floor'], '.2f'):>9} "
              f"{_fmt(row['routegate_random_over_routellm'], '.2f'):>12} {_fmt(row['routegate_random_over_litellm'], '.2f'):>11} "
              f"{_fmt(row['routegate_mf_over_routellm'], '.2f'):>12}")  # fmt: skip
    for mode in ("plain", "stream"):
        print(f"{mode}: p50 added by routegate random at c=1: "
              f"{_fmt(ratios[f'p50_added_ms_c1_routegate_random_{mode}'], '.2f')} ms; "
              f"routegate mf p50 at c=1: {_fmt(ratios[f'p50_ms_c1_routegate_mf_{mode}'], '.2f')} ms "
              f"({_fmt(ratios[f'p50_added_ms_c1_routegate_mf_{mode}'], '.2f')} ms over direct)")  # fmt: skip
    for name in ("routegate_random", "routegate_mf"):
        print(f"{name.replace('_', '-')}: /ready {_fmt(ratios[f'ready_s_{name}'], '.2f')} s after start, "
              f"RSS {_fmt(ratios[f'rss_mb_{name}_after_run'], '.0f')} MiB after its load")  # fmt: skip
    mf_ratio = ratios["mf_rps_over_encoder_rate"]
    if mf_ratio is None:
        print("mf req/s / encoder raw batched rate: - (mf not measured)")
    else:
        print(f"mf req/s / encoder raw batched rate: {mf_ratio:.2f} (best mf cell: {ratios['mf_rps_over_encoder_rate_cell']})")
        print(f"mf req/s / encoder side-by-side rate: {_fmt(ratios['mf_rps_over_encoder_side_by_side_rate'], '.2f')}")


#: cell settings of a full run and of --quick
FULL = {"duration": 8, "warmup": 2, "concurrency": "1,32,128", "encoder_batches": 20}
QUICK = {"duration": 3, "warmup": 1, "concurrency": "1,32", "encoder_batches": 5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, help="seconds measured per cell (default 8)")
    parser.add_argument("--warmup", type=int, help="seconds of unmeasured load before each cell (default 2)")
    parser.add_argument("--concurrency", help="comma-separated connection counts (default 1,32,128)")
    parser.add_argument("--routers", default="random,mf", help="routegate routers to measure (default random,mf)")
    parser.add_argument(
        "--targets",
        default="direct,floor,routegate,routellm,litellm",
        help="which targets (default all; floor: bench/asgi_floor.py, a bare uvicorn relay)",
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 s cells, 1 s warm-up, c=1 and 32, 5 encoder batches, for those not given")  # fmt: skip
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: leaves the cores to the servers)")
    parser.add_argument("--encoder-batch-size", type=int, default=32)
    parser.add_argument("--encoder-batches", type=int, help="(default 20)")
    parser.add_argument("--device", default="auto", help="device of the raw encoder measurement (default auto, as routegate's)")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds a server may take to become ready")
    parser.add_argument("--scratch", type=Path, default=Path.home() / ".cache" / "routegate-bench",
                        help="venvs, logs and the wrk script (default ~/.cache/routegate-bench)")  # fmt: skip
    parser.add_argument("--setting", action="append", default=[], type=setting_pair, metavar="NAME=VALUE",
                        help="a routegate setting for this run, as NAME=VALUE or ROUTEGATE_NAME=VALUE (say SCORE_THREADS=1); "
                        "repeatable")  # fmt: skip
    parser.add_argument("--json-out", type=Path, help="also write every number as JSON here")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():  # options given on the command line win over --quick
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    scratch = args.scratch.expanduser().resolve()
    if scratch == REPO or REPO in scratch.parents:
        raise SystemExit("--scratch must be outside the repository")
    log_dir = scratch / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run = Run(
        settings={"duration_s": args.duration, "warmup_s": args.warmup, "concurrency": args.concurrency, "routers": args.routers,
                  "targets": args.targets, "wrk_threads": args.wrk_threads, "threshold": THRESHOLD, "litellm": LITELLM,
                  "routellm": ROUTELLM_STEPS[1][0], "server_stack": SERVER_STACK, "prompt_template": PROMPT_TEMPLATE,
                  "routegate_settings": dict(args.setting), "routegate_commit": source_commit()},
        machine={"cpus": os.cpu_count(), "loadavg_start": " ".join(f"{x:.1f}" for x in os.getloadavg())},
    )  # fmt: skip
    load = LoadGenerator(scratch, args.wrk_threads)
    pythons = install_venvs(args, scratch)
    run.machine["install_s"] = round(time.monotonic() - started, 1)
    run.encoder = measure_encoder(args)
    mock_port = free_port()
    mock = Server(
        "mock-upstream", [sys.executable, str(REPO / "bench" / "mock_upstream.py"), "--port", str(mock_port)], base_env(), log_dir
    )
    mock_url = f"http://127.0.0.1:{mock_port}"
    try:
        mock.wait_ready(f"{mock_url}/stats", 30)
        for target in build_targets(args, mock_url, log_dir, scratch, pythons):
            if isinstance(target, str):
                name, _, reason = target.partition(": ")
                run.targets[name] = TargetReport(name, status=reason)
                say(target)
            else:
                measure_target(target, args, load, mock_url, run)
    finally:
        mock.stop()
    run.machine["loadavg_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    run.machine["wall_s"] = round(time.monotonic() - started, 1)
    run.ratios = compute_ratios(run, args.concurrency)
    print_report(run)
    print(
        f"\nwall time {run.machine['wall_s']:.0f} s ({run.machine['install_s']:.0f} s of it installing "
        f"venvs); server logs in {log_dir}"
    )
    if args.json_out:
        payload = asdict(run)
        args.json_out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
