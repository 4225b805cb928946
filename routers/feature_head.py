"""A per-model linear term on standardised structural features, added to a neural router's logits.

Prompt length, digits, answer options and the like (``routers.features``) predict which model
wins about as well as the best published routers on their own; the ``bert`` and ``causal_llm``
routers add this term to their per-model logits, so the network learns what the structure misses.
The head is stored beside the router's weights as ``feature_head.safetensors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from routers.features import FEATURE_NAMES, Standardizer, feature_matrix
from routers.pairwise import Comparisons, pairwise_loss

FEATURE_HEAD = "feature_head.safetensors"


class FeatureHead(torch.nn.Module):
    """Logits ``standardise(features(prompt)) @ weight.T + bias``, one column per model."""

    def __init__(self, standardizer: Standardizer, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.standardize = standardizer
        self.weight = torch.nn.Parameter(weight.float())
        self.bias = torch.nn.Parameter(bias.float())

    @classmethod
    def untrained(cls, prompts: Sequence[str], models: int) -> tuple[FeatureHead, torch.Tensor]:
        """A zero head whose standardisation is fitted on the training ``prompts``, and those
        prompts' standardised features (its ``forward`` input)."""
        raw = feature_matrix(prompts)
        head = cls(Standardizer.fit(raw), torch.zeros(models, len(FEATURE_NAMES)), torch.zeros(models))
        return head, torch.from_numpy(head.standardize(raw))

    @classmethod
    def load(cls, path: Path) -> FeatureHead:
        """The head saved by ``save``."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        return cls(Standardizer(state["mean"].numpy(), state["std"].numpy()), state["weight"], state["bias"])

    def save(self, path: Path) -> None:
        """Write the standardisation, weights and bias (fp32, a few hundred bytes)."""
        from safetensors.torch import save_file

        state = {"mean": torch.from_numpy(self.standardize.mean), "std": torch.from_numpy(self.standardize.std), "weight": self.weight, "bias": self.bias}
        save_file({name: tensor.detach().float().contiguous().cpu() for name, tensor in state.items()}, str(path))

    def fit_alone(self, inputs: torch.Tensor, comparisons: Comparisons, l2: float = 1e-4, steps: int = 300, lr: float = 0.05) -> None:
        """Fit weights and bias on their own (full batch; the loss is convex): what the structure
        predicts before a network adds what it misses."""
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        for _ in tqdm(range(steps), desc="fit feature head", unit="step"):
            loss = pairwise_loss(self(inputs), comparisons) + l2 * self.weight.square().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Per-model logits (batch, models) from ``inputs``."""
        return inputs.to(self.weight.device) @ self.weight.T + self.bias

    def logits(self, prompts: Sequence[str]) -> torch.Tensor:
        """Per-model logits (batch, models) of ``prompts``."""
        return self(torch.from_numpy(self.standardize(feature_matrix(prompts))))
