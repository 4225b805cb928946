"""The Lookahead router: input construction, masking curriculum, training on a tiny slice,
inference without responses, the shipped checkpoint and routing through the gateway."""

from __future__ import annotations

import math
import random
from itertools import pairwise
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from routers.data import load_records
from routers.lookahead.inputs import IGNORE, InputLayout, build_example, mask_ratio, normalise_scores
from routers.lookahead.model import LookaheadConfig, backbone_dir, collate, layout_for, load_checkpoint, new_net, save_checkpoint
from routers.lookahead.router import LookaheadRouter
from routers.lookahead.training import candidate_names, prepare_items, train
from routers.registry import CHECKPOINT_ROOT, RouterOptions, load_router
from tests.conftest import proxy_env, running_proxy
from tests.replay import data_dir

LAYOUT = InputLayout(cls_id=101, sep_id=102, base_id=1000, block_size=4, prompt_tokens=5)
SLICE = str(data_dir() / "lookahead-humaneval.jsonl.gz")
SHIPPED = CHECKPOINT_ROOT / "lookahead"
GPT4, MIXTRAL = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on the shared 2-core machine two threads spin-wait each other (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_inference_input_is_prompt_then_one_fully_masked_block_per_candidate() -> None:
    example = build_example(LAYOUT, [7, 8, 9, 10, 11, 12, 13], candidates=[2, 0])

    assert example.input_ids[:7] == [101, 7, 8, 9, 10, 11, 102]  # prompt cut to 5 tokens
    assert example.block_starts == [7, 11]
    assert example.input_ids[7:11] == [1008, 1009, 1010, 1011]  # candidate 2's reserved ids
    assert example.input_ids[11:] == [1000, 1001, 1002, 1003]  # candidate 0's
    assert example.token_type_ids == [0] * 7 + [1] * 8
    assert example.slot_ids == [-1] * 7 + [8, 9, 10, 11, 0, 1, 2, 3]
    assert example.labels == [IGNORE] * 15
    assert LAYOUT.length(7, 2) == len(example.input_ids)


def test_training_blocks_hold_responses_with_the_masked_share_labelled() -> None:
    responses = [[50, 51, 52, 53, 54, 55], [60, 61]]  # the first is cut to the block, the second is short
    example = build_example(LAYOUT, [7], [1, 3], responses, mask_ratio=0.5, rng=random.Random(3))

    first, second = slice(3, 7), slice(7, 11)
    masked = [i for i in range(3, 7) if example.labels[i] != IGNORE]
    assert len(masked) == 2  # ceil(0.5 * 4)
    for position in range(3, 7):
        slot = position - 3
        if position in masked:
            assert example.input_ids[position] == LAYOUT.model_id_token(1, slot)
            assert example.labels[position] == responses[0][slot]
        else:
            assert example.input_ids[position] == responses[0][slot]
    second_masked = [i for i in range(7, 11) if example.labels[i] != IGNORE]
    assert len(second_masked) == 1  # ceil(0.5 * 2); slots past the response stay unlabelled ids
    assert example.input_ids[second][2:] == [LAYOUT.model_id_token(3, 2), LAYOUT.model_id_token(3, 3)]
    assert example.labels[second][2:] == [IGNORE, IGNORE]
    assert example.labels[first] != [IGNORE] * 4


def test_fully_masked_training_input_equals_the_inference_input() -> None:
    responses = [[50, 51, 52, 53], [60, 61, 62, 63]]
    trained = build_example(LAYOUT, [7, 8], [0, 1], responses, mask_ratio=1.0)
    inferred = build_example(LAYOUT, [7, 8], [0, 1])

    assert trained.input_ids == inferred.input_ids
    assert [label for label in trained.labels if label != IGNORE] == [50, 51, 52, 53, 60, 61, 62, 63]


def test_masking_curriculum_rises_from_partly_to_fully_masked_and_stays() -> None:
    ratios = [mask_ratio(step, 100, start=0.25, full_at=0.7) for step in range(100)]

    assert ratios[0] == 0.25
    assert all(later >= earlier for earlier, later in pairwise(ratios))
    assert ratios[35] < 1.0
    assert ratios[70:] == [1.0] * 30
    for outside in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\]"):
            build_example(LAYOUT, [7], [0], [[5]], mask_ratio=outside)


def test_scores_are_normalised_per_prompt() -> None:
    assert normalise_scores([0.2, 0.6, 1.0]) == pytest.approx([0.0, 0.5, 1.0])
    assert normalise_scores([1.0, 1.0]) == [1.0, 1.0]  # a tie keeps the absolute quality
    assert normalise_scores([0.0, 0.0, 0.0]) == [0.0, 0.0, 0.0]


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return BertModel(config, add_pooling_layer=False)


@pytest.fixture(scope="module")
def tiny_slice() -> tuple[LookaheadConfig, list, object]:
    records = load_records([SLICE], split="train")[:6]
    config = LookaheadConfig(candidates=candidate_names(records), block_size=4, prompt_tokens=24, trainable_layers=1)
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir())
    items = prepare_items(records, config.candidates, tokenizer, layout_for(config, tiny_bert().config))
    return config, items, tokenizer


def routing_loss(net, items, layout) -> float:
    """BCE of the full-pool, fully masked (inference) input against the normalised targets."""
    batch = collate([build_example(layout, item.prompt_ids, item.candidates) for item in items])
    with torch.no_grad():
        logits = net.route_logits(net(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["slot_ids"]))
    picked = torch.stack([logits[row, item.candidates] for row, item in enumerate(items)])
    targets = torch.tensor([item.targets for item in items])
    return float(torch.nn.functional.binary_cross_entropy_with_logits(picked, targets))


@pytest.mark.parametrize("reconstruction", [True, False], ids=["lookahead", "mlc"])
def test_training_on_a_tiny_slice_fits_the_routing_targets_and_keeps_the_backbone(tiny_slice, reconstruction) -> None:
    config, items, _ = tiny_slice
    net = new_net(config, tiny_bert())
    layout = layout_for(config, net.bert.config)
    frozen_before = net.bert.encoder.layer[0].attention.self.query.weight.clone()
    top_before = net.bert.encoder.layer[1].attention.self.query.weight.clone()
    before = routing_loss(net.eval(), items, layout)

    losses = train(net, items, layout, steps=40, batch_size=6, reconstruction=reconstruction, new_lr=3e-3, lr=1e-3)

    assert routing_loss(net, items, layout) < 0.8 * before
    assert (losses["mlm_loss"] > 0) == reconstruction
    assert torch.equal(net.bert.encoder.layer[0].attention.self.query.weight, frozen_before)
    assert not torch.equal(net.bert.encoder.layer[1].attention.self.query.weight, top_before)


def test_a_saved_tiny_checkpoint_scores_every_candidate_without_responses(tiny_slice, tmp_path: Path) -> None:
    config, items, tokenizer = tiny_slice
    net = new_net(config, tiny_bert())
    train(net, items, layout_for(config, net.bert.config), steps=3, batch_size=6, reconstruction=True)
    save_checkpoint(net, config, tmp_path)
    loaded, loaded_config = load_checkpoint(tmp_path, tiny_bert())
    strong, weak = config.candidates[0], config.candidates[-1]
    router = LookaheadRouter(loaded, loaded_config, tokenizer, strong, weak)
    original = LookaheadRouter(net, config, tokenizer, strong, weak)
    prompts = ["Write a function that reverses a list.", "What is 2 + 2?", "Explain quicksort."]

    scores = router.candidate_scores(prompts)
    pair = router.score(prompts)

    assert scores.shape == (3, len(config.candidates))
    assert np.all((scores > 0) & (scores < 1))
    assert all(0.0 <= score <= 1.0 for score in pair)
    assert np.allclose(pair, original.score(prompts), atol=2e-3)  # the fp16 delta round-trips
    assert router.candidate_scores(prompts, [weak, strong]).shape == (3, 2)
    with pytest.raises(ValueError, match="known candidates"):
        LookaheadRouter(loaded, loaded_config, tokenizer, "no-such-model", weak)


@pytest.fixture(scope="module")
def shipped() -> LookaheadRouter:
    return load_router("lookahead", RouterOptions(device="cpu", strong_model=GPT4, weak_model=MIXTRAL))


def test_the_shipped_checkpoint_is_small_and_scores_prompts_in_unit_interval(shipped) -> None:
    size = sum(path.stat().st_size for path in SHIPPED.iterdir())
    prompts = [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How "
        "many clips did she sell altogether?",
        "hi",
        "Prove that there are infinitely many primes.",
    ]

    scores = shipped.score(prompts)

    assert size <= 20 * 1024 * 1024
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert len(set(scores)) == 3  # the score depends on the prompt
    assert shipped.candidate_scores(prompts).shape == (3, len(shipped.candidates))
    with pytest.raises(ValueError, match="known candidates"):
        load_router("lookahead", RouterOptions(device="cpu", strong_model="gpt-5", weak_model=MIXTRAL))


def test_named_models_are_matched_across_spellings_as_upstream_models_are() -> None:
    """``ROUTEGATE_ROUTER_WEAK_MODEL`` / an entry's ``router_model`` in the upstream's spelling
    (``meta-llama/...``) finds the candidate the checkpoint names otherwise."""
    from routers.registry import load_router_for_pair

    router, pair = load_router_for_pair(
        "lookahead", RouterOptions(device="cpu"), GPT4, "meta-llama/Llama-3.1-8B-Instruct", (True, True), "the settings"
    )
    assert (pair.strong, pair.weak) == (GPT4, "Llama-3.1-8B-Instruct") and pair.why == "named by the settings"
    assert 0.0 <= router.score(["What is 2 + 2?"])[0] <= 1.0


def test_router_lookahead_routes_through_the_gateway_by_its_score(strong, weak, tmp_path: Path, shipped) -> None:
    prompt = "A train travels 60 miles in 1.5 hours. What is its average speed in miles per hour?"
    expected = shipped.score([prompt])[0]
    env = proxy_env(strong, weak, router="lookahead", router_strong_model=GPT4, router_weak_model=MIXTRAL)
    with running_proxy(env, tmp_path, ready_timeout=180) as proxy:
        client = openai.OpenAI(base_url=proxy.api, api_key="client-key", http_client=httpx.Client(timeout=60))
        below = math.floor(expected * 1000) / 1000
        above = math.ceil(expected * 1000) / 1000 + 0.001
        to_strong = client.chat.completions.with_raw_response.create(
            model=f"router-lookahead-{below}", messages=[{"role": "user", "content": prompt}]
        )
        to_weak = client.chat.completions.with_raw_response.create(
            model=f"router-lookahead-{above}", messages=[{"role": "user", "content": prompt}]
        )

    assert to_strong.headers["x-routegate-tier"] == "strong"
    assert to_strong.parse().choices[0].message.content == "answer from strong"
    assert to_weak.headers["x-routegate-tier"] == "weak"
    assert to_weak.parse().choices[0].message.content == "answer from weak"
    assert float(to_strong.headers["x-routegate-score"]) == pytest.approx(expected, abs=1e-4)
    assert len(strong.received) == 1 and len(weak.received) == 1


def test_train_command_counts_only_models_with_responses(tmp_path: Path) -> None:
    """A file scoring hundreds of models without responses (AlpacaEval) beside one with responses
    trains: its models add no block to an input, so they cannot make one too long."""
    import gzip
    import json

    from server.cli import main

    wide = tmp_path / "wide.jsonl.gz"
    with gzip.open(wide, "wt", encoding="utf-8") as out:
        for number in range(4):
            scores = {f"model-{index}": (index * 7 + number) % 10 / 10 for index in range(300)}
            record = {"id": f"w{number}", "prompt": f"Write a haiku {number}", "scores": scores, "split": "train"}
            out.write(json.dumps(record) + "\n")
    out_dir = tmp_path / "lookahead"
    options = ["--out", str(out_dir), "--steps", "1", "--batch-size", "2", "--prompt-tokens", "16", "--trainable-layers", "1"]
    assert main(["train", "lookahead", "--data", SLICE, str(wide), *options]) == 0
    with_responses = {model for record in load_records([SLICE], "train") if record.get("responses") for model in record["scores"]}
    assert json.loads((out_dir / "config.json").read_text())["candidates"] == sorted(with_responses)  # no model-N
    with pytest.raises(SystemExit, match="no train record has the responses of two or more scored models"):
        main(["train", "lookahead", "--data", str(wide), *options])
