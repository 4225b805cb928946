"""A retired worker's Prometheus files, folded into one archive file per kind of metric.

With several workers, each writes its metrics to files named after its pid in
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up. A worker that ends (SIGHUP, SIGTTOU, a
crash) leaves its counter and histogram files behind, because its counts belong in the totals:
without folding, every restart would add files that every scrape reads, for as long as the
service runs. The supervisor folds them into ``<kind>_archive.db`` instead: counts and sums
added, ``max`` / ``min`` gauges kept at their extreme, ``mostrecent`` ones at the latest value.
(``live*`` gauges leave with their worker: ``prometheus_client.multiprocess.mark_process_dead``.)

A scrape reads the files under a shared lock and a fold replaces them under an exclusive one, so
every count is read exactly once: from the worker's file or from the archive.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

LOCK_FILE = "metrics.lock"  # not *.db: the collector reads every *.db file
ARCHIVE = "archive"  # the "pid" of the archive files' names

Value = tuple[float, float]  # (value, timestamp)


def _added(old: Value, new: Value) -> Value:
    return old[0] + new[0], max(old[1], new[1])


def _latest(old: Value, new: Value) -> Value:
    return new if new[1] >= old[1] else old


#: how two files' values of one sample combine, by the kind a file's name starts with
COMBINE: dict[str, Callable[[Value, Value], Value]] = {
    "counter": _added,
    "histogram": _added,  # each bucket's own count, not cumulative: the collector accumulates
    "summary": _added,
    "gauge_sum": _added,
    "gauge_max": lambda old, new: max(old, new),
    "gauge_min": lambda old, new: min(old, new),
    "gauge_mostrecent": _latest,
}

_folding = threading.Lock()  # one fold at a time within the supervisor


@contextmanager
def _locked(directory: Path, mode: int) -> Iterator[None]:
    with open(directory / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def reading(directory: Path) -> Iterator[None]:
    """Hold while collecting the files: no fold replaces one meanwhile."""
    with _locked(directory, fcntl.LOCK_SH):
        yield


def fold_retired(directory: Path, pid: int) -> None:
    """Fold the files of the ended worker ``pid`` into the archive files and remove them. Kinds
    that cannot be combined across processes (``gauge_all``, which labels each pid) stay as they are."""
    with _folding:
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
            with _locked(directory, fcntl.LOCK_EX):
                os.replace(staged, archive)
                path.unlink()
