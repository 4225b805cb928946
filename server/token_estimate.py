"""Token counts for answers an upstream reported no usage for: a stream the client left before
its usage chunk, a stream cut short, an upstream that refuses ``stream_options`` or omits
``usage``. Without them such answers would cost nothing in the metrics and the daily budget.

The estimates are rough on purpose (no tokenizer for every upstream's model): four characters
of text per token, and one token per streamed content chunk, which is how OpenAI-compatible
servers stream by default.
"""

from __future__ import annotations

import json
from typing import Any

from server.chat_request import message_text

CHARS_PER_TOKEN = 4


def prompt_tokens(payload: dict[str, Any]) -> int:
    """About how many tokens a chat request's messages hold (at least one per message)."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(1 + len(message_text(message)) // CHARS_PER_TOKEN for message in messages if isinstance(message, dict))


def answer_tokens(answer: object) -> int:
    """About how many tokens a whole chat completion's (parsed JSON) choices hold: their text and tool calls."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        return 0
    characters = 0
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            characters += len(message_text(message))
            calls = message.get("tool_calls")
            if isinstance(calls, list):
                characters += len(json.dumps(calls))
    return -(-characters // CHARS_PER_TOKEN)  # rounded up: any text is at least one token
