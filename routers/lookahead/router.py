"""The Lookahead router (Huang et al., NeurIPS 2025, masked-LM variant) on the MiniLM backbone.

One forward pass over ``[CLS] prompt [SEP]`` + a fully masked block per candidate scores every
candidate from ``[CLS]``; the blocks' hidden states were trained to reconstruct each candidate's
response, so the score "looks ahead" at what each model would answer without generating it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from routers.base import Router, model_columns, win_probabilities
from routers.lookahead.inputs import build_example
from routers.lookahead.model import LookaheadConfig, LookaheadNet, backbone_dir, collate, layout_for, load_checkpoint

CHECKPOINT_NAME = "lookahead"


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when there is one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class LookaheadRouter(Router):
    """Strong-vs-weak win probability from the Lookahead network, plus per-candidate scores."""

    name = "lookahead"

    def __init__(
        self,
        net: LookaheadNet,
        config: LookaheadConfig,
        tokenizer,
        strong_model: str,
        weak_model: str,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
    ) -> None:
        self.candidates = list(config.candidates)
        for model in (strong_model, weak_model):
            if model not in self.candidates:
                raise ValueError(
                    f"the lookahead router was not trained on model '{model}'; known candidates: {', '.join(self.candidates)}"
                )
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = config
        self.tokenizer = tokenizer
        self.layout = layout_for(config, net.bert.config, tokenizer.cls_token_id, tokenizer.sep_token_id)
        self.pair = [self.candidates.index(strong_model), self.candidates.index(weak_model)]
        self.batch_size = batch_size

    @classmethod
    def from_options(cls, options) -> LookaheadRouter:
        """Registry factory: loads ``options.checkpoint_dir / "lookahead"``."""
        directory = Path(options.checkpoint_dir) / CHECKPOINT_NAME
        return cls.from_directory(directory, options.strong_model, options.weak_model, resolve_device(options.device))

    @classmethod
    def from_directory(
        cls, directory: Path, strong_model: str | None = None, weak_model: str | None = None, device: str | torch.device = "cpu"
    ) -> LookaheadRouter:
        """A router from a checkpoint directory; the pair defaults to the first two candidates."""
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"no lookahead checkpoint in {directory}")
        net, config = load_checkpoint(directory)
        tokenizer = AutoTokenizer.from_pretrained(backbone_dir())
        strong_model = strong_model or config.candidates[0]
        weak_model = weak_model or config.candidates[1]
        return cls(net, config, tokenizer, strong_model, weak_model, device)

    def logits(self, prompts: Sequence[str], candidates: Sequence[int]) -> np.ndarray:
        """Routing logits [n_prompts, len(candidates)] with one fully masked block per candidate."""
        rows = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start : start + self.batch_size])
            token_ids = self.tokenizer(chunk, add_special_tokens=False, truncation=True, max_length=self.layout.prompt_tokens)[
                "input_ids"
            ]
            batch = collate([build_example(self.layout, ids, candidates) for ids in token_ids], self.device)
            with torch.inference_mode():
                hidden = self.net(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["slot_ids"])
                rows.append(self.net.route_logits(hidden)[:, list(candidates)].float().cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, len(candidates)))

    def model_logits(self, prompts: Sequence[str], models: Sequence[str]) -> np.ndarray:
        """The routing logits of ``models`` (names among ``self.candidates``), from one pass whose input
        holds a block for each of them, (prompts, len(models))."""
        return self.logits(prompts, model_columns(models, self.candidates, self.name))

    def candidate_scores(self, prompts: Sequence[str], candidates: Sequence[str] | None = None) -> np.ndarray:
        """Predicted normalised quality in [0, 1] of each candidate (by name; all by default) for
        each prompt, from one pass whose input holds a block for each of those candidates."""
        names = list(candidates) if candidates is not None else self.candidates
        return 1.0 / (1.0 + np.exp(-self.model_logits(prompts, names)))

    def score(self, prompts: Sequence[str]) -> list[float]:
        """sigmoid(strong logit - weak logit) with the pair's two blocks in the input."""
        logits = self.logits(prompts, self.pair)
        return win_probabilities(logits[:, 0] - logits[:, 1])
