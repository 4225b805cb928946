"""Fitting the structural-feature head (``routers.feature_head``) of the ``bert`` and ``causal_llm`` routers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from routers.feature_head import FeatureHead
from routers.features import FEATURE_NAMES, Standardizer, feature_matrix
from routers.training.pairwise import Comparisons, pairwise_loss


def untrained_head(prompts: Sequence[str], models: int) -> tuple[FeatureHead, torch.Tensor]:
    """A zero head whose standardisation is fitted on the training ``prompts``, and those prompts'
    standardised features (its ``forward`` input)."""
    raw = feature_matrix(prompts)
    head = FeatureHead(Standardizer.fit(raw), torch.zeros(models, len(FEATURE_NAMES)), torch.zeros(models))
    return head, torch.from_numpy(head.standardize(raw))


def fit_alone(
    head: FeatureHead, inputs: torch.Tensor, comparisons: Comparisons, l2: float = 1e-4, steps: int = 300, lr: float = 0.05
) -> None:
    """Fit ``head``'s weights and bias on their own (full batch; the loss is convex): what the
    structure predicts before a network adds what it misses."""
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in tqdm(range(steps), desc="fit feature head", unit="step"):
        loss = pairwise_loss(head(inputs), comparisons) + l2 * head.weight.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
