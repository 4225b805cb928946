"""``routegate feedback export`` and ``stats`` on a store filled with known rows (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest

from routers.data import iter_records
from server.feedback_store import Database, DecisionRow, FeedbackRow, FeedbackStore, JudgementRow
from server.quality import Verdicts, quality
from tests.another_user import said_as_another_user
from tests.conftest import REPO
from tests.postgres_server import postgres_url  # noqa: F401  (fixture)
from tests.test_feedback_store import database  # noqa: F401  (fixture)

NOW = time.time()


def decision(
    request_id: str,
    tier: str,
    prompt: str | None,
    created_at: float = NOW,
    models: tuple[str, str] = ("m-strong", "m-weak"),
    router: str = "mf",
) -> DecisionRow:
    return DecisionRow(
        request_id,
        created_at,
        router,
        "score",
        0.4,
        0.5,
        tier,
        f"m-{tier}",
        *models,
        11,
        7,
        1e-5,
        hashlib.sha1(b"x").hexdigest(),
        prompt,
    )


def judgement(request_id: str, chosen_tier: str, verdict: str) -> JudgementRow:
    return JudgementRow(request_id, NOW, "mf", chosen_tier, verdict, verdict, verdict, "judge", 1e-5, 1e-5)


async def fill(into: Database) -> None:
    store = FeedbackStore(into, retention_days=30, queue_size=100)
    store.start()
    rows = [
        decision("r-strong-win", "weak", "hard question"),
        judgement("r-strong-win", "weak", "other_better"),
        decision("r-tie", "strong", "easy question"),
        judgement("r-tie", "strong", "tie"),
        decision("r-weak-win", "strong", "easy again"),
        judgement("r-weak-win", "strong", "other_better"),
        decision("r-kept", "strong", "tricky"),
        judgement("r-kept", "strong", "chosen_better"),
        decision("r-repeat-0", "weak", "Asked twice?"),
        judgement("r-repeat-0", "weak", "tie"),
        decision("r-repeat-8", "strong", "asked  TWICE"),  # the same question again
        judgement("r-repeat-8", "strong", "tie"),
        decision("r-noise", "weak", "noise"),
        judgement("r-noise", "weak", "unparsable"),
        decision("r-no-text", "weak", None),
        judgement("r-no-text", "weak", "chosen_better"),
        decision("r-rated", "weak", "rated only"),
        decision("r-unjudged", "weak", "nothing known"),
        decision("r-old", "weak", "too old", created_at=NOW - 3 * 86400),
        judgement("r-old", "weak", "tie"),
    ]
    for row in rows:
        store.record(row)
    assert await store.record_feedback(FeedbackRow("r-rated", NOW, 0.0, "down", "wrong"))
    assert await store.record_feedback(FeedbackRow("r-kept", NOW, 1.0, "up", None))
    await store.aclose()


def routegate_run(*args: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run


def routegate(*args: str) -> str:
    return routegate_run(*args).stdout


@pytest.mark.parametrize("name", ["feedback.jsonl", "feedback.jsonl.gz"])
async def test_export_writes_shared_data_records(database: Database, tmp_path: Path, name: str) -> None:  # noqa: F811
    await fill(database)
    out = tmp_path / name
    run = routegate_run("feedback", "export", "--db", database.url, "--out", str(out), "--since", "2d")
    printed = run.stdout
    records = {record["id"]: record for record in iter_records(out)}  # as routegate train reads it
    # a progress bar over the window's nine judged or rated requests, with or without text
    assert "export: 100%" in run.stderr and "9/9" in run.stderr, run.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # prompts and comments: the owner's alone, as the store
    assert set(records) == {"r-strong-win", "r-tie", "r-weak-win", "r-kept", "r-rated", "r-repeat-0", "r-repeat-8"}
    assert "7 records" in printed and "1 judged or rated requests have no stored prompt text" in printed
    assert records["r-strong-win"]["scores"] == {"m-weak": 0.0, "m-strong": 1.0}
    assert records["r-tie"]["scores"] == {"m-strong": 0.5, "m-weak": 0.5}
    assert records["r-weak-win"]["scores"] == {"m-strong": 0.0, "m-weak": 1.0}
    assert records["r-kept"]["scores"] == {"m-strong": 1.0, "m-weak": 0.0}
    assert records["r-kept"]["feedback"] == {"score": 1.0, "rating": "up", "comment": None}
    assert records["r-rated"]["scores"] == {"m-weak": 0.0}  # user feedback only: the served model's score
    for record in records.values():
        key = "".join(character for character in record["prompt"].lower() if character.isalnum())
        assert record["split"] == ("dev" if int(hashlib.sha1(key.encode()).hexdigest(), 16) % 5 == 0 else "train")
        assert record["source"] == "feedback" and record["prompt"]
    assert records["r-strong-win"]["prompt"] == "hard question"
    assert records["r-repeat-0"]["split"] == records["r-repeat-8"]["split"] == "dev"  # one question, one split


async def test_a_verdict_between_one_model_behind_two_urls_is_not_exported(database: Database, tmp_path: Path) -> None:  # noqa: F811
    store = FeedbackStore(database, retention_days=30, queue_size=10)
    store.start()
    for request_id in ("r-judged", "r-rated"):
        store.record(decision(request_id, "weak", f"asked {request_id}", models=("m-same", "m-same")))
    store.record(judgement("r-judged", "weak", "other_better"))  # the model against itself: nothing to learn
    assert await store.record_feedback(FeedbackRow("r-rated", NOW, 1.0, "up", None))
    await store.aclose()
    out = tmp_path / "feedback.jsonl"
    routegate("feedback", "export", "--db", database.url, "--out", str(out), "--since", "2d")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(record["id"], record["scores"]) for record in records] == [("r-rated", {"m-same": 1.0})]


async def test_the_export_spells_each_model_as_the_installed_routers_know_it(database: Database, tmp_path: Path) -> None:  # noqa: F811
    """Upstreams named ``gpt-4o`` / ``gpt-4o-mini`` are the shipped ``mf``'s dated snapshots: trained
    under the upstream names, the labels would make a model of their own, which the retrained router
    would then score instead of the one the public files describe."""
    store = FeedbackStore(database, retention_days=30, queue_size=10)
    store.start()
    store.record(decision("r-judged", "weak", "which is larger?", models=("gpt-4o", "gpt-4o-mini")))
    store.record(judgement("r-judged", "weak", "other_better"))
    # routed by a router that knows no models (an A/B test against router-random-30%): one model, one name
    store.record(decision("r-random", "strong", "which is smaller?", models=("gpt-4o", "gpt-4o-mini"), router="random"))
    store.record(judgement("r-random", "strong", "tie"))
    # causal_llm knows GPT-4 only as gpt-4-0314, mf as gpt-4: the name is the installed routers' best match, whoever routed
    store.record(decision("r-causal", "weak", "which is odd?", models=("gpt-4", "gpt-4o-mini"), router="causal_llm"))
    store.record(judgement("r-causal", "weak", "chosen_better"))
    await store.aclose()
    out = tmp_path / "feedback.jsonl"
    routegate("feedback", "export", "--db", database.url, "--out", str(out), "--since", "2d")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["scores"] for record in records] == [
        {"gpt-4o-2024-05-13": 1.0, "gpt-4o-mini-2024-07-18": 0.0},
        {"gpt-4o-2024-05-13": 0.5, "gpt-4o-mini-2024-07-18": 0.5},
        {"gpt-4": 0.0, "gpt-4o-mini-2024-07-18": 1.0},
    ]
    empty = tmp_path / "no-routers"
    (empty / "mf").mkdir(parents=True)  # routers that know no models: the names as the upstreams spell them
    routegate("feedback", "export", "--db", database.url, "--out", str(out), "--since", "2d", "--checkpoint-dir", str(empty))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["scores"] for record in records] == [
        {"gpt-4o": 1.0, "gpt-4o-mini": 0.0},
        {"gpt-4o": 0.5, "gpt-4o-mini": 0.5},
        {"gpt-4": 0.0, "gpt-4o-mini": 1.0},
    ]
    typo = [sys.executable, "-m", "server.cli", "feedback", "export", "--db", database.url, "--out", str(out)]
    run = subprocess.run([*typo, "--checkpoint-dir", str(tmp_path / "no-ruoters")], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip() == f"routegate: --checkpoint-dir {tmp_path / 'no-ruoters'} is not a folder"
    kept = [json.loads(line)["scores"] for line in out.read_text().splitlines()]
    assert kept == [record["scores"] for record in records]  # the last export kept


async def test_stats_prints_the_quality_figures_of_the_window(database: Database) -> None:  # noqa: F811
    await fill(database)
    printed = routegate("feedback", "stats", "--db", database.url, "--since", "2d")
    [header, row] = printed.splitlines()[1:]
    assert header.split()[:6] == ["router", "judged", "unparsable", "regret", "waste", "retained"]
    figures = quality(
        Verdicts.of(
            [
                ("weak", "other_better"),
                ("strong", "tie"),
                ("strong", "other_better"),
                ("strong", "chosen_better"),
                ("weak", "unparsable"),
                ("weak", "chosen_better"),
                ("weak", "tie"),
                ("strong", "tie"),
            ]
        )
    )
    # a=1 b=1 c=1 d=1: (1 - 1) / (1 + 1 - 1 - 1) has no value; regret 1/3, waste 3/4
    assert (figures.regret_rate, figures.waste_rate, figures.retained) == (1 / 3, 3 / 4, None)
    cells = row.split()
    assert cells[:7] == ["mf", "7", "1", "0.333", "0.750", "-", "-"]
    assert cells[7:] == ["2", "0.500"]  # two feedbacks, mean 0.5
    # windows reaching past what a date can hold start at the epoch, or end in year 9999
    for since, start in (("1000000d", "1970-01-01T00:00:00"), ("0001-01-01T00:00:00+01:00", "1970-01-01T00:00:00")):
        assert (
            routegate("feedback", "stats", "--db", database.url, "--since", since)
            .splitlines()[0]
            .endswith(f"since {start}+00:00:")
        )
    assert "since 9999-12-31T23:59:59+00:00:" in routegate(
        "feedback", "stats", "--db", database.url, "--since", "9999-12-31T23:59:59-01:00"
    )


async def test_until_ends_the_window_of_stats_and_export(database: Database, tmp_path: Path) -> None:  # noqa: F811
    await fill(database)
    window = ("--since", "4d", "--until", "2d")  # only "too old", stored 3 days ago
    started = time.time()
    printed = routegate("feedback", "stats", "--db", database.url, *window).splitlines()
    until = datetime.fromisoformat(printed[0].rsplit(" until ", 1)[1].removesuffix(":")).timestamp()
    assert started - 2 * 86400 - 1 <= until <= time.time() - 2 * 86400  # two days before the command ran, to the second
    assert printed[2].split()[:3] == ["mf", "1", "0"]
    out = tmp_path / "old.jsonl"
    assert "1 records" in routegate("feedback", "export", "--db", database.url, "--out", str(out), *window)
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == ["too old"]
    refused = subprocess.run(
        [sys.executable, "-m", "server.cli", "feedback", "stats", "--db", database.url, "--since", "2d", "--until", "3d"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1 and "--until (" in refused.stderr and "must be after --since" in refused.stderr


async def test_export_refuses_to_write_over_the_store_it_reads(tmp_path: Path) -> None:
    """``--out`` naming the SQLite store, a link to it or its write-ahead log would have replaced
    the store (and what a running gateway still writes to it) with the export."""
    store = tmp_path / "feedback.sqlite3"
    await fill(Database(str(store)))
    (tmp_path / "link.jsonl").symlink_to(store)
    for out in (store, tmp_path / "link.jsonl", tmp_path / "feedback.sqlite3-wal", tmp_path / "." / "feedback.sqlite3"):
        run = subprocess.run(
            [sys.executable, "-m", "server.cli", "feedback", "export", "--db", str(store), "--out", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 1 and "is the feedback store being read" in run.stderr, run.stderr
    assert "mf" in routegate("feedback", "stats", "--db", str(store), "--since", "2d")  # the store is whole


async def test_a_store_named_as_routegate_prints_it_is_the_same_store(tmp_path: Path) -> None:
    """Commands print an SQLite store as ``sqlite:/path``; given back as ``--db``, that is the
    store, not a file named ``sqlite:/path``."""
    store = tmp_path / "feedback.sqlite3"
    await fill(Database(str(store)))
    printed = routegate("feedback", "stats", "--db", f"sqlite:{store}", "--since", "2d")
    assert printed.startswith(f"sqlite:{store}, since") and "mf" in printed
    assert Database(f"SQLite:{store}").path == Database(f"sqlite://{store}").path == store


async def test_a_store_that_may_only_be_read_can_be_exported() -> None:
    """A user who may read the store but not write its folder (a read-only mount, another
    user's folder) can export it: SQLite cannot make the shared-memory file a WAL store needs.
    Where the tests run as root, a forked child runs the command as ``nobody``."""
    top = Path(tempfile.mkdtemp(prefix="routegate-read-only-"))  # pytest's tmp_path is root's alone
    folder, out = top / "store", top / "out" / "feedback.jsonl"
    folder.mkdir()
    out.parent.mkdir()
    store = folder / "feedback.sqlite3"
    await fill(Database(str(store)))
    try:
        top.chmod(0o755)
        store.chmod(0o644)
        folder.chmod(0o555)
        out.parent.chmod(0o777)
        said = said_as_another_user(["feedback", "export", "--db", str(store), "--out", str(out), "--since", "2d"])
        assert said == "finished"
        assert {record["id"] for record in iter_records(out)} == {
            "r-strong-win",
            "r-tie",
            "r-weak-win",
            "r-kept",
            "r-rated",
            "r-repeat-0",
            "r-repeat-8",
        }
    finally:
        folder.chmod(0o755)
        shutil.rmtree(top)


def test_an_unquoted_off_in_the_config_file_turns_the_store_off(tmp_path: Path) -> None:
    config = tmp_path / "routegate.yaml"
    config.write_text("feedback_db: off\n")  # YAML 1.1 reads it as false
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", "feedback", "stats", "--config", str(config)],
        cwd=REPO,
        env={name: value for name, value in os.environ.items() if name != "ROUTEGATE_FEEDBACK_DB"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and run.stderr.strip() == "routegate: ROUTEGATE_FEEDBACK_DB is off; name a store with --db"


def test_a_store_that_does_not_exist_is_named_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "feedback.sqlite3"
    earlier = tmp_path / "export.jsonl"
    earlier.write_text('{"id": "kept"}\n')
    for command in (["stats"], ["export", "--out", str(earlier)]):
        run = subprocess.run(
            [sys.executable, "-m", "server.cli", "feedback", *command, "--db", str(missing)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 1 and run.stderr.strip() == f"routegate: no feedback store at {missing}"
    assert not missing.parent.exists() and earlier.read_text() == '{"id": "kept"}\n'


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mysql://routegate:hunter2@db/feedback", "unknown scheme 'mysql://'"),
        ("postgresql:/routegate:hunter2@db/feedback", "looks like a PostgreSQL address"),  # a slash missing
        ("postgres//routegate:hunter2@db/feedback", "looks like a PostgreSQL address"),
        ("host=db user=routegate password=hunter2 dbname=feedback", "looks like a PostgreSQL address"),  # libpq's form
        ("postgresql://routegate@127.0.0.1:1/feedback?password=hunter2%zz", "cannot read"),  # libpq quotes a bad escape
        ("postgresql://routegate@127.0.0.1:1/feedback?sslpassword=hunter2%zz", "cannot read"),
    ],
)
def test_a_store_url_of_another_kind_is_refused_without_its_password(tmp_path: Path, url: str, said: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", "feedback", "stats", "--db", url],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and said in run.stderr and "hunter2" not in run.stderr, run.stderr
    assert list(tmp_path.iterdir()) == []  # no local file named after the URL


def test_a_store_no_gateway_has_written_to_has_nothing_to_report(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS fresh")
        admin.execute("CREATE DATABASE fresh")
    empty_sqlite = tmp_path / "empty.sqlite3"
    empty_sqlite.touch()  # a file, but no tables
    for url in (postgres_url.rsplit("/", 1)[0] + "/fresh", str(empty_sqlite)):
        stats = subprocess.run(
            [sys.executable, "-m", "server.cli", "feedback", "stats", "--db", url], cwd=REPO, capture_output=True, text=True
        )
        assert stats.returncode == 0, stats.stderr
        assert "has no requests yet" in stats.stderr and "Traceback" not in stats.stderr
        assert stats.stdout.splitlines()[1].split()[:2] == ["router", "judged"] and len(stats.stdout.splitlines()) == 2
        out = tmp_path / "exports" / "export.jsonl"  # a folder made for it, as score makes one
        assert "0 records" in routegate("feedback", "export", "--db", url, "--out", str(out))
        assert out.read_text() == "" and [path.name for path in out.parent.iterdir()] == ["export.jsonl"]


async def test_a_role_that_may_only_read_can_export_and_print_stats(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    owner = Database(postgres_url)
    connection = owner.connect()
    with owner.transaction(connection) as cursor:  # what other tests left in this server's tables
        for table in ("routegate_decisions", "routegate_judgements", "routegate_feedback"):
            cursor.execute(f"DELETE FROM {table}")
    await fill(owner)
    with owner.transaction(connection) as cursor:
        cursor.execute("DROP ROLE IF EXISTS analyst")
        cursor.execute("CREATE ROLE analyst LOGIN PASSWORD 'analyst-pw'")
        cursor.execute("GRANT SELECT ON routegate_decisions, routegate_judgements, routegate_feedback TO analyst")
    connection.close()
    reader = postgres_url.replace(postgres_url.split("//")[1].split("@")[0], "analyst:analyst-pw")
    out = tmp_path / "feedback.jsonl"
    assert "7 records" in routegate("feedback", "export", "--db", reader, "--out", str(out), "--since", "2d")
    assert len(out.read_text().splitlines()) == 7
    assert routegate("feedback", "stats", "--db", reader, "--since", "2d").splitlines()[2].split()[:2] == ["mf", "7"]
