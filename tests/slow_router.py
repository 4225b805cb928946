"""A router that takes ``SLOW_ROUTER_SECONDS`` (default 0.5) per batch, for scoring-overload tests,
and ``SLOW_ROUTER_LOAD_SECONDS`` (default 0) to load, for readiness tests; with
``SLOW_ROUTER_NEEDS`` set, loading fails while that file does not exist; with
``SLOW_ROUTER_LOADS`` set, each load appends a line to that file; with ``SLOW_ROUTER_HANG_WHILE``
set, loading waits while that file exists.

``python -m tests.slow_router serve ...`` runs ``routegate`` with it registered as ``slow``; it is
installed where ``<checkpoint_dir>/slow`` exists.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from routers import registry
from routers.base import Router

NAME = "slow"


class SlowRouter(Router):
    """Scores every prompt 0.5, slowly, on the scoring threads."""

    name = NAME
    blocking = True

    @classmethod
    def from_options(cls, options: object) -> SlowRouter:
        if loads := os.environ.get("SLOW_ROUTER_LOADS"):
            with open(loads, "a") as count:
                count.write("load\n")
        time.sleep(float(os.environ.get("SLOW_ROUTER_LOAD_SECONDS", "0")))
        while (hang := os.environ.get("SLOW_ROUTER_HANG_WHILE")) and os.path.exists(hang):
            time.sleep(0.1)  # a load that never ends while that file exists
        needs = os.environ.get("SLOW_ROUTER_NEEDS")
        if needs is not None and not os.path.exists(needs):
            raise FileNotFoundError(needs)
        return cls()

    def score(self, prompts: Sequence[str]) -> list[float]:
        time.sleep(float(os.environ.get("SLOW_ROUTER_SECONDS", "0.5")))
        return [0.5] * len(prompts)


# at import, not only when run: worker processes (ROUTEGATE_WORKERS > 1) import this module again
registry.register(NAME, "tests.slow_router:SlowRouter.from_options")

if __name__ == "__main__":
    from server.cli import main

    sys.exit(main())
