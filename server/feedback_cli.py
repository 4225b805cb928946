"""``routegate feedback export|stats``: judged traffic as training records, and the quality figures
of a time window, read from the feedback store (``ROUTEGATE_FEEDBACK_DB`` or ``--db``)."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from routers.data import question_key
from routers.output_files import check_writable, replaced_on_success
from server.quality import Verdicts, quality
from server.settings import SettingsError, load_settings

if TYPE_CHECKING:
    from server.feedback_store import Database

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LAST_SECOND = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()  # the last printable date
VERDICT_SCORES = {"chosen_better": (1.0, 0.0), "tie": (0.5, 0.5), "other_better": (0.0, 1.0)}
JOINED = """SELECT d.request_id, d.created_at, d.router, d.tier, d.strong_model, d.weak_model, d.prompt,
        d.score, d.threshold, j.chosen_tier, j.verdict, f.score, f.rating, f.comment
    FROM routegate_decisions d
    LEFT JOIN routegate_judgements j ON j.request_id = d.request_id
    LEFT JOIN routegate_feedback f ON f.request_id = d.request_id
    WHERE d.created_at >= ? AND d.created_at < ? AND (j.request_id IS NOT NULL OR f.request_id IS NOT NULL)
    ORDER BY d.created_at"""
COUNTED = f"SELECT COUNT(*) FROM ({JOINED.rsplit('ORDER BY', 1)[0]}) counted"


def parse_moment(value: str, now: float | None = None) -> float:
    """Epoch seconds of ``--since`` / ``--until``: a duration back from now (``30m``, ``24h``, ``7d``)
    or an ISO date/time (UTC)."""
    now = time.time() if now is None else now
    match = _DURATION.match(value.strip())
    if match:
        return _in_range(now - float(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is neither a duration (30m, 24h, 7d) nor an ISO date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _in_range(moment.timestamp())


def _in_range(seconds: float) -> float:
    """``seconds`` clamped to the epoch .. the last second of year 9999 (what dates can print)."""
    return min(max(seconds, 0.0), _LAST_SECOND)


def split_of(prompt: str) -> str:
    """The shared/data split rule, keyed by the question rather than the request: dev when
    sha1(question_key(prompt)) % 5 == 0, else train, so that a prompt asked again (the same
    letters and digits) never lands in both splits."""
    return "dev" if int(hashlib.sha1(question_key(prompt).encode()).hexdigest(), 16) % 5 == 0 else "train"


#: rows fetched at a time: a store of millions of requests is read in pieces, never whole
FETCH_ROWS = 1000


def _rows(database: Database, since: float, until: float, desc: str) -> Iterator[tuple]:
    connection = database.connect(create_schema=False)  # reading needs no more than SELECT
    try:
        counter = connection.cursor()
        try:
            counter.execute(database.sql(COUNTED), (since, until))
            (total,) = counter.fetchone()
        finally:
            counter.close()
        # PostgreSQL: a server-side cursor, else psycopg holds the whole result in memory at execute
        cursor = connection.cursor(name="routegate_read") if database.postgres else connection.cursor()
        try:
            cursor.execute(database.sql(JOINED), (since, until))
            with tqdm(total=total, desc=desc, unit="request") as progress:
                while rows := cursor.fetchmany(FETCH_ROWS):
                    yield from rows
                    progress.update(len(rows))
        finally:
            cursor.close()
    finally:
        connection.close()


class ModelNames:
    """Each upstream model name as the installed routers know it (``gpt-4o-mini`` is the data's
    ``gpt-4o-mini-2024-07-18``, as when serving), so that a router trained on the export and the
    public files learns one model from both, and scores it when it routes again. The name is
    matched once against every installed router's models (``mf``'s first), so one upstream model
    has one name whichever router routed its requests (``random`` knows none); a name no router
    knows is kept."""

    def __init__(self, checkpoint_dir: Path | None) -> None:
        self.checkpoint_dir = checkpoint_dir
        self._known: list[str] | None = None
        self._spelt: dict[str, str] = {}

    def __call__(self, model: str) -> str:
        from routers.model_names import match_model

        if model not in self._spelt:
            self._spelt[model] = match_model(model, self._models()) or model
        return self._spelt[model]

    def _models(self) -> list[str]:
        """The model names of every installed router's checkpoint (one that cannot be read knows none)."""
        from routers.checkpoint import CheckpointError
        from routers.registry import CHECKPOINT_ROOT, available_routers, router_models

        if self._known is None:
            self._known = []
            for router in sorted(available_routers(), key=lambda name: name != "mf"):
                try:
                    self._known += router_models(router, self.checkpoint_dir or CHECKPOINT_ROOT)
                except CheckpointError:  # a manifest that cannot be read: names as the upstreams spell them
                    continue
        return self._known


def record_of(row: tuple, names: Callable[[str], str] = lambda model: model) -> dict[str, Any] | None:
    """A shared/data record for one stored request (None without prompt text or usable scores);
    ``names`` spells each model (by default as the upstream does)."""
    (
        request_id,
        created_at,
        router,
        tier,
        strong_model,
        weak_model,
        prompt,
        score,
        threshold,
        chosen_tier,
        verdict,
        feedback_score,
        rating,
        comment,
    ) = row
    if prompt is None:
        return None
    models = {"strong": names(strong_model), "weak": names(weak_model)}
    scores: dict[str, float] = {}
    if verdict in VERDICT_SCORES and models["strong"] != models["weak"]:  # one model behind two URLs compares nothing
        chosen, other = VERDICT_SCORES[verdict]
        scores = {models[chosen_tier]: chosen, models["weak" if chosen_tier == "strong" else "strong"]: other}
    elif feedback_score is not None:
        scores = {models[tier]: feedback_score}
    if not scores:
        return None
    record: dict[str, Any] = {
        "id": request_id,
        "source": "feedback",
        "benchmark": "feedback",
        "category": router,
        "prompt": prompt,
        "scores": scores,
        "split": split_of(prompt),
        "meta": {
            "router": router,
            "tier": tier,
            "router_score": score,
            "threshold": threshold,
            "verdict": verdict,
            "created_at": created_at,
        },
    }
    if feedback_score is not None:
        record["feedback"] = {"score": feedback_score, "rating": rating, "comment": comment}
    return record


def _database(args: argparse.Namespace) -> Database:
    # imported here: the store's metrics must not exist before `routegate serve` prepares PROMETHEUS_MULTIPROC_DIR
    from server.feedback_store import Database

    if args.db:
        try:
            database = Database(args.db)
        except ValueError as error:
            raise SystemExit(f"routegate: --db {error}") from None
    else:
        try:
            url = load_settings(args.config).feedback_db.get_secret_value().strip()
        except SettingsError as error:
            raise SystemExit(f"routegate: {error}") from None
        if url.lower() == "off":
            raise SystemExit("routegate: ROUTEGATE_FEEDBACK_DB is off; name a store with --db")
        database = Database(url)
    if database.path is not None and not database.path.is_file():  # reading must not create an empty store
        raise SystemExit(f"routegate: no feedback store at {database.path}")
    return database


def _read_rows(database: Database, since: float, until: float, desc: str) -> Iterator[tuple]:
    """Every judged or rated request stored from ``since`` to before ``until``, as they are read, with a
    progress bar named ``desc`` (none from a store no gateway has opened); a one-line exit when the
    database cannot be read, at the start or part way."""
    try:
        yield from _rows(database, since, until, desc)
    except Exception as error:  # the driver's errors (sqlite3, psycopg): name the store, not a traceback
        if database.has_no_tables(error):
            print(f"{database.describe()} has no requests yet: no gateway has written to it", file=sys.stderr)
            return
        raise SystemExit(f"routegate: cannot read {database.describe()}: {database.error_text(error)}") from None


def _check_window(args: argparse.Namespace) -> None:
    """SystemExit when ``--until`` is not after ``--since``: such a window holds no request."""
    if args.until is not None and args.until <= args.since:
        raise SystemExit(f"routegate: --until ({_iso(args.until)}) must be after --since ({_iso(args.since)})")


def _window_end(args: argparse.Namespace) -> float:
    """``--until``, or past every printable date without it."""
    return _LAST_SECOND + 1.0 if args.until is None else args.until


def _iso(moment: float) -> str:
    """Epoch seconds as an ISO date and time in UTC, to the second."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def _export(args: argparse.Namespace) -> int:
    _check_window(args)
    database = _database(args)
    if database.path is not None and _is_store_file(args.out, database.path):
        raise SystemExit(f"routegate: --out {args.out} is the feedback store being read; name another file")
    check_writable(args.out, replaced=True)
    if args.checkpoint_dir is not None and not args.checkpoint_dir.is_dir():
        raise SystemExit(f"routegate: --checkpoint-dir {args.checkpoint_dir} is not a folder")
    rows = _read_rows(database, args.since, _window_end(args), desc="export")
    names = ModelNames(args.checkpoint_dir)
    written = without_text = 0
    with (  # a failure leaves an earlier export whole; prompts and comments: the owner's alone, as the store is
        replaced_on_success(args.out, private=True) as staging,
        _open_text(staging, compressed=args.out.suffix == ".gz") as out,
    ):
        for row in rows:
            record = record_of(row, names)
            if record is None:
                without_text += row[6] is None
                continue
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
    print(f"{args.out}: {written} records from {database.describe()}")
    if without_text:
        print(f"{without_text} judged or rated requests have no stored prompt text (ROUTEGATE_FEEDBACK_STORE_TEXT=false)")
    return 0


def _is_store_file(out: Path, store: Path) -> bool:
    """Whether ``out`` is the SQLite store or one of its journal files, by any name or link."""
    files = [store.with_name(store.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    return any(out.resolve() == file.resolve() or (out.exists() and file.exists() and out.samefile(file)) for file in files)


def _open_text(path: Path, compressed: bool) -> TextIO:
    """``path`` opened to write UTF-8 text, gzip-compressed when ``compressed`` (as ``--data`` reads a .gz file)."""
    return gzip.open(path, "wt", encoding="utf-8") if compressed else open(path, "w", encoding="utf-8")


def stats_lines(rows: Iterable[tuple]) -> list[str]:
    """The stats table: per router, judged pairs, regret, waste, retained with its interval, user feedback."""
    verdicts: dict[str, Verdicts] = defaultdict(Verdicts)
    feedback: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        router, chosen_tier, verdict, feedback_score = row[2], row[9], row[10], row[11]
        if verdict is not None:
            verdicts[router].add(chosen_tier, verdict)
        if feedback_score is not None:
            feedback[router].append(feedback_score)
    columns = ("router", "judged", "unparsable", "regret", "waste", "retained", "95% interval", "feedback", "mean")
    table = [columns]
    for router in sorted(set(verdicts) | set(feedback)):
        counts = verdicts[router]
        figures = quality(counts)
        interval = "-" if figures.retained_low is None else f"[{figures.retained_low:.3f}, {figures.retained_high:.3f}]"
        scores = feedback[router]
        table.append(
            (
                router,
                str(figures.judged),
                str(counts.unparsable),
                _fmt(figures.regret_rate),
                _fmt(figures.waste_rate),
                _fmt(figures.retained),
                interval,
                str(len(scores)),
                _fmt(sum(scores) / len(scores) if scores else None),
            )
        )
    widths = [max(len(row[column]) for row in table) for column in range(len(columns))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _stats(args: argparse.Namespace) -> int:
    _check_window(args)
    database = _database(args)
    rows = _read_rows(database, args.since, _window_end(args), desc="read")
    until = "" if args.until is None else f" until {_iso(args.until)}"
    print(f"{database.describe()}, since {_iso(args.since)}{until}:")
    print("\n".join(stats_lines(rows)))
    return 0


def add_feedback_commands(commands: argparse._SubParsersAction) -> None:
    """``routegate feedback export`` and ``routegate feedback stats``."""
    feedback = commands.add_parser("feedback", help="judged traffic and user feedback from the feedback store")
    actions = feedback.add_subparsers(dest="feedback_command", required=True)
    for name, run, help_text in (
        ("export", _export, "write judged and rated requests as training records (shared/data format)"),
        ("stats", _stats, "print regret, waste and quality retained (with its 95%% interval) per router"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--db", help="store URL (default ROUTEGATE_FEEDBACK_DB)")
        action.add_argument("--config", help="YAML settings file to read ROUTEGATE_FEEDBACK_DB from")
        action.add_argument(
            "--since",
            type=parse_moment,
            default=parse_moment("30d"),
            help="window start: a duration back from now (30m, 24h, 7d) or an ISO date (default 30d)",
        )
        action.add_argument(
            "--until",
            type=parse_moment,
            help="window end (requests before it): a duration back from now or an ISO date (default: no end)",
        )
        if name == "export":
            action.add_argument(
                "--out",
                type=Path,
                required=True,
                help="JSONL file to write (gzip-compressed when it ends in .gz), readable by its owner only",
            )
            action.add_argument(
                "--checkpoint-dir",
                type=Path,
                help="checkpoints whose model names the export uses for each request's router (as "
                "ROUTEGATE_CHECKPOINT_DIR; default: the shipped ones): gpt-4o-mini is written as the "
                "router's gpt-4o-mini-2024-07-18",
            )
        action.set_defaults(run=run)
