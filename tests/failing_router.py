"""A router that raises for prompts containing ``FAIL``, lets a ``StopIteration`` out for prompts
containing ``STOP`` (a ``next()`` on an empty iterator), scores NaN for prompts containing ``NAN``
(0.0 otherwise), to test what clients get when a router breaks.

``python -m tests.failing_router serve ...`` runs ``routegate`` with it registered as ``failing``,
and with defects planted: deciding raises for a request whose last message holds ``DEFECT``,
and relaying the answer to one whose ``x-request-id`` is ``late-defect``, once the weak upstream has answered it,
``while-building``, while its response is built, or ``after-recording``, once its answer is recorded (what a
bug in routegate itself looks like to a client).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from routers import registry
from routers.base import Router

NAME = "failing"


class FailingRouter(Router):
    """Raises on ``FAIL``; sends everything else to the weak tier."""

    name = NAME
    blocking = os.environ.get("FAILING_ROUTER_BLOCKING") == "1"  # scored in batches on a thread, as mf is

    @classmethod
    def from_options(cls, options: object) -> FailingRouter:
        return cls()

    def score(self, prompts: Sequence[str]) -> list[float]:
        if any("FAIL" in prompt for prompt in prompts):
            raise RuntimeError("the failing router failed on purpose, secret detail /home/user/model.bin")
        if any("STOP" in prompt for prompt in prompts):
            next(iter(()))  # StopIteration, which an asyncio Future cannot hold
        return [float("nan") if "NAN" in prompt else 0.0 for prompt in prompts]


def plant_defect() -> None:
    """Make ``Decider.decide`` raise an unexpected error for requests that ask for ``DEFECT``, and
    the relay step for the requests ``late-defect``, ``while-building`` (its plain answer's
    response) and ``after-recording``."""
    import server.proxy
    import server.replies
    from server.deciding import Decider

    decide = Decider.decide

    async def defective(self: Decider, route: object, payload: dict[str, Any], *args: object) -> object:
        if "DEFECT" in str(payload["messages"][-1].get("content")):
            raise KeyError("a planted defect, secret detail /home/user/model.bin")
        return await decide(self, route, payload, *args)  # type: ignore[arg-type]

    Decider.decide = defective  # type: ignore[method-assign,assignment]

    reply = server.proxy.reply
    building = [False]  # the request being relayed is ``while-building``

    async def defective_reply(exchange: Any, *args: Any) -> Any:
        if exchange.decision.request_id == "late-defect":
            raise KeyError("a planted defect after the upstream answered, secret detail /home/user/model.bin")
        building[0] = exchange.decision.request_id == "while-building"
        response = await reply(exchange, *args)
        if exchange.decision.request_id == "after-recording":
            raise KeyError("a planted defect after the answer was recorded, secret detail /home/user/model.bin")
        return response

    class DefectiveResponse(server.replies.WholeResponse):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if building[0]:
                building[0] = False
                raise KeyError("a planted defect while building the answer, secret detail /home/user/model.bin")
            super().__init__(*args, **kwargs)

    server.proxy.reply = defective_reply  # type: ignore[assignment]
    server.replies.WholeResponse = DefectiveResponse  # type: ignore[misc]


if __name__ == "__main__":
    registry.register(NAME, "tests.failing_router:FailingRouter.from_options")
    plant_defect()
    from server.cli import main

    sys.exit(main())
