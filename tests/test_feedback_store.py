"""The feedback store against a real SQLite file and a real PostgreSQL server: rows, feedback on
known and unknown requests, overwrites, retention, and a database that is down."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from server.feedback_store import Database, DecisionRow, FeedbackRow, FeedbackStore, JudgementRow, StoreUnavailable
from tests.fake_upstream import free_port
from tests.postgres_server import PASSWORD, postgres_url  # noqa: F401  (fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        yield Database(str(tmp_path / "store" / "feedback.sqlite3"))
        return
    url = request.getfixturevalue("postgres_url")
    database = Database(url)
    connection = database.connect()
    with database.transaction(connection) as cursor:
        for table in ("routegate_decisions", "routegate_judgements", "routegate_feedback"):
            cursor.execute(f"DELETE FROM {table}")
    connection.close()
    yield database


def decision(request_id: str, created_at: float | None = None, tier: str = "weak") -> DecisionRow:
    return DecisionRow(
        request_id,
        time.time() if created_at is None else created_at,
        "random",
        "score",
        0.25,
        0.5,
        tier,
        f"fake-{tier}",
        "fake-strong",
        "fake-weak",
        11,
        7,
        1.6e-5,
        "0" * 40,
        None,
    )


def rows(database: Database, table: str) -> list[tuple]:
    connection = database.connect()
    try:
        with database.transaction(connection) as cursor:
            cursor.execute(f"SELECT * FROM {table} ORDER BY request_id")
            return [tuple(row) for row in cursor.fetchall()]
    finally:
        connection.close()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_rows_and_feedback_round_trip(database: Database) -> None:
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    store.start()
    store.record(decision("req-1"))
    store.record(decision("req-2", tier="strong"))
    verdicts = ("other_better", "other_better", "other_better")
    judgement = JudgementRow("req-1", time.time(), "random", "weak", *verdicts, "judge", 1e-5, 2e-5)
    store.record(judgement)
    assert await store.record_feedback(FeedbackRow("req-1", time.time(), 1.0, "up", "great"))
    assert await store.record_feedback(FeedbackRow("req-1", time.time(), 0.0, "down", None))  # overwrites
    assert not await store.record_feedback(FeedbackRow("no-such-request", time.time(), 1.0, "up", None))
    await store.aclose()

    decisions = rows(database, "routegate_decisions")
    assert [row[0] for row in decisions] == ["req-1", "req-2"]
    assert decisions[1][6:8] == ("strong", "fake-strong")
    [stored] = rows(database, "routegate_judgements")
    assert stored[0] == "req-1" and stored[3:5] == ("weak", "other_better")
    assert [(row[0], row[2], row[3], row[4]) for row in rows(database, "routegate_feedback")] == [("req-1", 0.0, "down", None)]


async def test_a_reused_request_id_takes_the_earlier_requests_labels_away(database: Database) -> None:
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    store.start()
    first = time.time() - 60
    store.record(decision("reused", created_at=first))
    store.record(JudgementRow("reused", first + 1, "random", "weak", *("other_better",) * 3, "judge", 1e-5, 2e-5))
    assert await store.record_feedback(FeedbackRow("reused", first + 2, 0.0, "down", None))
    store.record(decision("reused", tier="strong"))  # a second request under the same id
    assert await store.record_feedback(FeedbackRow("reused", time.time() + 1, 1.0, "up", None))
    await store.aclose()
    [stored] = rows(database, "routegate_decisions")
    assert stored[6] == "strong"
    assert rows(database, "routegate_judgements") == []  # judged the first answer, not this one
    assert [(row[0], row[3]) for row in rows(database, "routegate_feedback")] == [("reused", "up")]


async def test_an_earlier_request_under_a_reused_id_written_late_does_not_replace_the_later_one(
    database: Database,
) -> None:
    """Two workers (or replicas) answer one client's two requests under one id; the first one's
    queue is behind and writes its decision last: the later request and its rating are kept."""
    ahead, behind = (FeedbackStore(database, retention_days=30, queue_size=100) for _ in range(2))
    ahead.start()
    behind.start()
    answered = time.time() - 60
    ahead.record(decision("reused", tier="strong", created_at=answered + 30))
    assert await ahead.record_feedback(FeedbackRow("reused", answered + 40, 1.0, "up", None))
    behind.record(decision("reused", created_at=answered))  # the first request's decision, written last
    await behind.aclose()
    await ahead.aclose()
    [stored] = rows(database, "routegate_decisions")
    assert (stored[1], stored[6]) == (answered + 30, "strong")
    assert [(row[0], row[3]) for row in rows(database, "routegate_feedback")] == [("reused", "up")]


async def test_a_row_recorded_after_the_store_closed_is_counted_and_logged_as_lost(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    lost_before = counter("routegate_feedback_store_errors_total", reason="unavailable")
    store.start()
    await store.aclose()
    with caplog.at_level("WARNING", logger="routegate.feedback"):
        store.record(decision("too-late"))
    with pytest.raises(StoreUnavailable):
        await store.record_feedback(FeedbackRow("too-late", time.time(), 1.0, "up", None))
    assert counter("routegate_feedback_store_errors_total", reason="unavailable") - lost_before == 1
    assert "too-late is lost" in caplog.text
    assert rows(database, "routegate_decisions") == []


async def test_a_judgement_that_ends_after_its_id_was_reused_is_not_stored_against_the_new_request(
    database: Database,
) -> None:
    """The shadow call and the judge take seconds: meanwhile the client may send another request under the same id."""
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    left_out_before = counter("routegate_feedback_store_errors_total", reason="no_decision")
    store.start()
    first = time.time() - 60
    store.record(decision("reused", created_at=first))
    store.record(decision("reused", tier="strong", created_at=first + 30))  # the second request, answered before the judge
    late = JudgementRow("reused", first + 40, "random", "weak", *("other_better",) * 3, "judge", 1e-5, 2e-5)
    store.record(late, decided_at=first)  # the first answer's judgement
    store.record(decision("other", created_at=first))
    store.record(JudgementRow("other", first + 40, "random", "weak", *("tie",) * 3, "judge", 1e-5, 2e-5), decided_at=first)
    await store.aclose()
    assert [(row[0], row[4]) for row in rows(database, "routegate_judgements")] == [("other", "tie")]
    assert counter("routegate_feedback_store_errors_total", reason="no_decision") - left_out_before == 1


async def test_another_clients_request_under_the_same_id_is_neither_overwritten_nor_rated(database: Database) -> None:
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    store.start()
    store.record(decision("trace-42"), client="alice")
    store.record(decision("trace-42", tier="strong"), client="bob")  # bob sends the same x-request-id
    store.record(JudgementRow("trace-42", time.time(), "random", "strong", *("other_better",) * 3, "judge", 1e-5, 2e-5), "bob")
    assert not await store.record_feedback(FeedbackRow("trace-42", time.time(), 0.0, "down", None), client="bob")
    assert await store.record_feedback(FeedbackRow("trace-42", time.time(), 1.0, "up", None), client="alice")
    await store.aclose()
    [kept] = rows(database, "routegate_decisions")
    assert (kept[6], kept[-1]) == ("weak", "alice")  # alice's request, as she sent it
    assert rows(database, "routegate_judgements") == []  # bob's judgement is not of alice's answer
    assert [(row[0], row[3]) for row in rows(database, "routegate_feedback")] == [("trace-42", "up")]


async def test_a_store_made_before_decisions_had_a_client_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite3"
    with sqlite3.connect(path) as connection:  # the decisions table as earlier routegates made it
        connection.execute(
            "CREATE TABLE routegate_decisions (request_id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, "
            "router TEXT NOT NULL, reason TEXT NOT NULL, score DOUBLE PRECISION, threshold DOUBLE PRECISION, "
            "tier TEXT NOT NULL, model TEXT NOT NULL, strong_model TEXT NOT NULL, weak_model TEXT NOT NULL, "
            "prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd DOUBLE PRECISION, prompt_sha1 TEXT NOT NULL, prompt TEXT)"
        )
        connection.execute(
            "INSERT INTO routegate_decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", astuple(decision("old"))
        )
    database = Database(str(path))
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    store.start()
    assert await store.record_feedback(FeedbackRow("old", time.time(), 1.0, "up", None))  # a request from before: no client
    store.record(decision("new"), client="alice")
    await store.aclose()
    assert [(row[0], row[-1]) for row in rows(database, "routegate_decisions")] == [("new", "alice"), ("old", "")]


async def test_retention_deletes_old_rows_and_refuses_feedback_on_them(database: Database) -> None:
    store = FeedbackStore(database, retention_days=1, queue_size=100)
    store.start()
    store.record(decision("old", created_at=time.time() - 2 * 86400))
    store.record(decision("new"))
    assert not await store.record_feedback(FeedbackRow("old", time.time(), 1.0, "up", None))
    await store.aclose()
    store = FeedbackStore(database, retention_days=1, queue_size=100)  # deletes at its first write
    store.record(decision("newer"))  # queued before the thread starts: the first write holds it
    store.start()
    await store.aclose()
    assert [row[0] for row in rows(database, "routegate_decisions")] == ["new", "newer"]


async def test_the_oldest_rows_beyond_max_rows_are_deleted_but_not_a_labelled_decision(database: Database) -> None:
    store = FeedbackStore(database, retention_days=30, queue_size=100, max_rows=2)
    store.start()
    for index in range(4):
        store.record(decision(f"req-{index}", created_at=time.time() - 100 + index))
    assert await store.record_feedback(FeedbackRow("req-0", time.time(), 1.0, "up", None))
    await store.aclose()
    store = FeedbackStore(database, retention_days=30, queue_size=100, max_rows=2)  # deletes at its first write
    store.record(decision("req-4"))  # queued before the thread starts: the first write holds it
    store.start()
    await store.aclose()
    # the decision the feedback is about outlives busier traffic: export and stats still find it
    assert [row[0] for row in rows(database, "routegate_decisions")] == ["req-0", "req-3", "req-4"]
    assert [row[0] for row in rows(database, "routegate_feedback")] == ["req-0"]


async def test_feedback_and_judgements_go_with_their_expired_decision(database: Database) -> None:
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    store.start()
    store.record(decision("aged", created_at=time.time() - 2 * 86400))
    store.record(JudgementRow("aged", time.time(), "random", "weak", *("other_better",) * 3, "judge", 1e-5, 2e-5))
    assert await store.record_feedback(FeedbackRow("aged", time.time(), 0.0, "down", "kept a day longer than its request"))
    await store.aclose()
    store = FeedbackStore(database, retention_days=1, queue_size=100)  # the decision expires at its first write
    store.record(decision("later"))
    store.start()
    await store.aclose()
    assert [row[0] for row in rows(database, "routegate_decisions")] == ["later"]  # "aged" could be reused now
    assert rows(database, "routegate_judgements") == rows(database, "routegate_feedback") == []


@pytest.mark.parametrize("scheme", ["postgresql+psycopg://", "POSTGRES://"])
async def test_other_spellings_of_a_postgres_url_reach_postgres(scheme: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres_url")
    database = Database(scheme + url.partition("://")[2])  # not a local file named after the URL
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    store.start()
    store.record(decision("req-spelt"))
    await store.aclose()
    assert "req-spelt" in [row[0] for row in rows(Database(url), "routegate_decisions")]


async def test_a_connection_the_server_dropped_loses_no_writes(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(request.getfixturevalue("postgres_url"))
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    store.start()
    store.record(decision("req-before"))
    assert await store.record_feedback(FeedbackRow("req-before", time.time(), 1.0, "up", None))  # written: connected
    admin = database.connect()  # a failover, or an idle timeout: the server ends the store's connection
    with database.transaction(admin) as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()")
    admin.close()
    with caplog.at_level(logging.WARNING, logger="routegate.feedback"):
        for number in range(5):
            store.record(decision(f"req-after-{number}"))
        await store.aclose()
    stored = [row[0] for row in rows(database, "routegate_decisions")]
    assert {"req-before", *(f"req-after-{number}" for number in range(5))} <= set(stored)
    assert "writes lost" not in caplog.text


def test_a_postgres_store_is_upgraded_in_place_and_not_locked_once_it_is(request: pytest.FixtureRequest) -> None:
    database = Database(request.getfixturevalue("postgres_url"))
    admin = database.connect()
    with database.transaction(admin) as cursor:  # the decisions table as earlier routegates made it
        cursor.execute("ALTER TABLE routegate_decisions DROP COLUMN client")
    database.connect().close()  # upgraded
    with database.transaction(admin) as cursor:
        cursor.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'routegate_decisions'")
        assert "client" in {row[0] for row in cursor.fetchall()}
        cursor.execute("LOCK TABLE routegate_decisions IN ACCESS SHARE MODE")  # a long export, say
        connecting = threading.Thread(target=lambda: database.connect().close())
        connecting.start()
        connecting.join(timeout=10)
        connected = not connecting.is_alive()  # an ALTER TABLE would wait for the export's lock
    connecting.join()
    admin.close()
    assert connected


async def test_a_role_that_may_only_read_and_write_rows_stores_decisions(request: pytest.FixtureRequest) -> None:
    """A gateway's PostgreSQL role need not own the tables nor create in the schema once they exist
    (PostgreSQL 15 no longer lets every role create in ``public``)."""
    url = request.getfixturevalue("postgres_url")
    owner = Database(url)
    admin = owner.connect()
    with owner.transaction(admin) as cursor:
        cursor.execute("CREATE ROLE writer LOGIN PASSWORD 'writer-pw'")
        cursor.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        cursor.execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON routegate_decisions, routegate_judgements, routegate_feedback TO writer"
        )
    try:
        writer = Database(url.replace(url.split("//")[1].split("@")[0], "writer:writer-pw"))
        store = FeedbackStore(writer, retention_days=30, queue_size=100)
        store.start()
        store.record(decision("by-writer"))
        assert await store.record_feedback(FeedbackRow("by-writer", time.time(), 1.0, "up", None))  # after the decision
        await store.aclose()
        assert "by-writer" in [row[0] for row in rows(owner, "routegate_decisions")]
    finally:
        with owner.transaction(admin) as cursor:
            cursor.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
            cursor.execute("DROP OWNED BY writer")
            cursor.execute("DROP ROLE writer")
        admin.close()


async def test_a_down_database_is_counted_logged_without_its_password_and_refuses_feedback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = Database(f"postgresql://routegate:{PASSWORD}@127.0.0.1:{free_port()}/postgres")
    lost_before = counter("routegate_feedback_store_errors_total", reason="unavailable")
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    store.start()
    with caplog.at_level(logging.WARNING, logger="routegate.feedback"):
        store.record(decision("req-1"))
        with pytest.raises(StoreUnavailable):
            await store.record_feedback(FeedbackRow("req-1", time.time(), 1.0, "up", None))
        await store.aclose()
    assert counter("routegate_feedback_store_errors_total", reason="unavailable") - lost_before == 2
    assert "writes lost" in caplog.text and "127.0.0.1" in caplog.text
    assert PASSWORD not in caplog.text


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    store = FeedbackStore(Database(str(tmp_path / "feedback.sqlite3")), retention_days=30, queue_size=2)
    dropped_before = counter("routegate_feedback_store_errors_total", reason="queue_full")
    for index in range(5):  # the writer is not started: nothing leaves the queue
        store.record(decision(f"req-{index}"))
    assert counter("routegate_feedback_store_errors_total", reason="queue_full") - dropped_before == 3
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.record_feedback(FeedbackRow("req-0", time.time(), 1.0, "up", None)), 1)
    assert counter("routegate_feedback_store_errors_total", reason="queue_full") - dropped_before == 3  # refused, not lost


async def test_feedback_posts_waiting_for_the_store_cannot_fill_its_queue(tmp_path: Path) -> None:
    """A tenth of the queue at most, counted until the writer has taken them, also when their
    posters gave up: beyond it a post is refused at once, and decision rows still fit."""
    store = FeedbackStore(Database(str(tmp_path / "feedback.sqlite3")), retention_days=30, queue_size=20)
    dropped_before = counter("routegate_feedback_store_errors_total", reason="queue_full")

    def post(request_id: str) -> asyncio.Task[bool]:
        return asyncio.create_task(store.record_feedback(FeedbackRow(request_id, time.time(), 1.0, "up", None)))

    waiting = [post(f"req-{index}") for index in range(2)]  # the writer is not started: they wait for their write
    await asyncio.sleep(0.1)
    for task in waiting:  # their posters give up; their items stay queued
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    with pytest.raises(StoreUnavailable, match="too many feedback posts are waiting"):
        await asyncio.wait_for(post("req-3"), 1)
    for index in range(18):
        store.record(decision(f"req-{index}"))
    assert counter("routegate_feedback_store_errors_total", reason="queue_full") == dropped_before  # all 18 queued
    store.start()  # the writer takes the queued items: their places are free again
    deadline = time.monotonic() + 10
    while True:
        try:
            accepted = await asyncio.wait_for(post("req-never-decided"), 10)
            break
        except StoreUnavailable:  # not yet: the writer hands the places back once it has written them
            assert time.monotonic() < deadline, "the places never came back"
            await asyncio.sleep(0.05)
    assert accepted is False  # taken and answered: no decision under that id
    await store.aclose()


async def test_a_row_the_database_refuses_loses_only_itself(database: Database) -> None:  # noqa: F811
    lost_before = counter("routegate_feedback_store_errors_total", reason="unavailable")
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    refused = dataclasses.replace(decision("req-refused"), prompt_tokens=2**70)  # beyond any INTEGER column
    for row in (decision("req-before"), refused, decision("req-after")):
        store.record(row)  # queued before the writer starts: one batch
    store.start()
    assert await store.record_feedback(FeedbackRow("req-before", time.time(), 1.0, "up", None))
    await store.aclose()
    assert [row[0] for row in rows(database, "routegate_decisions")] == ["req-after", "req-before"]
    assert [row[0] for row in rows(database, "routegate_feedback")] == ["req-before"]
    assert counter("routegate_feedback_store_errors_total", reason="unavailable") - lost_before == 1


async def test_an_idle_store_on_a_missing_database_logs_no_lost_writes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    store = FeedbackStore(Database(str(not_a_directory / "feedback.sqlite3")), retention_days=30, queue_size=100)
    with caplog.at_level(logging.WARNING, logger="routegate.feedback"):
        store.start()
        await asyncio.sleep(2.5)  # a second between tries would log three times by now
        await store.aclose()
    assert "writes lost" not in caplog.text
    assert caplog.text.count("retention failed, tried again in a minute") == 1


async def test_a_database_that_refuses_every_write_loses_the_batch_after_two_tries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(str(tmp_path / "feedback.sqlite3"))
    connection = database.connect()
    connection.execute("CREATE TRIGGER refuse BEFORE INSERT ON routegate_decisions BEGIN SELECT RAISE(ABORT, 'refused'); END")
    connection.commit()
    connection.close()
    lost_before = counter("routegate_feedback_store_errors_total", reason="unavailable")
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    for index in range(5):
        store.record(decision(f"req-{index}"))  # queued before the writer starts: one batch
    with caplog.at_level(logging.WARNING, logger="routegate.feedback"):
        store.start()
        await store.aclose()
    assert counter("routegate_feedback_store_errors_total", reason="unavailable") - lost_before == 5
    assert [line.split(": ")[1] for line in caplog.text.splitlines() if "writes lost" in line] == [
        "1 writes lost since the last message",
        "4 writes lost since the last message",
    ]  # one row alone, then the rest at once, said as the store stops: not a warning per row


async def test_a_down_database_is_tried_once_a_second_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Traffic while the database is down: every write is counted, but there is at most one
    connection attempt a second and one warning a minute, not one of each per batch; the rest are
    said as the store stops."""
    database = Database(f"postgresql://routegate:{PASSWORD}@127.0.0.1:{free_port()}/postgres")
    attempts = 0
    connect = database.connect

    def counted_connect(create_schema: bool = True) -> object:
        nonlocal attempts
        attempts += 1
        return connect(create_schema)

    monkeypatch.setattr(database, "connect", counted_connect)
    lost_before = counter("routegate_feedback_store_errors_total", reason="unavailable")
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    store.start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="routegate.feedback"):
        for index in range(20):  # a batch each
            store.record(decision(f"req-{index}"))
            await asyncio.sleep(0.01)
        await store.aclose()
    elapsed = time.monotonic() - started
    assert counter("routegate_feedback_store_errors_total", reason="unavailable") - lost_before == 20
    assert attempts <= 1 + elapsed  # one at start (retention), then at most one a second
    lost_lines = [line.split(": ")[1] for line in caplog.text.splitlines() if "writes lost" in line]
    assert re.fullmatch(r"\d+ writes lost since the last message", lost_lines[0]) and len(lost_lines) <= 2 + elapsed / 60
    assert sum(int(line.split()[0]) for line in lost_lines) == 20  # every loss said, the rest as it stops


async def test_a_feedback_post_whose_poster_gave_up_is_not_written_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A post answered 503 because the database kept the writer busy past the wait is not written
    once the database answers again (its client was told to try again), and gives its place among
    the waiting posts back: the next post is taken."""
    from server import feedback_store

    monkeypatch.setattr(feedback_store, "ANSWER_TIMEOUT", 0.3)
    database = Database(str(tmp_path / "feedback.sqlite3"))
    store = FeedbackStore(database, retention_days=30, queue_size=10)  # one post may wait at a time
    store.start()
    store.record(decision("rated"))
    assert await store.record_feedback(FeedbackRow("rated", time.time(), 1.0, "up", None))  # the decision is written
    lost_before = counter("routegate_feedback_store_errors_total", reason="unavailable")
    locker = sqlite3.connect(database.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # the writer waits on the lock (SQLite's busy timeout)
    queued_before = counter("routegate_feedback_store_queued")  # other tests' stores may have left some
    store.record(decision("blocked"))
    deadline = time.monotonic() + 20
    while counter("routegate_feedback_store_queued") > queued_before:  # until the writer has taken that batch
        assert time.monotonic() < deadline, "the writer did not take the batch"
        await asyncio.sleep(0.01)
    with pytest.raises(StoreUnavailable):
        await store.record_feedback(FeedbackRow("rated", time.time(), 0.0, "down", None))
    locker.execute("COMMIT")
    locker.close()
    deadline = time.monotonic() + 20
    while counter("routegate_feedback_store_errors_total", reason="unavailable") - lost_before < 1:
        assert time.monotonic() < deadline, "the late post was not dropped"
        await asyncio.sleep(0.05)
    assert [(row[0], row[3]) for row in rows(database, "routegate_feedback")] == [("rated", "up")]
    await asyncio.sleep(0.05)  # the place given back reaches the event loop
    assert await store.record_feedback(FeedbackRow("rated", time.time(), 0.0, "down", None))  # posted again: taken
    await store.aclose()
    assert [row[0] for row in rows(database, "routegate_decisions")] == ["blocked", "rated"]
    assert [(row[0], row[3]) for row in rows(database, "routegate_feedback")] == [("rated", "down")]


async def test_a_feedback_post_written_late_does_not_replace_a_later_one(database: Database) -> None:
    """Two posts on one request reach the database out of order (another replica's database was
    slow): the later post stays."""
    store = FeedbackStore(database, retention_days=30, queue_size=100)
    store.start()
    store.record(decision("req-1"))
    now = time.time()
    assert await store.record_feedback(FeedbackRow("req-1", now, 0.0, "down", None))
    assert await store.record_feedback(FeedbackRow("req-1", now - 5, 1.0, "up", None))
    await store.aclose()
    assert [(row[0], row[2], row[3]) for row in rows(database, "routegate_feedback")] == [("req-1", 0.0, "down")]


def test_replicas_starting_together_on_an_empty_postgres_create_its_tables_once(
    request: pytest.FixtureRequest,
) -> None:
    """Several processes' first connections to a database without tables: each finds the schema in
    place, none fails on another's concurrent CREATE (PostgreSQL's catalog is not guarded by IF NOT EXISTS)."""
    import psycopg

    url = request.getfixturevalue("postgres_url")
    with psycopg.connect(url, autocommit=True) as admin:
        for round_ in range(4):
            admin.execute(f"CREATE DATABASE fresh_{round_}")
            fresh = Database(url.rsplit("/", 1)[0] + f"/fresh_{round_}")
            barrier = threading.Barrier(6)
            errors: list[Exception] = []

            def first_connection(
                database: Database = fresh, barrier: threading.Barrier = barrier, errors: list[Exception] = errors
            ) -> None:
                barrier.wait()
                try:
                    database.connect().close()
                except Exception as error:  # the finding
                    errors.append(error)

            threads = [threading.Thread(target=first_connection) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
