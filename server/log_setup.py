"""routegate's log lines: one format for the serving process and each of its worker processes."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str | int) -> None:
    """Log ``level`` and above from every logger to stderr, one line each."""
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, format=LOG_FORMAT)
