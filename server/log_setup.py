"""routegate's log lines: one format for the serving process and each of its worker processes."""

from __future__ import annotations

import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: libraries that report each model they load at INFO: a gateway's log keeps their warnings and errors
MODEL_LOADING_LOGGERS = ("sentence_transformers", "transformers", "huggingface_hub")


def configure_logging(level: str | int) -> None:
    """Log ``level`` and above from every logger to stderr, one line each; no progress bars or
    INFO lines from the libraries that load the routers' models (a served log is not a terminal)."""
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, format=LOG_FORMAT)
    for name in MODEL_LOADING_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    quiet_progress_bars()


def quiet_progress_bars() -> None:
    """No progress bars from the libraries that load the routers' models (loading weights): a
    served log is not a terminal, and a command's own bar would be cut into."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if "transformers" in sys.modules:  # imported already: its bars are switched off where they are kept
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
