"""Files the commands write: checked before the work that fills them, and replaced whole once it
is done, so that a wrong path costs no scoring run and a failed write leaves no half file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_writable(path: Path, replaced: bool = False) -> None:
    """Make ``path``'s folder (with its parents); SystemExit when ``path`` is a folder, or cannot be
    written (an existing file, a device such as /dev/stdout) or made (its folder). ``replaced``:
    it will be written by ``replaced_on_success``, which makes a plain file's new version in its
    folder, so that folder must be writable too. OSError (a parent that is a file) names the
    path, as for a missing input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise SystemExit(f"routegate: {path} is a folder: name a file to write")
    exists = path.exists() or path.is_symlink()
    if exists and not os.access(path, os.W_OK):
        raise SystemExit(f"routegate: cannot write {path}")
    made_in_folder = not exists or (replaced and path.is_file() and not path.is_symlink())
    if made_in_folder and not os.access(path.parent, os.W_OK | os.X_OK):
        raise SystemExit(f"routegate: cannot write in {path.parent}")


@contextmanager
def replaced_on_success(path: Path, private: bool = False) -> Iterator[Path]:
    """A temporary file beside ``path`` to write, moved onto ``path`` when the block ends without
    an error and removed otherwise, with the mode a new file gets (the owner's alone when
    ``private``) or the old file's. A path that is not a plain file (a symlink, /dev/stdout) is
    written as it is."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        yield path
        return
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        new_mode = 0o600 if private else 0o666 & ~_umask()
        os.chmod(staging, path.stat().st_mode & 0o7777 if path.exists() else new_mode)
        yield Path(staging)
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
