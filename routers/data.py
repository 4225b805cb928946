"""Reading routing records (the ``shared/data`` format, routegate's training format).

One JSON object per line, plain or gzip-compressed::

    {"id": str, "prompt": str, "scores": {model: float in [0, 1]}, "split": "train" | "dev",
     "responses": {model: str} (optional), "benchmark": str (optional), ...}
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def iter_records(path: str | Path) -> Iterator[Record]:
    """Yield the records of one ``.jsonl`` or ``.jsonl.gz`` file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: not a JSON record ({error})") from None


def load_records(paths: Iterable[str | Path], split: str | None = None) -> list[Record]:
    """All records of ``paths``, only those of ``split`` when it is given."""
    return [record for path in paths for record in iter_records(path) if split is None or record.get("split") == split]


def normal_text(prompt: str) -> str:
    """A prompt's text up to case and whitespace (how repeated questions are recognised)."""
    return " ".join(prompt.lower().split())


def pair_records(records: Iterable[Record], strong: str, weak: str) -> list[Record]:
    """The records scored for both ``strong`` and ``weak``."""
    return [record for record in records if strong in record.get("scores", {}) and weak in record.get("scores", {})]
