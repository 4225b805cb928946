"""A router that raises for prompts containing ``FAIL``, scores NaN for prompts containing ``NAN``
(0.0 otherwise), to test what clients get when a router breaks.

``python -m tests.failing_router serve ...`` runs ``routegate`` with it registered as ``failing``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from routers import registry
from routers.base import Router

NAME = "failing"


class FailingRouter(Router):
    """Raises on ``FAIL``; sends everything else to the weak tier."""

    name = NAME
    blocking = False

    @classmethod
    def from_options(cls, options: object) -> FailingRouter:
        return cls()

    def score(self, prompts: Sequence[str]) -> list[float]:
        if any("FAIL" in prompt for prompt in prompts):
            raise RuntimeError("the failing router failed on purpose, secret detail /home/user/model.bin")
        return [float("nan") if "NAN" in prompt else 0.0 for prompt in prompts]


if __name__ == "__main__":
    registry.register(NAME, "tests.failing_router:FailingRouter.from_options")
    from server.cli import main

    sys.exit(main())
