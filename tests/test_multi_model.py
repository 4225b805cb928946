"""Routing among several models: the policy, the price table, the evaluation command and the
``ROUTEGATE_MODELS`` setting."""

from __future__ import annotations

import numpy as np
import pytest

from routers.calibration import threshold_for_share
from routers.evaluation.multi_model import quality_at_cost
from routers.multi_model import (
    beaten_from_logits,
    beaten_from_scores,
    change_points,
    choose,
    cost_share_curve,
    most_capable,
    sweep,
    threshold_for_cost_share,
)
from routers.registry import CHECKPOINT_ROOT as REPO_CHECKPOINTS


def test_two_models_is_the_two_tier_rule():
    """weak (cheap) and strong (most capable): strong exactly when the pair score >= t."""
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.random(500), [0.0, 0.25, 0.5, 0.5, 1.0]])
    beaten = np.stack([scores, np.full(len(scores), 0.5)], axis=1)  # columns: weak, strong
    for threshold in (0.0, 0.1, 0.25, 0.5, 0.7, 1.0, float(scores[3])):
        chosen = choose(beaten, prices=[0.2, 10.0], best=1, threshold=threshold)
        assert (chosen == 1).tolist() == (scores >= threshold).tolist()


def test_two_models_from_mf_deltas_match_the_pair_score():
    """mf's latent pair score is sigmoid(delta_strong - delta_weak): the same as P(best beats weak)."""
    deltas = np.array([[0.3, 1.2], [2.0, -1.0], [0.0, 0.0]])  # columns: weak, strong
    beaten = beaten_from_logits(deltas, best=1)
    assert beaten[:, 0] == pytest.approx(1 / (1 + np.exp(-(deltas[:, 1] - deltas[:, 0]))))
    assert beaten[:, 1] == pytest.approx([0.5, 0.5, 0.5])
    assert choose(beaten, [1.0, 5.0], best=1, threshold=0.5).tolist() == [1, 0, 1]


def test_cheapest_acceptable_model_wins():
    # columns: mid (price 3), cheap (1), best (10), dearer-but-worse (20)
    beaten = np.array(
        [
            [0.2, 0.3, 0.5, 0.6],  # cheap is acceptable at t=0.4
            [0.2, 0.9, 0.5, 0.1],  # cheap is not, mid is
            [0.8, 0.9, 0.5, 0.1],  # neither: the most capable, never the dearer model
        ]
    )
    prices = [3.0, 1.0, 10.0, 20.0]
    assert choose(beaten, prices, best=2, threshold=0.4).tolist() == [1, 0, 2]
    assert choose(beaten, prices, best=2, threshold=1.01).tolist() == [1, 1, 1]
    assert choose(beaten, prices, best=2, threshold=0.0).tolist() == [2, 2, 2]


def test_most_capable_and_score_form():
    predicted = np.array([[0.9, 0.5, 0.1], [0.7, 0.9, 0.0]])
    assert most_capable(predicted) == 0
    beaten = beaten_from_scores(predicted, best=0)
    assert beaten == pytest.approx(np.array([[0.5, 0.7, 0.9], [0.5, 0.4, 0.85]]))


def test_sweep_runs_from_cheapest_to_all_best():
    rng = np.random.default_rng(1)
    beaten = rng.random((50, 4))
    beaten[:, 3] = 0.5
    prices = [1.0, 2.0, 4.0, 8.0]
    thresholds, choices = sweep(beaten, prices, best=3)
    assert (np.diff(thresholds) < 0).all()
    assert (choices[0] == 0).all() and (choices[-1] == 3).all()
    # each change point is a threshold, and the choice only ever moves to dearer models
    points = change_points(beaten, prices, 3)
    assert set(points) <= set(thresholds) and len(points) > 10
    for point in points:  # some prompt's choice changes just above each change point
        assert (choose(beaten, prices, 3, point) != choose(beaten, prices, 3, np.nextafter(point, 1.0))).any()
    assert (np.diff(choices, axis=0) >= 0).all()


def test_cost_share_of_two_models_is_the_strong_share():
    """With a free weak model, spending s of the all-strong cost is sending s of the calls to it."""
    rng = np.random.default_rng(2)
    scores = rng.random(200)
    beaten = np.stack([scores, np.full(200, 0.5)], axis=1)
    costs = np.tile([0.0, 1.0], (200, 1))
    for share in (0.0, 0.3, 0.5, 1.0):
        threshold = threshold_for_cost_share(beaten, costs, best=1, share=share)
        assert ((scores >= threshold) == (scores >= threshold_for_share(scores, share))).all()
        assert (scores >= threshold).mean() == pytest.approx(share)


def test_a_cost_target_steers_the_model_order_that_routing_uses():
    """Routing tries models by input plus output price; with prompt-heavy traffic the token-weighted
    costs order them the other way, and the threshold must be the one for the routing that runs."""
    from server.cost_targets import CostTargets

    prices = [(1.0, 0.8), (0.5, 1.5), (10.0, 30.0)]  # ladder order: 1.8, 2.0, 40 per 1M tokens
    targets = CostTargets(window=400, feedback_horizon=50, best=2, prices=prices, max_routes=4)
    rng = np.random.default_rng(5)
    beaten = rng.random((400, 3))
    beaten[:, 2] = 0.5
    targets.controller("mf", 0.2)  # the route opens when a request names it
    for row in beaten:
        targets.record("mf", 0.2, 0.2, tuple(row), (0.0, 0.0), (1000, 100))  # cost 0: no feedback to correct it
    unit = np.array(targets.unit_costs())
    assert unit[1] < unit[0]  # per request the second model is cheaper, though its price sum is higher
    for share in (0.1, 0.2, 0.5):  # 0.12 / 0.21 / 0.50 when the sweep ordered them by cost per request
        threshold = targets.threshold("mf", 0.2, share)
        chosen = choose(beaten, [sum(price) for price in prices], 2, threshold)
        assert unit[chosen].sum() / (unit[2] * 400) == pytest.approx(share, abs=0.002)


def test_a_cost_target_holds_when_the_long_requests_are_the_hard_ones():
    """Half the requests short and easy, half long (4,000 + 1,000 tokens) and hard: the long ones go
    to the most capable model and carry most of the cost, so it is the cost that must come to the
    share, not each request's own ratio averaged (that settled at 0.30 while spending 0.52)."""
    from server.cost_targets import CostTargets

    prices = [(0.15, 0.6), (0.9, 0.9), (2.5, 10.0)]
    targets = CostTargets(window=500, feedback_horizon=200, best=2, prices=prices, max_routes=4)
    targets.controller("mf", 0.3)
    rng = np.random.default_rng(0)
    spent = all_best = 0.0
    for number in range(6000):
        hard = rng.random() < 0.5
        tokens = (4000, 1000) if hard else (50, 50)
        below_best = np.clip(rng.normal(0.75 if hard else 0.3, 0.15, 2), 0, 1)
        beaten = (*below_best, 0.5)
        chosen = int(choose(np.array([beaten]), [sum(price) for price in prices], 2, targets.threshold("mf", 0.3, 0.3))[0])
        cost, best_cost = (sum(count * price for count, price in zip(tokens, prices[m], strict=True)) / 1e6 for m in (chosen, 2))
        targets.record("mf", 0.3, 0.3, beaten, (cost, best_cost), tokens)
        if number >= 3000:  # settled
            spent, all_best = spent + cost, all_best + best_cost
    assert spent / all_best == pytest.approx(0.3, abs=0.04)  # 0.325: the feedback leaks a fifth of the curve's error
    assert targets.realised_share("mf", 0.3) == pytest.approx(0.3, abs=0.04)  # what the metric reports


def test_the_cost_share_curve_is_what_routing_at_each_threshold_spends():
    """Each point of the curve is the spend of ``choose`` at that threshold, for any price order,
    ties in ``beaten`` and a most capable model anywhere in the order; between points it does not change."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        prompts, models = int(rng.integers(1, 30)), int(rng.integers(2, 6))
        best = int(rng.integers(0, models))
        beaten = rng.random((prompts, models)).round(int(rng.integers(1, 3)))  # one or two decimals: ties
        beaten[:, best] = 0.5
        costs = rng.random((prompts, models)) * np.arange(1, models + 1)
        prices = rng.permutation(models).astype(float)
        thresholds, spent = cost_share_curve(beaten, costs, best, prices)
        assert thresholds[0] <= 1.0 and thresholds[-1] == 0.0 and (np.diff(thresholds) < 0).all()
        for threshold, share in zip(thresholds, spent, strict=True):
            routed = costs[np.arange(prompts), choose(beaten, prices, best, threshold)].sum() / costs[:, best].sum()
            assert routed == pytest.approx(share)
        between = (thresholds[:-1] + thresholds[1:]) / 2  # a threshold between two points spends as the higher one
        strictly = (between < thresholds[:-1]) & (between > thresholds[1:])  # not two neighbouring floats
        for threshold, share in zip(between[strictly], spent[:-1][strictly], strict=True):
            routed = costs[np.arange(prompts), choose(beaten, prices, best, threshold)].sum() / costs[:, best].sum()
            assert routed == pytest.approx(share)


def test_cost_share_spends_about_the_share():
    rng = np.random.default_rng(3)
    beaten = rng.random((400, 3))
    beaten[:, 2] = 0.5
    costs = np.tile([1.0, 3.0, 10.0], (400, 1))
    for share in (0.2, 0.5, 0.8):
        threshold = threshold_for_cost_share(beaten, costs, best=2, share=share)
        chosen = choose(beaten, costs.mean(axis=0), 2, threshold)
        assert costs[np.arange(400), chosen].sum() / 4000 == pytest.approx(share, abs=0.01)
    with pytest.raises(ValueError):
        threshold_for_cost_share(beaten, costs, best=2, share=1.5)


def test_list_prices_by_any_spelling():
    from routers.evaluation.prices import list_price

    assert list_price("gpt-4o-mini-2024-07-18") == list_price("gpt-4o-mini")
    assert (list_price("gpt-4o-mini").input, list_price("gpt-4o-mini").output) == (0.15, 0.60)
    assert list_price("Llama-3.1-405B-Inst-fp8@together") == list_price("Llama-3.1-405B-Inst@hyperbolic")
    assert list_price("meta-llama/Llama-3.1-8B-Instruct") == list_price("Meta-Llama-3.1-8B-Instruct")
    assert list_price("Yi-1.5-34B-Chat").source == "size tier"
    assert list_price("no-such-model") is None


def test_price_option_parsing():
    from routers.evaluation.prices import parse_prices

    prices = parse_prices("a=1/2, org/b=0.5")
    assert (prices["a"].input, prices["a"].output) == (1.0, 2.0)
    assert (prices["org/b"].input, prices["org/b"].output) == (0.5, 0.5)
    assert prices["a"].cost(1_000_000, 500_000) == pytest.approx(2.0)
    for bad in ("a=x/1", "=1/2", "a=-1/2", "a=nan/1", "a=1/inf"):
        with pytest.raises(ValueError, match="MODEL=INPUT/OUTPUT"):
            parse_prices(bad)


# --- routegate eval --models on a small synthetic file -------------------------------------------

KINDS = {  # prompt kind -> the model that gets it right
    "cheap": ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."],
    "mid": ["Write a short poem about the number {a} and the colour {b}.", "Compose a haiku mentioning {a} birds and {b} trees."],
    "best": ["Prove that for every integer n > {a}, n^2 + {b} n is even or odd, and justify each step rigorously."],
}


def _synthetic(path, with_cost: bool = False):  # type: ignore[no-untyped-def]
    import json

    records = []
    for number in range(90):
        kind = list(KINDS)[number % 3]
        template = KINDS[kind][number % len(KINDS[kind])]
        scores = {"cheap-model": 0.0, "mid-model": 0.0, "best-model": 0.0}
        scores[f"{kind}-model"] = 1.0
        scores["best-model"] = max(scores["best-model"], 1.0 if kind == "mid" and number % 2 else 0.0)
        record = {"id": str(number), "prompt": template.format(a=number, b=number * 7 % 13), "scores": scores}
        record["split"] = "dev" if number % 5 == 0 else "train"
        if with_cost:
            record["meta"] = {"cost": {"cheap-model": 0.001, "mid-model": 0.002, "best-model": 0.01}}
        records.append(record)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return records


@pytest.fixture()
def _private_cache(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Embeddings go to a temporary cache, not the user's ~/.cache."""
    monkeypatch.setattr("routers.embedding.CACHE_DIR", tmp_path / "embedding-cache")


def _table_row(report: str, first_cell: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {first_cell} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.mark.usefixtures("_private_cache")
def test_eval_models_prints_costs_baselines_and_curves(tmp_path, capsys):  # type: ignore[no-untyped-def]
    from server.cli import main

    data = tmp_path / "synthetic.jsonl"
    records = _synthetic(data)
    dev = [record for record in records if record["split"] == "dev"]
    checkpoints = tmp_path / "checkpoints"
    assert main(["train", "mf", "--data", str(data), "--out", str(checkpoints / "mf"), "--epochs", "2"]) == 0
    capsys.readouterr()
    prices = "cheap-model=1/1,mid-model=2/2,best-model=10/30"
    plot = tmp_path / "curve.png"
    command = [
        "eval",
        "--router",
        "mf",
        "--checkpoint-dir",
        str(checkpoints),
        "--data",
        str(data),
        "--models",
        "cheap-model,mid-model,best-model",
    ]
    assert main([*command, "--prices", prices, "--output-tokens", "100", "--knn", "3", "--plot", str(plot)]) == 0
    report = capsys.readouterr().out
    assert f"{len(dev)} prompts, 3 models" in report

    # cost of a fixed model: (prompt chars / 4 x input price + 100 x output price) per 1M tokens
    input_tokens = np.mean([len(record["prompt"]) / 4 for record in dev])
    assert float(_table_row(report, "best-model")[1]) == pytest.approx(1000 * (input_tokens * 10 + 100 * 30) / 1e6, abs=1e-4)
    assert float(_table_row(report, "cheap-model")[2]) == pytest.approx(
        np.mean([r["scores"]["cheap-model"] for r in dev]), abs=1e-4
    )
    assert float(_table_row(report, "oracle")[2]) == 1.0

    # kNN finds prompts of the same kind: it picks the right model for every prompt
    knn = _table_row(report, "kNN (k=3)")
    assert float(knn[1]) == 1.0
    best = _table_row(report, "best fixed model")
    best_column = ["cheap-model", "mid-model", "best-model"].index(best[4])
    quality = np.array([[r["scores"][m] for m in ("cheap-model", "mid-model", "best-model")] for r in dev])
    random_mean, oracle = quality.mean(axis=1).mean(), quality.max(axis=1).mean()
    assert float(best[1]) == pytest.approx((quality[:, best_column].mean() - random_mean) / (oracle - random_mean), abs=1e-3)
    assert float(knn[2]) == 1.0  # at the best fixed model's cost, kNN routing gets every prompt right
    mf = _table_row(report, "mf")
    assert -1.0 <= float(mf[1]) <= 1.0 and mf[4] in ("cheap-model", "mid-model", "best-model")
    # mf's gap closed is that of the model its per-model logits rank first on each dev prompt
    from routers.evaluation.multi_model import load_model_set, router_predictions
    from routers.lookahead.evaluation import gap_closed

    data_set = load_model_set(data, "cheap-model,mid-model,best-model", prices, 100, "dev")
    logits = router_predictions("mf", data_set, checkpoints, "cpu")
    assert float(mf[1]) == pytest.approx(gap_closed(logits.argmax(axis=1), data_set.quality), abs=1e-3), mf
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("_private_cache")
def test_eval_models_refuses_pair_routers_unknown_models_and_unpriced_models(tmp_path):  # type: ignore[no-untyped-def]
    from server.cli import main

    data = tmp_path / "synthetic.jsonl"
    _synthetic(data)
    command = ["eval", "--data", str(data), "--prices", "cheap-model=1/1,mid-model=2/2,best-model=10/30"]
    with pytest.raises(SystemExit, match=r"\[.bert.\] score only a strong/weak pair"):
        main([*command, "--router", "bert", "--models", "cheap-model,mid-model,best-model"])
    with pytest.raises(SystemExit, match="'other-model' is not scored"):
        main([*command, "--router", "mf", "--models", "cheap-model,other-model"])
    with pytest.raises(SystemExit, match="--prices names 'other-model'"):
        main([*command, "--router", "mf", "--models", "cheap-model,mid-model", "--prices", "other-model=1/1"])
    with pytest.raises(SystemExit, match=r"no list price for \['mid-model'\]"):
        main(["eval", "--data", str(data), "--router", "mf", "--models", "cheap-model,mid-model", "--prices", "cheap-model=1/1"])


@pytest.mark.usefixtures("_private_cache")
@pytest.mark.parametrize("manifest", ["{not json", '{"models": ["cheap-model", "mid-model", "best-model"]}'])
def test_eval_models_with_a_broken_checkpoint_is_a_one_line_error(tmp_path, manifest):  # type: ignore[no-untyped-def]
    """A manifest that is not JSON, or one without the weights beside it: the router is named, no traceback."""
    from server.cli import main

    data = tmp_path / "synthetic.jsonl"
    _synthetic(data)
    (tmp_path / "checkpoints" / "mf").mkdir(parents=True)
    (tmp_path / "checkpoints" / "mf" / "router.json").write_text(manifest)
    command = ["eval", "--data", str(data), "--router", "mf", "--checkpoint-dir", str(tmp_path / "checkpoints")]
    prices = "cheap-model=1/1,mid-model=2/2,best-model=10/30"
    with pytest.raises(SystemExit, match="cannot load router 'mf'"):
        main([*command, "--models", "cheap-model,mid-model,best-model", "--prices", prices])


def test_file_costs_win_over_list_prices(tmp_path):  # type: ignore[no-untyped-def]
    from routers.evaluation.multi_model import load_model_set

    data = tmp_path / "priced.jsonl"
    _synthetic(data, with_cost=True)
    loaded = load_model_set(data, "best-model,cheap-model", "", None, "dev")
    assert loaded.cost_source == "meta.cost of the file"
    assert loaded.costs[0].tolist() == [0.01, 0.001]
    for prices, output_tokens in (("cheap-model=1/1", None), ("", 100)):  # the file prices them: refused, not ignored
        with pytest.raises(SystemExit, match="meta.cost, which prices them: leave out --prices and --output-tokens"):
            load_model_set(data, "best-model,cheap-model", prices, output_tokens, "dev")


# --- ROUTEGATE_MODELS ------------------------------------------------------------------------------

THREE = [
    {
        "name": "small",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key": "sk-small-secret",
        "model": "gpt-4o-mini",
        "input_price": 0.15,
        "output_price": 0.6,
    },
    {
        "name": "big",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "gpt-4o",
        "input_price": 2.5,
        "output_price": 10,
        "router_model": "gpt-4o-2024-08-06",
    },
    {
        "name": "llama",
        "base_url": "http://127.0.0.1:8/v1/",
        "model": "meta-llama/Llama-3.1-70B-Instruct",
        "input_price": 0.88,
        "output_price": 0.88,
    },
]


def _settings(monkeypatch, **env):  # type: ignore[no-untyped-def]
    import json

    from server.settings import load_settings

    for name in [name for name in __import__("os").environ if name.startswith("ROUTEGATE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(f"ROUTEGATE_{name}", value if isinstance(value, str) else json.dumps(value))
    return load_settings()


def test_models_setting_from_env_json(monkeypatch):  # type: ignore[no-untyped-def]
    from server.model_list import model_ladder

    settings = _settings(monkeypatch, MODELS=THREE)
    assert [entry.name for entry in settings.models] == ["small", "big", "llama"]
    assert settings.models[0].api_key.get_secret_value() == "sk-small-secret"
    assert settings.models[1].router_model == "gpt-4o-2024-08-06" and settings.models[0].router_model is None
    assert settings.models[2].base_url == "http://127.0.0.1:8/v1"
    assert [entry.name for entry in model_ladder(settings)] == ["small", "llama", "big"]  # cheapest first
    assert "sk-small-secret" not in repr(settings) and "sk-small-secret" not in str(settings.model_dump())


def test_models_setting_from_yaml(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    import yaml

    from server.settings import load_settings

    for name in [name for name in __import__("os").environ if name.startswith("ROUTEGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ROUTEGATE_CONFIG", "")  # load_settings(FILE) sets it; undone after the test
    config = tmp_path / "routegate.yaml"
    config.write_text(yaml.safe_dump({"models": THREE[1:]}))
    assert [entry.model for entry in load_settings(config).models] == ["gpt-4o", "meta-llama/Llama-3.1-70B-Instruct"]


def test_two_tier_shorthand_is_a_ladder_of_two(monkeypatch):  # type: ignore[no-untyped-def]
    from server.model_list import model_ladder

    settings = _settings(
        monkeypatch, STRONG__MODEL="gpt-4o", WEAK__MODEL="gpt-4o-mini", ROUTER_WEAK_MODEL="gpt-4o-mini-2024-07-18"
    )
    assert settings.models == []
    ladder = model_ladder(settings)
    assert [(entry.name, entry.model) for entry in ladder] == [("weak", "gpt-4o-mini"), ("strong", "gpt-4o")]
    assert ladder[0].router_model == "gpt-4o-mini-2024-07-18" and ladder[1].router_model is None
    assert (ladder[1].input_price, ladder[1].output_price) == (2.5, 10.0)


def test_a_target_feedback_horizon_under_ten_is_refused(monkeypatch):  # type: ignore[no-untyped-def]
    from server.settings import SettingsError

    with pytest.raises(SettingsError, match="ROUTEGATE_TARGET_FEEDBACK_HORIZON"):  # 1-3 overshoot the share
        _settings(monkeypatch, TARGET_FEEDBACK_HORIZON="3")
    assert _settings(monkeypatch, TARGET_FEEDBACK_HORIZON="10").target_feedback_horizon == 10


def test_an_unreadable_redis_url_is_refused_without_its_password(monkeypatch):  # type: ignore[no-untyped-def]
    from server.settings import SettingsError

    with pytest.raises(SettingsError, match="percent-encode") as error:
        _settings(monkeypatch, REDIS_URL="redis://:Zm9v/YmFy@127.0.0.1:6379/0")  # a base64 password with a '/'
    assert "Zm9v" not in str(error.value) and "YmFy" not in str(error.value)
    with pytest.raises(SettingsError, match="percent-encode") as error:  # redis-py reads 123 as a port on localhost
        _settings(monkeypatch, REDIS_URL="redis://:123/abc@redis:6379/0")
    assert "123" not in str(error.value) and "abc" not in str(error.value)
    with pytest.raises(SettingsError, match="not a database number"):  # redis-py would quietly use database 0
        _settings(monkeypatch, REDIS_URL="redis://:secret@redis:6379/notadb")
    for readable in (
        "redis://:secret@redis:6379/2",
        "redis://:secret@redis:6379/0/",
        "redis://:secret@redis:6379/%32",
        "redis://redis",
    ):
        assert _settings(monkeypatch, REDIS_URL=readable).redis_url is not None


@pytest.mark.parametrize("password", ["Zm9v/YmFy", "Zm9v?YmFy", "Zm9v#YmFy", "ab/cd"])
def test_an_unreadable_feedback_db_url_is_refused_without_its_password(monkeypatch, password):  # type: ignore[no-untyped-def]
    from server.settings import SettingsError

    with pytest.raises(SettingsError, match="percent-encode") as error:
        _settings(monkeypatch, FEEDBACK_DB=f"postgresql://routegate:{password}@127.0.0.1:5432/feedback")
    assert not any(part in str(error.value) for part in password.replace("?", "/").replace("#", "/").split("/"))


@pytest.mark.parametrize(
    "models, message",
    [
        (THREE[:1], "at least two models"),
        ([THREE[0], {**THREE[1], "name": "SMALL"}], "'SMALL' appears twice"),
        ([THREE[0], {**THREE[1], "name": "router-mf-0.5"}], "reserved"),
        ([THREE[0], {**THREE[1], "name": "auto"}], "reserved"),
        ([THREE[0], {**THREE[1], "name": "none"}], "reserved"),  # the tier label of refused requests
        ([THREE[0], {**THREE[1], "name": THREE[0]["model"]}], "is the model of entry"),  # it would take that model's clients
        ([THREE[0], {**THREE[1], "name": "has space"}], "must be 1-64 letters"),
        ([THREE[0], {**THREE[1], "name": "newline\n"}], "must be 1-64 letters"),  # it would break a header
        ([THREE[0], {**THREE[1], "input_price": -1}], "greater than or equal to 0"),
        (
            [THREE[0], {key: value for key, value in THREE[1].items() if key != "output_price"}],
            r"ROUTEGATE_MODELS\[1\]\.output_price: Field required",  # not ..._MODELS__1__..., which no variable sets
        ),
        ([THREE[0], {**THREE[1], "router_model": " "}], "must not be empty"),
        ([THREE[0], {**THREE[1], "base_url": "ftp://x"}], "http:// or https://"),
        ([THREE[0], {**THREE[1], "colour": "blue"}], r"ROUTEGATE_MODELS\[1\]\.colour: not a routegate setting"),
        ([{**THREE[0], "name": f"m{number}"} for number in range(17)], "at most 16 models"),
    ],
)
def test_bad_model_lists_are_refused_by_name(monkeypatch, models, message):  # type: ignore[no-untyped-def]
    from server.settings import SettingsError

    with pytest.raises(SettingsError, match=message) as error:
        _settings(monkeypatch, MODELS=models)
    assert "ROUTEGATE_MODELS" in str(error.value) and "sk-small-secret" not in str(error.value)


def test_models_and_tiers_are_exclusive(monkeypatch):  # type: ignore[no-untyped-def]
    from server.settings import SettingsError

    with pytest.raises(SettingsError, match="either ROUTEGATE_MODELS or ROUTEGATE_STRONG"):
        _settings(monkeypatch, MODELS=THREE, STRONG__MODEL="gpt-4o")
    with pytest.raises(SettingsError, match="with ROUTEGATE_MODELS give an entry's router_model"):  # it would be ignored
        _settings(monkeypatch, MODELS=THREE, ROUTER_WEAK_MODEL="gpt-4o-mini-2024-07-18")


@pytest.mark.usefixtures("_private_cache")
def test_eval_models_with_the_shipped_lookahead_and_list_prices(tmp_path, capsys):  # type: ignore[no-untyped-def]
    """The lookahead router's per-candidate logits drive the table; prices come from the list."""
    import json

    from routers.evaluation.multi_model import load_model_set, router_predictions
    from routers.evaluation.prices import list_price
    from routers.lookahead.evaluation import gap_closed
    from routers.lookahead.router import LookaheadRouter
    from server.cli import main

    models = ["Llama-3.1-8B-Instruct", "gemma-2-9b-it", "internlm2_5-20b-chat"]
    records = []
    for number, templates in enumerate(list(KINDS.values()) * 4):
        scores = {model: float(index == number % 3) for index, model in enumerate(models)}
        prompt = templates[0].format(a=number, b=number + 1)
        records.append({"id": str(number), "prompt": prompt, "scores": scores, "split": "dev" if number % 2 else "train"})
    data = tmp_path / "candidates.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--router",
                "lookahead",
                "--data",
                str(data),
                "--models",
                ",".join(models),
                "--device",
                "cpu",
                "--plot",
                str(tmp_path / "p.png"),
            ]
        )
        == 0
    )
    report = capsys.readouterr().out

    dev = [record for record in records if record["split"] == "dev"]
    price = list_price("internlm2_5-20b-chat")
    cost = np.mean([price.cost(len(record["prompt"]) / 4, 256) for record in dev])
    assert float(_table_row(report, "internlm2_5-20b-chat")[1]) == pytest.approx(1000 * cost, abs=1e-4)
    router = LookaheadRouter.from_directory(REPO_CHECKPOINTS / "lookahead")
    candidates = [router.candidates.index(model) for model in models]
    logits = router.logits([record["prompt"] for record in dev], candidates)
    quality = np.array([[record["scores"][model] for model in models] for record in dev])
    assert float(_table_row(report, "lookahead")[1]) == pytest.approx(gap_closed(logits.argmax(axis=1), quality), abs=1e-3)

    # what --max-chars gives the router: the first characters of each prompt, as the gateway does
    data_set = load_model_set(data, ",".join(models), "", 256, "dev")
    cut = router.logits([record["prompt"][:5] for record in dev], candidates)
    assert not np.allclose(cut, logits, atol=1e-3)
    np.testing.assert_allclose(router_predictions("lookahead", data_set, REPO_CHECKPOINTS, "cpu", 5), cut, atol=1e-4)


def test_a_small_default_threshold_makes_a_model_name_that_resolves(monkeypatch):  # type: ignore[no-untyped-def]
    from server.ladder import Ladder
    from server.model_names import ModelNames

    settings = _settings(monkeypatch, THRESHOLD="0.00005")
    names = ModelNames(settings, ["mf"], Ladder.from_settings(settings))
    assert names.aliases["auto"] == "router-mf-0.00005"  # not router-mf-5e-05, which no route parses
    assert names.resolve("auto").threshold == 0.00005 and "router-mf-0.00005" in names.listed()


def test_a_sweep_point_at_the_budget_by_a_rounding_error_is_within_it():
    """A router that sends every prompt to the best fixed model spends its cost, computed as another
    mean of the same per-prompt costs that may round a last bit above it."""
    budget = 0.1 + 0.2  # 0.30000000000000004
    assert quality_at_cost(np.array([0.0, budget * (1 + 1e-15)]), np.array([0.5, 0.75]), budget) == 0.75
    assert np.isnan(quality_at_cost(np.array([budget * 1.01]), np.array([0.75]), budget))
