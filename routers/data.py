"""Reading routing records (the ``shared/data`` format, routegate's training format).

One JSON object per line, plain or gzip-compressed::

    {"id": str, "prompt": str, "scores": {model: float in [0, 1]}, "split": "train" | "dev",
     "responses": {model: str} (optional), "benchmark": str (optional), ...}

A ``prompt`` given as a list (a conversation's user turns, or chat messages), or a request's
``messages`` in place of a prompt, is read as text on loading (``conversation_text``).
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import random
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from routers.model_names import scores_by_model

Record = dict[str, Any]


class RecordError(ValueError):
    """A record file line that is not a JSON object (the message names the file and line)."""


#: licence of each source's data, by file-name prefix (the data folder's README has the details);
#: a checkpoint trained on a file inherits its terms for its weights' use
DATA_LICENCES = {
    "routellm-": "Apache-2.0 (RouteLLM)",
    "lookahead-alpacaeval": "MIT (lookahead-routing) over AlpacaEval's instructions and judgements, "
    "CC BY-NC 4.0: non-commercial use only",
    "lookahead-": "MIT (lookahead-routing); questions and answers keep their original terms",
    "alpacaeval-": "CC BY-NC 4.0 (AlpacaEval data): non-commercial use only",
    "zeroeval-": "Apache-2.0 (ZeroEval)",
    "mmlu-pro": "Apache-2.0 (MMLU-Pro)",
    "routerbench-": "MIT (RouterBench data; the RouterDC copy ships no LICENSE file)",
    "llmrouter": "MIT (LLMRouter)",
}


def licence_of(path: str | Path) -> str:
    """The data licence of one of the public record files, by its name (``mmlu-pro.jsonl.gz``);
    'your own data' for any other file (``mmlu-pro-ours.jsonl`` too)."""
    from routers.evaluation.families import FAMILIES  # here: that module reads records with this one

    name = Path(path).name
    stem = name.removesuffix(".gz").removesuffix(".jsonl")
    if stem not in {public for stems in FAMILIES.values() for public in stems}:
        return "your own data"
    return next(licence for prefix, licence in DATA_LICENCES.items() if name.startswith(prefix))


def iter_records(path: str | Path, scores: bool = True, require: tuple[str, ...] = ()) -> Iterator[Record]:
    """Yield the records of one ``.jsonl`` or ``.jsonl.gz`` file (``scores`` an empty object when
    a record has none); RecordError for a file or a line that is not one, or, unless ``scores`` is
    False (a command that reads prompts only), whose scores are not numbers from 0 to 1, or that
    lacks a field of ``require`` ("id", a JSON value other than NaN or infinity; "prompt", text)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    mended: list[int] = []  # lines whose prompt held a lone surrogate escape
    try:
        with opener(path, "rb") as lines:
            for number, raw in enumerate(lines, 1):
                try:  # a line at a time, so that an error names its line; a byte-order mark is not text
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise RecordError(f"{path}:{number}: not UTF-8 text (a gzip file must be named .gz)") from None
                if line.strip():
                    record = _record(line, f"{path}:{number}", scores, require)
                    if isinstance(record.get("prompt"), str) and not _encodable(record["prompt"]):
                        record["prompt"] = _mended(record["prompt"])
                        mended.append(number)
                    yield record
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise RecordError(f"{path}: not a whole gzip file ({error or 'it ends early'})") from None
    if mended:
        _report_mended(path, mended)


def _record(line: str, where: str, check_scores: bool, require: tuple[str, ...]) -> Record:
    try:
        record = json.loads(line)
    except ValueError as error:
        raise RecordError(f"{where}: not a JSON record ({error})") from None
    except RecursionError:
        raise RecordError(f"{where}: not a JSON record (nested too deeply to read)") from None
    if not isinstance(record, dict):
        raise RecordError(f"{where}: not a JSON object")
    sent_fields = list(record)  # before 'prompt' and 'scores' are filled in below
    if "prompt" not in record and isinstance(record.get("messages"), list):  # a logged request body
        record["prompt"] = record["messages"]
    if isinstance(record.get("prompt"), list):
        record["prompt"] = conversation_text(record["prompt"])
        if record["prompt"] is None:
            raise RecordError(
                f"{where}: 'prompt' must be a string, a list of strings (a conversation's user turns) "
                "or a list of chat messages with a user message"
            )
    if record.get("scores") is None:
        record["scores"] = {}
    scores = record["scores"]
    if check_scores and (not isinstance(scores, dict) or not all(_is_score(value) for value in scores.values())):
        raise RecordError(f"{where}: 'scores' must be an object of numbers from 0 to 1")
    if check_scores and scores and (not isinstance(record.get("prompt"), str) or "id" not in record):
        raise RecordError(f"{where}: a scored record needs an 'id' and a 'prompt' string")
    for field in require:
        _check_field(record, field, where, sent_fields)
    return record


#: what a required field must hold, as an error message says it
_REQUIRED = {
    "id": "an 'id' (any JSON value but NaN or infinity)",
    "prompt": "a 'prompt' (a string, a list of user turns, or a list of chat messages) or a request's 'messages'",
}


def _check_field(record: dict[str, Any], field: str, where: str, sent_fields: list[str]) -> None:
    """RecordError naming the fields the record was sent with when it lacks ``field`` (a key of ``_REQUIRED``)."""
    value = record.get(field)
    if field == "prompt":
        present = isinstance(value, str)
    else:
        present = field in record and _finite_json(value)
    if not present:
        fields = ", ".join(repr(name) for name in sent_fields[:12]) or "none"
        raise RecordError(f"{where}: a record needs {_REQUIRED[field]}; this one has {fields}")


def _finite_json(value: Any) -> bool:
    """Whether ``value`` writes back as standard JSON (no NaN or infinity anywhere in it)."""
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, RecursionError):
        return False
    return True


def conversation_text(turns: list[Any]) -> str | None:
    """The text scored for a prompt given as a conversation, as the gateway routes a request by
    default (``ROUTEGATE_ROUTE_ON=last_user``): the last of a list of user turns (strings), or the
    last user message's text of a list of chat messages (``{"role", "content"}``, each with a
    string role, a user message's content a string or a list of parts); None for anything else."""
    if turns and all(isinstance(turn, str) for turn in turns):
        return turns[-1]
    if not turns or not all(isinstance(message, dict) and isinstance(message.get("role"), str) for message in turns):
        return None
    users = [message for message in turns if message["role"] == "user"]
    if not users or not isinstance(users[-1].get("content"), (str, list)):
        return None
    return content_text(users[-1]["content"])


def content_text(content: object) -> str:
    """The text of a chat message's content: a string as it is, the text parts of a list joined by
    newlines (anything that is not a text part skipped: an upstream's answer is not validated), else ""."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


#: record files whose mended prompts were reported: a file read again (a leave-one-out fold) is not reported again
_REPORTED: set[Path] = set()


def _report_mended(path: Path, lines: list[int]) -> None:
    """Say once per file on stderr which lines' prompts were read with U+FFFD for a lone surrogate (the first five)."""
    if path.resolve() in _REPORTED:
        return
    _REPORTED.add(path.resolve())
    named = ", ".join(map(str, lines[:5])) + (" ..." if len(lines) > 5 else "")
    print(
        f"routegate: {path}: {len(lines)} prompt(s) held a lone surrogate escape (\\ud800-\\udfff), read with "
        f"U+FFFD in its place (line {named})",
        file=sys.stderr,
    )


def _mended(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (a pair, however it came, joined)."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _encodable(text: str) -> bool:
    """Whether ``text`` is Unicode text (JSON's ``\\ud800`` escapes give lone surrogates, which no encoder reads)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_score(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def load_records(
    paths: Iterable[str | Path], split: str | None = None, scores: bool = True, require: tuple[str, ...] = ()
) -> list[Record]:
    """All records of ``paths``, only those of ``split`` when it is given (``scores`` and
    ``require``: as ``iter_records``)."""
    return [
        record
        for path in paths
        for record in iter_records(path, scores, require)
        if split is None or record.get("split") == split
    ]


def normal_text(prompt: str) -> str:
    """A prompt's text up to case and whitespace (how repeated questions are recognised)."""
    return " ".join(prompt.lower().split())


def question_key(prompt: str) -> str:
    """A prompt's letters and digits, lower case: the same question in another file's layout
    (other spacing, punctuation or markup) has the same key."""
    return "".join(character for character in prompt.lower() if character.isalnum())


class QuestionSet:
    """Prompts, recognised again in another file's form: the same ``question_key``, or one key
    starting with the other where the shorter has at least ``min_prefix`` characters (a file that
    appends an answer-format instruction, or drops a question's options or tests)."""

    def __init__(self, prompts: Iterable[str], min_prefix: int = 40) -> None:
        self._keys = sorted({question_key(prompt) for prompt in prompts})
        self._min_prefix = min_prefix

    def __contains__(self, prompt: object) -> bool:
        if not isinstance(prompt, str):
            return False
        key = question_key(prompt)
        at = bisect.bisect_left(self._keys, key)
        if at < len(self._keys) and (self._keys[at] == key or (len(key) >= self._min_prefix and self._keys[at].startswith(key))):
            return True  # the same question, or one that continues this one
        return self._has_prefix_of(key)

    def _has_prefix_of(self, key: str) -> bool:
        """Whether a kept key of at least ``min_prefix`` characters starts ``key``. Every key
        between such a prefix and ``key`` in sorted order starts with it too, so the greatest key
        not after ``key`` either is that prefix or narrows the search to their common start."""
        probe = key
        while len(probe) >= self._min_prefix:
            at = bisect.bisect_right(self._keys, probe) - 1
            if at < 0:
                return False
            candidate = self._keys[at]
            if probe.startswith(candidate):
                return len(candidate) >= self._min_prefix
            probe = probe[: len(os.path.commonprefix([candidate, probe]))]
        return False


def comparable(records: Iterable[Record]) -> list[Record]:
    """The records that score two or more models (told apart by ``normal_form``). One that scores
    a single model (an exported request a user rated and no judge compared) teaches a pairwise
    trainer nothing, so it takes no place in a file's ``--limit`` and no part in its weight."""
    return [record for record in records if len(scores_by_model(record.get("scores") or {})) >= 2]


def sample_records(records: list[Record], limit: int | None, seed: int = 0) -> list[Record]:
    """A seeded random sample of at most ``limit`` of one file's ``records``, in their order (all with no limit)."""
    if limit is None or len(records) <= limit:
        return records
    return [records[index] for index in sorted(random.Random(seed).sample(range(len(records)), limit))]


def pair_records(records: Iterable[Record], strong: str, weak: str) -> list[Record]:
    """The records scored for both ``strong`` and ``weak``."""
    return [record for record in records if strong in record.get("scores", {}) and weak in record.get("scores", {})]
