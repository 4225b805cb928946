"""Calibration files: a router's threshold for every strong-call share on reference prompts.

``routegate calibrate --write`` makes one; the gateway seeds its target-share routes from
``<checkpoint_dir>/<router>/calibration.json``. Format::

    {"thresholds": {"<share in [0, 1]>": <threshold in [0, 1]>, ...}, "router": ..., "data": ..., "prompts": N}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import numpy as np

log = logging.getLogger("routegate.calibration")
CALIBRATION_FILE = "calibration.json"


def read_calibration(path: Path) -> dict[float, float]:
    """The share -> threshold map of a calibration file; empty when the file is absent or unusable.

    Format: ``{"thresholds": {"<share in [0, 1]>": <threshold in [0, 1]>, ...}, ...}``; other
    keys (router, data, model pair, date) are ignored here.
    """
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())["thresholds"]
        table = {float(share): float(threshold) for share, threshold in raw.items()}
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
    """Write a calibration file for ``scores`` (a router's scores on reference prompts): the
    threshold for every share ``0, 1/steps, ..., 1``, plus ``info`` (router, data, ...)."""
    table = {index / steps: threshold_for_share(scores, index / steps) for index in range(steps + 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**info, "prompts": len(scores), "thresholds": {f"{share:g}": threshold for share, threshold in table.items()}}
    path.write_text(json.dumps(body, indent=1) + "\n")
    return table


def format_threshold(threshold: float) -> str:
    """A threshold as a model name writes it (``router-mf-<threshold>``): plain digits, never an
    exponent, and the same float when read back (5e-05 -> ``0.00005``)."""
    return format(Decimal(repr(threshold)), "f")
