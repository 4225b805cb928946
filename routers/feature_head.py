"""A per-model linear term on standardised structural features, added to a neural router's logits.

Prompt length, digits, answer options and the like (``routers.features``) predict which model
wins about as well as the best published routers on their own; the ``bert`` and ``causal_llm``
routers add this term to their per-model logits, so the network learns what the structure misses.
The head is stored beside the router's weights as ``feature_head.safetensors``; its fitting is in
``routers.training.feature_head``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from routers.features import Standardizer, feature_matrix

FEATURE_HEAD = "feature_head.safetensors"


class FeatureHead(torch.nn.Module):
    """Logits ``standardise(features(prompt)) @ weight.T + bias``, one column per model."""

    def __init__(self, standardizer: Standardizer, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.standardize = standardizer
        self.weight = torch.nn.Parameter(weight.float())
        self.bias = torch.nn.Parameter(bias.float())

    @classmethod
    def load(cls, path: Path) -> FeatureHead:
        """The head saved by ``save``."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        return cls(Standardizer(state["mean"].numpy(), state["std"].numpy()), state["weight"], state["bias"])

    def save(self, path: Path) -> None:
        """Write the standardisation, weights and bias (fp32: 13 weights and a bias per model)."""
        from safetensors.torch import save_file

        state = {
            "mean": torch.from_numpy(self.standardize.mean),
            "std": torch.from_numpy(self.standardize.std),
            "weight": self.weight,
            "bias": self.bias,
        }
        save_file({name: tensor.detach().float().contiguous().cpu() for name, tensor in state.items()}, str(path))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Per-model logits (batch, models) from ``inputs``."""
        return inputs.to(self.weight.device) @ self.weight.T + self.bias

    def logits(self, prompts: Sequence[str]) -> torch.Tensor:
        """Per-model logits (batch, models) of ``prompts``."""
        return self(torch.from_numpy(self.standardize(feature_matrix(prompts))))
