"""Token counts for answers an upstream reported no usage for: a stream the client left before
its usage chunk, a stream cut short, an upstream that refuses ``stream_options`` or omits
``usage``. Without them such answers would cost nothing in the metrics and the daily budget.

The estimates are rough on purpose (no tokenizer for every upstream's model): four characters
of text per token here, and, for a stream, a token per chunk with choices
(``relay.StreamWatcher.choice_chunks``): OpenAI-compatible servers stream about one token per chunk.
"""

from __future__ import annotations

import json
from typing import Any

from routers.data import content_text

CHARS_PER_TOKEN = 4
_ANSWER_TEXT_FIELDS = ("content", "refusal", "reasoning_content")


def prompt_tokens(payload: dict[str, Any]) -> int:
    """About how many tokens a chat request holds: its messages (at least one token each, with
    their tool calls) and its tool definitions."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return 0
    tokens = sum(
        1 + (len(content_text(message.get("content"))) + _json_chars(message.get("tool_calls"))) // CHARS_PER_TOKEN
        for message in messages
        if isinstance(message, dict)
    )
    return tokens + _json_chars(payload.get("tools")) // CHARS_PER_TOKEN


def answer_tokens(answer: object) -> int:
    """About how many tokens a whole chat completion's (parsed JSON) choices hold: their text and
    tool calls; 0 for anything else."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        return 0
    characters = 0
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            characters += sum(len(content_text(message.get(field))) for field in _ANSWER_TEXT_FIELDS)
            characters += _json_chars(message.get("tool_calls"))
    return -(-characters // CHARS_PER_TOKEN)  # rounded up: any text is at least one token


def bytes_tokens(answer_bytes: int) -> int:
    """About how many tokens an answer of ``answer_bytes`` bytes holds (all of them text: an answer
    that could not be read as one is estimated by its size)."""
    return -(-answer_bytes // CHARS_PER_TOKEN)


def _json_chars(value: object) -> int:
    """Characters of a JSON value (tool definitions or calls); 0 when absent."""
    return len(json.dumps(value)) if value else 0
