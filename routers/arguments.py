"""argparse types shared by the ``routegate`` commands and the trainers' options: a bad number is
a one-line usage error, not a traceback or a silently wrong run."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = positive_int(text) if text.isdigit() else 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, not {text!r}")
    return value


def probability(text: str) -> float:
    """A number from 0 up to (not including) 1, such as a dropout rate."""
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 up to 1 (not included), not {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0, such as a weight decay."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, not {text!r}")
    return value


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both take it


def random_seed(text: str) -> int:
    """A random seed: a whole number from 0 to 2**32 - 1."""
    value = int(text) if text.isdigit() else -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, not {text!r}")
    return value


def torch_device(text: str) -> str:
    """Where torch runs: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    kind, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, not {text!r}")


def _number(text: str) -> float:
    """``text`` as a float; NaN, which every range check refuses, when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan
