"""A self-written BERT / RoBERTa encoder that loads Hugging Face safetensors checkpoints.

Architecture: BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers"),
RoBERTa (Liu et al. 2019) and MPNet (Song et al. 2020, "MPNet: Masked and Permuted Pre-training"),
post-LayerNorm Transformer encoders. MPNet is the same encoder with three differences: a relative position
bias added to the attention scores (one table shared by all blocks), no token-type embeddings, and its own
names for the attention sublayer. The module names follow the Hugging Face BERT checkpoints, so
`state_dict()` equals a checkpoint's keys minus the `bert.` / `roberta.` / `mpnet.` prefix; every rename
that remains is in the tables `CHECKPOINT_KEY_RULES` and `SUBLAYER_NAMES` below.

Progtuning (docs/method.md §1) sees the model as M = E ∘ B_1 ∘ … ∘ B_L ∘ H. Here:
    E   = `embeddings.*` (and MPNet's `encoder.relative_attention_bias.*`: see part_of)
    B_i = `encoder.layer.{i-1}.*`   (0-based module index; `model.blocks` lists them low to high)
    H   = `pooler.*`, `classifier.*` (sequence tasks) or `qa_outputs.*` (span prediction)
`part_of(name)` maps a parameter name to its part.

Also here: `from_pretrained` (a local folder, a folder with only config.json for a random model, or a
hub name resolved from the local Hugging Face cache or downloaded with the standard library) and
`load_tokenizer` (the checkpoint's tokenizer through the `tokenizers` package).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from integrity import writing

log = logging.getLogger("progtuning")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    """The fields of a Hugging Face BERT/RoBERTa/MPNet config.json that the encoder uses, under their own
    names.

    Defaults are those of transformers' BertConfig, used only when config.json leaves a field out.
    """
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    relative_attention_num_buckets: int = 32  # MPNet only: buckets of its relative position bias

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json there; a model folder needs one") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [name for name in required if name not in raw]
        if missing:
            raise ValueError(f"{path}: missing required key(s) {missing}")
        values = {f.name: raw[f.name] for f in fields(cls) if f.name in raw}
        for name, value in values.items():
            expected = FIELD_TYPES[name]
            # JSON has one number type: 1e-12 and 0 are both fine for a float field, 384.0 is not an int
            ok = (isinstance(value, expected) and not isinstance(value, bool)) or (
                expected is float and isinstance(value, int) and not isinstance(value, bool)) or (
                value is None and name == "classifier_dropout")
            if not ok:
                raise ValueError(f"{path}: {name} is {value!r} ({type(value).__name__}); expected "
                                 f"{'a whole number' if expected is int else 'a number' if expected is float else 'a string'}")
        config = cls(**values)
        config.validate(str(path))
        return config

    def validate(self, where: str = "config") -> None:
        """Every field the encoder uses, in range; ValueError names the field, its value and what is
        expected (a config.json is user input: a zero head count would otherwise fail deep inside torch)."""
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{where}: {name} is {getattr(self, name)!r}; expected {expected}")

        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"{where}: model_type {self.model_type!r} is not supported; "
                             f"expected one of {', '.join(repr(t) for t in MODEL_TYPES)}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise bad(name, "a whole number >= 1")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise bad(name, "a probability in [0, 1)")
        if not (math.isfinite(self.layer_norm_eps) and self.layer_norm_eps > 0):
            raise bad("layer_norm_eps", "a small positive number such as 1e-12")
        if not (math.isfinite(self.initializer_range) and self.initializer_range > 0):
            raise bad("initializer_range", "a positive number such as 0.02")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise bad("pad_token_id", f"an id in [0, vocab_size {self.vocab_size})")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"{where}: position_embedding_type {self.position_embedding_type!r} is not "
                             "supported; only 'absolute' (BERT/RoBERTa's learned positions) is")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{where}: hidden_act {self.hidden_act!r} is not supported; "
                             f"expected one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"{where}: hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.model_type in NUMBERED_AFTER_PADDING and self.max_position_embeddings <= self.pad_token_id + 1:
            raise bad("max_position_embeddings", f"more than pad_token_id + 1 = {self.pad_token_id + 1} "
                                                 f"({self.model_type} numbers positions after the padding id)")
        if self.model_type == "mpnet" and self.relative_attention_num_buckets != 32:
            # transformers' MPNet buckets relative positions into 32 whatever this field says, so another
            # value would give a model other than the one the checkpoint was trained as.
            raise bad("relative_attention_num_buckets", "32 (MPNet's bucketing is fixed at 32)")

    @property
    def max_length(self) -> int:
        """Longest input the position table allows (RoBERTa and MPNet number positions after padding_idx)."""
        if self.model_type in NUMBERED_AFTER_PADDING:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings


MODEL_TYPES = ("bert", "roberta", "mpnet")
# Model types whose position ids start at pad_token_id + 1 and skip padding (RoBERTa's scheme; MPNet's too).
NUMBERED_AFTER_PADDING = ("roberta", "mpnet")
# What JSON type each field must have (the annotations are strings under `from __future__ import annotations`).
FIELD_TYPES = {f.name: int if f.type == "int" else float if f.type.startswith("float") else str
               for f in fields(ModelConfig)}


ACTIVATIONS = {
    "gelu": F.gelu,  # the exact erf form, what BERT and RoBERTa checkpoints were trained with
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


# --------------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------------

class Embeddings(nn.Module):
    """E: word + position (+ token-type) embeddings, then LayerNorm and dropout. MPNet has no token-type
    table: its pairs are told apart by the </s></s> between them alone."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.numbered_after_padding = config.model_type in NUMBERED_AFTER_PADDING
        self.pad_token_id = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=config.pad_token_id if self.numbered_after_padding
                                                else None)
        self.token_type_embeddings = (None if config.model_type == "mpnet" else
                                      nn.Embedding(config.type_vocab_size, config.hidden_size))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        if self.numbered_after_padding:
            # RoBERTa (and MPNet) number real tokens from padding_idx + 1 and give padding the padding_idx
            # row, so a sequence's positions do not depend on how much padding follows it.
            not_pad = input_ids.ne(self.pad_token_id).long()
            position_ids = torch.cumsum(not_pad, dim=1) * not_pad + self.pad_token_id  # (B, T)
        else:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]  # (1, T)
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


def relative_position_buckets(length: int, num_buckets: int = 32, max_distance: int = 128,
                              device: torch.device | None = None) -> torch.Tensor:
    """MPNet's bucket for every (query i, key j) pair of a length-T input, T5's bidirectional scheme (Raffel
    et al. 2020): half the buckets for keys after the query, half for keys at or before it; in each half the
    distances below a quarter of the buckets get one bucket each, longer ones share log-spaced buckets,
    and every distance from max_distance on shares the last one. Returns (T, T) int64."""
    position = torch.arange(length, device=device)
    distance = position[:, None] - position[None, :]  # (T, T): i - j, negative for a key after the query
    half = num_buckets // 2
    exact = half // 2
    after = (distance < 0).long() * half
    distance = distance.abs()
    # clamp(min=1): log(0) is -inf, and its bucket is taken from the exact branch anyway
    spaced = exact + (torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                      * (half - exact)).long()
    return after + torch.where(distance < exact, distance, spaced.clamp(max=half - 1))


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.dropout_p = config.attention_probs_dropout_prob
        # LoRA (progtuning.py) replaces query and value by an nn.Linear subclass with the same weights.
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """mask: boolean (B, 1, 1, T), True = may attend; or MPNet's additive float (B, heads, T, T), its
        position bias with -inf at padding keys."""
        B, T, C = x.shape
        head_dim = C // self.num_heads
        q = self.query(x).view(B, T, self.num_heads, head_dim).transpose(1, 2)  # (B, heads, T, head_dim)
        k = self.key(x).view(B, T, self.num_heads, head_dim).transpose(1, 2)    # (B, heads, T, head_dim)
        v = self.value(x).view(B, T, self.num_heads, head_dim).transpose(1, 2)  # (B, heads, T, head_dim)
        if mask is not None and mask.is_floating_point():
            mask = mask.to(q.dtype)  # SDPA wants an additive mask in the queries' dtype (bf16 under autocast)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout_p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, C)  # (B, T, hidden)


class SublayerOutput(nn.Module):
    """A sublayer's output projection (→ hidden), dropout, then residual + LayerNorm (post-LN, as in BERT).
    Used after self-attention (`attention.output`) and after the FFN (`output`)."""

    def __init__(self, config: ModelConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Houlsby adapters (progtuning.py) replace this identity: they sit after the projection and
        # before the residual-add and LayerNorm.
        self.adapter: nn.Module = nn.Identity()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.adapter(self.dropout(self.dense(h))) + residual)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = SublayerOutput(config, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Block(nn.Module):
    """One Transformer block B_i: the self-attention sublayer, then the feed-forward sublayer."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = SublayerOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    """The blocks; for MPNet also its relative position bias (Song et al. 2020): one table of
    (buckets, heads) shared by every block, added to the attention scores."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.relative_attention_bias = (nn.Embedding(config.relative_attention_num_buckets,
                                                     config.num_attention_heads)
                                        if config.model_type == "mpnet" else None)

    def attention_mask(self, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """What every block's attention takes: SDPA's boolean mask (B, 1, 1, T), True = may attend, padding
        keys masked for every query; with a position bias, the additive float (B, heads, T, T) instead."""
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        if self.relative_attention_bias is None:
            return mask
        buckets = relative_position_buckets(length, self.relative_attention_bias.num_embeddings,
                                            device=self.relative_attention_bias.weight.device)
        bias = self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (1, heads, T, T)
        return bias if mask is None else bias.masked_fill(~mask, float("-inf"))  # (B, heads, T, T)


class Pooler(nn.Module):
    """BERT's pooler: dense + tanh on the [CLS] vector."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class RobertaClassificationHead(nn.Module):
    """RoBERTa's (and MPNet's) sequence head on <s>: dropout, dense, tanh, dropout, out_proj (no pooler)."""

    def __init__(self, config: ModelConfig, num_labels: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden[:, 0])
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


HEADS = (None, "classification", "span")


class Transformer(nn.Module):
    """E, the L blocks and (optionally) a task head H.

    head=None: forward returns the last hidden states (B, T, hidden).
    head="classification": forward returns logits (B, num_labels); num_labels=1 is regression (STS-B).
    head="span": forward returns (start_logits, end_logits), each (B, T), for SQuAD.
    """

    def __init__(self, config: ModelConfig, head: str | None = None, num_labels: int | None = None):
        super().__init__()
        config.validate()
        if head not in HEADS:
            raise ValueError(f"head {head!r} is not known; expected one of {HEADS}")
        if head == "classification" and (num_labels is None or num_labels < 1):
            raise ValueError(f"head='classification' needs num_labels >= 1 (1 = regression), got {num_labels}")
        self.config = config
        self.head = head
        self.num_labels = num_labels if head == "classification" else None
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        if head == "classification":
            dropout = (config.classifier_dropout if config.classifier_dropout is not None
                       else config.hidden_dropout_prob)
            if config.model_type == "bert":
                self.pooler = Pooler(config)
                self.dropout = nn.Dropout(dropout)
                self.classifier: nn.Module = nn.Linear(config.hidden_size, num_labels)
            else:
                self.classifier = RobertaClassificationHead(config, num_labels, dropout)
        elif head == "span":
            self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.apply(self._init_weights)

    @property
    def blocks(self) -> list[Block]:
        """The L Transformer blocks, low (next to the embeddings) to high."""
        return list(self.encoder.layer)

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's initialisation, used for random models and for new task heads.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None):
        if input_ids.shape[1] > self.config.max_length:
            raise ValueError(f"input length {input_ids.shape[1]} exceeds the model's "
                             f"{self.config.max_length} positions")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = self.encoder.attention_mask(attention_mask, input_ids.shape[1])
        x = self.embeddings(input_ids, token_type_ids)
        for block in self.encoder.layer:
            x = block(x, mask)
        if self.head is None:
            return x
        if self.head == "span":
            start_logits, end_logits = self.qa_outputs(x).unbind(dim=-1)  # (B, T) each
            return start_logits, end_logits
        if self.config.model_type == "bert":
            return self.classifier(self.dropout(self.pooler(x)))
        return self.classifier(x)


def part_of(name: str) -> tuple[str, int | None]:
    """Which part of M = E ∘ B_1 … B_L ∘ H a parameter belongs to: ("embeddings", None),
    ("block", i) with i the 0-based module index, or ("head", None)."""
    if name.startswith(("embeddings.", "encoder.relative_attention_bias.")):
        # MPNet's position bias is position information that every block reads, computed once before
        # block 1 as E's position table is, so it is E's: it trains whenever E does.
        return "embeddings", None
    match = re.match(r"encoder\.layer\.(\d+)\.", name)
    if match:
        return "block", int(match.group(1))
    if name.split(".", 1)[0] in HEAD_MODULES:
        return "head", None
    raise ValueError(f"parameter {name!r} belongs to no part of the model (embeddings, "
                     "encoder.layer.N, or a head module)")


HEAD_MODULES = ("pooler", "classifier", "qa_outputs")


# --------------------------------------------------------------------------------------------------
# Checkpoint keys
# --------------------------------------------------------------------------------------------------

# Every difference between a Hugging Face checkpoint's keys and our state_dict() keys, applied in order.
# A key matching a "drop" rule is left out (with a note); a "rename" rule rewrites the pattern.
CHECKPOINT_KEY_RULES: list[tuple[str, str, str]] = [
    # (action, regex, replacement)
    ("rename", r"^(bert|roberta|mpnet)\.", ""),            # the base model lives under a prefix
    ("rename", r"LayerNorm\.gamma$", "LayerNorm.weight"),  # TF-era BERT checkpoints (bert-base-uncased)
    ("rename", r"LayerNorm\.beta$", "LayerNorm.bias"),
    ("drop", r"^embeddings\.position_ids$", ""),           # buffers that older transformers saved
    ("drop", r"^embeddings\.token_type_ids$", ""),
    ("drop", r"^cls\.", ""),                               # BERT pre-training heads (MLM + NSP)
    ("drop", r"^lm_head\.", ""),                           # RoBERTa's and MPNet's MLM head
]

# Per model type, the checkpoint's name for a piece of a block against ours (BERT's), as (theirs, ours)
# fragments. One table for both directions: loading maps theirs to ours, export.py ours back to theirs.
SUBLAYER_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "mpnet": ((".attention.attn.q.", ".attention.self.query."),
              (".attention.attn.k.", ".attention.self.key."),
              (".attention.attn.v.", ".attention.self.value."),
              (".attention.attn.o.", ".attention.output.dense."),       # the output projection
              (".attention.LayerNorm.", ".attention.output.LayerNorm.")),
}


def map_checkpoint_key(key: str, model_type: str = "bert") -> str | None:
    """Our name for a checkpoint key, or None when the key is dropped."""
    for action, pattern, replacement in CHECKPOINT_KEY_RULES:
        if action == "drop" and re.search(pattern, key):
            return None
        if action == "rename":
            key = re.sub(pattern, replacement, key)
    for theirs, ours in SUBLAYER_NAMES.get(model_type, ()):
        key = key.replace(theirs, ours)
    return key


def checkpoint_name(name: str, model_type: str) -> str:
    """The checkpoint's name (without the base model's prefix) for one of our parameter names."""
    for theirs, ours in SUBLAYER_NAMES.get(model_type, ()):
        name = name.replace(ours, theirs)
    return name


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: named keys, shapes, or files."""


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (one file, or the shards an index lists)."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: expected a JSON object with a 'weight_map' ({e!r})") from None
        return [folder / name for name in sorted(set(weight_map.values()))]
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    if pickled:
        raise CheckpointError(
            f"{folder}: only pickled weights ({', '.join(sorted(pickled))}); progtuning loads safetensors "
            "only, because unpickling can run arbitrary code. If you trust the file, convert it once:\n"
            "  python -c \"import torch; from safetensors.torch import save_file; "
            f"sd = torch.load('{folder / sorted(pickled)[0]}', weights_only=True); "
            f"save_file({{k: v.contiguous() for k, v in sd.items()}}, '{single}')\"")
    return []


def load_checkpoint_into(model: Transformer, files: list[Path]) -> None:
    """Copy a checkpoint's tensors into the model, strictly: every encoder key must be present with its
    shape and nothing may be left over. Head weights absent from the checkpoint keep their fresh
    initialisation; head weights the requested head does not use are dropped with a note."""
    own = model.state_dict()
    tensors = checked_checkpoint(model, files)
    with torch.no_grad():
        for ours, (file, key) in tensors.items():
            with safe_open(str(file), framework="pt") as f:
                own[ours].copy_(f.get_tensor(key))


def first_non_finite_tensor(model: Transformer, files: list[Path]) -> str | None:
    """The first of the checkpoint's tensors that the model would load and that holds nan or inf (read one
    at a time, none kept), or None; the checkpoint is checked to fit the model first."""
    for ours, (file, key) in checked_checkpoint(model, files, quiet=True).items():
        with safe_open(str(file), framework="pt") as f:
            if not torch.isfinite(f.get_tensor(key)).all():
                return key
    return None


def checked_checkpoint(model: Transformer, files: list[Path], quiet: bool = False) -> dict[str, tuple[Path, str]]:
    """{our key: (file, checkpoint key)} of the tensors to load, once every one is shown to fit: names,
    shapes and a floating-point type; CheckpointError names what does not fit. quiet: no log notes."""
    own = model.state_dict()
    tensors: dict[str, tuple[Path, str]] = {}   # our key -> (file, checkpoint key)
    dropped, unused_head = [], []
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file}: weight file listed by the checkpoint is missing")
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                ours = map_checkpoint_key(key, model.config.model_type)
                if ours is None:
                    dropped.append(key)
                    continue
                if ours in tensors:
                    raise CheckpointError(f"{file}: keys {tensors[ours][1]!r} and {key!r} both map to {ours!r}")
                if ours not in own and ours.split(".", 1)[0] in HEAD_MODULES:
                    unused_head.append(key)
                    continue
                tensors[ours] = (file, key)

    missing = [k for k in own if k not in tensors]
    missing_head = [k for k in missing if k.split(".", 1)[0] in HEAD_MODULES]
    missing_encoder = [k for k in missing if k not in missing_head]
    unexpected = [tensors[k][1] for k in tensors if k not in own]
    shape_errors, dtype_errors = [], []
    for ours, (file, key) in tensors.items():
        if ours in own:
            with safe_open(str(file), framework="pt") as f:
                shape, dtype = tuple(f.get_slice(key).get_shape()), f.get_slice(key).get_dtype()
            if shape != tuple(own[ours].shape):
                shape_errors.append(f"{key}: checkpoint {shape}, model {tuple(own[ours].shape)}")
            if not dtype.startswith(("F", "BF")):  # F64/F32/F16/BF16: copy_ converts; an integer weight is wrong
                dtype_errors.append(f"{key} is {dtype}")
    where = files[0].parent
    problems = []
    if missing_encoder:
        problems.append(f"missing key(s) {missing_encoder}")
    if unexpected:
        problems.append(f"unexpected key(s) {unexpected}")
    if shape_errors:
        problems.append("shape mismatch: " + "; ".join(shape_errors))
    if dtype_errors:
        problems.append("not floating point, so not a trained weight: " + "; ".join(dtype_errors))
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not fit a {model.config.model_type} model with "
                              f"{model.config.num_hidden_layers} blocks and head={model.head!r}: "
                              + " | ".join(problems))

    if quiet:
        return tensors
    if dropped:
        log.info("%s: left out %d checkpoint tensor(s) the task model does not use (%s)", where,
                 len(dropped), ", ".join(sorted({d.split(".")[0] + ".*" for d in dropped})))
    if unused_head:
        log.info("%s: left out head weights that head=%r does not use: %s", where, model.head, unused_head)
    if missing_head:
        log.info("%s: new head weights, initialised as BERT does (normal, std=%g; zero bias): %s",
                 where, model.config.initializer_range, missing_head)
    return tensors


# --------------------------------------------------------------------------------------------------
# Finding a checkpoint: local folder, Hugging Face cache, or download
# --------------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt")

# A hub repository id: "name" or "owner/name" (letters, digits, '-', '_', '.'), no path tricks.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it: $HF_HUB_CACHE, else $HF_HOME/hub,
    else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_name(name_or_path: str | Path) -> str | None:
    """The hub repository id that a --model value names, or None when it is a local folder (or no hub id);
    the same order resolve_checkpoint follows: a folder of that name wins."""
    name = str(name_or_path)
    if Path(name).expanduser().exists() or not _REPO_ID.match(name) or ".." in name or "--" in name:
        return None
    return name


def resolve_checkpoint(name_or_path: str | Path, revision: str = "main") -> Path:
    """A local folder holding config.json (and usually the weights) for a path or a hub name."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: folder has no config.json; expected a Hugging Face model "
                                    "folder (config.json + model.safetensors)")
        return path
    if path.exists():
        raise FileNotFoundError(f"{path}: is a file; expected a model folder holding config.json")
    name = hub_name(name_or_path)
    if name is None:
        raise FileNotFoundError(f"{name_or_path}: no such model folder (and not a Hugging Face hub name)")
    cached = _cached_snapshot(name, revision)
    if cached is not None:
        return cached
    variable = offline_variable()
    if variable:
        raise FileNotFoundError(f"{name}: no such local folder, not in the Hugging Face cache "
                                f"({hf_cache_dir()}), and {variable} is set, so nothing was downloaded")
    return download_checkpoint(name, revision)


def write_model_folder(dest: Path, tensors: dict[str, torch.Tensor], config: dict, base: Path,
                       overwrite: bool = False) -> Path:
    """A Hugging Face model folder: model.safetensors, config.json and the base model's tokenizer files
    (write_folder says how it is written)."""
    return write_folder(dest, {"model.safetensors": tensors, "config.json": config, **tokenizer_files(base)},
                        overwrite)


def tokenizer_files(base: Path) -> dict[str, Path]:
    """The tokenizer files a model folder holds, as write_folder takes them: {name: the file to copy}."""
    return {name: base / name for name in TOKENIZER_FILES if (base / name).is_file()}


def write_folder(dest: Path, files: dict[str, object], overwrite: bool = False) -> Path:
    """A folder of files, written next to `dest` under a temporary name and renamed into place, so a crash
    leaves no half folder. `files` maps a relative path to what it holds: a Path (a file to copy), or by the
    path's ending a dict of tensors (`.safetensors`), a JSON value (`.json`) or text (any other). A `dest`
    that exists and is not empty is replaced only with overwrite (FileExistsError otherwise)."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not overwrite:
        raise FileExistsError(f"{dest} exists and is not empty; pass --overwrite to replace it, or write to "
                              "another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would stay on the renamed folder
        for name, content in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with writing(dest / name):
                if isinstance(content, Path):
                    shutil.copy(content, path)
                elif name.endswith(".safetensors"):
                    save_file(content, str(path), metadata={"format": "pt"})
                elif name.endswith(".json"):
                    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
                else:
                    path.write_text(content, encoding="utf-8")
            path.chmod(0o666 & ~umask)  # a file to share, whatever mode its writer chose
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


OFFLINE_VARIABLES = ("PROGTUNING_OFFLINE", "HF_HUB_OFFLINE")


def offline_variable() -> str | None:
    """The one rule for network access: either variable set (1/true/yes) stops every download this project
    makes (model weights, GLUE, SQuAD). Returns the name of the variable that is set, or None."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}:
            return variable
    return None


def _repo_cache(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _cached_snapshot(repo_id: str, revision: str) -> Path | None:
    repo = _repo_cache(repo_id)
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    if (snapshot / "config.json").is_file() and (
            (snapshot / "model.safetensors").is_file() or (snapshot / "model.safetensors.index.json").is_file()):
        return snapshot
    return None


def _hub_request(url: str, method: str = "GET") -> urllib.request.Request:
    headers = {"User-Agent": "progtuning"}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=headers, method=method)


def _fetch(url: str, dest: Path) -> dict[str, str] | None:
    """Download url to dest (temp file + rename, so an interrupted download leaves no half file that
    looks complete). Returns the response headers, or None when the server says 404."""
    try:
        response = urllib.request.urlopen(_hub_request(url), timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        if e.code in (401, 403):
            raise PermissionError(f"{url}: HTTP {e.code}; the model may be gated or private — accept its "
                                  "licence on the hub and set HF_TOKEN") from None
        raise ConnectionError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise ConnectionError(f"{url}: cannot download ({e}); check the network, or set HF_ENDPOINT to a "
                              "mirror, or pass a local model folder") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".incomplete")
    size = int(response.headers.get("Content-Length") or 0)
    done, next_report = 0, 0.0
    with response, open(partial, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            if size > 50 << 20 and done / size >= next_report:
                log.info("downloading %s: %d%% of %.0f MB", dest.name, 100 * done / size, size / 1e6)
                next_report += 0.1
    if size and done != size:
        raise ConnectionError(f"{url}: download ended after {done} of {size} bytes; run again")
    os.replace(partial, dest)
    return dict(response.headers)


def _exists_on_hub(url: str) -> bool:
    try:
        urllib.request.urlopen(_hub_request(url, method="HEAD"), timeout=60).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


def download_checkpoint(repo_id: str, revision: str = "main") -> Path:
    """Download config, safetensors weights and tokenizer files of a hub model into the Hugging Face
    cache layout (models--owner--name/snapshots/<commit>/, refs/<revision>) and return the snapshot."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    base = f"{endpoint}/{repo_id}/resolve/{revision}"
    repo = _repo_cache(repo_id)
    staging = repo / "snapshots" / f".{revision}.incoming"
    log.info("downloading %s from %s", repo_id, endpoint)
    headers = _fetch(f"{base}/config.json", staging / "config.json")
    if headers is None:
        raise FileNotFoundError(f"{repo_id}: not found at {endpoint} (no config.json at {base}/config.json)")
    commit = next((v for k, v in headers.items() if k.lower() == "x-repo-commit"), revision)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    os.replace(staging / "config.json", snapshot / "config.json")
    if _fetch(f"{base}/model.safetensors", snapshot / "model.safetensors") is None:
        index = snapshot / "model.safetensors.index.json"
        if _fetch(f"{base}/model.safetensors.index.json", index) is None:
            if _exists_on_hub(f"{base}/pytorch_model.bin"):
                raise CheckpointError(f"{repo_id}: the hub has only pytorch_model.bin; progtuning loads "
                                      "safetensors only (unpickling can run arbitrary code). Convert it "
                                      "and pass the local folder.")
            raise FileNotFoundError(f"{repo_id}: no model.safetensors at {base}")
        for shard in weight_files(snapshot):
            if _fetch(f"{base}/{shard.name}", shard) is None:
                raise FileNotFoundError(f"{repo_id}: shard {shard.name} listed in the index is missing at {base}")
    for name in TOKENIZER_FILES:
        _fetch(f"{base}/{name}", snapshot / name)  # optional: a 404 just means this file is not used
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    try:
        staging.rmdir()
    except OSError:
        pass
    return snapshot


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------

def load_config(name_or_path: str | Path) -> ModelConfig:
    return ModelConfig.from_json(resolve_checkpoint(name_or_path) / "config.json")


def from_pretrained(name_or_path: str | Path, head: str | None = None,
                    num_labels: int | None = None) -> Transformer:
    """Build the model described by config.json and load its safetensors weights.

    A folder holding only config.json gives a randomly initialised model (for planning runs and
    parameter counting); a hub name must resolve to real weights.
    """
    folder = resolve_checkpoint(name_or_path)
    config = ModelConfig.from_json(folder / "config.json")
    model = Transformer(config, head=head, num_labels=num_labels)
    files = weight_files(folder)
    if not files:
        log.warning("%s: no model.safetensors; the model is RANDOMLY INITIALISED (fine for planning and "
                    "counting, meaningless for results)", folder)
        return model
    try:
        load_checkpoint_into(model, files)
    except SafetensorError as error:  # a truncated download, or not safetensors at all
        raise CheckpointError(f"{folder}: a weight file is not readable safetensors ({error}); download or "
                              "convert it again") from None
    return model


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

class Tokenizer:
    """The checkpoint's tokenizer (a `tokenizers.Tokenizer`) with truncation chosen per call.

    encode_batch returns `tokenizers.Encoding`s: ids, type_ids, offsets (character spans in the input
    text, which SQuAD needs), sequence_ids, and the overflowing windows when a stride is used.
    """

    def __init__(self, backend, pad_token_id: int, cls_token_id: int, source: str):
        self.backend = backend
        self.pad_token_id = pad_token_id
        self.cls_token_id = cls_token_id
        self.source = source
        # Files saved for transformers may carry fixed padding/truncation; we pad per batch instead.
        self.backend.no_padding()
        self.backend.no_truncation()

    def encode_batch(self, texts_a: list[str], texts_b: list[str] | None = None, max_length: int = 512,
                     truncation: str = "longest_first", stride: int = 0):
        """Tokenize single texts or pairs, truncated to max_length tokens including special tokens.

        truncation: "longest_first" (GLUE pairs: trim the longer text first) or "only_second"
        (SQuAD: keep the question, window the context; with stride > 0 the windows overlap by
        `stride` tokens and come back as encoding.overflowing).
        """
        if texts_b is not None and len(texts_a) != len(texts_b):
            raise ValueError(f"{len(texts_a)} first texts but {len(texts_b)} second texts")
        self.backend.enable_truncation(max_length=max_length, stride=stride, strategy=truncation)
        try:
            inputs = list(texts_a) if texts_b is None else list(zip(texts_a, texts_b))
            return self.backend.encode_batch(inputs)
        finally:
            self.backend.no_truncation()

    def __len__(self) -> int:
        return self.backend.get_vocab_size()


# Which tokenizer files serve which model type, in order of preference, and its default special tokens
# (pad, cls, sep) where tokenizer_config.json names none: the one place that says which tokenizer a model
# gets. tokenizer.json carries its own pair template; the fallbacks get theirs here: BERT's
# [CLS] A [SEP] B [SEP] (with segment ids), RoBERTa's and MPNet's <s> A </s></s> B </s>.
TOKENIZER_SOURCES: dict[str, tuple[str, ...]] = {
    "bert": ("tokenizer.json", "vocab.txt"),
    "roberta": ("tokenizer.json", "vocab.json + merges.txt"),
    "mpnet": ("tokenizer.json", "vocab.txt"),  # WordPiece vocabulary, RoBERTa's pair template
}
SPECIAL_TOKENS: dict[str, tuple[str, str, str]] = {
    "bert": ("[PAD]", "[CLS]", "[SEP]"),
    "roberta": ("<pad>", "<s>", "</s>"),
    "mpnet": ("<pad>", "<s>", "</s>"),
}


def _special_token(tokenizer_config: dict, key: str, default: str) -> str:
    value = tokenizer_config.get(key, default)
    if isinstance(value, dict):  # older files store AddedToken objects
        value = value.get("content", default)
    return value


def _files_present(folder: Path, source: str) -> bool:
    return all((folder / name).is_file() for name in source.split(" + "))


def _fallback_tokenizer(folder: Path, source: str, model_type: str, tokenizer_config: dict, specials: dict):
    """A tokenizer built from vocab.txt (WordPiece) or vocab.json + merges.txt (byte-level BPE), with the
    model type's pair template."""
    from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    if source == "vocab.txt":
        if "do_lower_case" in tokenizer_config:
            lowercase = bool(tokenizer_config["do_lower_case"])
        else:
            lowercase = True
            log.info("%s: tokenizer_config.json does not say do_lower_case; lower-casing, as BERT's "
                     "tokenizer does by default", folder)
        try:
            backend = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=lowercase,
                                             strip_accents=tokenizer_config.get("strip_accents"),
                                             unk_token=_special_token(tokenizer_config, "unk_token", "[UNK]"),
                                             cls_token=specials["cls"], sep_token=specials["sep"],
                                             pad_token=specials["pad"])
        except TypeError as error:  # the wrapper's way of saying a special token is not in the vocabulary
            raise ValueError(f"{folder / 'vocab.txt'}: {error}") from None
        add_prefix_space = False
    else:
        add_prefix_space = bool(tokenizer_config.get("add_prefix_space", False))
        backend = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                        add_prefix_space=add_prefix_space, trim_offsets=True)
    if model_type != "bert":
        for token in (specials["sep"], specials["cls"]):
            if backend.token_to_id(token) is None:
                raise ValueError(f"{folder}: special token {token!r} is not in the vocabulary ({source})")
        # <s> A </s></s> B </s>, as RoBERTa and MPNet were pre-trained.
        backend.post_processor = RobertaProcessing((specials["sep"], backend.token_to_id(specials["sep"])),
                                                   (specials["cls"], backend.token_to_id(specials["cls"])),
                                                   trim_offsets=True, add_prefix_space=add_prefix_space)
    # The ByteLevelBPETokenizer / BertWordPieceTokenizer wrappers expose the underlying Tokenizer.
    return backend._tokenizer


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """The first of the model type's TOKENIZER_SOURCES that the folder has, with special tokens from
    tokenizer_config.json."""
    from tokenizers import Tokenizer as BackendTokenizer

    folder = resolve_checkpoint(name_or_path)
    config = ModelConfig.from_json(folder / "config.json")
    tokenizer_config: dict = {}
    if (folder / "tokenizer_config.json").is_file():
        try:
            tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{folder / 'tokenizer_config.json'}: not valid JSON ({error})") from None
    defaults = dict(zip(("pad", "cls", "sep"), SPECIAL_TOKENS[config.model_type]))
    specials = {key: _special_token(tokenizer_config, f"{key}_token", default) for key, default in defaults.items()}
    sources = TOKENIZER_SOURCES[config.model_type]
    source = next((s for s in sources if _files_present(folder, s)), None)
    if source is None:
        raise FileNotFoundError(f"{folder}: no tokenizer files; a {config.model_type} model needs "
                                + " or ".join(sources))
    if source == "tokenizer.json":
        try:
            backend = BackendTokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as error:  # the Rust side raises a plain Exception for a malformed file
            raise ValueError(f"{folder / 'tokenizer.json'}: not a tokenizers file ({error})") from None
    else:
        backend = _fallback_tokenizer(folder, source, config.model_type, tokenizer_config, specials)
    pad_id, cls_id = backend.token_to_id(specials["pad"]), backend.token_to_id(specials["cls"])
    if pad_id is None or cls_id is None:
        raise ValueError(f"{folder}: tokenizer ({source}) has no id for {specials['pad']!r} or {specials['cls']!r}")
    if pad_id != config.pad_token_id:
        raise ValueError(f"{folder}: tokenizer's {specials['pad']!r} has id {pad_id} but config.json says "
                         f"pad_token_id {config.pad_token_id}; they must agree")
    return Tokenizer(backend, pad_token_id=pad_id, cls_token_id=cls_id, source=f"{folder / source}")
