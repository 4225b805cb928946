"""``routegate train causal_llm``: tune the label tokens' output rows of a frozen causal LM.

The LM's last hidden state at the answer position is computed once per prompt (the expensive
part: one forward pass of the base model per training prompt); the label rows start from the
LM head's own rows for " A", " B", ... and are trained on the pairwise comparisons.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from routers.causal_llm import HEAD, PACKAGED_SMOLLM2, TEMPLATE, label_token_ids, last_hidden, load_causal_lm
from routers.checkpoint import write_manifest
from routers.embedding import resolve_device
from routers.pairwise import add_training_data_arguments, build_comparisons, load_training_records
from routers.state_cache import cached_states


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``routegate train causal_llm``."""
    add_training_data_arguments(parser)
    parser.add_argument(
        "--base-model", default=PACKAGED_SMOLLM2, help="causal LM: a transformers checkpoint directory or a .gguf file (default: packaged SmolLM2-135M)"
    )
    parser.add_argument("--epochs", type=int, default=200, help="full-batch optimiser steps over the cached hidden states")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass of the base model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def cached_last_hidden(model: Any, tokenizer: Any, prompts: Sequence[str], base_model: str, device: str, batch_size: int) -> torch.Tensor:
    """``last_hidden`` of every prompt, cached outside the repository by base model, template and text hash."""
    tag = hashlib.sha1(f"{base_model}\n{TEMPLATE}".encode()).hexdigest()[:12]
    states = cached_states(
        f"causal-llm-{tag}", prompts, lambda batch: last_hidden(model, tokenizer, batch, device).cpu().numpy(), batch_size, "base model"
    )
    return torch.from_numpy(np.stack(states))


def run(args: argparse.Namespace) -> None:
    """Write ``label_head.safetensors`` and ``router.json`` into ``args.out``."""
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    records = load_training_records(args.data, limit=args.limit)
    comparisons = build_comparisons(records)
    print(f"causal_llm: {len(records)} prompts, {len(comparisons.target)} comparisons, {len(comparisons.models)} models")
    tokenizer, model = load_causal_lm(args.base_model, device)
    labels = label_token_ids(tokenizer, len(comparisons.models))
    hidden = cached_last_hidden(model, tokenizer, comparisons.prompts, args.base_model, device, args.batch_size)
    rows = torch.nn.Parameter(model.get_output_embeddings().weight[labels].detach().float().cpu().clone())
    bias = torch.nn.Parameter(torch.zeros(len(labels)))
    optimizer = torch.optim.Adam([rows, bias], lr=args.lr, weight_decay=args.weight_decay)
    prompt, model_a, model_b = (torch.from_numpy(values) for values in (comparisons.prompt, comparisons.model_a, comparisons.model_b))
    target, weight = torch.from_numpy(comparisons.target), torch.from_numpy(comparisons.weight)
    scale = hidden.std() + 1e-6
    features = hidden / scale  # the rows are stored for unscaled states (divided by the same scale)
    progress = tqdm(range(args.epochs), desc="train label rows", unit="step")
    for _ in progress:
        logits = features[prompt] @ rows.T + bias
        margin = logits.gather(1, model_a[:, None])[:, 0] - logits.gather(1, model_b[:, None])[:, 0]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(margin, target, reduction="none") * weight).sum() / len(records)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"rows": (rows.detach() / scale).contiguous(), "bias": bias.detach().contiguous()}, str(args.out / HEAD))
    write_manifest(
        args.out,
        "causal_llm",
        args.data,
        comparisons.models,
        base_model=args.base_model,
        template=TEMPLATE,
        label_tokens=[tokenizer.decode([token]) for token in labels],
        hyperparameters={key: getattr(args, key) for key in ("epochs", "lr", "weight_decay", "limit", "seed")},
        prompts=len(records),
    )
    print(f"causal_llm: wrote {args.out}")
