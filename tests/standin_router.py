"""A deterministic stand-in router for tests, used only while no learned router is shipped:
its score rises with the share of math characters in the prompt, spread by a hash of the prompt.

``python -m tests.standin_router serve ...`` runs ``routegate`` with it registered as ``standin``.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Sequence

from routers import registry
from routers.base import Router

NAME = "standin"


class MathinessRouter(Router):
    """Scores math-heavy prompts higher; deterministic and cheap."""

    name = NAME
    blocking = False

    @classmethod
    def from_options(cls, options: object) -> MathinessRouter:
        return cls()

    def score(self, prompts: Sequence[str]) -> list[float]:
        scores = []
        for prompt in prompts:
            math_chars = sum(char.isdigit() or char in "$\\=+^*/" for char in prompt)
            mathiness = 1.0 - math.exp(-20.0 * math_chars / max(len(prompt), 1))
            spread = int(hashlib.sha1(prompt.encode()).hexdigest()[:8], 16) / 2**32
            scores.append(0.6 * mathiness + 0.4 * spread)
        return scores


if __name__ == "__main__":
    registry.register(NAME, "tests.standin_router:MathinessRouter.from_options")
    from server.cli import main

    sys.exit(main())
