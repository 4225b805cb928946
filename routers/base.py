"""The router contract every routing model implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence


class Router(ABC):
    """Scores prompts: the probability that the strong model's answer beats the weak model's.

    A score of 1.0 means the prompt needs the strong model; the gateway routes to the strong
    tier when ``score >= threshold``.
    """

    name: str = "router"
    #: False for routers so cheap that scoring on the event loop beats handing it to a thread.
    blocking: bool = True
    #: False for routers whose score for the same text may change (the random baseline).
    cacheable: bool = True

    @abstractmethod
    def score(self, prompts: Sequence[str]) -> list[float]:
        """Return one win probability in [0, 1] per prompt, in order."""
