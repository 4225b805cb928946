"""``routegate train causal_llm``: tune the label tokens' output rows of a frozen causal LM.

The LM's last hidden state at the answer position is computed once per prompt (the expensive
part: one forward pass of the base model per training prompt); the label rows start from the
LM head's own rows for " A", " B", ... and are trained on the pairwise comparisons, together with
a linear term on the prompt's structural features (``routers.feature_head``); ``--hidden-l2``
shrinks the differences between the rows, so the 576-wide state does not overfit a few thousand
prompts. There is one label token per model, so the head learns at most as many models as the
tokenizer has distinct label tokens (52 for SmolLM2): the ones scored on the most training records.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from routers.arguments import non_negative_float, positive_float, positive_int, random_seed, torch_device
from routers.causal_llm.router import HEAD, PACKAGED_SMOLLM2, TEMPLATE, label_token_ids, last_hidden, load_causal_lm
from routers.checkpoint import published_path, refuse_unless_finite, write_manifest
from routers.data import Record
from routers.embedding import resolve_device
from routers.feature_head import FEATURE_HEAD, FeatureHead
from routers.model_names import scores_by_model
from routers.training.feature_head import untrained_head
from routers.training.pairwise import (
    Comparisons,
    add_training_data_arguments,
    build_comparisons,
    load_training_records,
    pairwise_loss,
)
from routers.training.state_cache import cached_states


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``routegate train causal_llm``."""
    add_training_data_arguments(parser)
    parser.add_argument(
        "--base-model",
        default=PACKAGED_SMOLLM2,
        help="causal LM: a transformers checkpoint directory or a .gguf file (default: packaged SmolLM2-135M)",
    )
    parser.add_argument("--epochs", type=positive_int, default=200, help="full-batch optimiser steps over cached hidden states")
    parser.add_argument("--lr", type=positive_float, default=1e-2)
    parser.add_argument(
        "--hidden-l2", type=non_negative_float, default=0.1, help="penalty on the differences between the label rows"
    )
    parser.add_argument("--feature-l2", type=non_negative_float, default=1e-4, help="penalty on the structural-feature weights")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass of the base model")
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--device", type=torch_device, default="auto", help="auto, cpu or cuda")


def most_scored_models(records: Sequence[Record], count: int) -> list[str]:
    """The ``count`` models (normal forms) scored on the most records, most first; ties by name."""
    scored = Counter(name for record in records for name in scores_by_model(record["scores"]))
    return sorted(scored, key=lambda name: (-scored[name], name))[:count]


def records_of(records: Sequence[Record], models: Sequence[str]) -> list[Record]:
    """The records that score at least two of ``models``: the only ones that compare them."""
    wanted = set(models)
    return [record for record in records if len(wanted.intersection(scores_by_model(record["scores"]))) >= 2]


def cached_last_hidden(
    model: Any, tokenizer: Any, prompts: Sequence[str], base_model: str, device: str, batch_size: int
) -> torch.Tensor:
    """``last_hidden`` of every prompt, cached outside the repository by base model, template and text hash."""
    tag = hashlib.sha1(f"{base_model}\n{TEMPLATE}".encode()).hexdigest()[:12]
    states = cached_states(
        f"causal-llm-{tag}",
        prompts,
        lambda batch: last_hidden(model, tokenizer, batch, device).cpu().numpy(),
        batch_size,
        "base model",
    )
    return torch.from_numpy(np.stack(states))


def fit_label_head(
    hidden: torch.Tensor,
    feature_head: FeatureHead,
    feature_inputs: torch.Tensor,
    rows: torch.Tensor,
    comparisons: Comparisons,
    args: argparse.Namespace,
) -> torch.Tensor:
    """Train label rows (started at ``rows``) and ``feature_head`` on the pairwise comparisons;
    returns the rows (for the states ``hidden`` as given)."""
    scale = hidden.std() + 1e-6
    states = hidden / scale  # unit-scale states: one learning rate and penalty fit any base model
    scaled_rows = torch.nn.Parameter(rows * scale)
    optimizer = torch.optim.Adam([scaled_rows, *feature_head.parameters()], lr=args.lr)
    progress = tqdm(range(args.epochs), desc="train label rows", unit="step")
    for _ in progress:
        fit = pairwise_loss(states @ scaled_rows.T + feature_head(feature_inputs), comparisons)
        spread = scaled_rows - scaled_rows.mean(dim=0)  # only differences between rows decide
        penalty = args.hidden_l2 * spread.square().sum() + args.feature_l2 * feature_head.weight.square().sum()
        loss = fit + penalty
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{fit.item():.4f}")
    return scaled_rows.detach() / scale


def run(args: argparse.Namespace) -> None:
    """Write ``label_head.safetensors``, ``feature_head.safetensors`` and ``router.json`` into ``args.out``."""
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    tokenizer, model = load_causal_lm(args.base_model, device)
    records = load_training_records(args.data, limit=args.limit)
    labels = label_token_ids(tokenizer)
    models = most_scored_models(records, len(labels))  # one label token per model
    labels = labels[: len(models)]
    records = records_of(records, models)
    comparisons = build_comparisons(records, models)
    print(f"causal_llm: {len(records)} prompts, {len(comparisons.target)} comparisons, {len(comparisons.models)} models")
    hidden = cached_last_hidden(model, tokenizer, comparisons.prompts, args.base_model, device, args.batch_size)
    feature_head, feature_inputs = untrained_head(comparisons.prompts, len(comparisons.models))
    lm_rows = model.get_output_embeddings().weight[labels].detach().float().cpu()
    rows = fit_label_head(hidden, feature_head, feature_inputs, lm_rows, comparisons, args)
    refuse_unless_finite("causal_llm", [rows, *feature_head.parameters()])
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"rows": rows.contiguous()}, str(args.out / HEAD))
    feature_head.save(args.out / FEATURE_HEAD)
    write_manifest(
        args.out,
        "causal_llm",
        args.data,
        comparisons.models,
        base_model=args.base_model,
        template=TEMPLATE,
        label_tokens=[tokenizer.decode([token]) for token in labels],
        hyperparameters={key: getattr(args, key) for key in ("epochs", "lr", "hidden_l2", "feature_l2", "limit", "seed")},
        prompts=len(records),
    )
    print(f"causal_llm: wrote {published_path(args.out)}")
