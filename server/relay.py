"""Relaying an upstream's server-sent events to the client as they arrive."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

#: the blank line that ends an SSE event: two line ends, each CRLF, LF or a bare CR, where one CRLF
#: never counts as two (the match of ``(?>\r\n|\r|\n){2}``, spelled out: it searches faster)
EVENT_SEPARATOR = re.compile(rb"\n(?:\r\n?|\n)|\r(?:\n(?:\r\n?|\n)|\r\n?)")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_SEPARATOR_MAX = 4  # bytes of the longest separator, \r\n\r\n
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_SOME_CHOICE = re.compile(rb'"choices"\s*:\s*\[\s*\{')
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"[^"]')  # not the null (or "") of other chunks
ERROR_OBJECT = re.compile(rb'"error"\s*:\s*\{')  # what an event holding an error object (error_of) must contain
#: finish reasons that end a choice with a failure, not an answer (OpenRouter's "error", vLLM's "abort")
FAILED_FINISHES = frozenset({"error", "abort"})


class EventSplitter:
    """Cuts relayed SSE bytes into complete events (the bytes before each blank line).

    Linear time: each byte is searched for an event separator once, however the events are cut
    into chunks. Bounded memory: an event longer than ``max_event_bytes`` is skipped, not held
    (counted in ``skipped``); ``bytes_scanned`` counts the search work.
    """

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self.max_event_bytes = max_event_bytes
        self.bytes_scanned = 0
        self.skipped = 0
        self._pending = bytearray()
        self._searched = 0  # bytes of _pending known to start no separator
        self._skipping = False  # inside an oversized event: drop it up to its separator

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events that ``chunk`` completes."""
        self._pending += chunk
        events: list[bytes] = []
        while True:
            match = EVENT_SEPARATOR.search(self._pending, self._searched)
            if match is None:
                self.bytes_scanned += len(self._pending) - self._searched
                self._searched = max(0, len(self._pending) - _SEPARATOR_MAX + 1)  # a separator may span chunks
                if len(self._pending) > self.max_event_bytes:
                    del self._pending[: self._searched]
                    self.skipped += not self._skipping
                    self._searched, self._skipping = 0, True
                return events
            self.bytes_scanned += match.end() - self._searched
            if not self._skipping:
                events.append(bytes(self._pending[: match.start()]))
            del self._pending[: match.end()]
            self._searched, self._skipping = 0, False


def data_fields(event: bytes) -> list[bytes]:
    """The values of an SSE event's ``data:`` lines, stripped."""
    return [line[5:].strip() for line in _LINE_END.split(event) if line.startswith(b"data:")]


class StreamWatcher:
    """Watches relayed SSE bytes for the ``usage`` object, the closing ``data: [DONE]``, the
    choices that gave their ``finish_reason``, the upstream's own error events (``failed``) and
    how many chunks carried choices (the token estimate of a stream without usage); an event
    longer than ``max_event_bytes`` (no usage, finish, error or [DONE] event is) is skipped."""

    def __init__(self, max_event_bytes: int = 1 << 20, choices: int = 1) -> None:
        self.usage: dict | None = None
        self.done = False
        self.choices = choices  # answers asked for (n)
        self.finished: set[int] = set()  # indexes of the choices that gave their finish_reason
        self.choice_chunks = 0
        self.failed = False  # an event said the upstream failed: {"error": {...}}, or a finish_reason "error"/"abort"
        self.cut: str | None = None  # why the upstream stream ended early (set by the relay), None if it did not
        self.events = EventSplitter(max_event_bytes)

    @property
    def complete(self) -> bool:
        """Whether the stream said it was whole: ``[DONE]``, or a finish_reason for every choice
        (some OpenAI-compatible servers close the stream without [DONE])."""
        return self.done or len(self.finished) >= self.choices

    @property
    def bytes_scanned(self) -> int:
        return self.events.bytes_scanned

    def feed(self, chunk: bytes) -> None:
        for event in self.events.feed(chunk):
            self._read_event(event)

    def _read_event(self, event: bytes) -> None:
        for data in data_fields(event):
            if data == b"[DONE]":
                self.done = True
                continue
            if _SOME_CHOICE.search(data):
                self.choice_chunks += 1
            finishes, has_usage = _FINISH_REASON.search(data), _USAGE_OBJECT.search(data)  # not the nulls of other chunks
            has_error = ERROR_OBJECT.search(data)
            if not (finishes or has_usage or has_error):
                continue
            chunk = json_value(data)
            if has_error and error_of(chunk) is not None:
                self.failed = True
            if finishes:
                self._read_finished(chunk)
            usage = chunk.get("usage") if has_usage and isinstance(chunk, dict) else None
            if isinstance(usage, dict):
                self.usage = usage

    def _read_finished(self, chunk: object) -> None:
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        for choice in choices if isinstance(choices, list) else ():
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(reason, str) and reason and len(self.finished) < self.choices:  # some servers send "" until the end
                self.failed = self.failed or reason in FAILED_FINISHES
                index = choice.get("index", 0)
                self.finished.add(index if isinstance(index, int) and not isinstance(index, bool) else -1)


class EventGate:
    """Passes relayed SSE bytes on whole events only, so that whatever ends a stream early (an
    error event after a cut, the shutdown event) follows a complete event, never half of one.

    Each complete event passes on as soon as its blank line arrives; the bytes of an unfinished
    one wait for it. An event longer than ``max_event_bytes`` passes on unread as it comes, so at
    most that much is held. With ``drop_usage`` the usage-only event (``"choices": []`` beside a
    ``usage`` object) is taken out, for a client that did not ask for it: routegate asks upstreams
    for usage on every stream. ``redact`` blanks secrets out of every byte that passes: a whole
    event at once, an oversized one as its bytes pass (with ``redact_pieces`` when its first piece
    says ``"error"``, which its later pieces cannot), with the last ``hold`` bytes waiting for the
    next chunk, so that a secret cut between two chunks is whole when it is blanked out."""

    def __init__(
        self,
        drop_usage: bool,
        max_event_bytes: int = 1 << 16,
        redact: Callable[[bytes], bytes] = bytes,
        hold: int = 0,
        redact_pieces: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.drop_usage = drop_usage
        self.max_event_bytes = max_event_bytes
        self._redact = redact
        self._redact_pieces = redact_pieces or redact
        self._redact_passing = redact  # for the oversized event passing on: chosen from its first piece
        self._hold = max(hold, _SEPARATOR_MAX - 1)  # also what may begin a separator that spans chunks
        self._pending = bytearray()
        self._searched = 0  # bytes of _pending known to start no separator
        self._passing = False  # inside an oversized event: pass it on up to its separator
        self._cr_ended = False  # the bytes passed on end in a separator's CR, whose LF may come next

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of ``chunk`` (and of earlier chunks) that can go to the client now."""
        ready = bytearray()
        if self._cr_ended and chunk[:1] == b"\n":  # the LF of a CRLF: it passes on after its CR
            ready += b"\n"
            chunk = chunk[1:]
        self._cr_ended = False
        self._pending += chunk
        while True:
            match = EVENT_SEPARATOR.search(self._pending, self._searched)
            if match is None:
                self._searched = max(0, len(self._pending) - _SEPARATOR_MAX + 1)  # a separator may span chunks
                if self._passing or len(self._pending) > self.max_event_bytes:
                    if not self._passing:
                        self._redact_passing = self._redact_pieces if b'"error"' in self._pending else self._redact
                    self._pending[:] = self._redact_passing(bytes(self._pending))
                    passed = max(0, len(self._pending) - self._hold)
                    ready += self._pending[:passed]
                    del self._pending[:passed]
                    self._searched, self._passing = 0, True
                return bytes(ready)
            if self._passing:  # the rest of an oversized event
                ready += self._redact_passing(bytes(self._pending[: match.end()]))
            elif not (self.drop_usage and _usage_only(bytes(self._pending[: match.start()]))):
                ready += self._redact(bytes(self._pending[: match.end()]))
            self._cr_ended = match.end() == len(self._pending) and self._pending[-1:] == b"\r"
            del self._pending[: match.end()]
            self._searched, self._passing = 0, False

    def flush(self) -> bytes:
        """What is still held when the upstream stream ends (an event without its blank line),
        unless it is the usage-only event that ``drop_usage`` takes out."""
        rest = bytes(self._pending)
        self._pending.clear()
        if self.drop_usage and not self._passing and _usage_only(rest):
            return b""
        return self._redact_passing(rest) if self._passing else self._redact(rest)

    def cut_off(self) -> bytes:
        """Drop the unfinished event of a stream that ends early; the blank line that closes the
        part of an oversized one that already went on (empty when none did)."""
        self._pending.clear()
        passed, self._passing = self._passing, False
        return b"\n\n" if passed else b""


def json_value(data: bytes) -> object:
    """An upstream body's or event's JSON value; None when it is not JSON (``NaN`` and
    ``Infinity`` are not: strict parsers cannot read them), or is nested deeper than the parser
    recurses."""
    try:
        return json.loads(data, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return None


def _not_json(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def error_of(chunk: object) -> dict | None:
    """The error object of a parsed stream event that reports the upstream's own failure
    (``{"error": {...}}``), else None."""
    error = chunk.get("error") if isinstance(chunk, dict) else None
    return error if isinstance(error, dict) else None


def _usage_only(event: bytes) -> bool:
    """Whether an SSE event is a chunk with no choices that carries a usage object."""
    if not _USAGE_OBJECT.search(event) or not _EMPTY_CHOICES.search(event):
        return False
    fields = data_fields(event)
    chunk = json_value(fields[0]) if fields else None
    return isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)


class SendWatch:
    """Cancels ``scope`` once a send has been under way (``since``) for over ``timeout`` seconds:
    a streaming client that stopped reading without closing. One timer a stream, re-armed each
    second; a deadline around every send, or a task a stream, cost streamed throughput, and
    receiving again would let uvicorn read a pipelined request's body into memory."""

    def __init__(self, timeout: float | None, scope: anyio.CancelScope) -> None:
        self.since: float | None = None
        self._timeout, self._scope = timeout, scope
        self._handle: asyncio.TimerHandle | None = None
        if timeout is not None:
            self._interval = min(timeout / 4, 1.0)
            self._handle = asyncio.get_running_loop().call_later(self._interval, self._check)

    def _check(self) -> None:
        assert self._timeout is not None
        if self.since is not None and time.monotonic() - self.since > self._timeout:
            self._scope.cancel()
            return
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


WHOLE_PIECE_BYTES = 64 * 1024  # a whole answer above this is sent in pieces, each waiting for the client


class WholeResponse(Response):
    """A whole (non-streamed) answer whose client must keep reading: a large body is sent in
    pieces, and a client that takes over ``send_timeout`` seconds to accept one has its connection
    aborted, so that what it did not read is not held in memory until it does."""

    def __init__(self, content: bytes, status_code: int, headers: dict[str, str], send_timeout: float | None) -> None:
        super().__init__(content, status_code=status_code, headers=headers)
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.send_timeout is None or len(self.body) <= WHOLE_PIECE_BYTES:
            await super().__call__(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = memoryview(self.body)
        with anyio.CancelScope() as sending:  # cancelled by the watch: the answer stays unfinished, its connection aborted
            watch = SendWatch(self.send_timeout, sending)
            try:
                for start in range(0, len(body), WHOLE_PIECE_BYTES):
                    piece = bytes(body[start : start + WHOLE_PIECE_BYTES])
                    watch.since = time.monotonic()
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                watch.since = time.monotonic()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # the client went away while we were sending
                return
            finally:
                watch.stop()
        if not sending.cancelled_caught and self.background is not None:  # as a whole answer sent at once
            await self.background()


class RelayResponse(Response):
    """Streams ``chunks`` to the client; stops reading upstream as soon as the client leaves,
    and always calls ``on_close(completed)`` once, shielded from cancellation.

    When the serving task itself is cancelled (a shutdown whose grace period ran out) and
    ``on_cancel`` returns a final event, that event ends the stream instead of a bare close."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        headers: dict[str, str],
        on_close: Callable[[bool], Awaitable[None]],
        media_type: str = "text/event-stream",
        on_cancel: Callable[[], bytes | None] | None = None,
        watcher: StreamWatcher | None = None,
        send_timeout: float | None = None,
    ) -> None:
        self.chunks = chunks
        self.send_timeout = send_timeout  # a client that takes longer to accept a chunk has stopped reading
        self.watcher = watcher or StreamWatcher()  # what the upstream stream held: usage, [DONE], a cut
        self.on_close = on_close
        self.on_cancel = on_cancel
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers({**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completed = started = False
        try:
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch_disconnect)
                watch = SendWatch(self.send_timeout, group.cancel_scope)
                try:
                    await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                    started = True
                    async for chunk in self.chunks:
                        watch.since = time.monotonic()
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        watch.since = None
                    watch.since = time.monotonic()
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    completed = True
                except OSError:  # the client went away while we were sending
                    pass
                finally:
                    watch.stop()
                    group.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            final = self.on_cancel() if started and self.on_cancel is not None else None
            if final is None:
                raise
            with anyio.CancelScope(shield=True):
                try:
                    await send({"type": "http.response.body", "body": final, "more_body": False})
                except OSError:
                    pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.on_close(completed)
