"""``POST /v1/chat/completions``, top to bottom:

parse -> resolve model (and a trusted client's override) -> admit -> decide (score) -> forward -> relay -> record.

Each step is its own module: chat_request (parse; body_budget bounds the bodies being read and
parsed at once), model_names (resolve), admission (admit),
deciding (decide), forwarding (forward), replies (relay), recording (record). Admission comes
before scoring, so a refused request costs no router time; the books (sticky memory, target
feedback, budget) are written once, from the outcome, for requests an upstream answered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server import metrics
from server.admission import Admission
from server.body_budget import BodyBudget, Hold
from server.chat_request import parse_chat_request, read_body
from server.client_keys import client_fingerprint
from server.cost_targets import CostTargets
from server.deciding import Decider
from server.decision import Decision
from server.disconnects import ClientGone, cancelled_on_disconnect
from server.errors import APIError, bad_request
from server.forwarding import Exchange, Forwarder, Sent
from server.ladder import Ladder
from server.model_names import ModelNames, Target
from server.overrides import NO_OVERRIDE, read_override, trusted
from server.recording import Outcome, Recorder
from server.relay import RelayResponse
from server.replies import reply
from server.scoring import ScorerPool
from server.settings import Settings
from server.shared_sticky import SharedSticky
from server.shared_targets import SharedTargets
from server.shutdown import DRAIN
from server.targets import ROUTE_IDLE_SECONDS, TooManyRoutes
from server.token_estimate import prompt_tokens
from server.upstream import StreamStart, Upstream

log = logging.getLogger("routegate.proxy")


def request_id_of(request: Request) -> str:
    """The client's ``x-request-id`` when it is short, ASCII, printable and without spaces (it is
    one field of the log line), else a new one."""
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= 128 and given.isascii() and given.isprintable() and " " not in given:
        return given
    return uuid.uuid4().hex


class Ticket:
    """What one request holds while it is handled (its in-flight count, its body's bytes, then an
    upstream slot); ``close`` gives them back, once."""

    def __init__(self, admission: Admission, body: Hold, client: str = "") -> None:
        self.admission = admission
        self.body = body
        self.client = client
        self.admitted = self.closed = False
        metrics.IN_FLIGHT.inc()

    async def admit(self) -> None:
        await self.admission.acquire(self.client)
        self.admitted = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            metrics.IN_FLIGHT.dec()
            self.body.release()
            if self.admitted:
                self.admission.release(self.client)


class ChatProxy:
    """Handles chat completion requests for one gateway."""

    def __init__(
        self,
        settings: Settings,
        ladder: Ladder,
        upstreams: dict[str, Upstream],
        names: ModelNames,
        scorers: ScorerPool,
        targets: SharedTargets | None = None,
        sticky: SharedSticky | None = None,
        cost_targets: CostTargets | None = None,
    ) -> None:
        self.settings = settings
        self.ladder = ladder
        self.names = names
        self.scorers = scorers
        self.targets = targets
        self.cost_targets = cost_targets  # target routes among more than two models
        budget = targets.budget if targets is not None else None
        self.admission = Admission(
            settings.max_concurrent_requests,
            settings.max_queued_requests,
            settings.queue_timeout,
            settings.client_key_count,
        )
        self.bodies = BodyBudget(settings.pending_body_limit, settings.queue_timeout, settings.client_body_share)
        self.decider = Decider(settings, ladder, scorers, targets, sticky, budget, cost_targets)
        self.forwarder = Forwarder(settings, ladder, upstreams)
        self.recorder = Recorder(ladder, targets, sticky, budget, cost_targets)

    async def handle(self, request: Request) -> Response:
        """Answer one ``POST /v1/chat/completions``."""
        request_id = request_id_of(request)
        started = time.monotonic()
        client = client_fingerprint(request.headers, self.settings.api_keys)  # who sent it: "" without client keys
        ticket = Ticket(self.admission, self.bodies.hold(client), client)
        decision: Decision | None = None
        sent = Sent()  # the upstream that has the request
        exchange: Exchange | None = None
        response: Response | None = None

        async def finish(outcome: Outcome) -> None:
            try:
                await self.recorder.record(outcome)
                await self.recorder.charge_spent(sent.spent)  # failed tries an upstream may bill
            finally:
                ticket.close()

        async def finish_unanswered(status: int) -> None:
            """Record a request that ended before its answer (the client left, the shutdown cut it, a
            defect in routegate): an upstream that has its whole prompt may bill it, so it is charged
            an estimate, as a stream left early is."""
            billing = sent.billing
            if billing is None:
                await finish(Outcome(decision, None, status, started))
            else:
                await finish(Outcome(sent.decision, billing, status, started, estimated_tokens=(prompt_tokens(payload), 0)))

        async def answer_cut_short(error: APIError, headers: dict[str, str] | None = None) -> Response:
            """``error`` for a request cut short by the shutdown or a defect in routegate, counted once:
            not again when its outcome is recorded already, as refused when no upstream had it."""
            if sent.upstream is None and not ticket.closed:
                return self._refuse(error, request_id, headers)
            if ticket.closed:
                log.info("request_id=%s status=%d error=%s (after its answer was recorded)", request_id, error.status, error.code)
            else:
                await finish_unanswered(error.status)  # under its decision and upstream, its prompt charged
            return error.to_response({"x-request-id": request_id, **(headers or {})})

        try:
            payload = await self.read_payload(request, ticket.body)  # read and parse
            request.state.chat_payload = payload  # read by server.feedback once the answer is out
            if self.names.fixed_routes and not trusted(request.headers, self.settings):
                self.names.check_alias(payload["model"])  # ROUTEGATE_FIXED_ROUTES: auto and the aliases only
            route = self.resolve(payload["model"], client)  # resolve model
            override = read_override(request.headers, self.settings) if route.router else NO_OVERRIDE  # before a slot
            async with cancelled_on_disconnect(request):  # a client that leaves cancels the steps inside
                await ticket.admit()  # admit
                decision = await self.decider.decide(route, payload, request.headers, client, request_id, override)  # decide
                exchange = await self.forwarder.forward(decision, payload, sent, self.decider.strong_affordable())  # forward
            # relay; it records the outcome now, or when the stream closes
            estimate = functools.partial(prompt_tokens, payload)
            response = await reply(exchange, started, finish, estimate, self.settings.client_send_timeout)
            return response
        except APIError as error:
            return self._refuse(error, request_id)
        except ClientGone:
            await finish_unanswered(499)
            return APIError(499, "The client closed the connection.", code="client_closed").to_response()
        except asyncio.CancelledError:
            if not DRAIN.stopping:
                raise
            # The shutdown grace period ran out: answer rather than leave the client a bare 500.
            cut = APIError(503, "routegate shut down before this request finished.", type="server_error", code="shutting_down")
            return await answer_cut_short(cut, {"connection": "close", "retry-after": "1"})
        except Exception:  # a defect in routegate: counted like any answer, the details only in the log
            log.exception("request_id=%s unhandled error", request_id)
            internal = APIError(500, "Internal error in routegate.", type="server_error", code="internal_error")
            return await answer_cut_short(internal)
        finally:
            if not isinstance(response, RelayResponse):  # a stream gives its ticket back, and closes upstream, when it closes
                ticket.close()
                if exchange is not None and isinstance(exchange.result, StreamStart):  # opened, never relayed
                    await exchange.result.response.aclose()

    async def read_payload(self, request: Request, held: Hold) -> dict[str, Any]:
        """The checked chat request, its bytes ``held`` within ROUTEGATE_MAX_PENDING_BODY_BYTES until it ends."""
        body = await read_body(request, self.settings.max_body_bytes, self.settings.body_timeout, held.cover)
        return parse_chat_request(body)

    def resolve(self, model: str, client: str) -> Target:
        """The route ``model`` names; a new target route takes one of the ROUTEGATE_MAX_TARGET_ROUTES
        places here, ``client`` (a client key's fingerprint) at most a quarter of them (400
        ``invalid_target`` when none is left). Among more than two models, a router that scores
        only a pair is refused (400 ``router_not_multi_model``)."""
        route = self.names.resolve(model)
        if route.router is not None and not self.ladder.pair:
            self._check_multi_model(route)
        controllers = self.cost_targets or self.targets
        if route.target is not None and route.router is not None and controllers is not None:
            try:
                controllers.controller(route.router, route.target, client)
            except TooManyRoutes as refused:
                raise bad_request(
                    f"routegate serves no more target routes (router-<router>-<percent>%) now: {refused}, "
                    f"each used in the last {ROUTE_IDLE_SECONDS / 60:g} minutes; use one of those.",
                    param="model",
                    code="invalid_target",
                ) from None
        return route

    def _check_multi_model(self, route: Target) -> None:
        able = list(self.scorers.ladder_models)
        if route.router not in able:
            raise bad_request(
                f"The router '{route.router}' cannot route among the {len(self.ladder.entries)} models of ROUTEGATE_MODELS "
                "(it scores only a strong/weak pair, or does not know one of them: routegate's start-up log says which); "
                f"use one of: {', '.join(able) or 'none configured'}.",
                param="model",
                code="router_not_multi_model",
            )

    def _refuse(self, error: APIError, request_id: str, headers: dict[str, str] | None = None) -> Response:
        metrics.count_refused(error.status)
        log.info("request_id=%s status=%d error=%s", request_id, error.status, error.code)
        return error.to_response({"x-request-id": request_id, **(headers or {})})
