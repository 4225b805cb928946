"""Router checkpoint directories: weights plus ``router.json`` (how they were made, what they know)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from routers.calibration import CALIBRATION_FILE
from routers.data import licence_of

MANIFEST = "router.json"


class CheckpointError(Exception):
    """A checkpoint that is missing, incomplete, or does not know the requested models."""


class UnscoredPairError(CheckpointError):
    """A checkpoint that knows both models of a pair but never saw them scored on the same prompt."""


#: the ``routegate train`` command running now, when a trainer is called from code (a leave-one-out fold)
_TRAIN_COMMAND: ContextVar[str | None] = ContextVar("routegate_train_command", default=None)


@contextmanager
def training_command(router: str, argv: list[str]) -> Iterator[None]:
    """Within this block, manifests record ``routegate train ROUTER ARGV...`` as their command."""
    token = _TRAIN_COMMAND.set("routegate train " + shlex.join([router, *argv]))
    try:
        yield
    finally:
        _TRAIN_COMMAND.reset(token)


#: (staging folder, the folder it becomes) while a trainer writes into the staging folder
_STAGED: ContextVar[tuple[Path, Path] | None] = ContextVar("routegate_staged_checkpoint", default=None)


#: files that say a folder holds a checkpoint: loaders refuse a folder without them
MANIFESTS = (MANIFEST, "config.json")  # lookahead's is config.json
STAGING_PREFIX = ".training-"


def check_same_router(router: str, folder: Path) -> None:
    """SystemExit when ``folder`` holds a checkpoint of another router: training ``router`` into it
    would leave that router's weights beside the new manifest (``--out`` naming the wrong folder)."""
    holder: object = None
    if (folder / MANIFEST).is_file():
        try:
            holder = json.loads((folder / MANIFEST).read_text()).get("router")
        except (OSError, ValueError, AttributeError):
            holder = None  # unreadable: nothing to protect that could be loaded
    elif (folder / "config.json").is_file():
        holder = "lookahead"
    if isinstance(holder, str) and holder != router:
        raise SystemExit(f"routegate train {router}: {folder} holds a '{holder}' checkpoint; name another --out folder")


@contextmanager
def staged_checkpoint(final: Path) -> Iterator[Path]:
    """A new folder inside ``final`` for a trainer to write into. Once the trainer returns, its
    files take their places in ``final``: the old manifest goes first and the new one comes last,
    so a folder caught half-way has none and is refused, never mis-scored; the old
    ``calibration.json`` goes too (it belonged to the old weights). Other files stay. A run that
    fails or is interrupted leaves ``final`` as it was, or not there when it was not (a killed run's
    staging folder goes at the next)."""
    made_final = not final.exists()
    final.mkdir(parents=True, exist_ok=True)
    for stale in final.glob(f"{STAGING_PREFIX}*"):
        if not _running(stale.name.removeprefix(STAGING_PREFIX)):  # a killed run's, not another live run's
            shutil.rmtree(stale, ignore_errors=True)
    staging = final / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # an earlier process's with this process's number
    staging.mkdir(mode=0o700)  # the owner's alone until published: the data may be yours (trained_on_own_data)
    token = _STAGED.set((staging, final))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made_final and not any(final.iterdir()):
            final.rmdir()
        raise
    finally:
        _STAGED.reset(token)
    for name in (*MANIFESTS, CALIBRATION_FILE):
        (final / name).unlink(missing_ok=True)
    made = sorted(staging.iterdir(), key=lambda path: path.name in MANIFESTS)  # manifests last
    private = trained_on_own_data(staging)
    for path in made:
        if private:
            path.chmod(0o600)
        if (final / path.name).is_dir():
            shutil.rmtree(final / path.name)
        os.replace(path, final / path.name)
    staging.rmdir()
    if private:
        _keep_private(final, made_final)


def _keep_private(final: Path, made_final: bool) -> None:
    """Say that a checkpoint trained on your own data was written for its owner alone (and make a
    folder the training made the owner's too)."""
    if made_final:
        final.chmod(0o700)
    print(
        f"{final}: the new files are readable by you alone: the data they were trained on is yours, and a "
        "checkpoint can give it away (mf's and sw_ranking's neighbour tables hold a vector of each training prompt)",
        file=sys.stderr,
    )


def trained_on_own_data(folder: Path) -> bool:
    """Whether the checkpoint in ``folder`` was trained on a file that is not one of the public
    data files (``routers.data.licence_of``: "your own data", e.g. a feedback export)."""
    for name in MANIFESTS:
        path = folder / name
        if path.is_file():
            manifest = json.loads(path.read_text())
            licences = manifest.get("data_licences") or (manifest.get("training") or {}).get("data_licences", {})
            return "your own data" in licences.values()
    return False


def _running(pid: str) -> bool:
    """Whether process ``pid`` (a staging folder's suffix) is alive."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def published_path(path: Path) -> Path:
    """The folder whose files ``path``'s become once training ends (itself unless it is a staging folder)."""
    staged = _STAGED.get()
    return staged[1] if staged is not None and path == staged[0] else path


def _command() -> str:
    if (command := _TRAIN_COMMAND.get()) is not None:
        return command
    return "routegate " + shlex.join(sys.argv[1:]) if Path(sys.argv[0]).name in ("routegate", "cli.py") else shlex.join(sys.argv)


def write_manifest(out_dir: Path, router: str, data_files: list[str], models: list[str], **extra: Any) -> None:
    """Record the router, the command that made the checkpoint, its training files and model names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "router": router,
        "command": _command(),
        "data_files": [Path(name).name for name in data_files],
        "data_licences": {Path(name).name: licence_of(name) for name in data_files},
        "split": "train",
        "models": models,
        **extra,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(directory: Path, router: str) -> dict[str, Any]:
    """The manifest of ``directory``; CheckpointError when there is none or it is another router's."""
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"no {router} checkpoint in {directory} (missing {MANIFEST}); train one with `routegate train {router}`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("router") != router:
        raise CheckpointError(f"{directory} holds a '{manifest.get('router')}' checkpoint, not '{router}'")
    return manifest


def refuse_unless_finite(router: str, weights: Iterable[Any]) -> None:
    """SystemExit before anything is written when training diverged (a weight that is not finite):
    an earlier checkpoint in ``--out`` stays as it was."""
    import numpy as np

    arrays = (weight.detach().float().cpu() if hasattr(weight, "detach") else weight for weight in weights)  # torch or numpy
    if not all(np.isfinite(np.asarray(array, dtype=np.float64)).all() for array in arrays):
        raise SystemExit(f"routegate train {router}: training diverged (weights not finite); nothing written: try a lower --lr")


def model_indices(models: list[str], strong: str, weak: str, directory: Path) -> tuple[int, int]:
    """Indices of the strong and weak model, matched by ``routers.model_names.match_model``;
    CheckpointError naming the known models otherwise."""
    from routers.model_names import match_model

    indices = {name: models.index(known) for name in (strong, weak) if (known := match_model(name, models)) is not None}
    unknown = [name for name in (strong, weak) if name not in indices]
    if unknown:
        raise CheckpointError(
            f"the checkpoint in {directory} does not know model(s) {unknown}; set ROUTEGATE_ROUTER_STRONG_MODEL / "
            f"ROUTEGATE_ROUTER_WEAK_MODEL (on the command line --strong / --weak) to models it was trained on: {models}"
        )
    return indices[strong], indices[weak]
