"""Progtuning: progressive fine-tuning of Transformer encoders (Ji, Zhao, Chen, Zhao, Liu, "Progtuning:
Progressive Fine-tuning Framework for Transformer-based Language Models"), as docs/method.md
states it.

The L blocks are split into T contiguous parts; stage t trains parts t..T (schedule `shrink`), so low
blocks stop training early. Adapter (Houlsby et al. 2019), LoRA (Hu et al. 2021) and BitFit (Ben Zaken
et al. 2021) are scheduled the same way: a method's parameters inside block j follow block j.

Reading order:
  partition, stage_blocks, stage_of_step   pure schedule arithmetic (numbers in, numbers out)
  Adapter, LoRALinear, add_method          the hand-written PEFT modules and where they go
  method_trains, apply_stage               which parameters train in a stage (sets requires_grad)
  count_parameters, stage_diagram          the paper's cost measure: updated parameters

Block indices are 0-based, as in the module names `encoder.layer.{i}`; stages and epochs are 1-based,
as in the paper. Part t (1-based) is `range(b_{t-1}, b_t)` with b_t = floor(t·L/T) — docs/method.md §2's
"blocks b_{t-1}+1 … b_t" in 1-based numbering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from model import SelfAttention, SublayerOutput, Transformer, part_of
from sparse import SPARSE_METHODS

SCHEDULES = ("shrink", "no-low", "grow")
METHODS = ("full", "adapter", "bitfit", "lora") + SPARSE_METHODS
MODES = ("ft", "pt")


# --------------------------------------------------------------------------------------------------
# The schedule (docs/method.md §2)
# --------------------------------------------------------------------------------------------------

def partition(num_blocks: int, num_stages: int) -> list[range]:
    """Split blocks 0..L-1 into T contiguous parts with evenly spaced boundaries b_t = floor(t·L/T).

    Sizes differ by at most one; when T > L some parts are empty.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if num_stages < 1:
        raise ValueError(f"the number of stages T must be >= 1, got {num_stages}")
    bounds = [t * num_blocks // num_stages for t in range(num_stages + 1)]
    return [range(bounds[t - 1], bounds[t]) for t in range(1, num_stages + 1)]


def stage_blocks(t: int, parts: list[range], schedule: str = "shrink") -> list[int]:
    """The 0-based blocks trainable in stage t (1-based) of a Progtuning run.

    shrink (Eq. 3): parts t..T;  no-low (Eq. 4, "w/o LB"): parts t+1..T;  grow (Eq. 5, "from HB"): parts T-t+1..T.
    """
    T = len(parts)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if not 1 <= t <= T:
        raise ValueError(f"stage {t} is outside 1..{T}")
    if schedule == "no-low" and T == 1:
        raise ValueError("schedule 'no-low' with one stage trains no block at all (only the head); "
                         "use at least 2 stages")
    first_part = {"shrink": t, "no-low": t + 1, "grow": T - t + 1}[schedule]  # 1-based
    return [block for part in parts[first_part - 1:] for block in part]


def plan_stages(num_blocks: int, num_stages: int, mode: str, schedule: str = "shrink") -> list[list[int]]:
    """Trainable blocks for each stage 1..T: all blocks in every stage for plain fine-tuning (`ft`),
    the schedule's sets for Progtuning (`pt`)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    parts = partition(num_blocks, num_stages)
    if mode == "ft":
        return [list(range(num_blocks)) for _ in parts]
    return [stage_blocks(t, parts, schedule) for t in range(1, num_stages + 1)]


def parse_blocks(spec: str, num_blocks: int | None = None) -> list[int]:
    """A fixed set of blocks to train (run.py --train-blocks; the paper's Figure 1 trains E, one block and
    H): '3', '1-2', '5,6', '1-2,5', numbered from 1 as the paper does, or 'none' for E and H alone.
    Returns sorted 0-based indices; ValueError says what is wrong (num_blocks None: syntax only)."""
    text = spec.strip().lower()
    if text == "none":
        return []
    blocks: set[int] = set()
    for item in text.split(","):
        low, dash, high = item.strip().partition("-")
        if not (low.isdigit() and (not dash or high.isdigit())):
            raise ValueError(f"{spec!r} is not a block list; expected numbers from 1, ranges and commas such as "
                             "'3', '1-2', '5,6', or 'none' (embeddings and head only)")
        first, last = int(low), int(high) if dash else int(low)
        if first < 1 or last < first:
            raise ValueError(f"{spec!r}: {item.strip()!r} is not a range of blocks numbered from 1")
        if num_blocks is not None and last > num_blocks:
            raise ValueError(f"{spec!r}: the model has blocks 1-{num_blocks}, so block {last} does not exist")
        blocks.update(range(first - 1, last))
    return sorted(blocks)


def stage_of_step(step: int, total_steps: int, num_stages: int) -> int:
    """The 1-based stage of a 0-based optimizer step when T stages split the steps evenly.

    With T = epochs this is exactly the epoch: step s of epoch e (of E, S steps each) gives
    floor((e·S + s)·E / (E·S)) + 1 = e + 1.
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} is outside 0..{total_steps - 1}")
    return step * num_stages // total_steps + 1


# --------------------------------------------------------------------------------------------------
# The PEFT modules (docs/method.md §3)
# --------------------------------------------------------------------------------------------------

class Adapter(nn.Module):
    """Houlsby bottleneck adapter: a(x) = x + W_up · gelu(W_down · x + b_down) + b_up.

    W_up and b_up start at zero, so a freshly added adapter is exactly the identity and the pretrained
    model's outputs are unchanged until training moves it.
    """

    def __init__(self, hidden_size: int, bottleneck: int, init_std: float = 0.02):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class LoRALinear(nn.Linear):
    """nn.Linear plus a low-rank update: W x + b + (α / r) · B A dropout(x).

    A (r × in) is Kaiming-uniform and B (out × r) zero, so the update starts at zero. The pretrained W
    and b keep their names (`weight`, `bias`), so checkpoints load unchanged. `merge()` folds B A into W
    for inference and `unmerge()` takes it out again; neither happens implicitly.
    """

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float = 0.0):
        super().__init__(in_features, out_features)
        if r <= 0:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}")
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own weight initialisation
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> "LoRALinear":
        lora = cls(linear.in_features, linear.out_features, r, alpha, dropout)
        lora.weight, lora.bias = linear.weight, linear.bias  # the same Parameter objects, not copies
        return lora.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            raise RuntimeError("LoRA update is already merged into the weight")
        self.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError("LoRA update is not merged; nothing to unmerge")
        self.weight -= self.delta_weight()
        self.merged = False


@dataclass
class MethodOptions:
    """Hyper-parameters of the PEFT methods (docs/method.md §3 defaults)."""
    adapter_size: int = 64
    lora_r: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("query", "value")

    def validate(self) -> None:
        if self.adapter_size < 1:
            raise ValueError(f"adapter bottleneck size must be >= 1, got {self.adapter_size}")
        if self.lora_r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.lora_r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.lora_dropout}")
        unknown = set(self.lora_targets) - {"query", "key", "value"}
        if unknown or not self.lora_targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of query, key, value; got {self.lora_targets}")


def add_method(model: Transformer, method: str, options: MethodOptions | None = None) -> Transformer:
    """Insert the method's own modules into every block: adapters after both sublayer projections, or
    LoRA on the attention projections. `full` and `bitfit` add nothing (BitFit only selects biases)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    options = options or MethodOptions()
    options.validate()
    for block in model.blocks:
        if method == "adapter":
            for sublayer in (block.attention.output, block.output):
                assert isinstance(sublayer, SublayerOutput) and isinstance(sublayer.adapter, nn.Identity), \
                    "adapters were already added to this model"
                sublayer.adapter = Adapter(model.config.hidden_size, options.adapter_size,
                                           init_std=model.config.initializer_range)
        elif method == "lora":
            attention: SelfAttention = block.attention.self
            for target in options.lora_targets:
                linear = getattr(attention, target)
                if isinstance(linear, LoRALinear):
                    raise ValueError(f"LoRA was already added to {target}")
                setattr(attention, target, LoRALinear.from_linear(linear, options.lora_r, options.lora_alpha,
                                                                  options.lora_dropout))
    return model


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


# --------------------------------------------------------------------------------------------------
# What trains in a stage (docs/method.md §2 and §3)
# --------------------------------------------------------------------------------------------------

def method_trains(method: str, name: str, freeze_embeddings: bool = False) -> bool:
    """Whether a parameter is one the method ever trains, before the schedule is applied.

    full:    everything (E, every block, H); with freeze_embeddings, not E.
    adapter: in blocks, the adapters and the two LayerNorms; outside, H.
    lora:    in blocks, lora_A and lora_B; outside, H.
    bitfit:  in blocks, every bias; outside, the embedding LayerNorm's bias, the pooler's bias and the
             classifier. RoBERTa's `classifier.dense` is trained whole: unlike BERT's pooler it is newly
             initialised, and a frozen random projection would be no baseline worth having.
    sam, random, magnitude (sparse.py): as full, tensor by tensor; their mask then picks the entries
             that train inside each tensor, and a tensor with none stays frozen (the `entries` argument
             of trainable_names and count_parameters).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    part, _ = part_of(name)
    if part == "embeddings":
        if method == "full" or method in SPARSE_METHODS:
            return not freeze_embeddings
        return method == "bitfit" and name == "embeddings.LayerNorm.bias" and not freeze_embeddings
    if part == "head":
        if method == "bitfit" and name.startswith("pooler."):
            return name.endswith(".bias")
        return True
    # inside a block
    if method == "full" or method in SPARSE_METHODS:
        return True
    if method == "adapter":
        return ".adapter." in name or ".LayerNorm." in name
    if method == "lora":
        return ".lora_A" in name or ".lora_B" in name
    return name.endswith(".bias")  # bitfit


def trainable_names(model: nn.Module, trainable_blocks: list[int], method: str,
                    freeze_embeddings: bool = False, entries: dict[str, int] | None = None) -> set[str]:
    """Names of the parameters that train in a stage whose trainable blocks are `trainable_blocks`.
    entries (sparse methods): masked-in entries per masked tensor; a tensor with 0 never trains."""
    blocks = set(trainable_blocks)
    names = set()
    for name, _ in model.named_parameters():
        part, block = part_of(name)
        if (method_trains(method, name, freeze_embeddings) and (part != "block" or block in blocks)
                and (entries is None or entries.get(name, 1) > 0)):
            names.add(name)
    return names


def apply_stage(model: nn.Module, trainable_blocks: list[int], method: str,
                freeze_embeddings: bool = False, entries: dict[str, int] | None = None) -> set[str]:
    """Set requires_grad so that exactly the stage's parameters train; return their names.

    A frozen parameter gets no gradient (autograd skips it), so with zero_grad(set_to_none=True) its
    .grad stays None and AdamW leaves it untouched: no momentum or weight-decay drift.
    """
    names = trainable_names(model, trainable_blocks, method, freeze_embeddings, entries)
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    return names


# --------------------------------------------------------------------------------------------------
# Counting (docs/method.md §4)
# --------------------------------------------------------------------------------------------------

@dataclass
class ParameterCounts:
    """The paper's cost measure, from the model's real parameters.

    total_params: every parameter, added adapter/LoRA parameters included.
    trainable_params: trainable in at least one stage.
    updated_params_per_epoch: the parameters trainable in each epoch; when a stage boundary falls inside
        an epoch (--stages different from --epochs), each stage counts for the share of the epoch's
        steps it covers.
    updated_params: their sum over epochs.
    baseline_updated_params: the same method without Progtuning (every block, every epoch).
    """
    total_params: int
    trainable_params: int
    trainable_params_per_stage: list[int]
    updated_params_per_epoch: list[float]
    updated_params: float
    baseline_updated_params: int
    reduction: float = field(init=False)

    def __post_init__(self):
        self.reduction = 1 - self.updated_params / self.baseline_updated_params if self.baseline_updated_params else 0.0


def count_parameters(model: nn.Module, stages: list[list[int]], method: str, epochs: int,
                     steps_per_epoch: int | None = None, freeze_embeddings: bool = False,
                     entries: dict[str, int] | None = None) -> ParameterCounts:
    """Count total, trainable and updated parameters of a run whose stage k trains blocks stages[k-1].

    steps_per_epoch: the run's real number of optimizer steps, so a mid-epoch stage switch is counted
    where it really happens; None counts by exact fractions of an epoch (a planning run).
    entries (sparse methods): masked-in entries per masked tensor; such a tensor counts for its entries
    in trainable and updated, for its whole size in total.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    total = sum(p.numel() for p in model.parameters())
    numel = {name: p.numel() for name, p in model.named_parameters()}
    numel.update(entries or {})
    stage_names = [trainable_names(model, blocks, method, freeze_embeddings, entries) for blocks in stages]
    per_stage = [sum(numel[n] for n in names) for names in stage_names]
    ever = set().union(*stage_names)

    # Share of each epoch spent in each stage, from the step at which each stage begins.
    num_stages = len(stages)
    steps = steps_per_epoch if steps_per_epoch is not None else num_stages  # K steps per epoch: exact fractions
    total_steps = steps * epochs
    per_epoch = []
    for epoch in range(epochs):
        stage_steps = [0] * num_stages
        for step in range(epoch * steps, (epoch + 1) * steps):
            stage_steps[stage_of_step(step, total_steps, num_stages) - 1] += 1
        updated = sum(Fraction(n, steps) * per_stage[k] for k, n in enumerate(stage_steps))
        per_epoch.append(int(updated) if updated.denominator == 1 else float(updated))

    all_blocks = list(range(len(getattr(model, "blocks", []))))
    baseline = sum(numel[n] for n in trainable_names(model, all_blocks, method, freeze_embeddings, entries))
    baseline *= epochs
    return ParameterCounts(total_params=total, trainable_params=sum(numel[n] for n in ever),
                           trainable_params_per_stage=per_stage, updated_params_per_epoch=per_epoch,
                           updated_params=sum(per_epoch), baseline_updated_params=baseline)


def stage_diagram(stages: list[list[int]], num_blocks: int, epochs: int, counts: ParameterCounts | None = None) -> str:
    """A text picture of which blocks train in which stage: '#' trains, '.' frozen (block 1 = lowest)."""
    width = len(str(num_blocks))
    label = "epoch" if len(stages) == epochs else "stage"
    prefix = len(f"{label} {len(stages)}") + 2
    lines = ["block".ljust(prefix) + " ".join(str(b + 1).rjust(width) for b in range(num_blocks))]
    for k, blocks in enumerate(stages, start=1):
        marks = " ".join(("#" if b in blocks else ".").rjust(width) for b in range(num_blocks))
        row = f"{label} {k}".ljust(prefix) + marks
        if counts is not None:
            row += f"   {counts.trainable_params_per_stage[k - 1]:>13,} trainable"
        lines.append(row)
    return "\n".join(lines)
