"""A fake judge: an OpenAI-compatible upstream whose reply ends with ``[[A]]``, ``[[B]]`` or ``[[C]]``
as its ``verdict`` function decides from the two answers it was shown."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream, Received

_ANSWERS = re.compile(
    r"\[User Question\]\n(?P<question>.*)\n\n"
    r"\[The Start of Assistant A's Answer\]\n(?P<a>.*)\n\[The End of Assistant A's Answer\].*"
    r"\[The Start of Assistant B's Answer\]\n(?P<b>.*)\n\[The End of Assistant B's Answer\]",
    re.DOTALL,
)
Verdict = Callable[[str, str, str], str]  # (question, answer A, answer B) -> the reply's last words


def prefer(word: str) -> Verdict:
    """A judge that prefers the answer containing ``word`` ([[C]] when neither or both do)."""

    def verdict(question: str, answer_a: str, answer_b: str) -> str:
        in_a, in_b = word in answer_a, word in answer_b
        return "[[A]]" if in_a and not in_b else "[[B]]" if in_b and not in_a else "[[C]]"

    return verdict


def always(reply: str) -> Verdict:
    """A judge that ends every reply with ``reply`` (``[[A]]``: position-biased; other text: unparsable)."""
    return lambda question, answer_a, answer_b: reply


class FakeJudge(FakeUpstream):
    """Judges with ``verdict``; ``behaviour.delay`` slows every reply."""

    def __init__(self, name: str = "judge") -> None:
        super().__init__(name)
        self.verdict: Verdict = prefer("strong")

    def reset(self) -> None:
        super().reset()
        self.verdict = prefer("strong")

    def shown(self) -> list[tuple[str, str]]:
        """The (answer A, answer B) pairs of every request received."""
        pairs = []
        for received in self.received:
            match = _ANSWERS.search(received.body["messages"][-1]["content"])
            assert match, received.body
            pairs.append((match["a"], match["b"]))
        return pairs

    async def _answer(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        self.received.append(Received(dict(request.headers), body))
        if self.behaviour.delay:
            await asyncio.sleep(self.behaviour.delay)
        match = _ANSWERS.search(body["messages"][-1]["content"])
        verdict = self.verdict(match["question"], match["a"], match["b"]) if match else "no answers found"
        reply = "Both answers compared. " + verdict
        answer = self.completion(body["model"])
        answer["choices"][0]["message"]["content"] = reply
        answer["usage"] = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        }
        return JSONResponse(answer)
