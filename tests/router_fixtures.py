"""Small real inputs for router tests: a slice of the shared data and a tiny random causal LM."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tests.replay import data_dir
from tests.tools import missing

REPO = Path(__file__).resolve().parent.parent
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def shared_data_dir() -> Path:
    """``shared/data`` beside the checkout (as in CI), or ``$ROUTEGATE_DATA_DIR``."""
    return data_dir()


def write_slice(path: Path, per_split: dict[str, int]) -> Path:
    """The first short records (<= 400 characters) of each split of routellm-mmlu and routellm-gsm8k, as one file."""
    source_dir = shared_data_dir()
    if not (source_dir / "routellm-mmlu.jsonl.gz").is_file():
        missing(f"shared data not found in {source_dir} (set ROUTEGATE_DATA_DIR)")
    chosen = []
    for name in ("routellm-mmlu.jsonl.gz", "routellm-gsm8k.jsonl.gz"):
        counts = dict.fromkeys(per_split, 0)
        with gzip.open(source_dir / name, "rt", encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                split = record["split"]
                if split in counts and counts[split] < per_split[split] and len(record["prompt"]) <= 400:
                    counts[split] += 1
                    chosen.append(record)
                if counts == per_split:
                    break
    with gzip.open(path, "wt", encoding="utf-8") as output:
        for record in chosen:
            output.write(json.dumps(record) + "\n")
    return path


def tiny_causal_lm(directory: Path) -> Path:
    """A randomly initialised 2-layer Llama with the MiniLM tokenizer, saved as a transformers checkpoint."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from routers.embedding import model_dir

    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
