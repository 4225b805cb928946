"""``routegate demo`` end to end: a real local LLM (SmolLM2-135M-Instruct) behind a real routegate,
called with the openai SDK and no API key.

Costs about 1 to 2 minutes on 2 CPU cores, almost all of it reading the GGUF model on a cold
cache (as on a fresh machine); the second start, from the converted copy, takes seconds. The
completions are kept to a few tokens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import REPO, stop_process
from tests.fake_upstream import free_port
from tests.metric_values import wait_for
from tests.metrics_text import metric_sum

READY_LINE = "routegate demo is ready"
START_TIMEOUT = 600


def test_demo_answers_a_real_completion_plain_and_streamed(tmp_path: Path) -> None:
    port, llm_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ROUTEGATE_", "OPENAI_"))}
    cache = tmp_path / "cache"
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(cache)})
    # a user's own upstreams in the environment: the demo serves the local LLM regardless
    nowhere = {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-unused", "input_price": 1, "output_price": 1}
    env["ROUTEGATE_MODELS"] = json.dumps([{"name": "a", "model": "x", **nowhere}, {"name": "b", "model": "y", **nowhere}])
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log_file:
        demo = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "demo", "--port", str(port), "--llm-port", str(llm_port), "--router", "random"],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while READY_LINE not in log_path.read_text(errors="replace"):
            assert demo.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.5)
        printed = log_path.read_text(errors="replace")
        api = f"http://127.0.0.1:{port}/v1"
        assert api in printed and "curl -si" in printed and "from openai import OpenAI" in printed
        # nothing but the demo's own progress line before the banner: no uvicorn, model-loading or polling lines
        before_banner = [line for line in printed.split(READY_LINE)[0].splitlines() if line.strip()]
        assert len(before_banner) == 1 and before_banner[0].startswith("routegate demo: loading"), printed
        assert "this first time" in before_banner[0]  # an empty cache: the model is converted, which takes a while

        client = OpenAI(base_url=api, api_key="demo")
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages, max_tokens=8, temperature=0)
        reply = raw.parse()
        answer = reply.choices[0].message.content
        assert answer.strip()
        assert 0 < reply.usage.completion_tokens <= 8
        assert raw.headers["x-routegate-router"] == "random"
        assert raw.headers["x-routegate-model"] == reply.model == f"smollm2-135m-{raw.headers['x-routegate-tier']}"

        stream = client.chat.completions.create(
            model="smollm2-135m-weak", messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert text.strip()
        assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 6
        earlier = reply.usage.completion_tokens if raw.headers["x-routegate-tier"] == "weak" else 0
        expected = chunks[-1].usage.completion_tokens + earlier  # the stream's tokens and the weak answer's

        def metered() -> float:  # a stream is recorded as it closes, just after its last chunk went out
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            return metric_sum(metrics, "routegate_tokens_total", kind="completion", model="smollm2-135m-weak")

        assert wait_for(lambda: metered() == expected, timeout=10), (metered(), expected)
        demo.send_signal(signal.SIGINT)  # Ctrl-C, as the banner says
        assert demo.wait(timeout=30) == 0
        assert "Traceback" not in log_path.read_text(errors="replace")
    finally:
        stop_process(demo, timeout=30)
    try:  # the demo stops its LLM server with itself
        httpx.get(f"http://127.0.0.1:{llm_port}/health", timeout=2)
        raise AssertionError("the local LLM server outlived the demo")
    except httpx.TransportError:
        pass

    # the second start reads the converted copy and answers the same (greedy) completion
    assert [path.name for path in (cache / "routegate").iterdir()] == ["SmolLM2-135M-Instruct.Q4_1-98362432"]
    with open(tmp_path / "llm.log", "wb") as log_file:
        llm = subprocess.Popen(
            [sys.executable, "-m", "demo.local_llm", "--port", str(llm_port)],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert llm.poll() is None and time.monotonic() < deadline, (tmp_path / "llm.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{llm_port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        local = OpenAI(base_url=f"http://127.0.0.1:{llm_port}/v1", api_key="none")
        again = local.chat.completions.create(model="any-name", messages=messages, max_tokens=8, temperature=0)
        assert again.choices[0].message.content == answer and again.model == "any-name"
        with pytest.raises(openai.BadRequestError) as refused:  # one choice per request
            local.chat.completions.create(model="any-name", messages=messages, max_tokens=2, n=2)
        assert refused.value.body["param"] == "n"
    finally:
        stop_process(llm, timeout=30)


@pytest.mark.parametrize("option", ["--port", "--llm-port"])
def test_demo_refuses_a_port_in_use_before_loading_anything(option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = {"--port": str(free_port()), "--llm-port": str(free_port()), option: str(busy)}
        port_options = [part for pair in ports.items() for part in pair]
        env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
        done = subprocess.run(
            [sys.executable, "-m", "server.cli", "demo", "--router", "random", *port_options],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done
    assert f"port {busy} on 127.0.0.1 is already in use" in done.stderr and option in done.stderr
    assert READY_LINE not in done.stdout + done.stderr and "loading" not in done.stdout


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--host", "0.0.0.0"], "reachable"),  # an open listener without client keys
        (["--port", "{port}", "--llm-port", "{port}"], "--port and --llm-port are both"),
    ],
)
def test_demo_refuses_settings_it_cannot_serve_before_loading_anything(options: list[str], said: str) -> None:
    port = str(free_port())
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "ROUTEGATE_API_KEYS", "ROUTEGATE_ALLOW_UNAUTHENTICATED"))
    }
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "demo", "--router", "random", *(part.format(port=port) for part in options)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and said in done.stderr and "Traceback" not in done.stderr, done
    assert "loading" not in done.stdout


def test_ctrl_c_while_the_llm_loads_stops_both_without_a_traceback(tmp_path: Path) -> None:
    llm_port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ROUTEGATE_", "OPENAI_"))}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")})
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log_file:
        demo = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "demo", "--port", str(free_port()), "--llm-port", str(llm_port)],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for(lambda: "routegate demo: loading" in log_path.read_text(errors="replace"), timeout=60)
        llm_log = Path(re.search(r"log: (\S+local-llm\.log)", log_path.read_text(errors="replace"))[1])
        # the LLM server has started and is loading (its own imports done long after the demo started it)
        assert wait_for(lambda: llm_log.exists() and "loading" in llm_log.read_text(errors="replace"), timeout=60)
        assert _llm_processes(llm_port)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
    finally:
        stop_process(demo, timeout=30)
    printed = log_path.read_text(errors="replace")
    assert "Traceback" not in printed and "routegate demo: stopped" in printed, printed
    assert _llm_processes(llm_port) == []  # its LLM server was stopped with it


def _llm_processes(port: int) -> list[str]:
    """The process ids of local LLM servers started for ``port`` (Linux /proc)."""
    found = []
    for process in Path("/proc").iterdir():
        try:
            command = (process / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone while listed
            continue
        if b"demo.local_llm" in command and str(port).encode() in command:
            found.append(process.name)
    return found


def test_the_banner_says_a_key_is_needed_when_client_keys_are_set() -> None:
    """A user with ROUTEGATE_API_KEYS in their shell: the demo keeps it, and its examples say so."""
    from demo.run import banner

    keyed = banner("http://127.0.0.1:8000", "mf", "http://127.0.0.1:9", keyed=True)
    assert "-H 'authorization: Bearer <one of ROUTEGATE_API_KEYS>'" in keyed and 'api_key="<one of ROUTEGATE_API_KEYS>"' in keyed
    open_one = banner("http://127.0.0.1:8000", "mf", "http://127.0.0.1:9")
    assert "authorization" not in open_one and 'api_key="demo"' in open_one
