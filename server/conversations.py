"""Sticky conversations: once a conversation went to the strong tier, its follow-ups stay there.

A conversation is known by the client's ``x-routegate-conversation-id`` header or, without it,
by a hash of its messages (with client keys, each client's own: the key's fingerprint comes
first): a strong request remembers the hash of all its messages, and a
follow-up (the same messages, the assistant's reply, a new user turn) finds it by hashing the
messages before its last assistant reply. The store is per process, bounded (least recently
used entries go first) and forgets a conversation after ``ttl`` seconds without a request.
With more than two models it remembers which upstream the conversation got.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from server.chat_request import message_text

CONVERSATION_HEADER = "x-routegate-conversation-id"
_MAX_ID_CHARS = 256


@dataclass(frozen=True)
class ConversationKeys:
    """Where to look a conversation up (``previous``; None for a first turn) and where to remember it."""

    previous: str | None
    current: str


def _messages_hash(messages: list[dict[str, Any]]) -> str:
    canonical = [
        [message.get("role"), message_text(message), message.get("name"), message.get("tool_call_id")] for message in messages
    ]
    return "h:" + hashlib.sha256(json.dumps(canonical, ensure_ascii=False).encode()).hexdigest()


def conversation_keys(messages: list[dict[str, Any]], conversation_id: str | None, client: str = "") -> ConversationKeys:
    """The keys of a request: its client-given id, else hashes of its earlier and of all messages;
    with a ``client`` fingerprint (client keys set), within that client's conversations only."""
    scope = f"{client}:" if client else ""
    if conversation_id:
        key = f"id:{scope}" + conversation_id[:_MAX_ID_CHARS]
        return ConversationKeys(previous=key, current=key)
    last_reply = max((index for index, message in enumerate(messages) if message.get("role") == "assistant"), default=None)
    previous = None if last_reply is None else scope + _messages_hash(messages[:last_reply])
    return ConversationKeys(previous=previous, current=scope + _messages_hash(messages))


class StickyStore:
    """Conversations that went strong, bounded to ``max_size`` entries, each kept ``ttl`` seconds
    after its last use."""

    def __init__(self, max_size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_size = max_size
        self.ttl = ttl
        self._clock = clock
        self._expiry: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key -> (expiry, upstream)

    def __len__(self) -> int:
        """Conversations remembered and not expired (the expired ones, oldest first, go now)."""
        self._drop_expired(self._clock())
        return len(self._expiry)

    def is_strong(self, key: str | None) -> bool:
        """Whether ``key``'s conversation went strong and has not expired; refreshes it if so."""
        return self.recall(key) is not None

    def recall(self, key: str | None) -> str | None:
        """The upstream ``key``'s conversation was remembered with, unless expired; refreshes it."""
        if key is None:
            return None
        kept = self._expiry.get(key)
        now = self._clock()
        if kept is None:
            return None
        if kept[0] <= now:
            del self._expiry[key]
            return None
        self._expiry[key] = (now + self.ttl, kept[1])
        self._expiry.move_to_end(key)
        return kept[1]

    def peek(self, key: str) -> tuple[str, float] | None:
        """The upstream ``key``'s conversation was remembered with and its seconds left, unless
        expired; without refreshing it."""
        kept = self._expiry.get(key)
        now = self._clock()
        return (kept[1], kept[0] - now) if kept is not None and kept[0] > now else None

    def remember(self, key: str, upstream: str = "1", order: Sequence[str] = ()) -> None:
        """Mark ``key``'s conversation strong (or as sent to ``upstream``) for the next ``ttl``
        seconds; with ``order`` (the models from least to most capable), one remembered with a
        more capable model keeps it."""
        now = self._clock()
        kept = self._expiry.get(key)
        if kept is not None and kept[0] > now and capability_rank(kept[1], order) > capability_rank(upstream, order):
            upstream = kept[1]
        self._expiry[key] = (now + self.ttl, upstream)
        self._expiry.move_to_end(key)
        self._drop_expired(now)

    def _drop_expired(self, now: float) -> None:
        """Forget expired conversations, and the least recently used beyond ``max_size``: entries
        are in order of last use, so of expiry too."""
        while self._expiry:
            oldest, (expiry, _) = next(iter(self._expiry.items()))
            if len(self._expiry) <= self.max_size and expiry > now:
                break
            del self._expiry[oldest]


def capability_rank(upstream: str, order: Sequence[str]) -> int:
    """``upstream``'s place in ``order`` (least capable first); -1 when it is not there."""
    return order.index(upstream) if upstream in order else -1
