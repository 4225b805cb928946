"""``routegate demo`` end to end: a real local LLM (SmolLM2-135M-Instruct) behind a real routegate,
called with the openai SDK and no API key.

Costs about 1 to 2 minutes on 2 CPU cores, almost all of it loading the GGUF model
(de-quantising and converting its tokenizer); the completions are kept to a few tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

from tests.conftest import REPO
from tests.fake_upstream import free_port

READY_LINE = "routegate demo is ready"
START_TIMEOUT = 600


def test_demo_answers_a_real_completion_plain_and_streamed(tmp_path: Path) -> None:
    port, llm_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ROUTEGATE_", "OPENAI_"))}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
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

        client = OpenAI(base_url=api, api_key="demo")
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages, max_tokens=8, temperature=0)
        reply = raw.parse()
        assert reply.choices[0].message.content.strip()
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
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'routegate_tokens_total{kind="completion",model="smollm2-135m-weak",tier="weak"}' in metrics
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    try:  # the demo stops its LLM server with itself
        httpx.get(f"http://127.0.0.1:{llm_port}/health", timeout=2)
        raise AssertionError("the local LLM server outlived the demo")
    except httpx.TransportError:
        pass
