"""BERT router: the MiniLM checkpoint as a sequence classifier (``AutoModelForSequenceClassification``).

The classifier reads the mean of the last layer's token states (the pooling MiniLM's sentence
embeddings were trained with, rather than the CLS pooler) and has one output per model seen in
training (a quality score delta_m, as in the MF router), to which a linear term on the prompt's
structural features is added (``routers.feature_head``); the strong model's win probability is
``sigmoid(delta_strong - delta_weak)``. The checkpoint holds only the trained parameters (top
encoder layer(s), classifier and feature head) as a delta over the packaged all-MiniLM-L6-v2
backbone; the rest is loaded from the package.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from routers.base import Router
from routers.checkpoint import CheckpointError, model_indices, read_manifest
from routers.embedding import MAX_TOKENS, model_dir, resolve_device
from routers.feature_head import FEATURE_HEAD, FeatureHead
from routers.registry import RouterOptions

TRAINED = "trained.safetensors"


def load_classifier(models: int, device: str, trained: Path | None = None) -> tuple[Any, Any]:
    """Tokenizer and MiniLM sequence classifier with ``models`` outputs, with ``trained`` weights applied."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the freshly initialised classifier head is expected
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    model = AutoModelForSequenceClassification.from_pretrained(model_dir(), num_labels=models)
    if trained is not None:
        from safetensors.torch import load_file

        state = {name: tensor.float() for name, tensor in load_file(str(trained)).items()}
        missing = set(state) - set(model.state_dict())
        if missing:
            raise CheckpointError(f"{trained} has parameters the MiniLM classifier lacks: {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=False)
    return tokenizer, model.to(device).eval()


def classify(model: Any, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-model logits from last-layer states (batch, length, hidden) and the token mask (batch, length)."""
    weights = keep.to(hidden.dtype)[:, :, None]
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return model.classifier(model.dropout(pooled))


class BertRouter(Router):
    """Scores prompts with the fine-tuned MiniLM classifier."""

    name = "bert"

    def __init__(self, directory: Path, device: str, strong_model: str, weak_model: str) -> None:
        manifest = read_manifest(directory, self.name)
        self.models: list[str] = manifest["models"]
        self._strong, self._weak = model_indices(self.models, strong_model, weak_model, directory)
        self._device = resolve_device(device)
        self._tokenizer, self._model = load_classifier(len(self.models), self._device, directory / TRAINED)
        self._features = FeatureHead.load(directory / FEATURE_HEAD).to(self._device)

    @classmethod
    def from_options(cls, options: RouterOptions) -> BertRouter:
        """Registry factory: load ``<checkpoint_dir>/bert``."""
        return cls(Path(options.checkpoint_dir) / cls.name, options.device, options.strong_model, options.weak_model)

    def score(self, prompts: Sequence[str]) -> list[float]:
        batch = self._tokenizer(list(prompts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt").to(
            self._device
        )
        with torch.inference_mode():
            logits = classify(self._model, self._model.bert(**batch).last_hidden_state, batch["attention_mask"]).float()
            logits = logits + self._features.logits(prompts)
        return torch.sigmoid(logits[:, self._strong] - logits[:, self._weak]).cpu().tolist()
