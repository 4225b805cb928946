"""Cross-domain evaluation: the leave-one-out folds never let a held-out family into training, and
``routegate eval --leave-one-out`` trains, scores and tabulates end to end on a small data folder."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from routers.data import QuestionSet
from routers.evaluation.families import EVAL_PAIRS, FAMILIES, EvalPair, eval_records, family_of, training_records
from routers.evaluation.leave_one_out import LeaveOneOutTable, write_fold
from routers.evaluation.metrics import PairQuality
from routers.model_names import match_model, normal_form, resolve_pair
from server.cli import main

MODELS = ("gpt-4o", "Meta-Llama-3.1-8B-Instruct")
#: a GSM8K question that ``llmrouter`` holds with an answer-format line appended
BOXED = "\nAfter careful thought, put your answer in \\boxed{}."
REWORDED = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many in all?"


def _record(rid: str, prompt: str, split: str, strong: float, weak: float, models: tuple[str, ...] = MODELS) -> dict:
    """A record where the first model scores ``strong``, the last ``weak`` and those between in
    between, so every pair of a file has a quality gap."""
    return {
        "id": rid,
        "prompt": prompt,
        "split": split,
        "scores": {name: strong + (weak - strong) * n / (len(models) - 1) for n, name in enumerate(models)},
    }


def _write(path: Path, records: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Embeddings of the made-up prompts go to a temporary cache, not the user's."""
    monkeypatch.setattr("routers.embedding.CACHE_DIR", tmp_path_factory.getbasetemp() / "embedding-cache")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Every family's files, each with train and dev records scored for its eval pairs; one
    GSM8K question also sits in ``llmrouter`` (mixed), as in the real data."""
    directory = tmp_path / "data"
    directory.mkdir()
    for family, stems in FAMILIES.items():
        pairs: dict[str, tuple[str, ...]] = {}
        for pair in EVAL_PAIRS[family]:
            pairs[pair.file] = tuple(dict.fromkeys((*pairs.get(pair.file, ()), pair.strong, pair.weak)))
        for stem in stems:
            records = []
            for number in range(12):
                models = pairs.get(stem, MODELS)
                split = "dev" if number % 3 == 0 else "train"
                prompt = f"{family} {stem} question {number}: " + "x " * (number * 7 % 11)
                strong = float(number % 2 or split == "dev")  # dev: the strong model leads beyond noise
                records.append(_record(f"{stem}/{number}", prompt, split, strong, float(number % 4 == 1), models))
                if stem.startswith("lookahead-"):  # what the lookahead router learns from
                    records[-1]["responses"] = {name: f"{name} answers {number}" for name in models}
                if stem == "routellm-mmlu":  # what --drop-format-failures judges by
                    records[-1]["category"] = "anatomy"
            if stem == "llmrouter":
                records.append(_record("llmrouter/shared", "A GSM8K question that two files share.", "train", 1.0, 0.0))
                records.append(_record("llmrouter/reworded", REWORDED + BOXED, "train", 1.0, 0.0))
            if stem == "routellm-gsm8k":
                records.append(_record("gsm8k/shared", "  a gsm8k QUESTION that two files share. ", "dev", 1.0, 0.0, pairs[stem]))
                records.append(_record("gsm8k/reworded", REWORDED, "dev", 1.0, 0.0, pairs[stem]))
            _write(directory / f"{stem}.jsonl.gz", records)
    return directory


def test_a_held_out_family_never_reaches_training(data_dir: Path) -> None:
    for held_out in FAMILIES:
        kept = training_records(data_dir, held_out)
        assert not set(kept) & set(FAMILIES[held_out])
        assert {family_of(stem) for stem in kept} == set(FAMILIES) - {held_out}
        prompts = [record["prompt"] for records in kept.values() for record in records]
        assert all(record["split"] == "train" for records in kept.values() for record in records)
        assert not any(prompt.startswith(held_out + " ") for prompt in prompts)
        shared_kept = "A GSM8K question that two files share." in prompts
        assert shared_kept == (held_out not in ("math", "mixed"))  # its own family, or a shared text (case and spaces aside)
        reworded_kept = any(prompt.startswith(REWORDED) for prompt in prompts)
        assert reworded_kept == (held_out not in ("math", "mixed"))  # also in another file's form


@pytest.mark.parametrize(
    ("prompt", "recognised"),
    [
        (REWORDED, True),
        ("natalia SOLD clips to 48 of her friends in April and then she sold half as many clips in May how many in all", True),
        (REWORDED + BOXED, True),  # continues a kept question
        ("Natalia sold clips to 48 of her friends in April, and then she sold half", True),  # a kept one continues it
        ("Natalia sold clips to 48 of her friends.", False),  # too short a start to be the same question
        ("Natalia sold clips to 48 of her friends in April, and then she sold twice as many in June.", False),
        ("Which of the following is true? A) 1 B) 2", True),
        ("Which of the following is true? A) 1 B) 3", False),
    ],
)
def test_a_question_is_recognised_in_another_files_form(prompt: str, recognised: bool) -> None:
    kept = QuestionSet([REWORDED, "which of the following is TRUE?  a) 1  b) 2", "Zebra crossing rules"])
    assert (prompt in kept) == recognised


def test_fold_files_hold_only_the_kept_training_records(data_dir: Path, tmp_path: Path) -> None:
    paths = write_fold(data_dir, "chat", tmp_path / "fold")
    written = {path.name.split(".")[0]: [json.loads(line) for line in gzip.open(path, "rt")] for path in paths}
    assert set(written) == {stem for family, stems in FAMILIES.items() if family != "chat" for stem in stems}
    assert all(record["split"] == "train" for records in written.values() for record in records)
    assert all("responses" in record for record in written["lookahead-humaneval"])  # lookahead trains on them
    assert not any("responses" in record for record in written["routellm-mmlu"])
    assert all(record["category"] == "anatomy" for record in written["routellm-mmlu"])


@pytest.mark.parametrize("split", ["dev", "train", "all"])
def test_eval_records_are_the_splits_records_scored_for_the_pair(data_dir: Path, split: str) -> None:
    pair = EVAL_PAIRS["chat"][0]
    records = [json.loads(line) for line in gzip.open(data_dir / f"{pair.file}.jsonl.gz", "rt")]
    records.append({"id": "other-pair", "prompt": "p", "split": "dev", "scores": {pair.strong: 1.0, "someone": 0.0}})
    selected = eval_records(records, pair, split) if split != "dev" else eval_records(records, pair)
    assert selected and all(pair.strong in r["scores"] and pair.weak in r["scores"] for r in selected)
    assert [r["id"] for r in selected] == [r["id"] for r in records[:-1] if split in ("all", r["split"])]


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("gpt-4o", "gpt-4o-2024-05-13"),
        ("gpt-4-turbo", None),
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        ("meta-llama/Llama-3.1-8B-Instruct", "Meta-Llama-3.1-8B-Instruct"),
        ("gpt-4-1106-preview", "gpt4_1106_preview"),
        ("mistralai/mixtral-8x7b-chat", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18"),
        ("claude-3-haiku", None),
        ("gpt-4", None),
        ("gpt-3.5-turbo", "gpt-3.5-turbo-0125"),  # not 1106, whose MMDD sorts later but is older
        ("gpt-3.5-turbo-1106", "gpt-3.5-turbo-1106"),
    ],
)
def test_model_names_match_across_spellings(asked: str, expected: str | None) -> None:
    known = [
        "gpt-3.5-turbo-1106",
        "gpt-3.5-turbo-0125",
        "gpt-3.5-turbo-0301",
        "gpt-4o-2024-05-13",
        "gpt-4o-2024-08-06",
        "gpt-4o-mini-2024-07-18",
        "Meta-Llama-3.1-8B-Instruct",
        "gpt4_1106_preview",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
    ]
    assert match_model(asked, known) == expected


def test_an_aliased_name_finds_another_snapshot_when_its_own_is_not_known() -> None:
    """``gpt-4o`` means the May 2024 snapshot where a file scores it, and any gpt-4o snapshot where none does."""
    assert match_model("gpt-4o", ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18"]) == "gpt-4o-2024-08-06"
    assert match_model("gpt-4o", ["gpt-4o-mini-2024-07-18"]) is None


def test_an_api_name_finds_its_only_snapshot_when_the_one_it_points_to_is_unknown() -> None:
    assert match_model("gpt-3.5-turbo", ["gpt-3.5-turbo-1106", "gpt-4o-2024-05-13"]) == "gpt-3.5-turbo-1106"


def test_an_unknown_pair_falls_back_to_the_default_pair_and_says_why() -> None:
    known = [
        normal_form(name)
        for name in ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4o-2024-05-13", "gpt-4o-mini-2024-07-18")
    ]
    assert resolve_pair(known, "gpt-4o", "gpt-4o-mini")[:2] == ("gpt-4o-2024-05-13", "gpt-4o-mini-2024-07-18")
    strong, weak, why = resolve_pair(known, "my-local-llama", "gpt-4o-mini")
    assert (strong, weak) == ("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1")
    assert "my-local-llama" in why and "default pair" in why


def test_eval_leave_one_out_trains_scores_and_writes_table_and_plot(data_dir: Path, tmp_path: Path) -> None:
    table, plot = tmp_path / "loo.md", tmp_path / "loo.png"
    code = main(
        [
            "eval",
            "--leave-one-out",
            "--router",
            "mf",
            "--data-dir",
            str(data_dir),
            "--families",
            "chat",
            "mixed",
            "--work-dir",
            str(tmp_path / "work"),
            "--train-options",
            "mf=--epochs 1 --hidden 8 --dim 4",
            "--device",
            "cpu",
            "--table",
            str(table),
            "--plot",
            str(plot),
        ]
    )
    assert code == 0
    text = table.read_text()
    header = text.splitlines()[0]
    assert header == "| router | chat | mixed | mean |"
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()[2:5]}
    assert set(rows) == {"random", "prompt length", "mf"}
    assert "| random | 0.500 | 0.500 | 0.500 |" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "work" / "chat" / "data" / "alpacaeval-gpt4.jsonl.gz").exists()
    manifest = json.loads((tmp_path / "work" / "chat" / "checkpoints" / "mf" / "router.json").read_text())
    assert manifest["command"].startswith("routegate train mf --data ")  # how this fold's checkpoint was made
    out = tmp_path / "work" / "chat" / "checkpoints" / "mf"
    assert manifest["command"].endswith(f"--out {out} --epochs 1 --hidden 8 --dim 4")


def test_eval_leave_one_out_on_every_held_out_record(data_dir: Path, tmp_path: Path) -> None:
    """``--split all``: the held-out family's train records are scored too (its fold trains on neither split)."""
    table = tmp_path / "loo.md"
    command = ["eval", "--leave-one-out", "--router", "mf", "--data-dir", str(data_dir), "--families", "mixed"]
    options = ["--train-options", "mf=--epochs 1 --hidden 8 --dim 4", "--device", "cpu", "--plot", str(tmp_path / "loo.png")]
    assert main([*command, "--work-dir", str(tmp_path / "work"), "--split", "all", "--table", str(table), *options]) == 0
    rows = table.read_text().splitlines()
    assert rows[6] == "| family | file | strong | weak | prompts | random | prompt length | mf |"
    pair = EVAL_PAIRS["mixed"][0]
    assert rows[8].startswith(f"| mixed | llmrouter | {pair.strong} | {pair.weak} | 12 | ")  # 4 dev, 8 train records
    fold_prompts = {
        json.loads(line)["prompt"] for path in (tmp_path / "work" / "mixed" / "data").iterdir() for line in gzip.open(path, "rt")
    }
    assert not any("llmrouter" in prompt for prompt in fold_prompts)


def test_eval_leave_one_out_gives_its_routers_what_the_gateway_gives_them(data_dir: Path, tmp_path: Path) -> None:
    """``--max-chars`` cuts the held-out prompts the routers score, not those prompt length reads:
    cut to ``mixed llmrouter`` every prompt scores alike, a tie whose APGR is exactly 0.5."""
    command = ["eval", "--leave-one-out", "--router", "mf", "--data-dir", str(data_dir), "--families", "mixed"]
    options = ["--train-options", "mf=--epochs 1 --hidden 8 --dim 4", "--device", "cpu", "--plot", str(tmp_path / "loo.png")]

    def mixed_row(*extra: str) -> dict[str, str]:
        table = tmp_path / "loo.md"
        assert main([*command, "--work-dir", str(tmp_path / "work"), "--table", str(table), *options, *extra]) == 0
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.read_text().splitlines()[2:5]]
        return {row[0]: row[1] for row in rows}

    whole, cut = mixed_row(), mixed_row("--max-chars", str(len("mixed llmrouter")))
    assert cut["mf"] == "0.500" != whole["mf"]
    assert cut["prompt length"] == whole["prompt length"] != "0.500"


@pytest.mark.parametrize(
    ("train_options", "said"),
    [
        ("mf=--train-layer 1", "routegate train mf: error: unrecognized arguments: --train-layer 1"),
        ("mff=--epochs 1", "--train-options for ['mff'], which this run does not retrain: ['mf']"),
    ],
)
def test_eval_leave_one_out_refuses_train_options_before_any_fold(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], train_options: str, said: str
) -> None:
    command = ["eval", "--leave-one-out", "--router", "mf", "--data-dir", str(data_dir), "--families", "mixed"]
    command += ["--work-dir", str(tmp_path / "work"), "--plot", str(tmp_path / "p.png")]
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--train-options", train_options])
    assert said in f"{stopped.value.code}{capsys.readouterr().err}"
    assert not (tmp_path / "work").exists()  # no fold's data written, nothing trained


def test_a_pair_without_a_lead_beyond_noise_is_shown_but_not_averaged() -> None:
    clear, tied = EvalPair("llmrouter", "big", "small"), EvalPair("llmrouter", "big", "medium")
    table = LeaveOneOutTable(pairs={"mixed": [clear, tied]})
    table.quality[("mixed", clear)] = PairQuality.of([1] * 30 + [0] * 70, [0] * 100)
    table.quality[("mixed", tied)] = PairQuality.of([1] * 51 + [0] * 49, [0] * 51 + [1] * 49)
    table.apgr.update({("mf", "mixed", clear): 0.6, ("mf", "mixed", tied): 3.2})
    assert table.family_mean("mf", "mixed") == pytest.approx(0.6)
    text = table.format()
    assert "| mf | 0.600 | 0.600 |" in text
    assert "| mixed | llmrouter | big | medium | 100 | n/a |" in text
    assert "3.2" not in text
    assert "n/a: on these 100 llmrouter prompts big leads medium by 0.020 (0.2 standard errors, under 2)" in text
    table.quality[("mixed", clear)] = table.quality[("mixed", tied)]
    assert "| mf | n/a | n/a |" in table.format()


@pytest.mark.parametrize(
    ("routers", "extra", "said"),
    [
        (["random"], [], "['random'] cannot be retrained per fold"),
        (["shipped:mf"], [], "no checkpoint in"),
        (["mf", "shipped:mf"], ["--split", "all"], "shipped:NAME is measured on dev records only"),
        (["mf"], ["--split", "test"], "--split is dev, train or all, not 'test'"),
    ],
)
def test_routers_that_cannot_run_are_refused_before_any_fold(
    routers: list[str], extra: list[str], said: str, data_dir: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    command = ["eval", "--leave-one-out", "--router", *routers, *extra, "--data-dir", str(data_dir), "--work-dir", str(work)]
    with pytest.raises(SystemExit, match=re.escape(said)):
        main([*command, "--checkpoint-dir", str(tmp_path / "no-checkpoints")])
    assert not work.exists()  # refused before writing a fold
