"""Training the Lookahead router: routing loss + curriculum-masked response reconstruction.

    python -m routers.lookahead.training --data ../shared/data/lookahead-*.jsonl.gz \
        ../shared/data/routellm-gsm8k.jsonl.gz --out routers/checkpoints/lookahead

``--no-reconstruction`` trains the ablation (the paper's "MLC"): the same network and inputs
with every block fully masked and no MLM loss.
"""

from __future__ import annotations

import argparse
import random
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoTokenizer, BertModel

from routers.arguments import non_negative_float, positive_int, random_seed
from routers.checkpoint import published_path, refuse_unless_finite
from routers.data import Record, licence_of, load_records
from routers.embedding import ENCODER_LAYERS
from routers.lookahead.inputs import IGNORE, InputLayout, build_example, mask_ratio, normalise_scores
from routers.lookahead.model import LookaheadConfig, LookaheadNet, backbone_dir, collate, layout_for, new_net, save_checkpoint

RESPONSE_CHARS = 400  # a response is cut to this many characters before tokenising (only its start is used)


@dataclass(frozen=True)
class TrainItem:
    """One prompt, ready to build examples from: its tokens, candidates, targets and responses."""

    prompt_ids: list[int]
    candidates: list[int]
    targets: list[float]
    responses: list[list[int]]


def candidate_names(records: list[Record]) -> list[str]:
    """The candidate vocabulary: every model scored in ``records``, sorted."""
    return sorted({model for record in records for model in record["scores"]})


def prepare_items(records: list[Record], names: list[str], tokenizer, layout: InputLayout) -> list[TrainItem]:
    """Tokenise prompts and the start of every scored candidate's response (in batches)."""
    index = {name: position for position, name in enumerate(names)}
    usable = []
    for record in records:
        models = [model for model in record["scores"] if model in index and model in record.get("responses", {})]
        if len(models) >= 2:
            usable.append((record, models))
    items = []
    chunk = 512
    for start in tqdm(range(0, len(usable), chunk), desc="tokenising", unit="chunk"):
        part = usable[start : start + chunk]
        prompts = tokenizer(
            [record["prompt"] for record, _ in part], add_special_tokens=False, truncation=True, max_length=layout.prompt_tokens
        )["input_ids"]
        texts = [record["responses"][model][:RESPONSE_CHARS] for record, models in part for model in models]
        responses = iter(tokenizer(texts, add_special_tokens=False, truncation=True, max_length=layout.block_size)["input_ids"])
        for (record, models), prompt_ids in zip(part, prompts, strict=True):
            targets = normalise_scores([float(record["scores"][model]) for model in models])
            items.append(TrainItem(prompt_ids, [index[model] for model in models], targets, [next(responses) for _ in models]))
    return items


def sample_pool(item: TrainItem, rng: random.Random, full_pool_share: float) -> list[int]:
    """Positions (into ``item.candidates``) of the blocks for one example: the whole pool with
    probability ``full_pool_share``, else a random subset of 2..k, in random order, so the router
    also sees the small pools (a strong/weak pair) it serves in the gateway."""
    positions = list(range(len(item.candidates)))
    rng.shuffle(positions)
    if rng.random() < full_pool_share:
        return positions
    return positions[: rng.randint(2, len(positions))]


def loss_on_batch(
    net: LookaheadNet,
    items: list[TrainItem],
    layout: InputLayout,
    ratio: float,
    reconstruction: bool,
    rng: random.Random,
    full_pool_share: float,
    reconstruction_weight: float,
    vocabulary: torch.Tensor,
) -> tuple[torch.Tensor, float, float]:
    """Total loss of one batch, with the routing and MLM parts as floats."""
    examples, pools = [], []
    for item in items:
        pool = sample_pool(item, rng, full_pool_share)
        responses = [item.responses[position] for position in pool] if reconstruction else None
        examples.append(build_example(layout, item.prompt_ids, [item.candidates[p] for p in pool], responses, ratio, rng))
        pools.append(pool)
    batch = collate(examples)
    hidden = net(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["slot_ids"])
    logits = net.route_logits(hidden)
    rows = torch.tensor([row for row, pool in enumerate(pools) for _ in pool])
    columns = torch.tensor([items[row].candidates[p] for row, pool in enumerate(pools) for p in pool])
    targets = torch.tensor([items[row].targets[p] for row, pool in enumerate(pools) for p in pool])
    weights = torch.tensor([1.0 / len(pool) for pool in pools for _ in pool])  # each prompt weighs the same
    route = (F.binary_cross_entropy_with_logits(logits[rows, columns], targets, reduction="none") * weights).sum() / len(pools)
    total, mlm_value = route, 0.0
    labelled = batch["labels"] != IGNORE
    if reconstruction and labelled.any():
        position = torch.searchsorted(vocabulary, batch["labels"][labelled])
        mlm = F.cross_entropy(net.mlm_logits(hidden[labelled], vocabulary), position)
        total = route + reconstruction_weight * mlm
        mlm_value = float(mlm.detach())
    return total, float(route.detach()), mlm_value


def train(
    net: LookaheadNet,
    items: list[TrainItem],
    layout: InputLayout,
    *,
    steps: int,
    batch_size: int,
    reconstruction: bool,
    seed: int = 0,
    lr: float = 1e-4,
    new_lr: float = 1e-3,
    full_pool_share: float = 0.5,
    reconstruction_weight: float = 0.5,
    mask_start: float = 0.25,
    mask_full_at: float = 0.7,
) -> dict[str, float]:
    """Train ``net`` in place for ``steps`` batches; return the mean losses of the last 10% of steps."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    vocabulary = torch.tensor(sorted({token for item in items for response in item.responses for token in response}))
    encoder = [p for name, p in net.named_parameters() if p.requires_grad and name.startswith("bert.")]
    new = [p for name, p in net.named_parameters() if p.requires_grad and not name.startswith("bert.")]
    optimiser = torch.optim.AdamW([{"params": encoder, "lr": lr}, {"params": new, "lr": new_lr}], weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / (steps - warmup + 1e-9)))
    )
    order: list[int] = []
    tail_route, tail_mlm = [], []
    net.train()
    progress = tqdm(range(steps), desc="training" + (" lookahead" if reconstruction else " MLC"), unit="step", mininterval=5)
    for step in progress:
        while len(order) < batch_size:  # fewer items than a batch: each pass over them in a new order
            order += rng.sample(range(len(items)), len(items))
        batch_items = [items[order.pop()] for _ in range(batch_size)]
        ratio = mask_ratio(step, steps, mask_start, mask_full_at)
        loss, route, mlm = loss_on_batch(
            net, batch_items, layout, ratio, reconstruction, rng, full_pool_share, reconstruction_weight, vocabulary
        )
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder + new, 1.0)
        optimiser.step()
        schedule.step()
        if step >= steps - max(1, steps // 10):
            tail_route.append(route)
            tail_mlm.append(mlm)
        progress.set_postfix(route=f"{route:.3f}", mlm=f"{mlm:.2f}", mask=f"{ratio:.2f}", refresh=False)
    net.eval()
    return {"route_loss": sum(tail_route) / len(tail_route), "mlm_loss": sum(tail_mlm) / len(tail_mlm)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``routegate train lookahead`` options."""
    parser.add_argument("--data", nargs="+", required=True, help="record files (.jsonl[.gz]); only split == train is used")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--steps", type=positive_int, default=120)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--block-size", type=positive_int, default=8, help="m: model-ID tokens per candidate block")
    parser.add_argument("--prompt-tokens", type=positive_int, default=64, help="prompts are truncated to this many tokens")
    parser.add_argument(
        "--trainable-layers",
        type=int,
        default=2,
        choices=range(1, ENCODER_LAYERS + 1),
        help="top encoder layers to train (the rest stay frozen)",
    )
    parser.add_argument("--no-reconstruction", action="store_true", help="ablation (MLC): no response reconstruction")
    parser.add_argument("--reconstruction-weight", type=non_negative_float, default=0.5)
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (1 beats 2 on a busy 2-core machine: no OpenMP spin-waits)",
    )


def options_line(args: argparse.Namespace) -> str:
    """Every option of ``args`` spelled out, so the stored command reproduces the run."""
    parts = ["--data", *(shlex.quote(str(path)) for path in args.data), "--out", shlex.quote(str(published_path(args.out)))]
    for name in (
        "steps",
        "batch_size",
        "block_size",
        "prompt_tokens",
        "trainable_layers",
        "reconstruction_weight",
        "seed",
        "threads",
    ):
        parts += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.no_reconstruction:
        parts.append("--no-reconstruction")
    return " ".join(parts)


def run(args: argparse.Namespace) -> Path:
    """Train and write a checkpoint to ``args.out``."""
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    records = load_records(args.data, split="train")
    names = candidate_names([record for record in records if record.get("responses")])
    config = LookaheadConfig(
        candidates=names,
        block_size=args.block_size,
        prompt_tokens=args.prompt_tokens,
        trainable_layers=args.trainable_layers,
        reconstruction=not args.no_reconstruction,
    )
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir())
    bert = BertModel.from_pretrained(backbone_dir(), add_pooling_layer=False)
    layout = layout_for(config, bert.config, tokenizer.cls_token_id, tokenizer.sep_token_id)
    # a training input holds one block per model with a response (the others cannot be reconstructed)
    widest = max((len(record["scores"].keys() & record.get("responses", {}).keys()) for record in records), default=0)
    if widest < 2:
        raise SystemExit(
            "routegate train lookahead: no train record has the responses of two or more scored models "
            "(lookahead learns from response texts: the lookahead-* files have them)"
        )
    longest = layout.length(layout.prompt_tokens, widest)
    if longest > bert.config.max_position_embeddings:
        raise SystemExit(f"inputs of {longest} tokens exceed the backbone's {bert.config.max_position_embeddings}")
    items = prepare_items(records, names, tokenizer, layout)
    torch.manual_seed(args.seed)  # the new embeddings and heads start from the seed too
    net = new_net(config, bert)
    losses = train(
        net,
        items,
        layout,
        steps=args.steps,
        batch_size=args.batch_size,
        reconstruction=config.reconstruction,
        seed=args.seed,
        reconstruction_weight=args.reconstruction_weight,
    )
    config.training = {
        "command": "routegate train lookahead " + options_line(args),
        "data": [Path(path).name for path in args.data],
        "data_licences": {Path(path).name: licence_of(path) for path in args.data},
        "train_prompts": len(items),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "wall_seconds": round(time.monotonic() - started, 1),
        "threads": torch.get_num_threads(),
        **{key: round(value, 4) for key, value in losses.items()},
    }
    refuse_unless_finite("lookahead", net.trained_state().values())
    save_checkpoint(net, config, args.out)
    print(f"wrote {published_path(args.out)} ({len(items)} prompts, {args.steps} steps, {config.training['wall_seconds']} s)")
    return args.out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m routers.lookahead.training", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
