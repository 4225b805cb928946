"""The feedback store: routing decisions, judgements and user feedback in SQLite or PostgreSQL.

One writer thread per process owns the connection and works through a bounded queue, so the
event loop never waits for the database and a down database never fails a request: its writes
are logged and counted (``routegate_feedback_store_errors_total``), then dropped. Rows older
than the retention, and the oldest beyond ``max_rows`` per table (a decision that a judgement or
feedback is about stays while they do, and they go with it), are deleted by the same thread, at
its first write and then hourly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit, urlunsplit

from server import feedback_metrics as fm
from server.settings import store_kind
from server.shutdown import seconds_left

log = logging.getLogger("routegate.feedback")
DEFAULT_SQLITE = Path("~/.local/state/routegate/feedback.sqlite3")
RETENTION_INTERVAL = 3600.0
BATCH = 500
CONNECT_TIMEOUT = 5
# PostgreSQL: TCP keepalives find a connection that a failover dropped without a word
POSTGRES_KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
ANSWER_TIMEOUT = 30.0  # longest wait for a feedback write's answer
LOG_INTERVAL = 60.0  # at most one message a minute about lost writes

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS routegate_decisions (
        request_id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, router TEXT NOT NULL,
        reason TEXT NOT NULL, score DOUBLE PRECISION, threshold DOUBLE PRECISION, tier TEXT NOT NULL,
        model TEXT NOT NULL, strong_model TEXT NOT NULL, weak_model TEXT NOT NULL,
        prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd DOUBLE PRECISION,
        prompt_sha1 TEXT NOT NULL, prompt TEXT, client TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX IF NOT EXISTS routegate_decisions_created ON routegate_decisions (created_at)",
    """CREATE TABLE IF NOT EXISTS routegate_judgements (
        request_id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, router TEXT NOT NULL,
        chosen_tier TEXT NOT NULL, verdict TEXT NOT NULL, verdict_chosen_first TEXT NOT NULL,
        verdict_chosen_second TEXT NOT NULL, judge_model TEXT NOT NULL, shadow_cost_usd DOUBLE PRECISION,
        judge_cost_usd DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS routegate_judgements_created ON routegate_judgements (created_at)",
    """CREATE TABLE IF NOT EXISTS routegate_feedback (
        request_id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, score DOUBLE PRECISION NOT NULL,
        rating TEXT, comment TEXT)""",
    "CREATE INDEX IF NOT EXISTS routegate_feedback_created ON routegate_feedback (created_at)",
)
SCHEMA_LOCK = 0x726F757465676174  # PostgreSQL advisory lock held while the tables are created ("routegat")
_CREATED = re.compile(r"IF NOT EXISTS (\w+)")  # the name a schema statement creates
TABLES = ("routegate_decisions", "routegate_judgements", "routegate_feedback")
LABEL_TABLES = TABLES[1:]  # rows about a decision: each needs its decision
#: a store made before decisions had their client: the column is added (old rows: no client key)
CLIENT_COLUMN = "client TEXT NOT NULL DEFAULT ''"


@dataclass
class DecisionRow:
    """One answered chat request: how it was routed and what it cost."""

    request_id: str
    created_at: float
    router: str
    reason: str
    score: float | None
    threshold: float | None
    tier: str
    model: str
    strong_model: str
    weak_model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    prompt_sha1: str
    prompt: str | None


@dataclass
class JudgementRow:
    """The judge's verdict on one shadowed request (verdicts from the chosen tier's side)."""

    request_id: str
    created_at: float
    router: str
    chosen_tier: str
    verdict: str
    verdict_chosen_first: str
    verdict_chosen_second: str
    judge_model: str
    shadow_cost_usd: float
    judge_cost_usd: float


@dataclass
class FeedbackRow:
    """A user's score (0..1) for one request; ``rating`` is up|down when sent as a rating."""

    request_id: str
    created_at: float
    score: float
    rating: str | None
    comment: str | None


class StoreUnavailable(Exception):
    """The store is off, full or its database cannot be reached."""


Row = DecisionRow | JudgementRow | FeedbackRow


def _upsert(table: str, row: type[Row], extra: tuple[str, ...] = (), only_if: str = "") -> str:
    """Insert a ``row`` (plus the ``extra`` columns) or update the one with its request id
    (``only_if`` that condition holds)."""
    columns = [column.name for column in fields(row)] + list(extra)
    updates = ", ".join(f"{column} = excluded.{column}" for column in columns[1:])
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT (request_id) DO UPDATE SET {updates}" + (f" WHERE {only_if}" if only_if else "")
    )


UPSERTS: dict[type[Row], str] = {
    JudgementRow: _upsert("routegate_judgements", JudgementRow),
    # a post written late (its replica's database hung) leaves a later post of the request alone
    FeedbackRow: _upsert("routegate_feedback", FeedbackRow, only_if="routegate_feedback.created_at <= excluded.created_at"),
}
#: another client's request under the same id leaves the row alone, and so does an earlier request
#: written late (another worker's or replica's queue was behind): the later request is kept
DECISION_UPSERT = _upsert(
    "routegate_decisions",
    DecisionRow,
    extra=("client",),
    only_if="routegate_decisions.client = excluded.client AND routegate_decisions.created_at <= excluded.created_at",
)


def _sqlite_path(url: str) -> str:
    """The file an SQLite value names: a path, ``sqlite:///path``, or ``sqlite:path`` as
    ``Database.describe`` writes it."""
    _, separator, rest = url.partition("://")
    if separator:
        return rest
    return url[len("sqlite:") :] if url[: len("sqlite:")].lower() == "sqlite:" else url


_CANNOT_MAKE_SHM = ("unable to open database file", "attempt to write a readonly database")


def _read_only_sqlite(path: Path) -> sqlite3.Connection:
    """A connection that only reads the store at ``path``. A store in WAL mode needs its shared-memory
    file beside it; where that cannot be made (a read-only folder or mount), the file is read as
    it stands, which a gateway that stopped has left whole."""
    uri = f"file:{quote(str(path.resolve()))}"
    connection = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=CONNECT_TIMEOUT)
    try:
        connection.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    except sqlite3.OperationalError as error:
        connection.close()
        if not str(error).startswith(_CANNOT_MAKE_SHM):
            raise
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=CONNECT_TIMEOUT)
    return connection


class Database:
    """Where the store lives: an SQLite file or a PostgreSQL server, from ``ROUTEGATE_FEEDBACK_DB``."""

    def __init__(self, url: str) -> None:
        """ValueError for a URL of another kind (``store_kind``)."""
        _, separator, rest = url.partition("://")
        self.postgres = store_kind(url) == "postgresql"
        self.url = f"postgresql://{rest}" if self.postgres else url  # postgresql+psycopg:// is SQLAlchemy's spelling
        self.path: Path | None = None if self.postgres else Path(_sqlite_path(url) or DEFAULT_SQLITE).expanduser()

    def describe(self) -> str:
        """The location without any password, for logs."""
        if self.path is not None:
            return f"sqlite:{self.path}"
        parts = urlsplit(self.url)  # one that store_kind could read: no password left in its path
        host = parts.hostname or ""
        netloc = f"{parts.username}@{host}" if parts.username else host
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def make_file(self) -> None:
        """Make an SQLite store's file (and its folder) if missing, and open it for writing once:
        OSError where it cannot be (a file in the way of its folder, a read-only mount, no permission)."""
        if self.path is None or str(self.path) == ":memory:":
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the owner's alone (prompts and clients' requests); SQLite gives its -wal and -shm files the same mode
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))

    def has_no_tables(self, error: Exception) -> bool:
        """Whether ``error`` says the store's tables do not exist: no gateway has opened it yet."""
        if self.postgres:
            import psycopg

            return isinstance(error, psycopg.errors.UndefinedTable)
        return isinstance(error, sqlite3.OperationalError) and str(error).startswith("no such table")

    def error_text(self, error: Exception) -> str:
        """A driver error as one line, without the URL's password."""
        return self.redact(f"{type(error).__name__}: {error}".strip())

    def redact(self, text: str) -> str:
        """``text`` without the URL's passwords (user info, or libpq's ``password`` and ``sslpassword``
        query parameters), as written or decoded, should a driver message quote them."""
        for password in sorted(self._passwords(), key=len, reverse=True):
            text = text.replace(password, "[redacted]")
        return text

    def _passwords(self) -> set[str]:
        if not self.postgres:
            return set()
        parts = urlsplit(self.url)
        written = [parts.password or ""]
        written += [value for name, _, value in (pair.partition("=") for pair in parts.query.split("&")) if "password" in name]
        return {spelling for value in written for spelling in (value, unquote(value), unquote_plus(value)) if spelling}

    def connect(self, create_schema: bool = True) -> Any:
        """A new DB-API connection with the schema in place; without ``create_schema``, for reading
        a store that exists, with a role or a file that may only be read."""
        if self.postgres:
            import psycopg

            connection: Any = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT, **POSTGRES_KEEPALIVES)
        else:
            assert self.path is not None
            if not create_schema:
                return _read_only_sqlite(self.path)
            self.make_file()
            connection = sqlite3.connect(self.path, timeout=CONNECT_TIMEOUT, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
        if not create_schema:
            return connection
        try:
            with self.transaction(connection) as cursor:
                locked = False
                for statement in SCHEMA:
                    if self.postgres and self._exists(cursor, statement):
                        continue
                    if self.postgres and not locked:
                        # replicas starting together on an empty database: one creates, the others wait
                        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                        locked = True
                        if self._exists(cursor, statement):  # made by the one this process waited for
                            continue
                    cursor.execute(statement)
                self._add_client_column(cursor)
        except Exception:
            connection.close()
            raise
        return connection

    @staticmethod
    def _exists(cursor: Any, statement: str) -> bool:
        """Whether the table or index a PostgreSQL ``CREATE ... IF NOT EXISTS`` makes is there (looked
        up first: the statement needs CREATE on the schema, or the table's owner for an index, even
        when it exists, and a role that may only read and write rows has neither)."""
        name = _CREATED.search(statement)
        assert name is not None, statement
        cursor.execute("SELECT to_regclass(%s)", (name[1],))
        return cursor.fetchone()[0] is not None

    def _add_client_column(self, cursor: Any) -> None:
        """Give a store made by an earlier routegate its decisions' ``client`` column (looked up
        first: PostgreSQL's ALTER TABLE locks the table, and needs its owner, even when it has one)."""
        if self.postgres:
            cursor.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'routegate_decisions' AND column_name = 'client'"
            )
            if cursor.fetchone() is None:
                cursor.execute(f"ALTER TABLE routegate_decisions ADD COLUMN IF NOT EXISTS {CLIENT_COLUMN}")
            return
        cursor.execute("PRAGMA table_info(routegate_decisions)")
        if "client" not in {row[1] for row in cursor.fetchall()}:
            try:
                cursor.execute(f"ALTER TABLE routegate_decisions ADD COLUMN {CLIENT_COLUMN}")
            except sqlite3.OperationalError as error:  # another worker added it first
                if "duplicate column" not in str(error):
                    raise

    def sql(self, statement: str) -> str:
        """``statement`` (written with ``?`` placeholders) in this database's parameter style."""
        return statement.replace("?", "%s") if self.postgres else statement

    @contextmanager
    def transaction(self, connection: Any) -> Iterator[Any]:
        """A cursor whose statements commit together, or roll back on an error."""
        cursor = connection.cursor()
        try:
            yield cursor
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            cursor.close()


@dataclass
class _Feedback:
    """A feedback write whose caller waits for the answer: written, or no such request of ``client``'s."""

    row: FeedbackRow
    oldest: float
    done: Callable[[bool | Exception], None]
    client: str
    expires: float  # time.monotonic() when its poster stops waiting: not written after that


@dataclass
class _Owned:
    """A decision or judgement of a request from ``client`` (a client-key fingerprint; empty without keys)."""

    row: DecisionRow | JudgementRow
    client: str
    decided_at: float | None = None  # a judgement's decision: its created_at (None: the newest under its id)


_STOP = object()


def _settle(item: object, written: bool) -> None:
    """Answer a feedback post; count a judgement left out because its decision is not in the store."""
    if isinstance(item, _Feedback):
        item.done(written)
    elif not written:  # its decision was lost or dropped, or the id names another request now
        fm.STORE_ERRORS.labels("no_decision").inc()


class _LossLog:
    """Warnings about lost writes: the first at once, then at most one a minute with the count since
    the last; one when writes succeed again after a logged loss; and what is left when the store stops."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.unlogged = 0
        self.logged_at = -math.inf
        self.logged = False  # a loss was logged, and no write has succeeded since

    def lost(self, count: int, why: str | None) -> None:
        """``count`` writes lost; ``why`` (None: posts whose posters gave up) may be logged now."""
        self.unlogged += count
        now = time.monotonic()
        if why is not None and now - self.logged_at >= LOG_INTERVAL:
            self._say(after=f": {why}")
            self.logged_at, self.logged = now, True

    def written(self) -> None:
        """A batch was written: say so once after a logged loss, and say losses not said yet (at
        most once a minute)."""
        now = time.monotonic()
        if self.logged:
            self._say(before="writing again; ")
            self.logged = False
        elif self.unlogged and now - self.logged_at >= LOG_INTERVAL:
            self._say()
            self.logged_at = now

    def stopped(self) -> None:
        """The store stops: the losses not logged yet."""
        if self.unlogged:
            self._say()

    def _say(self, before: str = "", after: str = "") -> None:
        log.warning("feedback store %s: %s%d writes lost since the last message%s", self.where, before, self.unlogged, after)
        self.unlogged = 0


class FeedbackStore:
    """Writes rows through a bounded queue and one thread; ``retention_days`` and ``max_rows`` bound every table."""

    def __init__(self, database: Database, retention_days: float, queue_size: int, max_rows: int = 5_000_000) -> None:
        self.database = database
        self.retention_seconds = retention_days * 86400
        self.max_rows = max_rows
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        # feedback posts in the queue (their posters may have given up waiting): at most a tenth of
        # it, so that they cannot fill it and push out other clients' decision rows
        self._feedback_slots = max(1, queue_size // 10)
        self._thread = threading.Thread(target=self._run, name="routegate-feedback-store", daemon=True)
        self._connection: Any = None
        self._next_retention = 0.0
        self._down_until = 0.0  # time.monotonic() before which no connection is tried after a failed one
        self._unsettled = 0  # items of the batch being written that are neither written nor lost yet
        self._losses = _LossLog(database.describe())
        self._closed = False

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Write what is queued (within ``timeout`` seconds in all) and stop the thread."""
        self._closed = True  # a write after this point would wait in a queue that nobody reads
        if not self._thread.is_alive():
            return
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            await asyncio.to_thread(self._queue.put, _STOP, True, timeout)
        except queue.Full:
            self._abandon(f"busy for {timeout:g} s at shutdown")
            return
        await asyncio.to_thread(self._thread.join, seconds_left(deadline))
        if self._thread.is_alive():
            self._abandon(f"still writing {timeout:g} s after shutdown began")

    def _abandon(self, why: str) -> None:
        """Log and count the writes still queued as lost: the process exits without them."""
        with self._queue.mutex:
            left = self._unsettled + sum(1 for item in self._queue.queue if item is not _STOP)
        log.warning("feedback store %s: %s: %d queued writes lost", self.database.describe(), why, left)
        fm.STORE_ERRORS.labels("unavailable").inc(left)

    def record(self, row: DecisionRow | JudgementRow, client: str = "", decided_at: float | None = None) -> None:
        """Queue a row of a request from ``client``; when the queue is full it is dropped and
        counted. A request id that another client's decision holds is not overwritten, nor judged;
        a judgement with ``decided_at`` is stored only while the decision made then is the id's (a
        client that reused the id since has another request under it)."""
        if self._closed:  # the process is stopping: lost, and said so
            log.warning(
                "feedback store %s: closed: the %s of request %s is lost",
                self.database.describe(),
                "decision" if isinstance(row, DecisionRow) else "judgement",
                row.request_id[:128],
            )
            fm.STORE_ERRORS.labels("unavailable").inc()
        elif not self._put(_Owned(row, client, decided_at)):
            fm.STORE_ERRORS.labels("queue_full").inc()  # lost: nobody waits for it

    async def record_feedback(self, row: FeedbackRow, client: str = "") -> bool:
        """Write user feedback; False when ``client`` sent no such request, or it is past the retention."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()

        def done(result: bool | Exception) -> None:
            def settle() -> None:
                self._feedback_slots += 1  # the item has left the queue, whether or not its poster still waits
                if future.done():
                    return
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

            with contextlib.suppress(RuntimeError):  # the loop is closed: the store was abandoned at shutdown
                loop.call_soon_threadsafe(settle)

        if self._closed:
            raise StoreUnavailable("the feedback store is closed: the gateway is stopping")
        if self._feedback_slots == 0:
            raise StoreUnavailable("too many feedback posts are waiting for the feedback store")
        expires = time.monotonic() + ANSWER_TIMEOUT
        if not self._put(_Feedback(row, time.time() - self.retention_seconds, done, client, expires)):
            raise StoreUnavailable("the feedback store's queue is full")
        self._feedback_slots -= 1
        try:
            return await asyncio.wait_for(future, ANSWER_TIMEOUT)
        except TimeoutError:
            raise StoreUnavailable("the feedback store did not answer in time") from None

    def _put(self, item: object) -> bool:
        """Queue ``item``; False when the queue is full (a feedback post is refused, not lost)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        fm.STORE_QUEUED.inc()
        return True

    def _run(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=max(0.001, self._next_retention - time.time()))]
            except queue.Empty:
                batch = []
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            items = [item for item in batch if item is not _STOP]
            fm.STORE_QUEUED.dec(len(items))
            if items or time.time() >= self._next_retention:
                self._write(items)
            if stop:
                if self._connection is not None:
                    self._connection.close()
                self._losses.stopped()
                return

    def _write(self, items: list[object]) -> None:
        """Write ``items`` in one transaction, then delete what is past retention when that is due.
        A batch that fails is tried once more on a new connection (the old one may have died: a
        failover, an idle timeout); failing again (the database may have refused one value), it is
        written item by item, so that such a value loses only its row. A feedback post whose
        poster has stopped waiting (and was told to try again) is not written."""
        items = self._still_awaited(items)
        self._unsettled = len(items)
        if not self._connected(items):
            return
        try:
            results = self._write_batch(items)
        except Exception:
            self._close()
            if not self._connected(items):
                return
            try:
                results = self._write_batch(items)
            except Exception as error:
                if len(items) > 1:
                    self._write_each(items)
                else:
                    self._fail(items, error)
                return
        for item, result in zip(items, results, strict=True):
            _settle(item, result)
        self._unsettled = 0
        if items:
            self._losses.written()
        if time.time() >= self._next_retention:
            self._retain()

    def _still_awaited(self, items: list[object]) -> list[object]:
        """``items`` less the feedback posts whose posters gave up waiting (counted as lost; their
        places among the waiting posts are given back)."""
        now = time.monotonic()
        awaited: list[object] = []
        late = 0
        for item in items:
            if isinstance(item, _Feedback) and item.expires <= now:
                item.done(StoreUnavailable("the feedback store did not answer in time"))
                late += 1
            else:
                awaited.append(item)
        if late:
            fm.STORE_ERRORS.labels("unavailable").inc(late)
            self._losses.lost(late, None)
        return awaited

    def _connected(self, items: list[object]) -> bool:
        """Whether there is a connection (opened now if needed); if none can be opened, ``items``
        are lost (or, with none, retention is put off)."""
        if self._connection is not None:
            return True
        if items and time.monotonic() < self._down_until:  # the last try failed a moment ago: no new one yet
            self._fail(items, StoreUnavailable("the database was unreachable less than a second ago"))
            return False
        try:
            self._connection = self.database.connect()
            return True
        except Exception as error:
            self._down_until = time.monotonic() + 1.0  # a down database: one connection attempt a second
            if items:
                self._next_retention = max(self._next_retention, time.time() + 1.0)
                self._fail(items, error)
            else:  # only retention was due, and the database is not there
                self._retention_failed(error)
            return False

    def _write_batch(self, items: list[object]) -> list[bool]:
        assert self._connection is not None
        with self.database.transaction(self._connection) as cursor:
            return [self._apply(cursor, item) for item in items]

    def _write_each(self, items: list[object]) -> None:
        """Each item in a transaction of its own; after two failures in a row (the database refuses
        every write, not one value) the rest are lost at once."""
        failed_before = False
        for position, item in enumerate(items):
            try:
                assert self._connection is not None
                with self.database.transaction(self._connection) as cursor:
                    result = self._apply(cursor, item)
            except Exception as error:
                if failed_before:
                    self._fail(items[position:], error)
                    return
                failed_before = True
                self._lose([item], error)
                continue
            failed_before = False
            _settle(item, result)
            self._unsettled -= 1

    def _retain(self) -> None:
        """Delete what is past retention, in a transaction of its own: its failure loses no write."""
        try:
            assert self._connection is not None
            with self.database.transaction(self._connection) as cursor:
                self._delete_expired(cursor)
        except Exception as error:
            self._retention_failed(error)

    def _retention_failed(self, error: Exception) -> None:
        """Log a failed retention (or the connect before it), drop the connection, retry in a minute."""
        self._next_retention = time.time() + 60.0
        message = self.database.error_text(error)
        log.warning("feedback store %s: retention failed, tried again in a minute: %s", self.database.describe(), message)
        self._close()

    def _close(self) -> None:
        """Drop the connection (the next write opens a new one)."""
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:
                pass
            self._connection = None

    def _apply(self, cursor: Any, item: object) -> bool:
        """Write one queued item; False when it is a feedback or judgement of no decision of its client's."""
        sql = self.database.sql
        if isinstance(item, _Feedback):
            if not self._holds_decision(cursor, item.row.request_id, item.client, item.oldest):
                return False
            cursor.execute(sql(UPSERTS[FeedbackRow]), tuple(asdict(item.row).values()))
            return True
        assert isinstance(item, _Owned), item  # the queue holds owned rows and feedback writes only
        row, client = item.row, item.client
        if isinstance(row, DecisionRow):  # a client that reuses its x-request-id: its earlier labels go with it
            for table in ("routegate_judgements", "routegate_feedback"):
                statement = (
                    f"DELETE FROM {table} WHERE request_id = ? AND created_at < ? "
                    "AND EXISTS (SELECT 1 FROM routegate_decisions WHERE request_id = ? AND client = ?)"
                )
                cursor.execute(sql(statement), (row.request_id, row.created_at, row.request_id, client))
            cursor.execute(sql(DECISION_UPSERT), (*asdict(row).values(), client))
            return True
        if not self._holds_decision(cursor, row.request_id, client, decided_at=item.decided_at):  # the id names another request
            return False
        cursor.execute(sql(UPSERTS[JudgementRow]), tuple(asdict(row).values()))
        return True

    def _holds_decision(
        self, cursor: Any, request_id: str, client: str, oldest: float = 0.0, decided_at: float | None = None
    ) -> bool:
        """Whether the store holds a decision of ``client``'s under ``request_id``, made since ``oldest``
        (and at ``decided_at`` when it is given)."""
        query = "SELECT 1 FROM routegate_decisions WHERE request_id = ? AND client = ? AND created_at >= ?"
        arguments: tuple[Any, ...] = (request_id, client, oldest)
        if decided_at is not None:
            query, arguments = query + " AND created_at = ?", (*arguments, decided_at)
        cursor.execute(self.database.sql(query), arguments)
        return cursor.fetchone() is not None

    def _delete_expired(self, cursor: Any) -> None:
        """Delete rows past the retention and the oldest beyond ``max_rows`` per table. A decision
        that a judgement or feedback is about stays while they do (export and stats start from the
        decisions, and a far busier decisions table would otherwise take the labels' decisions
        first); a judgement or feedback whose decision is gone goes with it."""
        sql, oldest = self.database.sql, time.time() - self.retention_seconds
        labelled = " AND ".join(
            f"NOT EXISTS (SELECT 1 FROM {label} WHERE {label}.request_id = routegate_decisions.request_id)"
            for label in LABEL_TABLES
        )
        for label in LABEL_TABLES:  # the labels of an expiring decision go with it, however new they are
            cursor.execute(
                sql(
                    f"DELETE FROM {label} WHERE created_at < ? OR request_id IN "
                    "(SELECT request_id FROM routegate_decisions WHERE created_at < ?)"
                ),
                (oldest, oldest),
            )
        cursor.execute(sql("DELETE FROM routegate_decisions WHERE created_at < ?"), (oldest,))
        for table in (*LABEL_TABLES, "routegate_decisions"):  # the labels' cap first: it frees their decisions
            cursor.execute(  # the newest max_rows rows stay; a labelled decision stays while its labels do
                sql(
                    f"DELETE FROM {table} WHERE created_at < "
                    f"(SELECT created_at FROM {table} ORDER BY created_at DESC LIMIT 1 OFFSET ?)"
                    + (f" AND {labelled}" if table == "routegate_decisions" else "")
                ),
                (self.max_rows - 1,),
            )
        self._next_retention = time.time() + RETENTION_INTERVAL

    def _fail(self, items: list[object], error: Exception) -> None:
        """Lose ``items`` and drop the connection (the next write opens a new one)."""
        self._lose(items, error)
        self._close()

    def _lose(self, items: list[object], error: Exception) -> None:
        """Count ``items`` as lost (and log it, at most once a minute); their feedback callers get
        StoreUnavailable."""
        fm.STORE_ERRORS.labels("unavailable").inc(len(items))
        self._unsettled = max(0, self._unsettled - len(items))
        self._losses.lost(len(items), self.database.error_text(error))
        for item in items:
            if isinstance(item, _Feedback):
                item.done(StoreUnavailable("the feedback store's database is unavailable"))
