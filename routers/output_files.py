"""Files the commands write: checked before the work that fills them, and replaced whole once it
is done, so that a wrong path costs no scoring run and a failed write leaves no half file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_writable(path: Path) -> None:
    """Make ``path``'s folder (with its parents); SystemExit when ``path`` is a folder or its folder
    cannot be written. OSError (a parent that is a file) names the path, as for a missing input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise SystemExit(f"routegate: {path} is a folder: name a file to write")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise SystemExit(f"routegate: cannot write in {path.parent}")


@contextmanager
def replaced_on_success(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write, moved onto ``path`` when the block ends without
    an error and removed otherwise."""
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        yield Path(staging)
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)
