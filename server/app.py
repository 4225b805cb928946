"""The FastAPI application: routes, error handlers and the gateway's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response

from routers.checkpoint import CheckpointError
from routers.registry import CHECKPOINT_ROOT, RouterOptions, installed_routers, multi_model_routers, router_models
from server import metrics
from server.client_keys import bearer_matches, presented_key
from server.conversations import StickyStore
from server.cors import ApiCors
from server.cost_targets import CostTargets
from server.disconnects import ClientGone
from server.errors import APIError, retry_after
from server.feedback import Feedback
from server.feedback_api import FEEDBACK_OPENAPI, handle_feedback
from server.http_protocol import BoundedHeadersProtocol
from server.ladder import Ladder
from server.metrics import render_metrics
from server.model_names import ModelNames
from server.openapi import ERROR_SCHEMA, chat_completion_openapi
from server.proxy import ChatProxy, request_id_of
from server.scoring import ScorerPool, UnknownModel, ladder_router_models
from server.settings import Settings, SettingsError, is_loopback, load_settings
from server.shared_scores import SharedScores
from server.shared_state import shared_state_from
from server.shared_sticky import SharedSticky
from server.shared_targets import SharedBudget, SharedTargets
from server.shutdown import CLOSING_SECONDS, DRAIN, seconds_left
from server.targets import Targets
from server.upstream import Upstream

log = logging.getLogger("routegate")
#: a model object's ``created``, which OpenAI's always has: when this routegate was installed (its
#: code's mtime), the same in every worker and in every replica of one image
INSTALLED_AT = int(Path(__file__).stat().st_mtime)
SERVED_ENDPOINTS_TEXT = (
    "routegate serves POST /v1/chat/completions, GET /v1/models (and /v1/models/{model}), GET /v1/routers "
    "and POST /v1/feedback; /openapi.json describes them."
)
BUDGET_FLUSH_TIMEOUT_S = 2.0  # at shutdown, for sending spend that Redis did not take earlier


class Gateway:
    """Everything one process serves with: upstream pools, routers, model names, the proxy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        checkpoint_dir = settings.checkpoint_dir or CHECKPOINT_ROOT
        self.routers = allowed_routers(settings, installed_routers(checkpoint_dir), checkpoint_dir)
        self.ladder = Ladder.from_settings(settings)
        among_models = ladder_models(settings, self.ladder, self.routers, checkpoint_dir)  # none with two
        usable = self.routers if self.ladder.pair else list(among_models)
        self.names = ModelNames(settings, self.routers, self.ladder, listed_routers=usable)
        alias_thresholds = set()  # auto's and the aliases': their series are exported from the start
        for alias in self.names.aliases:
            try:
                route = self.names.resolve(alias)
            except APIError as error:
                raise SettingsError(f"invalid settings: ROUTEGATE_ALIASES: alias '{alias}': {error.message}") from None
            if alias in settings.aliases and not self.names.serves(alias, route):  # auto's is ROUTEGATE_ROUTER's check
                pair_only = route.router not in multi_model_routers()
                why = "scores only a strong/weak pair" if pair_only else "does not know every model"
                raise SettingsError(
                    f"invalid settings: ROUTEGATE_ALIASES: alias '{alias}': router '{route.router}' {why}; "
                    f"routing among the models of ROUTEGATE_MODELS needs one of {usable}"
                )
            if route.threshold is not None:
                alias_thresholds.add(route.threshold)
        metrics.initialise(
            self.routers,
            {entry.name: entry.model for entry in self.ladder.entries},
            {name: self.ladder.fallbacks(name)[0] for name in self.ladder.names},
            self.ladder.best,
            alias_thresholds,
        )
        strong, weak = self.ladder.entry(self.ladder.best), self.ladder.entry(self.ladder.cheapest)
        options = RouterOptions(
            checkpoint_dir=checkpoint_dir,
            device=settings.device,
            strong_model=strong.router_model or strong.model,
            weak_model=weak.router_model or weak.model,
        )
        self.shared_state = shared_state_from(settings)  # None: in-process state
        self.waiting_for_router = 0  # requests held while the default router loads (_wait_ready)
        shared_scores = SharedScores(self.shared_state) if self.shared_state and settings.shared_score_cache else None
        self.scorers = ScorerPool(
            options,
            settings.score_batch_size,
            settings.score_batch_wait_ms / 1000,
            settings.score_cache_size,
            settings.torch_threads,
            settings.score_threads,
            settings.score_queue_size,
            named_pair=(strong.router_model is not None, weak.router_model is not None),
            named_by="the entries' router_model"
            if settings.models
            else "ROUTEGATE_ROUTER_STRONG_MODEL / ROUTEGATE_ROUTER_WEAK_MODEL",
            shared=shared_scores,
            ladder_models=among_models,
            ladder_pair=(self.ladder.best_index, self.ladder.cheapest_index),
            retry_seconds=settings.router_retry_seconds,
            shared_names=self.shared_state is not None,
        )
        budget = None
        if settings.daily_budget_usd is not None:  # in-process: each worker process keeps its part of the budget
            budget = SharedBudget.of(settings.daily_budget_usd, self.shared_state, settings.workers)
        listed_routes = [(router, settings.target_share) for router in usable]  # in /v1/models: never refused
        for alias in self.names.aliases:  # and the target routes aliases name
            try:
                route = self.names.resolve(alias)
            except APIError:  # an alias that names no valid route: its requests get the error
                continue
            if route.router is not None and route.target is not None:
                listed_routes.append((route.router, route.target))
        targets = Targets(
            settings.target_window,
            settings.target_feedback_horizon,
            options.checkpoint_dir,
            max_routes=settings.max_target_routes,
            pinned=listed_routes,
            scored_pair=self.scorers.scored_pair,
        )
        self.targets = SharedTargets(targets, self.shared_state, budget, self.scorers.shared_name)
        self.cost_targets = None  # among more than two models: target routes control the cost share
        if not self.ladder.pair:
            prices = [(entry.input_price, entry.output_price) for entry in self.ladder.entries]
            self.cost_targets = CostTargets(
                settings.target_window,
                settings.target_feedback_horizon,
                self.ladder.best_index,
                prices,
                settings.max_target_routes,
                pinned=listed_routes,
            )
        self.sticky = SharedSticky(StickyStore(settings.sticky_max_conversations, settings.sticky_ttl_seconds), self.shared_state)
        self.feedback = Feedback(settings, self.routers, self.shared_state)
        self.upstreams: dict[str, Upstream] = {}
        self.proxy: ChatProxy | None = None
        self.load_error: str | None = None
        self.routers_settled = False  # every allowed router loaded or failed
        self._loading: asyncio.Task[None] | None = None
        self._sampling: asyncio.Task[None] | None = None
        self._probing: asyncio.Task[None] | None = None  # Redis tried again while it is taken for failed

    @property
    def ready(self) -> bool:
        """Upstream pools open, the default router loaded and every other allowed router tried."""
        return self.proxy is not None and self.scorers.loaded(self.settings.router) and self.routers_settled

    def scored_pair(self, router: str) -> dict[str, str] | None:
        """The pair ``router`` scores and why (None until it is loaded, and for ``random``)."""
        pair = self.scorers.pairs.get(router)
        return None if pair is None else {"strong": pair.strong, "weak": pair.weak, "why": pair.why}

    def routers_listing(self) -> list[dict[str, object]]:
        """``/v1/routers``: each installed router, its known models (none from a checkpoint whose
        manifest cannot be read: its load says why), its scored pair."""
        return [
            {
                "id": name,
                "object": "router",
                "loaded": self.scorers.loaded(name),
                "models": self._known_models(name),
                "pair": self.scored_pair(name),
            }
            for name in self.names.routers
        ]

    def _known_models(self, name: str) -> list[str]:
        try:
            return router_models(name, self.scorers.options.checkpoint_dir)
        except CheckpointError:
            return []

    async def start(self) -> None:
        """Open the upstream pools; load the routers in the background, the default one first."""
        self.upstreams = {entry.name: Upstream(entry.name, entry, self.settings) for entry in self.ladder.entries}
        self.proxy = ChatProxy(
            self.settings, self.ladder, self.upstreams, self.names, self.scorers, self.targets, self.sticky, self.cost_targets
        )
        if self.targets.budget is not None:  # here, in each serving process only: the gauge sums live processes
            await self.targets.budget.refresh()  # with Redis: what the other replicas spent today
            metrics.report_budget_remaining(self.targets.budget.remaining_usd)
            DRAIN.when_stopping(lambda: metrics.count_budget_part(False))
        self._loading = asyncio.create_task(self._load_routers())
        self._sampling = asyncio.create_task(_sample_gauges(self.sticky))
        if self.shared_state is not None:
            self._probing = asyncio.create_task(self.shared_state.keep_probing())
        self.feedback.start()

    async def _load_routers(self) -> None:
        """The default router, then the others; a default router that failed is loaded again every
        ``router_retry_seconds`` until it loads (a volume mounted late, memory freed)."""
        await self._load_default_router()
        for name in self.routers:  # the others clients may name: loaded now, not on a first request
            if name != self.settings.router and (self.ladder.pair or name in self.scorers.ladder_models):
                try:
                    await self.scorers.get(name)
                    log.info("router %s loaded", name)
                except APIError:
                    pass  # logged by the pool; its requests are answered 503 router_unavailable
        self.routers_settled = True
        self._count_budget_part()
        while self.load_error is not None:
            await asyncio.sleep(self.settings.router_retry_seconds)
            await self._load_default_router()

    async def _load_default_router(self) -> None:
        try:
            await self.scorers.get(self.settings.router)
        except Exception as error:
            if not isinstance(error, APIError):  # an APIError's cause the pool has logged
                log.exception("could not load router %s", self.settings.router)
            self.load_error = f"{type(error).__name__}: {error}"
            return
        self.load_error = None
        log.info("router %s loaded", self.settings.router)
        self._count_budget_part()

    def _count_budget_part(self) -> None:
        """Count this process's part of the budget left once it is ready (not while it loads its
        routers beside the worker a SIGHUP replaces, which reports that part)."""
        if self.targets.budget is not None:
            metrics.count_budget_part(self.ready and not DRAIN.stopping)

    async def aclose(self) -> None:
        """Close the upstream pools and stop scoring; what is left to write gets ``CLOSING_SECONDS``."""
        deadline = asyncio.get_running_loop().time() + CLOSING_SECONDS
        for task in (self._loading, self._sampling, self._probing):
            if task is not None:
                task.cancel()
        await self.scorers.aclose()
        # a slow or hung database must leave the spend flush below its time
        flushes_spend = self.targets.budget is not None and self.shared_state is not None
        await self.feedback.aclose(deadline - (BUDGET_FLUSH_TIMEOUT_S if flushes_spend else 0.0))
        for upstream in self.upstreams.values():
            await upstream.aclose()
        if self.targets.budget is not None:  # spend a failed or busy Redis left unsent, for the other replicas
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.targets.budget.flush(), seconds_left(deadline, BUDGET_FLUSH_TIMEOUT_S))
        if self.shared_state is not None:
            await self.sticky.aclose()
            await self.shared_state.aclose()


async def _sample_gauges(sticky: SharedSticky, interval: float = 1.0) -> None:
    """Keep ``routegate_event_loop_tasks`` current (``ROUTEGATE_METRICS_PORT`` renders the metrics
    from its own thread, which cannot see this loop's tasks), and ``routegate_sticky_conversations``
    as conversations expire without a request."""
    while True:
        metrics.EVENT_LOOP_TASKS.set(len(asyncio.all_tasks()))
        metrics.STICKY_CONVERSATIONS.set(len(sticky))
        await asyncio.sleep(interval)


def allowed_routers(settings: Settings, installed: list[str], checkpoint_dir: Path) -> list[str]:
    """The routers clients may name: the default router and ROUTEGATE_ROUTERS (empty: ``random``);
    SettingsError for one that is not installed."""
    wanted = list(dict.fromkeys([settings.router, *(settings.routers or ["random"])]))
    for name in wanted:
        if name not in installed:
            setting = "ROUTEGATE_ROUTER" if name == settings.router else "ROUTEGATE_ROUTERS"
            raise SettingsError(
                f"invalid settings: {setting}: router '{name}' is unknown or has no checkpoint in "
                f"{checkpoint_dir}; installed: {installed}"
            )
    return wanted


def ladder_models(settings: Settings, ladder: Ladder, routers: list[str], checkpoint_dir: Path) -> dict[str, tuple[str, ...]]:
    """Among more than two models: each allowed router that predicts per model and knows every
    entry's model, with its names for them (none with two). SettingsError when the default router
    scores only a pair or does not know an entry's model; another allowed router that does not is
    left out, with a warning (an entry's ``router_model`` that suited it could break the default)."""
    if ladder.pair:
        return {}
    able = [name for name in routers if name in multi_model_routers()]
    if settings.router not in able:
        raise SettingsError(
            f"invalid settings: ROUTEGATE_ROUTER: router '{settings.router}' scores only a strong/weak pair; "
            f"routing among the {len(ladder.entries)} models of ROUTEGATE_MODELS needs one of {multi_model_routers()}"
        )
    names: dict[str, tuple[str, ...]] = {}
    for name in able:
        try:
            names[name] = ladder_router_models(name, ladder.entries, router_models(name, checkpoint_dir))
        except (ValueError, CheckpointError) as error:
            if name == settings.router:
                raise SettingsError(f"invalid settings: {error}") from None
            why = (
                f"it does not know the model {error.model!r} of entry '{error.entry}'"
                if isinstance(error, UnknownModel)
                else str(error)
            )
            log.warning(
                "router '%s' cannot route among ROUTEGATE_MODELS and is left out: %s; leave it out of "
                "ROUTEGATE_ROUTERS, or retrain it with that model",
                name,
                why,
            )
    return names


def _check_client_key(request: Request, settings: Settings) -> None:
    if not settings.api_keys:
        if is_loopback(settings.host) and not settings.allow_unauthenticated:
            _check_same_machine_origin(request, settings.allowed_origins)
        return
    if not bearer_matches(request.headers, settings.api_keys):
        scheme = presented_key(request.headers)[0]
        log.debug("client key refused (%s)", "wrong key" if scheme.lower() == "bearer" else "not 'Bearer <key>'")
        raise APIError(
            401,
            "Incorrect API key provided. Send your routegate key as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )


def _check_same_machine_origin(request: Request, allowed: list[str]) -> None:
    """Without client keys, only this machine's programs may call a loopback gateway: a browser
    request from a page of another site (its ``Origin``), which any web page the operator opens
    could send, or send through a DNS name rebound to 127.0.0.1, is refused. Clients that are not
    browsers send no ``Origin``, and neither does a browser's same-origin GET (a rebound page can
    read the GET endpoints: docs/operations.md); a page served from this machine, or from an
    ``allowed`` origin, may call."""
    origin = request.headers.get("origin")
    if origin is None or origin.rstrip("/").lower() in allowed:
        return
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        host = None
    if host is None or not is_loopback(host):
        raise APIError(
            403,
            "routegate without client keys serves only this machine's programs: a browser request from another "
            "site is refused. Set ROUTEGATE_API_KEYS, or name the site in ROUTEGATE_ALLOWED_ORIGINS.",
            code="cross_origin_refused",
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; without ``settings`` they are read from the environment (uvicorn ``--factory``)."""
    settings = settings or load_settings()
    gateway = Gateway(settings)

    def model_object(name: str) -> dict[str, object]:
        return {"id": name, "object": "model", "created": INSTALLED_AT, "owned_by": "routegate"}

    BoundedHeadersProtocol.max_header_bytes = settings.max_header_bytes  # this process's HTTP protocol
    BoundedHeadersProtocol.head_timeout = settings.head_timeout

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.debug("settings: %s", settings.model_dump())  # SecretStr fields print as '**********'
        await gateway.start()
        yield
        await gateway.aclose()

    # /openapi.json is served below, behind the client key: it lists every model name and alias
    app = FastAPI(
        title="routegate",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # a path with a trailing slash is a 404 error body, not a bare redirect
    )
    app.state.gateway = gateway
    if settings.allowed_origins:  # their pages may call the API: preflights are answered, answers readable
        app.add_middleware(ApiCors, origins=settings.allowed_origins)

    @app.post("/v1/chat/completions", openapi_extra=chat_completion_openapi(gateway.names.listed()), tags=["chat"])
    async def chat_completions(request: Request) -> Response:
        """Route a chat completion to the strong or weak upstream and relay its answer."""
        try:
            await _admit(request, gateway)
        except APIError as refused:
            request_id = request_id_of(request)
            metrics.count_refused(refused.status)
            log.info("request_id=%s status=%d error=%s", request_id, refused.status, refused.code)
            return refused.to_response({"x-request-id": request_id})
        assert gateway.proxy is not None
        response = await gateway.proxy.handle(request)
        try:
            return gateway.feedback.observe(request, response)
        except Exception:  # a defect in the after-answer work: the answer goes out (and closes) without it
            log.exception("request_id=%s feedback could not watch the answer", request_id_of(request))
            return response

    @app.post("/v1/feedback", openapi_extra=FEEDBACK_OPENAPI, tags=["feedback"])
    async def feedback(request: Request) -> Response:
        """Score an answered request by its x-request-id: {"request_id", "score": 0..1} or {"rating": "up"|"down"}."""
        _check_client_key(request, settings)
        client = gateway.feedback.client_of(request.headers)
        return await handle_feedback(request, gateway.feedback.store, settings.body_timeout, client)

    @app.get("/v1/models", tags=["models"])
    async def list_models(request: Request) -> JSONResponse:
        """The router models, aliases and upstream models a client may name."""
        _check_client_key(request, settings)
        return JSONResponse(
            {
                "object": "list",
                "data": [model_object(name) for name in gateway.names.listed()],
            }
        )

    @app.get(
        "/v1/models/{model:path}",
        tags=["models"],
        responses={404: {"description": "unknown model", "content": {"application/json": {"schema": ERROR_SCHEMA}}}},
    )
    async def retrieve_model(model: str, request: Request) -> JSONResponse:
        """One name a client may send (the SDK's ``models.retrieve``); 404 for a name it may not."""
        if not model:  # /v1/models/ is the list, as it was before this route caught it
            return await list_models(request)
        _check_client_key(request, settings)
        try:
            route = gateway.names.resolve(model)
        except APIError:
            route = None
        if route is None or not gateway.names.serves(model, route):
            raise APIError(404, f"The model '{model[:200]}' does not exist.", param="model", code="model_not_found")
        return JSONResponse(model_object(model))

    @app.get("/v1/routers", tags=["models"])
    async def list_routers(request: Request) -> JSONResponse:
        """The installed routers, the model names each knows, and the pair each scores once loaded."""
        _check_client_key(request, settings)
        return JSONResponse({"object": "list", "default": settings.router, "data": gateway.routers_listing()})

    @app.api_route("/health", methods=["GET", "HEAD"], tags=["ops"])  # HEAD: load balancers' checks
    async def health() -> JSONResponse:
        """Liveness: the process answers."""
        return JSONResponse({"status": "ok"})

    @app.api_route(
        "/ready", methods=["GET", "HEAD"], tags=["ops"], responses={503: {"description": "loading, failed or shutting down"}}
    )
    async def ready() -> JSONResponse:
        """Readiness: the default router is loaded and the upstream pools are open."""
        if DRAIN.draining:
            return JSONResponse({"status": "draining", "router": settings.router}, status_code=503)
        if gateway.ready:
            pair = gateway.scored_pair(settings.router)
            return JSONResponse({"status": "ready", "router": settings.router, **({} if pair is None else {"pair": pair})})
        return JSONResponse(
            {"status": "loading" if gateway.load_error is None else "failed", "router": settings.router}, status_code=503
        )

    @app.get("/openapi.json", tags=["ops"], include_in_schema=False)
    async def openapi_document(request: Request) -> JSONResponse:
        """The OpenAPI document; needs a client key when ROUTEGATE_API_KEYS is set."""
        _check_client_key(request, settings)
        return JSONResponse(app.openapi())

    if settings.metrics_port is None:  # else /metrics is served on its own port (server/metrics_server.py)

        @app.get(
            "/metrics",
            tags=["ops"],
            response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        )
        async def prometheus_metrics(request: Request) -> Response:
            """Prometheus metrics in the text exposition format; needs ROUTEGATE_METRICS_KEY when set, else a
            client key where other hosts reach the gateway and ROUTEGATE_API_KEYS is set."""
            if settings.metrics_key is not None:
                if not bearer_matches(request.headers, [settings.metrics_key]):
                    raise APIError(401, "/metrics needs 'Authorization: Bearer <ROUTEGATE_METRICS_KEY>'.", code="invalid_api_key")
            elif not is_loopback(settings.host):  # spend, budget and models are not for whoever reaches the port
                _check_client_key(request, settings)
            body, content_type = render_metrics()
            return Response(body, media_type=content_type)

    _install_error_handlers(app)
    return app


async def _admit(request: Request, gateway: Gateway) -> None:
    """Refuse a chat request before routing: a bad client key (401), a draining process or a
    router that is not loaded (503)."""
    _check_client_key(request, gateway.settings)
    if DRAIN.draining:
        raise _shutting_down()
    if not gateway.ready:
        await _wait_ready(gateway)


def _shutting_down() -> APIError:
    """The 503 of a request this process will not route: it is shutting down."""
    metrics.REJECTED.labels("shutting_down").inc()
    return APIError(
        503,
        "routegate is shutting down; send the request again (another instance will take it).",
        type="server_error",
        code="shutting_down",
        headers={"connection": "close", "retry-after": "1"},
    )


async def _wait_ready(gateway: Gateway, timeout: float = 60.0) -> None:
    """Hold a request while the default router loads; 503 if it failed or takes too long, or at
    once when as many requests are held as could be in flight and queued (a retry storm at start).
    A held request is refused ``shutting_down`` as soon as the process drains, or when the grace
    period of a process that stops ends while it waits."""
    settings = gateway.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    full = gateway.waiting_for_router >= settings.max_concurrent_requests + settings.max_queued_requests
    gateway.waiting_for_router += 1
    try:
        while not gateway.ready:
            if DRAIN.draining:
                raise _shutting_down()
            if full or gateway.load_error is not None or loop.time() >= deadline:
                raise APIError(
                    503,
                    "routegate is not ready: its router is not loaded.",
                    type="server_error",
                    code="not_ready",
                    headers={"retry-after": retry_after(settings.router_retry_seconds)},
                )
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        if not DRAIN.stopping:  # not the shutdown: a cancellation of another kind goes on
            raise
        raise _shutting_down() from None
    finally:
        gateway.waiting_for_router -= 1


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI-style body; nothing leaks a stack trace."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> Response:
        return error.to_response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> Response:
        return APIError(400, "Invalid request.", code="invalid_request").to_response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        message = str(error.detail)
        if error.status_code == 404:  # an SDK call to an endpoint routegate does not serve (embeddings, responses ...)
            message = f"Not Found: {request.url.path[:200]!r}. {SERVED_ENDPOINTS_TEXT}"
        return APIError(error.status_code, message, code=code, headers=dict(error.headers or {})).to_response()

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, error: ClientGone) -> Response:
        return APIError(499, "The client closed the connection.", code="client_closed").to_response()

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception) -> Response:
        log.exception("unhandled error")
        return APIError(500, "Internal error in routegate.", type="server_error", code="internal_error").to_response()
