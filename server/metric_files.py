"""A retired worker's Prometheus files, folded into one archive file per kind of metric.

With several workers, each writes its metrics to files named after its pid in
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up. A worker that ends (SIGHUP, SIGTTOU, a
crash) leaves its counter and histogram files behind, because its counts belong in the totals:
without folding, every restart would add files that every scrape reads, for as long as the
service runs. The supervisor folds them into ``<kind>_archive.db`` instead: counts and sums
added, ``max`` / ``min`` gauges kept at their extreme, ``mostrecent`` ones at the latest value.
(``live*`` gauges leave with their worker: ``prometheus_client.multiprocess.mark_process_dead``.)

A scrape reads the files under a shared lock and a fold replaces them under an exclusive one, so
a scrape reads each count once: from the worker's file or from the archive. A fold that cannot
have the lock within ``LOCK_TIMEOUT_SECONDS`` (a scrape stalled mid-read) leaves the files as they
are, still counted once. ``gauge_all`` files, which label each pid, stay too: the gateway has no
such gauge.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from prometheus_client.mmap_dict import MmapedDict

LOCK_FILE = "metrics.lock"  # not *.db: the collector reads every *.db file
ARCHIVE = "archive"  # the "pid" of the archive files' names
LOCK_TIMEOUT_SECONDS = 5.0  # a fold waits this long for scrapes to finish

Value = tuple[float, float]  # (value, timestamp)


def _added(old: Value, new: Value) -> Value:
    return old[0] + new[0], max(old[1], new[1])


def _latest(old: Value, new: Value) -> Value:
    return new if new[1] >= old[1] else old


def _largest(old: Value, new: Value) -> Value:
    return new if new[0] > old[0] else old


def _smallest(old: Value, new: Value) -> Value:
    return new if new[0] < old[0] else old


#: how two files' values of one sample combine, by the kind a file's name starts with
COMBINE: dict[str, Callable[[Value, Value], Value]] = {
    "counter": _added,
    "histogram": _added,  # each bucket's own count, not cumulative: the collector accumulates
    "summary": _added,
    "gauge_sum": _added,
    "gauge_max": _largest,
    "gauge_min": _smallest,
    "gauge_mostrecent": _latest,
}


def _try_exclusive(lock: IO[str], deadline: float) -> bool:
    """Take ``lock`` (an open file) exclusively, polling until ``deadline``; whether it was taken."""
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


@contextmanager
def reading(directory: Path) -> Iterator[None]:
    """Hold while collecting the files: no fold replaces one meanwhile."""
    with open(directory / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fold_retired(directory: Path, pid: int) -> bool:
    """Fold the files of the ended worker ``pid`` into the archive files and remove them; False
    when a kind's file was left as it is because scrapes held the lock past ``LOCK_TIMEOUT_SECONDS``
    (one deadline for the whole fold, so the supervisor waits that long at most)."""
    deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
    folded = True
    for path in sorted(directory.glob(f"*_{pid}.db")):
        kind = path.name.removesuffix(f"_{pid}.db")
        combine = COMBINE.get(kind)
        if combine is None:
            continue
        archive = directory / f"{kind}_{ARCHIVE}.db"
        merged: dict[str, Value] = {}
        for source in (archive, path):
            if source.exists():
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(source)):
                    merged[key] = combine(merged[key], (value, timestamp)) if key in merged else (value, timestamp)
        staged = directory / f".{archive.name}.new"
        staged.unlink(missing_ok=True)
        written = MmapedDict(str(staged))
        try:
            for key, (value, timestamp) in merged.items():
                written.write_value(key, value, timestamp)
        finally:
            written.close()
        with open(directory / LOCK_FILE, "a") as lock:
            if not _try_exclusive(lock, deadline):
                staged.unlink()
                folded = False
                continue
            try:
                os.replace(staged, archive)
                path.unlink()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return folded
