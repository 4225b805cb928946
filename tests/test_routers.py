"""Learned routers: shipped checkpoints load and score; train -> score -> eval and calibrate on a small slice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from routers.calibration import read_calibration
from routers.checkpoint import CheckpointError, trained_on_own_data
from routers.data import RecordError, iter_records, licence_of
from routers.evaluation import metrics
from routers.evaluation.metrics import PairQuality
from routers.format_failures import format_failures
from routers.model_names import match_model, normal_form
from routers.registry import CHECKPOINT_ROOT, RouterOptions, load_router
from routers.training.pairwise import build_comparisons, load_training_records
from server.cli import main
from tests.another_user import said_as_another_user
from tests.conftest import REPO
from tests.router_fixtures import STRONG, WEAK, tiny_causal_lm, write_slice

SHIPPED = ["mf", "sw_ranking", "bert", "causal_llm"]
PROMPTS = [
    "What is 2 + 2?",
    "Prove that there are infinitely many primes p such that p + 2 is also prime, or explain why this is open.",
    "Which of the following is a mammal?\nA. Shark\nB. Whale\nC. Trout\nD. Salmon",
]


@pytest.fixture(scope="module")
def data_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slice(tmp_path_factory.mktemp("data") / "slice.jsonl.gz", {"train": 12, "dev": 8})


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training caches go to a temporary directory, not the user's ~/.cache."""
    monkeypatch.setattr("routers.embedding.CACHE_DIR", tmp_path_factory.getbasetemp() / "embedding-cache")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_router_scores_each_prompt_in_range(name: str) -> None:
    router = load_router(name)
    scores = router.score(PROMPTS)
    assert len(scores) == len(PROMPTS)
    assert all(isinstance(score, float) and 0.0 <= score <= 1.0 for score in scores)
    assert len(set(scores)) == len(PROMPTS)  # the prompt matters
    assert router.score(PROMPTS[::-1]) == pytest.approx(scores[::-1], abs=1e-5)  # and only the prompt


@pytest.mark.parametrize("name", SHIPPED)
def test_unknown_model_names_the_models_the_checkpoint_knows(name: str) -> None:
    with pytest.raises(CheckpointError) as error:
        load_router(name, RouterOptions(strong_model="no-such-model"))
    assert "no-such-model" in str(error.value) and STRONG in str(error.value)


def test_score_names_the_pair_and_writes_only_scores_to_an_output_of_dev_stdout(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": number, "prompt": prompt}) + "\n" for number, prompt in enumerate(PROMPTS)))
    scores = tmp_path / "scores.jsonl"
    command = [sys.executable, "-m", "server.cli", "score", "--router", "mf", "--input", str(prompts), "--output", "/dev/stdout"]
    with scores.open("w") as stdout:
        run = subprocess.run(command, cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert [record["id"] for record in map(json.loads, scores.read_text().splitlines())] == [0, 1, 2]
    assert "score mf: gpt-4-1106-preview (strong) vs mistralai/Mixtral-8x7B-Instruct-v0.1 (weak)" in run.stderr


def test_missing_checkpoint_says_how_to_train_one(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="routegate train causal_llm"):
        load_router("causal_llm", RouterOptions(checkpoint_dir=tmp_path))


def test_shipped_checkpoints_record_their_command_and_stay_small() -> None:
    total = sum(path.stat().st_size for path in CHECKPOINT_ROOT.rglob("*") if path.is_file())
    assert total < 28 * 1024 * 1024
    for name in SHIPPED:
        manifest = json.loads((CHECKPOINT_ROOT / name / "router.json").read_text())
        assert manifest["command"].startswith(f"routegate train {name}")
        assert match_model(STRONG, manifest["models"]) and match_model(WEAK, manifest["models"])


def test_shipped_checkpoints_name_each_training_files_licence() -> None:
    trained_on = {name: json.loads((CHECKPOINT_ROOT / name / "router.json").read_text()) for name in SHIPPED}
    lookahead = json.loads((CHECKPOINT_ROOT / "lookahead" / "config.json").read_text())["training"]
    trained_on["lookahead"] = {"data_files": lookahead["data"], "data_licences": lookahead["data_licences"]}
    for name, manifest in trained_on.items():
        assert manifest["data_files"], name
        assert manifest["data_licences"] == {file: licence_of(file) for file in manifest["data_files"]}, name
        assert "your own data" not in manifest["data_licences"].values(), name  # every shipped file is a known source


def test_one_model_spelled_two_ways_is_one_output_of_a_pairwise_trainer() -> None:
    gpt4, gpt4_alpacaeval, mixtral, mixtral_zeroeval = (
        "gpt-4-1106-preview",
        "gpt4_1106_preview",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "Mixtral-8x7B-Instruct-v0.1",
    )
    records = [
        {"id": "a", "prompt": "p", "split": "train", "scores": {gpt4: 1.0, mixtral: 0.0}},
        {"id": "b", "prompt": "q", "split": "train", "scores": {gpt4_alpacaeval: 1.0, mixtral_zeroeval: 1.0}},
        {"id": "c", "prompt": "r", "split": "train", "scores": {gpt4: 1.0, gpt4_alpacaeval: 0.0, mixtral_zeroeval: 0.0}},
    ]
    comparisons = build_comparisons(records)
    assert comparisons.models == ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"]
    assert comparisons.prompt.tolist() == [0, 1, 2]  # one comparison per record: the same two models
    assert comparisons.model_a.tolist() == [0, 0, 0] and comparisons.model_b.tolist() == [1, 1, 1]
    assert comparisons.target.tolist() == [1.0, 0.5, 0.75]  # record c: GPT-4 counts as the mean of its two spellings
    assert build_comparisons(records, [gpt4, mixtral]).models == [gpt4, mixtral]  # a given list is kept as given
    with pytest.raises(ValueError, match="names one model twice"):
        build_comparisons(records, [gpt4, gpt4_alpacaeval, mixtral])


def test_a_record_scoring_one_model_takes_no_place_in_the_limit(tmp_path: Path) -> None:
    """An exported request a user rated and no judge compared scores only the served model."""
    data = tmp_path / "export.jsonl"
    with data.open("w") as lines:
        for number in range(16):
            scores = {STRONG: 1.0, WEAK: 0.0} if number % 2 else {WEAK: 0.0}
            record = {"id": f"req-{number}", "prompt": f"request number {number}", "scores": scores, "split": "train"}
            lines.write(json.dumps(record) + "\n")
    out = tmp_path / "mf"
    assert main(["train", "mf", "--data", str(data), "--out", str(out), "--limit", "8", *TRAIN_OPTIONS["mf"]]) == 0
    assert json.loads((out / "router.json").read_text())["prompts"] == 8  # all 8 compared records, not 4 of them
    # trained on your own data (its neighbour table holds a vector per prompt): readable by you alone
    assert {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()} == {
        "router.json": 0o600,
        "weights.npz": 0o600,
        "neighbours.npz": 0o600,
    }
    assert out.stat().st_mode & 0o777 == 0o700  # the folder the training made
    lookahead = tmp_path / "lookahead"  # lookahead's manifest keeps its files under "training"
    lookahead.mkdir()
    (lookahead / "config.json").write_text(json.dumps({"training": {"data_licences": {"export.jsonl": licence_of(data)}}}))
    assert trained_on_own_data(lookahead) and licence_of("mmlu-pro-ours.jsonl") == "your own data"
    public = tmp_path / "routellm-gsm8k.jsonl"  # a name of the public data: its licence, not yours
    public.write_text(data.read_text())
    umask = os.umask(0)
    os.umask(umask)
    assert main(["train", "mf", "--data", str(public), "--out", str(tmp_path / "public"), *TRAIN_OPTIONS["mf"]]) == 0
    assert (tmp_path / "public" / "neighbours.npz").stat().st_mode & 0o777 == 0o666 & ~umask
    sample = load_training_records([str(data)], limit=8)  # sw_ranking's, bert's and causal_llm's
    assert sorted(record["id"] for record in sample) == [f"req-{number}" for number in (1, 11, 13, 15, 3, 5, 7, 9)]


def _scores(path: Path) -> dict[str, float]:
    return {record["id"]: record["score"] for record in iter_records(path)}


TRAIN_OPTIONS = {
    "mf": ["--epochs", "2"],
    "sw_ranking": [],
    "bert": ["--epochs", "1", "--batch-size", "8"],
}


@pytest.mark.parametrize("name", TRAIN_OPTIONS)
def test_train_score_eval_on_a_slice(name: str, data_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoints = tmp_path / "checkpoints"
    assert main(["train", name, "--data", str(data_slice), "--out", str(checkpoints / name), *TRAIN_OPTIONS[name]]) == 0
    manifest = json.loads((checkpoints / name / "router.json").read_text())
    assert sorted(normal_form(model) for model in manifest["models"]) == sorted(normal_form(m) for m in (STRONG, WEAK))
    assert manifest["prompts"] == 24  # train records only

    scores_path = tmp_path / "scores.jsonl"
    assert (
        main(
            [
                "score",
                "--router",
                name,
                "--checkpoint-dir",
                str(checkpoints),
                "--input",
                str(data_slice),
                "--output",
                str(scores_path),
            ]
        )
        == 0
    )
    scores = _scores(scores_path)
    assert list(scores) == [record["id"] for record in iter_records(data_slice)]
    assert all(0.0 <= score <= 1.0 for score in scores.values())

    plot = tmp_path / "eval.png"
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--router",
                name,
                "--checkpoint-dir",
                str(checkpoints),
                "--data",
                str(data_slice),
                "--strong",
                STRONG,
                "--weak",
                WEAK,
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    report = capsys.readouterr().out
    assert "16 prompts" in report  # the dev records only
    row = next(line for line in report.splitlines() if line.strip().startswith(name))
    apgr, cpt50, cpt80 = (float(value) for value in row.split()[1:4])
    assert 0.0 <= cpt50 <= cpt80 <= 1.0
    dev = [record for record in iter_records(data_slice) if record["split"] == "dev"]
    quality = PairQuality.of([r["scores"][STRONG] for r in dev], [r["scores"][WEAK] for r in dev])
    assert apgr == pytest.approx(metrics.apgr([scores[r["id"]] for r in dev], quality), abs=1e-4)  # same scores as `score`
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_of_a_pair_where_the_strong_model_does_not_lead_warns_and_reports_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "behind.jsonl"
    records = [{"id": str(n), "prompt": "q" * (n + 1), "split": "dev", "scores": {"small": 1.0, "big": 0.0}} for n in range(6)]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    argv = ["eval", "--router", "random", "--data", str(data), "--strong", "big", "--weak", "small"]
    assert main([*argv, "--plot", str(tmp_path / "behind.png")]) == 0
    report = capsys.readouterr().out
    assert "warning: the strong model leads by -1.0000" in report
    assert "random baseline" not in report
    row = next(line for line in report.splitlines() if line.strip().startswith("random "))
    assert row.split()[1:4] == ["nan", "nan", "nan"]


def test_eval_finds_the_pair_under_the_files_spelling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "dated.jsonl"
    outcomes = [(1.0, 0.0), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0)]
    records = [
        {"id": str(n), "prompt": "q" * (n + 1), "split": "dev", "scores": {"gpt-4o-2024-05-13": s, "gpt-4o-mini-2024-07-18": w}}
        for n, (s, w) in enumerate(outcomes)
    ]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    argv = ["eval", "--router", "random", "--data", str(data), "--strong", "gpt-4o", "--weak", "gpt-4o-mini"]
    assert main([*argv, "--plot", str(tmp_path / "dated.png")]) == 0
    report = capsys.readouterr().out
    assert "4 prompts, strong gpt-4o-2024-05-13, weak gpt-4o-mini-2024-07-18" in report
    assert "strong mean 0.7500  weak mean 0.2500" in report


def test_causal_llm_trains_and_scores_on_a_tiny_random_lm(data_slice: Path, tmp_path: Path) -> None:
    base = tiny_causal_lm(tmp_path / "tiny-lm")
    checkpoints = tmp_path / "checkpoints"
    assert (
        main(
            [
                "train",
                "causal_llm",
                "--data",
                str(data_slice),
                "--out",
                str(checkpoints / "causal_llm"),
                "--base-model",
                str(base),
                "--epochs",
                "20",
            ]
        )
        == 0
    )
    router = load_router("causal_llm", RouterOptions(checkpoint_dir=checkpoints, device="cpu"))
    scores = router.score(PROMPTS)
    assert len(scores) == 3 and all(0.0 <= score <= 1.0 for score in scores)
    assert router.score(PROMPTS[:1]) == pytest.approx(scores[:1], abs=1e-4)  # padding does not change a score


def test_causal_llm_learns_the_most_scored_models_its_label_tokens_can_hold(tmp_path: Path) -> None:
    """The tiny LM's tokenizer lower-cases, so it has 26 label tokens: of 30 models, the 4 scored on
    the fewest records are left out (though their names sort first), and a record that compares no
    two of the kept models is not trained on."""
    common = [f"model-{n:02d}" for n in range(26)]
    rare = [f"aaa-rare-{n}" for n in range(4)]
    records = [
        {
            "id": str(n),
            "prompt": f"Question {n}: " + "why? " * n,
            "split": "train",
            "scores": {m: float((n + i) % 2) for i, m in enumerate(common + rare[: 4 * (n < 5)])},
        }
        for n in range(10)
    ]
    records.append(
        {
            "id": "rare",
            "prompt": "Only rare models here.",
            "split": "train",
            "scores": {rare[0]: 1.0, rare[1]: 0.0, common[0]: 0.5},
        }
    )
    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "causal_llm"
    base = tiny_causal_lm(tmp_path / "tiny-lm")
    command = ["train", "causal_llm", "--data", str(data), "--out", str(out), "--base-model", str(base), "--epochs", "2"]
    assert main(command) == 0
    manifest = json.loads((out / "router.json").read_text())
    assert manifest["models"] == common
    assert manifest["prompts"] == 10
    router = load_router("causal_llm", RouterOptions(checkpoint_dir=tmp_path, strong_model=common[3], weak_model=common[7]))
    assert len(router.score(PROMPTS)) == len(PROMPTS)
    with pytest.raises(CheckpointError, match=rare[0]):
        load_router("causal_llm", RouterOptions(checkpoint_dir=tmp_path, strong_model=rare[0], weak_model=common[7]))


def _strong_wins_on_long_prompts(path: Path) -> Path:
    """40 train records where the strong model wins exactly on the long prompts."""
    with path.open("w", encoding="utf-8") as lines:
        for number in range(40):
            long = number % 2 == 0
            prompt = f"Item {number}: " + ("add these numbers and explain each step of the work. " * 6 if long else "hi?")
            scores = {STRONG: 1.0, WEAK: 0.0} if long else {STRONG: 0.0, WEAK: 1.0}
            lines.write(json.dumps({"id": str(number), "prompt": prompt, "scores": scores, "split": "train"}) + "\n")
    return path


@pytest.mark.parametrize(
    "name, options",
    [
        ("bert", ["--max-steps", "1"]),  # one step: the network adds next to nothing
        ("causal_llm", ["--epochs", "150", "--lr", "0.05", "--hidden-l2", "1000000"]),  # the label rows held together
    ],
)
def test_feature_head_ranks_by_structure_where_the_network_cannot(name: str, options: list[str], tmp_path: Path) -> None:
    """With the network all but untrained, only the structural-feature head can rank a long
    prompt above a short one: the router must add it to the network's logits."""
    data = _strong_wins_on_long_prompts(tmp_path / "length.jsonl")
    checkpoints = tmp_path / "checkpoints"
    command = ["train", name, "--data", str(data), "--out", str(checkpoints / name)]
    if name == "causal_llm":
        command += ["--base-model", str(tiny_causal_lm(tmp_path / "tiny-lm"))]
    assert main([*command, *options]) == 0
    router = load_router(name, RouterOptions(checkpoint_dir=checkpoints, device="cpu"))
    long_score, short_score = router.score(
        ["Please add 17, 25 and 31, then explain every step of the work in detail. " * 5, "ok?"]
    )
    assert long_score > 0.6 and short_score < 0.4


def test_eval_score_as_ranks_one_pairs_outcomes_with_another_pairs_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "chat.jsonl"
    outcomes = [(1.0, 0.0), (1.0, 1.0), (0.5, 0.0), (1.0, 0.5), (0.0, 0.0), (1.0, 0.0)]
    records = [
        {"id": str(n), "prompt": PROMPTS[n % 3] + " #" * n, "split": "dev", "scores": {"big": strong, "small": weak}}
        for n, (strong, weak) in enumerate(outcomes)
    ]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    plot = str(tmp_path / "a.png")
    argv = ["eval", "--router", "mf", "--data", str(data), "--strong", "big", "--weak", "small", "--plot", plot]
    with pytest.raises(SystemExit, match="cannot load router 'mf'"):
        main(argv)  # mf knows neither name
    strong, weak = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
    capsys.readouterr()
    assert main([*argv, "--score-as", strong, weak]) == 0
    report = capsys.readouterr().out
    assert f"scored as the pair {strong} vs {weak}" in report
    row = next(line for line in report.splitlines() if line.strip().startswith("mf "))
    scores = load_router("mf", RouterOptions(strong_model=strong, weak_model=weak)).score([r["prompt"] for r in records])
    quality = PairQuality.of([s for s, _ in outcomes], [w for _, w in outcomes])
    assert float(row.split()[1]) == pytest.approx(metrics.apgr(scores, quality), abs=1e-4)
    with pytest.raises(SystemExit, match="--score-as applies to one pair"):
        main(["eval", "--router", "mf", "--leave-one-out", "--score-as", strong, weak])


def test_eval_by_category_shows_each_categorys_lead_and_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "kinds.jsonl"
    # the strong model leads on the long "proof" prompts only: prompt length ranks that category highest
    kinds = [("proof", "Prove it, step by step, for every case. " * 4, 1.0), ("chat", "hi", 0.0), ("sum", "1+1?", 0.0)]
    records = [
        {"id": f"{kind}{n}", "prompt": f"{prompt} #{n}", "category": kind, "split": "dev", "scores": {"big": lead, "small": 0.0}}
        for kind, prompt, lead in kinds
        for n in range(4)
    ]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    argv = ["eval", "--router", "random", "--data", str(data), "--strong", "big", "--weak", "small"]
    assert main([*argv, "--plot", str(tmp_path / "a.png"), "--by-category"]) == 0
    report = capsys.readouterr().out.splitlines()
    header = next(n for n, line in enumerate(report) if line.split()[:3] == ["category", "prompts", "lead"])
    assert report[header + 1].split()[:4] == ["proof", "4", "+1.000", "0.86"]  # the 4 longest of 12: ranks 8-11 of 0-11
    assert {line.split()[0] for line in report[header + 2 : header + 4]} == {"chat", "sum"}
    assert "prompt length (baseline): rank correlation of category means with their lead" in report[header + 4]
    for other_mode in (["--leave-one-out"], ["--data", str(data), "--models", "big,small"]):
        for option in (["--by-category"], ["--strong", "big"], ["--weak", "small"]):
            with pytest.raises(SystemExit, match=f"{option[0]} applies to one pair"):  # it would be ignored
                main(["eval", "--router", "random", *other_mode, *option])


def test_eval_gives_its_routers_what_the_gateway_gives_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The routers ``eval`` measures read the first ROUTEGATE_MAX_ROUTER_CHARS characters of a
    prompt, as the gateway's do: a long prompt and its first 4,000 characters score alike."""
    strong, weak = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
    long = "Explain each step of the proof. " + "1234 + 5678 = ? " * 400
    kinds = [("long", long, 1.0), ("cut", long[:4000], 0.0), ("short", "Write a haiku about autumn.", 0.0)]
    data = tmp_path / "long.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": kind, "prompt": prompt, "category": kind, "split": "dev", "scores": {strong: lead, weak: 0.0}})
            + "\n"
            for kind, prompt, lead in kinds
        )
    )

    def mean_ranks(*extra: str) -> dict[str, str]:
        """Each category's mean rank under ``mf`` (one prompt each: its rank)."""
        argv = ["eval", "--router", "mf", "--data", str(data), "--strong", strong, "--weak", weak, "--by-category"]
        # one prompt per batch: two equal texts padded alike score exactly alike
        assert main([*argv, "--batch-size", "1", "--plot", str(tmp_path / "long.png"), *extra]) == 0
        report = capsys.readouterr().out.splitlines()
        header = next(n for n, line in enumerate(report) if line.split()[:3] == ["category", "prompts", "lead"])
        return {line.split()[0]: line.split()[4] for line in report[header + 1 : header + 4]}

    cut = mean_ranks()
    assert cut["long"] == cut["cut"] == "0.75"  # tied: both the mean of ranks 1 and 2 of 0-2
    whole = mean_ranks("--max-chars", str(len(long)))
    assert whole["long"] != whole["cut"]


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_calibrate_threshold_yields_the_requested_share(
    fraction: float, data_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["calibrate", "--router", "mf", "--data", str(data_slice), "--strong-fraction", str(fraction)]) == 0
    threshold = float(capsys.readouterr().out.split()[1])
    assert main(["score", "--router", "mf", "--input", str(data_slice), "--output", str(tmp_path / "scores.jsonl")]) == 0
    scores = np.asarray(list(_scores(tmp_path / "scores.jsonl").values()))
    assert np.mean(scores >= threshold) == pytest.approx(round(fraction * len(scores)) / len(scores))


def test_calibrate_write_records_the_scored_pair_and_the_printed_threshold(
    data_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = tmp_path / "calibration.json"
    capsys.readouterr()
    command = ["calibrate", "--router", "mf", "--data", str(data_slice), "--strong-fraction", "0.3", "--write", str(written)]
    assert main(command) == 0
    printed = capsys.readouterr()
    threshold = float(printed.out.split()[1])
    assert f"calibrate mf: {STRONG} (strong) vs {WEAK} (weak)" in printed.err
    assert f"for a gateway whose mf scores {STRONG} vs {WEAK}" in printed.out  # not a threshold for any pair
    body = json.loads(written.read_text())
    known = json.loads((CHECKPOINT_ROOT / "mf" / "router.json").read_text())["models"]
    assert (body["router"], body["strong"], body["weak"]) == ("mf", match_model(STRONG, known), match_model(WEAK, known))
    assert body["weak"] == "mixtral-8x7b-instruct-v0.1"  # the router's name, as a gateway's scored pair has it
    assert read_calibration(written)[0.3] == threshold


def test_calibrate_write_refuses_a_file_that_is_not_a_calibration_before_scoring(
    data_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "router.json"
    checkpoint.write_text((CHECKPOINT_ROOT / "mf" / "router.json").read_text())
    command = ["calibrate", "--router", "mf", "--data", str(data_slice), "--strong-fraction", "0.3", "--write"]
    kept = {path: path.read_bytes() for path in (checkpoint, data_slice)}
    with pytest.raises(SystemExit, match="router.json exists and is not a calibration file"):
        main([*command, str(checkpoint)])
    with pytest.raises(SystemExit, match="is one of the --data files"):
        main([*command, str(data_slice)])
    assert {path: path.read_bytes() for path in kept} == kept  # both whole
    assert "threshold" not in capsys.readouterr().out  # nothing scored


def test_eval_stops_before_scoring_when_its_default_plot_cannot_be_written(
    data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval-slice-dev.png").mkdir()  # where the plot would go
    with pytest.raises(SystemExit, match="eval-slice-dev.png is a folder"):
        main(["eval", "--router", "mf", "--data", str(data_slice), "--strong", STRONG, "--weak", WEAK, "--split", "dev"])
    assert "APGR" not in capsys.readouterr().out  # nothing scored


def test_score_all_batches_by_length_and_returns_scores_in_input_order() -> None:
    from routers.base import Router
    from routers.commands import score_all

    class LengthRouter(Router):
        name = "length"

        def __init__(self) -> None:
            self.batches: list[list[str]] = []

        def score(self, prompts):  # type: ignore[no-untyped-def]
            self.batches.append(list(prompts))
            return [len(prompt) / 100 for prompt in prompts]

    router = LengthRouter()
    assert score_all(router, ["ccc", "a", "bbbbb", "dd"], batch_size=2, label="test") == [0.03, 0.01, 0.05, 0.02]
    assert router.batches == [["a", "dd"], ["ccc", "bbbbb"]]


@pytest.mark.parametrize(
    ("command", "lines", "said"),
    [
        (
            ["score", "--input", "{data}", "--output", "{out}"],
            ['{"id": "a", "prompt": "x"}', "{not json"],
            ":2: not a JSON record",
        ),
        (["score", "--input", "{data}", "--output", "{out}"], ['["a list"]'], ":1: not a JSON object"),
        (
            ["score", "--input", "{data}", "--output", "{out}"],
            ['{"id": "a", "prompt": "x"}', '{"id": "b", "prompt": [{"role": "assistant", "content": "Hi"}]}'],
            ":2: 'prompt' must be a string, a list of strings (a conversation's user turns) or a list of chat messages",
        ),
        (
            ["score", "--input", "{data}", "--output", "{out}"],
            ['{"id": "b", "prompt": [{"role": "user", "content": 7}]}'],
            ":1: 'prompt' must be a string, a list of strings (a conversation's user turns) or a list of chat messages",
        ),
        (
            ["score", "--input", "{data}", "--output", "{out}"],
            ['{"id": "b", "prompt": [{"content": "Hi"}, {"role": "user", "content": "Hello"}]}'],
            ":1: 'prompt' must be a string, a list of strings (a conversation's user turns) or a list of chat messages",
        ),
        (
            ["score", "--input", "{data}", "--output", "{out}"],
            ['{"id": "a", "prompt": null}'],
            ":1: a record needs a 'prompt' (a string, a list of user turns, or a list of chat messages) or a request's "
            "'messages'; this one has 'id', 'prompt'",
        ),
        (  # an MT-Bench question file: the record's own fields say what to rename
            ["score", "--input", "{data}", "--output", "{out}"],
            ['{"id": "a", "prompt": "x"}', "", "", '{"question_id": 81, "category": "writing", "turns": ["Compose"]}'],
            ":4: a record needs an 'id' (any JSON value but NaN or infinity); this one has 'question_id', 'category', 'turns'\n",
        ),
        (  # Python's json reads NaN, but a score line with it would not be JSON
            ["score", "--input", "{data}", "--output", "{out}"],
            ['{"id": NaN, "prompt": "x"}'],
            ":1: a record needs an 'id' (any JSON value but NaN or infinity)",
        ),
        (
            ["eval", "--data", "{data}", "--split", "all", "--strong", "m", "--weak", "n", "--plot", "{out}.png"],
            ['{"id": "a", "prompt": "x", "scores": {"m": 1, "n": 0}}', '{"id": "b", "prompt": "y", "scores": {"m": "high"}}'],
            ":2: 'scores' must be an object of numbers",
        ),
        (
            ["eval", "--data", "{data}", "--split", "all", "--strong", "m", "--weak", "n", "--plot", "{out}.png"],
            ['{"id": "a", "prompt": "x", "scores": {"m": 7, "n": 0}}'],
            ":1: 'scores' must be an object of numbers from 0 to 1",
        ),
        (  # named by its line in the file (blank lines count); every split's records are checked
            ["calibrate", "--data", "{data}", "--split", "dev", "--strong-fraction", "0.3"],
            ['{"id": "a", "prompt": "x", "split": "dev"}', "", '{"id": "b", "split": "train"}', '{"id": "c", "split": "dev"}'],
            ":3: a record needs a 'prompt' (a string, a list of user turns, or a list of chat messages) or a request's "
            "'messages'; this one has 'id', 'split'\n",
        ),
        (
            ["calibrate", "--data", "{data}", "--per-file", "0"],
            ['{"id": "a", "prompt": "x"}'],
            "--per-file: must be a whole number",
        ),
        (
            ["score", "--input", "{data}", "--output", "{out}", "--batch-size", "0"],
            ['{"id": "a", "prompt": "x"}'],
            "--batch-size",
        ),
    ],
)
def test_bad_record_files_and_counts_are_named_not_a_traceback(
    tmp_path: Path, command: list[str], lines: list[str], said: str
) -> None:
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(lines) + "\n")
    argv = [part.format(data=data, out=tmp_path / "scores.jsonl") for part in command]
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", argv[0], "--router", "random", *argv[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode in (1, 2) and said in run.stderr and "Traceback" not in run.stderr, run.stderr


RECORD = '{{"id": "{id}", "prompt": "question {id}", "split": "{split}", "scores": {{"a": 1, "b": 0}}}}'


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["train", "mf", "--data", "{data}", "--out", "{out}", "--weight", "records=0"], "with W above 0"),
        (["train", "mf", "--data", "{data}", "--out", "{out}", "--epochs", "0"], "--epochs: must be a whole number"),
        (["train", "sw_ranking", "--data", "{data}", "--out", "{out}", "--limit", "-1"], "--limit: must be a whole number"),
        (["train", "bert", "--data", "{data}", "--out", "{out}", "--lr", "nan"], "--lr: must be a number above 0"),
        (["train", "mf", "--data", "{data}", "--out", "{out}", "--dropout", "1.5"], "--dropout: must be a number from 0"),
        (["train", "sw_ranking", "--data", "{data}", "--out", "{out}", "--tau", "nan"], "--tau: must be a number above 0"),
        (["train", "lookahead", "--data", "{data}", "--out", "{out}", "--threads", "0"], "--threads: must be a whole number"),
        (["train", "bert", "--data", "{one_model}", "--out", "{out}"], "scores two models"),
        (["eval", "--leave-one-out", "--router", "mf", "--train-options", "mf --epochs 2"], "takes ROUTER=OPTIONS items"),
        (
            ["score", "--router", "mf", "--input", "{data}", "--output", "{out}"]
            + ["--strong", "gpt-4o", "--weak", "gpt-4o-2024-05-13"],
            "name one model: a router scores two",
        ),
        (["eval", "--router", "random", "--data", "{data}", "--models", "a,b", "--prices", "a=cheap"], "--prices:"),
        (["eval", "--router", "random", "--data", "{data}", "--models", "a,b", "--knn", "0"], "--knn: must be a whole number"),
        (["train", "mf", "--data", "{unprompted}", "--out", "{out}"], ":2: a scored record needs an 'id' and a 'prompt'"),
        (
            ["eval", "--router", "random", "--data", "{data}", "--strong", "a", "--weak", "b", "--plot", "x.xyz"],
            "must end in .png",
        ),
        (["eval", "--router", "random", "--data", "{data}", "--models", "a,b,a"], "--models names 'a' twice"),
        (["eval", "--router", "mff", "--data", "{data}", "--models", "a,b"], "unknown routers ['mff']"),
        (["eval", "--router", "random", "sw_ranking", "--data", "{data}", "--models", "a,b"], "['sw_ranking'] score only a"),
        (
            ["eval", "--router", "random", "--data", "{data}", "--strong", "a", "--weak", "b", "--table", "t.md", "--knn", "3"],
            "--table only apply with --leave-one-out",
        ),
        (["eval", "--router", "random", "--data", "{data}", "--strong", "a", "--weak", "b", "--knn", "3"], "--knn only apply"),
        (["eval", "--leave-one-out", "--router", "mf", "--data", "{data}"], "--leave-one-out reads every file in --data-dir"),
        (["eval", "--leave-one-out", "--router", "mf", "--train-options", "mf=--epochs 'x"], "No closing quotation"),
        (["train", "mf", "--data", "{data}", "--out", "{out}", "--seed", "-1"], "--seed: must be a whole number from 0"),
        (["train", "bert", "--data", "{data}", "--out", "{out}", "--seed", "9" * 20], "--seed: must be a whole number from 0"),
        (["train", "mf", "--data", "{data}", "--out", "{out}", "--device", "gpu"], "--device: must be auto, cpu, cuda or cuda:N"),
        (["train", "sw_ranking", "--data", "{data}", "--out", "{out}", "--feature-weight", "nan"], "at least 0"),
        (["train", "mf", "--data", "{data}", "--out", "{out}", "--weight-decay", "-1"], "must be a number of at least 0"),
        # NaN or negative weights trained NaN checkpoints over good ones
        (["train", "bert", "--data", "{data}", "--out", "{out}", "--head-lr", "nan"], "--head-lr: must be a number above 0"),
        (["train", "causal_llm", "--data", "{data}", "--out", "{out}", "--hidden-l2", "nan"], "--hidden-l2: must be a number"),
        (["train", "lookahead", "--data", "{data}", "--out", "{out}", "--reconstruction-weight", "-1"], "at least 0"),
        (["train", "lookahead", "--data", "{data}", "--out", "{out}", "--block-size", "0"], "--block-size: must be"),
        (["train", "lookahead", "--data", "{data}", "--out", "{out}", "--trainable-layers", "99"], "invalid choice: 99"),
        (["train", "mf", "--data", "{data}", "--out", "{out}", "--offset-l2", "-5"], "--offset-l2: must be a number above 0"),
        (["train", "mf", "--data", "{data}", "--out", "{out}", "--neighbour-weight", "nan"], "--neighbour-weight: must be"),
        (["train", "sw_ranking", "--data", "{data}", "{data}", "--out", "{out}"], "a file is named twice"),
        (["eval", "--router", "random", "mff", "--data", "{data}", "--strong", "a", "--weak", "b"], "unknown router 'mff'"),
        (["score", "--router", "random", "--input", "{data}", "--output", "{folder}"], "is a folder: name a file to write"),
        (["demo", "--port", "70000"], "--port: must be a port from 1 to 65535, not '70000'"),
        (["demo", "--router", "mff"], "router 'mff' cannot serve here; installed:"),
    ],
)
def test_bad_options_and_records_are_one_line_errors(tmp_path: Path, argv: list[str], said: str) -> None:
    """Each would otherwise train on nothing the user meant, score a model against itself (0.5 for
    every prompt), or stop on a traceback."""
    data, unprompted, one_model = tmp_path / "records.jsonl", tmp_path / "unprompted.jsonl", tmp_path / "one.jsonl"
    data.write_text("\n".join(RECORD.format(id=n, split=("train", "dev")[n % 2]) for n in range(8)) + "\n")
    one_model.write_text('{"id": "0", "prompt": "question", "split": "train", "scores": {"a": 1}}\n')
    unprompted.write_text(RECORD.format(id=0, split="train") + '\n{"id": "1", "split": "train", "scores": {"a": 1, "b": 0}}\n')
    places = {"data": data, "unprompted": unprompted, "one_model": one_model, "out": tmp_path / "out", "folder": tmp_path}
    command = [part.format(**places) for part in argv]
    run = subprocess.run([sys.executable, "-m", "server.cli", *command], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode in (1, 2) and said in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()  # not even an empty checkpoint folder


def test_eval_finds_every_router_before_it_scores_any(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing second router used to be found after the first had scored every prompt."""
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(RECORD.format(id=n, split="dev") for n in range(4)) + "\n")
    argv = ["eval", "--router", "random", "sw_ranking", "--checkpoint-dir", str(tmp_path / "none"), "--data", str(data)]
    with pytest.raises(SystemExit, match="cannot load router 'sw_ranking'"):
        main([*argv, "--strong", "a", "--weak", "b", "--plot", str(tmp_path / "e.png")])
    assert "eval random" not in capsys.readouterr().err  # no progress bar: nothing was scored


def test_training_into_another_routers_checkpoint_is_refused(tmp_path: Path) -> None:
    """``--out`` naming the wrong folder would have left mf's weights beside a sw_ranking manifest."""
    data, folder = tmp_path / "records.jsonl", tmp_path / "mf"
    data.write_text("\n".join(RECORD.format(id=n, split="train") for n in range(4)) + "\n")
    folder.mkdir()
    (folder / "router.json").write_text('{"router": "mf", "models": ["a", "b"]}')
    (folder / "weights.npz").write_bytes(b"mf weights")
    with pytest.raises(SystemExit, match="holds a 'mf' checkpoint; name another --out folder"):
        main(["train", "sw_ranking", "--data", str(data), "--out", str(folder)])
    assert sorted(path.name for path in folder.iterdir()) == ["router.json", "weights.npz"]
    assert (folder / "weights.npz").read_bytes() == b"mf weights"


def test_scores_outside_0_1_from_a_broken_checkpoint_stop_the_command() -> None:
    """A NaN score made a plausible APGR in eval's table, a line that is not JSON in score's output
    and a NaN threshold in calibrate's file."""
    from routers.base import Router
    from routers.commands import score_all

    class Broken(Router):
        name = "broken"

        def score(self, prompts: list[str]) -> list[float]:
            return [float("nan")] * len(prompts)

    with pytest.raises(SystemExit, match="router broken scored nan"):
        score_all(Broken(), ["a", "b"], 2, "eval broken")


def test_training_that_diverged_writes_nothing() -> None:
    from routers.checkpoint import refuse_unless_finite

    refuse_unless_finite("bert", [torch.nn.Parameter(torch.ones(2)), np.ones(3), torch.ones(2).half()])
    with pytest.raises(SystemExit, match="training diverged"):
        refuse_unless_finite("bert", [torch.ones(2), torch.tensor([1.0, float("nan")]).half()])


def test_the_lookahead_ablation_needs_its_figure_named_and_real_checkpoints(tmp_path: Path) -> None:
    """Its figure used to default to docs/lookahead_ablation.png (a smoke run replaced the docs'),
    and a checkpoint without LABEL= or a missing folder ended in a traceback."""
    from routers.lookahead.evaluation import main as ablation

    data = str(tmp_path / "d.jsonl")
    for argv in (
        ["--checkpoint", f"L={CHECKPOINT_ROOT / 'lookahead'}", "--data", data],
        ["--checkpoint", str(CHECKPOINT_ROOT / "lookahead"), "--data", data, "--png", "a.png"],
        ["--checkpoint", f"L={tmp_path / 'none'}", "--data", data, "--png", "a.png"],
    ):
        with pytest.raises(SystemExit) as stopped:
            ablation(argv)
        assert stopped.value.code == 2


def test_a_record_nested_too_deeply_or_with_an_id_json_cannot_write_is_a_named_error(tmp_path: Path) -> None:
    """Not a traceback, and not a score line that is not JSON (``{"id": [NaN], ...}``)."""
    deep, not_finite = tmp_path / "deep.jsonl", tmp_path / "nan.jsonl"
    deep.write_text('{"id": ' + "[" * 100_000 + "]" * 100_000 + ', "prompt": "x"}\n')
    not_finite.write_text('{"id": [NaN], "prompt": "x"}\n')
    with pytest.raises(RecordError, match="deep.jsonl:1: not a JSON record"):
        list(iter_records(deep, scores=False, require=("id", "prompt")))
    with pytest.raises(RecordError, match="nan.jsonl:1: a record needs an 'id'"):
        list(iter_records(not_finite, scores=False, require=("id", "prompt")))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_device_where_there_is_none_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a traceback from the first prompt missing from the embedding cache (and none when all are cached)."""
    data = tmp_path / "records.jsonl"
    data.write_text('{"id": "a", "prompt": "a prompt no cache holds 7f3c"}\n')
    argv = ["score", "--router", "mf", "--device", "cuda", "--input", str(data), "--output", str(tmp_path / "s.jsonl")]
    assert "--device cuda, but torch finds no CUDA device here" in _said(argv, capsys)
    assert not (tmp_path / "s.jsonl").exists()
    data.write_text(RECORD.format(id=0, split="train") + "\n")
    train = ["train", "mf", "--data", str(data), "--out", str(tmp_path / "mf"), "--device", "cuda:0"]
    assert "--device cuda:0, but torch finds no CUDA device here" in _said(train, capsys)
    evaluate = ["eval", "--router", "random", "--data", str(data), "--models", "a,b", "--device", "cuda"]
    assert "--device cuda, but torch finds no CUDA device here" in _said(evaluate, capsys)


def test_score_and_calibrate_read_what_the_gateway_gives_its_router(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway scores the first ROUTEGATE_MAX_ROUTER_CHARS characters of a prompt: so do the
    commands whose numbers it uses, else a long prompt's length features differ from the gateway's."""
    from routers.commands import MAX_ROUTER_CHARS
    from server.settings import Settings

    assert MAX_ROUTER_CHARS == Settings.model_fields["max_router_chars"].default == 4000
    long = "Explain each step of the proof. " + "1234 + 5678 = ? " * 400
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(json.dumps({"id": name, "prompt": text}) for name, text in [("long", long), ("cut", long[:4000])]))
    out = tmp_path / "s.jsonl"
    assert main(["score", "--router", "mf", "--input", str(data), "--output", str(out)]) == 0
    assert _scores(out)["long"] == _scores(out)["cut"]
    assert main(["score", "--router", "mf", "--input", str(data), "--output", str(out), "--max-chars", str(len(long))]) == 0
    assert _scores(out)["long"] != _scores(out)["cut"]
    capsys.readouterr()
    calibrate = ["calibrate", "--router", "mf", "--data", str(data), "--split", "all", "--strong-fraction", "0.5"]
    assert main(calibrate) == 0
    assert "sends 100.0% of 2 prompts" in capsys.readouterr().out  # the two prompts score alike


def test_score_reads_a_conversation_as_the_gateway_routes_it(tmp_path: Path) -> None:
    """A prompt given as a conversation is scored as the gateway routes it by default: its last
    user turn, or its last user message's text."""
    turns = ["Write a travel blog post about Lisbon.", "Now solve 12 * 17 step by step."]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Write a haiku about autumn."},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": [{"type": "text", "text": "Now solve 12 * 17"}, {"type": "image_url", "image_url": {}}]},
    ]
    rows = [("turns", turns), ("last turn", turns[-1]), ("first turn", turns[0])]
    rows += [("messages", messages), ("last message", "Now solve 12 * 17")]
    data = tmp_path / "records.jsonl"
    lines = [json.dumps({"id": name, "prompt": prompt}) for name, prompt in rows]
    lines.append(json.dumps({"id": "request", "model": "auto", "messages": messages}))  # a logged request body
    data.write_text("\n".join(lines))
    out = tmp_path / "s.jsonl"
    assert main(["score", "--router", "mf", "--input", str(data), "--output", str(out)]) == 0
    scores = _scores(out)
    assert scores["turns"] == pytest.approx(scores["last turn"], abs=1e-4)  # alike up to batching's rounding
    assert abs(scores["turns"] - scores["first turn"]) > 1e-2
    assert scores["messages"] == pytest.approx(scores["last message"], abs=1e-4)
    assert scores["request"] == pytest.approx(scores["last message"], abs=1e-4)


def test_eval_among_models_of_a_file_without_train_records_leaves_out_the_knn_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(RECORD.format(id=n, split="dev") for n in range(8)) + "\n")
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--router",
                "random",
                "--data",
                str(data),
                "--models",
                "a,b",
                "--prices",
                "a=1/2,b=0.1/0.2",
                "--plot",
                str(tmp_path / "m.png"),
            ]
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "records has no train records: no kNN baseline" in said and "kNN (k=" not in said
    assert (tmp_path / "m.png").stat().st_size > 0


def test_eval_among_models_skips_unscored_train_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A train record without scores (a prompt log beside judged records) may lack a prompt: the
    kNN baseline reads only scored ones, as training does."""
    data = tmp_path / "records.jsonl"
    lines = [RECORD.format(id=n, split=("train", "dev")[n % 2]) for n in range(8)] + ['{"id": "log-1", "split": "train"}']
    data.write_text("\n".join(lines) + "\n")
    argv = ["eval", "--router", "random", "--data", str(data), "--models", "a,b", "--knn", "2"]
    assert main([*argv, "--prices", "a=1/2,b=0.1/0.2", "--plot", str(tmp_path / "m.png")]) == 0
    assert "kNN (k=2)" in capsys.readouterr().out


def test_eval_among_models_where_no_model_scores_is_a_report_not_a_division_by_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "zeros.jsonl"
    data.write_text("".join(RECORD.replace('"a": 1', '"a": 0').format(id=n, split="dev") + "\n" for n in range(2)))
    argv = ["eval", "--router", "random", "--data", str(data), "--models", "a,b", "--prices", "a=0/0,b=0/0"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a warning on the way (a division by zero, an empty log axis)
        assert main([*argv, "--plot", str(tmp_path / "m.png")]) == 0
    assert "n/a (the best model scores 0)" in capsys.readouterr().out
    assert (tmp_path / "m.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("manifest", "error"),
    [("[1]", "cannot be read as a JSON object"), ('{"models": 5}', "'models' is not a list of model names")],
)
def test_a_router_manifest_that_is_not_an_object_is_a_named_error(tmp_path: Path, manifest: str, error: str) -> None:
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "router.json").write_text(manifest)
    data = tmp_path / "records.jsonl"
    data.write_text(json.dumps({"id": "a", "prompt": "question"}) + "\n")
    argv = ["score", "--router", "random", "--checkpoint-dir", str(tmp_path), "--input", str(data)]
    with pytest.raises(SystemExit, match=f"cannot load router 'random': CheckpointError: .*{error}"):
        main([*argv, "--output", str(tmp_path / "s.jsonl")])


def test_an_output_is_replaced_only_once_it_is_written(tmp_path: Path) -> None:
    """A write that fails half way (a full disk, a Ctrl-C) leaves the earlier output whole and no
    partial file beside it; ``score`` writes its scores that way."""
    from routers.output_files import replaced_on_success

    out = tmp_path / "scores.jsonl"
    out.write_text("earlier scores\n")
    with pytest.raises(KeyboardInterrupt), replaced_on_success(out) as staging:
        staging.write_text("half of the new")
        raise KeyboardInterrupt
    assert out.read_text() == "earlier scores\n" and [path.name for path in tmp_path.iterdir()] == ["scores.jsonl"]
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(json.dumps({"id": n, "prompt": f"question {n}"}) for n in range(3)) + "\n")
    out.chmod(0o640)
    assert main(["score", "--router", "random", "--input", str(data), "--output", str(out)]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [0, 1, 2]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["records.jsonl", "scores.jsonl"]
    assert out.stat().st_mode & 0o777 == 0o640  # the earlier file's mode, not a temporary file's 0600
    fresh, link = tmp_path / "new" / "s.jsonl", tmp_path / "link.jsonl"
    link.symlink_to(out)
    for path in (fresh, link):
        assert main(["score", "--router", "random", "--input", str(data), "--output", str(path)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it
    assert link.is_symlink() and len(out.read_text().splitlines()) == 3  # written through the link


@pytest.mark.parametrize(("suffix", "start"), [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_a_plot_is_replaced_only_once_it_is_drawn(tmp_path: Path, suffix: str, start: bytes) -> None:
    """A plot that fails while it is written (SVG and PDF open the file before drawing into it)
    leaves the earlier one whole; a written one is in the format its name says."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.artist import Artist

    from routers.evaluation.plot import save_figure

    class FailsWhenWritten(Artist):
        """Draws for the tight bounding box, then fails as a full disk would."""

        draws = 0

        def draw(self, renderer: object) -> None:
            self.draws += 1
            if self.draws > 1:
                raise OSError("No space left on device")

    plot = tmp_path / f"curve{suffix}"
    plot.write_bytes(b"earlier plot")
    figure, axes = plt.subplots()
    axes.add_artist(FailsWhenWritten())
    with pytest.raises(OSError, match="No space left"):
        save_figure(figure, plot)
    assert plot.read_bytes() == b"earlier plot" and [path.name for path in tmp_path.iterdir()] == [plot.name]
    figure, axes = plt.subplots()
    axes.plot([0, 1], [0, 1])
    save_figure(figure, plot)
    assert plot.read_bytes().startswith(start) and [path.name for path in tmp_path.iterdir()] == [plot.name]


def test_an_output_in_a_folder_the_user_cannot_write_is_refused_before_the_scoring(tmp_path: Path) -> None:
    """``score`` makes its new output beside the old one and moves it into place: a writable file
    in a folder the user cannot write would pass a check of the file alone, be scored, and then
    fail on a traceback. Where the tests run as root (who writes anywhere), a forked child runs
    the command as ``nobody``."""
    folder = Path(tempfile.mkdtemp(prefix="routegate-read-only-"))
    try:
        data, out = folder / "records.jsonl", folder / "scores.jsonl"
        data.write_text(json.dumps({"id": 0, "prompt": "question"}) + "\n")
        out.write_text("earlier scores\n")
        out.chmod(0o666)
        folder.chmod(0o755 if os.geteuid() == 0 else 0o555)
        said = said_as_another_user(["score", "--router", "random", "--input", str(data), "--output", str(out)])
        assert said == f"routegate: cannot write in {folder}"
        assert out.read_text() == "earlier scores\n"
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_the_default_leave_one_out_plot_is_checked_before_the_folds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --plot the table goes to ./leave-one-out.png: a folder of that name stops the
    command before any fold is trained, as a bad --plot does, not after an hour of them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leave-one-out.png").mkdir()
    with pytest.raises(SystemExit, match="leave-one-out.png is a folder"):
        main(["eval", "--leave-one-out", "--router", "mf", "--data-dir", str(tmp_path / "no-data"), "--work-dir", "folds"])
    assert not (tmp_path / "folds").exists()


def test_a_weight_for_a_file_not_in_data_is_named_and_left_out(tmp_path: Path) -> None:
    """A typo, or a leave-one-out fold without the weighted file: said on stderr, not recorded."""
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(RECORD.format(id=n, split="train") for n in range(8)) + "\n")
    out = tmp_path / "mf"
    command = ["train", "mf", "--data", str(data), "--out", str(out), "--epochs", "1", "--weight", "recrods=5"]
    run = subprocess.run([sys.executable, "-m", "server.cli", *command], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "--weight 'recrods=5' names no --data file (their names: ['records'])" in run.stderr
    assert json.loads((out / "router.json").read_text())["file_weights"] == {}


def test_an_unreadable_embedding_cache_is_computed_again(tmp_path: Path) -> None:
    """Half a cache file (a command killed while writing, or two writing at once) does not stop every
    later command: it is read as empty and written again."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "minilm128-embeddings.npz").write_bytes(b"PK\x03\x04 half a zip file")
    code = "from routers.embedding import cached_encode; print(cached_encode(['hello there']).shape)"
    env = {**os.environ, "ROUTEGATE_CACHE_DIR": str(cache)}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "(1, 384)", run.stderr
    assert "is unreadable" in run.stderr
    again = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "unreadable" not in again.stderr  # written again, whole


def test_an_unwritable_embedding_cache_costs_a_warning_not_the_result(tmp_path: Path) -> None:
    """A read-only or full cache folder (a container's read-only root): past the batch size at
    which the cache is written, the command still gets its embeddings, and tries once."""
    (tmp_path / "not-a-folder").write_text("a file where the cache folder should be")
    code = (
        "from routers import embedding; embedding.SAVE_EVERY = 2\n"
        "print(embedding.cached_encode(['one', 'two', 'three']).shape, embedding.cached_encode(['four', 'five']).shape)"
    )
    env = {**os.environ, "ROUTEGATE_CACHE_DIR": str(tmp_path / "not-a-folder" / "cache")}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "(3, 384) (2, 384)", run.stderr
    assert run.stderr.count("was not written") == 1


def test_commands_sharing_the_embedding_cache_keep_each_others_entries(tmp_path: Path) -> None:
    """Each holds its new entries until it ends (not a file write per batch); the last to end does
    not drop what the other wrote meanwhile."""
    env = {**os.environ, "ROUTEGATE_CACHE_DIR": str(tmp_path)}
    code = (
        "import sys; from routers import embedding\n"
        "embedding.cached_encode(['held by ' + sys.argv[1]])\n"
        "print('holding', flush=True)\n"
        "sys.stdin.readline()\n"  # until told to end
    )
    commands = [
        subprocess.Popen(
            [sys.executable, "-c", code, name], cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for name in ("one", "two")
    ]
    for command in commands:  # both read the cache while it was empty, and hold an entry each
        assert command.stdout is not None and command.stdout.readline() == "holding\n"
    for command in commands:  # one ends and writes its entry, then the other
        command.communicate("\n", timeout=300)
        assert command.returncode == 0
    with np.load(tmp_path / "minilm128-embeddings.npz") as saved:
        assert len(saved["keys"]) == 2


def _said(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``routegate argv`` says when it stops on its input (a one-line error, not a traceback)."""
    capsys.readouterr()
    try:
        assert main(argv) == 2
    except SystemExit as stop:
        return str(stop)
    return capsys.readouterr().err


def test_record_files_that_cannot_be_read_and_nothing_to_learn_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip

    line = b'{"id": "a", "prompt": "x", "split": "dev", "scores": {"big": 1, "small": 0}}\n'
    files = {
        "latin1.jsonl": '{"id": "a", "prompt": "caf\u00e9"}\n'.encode("latin-1"),
        "packed.jsonl": gzip.compress(line),
        "plain.jsonl.gz": line,
        "cut.jsonl.gz": gzip.compress(line * 50)[:-12],
    }
    expected = {
        "latin1.jsonl": "latin1.jsonl:1: not UTF-8 text",
        "packed.jsonl": "packed.jsonl:1: not UTF-8 text",
        "plain.jsonl.gz": "plain.jsonl.gz: not a whole gzip file",
        "cut.jsonl.gz": "cut.jsonl.gz: not a whole gzip file",
    }
    files["late.jsonl"] = b'{"id": "a", "prompt": "x"}\n' * 899 + '{"id": "b", "prompt": "caf\u00e9"}\n'.encode("latin-1")
    expected["late.jsonl"] = "late.jsonl:900: not UTF-8 text"
    files["empty.jsonl"] = b"\n"
    expected["empty.jsonl"] = "no records in"
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        said = _said(
            ["score", "--router", "random", "--input", str(tmp_path / name), "--output", str(tmp_path / "s.jsonl")], capsys
        )
        assert expected[name] in said, said
    # a prompt with a lone surrogate escape (scraped text cut inside an emoji) is scored, with U+FFFD in its place
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_bytes(b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "abc \\ud800 def \\ud83d\\ude00"}\n')
    capsys.readouterr()
    assert main(["score", "--router", "random", "--input", str(surrogate), "--output", str(tmp_path / "s.jsonl")]) == 0
    assert [record["id"] for record in iter_records(tmp_path / "s.jsonl", scores=False)] == ["a", "b"]
    assert "surrogate.jsonl: 1 prompt(s) held a lone surrogate escape" in capsys.readouterr().err
    assert [record["prompt"] for record in iter_records(surrogate)] == ["x", "abc \ufffd def \U0001f600"]
    assert "surrogate" not in capsys.readouterr().err  # said once per file
    dev_only = tmp_path / "dev.jsonl"
    dev_only.write_bytes(line)
    out = str(tmp_path / "mf")
    assert "no 'train' record" in _said(["train", "mf", "--data", str(dev_only), "--out", out], capsys)
    (tmp_path / "feb").mkdir()
    (tmp_path / "feb" / "dev.jsonl").write_bytes(line)
    said = _said(["train", "mf", "--data", str(dev_only), str(tmp_path / "feb" / "dev.jsonl"), "--out", out], capsys)
    assert "two data files have one name" in said
    prompt_log = tmp_path / "log.jsonl"  # scores that are not 0-1 outcomes: score and calibrate read prompts only
    prompt_log.write_bytes(  # a byte-order mark, as Windows editors save
        b'\xef\xbb\xbf{"id": "a", "prompt": "x", "scores": null}\n{"id": "b", "prompt": "y", "scores": {"stars": 7}}\n'
    )
    assert main(["score", "--router", "random", "--input", str(prompt_log), "--output", str(tmp_path / "s.jsonl")]) == 0
    assert main(["score", "--router", "random", "--input", str(prompt_log), "--output", str(tmp_path / "s.jsonl.gz")]) == 0
    written = [(record["id"], record["score"]) for record in iter_records(tmp_path / "s.jsonl.gz", scores=False)]
    assert [record_id for record_id, _ in written] == ["a", "b"] and all(0 <= score <= 1 for _, score in written)
    assert main(["calibrate", "--router", "random", "--data", str(prompt_log), "--split", "all", "--strong-fraction", "0.5"]) == 0


def test_a_retrained_checkpoint_takes_the_old_ones_place_and_a_failed_run_leaves_it(
    data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from routers.checkpoint import staged_checkpoint

    out = tmp_path / "sw_ranking"
    train = ["train", "sw_ranking", "--data", str(data_slice), "--out", str(out)]
    assert main(train) == 0
    (out / "calibration.json").write_text('{"router": "sw_ranking", "thresholds": {"0.3": 0.9}}')  # the old weights'
    (out / "NOTES.md").write_text("mine")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(RuntimeError), staged_checkpoint(out) as staging:  # a run that stops half-way
        (staging / "neighbours.npz").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    (out / ".training-999999").mkdir()  # what a killed run leaves
    (out / ".training-1").mkdir()  # a live run's (process 1 runs)
    assert main(train) == 0
    assert sorted(path.name for path in out.iterdir()) == [".training-1", "NOTES.md", "neighbours.npz", "router.json"]
    (out / ".training-1").rmdir()
    assert json.loads((out / "router.json").read_text())["command"].endswith(f"--out {out}")
    assert load_router("sw_ranking", RouterOptions(checkpoint_dir=tmp_path, device="cpu")).score(["What is 2 + 2?"])
    monkeypatch.chdir(out)  # the folder itself, as "."
    assert main([*train[:-1], "."]) == 0 and (out / "router.json").is_file() and (out / "NOTES.md").read_text() == "mine"


def test_a_feature_constant_in_training_keeps_its_scale_and_a_clip_bounds_both_ways() -> None:
    from routers.features import Standardizer

    training = np.array([[0.0, 1.0], [0.0, 3.0], [0.0, 5.0]], dtype=np.float32)  # no prompt had the first feature
    standardize = Standardizer.fit(training)
    later = standardize(np.array([[2.0, 3.0]], dtype=np.float32))
    assert later[0].tolist() == pytest.approx([2.0, 0.0], abs=1e-3)  # not 2e6 standard deviations out
    clipped = Standardizer.fit(training, clip=1.5)(np.array([[2.0, 30.0], [-2.0, 3.0]], dtype=np.float32))
    assert clipped.ravel().tolist() == pytest.approx([1.5, 1.5, -1.5, 0.0], abs=1e-3)  # limited both ways, inside untouched
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive number"):
            Standardizer.fit(training, clip=bad)


def test_mf_scores_a_feature_beyond_its_clip_as_at_the_clip(data_slice: Path, tmp_path: Path) -> None:
    """MiniLM is uncased, so a prompt in capitals differs from its title-case twin only in the share
    of upper-case letters, far above training's in both: with ``--feature-clip`` (kept in the
    checkpoint, latent model and neighbour table) the two score the same."""
    twins = ["What Is The Sum Of Two And Two?", "WHAT IS THE SUM OF TWO AND TWO?"]
    scores = {}
    for clip in (0, 1):
        out = tmp_path / f"clip-{clip}" / "mf"
        train = ["train", "mf", "--data", str(data_slice), "--out", str(out), "--epochs", "2"]
        assert main([*train, "--feature-clip", str(clip)]) == 0
        scores[clip] = load_router("mf", RouterOptions(checkpoint_dir=out.parent, device="cpu")).score(twins)
    assert scores[0][0] != pytest.approx(scores[0][1], abs=1e-6)  # without a limit the capitals move the score
    assert scores[1][0] == pytest.approx(scores[1][1], abs=1e-6)


def test_an_mf_manifest_from_another_run_is_refused_not_mis_scored(tmp_path: Path) -> None:
    import shutil

    checkpoint = tmp_path / "mf"
    shutil.copytree(CHECKPOINT_ROOT / "mf", checkpoint)
    manifest = json.loads((checkpoint / "router.json").read_text())
    manifest["models"] = manifest["models"][:-1]  # one model fewer than the weights hold
    (checkpoint / "router.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="weights do not fit router.json"):
        load_router("mf", RouterOptions(checkpoint_dir=tmp_path, device="cpu"))


def _records_with_a_format_failure(path: Path) -> Path:
    """Three task categories of 50 records where ``big`` beats ``small`` and ``tiny`` loses
    everywhere, except algebra, where ``big`` scores 0: its answers were not parsed there."""
    topics = {
        "algebra": "Solve for x: {a}x + {b} = {c}. Give x as a fraction.",
        "geography": "Which river flows through city number {a} of region {b}?",
        "biology": "Name the organelle that does task {a} in cell type {b}.",
    }
    with path.open("w", encoding="utf-8") as lines:
        for category, template in topics.items():
            for number in range(50):
                prompt = template.format(a=number + 2, b=3 * number + 1, c=7 * number + 5)
                big = 0.0 if category == "algebra" else float(number % 5 != 0)
                scores = {"big": big, "small": float(number % 2 == 0), "tiny": float(number % 10 == 0)}
                record = {"id": f"{category}/{number}", "prompt": prompt, "category": category, "split": "train"}
                lines.write(json.dumps({**record, "scores": scores}) + "\n")
    return path


def test_a_whole_category_of_unparsed_answers_is_found_and_a_weak_model_is_not(tmp_path: Path) -> None:
    records = list(iter_records(_records_with_a_format_failure(tmp_path / "records.jsonl")))
    assert format_failures(records) == {("algebra", "big")}  # tiny is weak everywhere: its scores stand
    assert format_failures([{**record, "category": None} for record in records]) == set()  # no categories: nothing judged


def test_mf_can_leave_format_failures_out_and_says_which_it_dropped(tmp_path: Path) -> None:
    data = _records_with_a_format_failure(tmp_path / "failure.jsonl")
    out = tmp_path / "mf"
    command = ["train", "mf", "--data", str(data), "--out", str(out), "--epochs", "1"]
    assert main([*command, "--no-drop-format-failures"]) == 0
    assert json.loads((out / "router.json").read_text())["comparisons"] == 50 * 3 * 3  # every score counts
    assert main(command) == 0  # the default leaves them out
    manifest = json.loads((out / "router.json").read_text())
    assert manifest["format_failures"] == {"failure": [["algebra", "big"]]}
    assert manifest["comparisons"] == 50 * 3 + 50 * 3 + 50 * 1  # algebra compares only small and tiny
    assert manifest["neighbours"]["prompts"] == 150  # the scored pair's own outcomes stay in its neighbour table


def test_a_prompt_of_blank_lines_is_featurised_without_hanging() -> None:
    """A megabyte of whitespace lines (a prompt to ``routegate score``, or a gateway with a large
    ROUTEGATE_MAX_ROUTER_CHARS): the answer-option search took hours, quadratic in the run."""
    code = (
        "from routers.features import FEATURE_NAMES, structural_features as f; "
        "values = f('A. yes\\nB) no\\n' + '    \\n' * 250_000 + 'The end.'); print(values[FEATURE_NAMES.index('option_lines')])"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "2.0", run.stderr
