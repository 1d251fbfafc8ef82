"""recipe.py: what a run trains -- the paper's recipes (docs/method.md §5), the settings a run records, the
model those settings build, and its plan: the stages and the parameter counts (docs/method.md §2 and §4).

Reading order:
  preset                          the recipe's defaults for a task and method, and where they come from
  Settings                        every setting of a run, as results.json and checkpoints record them
  build_model, plan               the task model with the method's modules; its trainable blocks per stage
  ever_trainable, planned_entries which parameters (a sparse method: how many entries) ever train
  counts_record, counts_table     the counts as results.json holds them and as the run prints them
  autocast                        the run's precision: bf16 where the device has it, fp16 with loss scaling

Imports point down: model, data, sparse and progtuning; run.py, training.py, evaluation.py, export.py and
predict.py build on this module.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError

import data
import sparse
from model import (CheckpointError, Transformer, first_non_finite_tensor, from_pretrained, load_config,
                   resolve_checkpoint, weight_files)
from progtuning import (MethodOptions, ParameterCounts, add_method, parse_blocks, plan_stages, stage_of_step,
                        trainable_names)
from sparse import SPARSE_METHODS

GLUE_TASK_NAMES = tuple(data.GLUE_TASKS)
SQUAD_TASK_NAMES = tuple(data.SQUAD_VERSIONS)
TASKS = GLUE_TASK_NAMES + SQUAD_TASK_NAMES


# --------------------------------------------------------------------------------------------------
# Recipes (docs/method.md §5). Every value is a default that a command-line flag overrides.
# --------------------------------------------------------------------------------------------------

# LoRA for RoBERTa-base (Hu et al. 2021, Table 9): epochs and peak learning rate per task.
LORA_EPOCHS = {"mnli": 30, "sst2": 60, "mrpc": 30, "cola": 80, "qnli": 25, "qqp": 25, "rte": 80, "stsb": 40}
LORA_LR = {"mnli": 5e-4, "sst2": 5e-4, "qqp": 5e-4, "rte": 5e-4, "mrpc": 4e-4, "cola": 4e-4, "qnli": 4e-4,
           "stsb": 4e-4}


def preset(task: str, method: str) -> tuple[dict, str]:
    """The recipe's defaults for a task and method, and where they come from."""
    squad = task in SQUAD_TASK_NAMES
    base = {"max_length": 384 if squad else 128, "weight_decay": 0.01, "warmup_ratio": 0.0}
    if squad:
        recipe = {"epochs": 3 if task == "squad" else 2, "lr": 3e-5, "batch_size": 12}
        source = "paper: SQuAD v1.1 3 epochs / v2.0 2 epochs, lr 3e-5, batch 12, max length 384, stride 128"
        if method != "full":
            source += f"; no {method} recipe for SQuAD is given, the full fine-tuning one is used"
    elif method == "full":
        recipe = {"epochs": 3, "lr": 2e-5, "batch_size": 32}
        source = "paper: GLUE full fine-tuning, 3 epochs, batch 32, lr 2e-5, max length 128"
    elif method == "lora":
        recipe = {"epochs": LORA_EPOCHS[task], "lr": LORA_LR[task], "batch_size": 16, "warmup_ratio": 0.06}
        source = "LoRA paper (RoBERTa-base): batch 16, r 8, alpha 8, warmup 0.06, per-task epochs and lr"
    elif method == "adapter":
        recipe = {"epochs": 3, "lr": 3e-4, "batch_size": 32, "warmup_ratio": 0.1}
        source = ("Houlsby et al.: batch 32, 10% warmup, bottleneck 64; lr 3e-4 and 3 epochs are our picks "
                  "from their sweeps (lr 1e-4/3e-4/1e-3, epochs 3/20)")
    elif method == "bitfit":
        recipe = {"epochs": 3, "lr": 1e-3, "batch_size": 32}
        source = ("BitFit: lr 1e-3 is our pick from its sweep (1e-4/4e-4/7e-4/1e-3); 3 epochs and batch 32 "
                  "as for full fine-tuning")
    else:  # sam, random, magnitude
        recipe = {"epochs": 3, "lr": 5e-4, "batch_size": 32}
        source = (f"sparse fine-tuning ({method}): lr 5e-4 is our pick for training 0.5% of the entries "
                  "(between full fine-tuning's 2e-5 and BitFit's 1e-3); 3 epochs and batch 32 as for full "
                  "fine-tuning")
    # weight decay 0.01 is BERT's; the paper does not state one.
    return {**base, **recipe}, source


@dataclass
class Settings:
    task: str
    mode: str = "pt"
    method: str = "full"
    schedule: str = "shrink"
    model: str = "bert-base-uncased"
    data_dir: str | None = None
    train_file: str | None = None
    dev_file: str | None = None
    epochs: int = 3
    stages: int = 3
    lr: float = 2e-5
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 128
    doc_stride: int = 128
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seeds: list[int] = field(default_factory=lambda: [1])
    output_dir: str = ""
    device: str = "cpu"
    compile: bool = False
    compile_backend: str = "inductor"
    amp: bool = False
    amp_dtype: str = "auto"  # with amp: "auto" (bf16 where the device has it, else fp16), "bf16" or "fp16"
    freeze_embeddings: bool = False
    random_init: bool = False  # train from random weights; refused unless asked for, marked in the records
    adapter_size: int = 64
    lora_r: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    sparsity: float = 0.005           # sam/random/magnitude: the share of entries that train
    mask_scope: str = "tensor"        # k per tensor, or one top-k over all eligible entries ("global")
    burn_in_steps: int | None = None  # sam: batches whose gradients rank the entries (None: one epoch)
    null_threshold: float = 0.0
    limit_train: int | None = None
    train_subset: int | None = None  # train on this many rows drawn at random, the same for every seed
    subset_seed: int = 0             # the draw's own seed (data.subset_rows), never the run's
    limit_eval: int | None = None
    log_every: int = 50
    resume: bool = False
    overwrite: bool = False
    save_trained: bool = False
    keep_checkpoint: bool = True  # a finished seed's checkpoint (weights + AdamW moments: ~3x the model)
    dist_timeout: float = 30.0  # minutes a process waits for the others (torchrun) before it gives up
    export: str | None = None  # write each finished seed here (export.py)
    export_format: str | None = None  # hf, peft or adapters (export.FORMATS); None: the method's default
    train_blocks: str | None = None  # a fixed set of blocks instead of a schedule (progtuning.parse_blocks)
    count_only: bool = False
    interrupt_after_steps: int | None = None  # testing: behave as if Ctrl-C came after this many steps
    preset_source: str = ""

    @property
    def is_squad(self) -> bool:
        return self.task in SQUAD_TASK_NAMES

    def method_options(self) -> MethodOptions:
        return MethodOptions(adapter_size=self.adapter_size, lora_r=self.lora_r, lora_alpha=self.lora_alpha,
                             lora_dropout=self.lora_dropout)

    @classmethod
    def from_record(cls, recorded: dict) -> "Settings":
        """The settings a results.json or trained file recorded; keys a newer or older run.py wrote but this
        one does not know are left out, and fields the record predates take their defaults."""
        return cls(**{k: v for k, v in recorded.items() if k in cls.__dataclass_fields__})

    def run_defining(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        keys = ("task", "mode", "method", "schedule", "model", "train_file", "dev_file", "epochs", "stages", "lr",
                "batch_size", "max_length", "doc_stride", "warmup_ratio", "weight_decay", "max_grad_norm",
                "freeze_embeddings", "adapter_size", "lora_r", "lora_alpha", "lora_dropout", "limit_train",
                "train_subset", "subset_seed",
                "amp", "amp_dtype", "sparsity", "mask_scope", "burn_in_steps", "random_init", "limit_eval",
                "train_blocks")
        return {k: getattr(self, k) for k in keys}

    def differences(self, recorded: dict) -> dict:
        """{key: (recorded value, this run's value)} for each run-defining setting that differs. A setting
        that a record predates (absent from it) counts as its default, which is what that run used."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        return {k: (recorded.get(k, defaults.get(k)), v) for k, v in self.run_defining().items()
                if recorded.get(k, defaults.get(k)) != v}


# --------------------------------------------------------------------------------------------------
# The model and its plan
# --------------------------------------------------------------------------------------------------

def build_model(settings: Settings, weights: bool = True) -> Transformer:
    """The pretrained encoder with the task head and the method's modules; weights=False builds it from
    config.json alone with uninitialised tensors (right names and shapes, for planning and counting).
    --random-init: BERT's random initialisation instead of the checkpoint's weights."""
    head, num_labels = data.task_head(settings.task)
    if weights and settings.random_init:
        model = Transformer(load_config(settings.model), head=head, num_labels=num_labels)
    elif weights:
        model = from_pretrained(settings.model, head=head, num_labels=num_labels)
    else:
        config = load_config(settings.model)
        with _SkipInit():
            model = Transformer(config, head=head, num_labels=num_labels)
            add_method(model, settings.method, settings.method_options())
        return model
    return add_method(model, settings.method, settings.method_options())


class _SkipInit(torch.overrides.TorchFunctionMode):
    """Counting needs names and shapes, not values: in-place initialisation returns its tensor untouched, so
    a planning model costs only uninitialised allocations (pages a BERT-large never touches). The meta
    device would do too, but its first use imports torch._dynamo and sympy, about a second."""
    INIT_OPS = {"normal_", "uniform_", "zero_", "fill_", "kaiming_uniform_", "trunc_normal_"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.INIT_OPS:
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


def check_checkpoint(settings: Settings) -> None:
    """The checkpoint fits the task model (names, shapes, types) and holds only finite numbers, read tensor by
    tensor into no model: the check a run makes before it reads any data, so a truncated, broken or foreign
    file is named at once instead of after minutes of tokenizing."""
    folder = resolve_checkpoint(settings.model)
    head, num_labels = data.task_head(settings.task)
    with _SkipInit():  # names and shapes only
        model = Transformer(load_config(folder), head=head, num_labels=num_labels)
    try:
        broken = first_non_finite_tensor(model, weight_files(folder))
    except SafetensorError as error:  # a truncated download, or not safetensors at all
        raise CheckpointError(f"{folder}: a weight file is not readable safetensors ({error}); download or "
                              "convert it again") from None
    if broken is not None:
        raise CheckpointError(f"{folder}: the checkpoint's {broken} holds nan or inf before any step: the "
                              "checkpoint is broken; get it again")


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The first parameter holding nan or inf, or None: a broken checkpoint, or a run that diverged."""
    return next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)


def plan(settings: Settings, model: Transformer) -> list[list[int]]:
    """Trainable blocks per stage: the schedule's, or --train-blocks' fixed set in every stage."""
    if settings.train_blocks is not None:
        try:
            return [parse_blocks(settings.train_blocks, len(model.blocks))] * settings.stages
        except ValueError as error:
            raise SystemExit(f"error: --train-blocks {error}") from None
    return plan_stages(len(model.blocks), settings.stages, settings.mode, settings.schedule)


def ever_trainable(model: Transformer, stages: list[list[int]], settings: Settings,
                   entries: dict[str, int] | None = None) -> list[str]:
    """The parameters that train in at least one stage, in model order: what the optimizer holds."""
    ever = set().union(*(trainable_names(model, blocks, settings.method, settings.freeze_embeddings, entries)
                         for blocks in stages))
    return [name for name, _ in model.named_parameters() if name in ever]


def planned_entries(settings: Settings, model: Transformer) -> dict[str, int] | None:
    """Sparse methods, scope tensor: the masked-in entries per tensor, which the shapes fix. None for the
    other methods and for scope global, whose split over the tensors depends on the data."""
    if settings.method not in SPARSE_METHODS:
        return None
    params = dict(model.named_parameters())
    eligible = sparse.eligible_names(model, settings.freeze_embeddings)
    return sparse.planned_entries({n: params[n].numel() for n in eligible}, settings.sparsity, settings.mask_scope)


def global_scope_note(settings: Settings, model: Transformer) -> str:
    params = dict(model.named_parameters())
    eligible = {n: params[n].numel() for n in sparse.eligible_names(model, settings.freeze_embeddings)}
    return (f"--mask-scope global: k = {sparse.global_k(eligible, settings.sparsity):,} of {sum(eligible.values()):,} "
            "eligible entries train, plus the head; how they split over E and the blocks, and so the updated "
            "parameters per epoch, depends on the mask, which the training run chooses and records "
            "(runs[].mask in results.json)")


def counts_record(counts: ParameterCounts | None) -> dict:
    """The counts as results.json holds them; all None when they are not known yet (a sparse method with
    --mask-scope global, before its mask is chosen)."""
    if counts is None:
        return dict.fromkeys(("total_params", "trainable_params", "trainable_params_per_stage",
                              "updated_params_per_epoch", "updated_params", "baseline_updated_params",
                              "reduction"))
    return {"total_params": counts.total_params, "trainable_params": counts.trainable_params,
            "trainable_params_per_stage": counts.trainable_params_per_stage,
            "updated_params_per_epoch": counts.updated_params_per_epoch, "updated_params": counts.updated_params,
            "baseline_updated_params": counts.baseline_updated_params, "reduction": counts.reduction}


def counts_table(counts: ParameterCounts, settings: Settings, steps_per_epoch: int | None) -> str:
    """Per-epoch table: which stages an epoch spans and how many parameters it updates."""
    per = steps_per_epoch or settings.stages
    total_steps = per * settings.epochs
    lines = [f"{'epoch':>5}  {'stage(s)':<9} {'updated params':>16} {'same method, ft':>16}"]
    baseline_per_epoch = counts.baseline_updated_params // settings.epochs
    for epoch, updated in enumerate(counts.updated_params_per_epoch, start=1):
        first = stage_of_step((epoch - 1) * per, total_steps, settings.stages)
        last = stage_of_step(epoch * per - 1, total_steps, settings.stages)
        label = str(first) if first == last else f"{first}-{last}"
        lines.append(f"{epoch:>5}  {label:<9} {updated:>16,.0f} {baseline_per_epoch:>16,}")
    lines.append(f"{'total':>5}  {'':<9} {counts.updated_params:>16,.0f} {counts.baseline_updated_params:>16,}")
    lines.append(f"total params {counts.total_params:,}; ever trainable {counts.trainable_params:,}; "
                 f"updated params {100 * counts.reduction:.1f}% fewer than the same method "
                 + ("training every block" if settings.train_blocks is not None else "without Progtuning"))
    return "\n".join(lines)


def steps_per_epoch(settings: Settings, rows: int) -> int:
    return math.ceil(rows / settings.batch_size)


# --------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------

def autocast_dtype(settings: Settings) -> torch.dtype | None:
    """The autocast precision of a run, None for fp32: bf16 where the device has it, else fp16 (which
    needs loss scaling); --amp-dtype fixes one of the two."""
    if not settings.amp:
        return None
    if settings.amp_dtype != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[settings.amp_dtype]
    if settings.device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(settings: Settings):
    dtype = autocast_dtype(settings)
    return torch.autocast(device_type="cuda" if settings.device.startswith("cuda") else "cpu", dtype=dtype,
                          enabled=dtype is not None)
