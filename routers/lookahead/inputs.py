"""Input construction and the masking curriculum of the Lookahead router (pure functions).

One example is ``[CLS] prompt [SEP]`` followed by one block of ``block_size`` reserved
model-ID tokens per candidate. Candidate ``c`` owns the reserved ids
``base_id + c * block_size + j`` (slot ``j``), so every block tells the encoder which model it
stands for. In training a block may instead hold the candidate's real response (its first
``block_size`` tokens) where a share of those tokens is *masked*, i.e. put back to the
candidate's model-ID token, and the masked positions carry the response token as MLM label.
At inference every block is fully masked: the input needs no response.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

IGNORE = -100  # label of positions the MLM loss skips (torch's cross_entropy ignore_index)


@dataclass(frozen=True)
class InputLayout:
    """Token ids and sizes shared by every example of one model."""

    cls_id: int
    sep_id: int
    base_id: int  # first reserved model-ID token id (= the backbone's vocabulary size)
    block_size: int  # m: tokens per candidate block
    prompt_tokens: int  # the prompt is truncated to this many tokens

    def model_id_token(self, candidate: int, slot: int) -> int:
        """The reserved id of slot ``slot`` in candidate ``candidate``'s block."""
        return self.base_id + candidate * self.block_size + slot

    def length(self, prompt_length: int, n_blocks: int) -> int:
        """Sequence length of an example with a prompt of ``prompt_length`` tokens."""
        return 2 + min(prompt_length, self.prompt_tokens) + n_blocks * self.block_size


@dataclass(frozen=True)
class Example:
    """One encoder input: ids, segment ids, MLM labels, the candidates in block order and where
    each block starts."""

    input_ids: list[int]
    token_type_ids: list[int]
    labels: list[int]
    slot_ids: list[int]  # per position: candidate * block_size + slot inside a block, -1 outside
    candidates: list[int]
    block_starts: list[int]


def build_example(
    layout: InputLayout,
    prompt_ids: Sequence[int],
    candidates: Sequence[int],
    responses: Sequence[Sequence[int]] | None = None,
    mask_ratio: float = 1.0,
    rng: random.Random | None = None,
) -> Example:
    """``[CLS] prompt [SEP]`` + one block per candidate (in the given order).

    Without ``responses`` (inference) every block is its candidate's model-ID tokens and no
    position has a label. With ``responses`` (one token list per candidate) each block holds the
    first ``block_size`` response tokens, of which ``ceil(mask_ratio * n)`` chosen at random are
    masked (replaced by the model-ID token and labelled with the response token); slots past the
    end of a short response stay model-ID tokens without a label.
    """
    if responses is not None and len(responses) != len(candidates):
        raise ValueError("one response per candidate is needed")
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError("mask_ratio must be in [0, 1]")
    prompt = list(prompt_ids[: layout.prompt_tokens])
    input_ids = [layout.cls_id, *prompt, layout.sep_id]
    token_type_ids = [0] * len(input_ids)
    labels = [IGNORE] * len(input_ids)
    slot_ids = [-1] * len(input_ids)
    block_starts = []
    rng = rng or random.Random(0)
    for index, candidate in enumerate(candidates):
        block_starts.append(len(input_ids))
        block = [layout.model_id_token(candidate, slot) for slot in range(layout.block_size)]
        block_labels = [IGNORE] * layout.block_size
        if responses is not None:
            response = list(responses[index][: layout.block_size])
            masked = set(rng.sample(range(len(response)), math.ceil(mask_ratio * len(response))))
            for slot, token in enumerate(response):
                if slot in masked:
                    block_labels[slot] = token
                else:
                    block[slot] = token
        input_ids.extend(block)
        labels.extend(block_labels)
        token_type_ids.extend([1] * layout.block_size)
        slot_ids.extend(candidate * layout.block_size + slot for slot in range(layout.block_size))
    return Example(input_ids, token_type_ids, labels, slot_ids, list(candidates), block_starts)


def mask_ratio(step: int, total_steps: int, start: float = 0.25, full_at: float = 0.7) -> float:
    """The curriculum: the share of response tokens masked at ``step``, rising linearly from
    ``start`` at step 0 to 1.0 at ``full_at * total_steps`` and staying fully masked after, so
    the last part of training sees exactly the inference input."""
    if total_steps <= 0 or full_at <= 0:
        return 1.0
    progress = step / (full_at * total_steps)
    return min(1.0, start + (1.0 - start) * progress)


def normalise_scores(scores: Sequence[float]) -> list[float]:
    """Per-prompt routing targets: min-max normalised over the prompt's candidates, so the best
    candidate gets 1 and the worst 0; when every candidate scores the same the raw (clipped)
    score is kept, since then nothing separates them but the absolute quality."""
    low, high = min(scores), max(scores)
    if high - low < 1e-9:
        return [min(1.0, max(0.0, float(score))) for score in scores]
    return [(score - low) / (high - low) for score in scores]
