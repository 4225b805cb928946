"""Reading a chat completion request: size limit, JSON, the checks the OpenAI API makes, and
the text a router scores."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request

from routers.data import content_text
from server.disconnects import ClientGone
from server.errors import APIError, bad_request

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Top-level fields whose type the OpenAI API checks: name -> (accepted types, readable type name).
FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "stream": ((bool,), "boolean"),
    "temperature": ((int, float), "number"),
    "top_p": ((int, float), "number"),
    "presence_penalty": ((int, float), "number"),
    "frequency_penalty": ((int, float), "number"),
    "n": ((int,), "integer"),
    "max_tokens": ((int,), "integer"),
    "max_completion_tokens": ((int,), "integer"),
    "seed": ((int,), "integer"),
    "logprobs": ((bool,), "boolean"),
    "top_logprobs": ((int,), "integer"),
    "user": ((str,), "string"),
    "tools": ((list,), "array"),
    "response_format": ((dict,), "object"),
    "stream_options": ((dict,), "object"),
    "logit_bias": ((dict,), "object"),
    "metadata": ((dict,), "object"),
    "stop": ((str, list), "string or array"),
    "tool_choice": ((str, dict), "string or object"),
    "parallel_tool_calls": ((bool,), "boolean"),
}
# A \uD800-\uDFFF escape: the body may hold a lone surrogate, which is no Unicode text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# JSON levels a body may nest: routegate re-encodes the body for the upstream, and Python's encoder
# fails at about twice this depth
MAX_NESTING = 512
# Objects and arrays a body may open, and members (after each one's first) they may hold:
# decoding, checking and re-encoding millions of them would hold the event loop for seconds, and no
# chat request needs a hundred thousand objects or one object of a million keys
MAX_CONTAINERS = 100_000
MAX_MEMBERS = 200_000
MAX_INT_DIGITS = 100  # a 64-bit seed has 20; vendors' ids and nonces a few more
# A JSON string, escapes included: its brackets are text, not structure. One that never closes
# (invalid JSON, refused later) runs to the end of the body, so that each byte is read once: a
# pattern that must find the closing quote starts again after every quote, and a body of escaped
# quotes (\" \" ...) would hold the event loop for hours.
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+\\?(?:"|\Z)', re.DOTALL)
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
    "n": (1, 128),
    "top_logprobs": (0, 20),
    "max_tokens": (1, float("inf")),
    "max_completion_tokens": (1, float("inf")),
}


async def read_body(request: Request, limit: int, timeout: float, on_received: Callable[[int], None] | None = None) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes and with 408 when
    it has not all arrived within ``timeout`` seconds (a client that stalls mid-upload);
    ``on_received`` is told the bytes received so far after each chunk. A compressed body is
    refused with 415: it would otherwise be read as JSON and called malformed."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise APIError(
            415,
            f"Content-Encoding '{encoding[:32]}' is not supported: send the request body uncompressed.",
            code="unsupported_content_encoding",
        )
    declared = request.headers.get("content-length", "").lstrip("0")
    if declared.isdigit() and (len(declared) > len(str(limit)) or int(declared) > limit):  # int() refuses 4,300 digits
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                if on_received is not None:
                    on_received(size)
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(408, f"The request body did not arrive within {timeout:g} seconds.", code="request_timeout") from None
    except ClientDisconnect:
        raise ClientGone from None
    return b"".join(chunks)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"Request body is larger than the {limit} bytes allowed.", code="request_too_large")


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """Decode and check a chat completion body; raise a 400 APIError naming the bad parameter."""
    containers, members = _structure(body)
    if containers > MAX_CONTAINERS:
        raise bad_request(f"The JSON body holds more than {MAX_CONTAINERS} objects and arrays.", code="invalid_json")
    if members > MAX_MEMBERS:
        raise bad_request(f"The JSON body's objects and arrays hold more than {MAX_MEMBERS} members.", code="invalid_json")
    try:
        payload = json.loads(  # a str: bytes would pass encoded surrogates
            body.decode("utf-8-sig"), parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_short_int
        )
        if _SURROGATE_ESCAPE.search(body):
            json.dumps(payload, ensure_ascii=False).encode()  # raises on a lone surrogate
    except (ValueError, RecursionError):
        raise bad_request(
            "We could not parse the JSON body of your request. The body must be valid JSON (UTF-8).",
            code="invalid_json",
        ) from None
    if containers > MAX_NESTING and _nested_deeper(payload, MAX_NESTING):
        raise bad_request(f"The JSON body nests more than {MAX_NESTING} levels deep.", code="invalid_json")
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_type")
    model = payload.get("model")
    if model is None:
        raise bad_request("you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a non-empty string.", param="model", code="invalid_type")
    _check_messages(payload.get("messages"))
    for name, (types, type_name) in FIELD_TYPES.items():
        value = payload.get(name)
        if value is None:
            continue
        if not _has_type(value, types):
            raise bad_request(f"Invalid type for '{name}': expected {type_name}.", param=name, code="invalid_type")
        low, high = RANGES.get(name, (None, None))
        if low is not None and not low <= value <= high:
            raise bad_request(f"Invalid value for '{name}': must be between {low} and {high}.", param=name, code="invalid_value")
    _check_tools(payload.get("tools"))
    _check_stream_options(payload.get("stream_options"))
    return payload


def _structure(body: bytes) -> tuple[int, int]:
    """About how many objects and arrays a JSON body opens, and how many commas separate their
    members, counted in its bytes before decoding (exact for valid JSON once brackets and commas
    inside strings are left out, which only large counts need)."""
    containers, commas = body.count(b"[") + body.count(b"{"), body.count(b",")
    if containers <= MAX_CONTAINERS and commas <= MAX_MEMBERS:
        return containers, commas
    structure = _JSON_STRING.sub(b'""', body)
    return structure.count(b"[") + structure.count(b"{"), structure.count(b",")


def _nested_deeper(value: object, limit: int) -> bool:
    """Whether a decoded JSON value nests objects and arrays more than ``limit`` levels (no recursion)."""
    stack: list[tuple[dict | list, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _has_type(value: object, types: tuple[type, ...]) -> bool:
    """JSON Schema's typing: a bool is no number, and an integral number such as 2.0 is an integer."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, float) and int in types and value.is_integer():
        return True
    return isinstance(value, types)


def _refuse_constant(name: str) -> float:
    """NaN and Infinity are not JSON; Python's parser would accept them."""
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; ValueError for one too large to be finite (``1e999``), which
    would be sent upstream as ``Infinity``, not JSON."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


def _short_int(text: str) -> int:
    """A JSON integer of at most ``MAX_INT_DIGITS`` digits; ValueError for a longer one: Python reads
    and writes integers of thousands of digits in time that grows with their square, so a body of
    them would hold the event loop many times longer than its size says."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _check_tools(tools: object) -> None:
    if isinstance(tools, list):
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise bad_request(
                    f"Invalid type for 'tools[{index}]': expected an object.", param=f"tools[{index}]", code="invalid_type"
                )


def _check_stream_options(options: object) -> None:
    """``include_usage`` decides whether routegate adds the usage chunk or strips it: a boolean or absent."""
    if isinstance(options, dict) and options.get("include_usage") is not None and not isinstance(options["include_usage"], bool):
        param = "stream_options.include_usage"
        raise bad_request(f"Invalid type for '{param}': expected a boolean.", param=param, code="invalid_type")


def _check_messages(messages: object) -> None:
    if messages is None:
        raise bad_request("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list):
        raise bad_request("Invalid type for 'messages': expected an array.", param="messages", code="invalid_type")
    if not messages:
        raise bad_request("'messages' must contain at least one message.", param="messages", code="empty_array")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
        role = message.get("role")
        if not isinstance(role, str):
            raise bad_request(f"Missing or invalid '{param}.role'.", param=f"{param}.role", code="invalid_type")
        if role not in ROLES:
            raise bad_request(
                f"Invalid value for '{param}.role': '{role[:64]}'. Supported: {', '.join(sorted(ROLES))}.",
                param=f"{param}.role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(
                f"Invalid type for '{param}.content': expected a string or an array of content parts.",
                param=f"{param}.content",
                code="invalid_type",
            )
        if isinstance(content, list) and not all(
            isinstance(part, dict) and isinstance(part.get("type"), str) for part in content
        ):
            raise bad_request(
                f"Invalid type for '{param}.content': every content part must be an object with a string 'type'.",
                param=f"{param}.content",
                code="invalid_type",
            )


def message_text(message: dict[str, Any]) -> str:
    """A message's text: its string content, or its text parts joined by newlines."""
    return content_text(message.get("content"))


def routed_text(messages: list[dict[str, Any]], mode: str, turns: int, max_chars: int) -> str:
    """What the router scores, its first ``max_chars`` characters: the last user message with
    text (``last_user``), or the last ``turns`` user and assistant messages newest first
    (``conversation``: the encoders read a text's first tokens, and the newest turn is what is
    asked). Without user text (a system prompt alone, an image alone), the last system or
    developer message's text."""
    if mode == "conversation":
        recent = [message for message in messages if message.get("role") in ("user", "assistant")][-turns:]
        text = "\n\n".join(f"{message['role']}: {message_text(message)}" for message in reversed(recent))
        if any(message["role"] == "user" and message_text(message).strip() for message in recent):
            return text[:max_chars]
    for roles in (("user",), ("system", "developer")):
        for message in reversed(messages):
            if message.get("role") in roles and (text := message_text(message)).strip():
                return text[:max_chars]
    return ""
