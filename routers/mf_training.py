"""``routegate train mf``: fit the matrix-factorisation router on pairwise comparisons."""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from routers.checkpoint import write_manifest
from routers.embedding import cached_encode, resolve_device
from routers.features import FEATURE_NAMES, Standardizer, feature_matrix
from routers.mf import WEIGHTS, prompt_inputs
from routers.neighbourhood import Neighbourhood, quantise, text_groups
from routers.pairwise import add_training_data_arguments, build_comparisons, load_training_records
from routers.sw_ranking import similarity_vectors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``routegate train mf``."""
    add_training_data_arguments(parser)
    parser.add_argument("--hidden", type=int, default=64, help="width of the text projection's hidden layer")
    parser.add_argument("--dim", type=int, default=16, help="latent dimension shared by prompts and models")
    parser.add_argument("--neighbours", type=int, default=40, help="training prompts in each prompt's neighbourhood")
    parser.add_argument("--feature-weight", type=float, default=0.0, help="weight of the structural features in the neighbourhood similarity")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (encoder and training)")


def run(args: argparse.Namespace) -> None:
    """Train and write ``weights.npz`` and ``router.json`` into ``args.out``."""
    torch.manual_seed(args.seed)
    records = load_training_records(args.data, limit=args.limit)
    comparisons = build_comparisons(records)
    print(f"mf: {len(records)} prompts, {len(comparisons.target)} comparisons, {len(comparisons.models)} models")
    raw = feature_matrix(comparisons.prompts)
    standardize = Standardizer.fit(raw)
    vectors = similarity_vectors(cached_encode(comparisons.prompts, args.device), standardize(raw), args.feature_weight)
    scores = np.full((len(records), len(comparisons.models)), np.nan, dtype=np.float32)
    for row, record in enumerate(records):
        for name, value in record["scores"].items():
            scores[row, comparisons.models.index(name)] = value
    neighbourhood = Neighbourhood(vectors, scores, args.neighbours)
    features = prompt_inputs(standardize(raw), neighbourhood.features(vectors, groups=text_groups(comparisons.prompts)))
    train_vectors, train_vector_scale = quantise(vectors)

    device = resolve_device(args.device)
    model = MFNet(features.shape[1], args.hidden, args.dim, len(comparisons.models), args.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    x = torch.from_numpy(features).to(device)
    prompt, model_a, model_b = (torch.from_numpy(a).to(device) for a in (comparisons.prompt, comparisons.model_a, comparisons.model_b))
    target, weight = torch.from_numpy(comparisons.target).to(device), torch.from_numpy(comparisons.weight).to(device)
    weight = weight / weight.mean()
    total = len(target)
    steps = args.epochs * ((total + args.batch_size - 1) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    progress = tqdm(total=steps, desc="train mf", unit="step")
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(total, device=device)
        for start in range(0, total, args.batch_size):
            batch = order[start : start + args.batch_size]
            logits = model(x[prompt[batch]], model_a[batch], model_b[batch])
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, target[batch], reduction="none") * weight[batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.4f}")
    progress.close()
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    state = {name: value.detach().cpu().numpy().astype(np.float32) for name, value in model.state_dict().items()}
    np.savez_compressed(
        args.out / WEIGHTS,
        w1=state["hidden.weight"].T.copy(),
        b1=state["hidden.bias"],
        w2=state["projection.weight"].T.copy(),
        b2=state["projection.bias"],
        model_vectors=state["model_vectors.weight"],
        model_bias=state["model_bias.weight"][:, 0],
        classifier=state["classifier.weight"][0],
        feature_mean=standardize.mean,
        feature_std=standardize.std,
        train_vectors=train_vectors,
        train_vector_scale=train_vector_scale,
        train_scores=scores.astype(np.float16),
    )
    write_manifest(
        args.out,
        "mf",
        args.data,
        comparisons.models,
        features=[*FEATURE_NAMES, "neighbourhood mean score per model (MiniLM cosine, leaving out the prompt and its repeats in training)"],
        hyperparameters={key: getattr(args, key) for key in ("hidden", "dim", "neighbours", "feature_weight", "epochs", "batch_size", "lr", "weight_decay", "dropout", "limit", "seed")},
        prompts=len(records),
        comparisons=int(total),
    )
    print(f"mf: wrote {args.out}")


class MFNet(nn.Module):
    """delta_m(q) = w . (v_m * proj(q)) + c_m; P(a beats b) = sigmoid(delta_a - delta_b)."""

    def __init__(self, inputs: int, hidden: int, dim: int, models: int, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(hidden, dim)
        self.model_vectors = nn.Embedding(models, dim)
        self.model_bias = nn.Embedding(models, 1)
        self.classifier = nn.Linear(dim, 1, bias=False)
        nn.init.normal_(self.model_vectors.weight, std=0.5)
        nn.init.zeros_(self.model_bias.weight)

    def delta(self, x: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
        latent = self.projection(self.dropout(nn.functional.gelu(self.hidden(x), approximate="tanh")))
        return self.classifier(self.model_vectors(model) * latent)[:, 0] + self.model_bias(model)[:, 0]

    def forward(self, x: torch.Tensor, model_a: torch.Tensor, model_b: torch.Tensor) -> torch.Tensor:
        return self.delta(x, model_a) - self.delta(x, model_b)
