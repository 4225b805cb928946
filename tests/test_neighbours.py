"""The neighbour lookup behind sw_ranking and mf's pair term: outcomes on similar training prompts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from routers.checkpoint import CheckpointError, UnscoredPairError
from routers.embedding import encode
from routers.features import feature_matrix
from routers.model_names import normal_form
from routers.neighbours import FEATURE_WEIGHT, RIDGE, TABLE, TAU, NeighbourTable, PairNeighbours, score_table
from routers.registry import RouterOptions, load_router, load_router_for_pair
from server.cli import main
from tests.router_fixtures import STRONG, WEAK

OTHER = "other-model"
MATH = "Solve for x: {n}x + 7 = {m}. Show each algebra step and give x as a fraction."
CHAT = "Hi there! Could you tell me a fun fact about {animal} to share with my friends?"
ANIMALS = ["otters", "owls", "koalas", "dolphins", "foxes", "parrots", "hedgehogs", "penguins", "lemurs", "bats"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("routers.embedding.CACHE_DIR", tmp_path_factory.getbasetemp() / "embedding-cache")


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The strong model wins every algebra prompt and ties every chat prompt; OTHER is scored only
    beside the weak model, on chat prompts of their own."""
    rows = []
    for number in range(10):
        rows.append(
            {"id": f"m{number}", "prompt": MATH.format(n=number + 2, m=3 * number + 11), "scores": {STRONG: 1.0, WEAK: 0.0}}
        )
        rows.append({"id": f"c{number}", "prompt": CHAT.format(animal=ANIMALS[number]), "scores": {STRONG: 1.0, WEAK: 1.0}})
        rows.append(
            {"id": f"o{number}", "prompt": f"Say hello to {ANIMALS[number]} #{number}.", "scores": {WEAK: 0.0, OTHER: 1.0}}
        )
    path = tmp_path_factory.mktemp("neighbours") / "train.jsonl"
    path.write_text("".join(json.dumps({**row, "split": "train"}) + "\n" for row in rows))
    return path


def _train(router: str, records: Path, out: Path, *options: str) -> Path:
    assert main(["train", router, "--data", str(records), "--out", str(out / router), *options]) == 0
    return out


def test_sw_ranking_scores_a_pair_by_its_outcomes_on_the_most_similar_prompts(records: Path, tmp_path: Path) -> None:
    router = load_router("sw_ranking", RouterOptions(checkpoint_dir=_train("sw_ranking", records, tmp_path), device="cpu"))
    algebra, chat = router.score(["Solve for x: 5x + 7 = 40. Show each algebra step.", CHAT.format(animal="wombats")])
    # the pair's overall rate: outcome 1 on algebra, 0.5 (a tie) on chat -> 0.75
    assert algebra > 0.75 > chat


def test_a_pair_never_scored_together_gets_the_default_pair_from_sw_ranking_and_the_latent_model_from_mf(
    records: Path, tmp_path: Path
) -> None:
    checkpoints = _train("sw_ranking", records, tmp_path)
    with pytest.raises(UnscoredPairError, match="no training prompt on which both"):
        load_router("sw_ranking", RouterOptions(checkpoint_dir=checkpoints, device="cpu", strong_model=OTHER, weak_model=STRONG))
    router, pair = load_router_for_pair("sw_ranking", RouterOptions(checkpoint_dir=checkpoints, device="cpu"), OTHER, STRONG)
    assert (pair.strong, pair.weak) == (normal_form(STRONG), normal_form(WEAK))
    assert "never scored on the same prompt" in pair.why and "default pair" in pair.why
    assert len(router.score(["hello"])) == 1

    with_term = _train("mf", records, tmp_path / "with", "--epochs", "2", "--device", "cpu")
    without = tmp_path / "without"  # the same checkpoint with its neighbour step switched off
    shutil.copytree(with_term, without)
    (without / "mf" / "neighbours.npz").unlink()
    manifest = json.loads((without / "mf" / "router.json").read_text())
    assert manifest["neighbours"]["weight"] == 8.0
    (without / "mf" / "router.json").write_text(json.dumps({**manifest, "neighbours": {}}))
    prompts = [MATH.format(n=4, m=30), CHAT.format(animal="wombats")]

    def scores(directory: Path, strong: str, weak: str) -> list[float]:
        options = RouterOptions(checkpoint_dir=directory, device="cpu", strong_model=strong, weak_model=weak)
        return load_router("mf", options).score(prompts)

    # scored together in training: the neighbour term moves the score; never together: the latent model alone
    assert not np.allclose(scores(with_term, STRONG, WEAK), scores(without, STRONG, WEAK), atol=1e-3)
    assert scores(with_term, OTHER, STRONG) == pytest.approx(scores(without, OTHER, STRONG), abs=1e-5)
    # models the router does not know: the default pair stands in, without that pair's own outcomes
    stand_in, pair = load_router_for_pair("mf", RouterOptions(checkpoint_dir=with_term, device="cpu"), "new-a", "new-b")
    assert (pair.strong, pair.weak) == (normal_form(STRONG), normal_form(WEAK)) and "default pair" in pair.why
    assert stand_in.score(prompts) == pytest.approx(scores(without, STRONG, WEAK), abs=1e-5)


def test_a_prompt_is_one_row_per_file_with_each_models_mean() -> None:
    scored = score_table(
        {
            "judged": [
                {"prompt": "What is  2+2?", "scores": {"gpt4_1106_preview": 1.0, "b": 0.0}},
                {"prompt": "what is 2+2?", "scores": {"gpt-4-1106-preview": 0.0, "b": 0.0}},
                {"prompt": "What is 2+2? ", "scores": {"b": 1.0}},  # one model rated (say, a user's thumbs-up)
            ],
            "graded": [{"prompt": "What is 2+2?", "scores": {"c": 1.0, "gpt-4-1106-preview": 0.0}}],
        }
    )
    prompts, models, table = scored.prompts, scored.models, scored.scores
    assert prompts == ["What is  2+2?", "What is 2+2?"]  # the same question in two files: two rows
    assert models == ["b", "c", "gpt-4-1106-preview"]
    assert not scored.failed.any()
    # names normalised, repeats averaged; the one-model rating left out (b would have 1/3 and "win" the tie)
    assert table[0, 0] == 0.0 and np.isnan(table[0, 1]) and table[0, 2] == 0.5
    assert np.isnan(table[1, 0]) and table[1, 1] == 1.0 and table[1, 2] == 0.0  # never compared with b


def test_a_checkpoint_without_its_table_asks_to_be_retrained(tmp_path: Path) -> None:
    (tmp_path / "sw_ranking").mkdir()
    (tmp_path / "sw_ranking" / "router.json").write_text(
        json.dumps({"router": "sw_ranking", "models": [STRONG, WEAK], "tau": 10.0, "ridge": 0.05})
    )
    with pytest.raises(CheckpointError, match="retrain"):
        load_router("sw_ranking", RouterOptions(checkpoint_dir=tmp_path, device="cpu"))


def _quiz(topic: str, number: int) -> str:
    return f"Question {number} on {topic}: which choice is right?\nA. {number}\nB. {number + 1}\nC. {number + 2}\nD. {number + 3}"


FOURTH = "fourth-model"


def _format_records() -> dict[str, list[dict]]:
    """A quiz file (answer options) where the strong model's algebra answers failed to parse (0
    where the others score 1), after rows the pair never shared; an essay file (free-form) where
    the weak model's poems failed. FOURTH is scored beside the strong model on the failed rows only."""
    quiz = [{"prompt": f"Say hello to {ANIMALS[n]} #{n}.", "scores": {WEAK: 0.0, OTHER: 1.0}} for n in range(10)]
    essays = []
    for number in range(40):
        algebra = _quiz(f"solving the equation {number}x + 7 = {3 * number + 11} for x", number)
        history = _quiz(f"the history of the {ANIMALS[number % 10]} trade in the year {1500 + number}", number)
        quiz.append({"prompt": algebra, "category": "algebra", "scores": {STRONG: 0.0, WEAK: 1.0, OTHER: 1.0, FOURTH: 1.0}})
        quiz.append({"prompt": history, "category": "history", "scores": {STRONG: 1.0, WEAK: float(number % 2), OTHER: 1.0}})
        poem = f"Write a short poem about {ANIMALS[number % 10]} in the rain, number {number}."
        letter = f"Write a short letter to a friend about your {ANIMALS[number % 10]}, number {number}."
        essays.append({"prompt": poem, "category": "poems", "scores": {STRONG: 1.0, WEAK: 0.0, OTHER: 1.0}})
        essays.append({"prompt": letter, "category": "letters", "scores": {STRONG: 1.0, WEAK: 1.0, OTHER: 1.0}})
    return {"quiz": quiz, "essays": essays}


def test_a_format_failure_counts_only_for_prompts_in_its_format(tmp_path: Path) -> None:
    """A failed score's outcome counts for prompts in its own prompt's format, in the step and in
    the pair's overall rate; a table of an earlier release marks none."""
    records = _format_records()
    table = NeighbourTable.build(records, dims=16, feature_weight=FEATURE_WEIGHT, device="cpu")
    strong, weak = table.models.index(normal_form(STRONG)), table.models.index(normal_form(WEAK))
    assert table.failed.sum() == 80 and table.failed[:, strong].sum() == 40 and table.failed[:, weak].sum() == 40
    assert table.multiple_choice.tolist() == [False] * 10 + [True] * 80 + [False] * 80

    free_algebra = "Solve the equation 5x + 7 = 40 for x and explain each step."
    quiz_algebra = _quiz("solving the equation 5x + 7 = 40 for x", 5)
    free_poem = "Write a short poem about owls in the rain, number 7."
    quiz_poem = _quiz("a short poem about owls in the rain", 7)
    prompts = [free_algebra, quiz_algebra, free_poem, quiz_poem]
    embeddings, features = encode(prompts, "cpu"), feature_matrix(prompts)

    def pair(loaded: NeighbourTable, weak_model: str = WEAK) -> PairNeighbours:
        found = loaded.pair(STRONG, weak_model, TAU, RIDGE)
        assert found is not None
        return found

    table.save(tmp_path)
    saved = pair(NeighbourTable.load(tmp_path))
    margins = saved.margins(embeddings, features)
    assert margins[1] < 0  # a quiz question like the failed ones: the quiz file's verdict holds
    assert margins[0] > 0  # asked freely: only outcomes the strong model won or tied count

    # the overall rate each format starts from leaves out the other format's failed outcomes
    outcome = {"algebra": 0.0, "history": 0.75, "poems": 1.0, "letters": 0.5}  # mean of (1 + s_strong - s_weak) / 2
    free_rate = (outcome["history"] + outcome["poems"] + outcome["letters"]) / 3
    quiz_rate = (outcome["algebra"] + outcome["history"] + outcome["letters"]) / 3
    rates = np.array([free_rate, quiz_rate, free_rate, quiz_rate])
    assert margins - saved.steps(embeddings, features) == pytest.approx(np.log(rates / (1 - rates)), abs=1e-4)

    # a pair whose only shared rows failed in the quiz format: no step at all for a free-form prompt
    assert pair(NeighbourTable.load(tmp_path), FOURTH).steps(embeddings, features)[0] == 0.0

    with np.load(tmp_path / TABLE) as stored:  # a table of an earlier release marks no failures
        np.savez(tmp_path / TABLE, **{key: stored[key] for key in stored.files if key not in ("failed_cells", "multiple_choice")})
    old = pair(NeighbourTable.load(tmp_path)).margins(embeddings, features)
    assert old[0] < margins[0] - 0.2  # the failed algebra outcomes count for the free-form question again
    assert old[3] > margins[3] + 0.05  # and the failed poems (won by the strong model) for the quiz question


def test_sw_ranking_judges_format_failures_on_every_record_of_a_file_not_its_sample(tmp_path: Path) -> None:
    path = tmp_path / "quiz.jsonl"
    rows = [{**record, "id": f"q{n}", "split": "train"} for n, record in enumerate(_format_records()["quiz"])]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # 60 of the 90 records: about 27 algebra questions, fewer than a category needs to be judged on its own
    _train("sw_ranking", path, tmp_path, "--limit", "60", "--dims", "16")
    table = NeighbourTable.load(tmp_path / "sw_ranking")
    strong, fourth = table.models.index(normal_form(STRONG)), table.models.index(normal_form(FOURTH))
    algebra = ~np.isnan(table.scores[:, fourth])  # FOURTH is scored on the algebra questions only
    assert 0 < algebra.sum() < 40
    assert table.failed[:, strong].tolist() == algebra.tolist() and table.failed.sum() == algebra.sum()


def test_sw_ranking_skips_a_data_file_that_scores_one_model_per_record(
    records: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rated = tmp_path / "rated.jsonl"  # a feedback export of rated answers: one model per record
    rated.write_text(json.dumps({"id": "r0", "prompt": "Tell me a joke.", "scores": {WEAK: 1.0}, "split": "train"}) + "\n")
    out = tmp_path / "sw_ranking"
    assert main(["train", "sw_ranking", "--data", str(records), str(rated), "--out", str(out)]) == 0
    assert f"skipping {rated}" in capsys.readouterr().out
    manifest = json.loads((out / "router.json").read_text())
    assert manifest["data_files"] == [records.name]
    assert main(["train", "sw_ranking", "--data", str(rated), "--out", str(out)]) == 2  # nothing to learn from: a named error
