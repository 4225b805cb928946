"""Calibration files: a router's threshold for every strong-call share on reference prompts, for
one or more model pairs (a router's scores of two pairs are on different scales).

``routegate calibrate --write`` makes one, or adds its pair to one; the gateway seeds its
target-share routes from ``<checkpoint_dir>/<router>/calibration.json``, from the entry of the
pair it scores (else the first). Format::

    {"router": ..., "strong": ..., "weak": ..., "data": ..., "prompts": N,
     "thresholds": {"<share in [0, 1]>": <threshold in [0, 1]>, ...},
     "pairs": [{"strong": ..., "weak": ..., "data": ..., "prompts": N, "thresholds": {...}}, ...]}

(the first pair at the top, the others, optional, under ``pairs``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from routers.model_names import match_model, normal_form
from routers.output_files import replaced_on_success

log = logging.getLogger("routegate.calibration")
CALIBRATION_FILE = "calibration.json"


def read_calibration(path: Path, pair: tuple[str, str] | None = None) -> dict[float, float]:
    """The share -> threshold map of a calibration file: of its entry for ``pair`` (matched across
    spellings), else of its first pair; empty when the file is absent or unusable."""
    return calibration_for(path, pair)[0]


def calibration_for(path: Path, pair: tuple[str, str] | None) -> tuple[dict[float, float], bool]:
    """``read_calibration``'s map, and whether it is ``pair``'s own."""
    entries = _entries(path)
    if not entries:
        return {}, False
    chosen = next((entry for entry in entries if pair is not None and _same_pair(entry, pair)), None)
    table = _table(path, chosen or entries[0])
    return table, chosen is not None and bool(table)


def _entries(path: Path) -> list[dict[str, Any]]:
    """The file's calibrations: the first pair (the top level), then those under ``pairs``."""
    if not path.is_file():
        return []
    try:
        body = json.loads(path.read_text())
        others = body.get("pairs") or []
        if not isinstance(others, list) or not all(isinstance(entry, dict) for entry in others):
            raise TypeError("'pairs' is not a list of objects")
    except (ValueError, TypeError, AttributeError) as error:
        log.warning("ignoring calibration %s: %s", path, error)
        return []
    return [body, *others]


def check_calibration_target(path: Path, inputs: Sequence[Path] = ()) -> None:
    """SystemExit unless ``path`` may take a calibration: a new file, or a calibration file to add
    a pair to; never one of ``inputs`` (the reference prompts) or another kind of file (a
    checkpoint's router.json, a data file), which writing would destroy."""
    if any(path.resolve() == given.resolve() for given in inputs):
        raise SystemExit(f"routegate: --write {path} is one of the --data files: name another file")
    if path.is_file() and not read_calibration(path):
        raise SystemExit(f"routegate: --write {path} exists and is not a calibration file: name a new file or a calibration.json")


def _pair_of(entry: dict[str, Any]) -> tuple[str, str] | None:
    """An entry's (strong, weak) in normal form; None when it names no pair."""
    strong, weak = entry.get("strong"), entry.get("weak")
    return (normal_form(strong), normal_form(weak)) if isinstance(strong, str) and isinstance(weak, str) else None


def _same_pair(entry: dict[str, Any], pair: tuple[str, str]) -> bool:
    """Whether ``entry`` calibrates ``pair`` (``gpt-4o-mini`` is the router's ``gpt-4o-mini-2024-07-18``)."""
    named = _pair_of(entry)
    return named is not None and all(match_model(name, [wanted]) for name, wanted in zip(named, pair, strict=True))


def _table(path: Path, entry: dict[str, Any]) -> dict[float, float]:
    try:
        table = {float(share): float(threshold) for share, threshold in entry["thresholds"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("ignoring calibration %s: %s", path, error)
        return {}
    return {share: threshold for share, threshold in table.items() if 0 <= share <= 1 and 0 <= threshold <= 1}


def threshold_for_share(scores: Sequence[float], strong_fraction: float) -> float:
    """The threshold that sends ``strong_fraction`` of ``scores`` to the strong model (score >= threshold)."""
    if not 0.0 <= strong_fraction <= 1.0:
        raise ValueError("strong_fraction must be in [0, 1]")
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    count = round(strong_fraction * len(ordered))
    if count == 0:
        return min(1.0, float(np.nextafter(ordered[0], np.inf))) if len(ordered) else 1.0
    return float(ordered[count - 1])


def write_calibration(path: Path, scores: Sequence[float], steps: int = 100, **info: object) -> dict[float, float]:
    """Write a calibration for ``scores`` (a router's scores on reference prompts): the threshold
    for every share ``0, 1/steps, ..., 1``, plus ``info`` (router, strong, weak, data, ...). A file
    there already, of the same router, keeps its other pairs' calibrations, and its first pair
    stays first; this pair's earlier one is replaced."""
    table = {index / steps: threshold_for_share(scores, index / steps) for index in range(steps + 1)}
    entry = {**info, "prompts": len(scores), "thresholds": {f"{share:g}": threshold for share, threshold in table.items()}}
    strong, weak = info.get("strong"), info.get("weak")
    pair = (strong, weak) if isinstance(strong, str) and isinstance(weak, str) else None
    kept = [  # other pairs' calibrations of this router (one that names no pair cannot be told apart)
        {key: value for key, value in old.items() if key != "pairs"}
        for old in _entries(path)
        if old.get("router", info.get("router")) == info.get("router") and _pair_of(old) is not None
    ]
    merged = [entry if pair is not None and _same_pair(old, pair) else old for old in kept]
    if entry not in merged:
        merged.append(entry)
    first, *others = merged
    body = {**first, "pairs": others} if others else first
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_on_success(path) as staging:
        staging.write_text(json.dumps(body, indent=1) + "\n")
    return table


def format_threshold(threshold: float) -> str:
    """A threshold as a model name writes it (``router-mf-<threshold>``): plain digits, never an
    exponent, and the same float when read back (5e-05 -> ``0.00005``)."""
    return format(Decimal(repr(threshold)), "f")
