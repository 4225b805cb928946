"""Domain families of the record files, and the model pairs each family is judged on.

A router that only works on the benchmarks it was trained on is no use on a user's traffic; the
leave-one-out evaluation (``routegate eval --leave-one-out``) trains on every family but one and
measures APGR on the held-out family's ``dev`` records. Files are grouped by what their prompts
are (knowledge questions, math, code, open chat, a mix), so that a held-out family is new in kind,
not just a new file of a kind seen in training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from routers.data import QuestionSet, Record, iter_records

#: family -> record files (stems in ``shared/data``)
FAMILIES: dict[str, tuple[str, ...]] = {
    "knowledge": ("routellm-mmlu", "mmlu-pro", "routerbench-arc-challenge", "routerbench-winogrande"),
    "math": ("routellm-gsm8k", "lookahead-gsm8k", "zeroeval-gsm8k", "lookahead-math", "zeroeval-math-l5"),
    "code": ("lookahead-humaneval", "lookahead-mbpp", "routerbench-mbpp", "lookahead-selfoss", "zeroeval-crux"),
    "chat": ("alpacaeval-gpt4turbo", "alpacaeval-gpt4", "lookahead-alpacaeval", "lookahead-arenahard"),
    "mixed": ("llmrouter",),
}


@dataclass(frozen=True)
class EvalPair:
    """One held-out measurement: a file's dev records, scored for a strong and a weak model."""

    file: str
    strong: str
    weak: str


#: family -> the pairs its held-out APGR averages; frontier-vs-small first, then an open pair
EVAL_PAIRS: dict[str, tuple[EvalPair, ...]] = {
    "knowledge": (
        EvalPair("mmlu-pro", "gpt-4o", "Meta-Llama-3.1-8B-Instruct"),
        EvalPair("routellm-mmlu", "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
        EvalPair("routerbench-arc-challenge", "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"),
    ),
    "math": (
        EvalPair("zeroeval-math-l5", "gpt-4o-2024-05-13", "Meta-Llama-3.1-8B-Instruct"),
        EvalPair("routellm-gsm8k", "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
        EvalPair("lookahead-math", "internlm2_5-20b-chat", "Phi-3-medium-4k-instruct"),
    ),
    "code": (
        EvalPair("zeroeval-crux", "gpt-4o-2024-05-13", "Meta-Llama-3.1-8B-Instruct"),
        EvalPair("routerbench-mbpp", "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"),
        EvalPair("zeroeval-crux", "claude-3-5-sonnet-20240620", "gpt-3.5-turbo-0125"),
    ),
    "chat": (
        EvalPair("alpacaeval-gpt4turbo", "gpt4_1106_preview", "Mixtral-8x7B-Instruct-v0.1_concise"),
        EvalPair("alpacaeval-gpt4turbo", "gpt4_1106_preview", "gpt-3.5-turbo-1106"),
        EvalPair("lookahead-arenahard", "Yi-1.5-34B-Chat", "Llama-3.1-8B-Instruct"),
    ),
    "mixed": (
        EvalPair("llmrouter", "llama-3.1-nemotron-51b-instruct", "mistral-7b-instruct-v0.3"),
        EvalPair("llmrouter", "llama-3.1-nemotron-51b-instruct", "llama-3.1-8b-instruct"),
    ),
}


def family_of(file: str) -> str | None:
    """The family of a record file (path or stem), None for a file outside every family."""
    stem = Path(file).name.split(".")[0]
    return next((family for family, files in FAMILIES.items() if stem in files), None)


def data_path(data_dir: Path, stem: str) -> Path:
    return Path(data_dir) / f"{stem}.jsonl.gz"


def load_family(data_dir: Path, family: str) -> dict[str, list[Record]]:
    """Every record of a family's files, by file stem."""
    return {stem: list(iter_records(data_path(data_dir, stem))) for stem in FAMILIES[family]}


def training_records(data_dir: Path, held_out: str | None) -> dict[str, list[Record]]:
    """``train`` records of every file outside the ``held_out`` family, by file stem, leaving out
    any record whose question occurs anywhere in the held-out family, in either split, also in
    another file's form (``routers.data.QuestionSet``): files of other families share questions
    (``llmrouter`` holds GSM8K questions with an answer-format line appended, MMLU questions
    without their options, MBPP tasks without their tests), and a shared question would leak the
    held-out family into training."""
    banned = QuestionSet(
        record["prompt"] for records in (load_family(data_dir, held_out) if held_out else {}).values() for record in records
    )
    kept: dict[str, list[Record]] = {}
    for family, stems in FAMILIES.items():
        if family == held_out:
            continue
        for stem in stems:
            kept[stem] = [
                record
                for record in iter_records(data_path(data_dir, stem))
                if record.get("split") == "train" and record["prompt"] not in banned
            ]
    return kept


def eval_records(records: Iterable[Record], pair: EvalPair, split: str = "dev") -> list[Record]:
    """Records of ``split`` (``all``: every record) scored for both models of ``pair``. A held-out
    family's ``train`` records are as unseen by its fold as its ``dev`` records: no fold trains on
    any record of the family it holds out."""
    return [r for r in records if split in ("all", r.get("split")) and pair.strong in r["scores"] and pair.weak in r["scores"]]
