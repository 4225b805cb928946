"""Learning from traffic, wired into the gateway: once the client has its whole answer, each
answered chat request's routing decision goes to the feedback store and a sampled share of the
routed ones to shadow judging.

``observe`` reads the decision from the ``x-routegate-*`` headers of the response and the request
body the proxy left in ``request.state``; it only attaches work that runs after the last byte is
sent (a background task, or the stream's close), so what the client receives and when is unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from server import feedback_metrics as fm
from server.chat_request import routed_text
from server.client_keys import client_fingerprint
from server.feedback_store import Database, DecisionRow, FeedbackStore
from server.judge import answer_text, tool_calls_text
from server.metrics import reported_tokens, token_count
from server.relay import EventSplitter, RelayResponse, data_fields, json_value
from server.settings import Settings, SettingsError
from server.shadow import OTHER_TIER, Shadower, ShadowJob, endpoints
from server.shared_state import SharedState
from server.shutdown import seconds_left

PAYLOAD_STATE = "chat_payload"  # request.state attribute holding the parsed request body
#: at shutdown, the part of the clean-up's time kept for the store's own writes: the streams still
#: closing (cut at the end of the grace period, their recording still at work) get the rest
STORE_WRITE_S = 3.0


class AnswerText:
    """Collects the first choice's streamed answer, up to ``max_chars``, from relayed SSE bytes: its
    text, or its tool calls (as ``judge.answer_text`` writes those of a whole answer) when it has none."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # tool call index -> the call as a whole answer holds it
        self._chars = 0
        self.events = EventSplitter()  # events longer than its bound are skipped

    @property
    def whole(self) -> bool:
        """Whether no event was too long to read (over 1 MiB): else the text misses a part."""
        return not self.events.skipped

    @property
    def text(self) -> str:
        text = "".join(self.parts)
        if text or not self.calls:
            return text
        return tool_calls_text([self.calls[index] for index in sorted(self.calls)])

    def feed(self, chunk: bytes) -> None:
        if self._chars >= self.max_chars:
            return
        for event in self.events.feed(chunk):
            for data in data_fields(event):
                self._read(data)

    def _read(self, data: bytes) -> None:
        event = json_value(data)
        choices = event.get("choices") if isinstance(event, dict) else None
        for choice in choices if isinstance(choices, list) else ():
            delta = choice.get("delta") if isinstance(choice, dict) and choice.get("index", 0) == 0 else None
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            if isinstance(content, str):
                self.parts.append(content)
                self._chars += len(content)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                self._read_call(call)

    def _read_call(self, call: object) -> None:
        """Add one streamed piece of a tool call: its id, type and name come once, its arguments in parts."""
        if not isinstance(call, dict) or not isinstance(index := call.get("index", 0), int):
            return
        whole = self.calls.setdefault(index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        self._chars += 1  # a call without text still counts towards the bound
        for field in ("id", "type"):
            if isinstance(call.get(field), str):
                whole[field] = call[field]
        function = call.get("function")
        if not isinstance(function, dict):
            return
        for field in ("name", "arguments"):
            if isinstance(piece := function.get(field), str):
                whole["function"][field] += piece
                self._chars += len(piece)


class Feedback:
    """The feedback store and shadow judging of one gateway process."""

    def __init__(self, settings: Settings, routers: Iterable[str], state: SharedState | None = None) -> None:
        self.settings = settings
        self.store: FeedbackStore | None = None
        url = settings.feedback_db.get_secret_value().strip()
        if url.lower() != "off" and not settings.models:  # it records the strong/weak pair only
            database = Database(url)
            try:
                database.make_file()  # an SQLite file that cannot be written would lose every row
            except OSError as error:
                raise SettingsError(
                    f"invalid settings: ROUTEGATE_FEEDBACK_DB: cannot write {database.describe()}: "
                    f"{error.strerror or error}; give a writable file, a postgresql:// URL or off"
                ) from None
            self.store = FeedbackStore(
                database, settings.feedback_retention_days, settings.feedback_queue_size, settings.feedback_max_rows
            )
        self.shadow = Shadower(settings, self.store, state) if settings.shadow_rate > 0 else None
        self._tiers, judge = endpoints(settings)
        self._open_streams = 0  # streams relayed or closing that have not yet recorded their decision
        fm.initialise(routers, {tier: endpoint.model for tier, endpoint in self._tiers.items()}, judge.model)

    def start(self) -> None:
        """Start the store's writer and the shadow workers (in the serving event loop)."""
        if self.store is not None:
            self.store.start()
        if self.shadow is not None:
            self.shadow.start()

    async def aclose(self, deadline: float) -> None:
        """Stop shadowing, then write what the store still holds, by ``deadline`` (event-loop time)."""
        if self.shadow is not None:
            await self.shadow.aclose(deadline)
        if self.store is not None:
            while self._open_streams and seconds_left(deadline) > STORE_WRITE_S:
                await asyncio.sleep(0.05)
            await self.store.aclose(seconds_left(deadline))

    def client_of(self, headers: Headers) -> str:
        """Who sent a request, for the store: a fingerprint of its client key (empty without
        ROUTEGATE_API_KEYS, when any caller may rate any request)."""
        return client_fingerprint(headers, self.settings.api_keys)

    def observe(self, request: Request, response: Response) -> Response:
        """Attach the after-answer work to ``response`` (returned as it is)."""
        payload = getattr(request.state, PAYLOAD_STATE, None)
        if payload is None or (self.store is None and self.shadow is None):
            return response
        tier = response.headers.get("x-routegate-tier")
        if tier not in ("strong", "weak") or self.settings.models:  # the two tiers only (not ROUTEGATE_MODELS)
            return response
        routed = response.headers.get("x-routegate-router", "none") != "none"
        shadow = (
            self.shadow is not None
            and routed
            and response.headers.get("x-routegate-decision") == "score"
            and "x-routegate-fallback" not in response.headers  # the tier that answered is not the one chosen
            and self.shadow.sampled()
        )
        if isinstance(response, RelayResponse):
            self._watch_stream(response, request.headers, payload, shadow)
        elif 200 <= response.status_code < 300 and response.background is None:
            response.background = BackgroundTask(self._after_complete, response, request.headers, payload, shadow)
        elif shadow:  # the upstream's error (the client's mistake, sent with its 4xx): nothing to judge
            _unanswered(response.headers)
        return response

    async def _after_complete(self, response: Response, headers: Headers, payload: dict[str, Any], shadow: bool) -> None:
        completion = json_value(bytes(response.body))
        if isinstance(completion, dict):  # an upstream's error object went out with its 4xx, not as an answer
            self._answered(response.headers, headers, payload, completion.get("usage"), answer_text(completion), shadow)
        elif shadow:
            _unanswered(response.headers)

    def _watch_stream(self, response: RelayResponse, headers: Headers, payload: dict[str, Any], shadow: bool) -> None:
        # one character more than a shadow job may hold: enough to tell that it is too large
        answer = AnswerText(self.settings.shadow_max_job_bytes + 1) if shadow else None
        relayed, close = response.chunks, response.on_close

        async def chunks() -> AsyncGenerator[bytes]:
            async for chunk in relayed:
                if answer is not None:
                    answer.feed(chunk)
                yield chunk

        watched = chunks()

        # a stream cut at shutdown records its decision as it closes, while the gateway stops: the store waits
        self._open_streams += 1

        async def on_close(completed: bool) -> None:
            try:
                await watched.aclose()
                await close(completed)
                # a stream cut, or one holding the upstream's own error (a failure or the client's mistake), was not answered
                answered = response.watcher.cut is None and not response.watcher.failed
                if answered:  # a client that stopped the answer may still rate it; only a whole answer is judged
                    text = answer.text if answer is not None else None
                    judged = shadow and completed and (answer is None or answer.whole)
                    self._answered(response.headers, headers, payload, response.watcher.usage, text, judged)
                if shadow and (not answered or not completed):
                    _unanswered(response.headers)
                elif shadow and answer is not None and not answer.whole:  # an event too long to read: too large to judge
                    fm.SHADOW_REQUESTS.labels(OTHER_TIER[response.headers["x-routegate-tier"]], "too_large").inc()
            finally:
                self._open_streams -= 1

        response.chunks, response.on_close = watched, on_close

    def _answered(
        self,
        answer_headers: Any,
        request_headers: Headers,
        payload: dict[str, Any],
        usage: object,
        text: str | None,
        shadow: bool,
    ) -> None:
        """Record the decision; offer the answer to shadow judging when it was drawn."""
        request_id = answer_headers["x-request-id"]
        router = answer_headers.get("x-routegate-router", "none")
        tier = answer_headers["x-routegate-tier"]
        client = self.client_of(request_headers)
        decided_at = time.time()
        if self.store is not None:
            self.store.record(self._decision(request_id, decided_at, router, tier, answer_headers, payload, usage), client)
        if shadow and self.shadow is not None:
            if text is None:  # an answer without a first choice: nothing for a judge to compare
                fm.SHADOW_REQUESTS.labels(OTHER_TIER[tier], "no_answer").inc()
            else:
                job = ShadowJob(request_id, router, tier, payload, text, client, decided_at)
                self.shadow.offer(job, request_headers)

    def _decision(
        self,
        request_id: str,
        decided_at: float,
        router: str,
        tier: str,
        headers: Any,
        payload: dict[str, Any],
        usage: object,
    ) -> DecisionRow:
        settings = self.settings
        prompt = routed_text(payload["messages"], settings.route_on, settings.conversation_turns, settings.max_router_chars)
        tokens = usage if isinstance(usage, dict) else {}
        return DecisionRow(
            request_id=request_id,
            created_at=decided_at,
            router=router,
            reason=headers.get("x-routegate-decision", ""),
            score=_number(headers.get("x-routegate-score")),
            threshold=_number(headers.get("x-routegate-threshold")),
            tier=tier,
            model=headers.get("x-routegate-model", ""),
            strong_model=settings.strong.model,
            weak_model=settings.weak.model,
            prompt_tokens=token_count(tokens.get("prompt_tokens")),
            completion_tokens=token_count(tokens.get("completion_tokens")),
            cost_usd=self._tiers[tier].cost(reported) if (reported := reported_tokens(usage)) is not None else None,
            prompt_sha1=hashlib.sha1(prompt.encode("utf-8", "replace")).hexdigest(),
            prompt=prompt.replace("\x00", "") if settings.feedback_store_text else None,  # PostgreSQL text holds no NUL
        )


def _unanswered(answer_headers: Any) -> None:
    """Count an answer drawn for shadowing that the client did not receive whole (not judged)."""
    fm.SHADOW_REQUESTS.labels(OTHER_TIER[answer_headers["x-routegate-tier"]], "unanswered").inc()


def _number(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None
