"""run.py: fine-tune a BERT/RoBERTa encoder on a GLUE task or SQuAD with plain fine-tuning (`--mode ft`) or
Progtuning (`--mode pt`), for full fine-tuning or a PEFT method, and leave a record that survives.

    python run.py --task rte --mode pt
    python run.py --task rte --mode pt --method lora --model roberta-base
    python run.py --task squad_v2 --mode pt --train-file train-v2.0.json
    python run.py --task rte --mode pt --epochs 3 --model DIR --count-only   # plan: parameter counts only

Reading order:
  PRESETS, Settings, parse_args      the paper's recipes (SPEC.md section 5) and the command line
  load_task_data                     tokenize once per run (GLUE pairs, SQuAD windows)
  train_one_seed                     the single training loop: stage -> lr -> forward -> backward -> step
  evaluate_glue, evaluate_squad      dev-set metrics, predictions files
  (records.py)                       results.json, log.jsonl, one safetensors checkpoint per seed
  main                               seeds, results.json, mean ± std

Layout of a run (default --output-dir runs/<task>-<mode>-<method>[-<schedule>]):
  results.json               settings, parameter counts, every epoch's metrics, per-seed and mean ± std
  seed-<k>/log.jsonl         one JSON line per progress report, epoch and evaluation
  seed-<k>/checkpoint.safetensors   trainable weights, optimizer, scaler, RNG and position (for --resume)
  seed-<k>/predictions-*.tsv|json   dev predictions of the last finished epoch
  seed-<k>/trained.safetensors      with --save-trained: only the parameters that ever trained
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import save_file

import data
import distributed
import export
import glue_eval
import sparse
import squad_eval
from model import (Transformer, from_pretrained, load_config, load_tokenizer, part_of, replace_durably,
                   resolve_checkpoint, weight_files)
from records import (COUNT_KIND, FORMAT_VERSION, RESULTS_KIND, append_log, block_numbers, checkpoint_meta,
                     checkpoint_tensors, load_checkpoint, read_json, restore_rng, save_checkpoint,
                     summarize, upgrade_run, write_json_atomic, write_text_atomic)
from progtuning import (METHODS, MODES, SCHEDULES, MethodOptions, ParameterCounts, add_method, apply_stage,
                        count_parameters, parse_blocks, plan_stages, stage_diagram, stage_of_step,
                        trainable_names)
from sparse import SPARSE_METHODS

GLUE_TASK_NAMES = tuple(data.GLUE_TASKS)
SQUAD_TASK_NAMES = ("squad", "squad_v2")
TASKS = GLUE_TASK_NAMES + SQUAD_TASK_NAMES


# --------------------------------------------------------------------------------------------------
# Recipes (SPEC.md section 5). Every value is a default that a command-line flag overrides.
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
    limit_eval: int | None = None
    log_every: int = 50
    resume: bool = False
    overwrite: bool = False
    save_trained: bool = False
    keep_checkpoint: bool = True  # a finished seed's checkpoint (weights + AdamW moments: ~3x the model)
    dist_timeout: float = 30.0  # minutes a process waits for the others (torchrun) before it gives up
    export: str | None = None  # write each finished seed in the Hugging Face layout here (export.py)
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
                "amp", "amp_dtype", "sparsity", "mask_scope", "burn_in_steps", "random_init", "limit_eval",
                "train_blocks")
        return {k: getattr(self, k) for k in keys}

    def differences(self, recorded: dict) -> dict:
        """{key: (recorded value, this run's value)} for each run-defining setting that differs. A setting
        that a record predates (absent from it) counts as its default, which is what that run used."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        return {k: (recorded.get(k, defaults.get(k)), v) for k, v in self.run_defining().items()
                if recorded.get(k, defaults.get(k)) != v}


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description="Progtuning: progressive fine-tuning of BERT/RoBERTa on GLUE and SQuAD",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--task", required=True, choices=TASKS, help="GLUE task (WNLI is excluded) or squad / squad_v2")
    g.add_argument("--mode", choices=MODES,
                   help="ft: every block every epoch; pt: Progtuning (default pt; ft with --train-blocks)")
    g.add_argument("--train-blocks", metavar="SPEC",
                   help="train E, exactly these blocks (numbered from 1: 3, 1-2, 5,6; or none) and H in every "
                        "epoch, instead of a schedule (the paper's Figure 1 probe)")
    g.add_argument("--method", default="full", choices=METHODS, help="what trains inside the blocks")
    g.add_argument("--schedule", default="shrink", choices=SCHEDULES,
                   help="pt only: shrink (Progtuning), no-low or grow (the paper's ablations)")
    g.add_argument("--model", default="bert-base-uncased",
                   help="local Hugging Face folder (config.json + model.safetensors) or hub name")
    g.add_argument("--data-dir", help="GLUE: folder of task folders (default $GLUE_DIR or ./glue_data); "
                                      "SQuAD: folder of the JSON files (default $SQUAD_DIR or ./squad)")
    g.add_argument("--train-file", help="SQuAD: training file name inside --data-dir (default train-v1.1.json / "
                                        "train-v2.0.json)")
    g.add_argument("--dev-file", help="SQuAD: dev file name inside --data-dir (default dev-v1.1.json / dev-v2.0.json)")
    g = p.add_argument_group("recipe (defaults come from the task's and method's preset)")
    g.add_argument("--epochs", type=int, help="training epochs")
    g.add_argument("--stages", type=int, help="Progtuning stages T (default: = epochs; otherwise the stages "
                                              "split the training steps evenly)")
    g.add_argument("--lr", type=float, help="peak learning rate (linear decay to zero)")
    g.add_argument("--batch-size", type=int, help="training batch size")
    g.add_argument("--eval-batch-size", type=int, default=128)
    g.add_argument("--max-length", type=int, help="tokens per example (GLUE 128, SQuAD 384)")
    g.add_argument("--doc-stride", type=int, default=128, help="SQuAD: tokens shared by consecutive context windows")
    g.add_argument("--warmup-ratio", type=float, help="share of steps with linear warmup")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay for matrices (not biases/LayerNorm)")
    g.add_argument("--freeze-embeddings", action="store_true",
                   help="beyond the paper: never train E, so backward stops at the lowest trainable block")
    g.add_argument("--random-init", action="store_true",
                   help="train from randomly initialised weights, not the checkpoint's (a baseline; a model "
                        "folder without weights is refused otherwise); marked in results.json and report.py")
    g = p.add_argument_group("PEFT methods")
    g.add_argument("--adapter-size", type=int, help="adapter bottleneck m (default 64)")
    g.add_argument("--lora-r", type=int, help="LoRA rank r (default 8)")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 8)")
    g.add_argument("--lora-dropout", type=float, help="LoRA dropout on its input (default 0)")
    g.add_argument("--sparsity", type=float, help="sam/random/magnitude: share of entries that train "
                                                  "(default 0.005)")
    g.add_argument("--mask-scope", choices=sparse.SCOPES, help="sam/random/magnitude: k = floor(sparsity·numel) "
                   "per tensor (tensor, the default), or one top-k over all eligible entries (global)")
    g.add_argument("--burn-in-steps", type=int, help="sam: batches whose summed gradient ranks the entries "
                                                     "(default: one epoch)")
    g = p.add_argument_group("runs and records")
    g.add_argument("--seed", type=int, help="one seed (default 1)")
    g.add_argument("--seeds", help="several seeds, e.g. 1,2,3: one run each, then mean ± std")
    g.add_argument("--output-dir", help="default runs/<task>-<mode>-<method>[-<schedule>]")
    g.add_argument("--resume", action="store_true", help="continue unfinished seeds from their checkpoints")
    g.add_argument("--overwrite", action="store_true", help="replace an existing results.json")
    g.add_argument("--keep-checkpoint", action=argparse.BooleanOptionalAction, default=True,
                   help="keep a finished seed's checkpoint.safetensors (it holds the trained weights and AdamW's "
                        "two moments, about 3x the model's size); --no-keep-checkpoint deletes it once the seed "
                        "is complete and recorded")
    g.add_argument("--save-trained", action="store_true",
                   help="write seed-<k>/trained.safetensors with only the parameters that ever trained")
    g.add_argument("--count-only", action="store_true",
                   help="print the stage diagram and parameter counts from config.json; load no weights or data")
    g.add_argument("--limit-train", type=int, help="train on the first N examples (smoke runs)")
    g.add_argument("--limit-eval", type=int, help="evaluate on the first N dev examples / questions")
    g.add_argument("--log-every", type=int, default=50, help="progress line every N steps")
    g.add_argument("--null-threshold", type=float, default=0.0,
                   help="SQuAD v2.0: answer nothing when null score - best span score exceeds this")
    g = p.add_argument_group("speed")
    g.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, off on CPU)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast: bf16 (or fp16 with loss scaling) on CUDA, default on; bf16 on CPU, default off")
    g.add_argument("--amp-dtype", default="auto", choices=("auto", "bf16", "fp16"),
                   help="autocast precision: auto = bf16 where the device supports it, else fp16 with a "
                        "GradScaler; fp16 forces loss scaling (CUDA only)")
    g.add_argument("--export", metavar="DIR",
                   help="at the end of each seed, write the model in the Hugging Face layout to DIR (DIR/seed-<k> "
                        "with several seeds); see export.py")
    g.add_argument("--dist-timeout", type=float, default=30.0,
                   help="torchrun: minutes a process waits in a collective (for the others) before it stops "
                        "with an error, so a dead or hung process cannot leave the rest waiting forever")
    p.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)
    p.add_argument("--interrupt-after-steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    def fail(message: str):
        p.error(message)  # exits with status 2 and the usage line

    if args.train_blocks is not None:
        if args.mode == "pt":
            fail("--train-blocks fixes which blocks train in every epoch, which replaces Progtuning's schedule; "
                 "leave out --mode pt (it then runs as ft)")
        try:
            parse_blocks(args.train_blocks)
        except ValueError as error:
            fail(f"--train-blocks {error}")
    args.mode = args.mode or ("ft" if args.train_blocks is not None else "pt")
    if args.mode == "ft" and args.schedule != "shrink":
        fail(f"--schedule {args.schedule} applies to --mode pt only; plain fine-tuning trains every block")
    for flag, methods in (("adapter_size", ("adapter",)), ("lora_r", ("lora",)), ("lora_alpha", ("lora",)),
                          ("lora_dropout", ("lora",)), ("sparsity", SPARSE_METHODS),
                          ("mask_scope", SPARSE_METHODS), ("burn_in_steps", ("sam",))):
        if getattr(args, flag) is not None and args.method not in methods:
            fail(f"--{flag.replace('_', '-')} applies to --method {'/'.join(methods)}, not --method {args.method}")
    if args.task not in SQUAD_TASK_NAMES and (args.train_file or args.dev_file):
        fail("--train-file / --dev-file select SQuAD files; GLUE files are found by task under --data-dir")
    if args.seed is not None and args.seeds is not None:
        fail("give --seed or --seeds, not both")
    try:
        seeds = [args.seed] if args.seed is not None else (
            [int(s) for s in args.seeds.split(",")] if args.seeds else [1])
    except ValueError:
        fail(f"--seeds must be comma-separated integers such as 1,2,3, got {args.seeds!r}")
    if len(set(seeds)) != len(seeds):
        fail(f"--seeds has repeated values: {args.seeds}")

    defaults, source = preset(args.task, args.method)
    pick = lambda value, key: defaults[key] if value is None else value  # noqa: E731
    epochs = pick(args.epochs, "epochs")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available to PyTorch here")
    if device != "cpu" and not device.startswith("cuda"):
        fail(f"--device must be cpu or cuda, got {device!r}")
    amp = args.amp if args.amp is not None else device.startswith("cuda")
    if args.amp_dtype != "auto" and not amp:
        fail(f"--amp-dtype {args.amp_dtype} applies with --amp (autocast), which is off for this run")
    if args.amp_dtype == "fp16" and not device.startswith("cuda"):
        fail("--amp-dtype fp16 needs CUDA (loss scaling with torch.amp.GradScaler); on CPU use bf16")
    name = f"{args.task}-{args.mode}-{args.method}" + (f"-{args.schedule}" if args.schedule != "shrink" else "") + (
        f"-blocks-{args.train_blocks.replace(',', '_')}" if args.train_blocks is not None else "")
    settings = Settings(
        task=args.task, mode=args.mode, method=args.method, schedule=args.schedule, model=args.model,
        data_dir=args.data_dir, train_file=args.train_file, dev_file=args.dev_file, epochs=epochs,
        stages=args.stages if args.stages is not None else epochs, lr=pick(args.lr, "lr"),
        batch_size=pick(args.batch_size, "batch_size"), eval_batch_size=args.eval_batch_size,
        max_length=pick(args.max_length, "max_length"), doc_stride=args.doc_stride,
        warmup_ratio=pick(args.warmup_ratio, "warmup_ratio"), weight_decay=pick(args.weight_decay, "weight_decay"),
        seeds=seeds, output_dir=args.output_dir or str(Path("runs") / (("count-" if args.count_only else "") + name)),
        device=device, compile=args.compile if args.compile is not None else device.startswith("cuda"),
        compile_backend=args.compile_backend, amp=amp, amp_dtype=args.amp_dtype,
        freeze_embeddings=args.freeze_embeddings, random_init=args.random_init,
        adapter_size=args.adapter_size if args.adapter_size is not None else 64,
        lora_r=args.lora_r if args.lora_r is not None else 8,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else 8.0,
        lora_dropout=args.lora_dropout if args.lora_dropout is not None else 0.0,
        sparsity=args.sparsity if args.sparsity is not None else 0.005,
        mask_scope=args.mask_scope or "tensor", burn_in_steps=args.burn_in_steps,
        null_threshold=args.null_threshold, limit_train=args.limit_train, limit_eval=args.limit_eval,
        log_every=args.log_every, resume=args.resume, overwrite=args.overwrite, save_trained=args.save_trained,
        keep_checkpoint=args.keep_checkpoint, dist_timeout=args.dist_timeout, export=args.export,
        train_blocks=args.train_blocks,
        count_only=args.count_only, interrupt_after_steps=args.interrupt_after_steps, preset_source=source)
    checks = [("--epochs", settings.epochs >= 1, settings.epochs, ">= 1"),
              ("--stages", settings.stages >= 1, settings.stages, ">= 1"),
              ("--lr", settings.lr > 0, settings.lr, "> 0"),
              ("--batch-size", settings.batch_size >= 1, settings.batch_size, ">= 1"),
              ("--eval-batch-size", settings.eval_batch_size >= 1, settings.eval_batch_size, ">= 1"),
              ("--max-length", settings.max_length >= 8, settings.max_length, ">= 8"),
              ("--doc-stride", not settings.is_squad or 0 <= settings.doc_stride < settings.max_length // 2,
               settings.doc_stride,
               "in [0, --max-length / 2) so each window still holds new context"),
              ("--warmup-ratio", 0 <= settings.warmup_ratio < 1, settings.warmup_ratio, "in [0, 1)"),
              ("--weight-decay", settings.weight_decay >= 0, settings.weight_decay, ">= 0"),
              ("--log-every", settings.log_every >= 1, settings.log_every, ">= 1"),
              ("--dist-timeout", settings.dist_timeout > 0, settings.dist_timeout, "> 0 (minutes)"),
              ("--limit-train", settings.limit_train is None or settings.limit_train >= 1, settings.limit_train,
               ">= 1"),
              ("--limit-eval", settings.limit_eval is None or settings.limit_eval >= 2, settings.limit_eval,
               ">= 2 (correlations need two examples)"),
              ("--sparsity", 0 < settings.sparsity <= 1, settings.sparsity,
               "in (0, 1] (the share of entries that train)"),
              ("--burn-in-steps", settings.burn_in_steps is None or settings.burn_in_steps >= 1,
               settings.burn_in_steps, ">= 1")]
    for flag, ok, value, expected in checks:
        if not ok:
            fail(f"{flag} must be {expected}, got {value}")
    if settings.export and settings.method == "adapter":
        fail("--export: an adapter run cannot be exported to the Hugging Face layout (a plain BERT/RoBERTa has "
             "no adapter layers); leave --export out and use the checkpoint with this project")
    if settings.mode == "pt" and settings.schedule == "no-low" and settings.stages == 1:
        fail("--schedule no-low needs at least 2 stages: with one stage it would train no block at all")
    try:
        settings.method_options().validate()
    except ValueError as error:
        fail(str(error))
    return settings


# --------------------------------------------------------------------------------------------------
# Model, stages and counts
# --------------------------------------------------------------------------------------------------

def head_for(settings: Settings) -> tuple[str, int | None]:
    if settings.is_squad:
        return "span", None
    return "classification", data.glue_task(settings.task).num_labels


def build_model(settings: Settings, weights: bool = True) -> Transformer:
    """The pretrained encoder with the task head and the method's modules; weights=False builds it from
    config.json alone with uninitialised tensors (right names and shapes, for planning and counting).
    --random-init: BERT's random initialisation instead of the checkpoint's weights."""
    head, num_labels = head_for(settings)
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


def plan(settings: Settings, model: Transformer) -> list[list[int]]:
    """Trainable blocks per stage: the schedule's, or --train-blocks' fixed set in every stage."""
    if settings.train_blocks is not None:
        try:
            return [parse_blocks(settings.train_blocks, len(model.blocks))] * settings.stages
        except ValueError as error:
            raise SystemExit(f"error: --train-blocks {error}") from None
    return plan_stages(len(model.blocks), settings.stages, settings.mode, settings.schedule)


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


def counts_table(counts, stages: list[list[int]], settings: Settings, steps_per_epoch: int | None) -> str:
    """Per-epoch table: which stages an epoch spans and how many parameters it updates."""
    total_steps = (steps_per_epoch or settings.stages) * settings.epochs
    per = steps_per_epoch or settings.stages
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


def count_only(settings: Settings) -> dict:
    """Plan a run from config.json alone: stage diagram and parameter counts, written to results.json."""
    start = time.perf_counter()
    model = build_model(settings, weights=False)
    stages = plan(settings, model)
    entries = planned_entries(settings, model)
    if settings.method in SPARSE_METHODS and entries is None:
        print(stage_diagram(stages, len(model.blocks), settings.epochs))
        print(global_scope_note(settings, model))
        counts = None
    else:
        counts = count_parameters(model, stages, settings.method, settings.epochs,
                                  freeze_embeddings=settings.freeze_embeddings, entries=entries)
        print(stage_diagram(stages, len(model.blocks), settings.epochs, counts))
        print(counts_table(counts, stages, settings, None))
    seconds = time.perf_counter() - start
    record = {"kind": COUNT_KIND, "format_version": FORMAT_VERSION, "settings": dataclasses.asdict(settings),
              "stages": [block_numbers(blocks) for blocks in stages], **counts_record(counts), "seconds": seconds}
    out = Path(settings.output_dir)
    existing = out / "results.json"
    if existing.exists() and not settings.overwrite:
        kind = read_json(existing).get("kind")
        if kind != COUNT_KIND:
            raise SystemExit(f"error: {existing} holds a training record ({kind}); choose another --output-dir "
                             "or pass --overwrite")
    write_json_atomic(existing, record)
    print(f"wrote {existing} ({seconds * 1000:.0f} ms)")
    return record


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

@dataclass
class EvalSet:
    report_name: str
    encoded: data.Encoded
    examples: list
    features: object = None  # SQuAD: data.SquadFeatures (windows -> questions)
    dataset: dict | None = None  # SQuAD: the official JSON, cut to the evaluated questions


@dataclass
class TaskData:
    train: data.Encoded
    evals: list[EvalSet]
    majority_baseline: dict
    files: dict = field(default_factory=dict)  # "<folder>/<file>" -> {"bytes", "sha256"}: what was read
    skipped_rows: dict = field(default_factory=dict)  # split -> malformed rows left out of it


def fingerprint(paths: list[Path]) -> dict:
    """Size and SHA-256 of each data file, so a --resume can prove it trains and scores the same data."""
    prints = {}
    for path in paths:
        path = Path(path)
        prints[f"{path.parent.name}/{path.name}"] = {"bytes": path.stat().st_size,
                                                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return prints


def check_same_data(recorded: dict | None, files: dict, where: Path) -> None:
    """--resume must go on with the data the record was made from (not merely as many rows)."""
    if recorded is None:
        return  # a record from before fingerprints were kept
    differing = sorted(k for k in set(recorded) | set(files) if recorded.get(k) != files.get(k))
    if differing:
        raise SystemExit(f"error: --resume reads other data than {where} was made from ({', '.join(differing)} "
                         "differ in size or content); use the same --data-dir and files, or another --output-dir")


def load_task_data(settings: Settings, tokenizer) -> TaskData:
    """Read and tokenize the task's training and dev data once per run."""
    if settings.is_squad:
        return _load_squad(settings, tokenizer)
    task = data.glue_task(settings.task)
    data_dir = data.glue_data_dir(settings.data_dir)
    train_examples = data.read_glue(settings.task, "train", data_dir)
    _report_skipped(train_examples)
    paths, skipped = [train_examples.path], {"train": train_examples.skipped_rows}
    if settings.limit_train:
        train_examples = train_examples[:settings.limit_train]
    train = data.encode_glue(train_examples, tokenizer, settings.max_length, task.is_regression)
    evals, baseline = [], {}
    for split in task.dev_splits:
        examples = data.read_glue(settings.task, split.name, data_dir)
        _report_skipped(examples)
        paths.append(examples.path)
        skipped[split.name] = examples.skipped_rows
        if settings.limit_eval:
            examples = examples[:settings.limit_eval]
        encoded = data.encode_glue(examples, tokenizer, settings.max_length, task.is_regression)
        evals.append(EvalSet(split.report_name, encoded, examples))
        baseline[split.report_name] = _majority_metrics(split.report_name, train.targets["labels"],
                                                        encoded.targets["labels"], task.is_regression)
    return TaskData(train, evals, baseline, fingerprint(paths), skipped)


def _report_skipped(examples) -> None:
    if examples.skipped_rows:
        print(f"note: {examples.path}: skipped {examples.skipped_rows} malformed row(s)")


def _majority_metrics(report_name: str, train_labels: list, dev_labels: list, regression: bool) -> dict:
    """What predicting the training set's majority class (STS-B: its mean score) scores on dev."""
    constant = float(np.mean(train_labels)) if regression else Counter(train_labels).most_common(1)[0][0]
    return glue_eval.compute_metrics(report_name, [constant] * len(dev_labels), dev_labels)


def _load_squad(settings: Settings, tokenizer) -> TaskData:
    version_2 = settings.task == "squad_v2"
    data_dir = data.squad_data_dir(settings.data_dir)
    train_path, dev_path = data.squad_files(settings.task, data_dir, settings.train_file, settings.dev_file)
    train_examples = data.read_squad(train_path, version_2)
    if settings.limit_train:
        train_examples = train_examples[:settings.limit_train]
    train = data.squad_features(train_examples, tokenizer, settings.max_length, settings.doc_stride,
                                training=True).encoded
    dev_examples = data.read_squad(dev_path, version_2)
    if settings.limit_eval:
        dev_examples = dev_examples[:settings.limit_eval]
    features = data.squad_features(dev_examples, tokenizer, settings.max_length, settings.doc_stride, training=False)
    dataset = _squad_subset(read_json(dev_path), {e.id for e in dev_examples})
    # SQuAD has no majority class; the trivial baseline answers nothing (v2.0: the unanswerable share).
    baseline = {settings.task: _squad_metrics(settings.task, dataset, {e.id: "" for e in dev_examples}, None)}
    print(f"SQuAD: {len(train_examples)} training questions -> {len(train)} windows; "
          f"{len(dev_examples)} dev questions -> {len(features.encoded)} windows")
    return TaskData(train, [EvalSet(settings.task, features.encoded, dev_examples, features, dataset)], baseline,
                    fingerprint([train_path, dev_path]))


def _squad_subset(dataset: dict, ids: set[str]) -> dict:
    """The official JSON keeping only the questions in `ids` (so --limit-eval scores what was predicted)."""
    articles = []
    for article in dataset["data"]:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            qas = [qa for qa in paragraph["qas"] if qa["id"] in ids]
            if qas:
                paragraphs.append({**paragraph, "qas": qas})
        if paragraphs:
            articles.append({**article, "paragraphs": paragraphs})
    return {**dataset, "data": articles}


def _squad_metrics(task: str, dataset: dict, predictions: dict, na_probs: dict | None) -> dict:
    if task == "squad":
        scores = squad_eval.evaluate_v1(dataset, predictions)
        return {"exact": scores["exact_match"], "f1": scores["f1"]}
    return squad_eval.evaluate_v2(dataset, predictions, na_probs, na_prob_thresh=1e30)


# --------------------------------------------------------------------------------------------------
# The machine a record was made on (records.py writes and reads the files)
# --------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name (Linux), so timings in a record say which machine made them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(settings: Settings) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu": cpu_model(), "cpu_count": os.cpu_count(), "processes": distributed.WORLD.size,
           "torch_threads": torch.get_num_threads(), "device": settings.device,
           "autocast": str(autocast_dtype(settings)).removeprefix("torch.") if settings.amp else None,
           "git_commit": commit}
    if settings.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(settings.device)
    return env


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------

class Interrupt:
    """The first Ctrl-C (SIGINT) or SIGTERM -- what SLURM and Kubernetes send before they preempt a job --
    asks the loop to checkpoint and stop after the current step; a second one acts as it would have
    without us (it kills). Under torchrun a second one is ignored instead: on Ctrl-C the launcher itself
    sends every process the same signal again right away (and kills them 30 s later), which would
    otherwise abort the checkpoint that the first one asked for."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signal = signal.SIGINT
        self._previous = {}

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            return  # only under torchrun, where the first signal keeps this handler
        self.requested, self.signal = True, signum
        if distributed.WORLD.distributed:
            print(f"\n{signal.Signals(signum).name}: finishing this step, then writing a checkpoint", flush=True)
            return
        print(f"\n{signal.Signals(signum).name}: finishing this step, then writing a checkpoint (send it again "
              "to abort)", flush=True)
        self._restore()

    def _restore(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def __exit__(self, *exc):
        self._restore()
        return False

    @property
    def exit_code(self) -> int:
        return 128 + self.signal  # the shell's convention: 130 after SIGINT, 143 after SIGTERM


class Interrupted(Exception):
    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warmup to the peak, then linear decay to zero at the end of training."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    return peak * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def compute_loss(settings: Settings, output, batch: dict, scale: float | None = None) -> torch.Tensor:
    """The batch's mean loss; with `scale`, the summed loss times scale (a process's share of a global
    batch under torchrun: distributed.share says why)."""
    reduction = "mean" if scale is None else "sum"
    if settings.is_squad:
        start_logits, end_logits = output
        loss = (F.cross_entropy(start_logits.float(), batch["start_positions"], reduction=reduction) +
                F.cross_entropy(end_logits.float(), batch["end_positions"], reduction=reduction)) / 2
    elif data.glue_task(settings.task).is_regression:
        loss = F.mse_loss(output.float().squeeze(-1), batch["labels"], reduction=reduction)
    else:
        loss = F.cross_entropy(output.float(), batch["labels"], reduction=reduction)
    return loss if scale is None else loss * scale


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


def non_finite_loss(model, batch: dict, loss: torch.Tensor, settings: Settings, where: str,
                    first: bool) -> FloatingPointError:
    """What is not finite -- the weights, the targets, or the loss of finite ones -- and what to do, since
    the answer differs: a broken checkpoint, broken data, or a learning rate that diverged."""
    broken = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if broken is not None and first:
        cause = (f"the weights already hold nan or inf ({_plain_name(broken)}) before any step: "
                 f"the checkpoint {settings.model} is broken; get it again")
    elif broken is not None:
        cause = (f"training diverged: {_plain_name(broken)} holds nan or inf; lower --lr "
                 f"(now {settings.lr})")
    elif any(v.is_floating_point() and not torch.isfinite(v).all() for v in batch.values()):
        cause = "the batch's targets hold nan or inf: check the training data"
    elif first:
        cause = "weights and targets are finite, yet the first loss is not: check the model's config.json"
    else:
        cause = f"weights and targets are finite and the loss overflowed: lower --lr (now {settings.lr})"
    return FloatingPointError(f"loss is {loss.item()} at {where}: {cause}")


def _plain_name(name: str) -> str:
    """A parameter's name without the prefixes torch.compile and DDP wrappers add."""
    while name.startswith(("_orig_mod.", "module.")):
        name = name.split(".", 1)[1]
    return name


def make_optimizer(model: Transformer, names: list[str], settings: Settings,
                   mask: sparse.Mask | None = None) -> torch.optim.Optimizer:
    """AdamW over the parameters that ever train; decay for matrices only, none for biases and LayerNorm.
    With a sparse method's mask, sparse.SparseAdamW: state and updates for the masked-in entries only."""
    params = dict(model.named_parameters())
    decay = [params[n] for n in names if params[n].dim() >= 2]
    no_decay = [params[n] for n in names if params[n].dim() < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if mask is not None:
        return sparse.SparseAdamW(groups, {params[n]: mask[n] for n in names if n in mask}, lr=settings.lr)
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8)


class GraphCounter:
    """A torch.compile backend that counts the graphs dynamo hands to the real one (inductor on a GPU).
    Each costs seconds to build; Progtuning needs one per stage, and any more is a recompile (a batch
    shape, a failed guard) that the run record shows."""

    def __init__(self, backend: str):
        self.backend = torch._dynamo.lookup_backend(backend)
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return self.backend(graph_module, example_inputs)


def compiled(model: Transformer, settings: Settings, counter: GraphCounter | None = None):
    """A fresh compile. Called again after each stage switch: a graph compiled while other parameters
    required grad must not be reused (a known PyTorch issue), so the cache is dropped, not trusted.
    fullgraph: a graph break in the encoder would be a silent slowdown; make it an error instead."""
    if not settings.compile:
        return model
    torch._dynamo.reset()
    # Under DDP, dynamo splits the graph at DDP's bucket boundaries on purpose (to overlap the all-reduce
    # with backward), which fullgraph would reject.
    fullgraph = not isinstance(model, torch.nn.parallel.DistributedDataParallel)
    return torch.compile(model, backend=counter or settings.compile_backend, fullgraph=fullgraph)


def model_inputs(batch: dict, settings: Settings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask, token_type_ids of a batch. Compiling, their batch size and padded length
    are marked dynamic before the first call, so one graph serves every batch of a stage (the short last
    batch, each length bucket); unmarked, dynamo would build a static graph for the first shape and
    recompile at the next ones. (Dynamo still specialises a dimension that is 1: a one-row batch.)"""
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    if settings.compile:
        for tensor in inputs:
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
            torch._dynamo.maybe_mark_dynamic(tensor, 1)
    return inputs


def train_step(step_model, batch: dict, settings: Settings, optimizer: torch.optim.Optimizer, scaler,
               trainable: list[torch.nn.Parameter], where: str, first: bool = False) -> torch.Tensor:
    """One optimizer step: forward under autocast -> backward -> (unscale) -> clip -> step -> zero_grad.
    With fp16 the GradScaler's step skips the update when a gradient is inf or nan (and lowers the
    scale); clipping after unscale_ sees the true gradient norm. first: no step of this run came before.
    Under torchrun this process trains on its share of the global batch, and DDP's backward averages the
    gradients, so every process steps with the global batch's gradient."""
    world = distributed.WORLD
    if world.distributed:
        batch, scale = distributed.share(batch, world)
    with autocast(settings):
        output = step_model(*model_inputs(batch, settings))
        loss = compute_loss(settings, output, batch, scale if world.distributed else None)
    if not torch.isfinite(loss):
        raise non_finite_loss(step_model, batch, loss, settings, where, first)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def train_one_seed(settings: Settings, seed: int, task_data: TaskData, tokenizer, seed_dir: Path,
                   counts: ParameterCounts, on_epoch_end) -> dict:
    """Train one seed to the end (or to an interrupt) and return its run record. `counts` is the run's
    parameter accounting (the same for every seed)."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    log_path, checkpoint_path = seed_dir / "log.jsonl", seed_dir / "checkpoint.safetensors"
    world = distributed.WORLD
    torch.manual_seed(seed)  # the new head's initialisation (the same in every process), then dropout
    model = build_model(settings).to(settings.device)
    if world.rank:  # under torchrun, each process its own dropout stream, from (seed, rank)
        torch.manual_seed(seed * 1_000_003 + world.rank)
    stages = plan(settings, model)
    steps_per_epoch = math.ceil(len(task_data.train) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup_steps = int(settings.warmup_ratio * total_steps)
    run = {"seed": seed, "status": "running", "epochs": [], "final": None, "wall_seconds": 0.0,
           "steps_per_epoch": steps_per_epoch}
    position = {"epoch": 0, "step_in_epoch": 0, "loss_sum": 0.0, "loss_count": 0}
    meta = None
    if settings.resume and checkpoint_path.exists():
        # Compare settings before any tensor is copied: another lora_r or method would otherwise fail
        # inside torch on a shape mismatch instead of saying what differs.
        meta = checkpoint_meta(checkpoint_path)
        differing = settings.differences(meta["settings"])
        if differing or meta["seed"] != seed:
            raise SystemExit(f"error: {checkpoint_path} was written with other settings "
                             f"{ {k: a for k, (a, b) in differing.items()} }; this run has "
                             f"{ {k: b for k, (a, b) in differing.items()} }. Resume with the same flags, or "
                             "start over with --overwrite")
        check_same_data(meta.get("data_files"), task_data.files, checkpoint_path)
        if meta.get("world_size", 1) != world.size:
            raise SystemExit(f"error: {checkpoint_path} was written by {meta.get('world_size', 1)} process(es) and "
                             f"this run has {world.size}; resume with --nproc_per_node (x nodes) = "
                             f"{meta.get('world_size', 1)}, since each process's dropout stream is in it")
        run = upgrade_run(meta["run"], meta.get("format_version", 1))
    elif log_path.exists() and world.main:
        log_path.unlink()  # a fresh start; an old log would mix two runs
    # Where this seed's time was spent (a resumed seed may have moved), so its minutes name their machine.
    machine = f"{cpu_model()}, {torch.get_num_threads()} thread(s), {settings.device}" + (
        f" ({torch.cuda.get_device_name(settings.device)})" if settings.device.startswith("cuda") else "") + (
        f", {world.size} processes" if world.distributed else "")
    if machine not in run.setdefault("machines", []):
        run["machines"].append(machine)

    # A sparse method's fixed mask (SPEC 9), chosen before training (SAM: after its burn-in) or read back.
    mask, entries, burn_in_here = None, None, 0
    if settings.method in SPARSE_METHODS:
        mask, burn_in_here = choose_mask(settings, seed, model, task_data, tokenizer.pad_token_id,
                                            checkpoint_path, meta, run)
        entries = sparse.mask_entries(mask, sparse.eligible_names(model, settings.freeze_embeddings))
        counts = count_parameters(model, stages, settings.method, settings.epochs, steps_per_epoch,
                                  settings.freeze_embeddings, entries)
        run["mask"]["counts"] = counts_record(counts)
        sparse.mask_gradients(model, mask)
    names = sorted(set().union(*(trainable_names(model, blocks, settings.method, settings.freeze_embeddings,
                                                 entries) for blocks in stages)),
                   key=list(dict(model.named_parameters())).index)
    optimizer = make_optimizer(model, names, settings, mask)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype(settings) == torch.float16 else None
    if meta is not None and "burn_in_step" not in meta["position"]:
        load_checkpoint(checkpoint_path, meta, model, optimizer, names, scaler)
        position = meta["position"]
        if position["epoch"] < settings.epochs:  # else a finished seed, loaded for --save-trained only
            print(f"resuming seed {seed} from {checkpoint_path}: epoch {position['epoch'] + 1}, "
                  f"step {position['step_in_epoch']} of {steps_per_epoch}")
            # Lines an earlier attempt logged past this checkpoint are superseded from here on (read_log).
            append_log(log_path, {"event": "resumed", "epoch": position["epoch"] + 1,
                                  "step": position["epoch"] * steps_per_epoch + position["step_in_epoch"]})
    mask_tensors = {f"mask/{name}": indices for name, indices in (mask or {}).items()}

    def checkpoint():
        meta = {"format_version": FORMAT_VERSION, "settings": settings.run_defining(), "seed": seed,
                "position": position, "run": run, "data_files": task_data.files}
        save_checkpoint(checkpoint_path, model, optimizer, names, scaler, meta, mask_tensors)

    stage, step_model, wrapped_for, compile_record = None, model, None, None
    parts = model_parts(model) if world.distributed else None
    counter = GraphCounter(settings.compile_backend) if settings.compile else None
    started = time.perf_counter()
    # `started` restarts each epoch (for the wall time); the ETA's clock and step count never do
    eta_started, steps_done_here = started, 0
    with Interrupt() as interrupt:
        for epoch in range(position["epoch"], settings.epochs):
            epoch_started = time.perf_counter()
            model.train()
            order = epoch_order(len(task_data.train), seed, epoch)
            window_loss, window_count, window_examples, window_started = 0.0, 0, 0, time.perf_counter()
            pad = 32 if settings.compile else None  # few distinct shapes, and widths tensor cores like
            for step_in_epoch, batch in enumerate(data.batches(task_data.train, settings.batch_size,
                                                               tokenizer.pad_token_id, order, pad)):
                if step_in_epoch < position["step_in_epoch"]:
                    continue  # done before the interrupt this run resumes from
                step = epoch * steps_per_epoch + step_in_epoch
                new_stage = stage_of_step(step, total_steps, settings.stages)
                if new_stage != stage:
                    stage = new_stage
                    stage_names = apply_stage(model, stages[stage - 1], settings.method, settings.freeze_embeddings,
                                              entries)
                    trainable = [p for n, p in model.named_parameters() if n in stage_names]
                    if stage_names != wrapped_for:  # ft's stages change nothing
                        # DDP (under torchrun) and the compiled graph both capture which parameters train:
                        # build both anew for the new set (distributed.wrap and compiled say why)
                        step_model = compiled(distributed.wrap(model, world), settings, counter)
                        wrapped_for = stage_names
                        if settings.compile:
                            compile_record = {"stage": stage, "epoch": epoch + 1, "graphs": 0, "seconds": 0.0,
                                              "batch_shapes": []}
                            run.setdefault("compile", []).append(compile_record)
                    blocks = stages[stage - 1]
                    print(f"stage {stage}/{settings.stages} from epoch {epoch + 1} step {step_in_epoch}: "
                          f"training blocks {_blocks_label(blocks)} of {len(model.blocks)} "
                          f"({counts.trainable_params_per_stage[stage - 1]:,} parameters)", flush=True)
                    append_log(log_path, {"event": "stage", "stage": stage, "epoch": epoch + 1,
                                          "step": step, "trainable_blocks": block_numbers(blocks)})
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total_steps, warmup_steps, settings.lr)
                batch = {k: v.to(settings.device, non_blocking=True) for k, v in batch.items()}
                graphs_before, step_started = counter.graphs if counter else 0, time.perf_counter()
                loss = train_step(step_model, batch, settings, optimizer, scaler, trainable,
                                  f"epoch {epoch + 1} step {step_in_epoch}", first=step == 0)
                loss_value = loss.item()  # waits for the GPU, so the step's time below is its whole time
                stop = interrupt.requested or (settings.interrupt_after_steps is not None and
                                               burn_in_here + steps_done_here + 1 >= settings.interrupt_after_steps)
                # torchrun: the global batch's loss, and every process stops after the same step
                loss_value, stop = distributed.step_summary(loss_value, stop, world)
                if counter is not None:
                    # Compile time apart from training time: the steps that built a graph, whole.
                    compile_record["graphs"] += counter.graphs - graphs_before
                    if counter.graphs > graphs_before:
                        compile_record["seconds"] += time.perf_counter() - step_started
                    shape = list(batch["input_ids"].shape)
                    if shape not in compile_record["batch_shapes"]:
                        compile_record["batch_shapes"].append(shape)
                position["loss_sum"] += loss_value
                position["loss_count"] += 1
                position["step_in_epoch"] = step_in_epoch + 1
                steps_done_here += 1
                window_loss += loss_value
                window_count += 1
                window_examples += len(batch["index"])
                if (step + 1) % settings.log_every == 0 or step_in_epoch + 1 == steps_per_epoch:
                    elapsed = time.perf_counter() - window_started
                    seconds_per_step = (time.perf_counter() - eta_started) / steps_done_here
                    entry = {"event": "progress", "epoch": epoch + 1, "stage": stage, "step": step + 1,
                             "total_steps": total_steps, "loss": window_loss / window_count,
                             "lr": optimizer.param_groups[0]["lr"], "examples_per_s": window_examples / elapsed,
                             "eta_s": seconds_per_step * (total_steps - step - 1)}
                    print(f"epoch {epoch + 1}/{settings.epochs} stage {stage} step {step + 1}/{total_steps} "
                          f"loss {entry['loss']:.4f} lr {entry['lr']:.2e} {entry['examples_per_s']:.1f} ex/s "
                          f"ETA {_duration(entry['eta_s'])}", flush=True)
                    append_log(log_path, entry)
                    window_loss, window_count, window_examples, window_started = 0.0, 0, 0, time.perf_counter()
                if stop:
                    run["wall_seconds"] += time.perf_counter() - started
                    run["status"] = "interrupted"
                    position["epoch_seconds_before"] = (position.get("epoch_seconds_before", 0.0)
                                                        + time.perf_counter() - epoch_started)
                    checkpoint()
                    append_log(log_path, {"event": "interrupted", "epoch": epoch + 1, "step": step + 1})
                    raise Interrupted(f"seed {seed}: interrupted at epoch {epoch + 1} step {step_in_epoch + 1}; "
                                      f"checkpoint written to {checkpoint_path}; continue with --resume",
                                      interrupt.exit_code)

            train_loss = position["loss_sum"] / max(1, position["loss_count"])
            metrics = evaluate(settings, model, task_data, tokenizer, seed_dir) if world.main else {}
            distributed.barrier()  # the other processes wait for rank 0's evaluation
            # An epoch resumed after an interrupt: its whole time, and the part before the interrupt apart.
            before = position.get("epoch_seconds_before", 0.0)
            epoch_seconds = before + time.perf_counter() - epoch_started
            record = {"epoch": epoch + 1, "stage": stage, "trainable_blocks": block_numbers(stages[stage - 1]),
                      "train_loss": train_loss, "metrics": metrics, "wall_seconds": epoch_seconds,
                      "updated_params": counts.updated_params_per_epoch[epoch]}
            if before:
                record["wall_seconds_before_interrupt"] = before
            if parts is not None:  # proof that frozen parts stayed bitwise and that the processes agree
                record["digests"] = distributed.agreed_digests(model, parts, world)
            run["epochs"].append(record)
            run["wall_seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            print(f"epoch {epoch + 1} done in {_duration(epoch_seconds)}: train loss {train_loss:.4f}; "
                  + "; ".join(f"{name} " + ", ".join(f"{m} {v:.2f}" for m, v in vals.items() if isinstance(v, float))
                              for name, vals in metrics.items()), flush=True)
            append_log(log_path, {"event": "epoch", **record})
            position = {"epoch": epoch + 1, "step_in_epoch": 0, "loss_sum": 0.0, "loss_count": 0}
            if epoch + 1 == settings.epochs:
                run["status"], run["final"] = "complete", metrics
            if mask is not None:
                run["mask"]["optimizer_state_bytes"] = optimizer.state_bytes()
                run["mask"]["dense_adamw_state_bytes"] = sparse.dense_adamw_state_bytes(
                    [p for n, p in model.named_parameters() if n in names])
            checkpoint()
            on_epoch_end(run)

    if settings.save_trained and world.main:
        params = dict(model.named_parameters())
        path = seed_dir / "trained.safetensors"
        meta = {"settings": dataclasses.asdict(settings), "seed": seed}
        if mask is not None:  # only what trained: indices and values per masked tensor, the head whole
            sparse.save_trained(path, model, mask, [n for n in names if n not in mask], meta)
            print(f"wrote {path} ({sum(len(i) for i in mask.values()):,} masked-in entries and "
                  f"{len(names) - len(mask)} whole tensors); rebuild with "
                  f"`python sparse.py rebuild {path} --out DIR`")
        else:
            temp = path.with_name(path.name + ".tmp")
            save_file({n: params[n].detach().cpu().contiguous() for n in names}, str(temp),
                      metadata={"progtuning": json.dumps(meta)})
            replace_durably(temp, path)
            print(f"wrote {path} ({len(names)} tensors, {sum(params[n].numel() for n in names):,} parameters)")
    if settings.export and run["status"] == "complete" and world.main:
        model.eval()
        dest = export.export_model(model, settings, export_dir(settings, seed), overwrite=True)  # checked in main
        print(f"exported {dest} (Hugging Face layout)")
    if not settings.keep_checkpoint and run["status"] == "complete" and world.main:
        checkpoint_path.unlink(missing_ok=True)
        print(f"removed {checkpoint_path} (--no-keep-checkpoint; the seed is complete)")
    return run


def export_dir(settings: Settings, seed: int) -> Path:
    return Path(settings.export) / f"seed-{seed}" if len(settings.seeds) > 1 else Path(settings.export)


def model_parts(model: Transformer) -> dict[str, list[str]]:
    """Parameter names per part, in the paper's terms: E, blocks 1..L, H (for the digests of a run under
    torchrun)."""
    parts: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        part, block = part_of(name)
        parts.setdefault(f"block {block + 1}" if part == "block" else part[0].upper(), []).append(name)
    return parts


def epoch_order(rows: int, seed: int, epoch: int) -> list[int]:
    """The order in which epoch `epoch` (0-based) of a seed visits the training rows."""
    return torch.randperm(rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def choose_mask(settings: Settings, seed: int, model: Transformer, task_data: TaskData, pad_token_id: int,
                checkpoint_path: Path, meta: dict | None, run: dict) -> tuple[sparse.Mask, int]:
    """A sparse method's mask for this seed, and the burn-in steps taken here (they count toward
    --interrupt-after-steps). A resumed run reads its mask back from the checkpoint, or continues an
    interrupted SAM burn-in from the sums saved there; otherwise the method's rule chooses it now."""
    if meta is not None and "burn_in_step" not in meta["position"]:
        return checkpoint_tensors(checkpoint_path, "mask/"), 0
    eligible = sparse.eligible_names(model, settings.freeze_embeddings)
    params = dict(model.named_parameters())
    started = time.perf_counter()
    burn_in_steps, burn_in_done = None, 0
    if settings.method == "random":
        scores = None
        mask = sparse.random_mask({n: params[n].numel() for n in eligible}, settings.sparsity, settings.mask_scope,
                                  seed)
    elif settings.method == "magnitude":
        scores = sparse.magnitude_scores(model, eligible)
    else:
        burn_in_steps = settings.burn_in_steps or math.ceil(len(task_data.train) / settings.batch_size)
        scores, burn_in_done = sam_burn_in(settings, seed, model, eligible, task_data, pad_token_id, burn_in_steps,
                                           checkpoint_path, meta, run)
    if scores is not None:
        mask = sparse.top_k_mask(scores, settings.sparsity, settings.mask_scope)
    entries = sparse.mask_entries(mask, eligible)
    per_block = [0] * len(model.blocks)
    for name, k in entries.items():
        part, block = part_of(name)
        if part == "block":
            per_block[block] += k
    run["mask"] = {"rule": settings.method, "scope": settings.mask_scope, "sparsity": settings.sparsity,
                   "entries": sum(entries.values()),
                   "entries_embeddings": sum(k for n, k in entries.items() if part_of(n)[0] == "embeddings"),
                   "entries_per_block": per_block, "entries_per_tensor": entries,
                   "burn_in_steps": burn_in_steps,
                   "burn_in_seconds": run.pop("burn_in_seconds", 0.0) + (time.perf_counter() - started
                                                                          if burn_in_steps else 0.0),
                   "selection_seconds": time.perf_counter() - started}
    print(f"mask ({settings.method}, scope {settings.mask_scope}, sparsity {settings.sparsity}): "
          f"{run['mask']['entries']:,} entries in {len(mask)} tensors"
          + (f"; burn-in {burn_in_steps} batches in {run['mask']['burn_in_seconds']:.1f} s" if burn_in_steps else ""),
          flush=True)
    return mask, burn_in_done


def sam_burn_in(settings: Settings, seed: int, model: Transformer, eligible: list[str], task_data: TaskData,
                pad_token_id: int, steps: int, checkpoint_path: Path, meta: dict | None,
                run: dict) -> tuple[dict[str, torch.Tensor], int]:
    """SAM's scores from `steps` burn-in batches, drawn in training's own order (epoch 1's batches, then
    epoch 2's, ...). Ctrl-C (or --interrupt-after-steps) saves the running sums, the RNG and the position,
    and --resume goes on from there: the scores end bitwise as if never interrupted (on CPU)."""
    params = dict(model.named_parameters())
    world = distributed.WORLD
    done = 0
    if meta is not None:  # an interrupted burn-in: its sums become the .grad that burn_in adds onto
        done = meta["position"]["burn_in_step"]
        for name, total in checkpoint_tensors(checkpoint_path, "burnin/").items():
            # the saved sums are every process's together: rank 0 carries them on, the others start at 0
            params[name].grad = total.to(params[name].device) if world.main else torch.zeros_like(
                total, device=params[name].device)
        restore_rng(checkpoint_path)
        print(f"resuming seed {seed}'s SAM burn-in at batch {done + 1} of {steps}")
    started = time.perf_counter()

    def batches():
        drawn = (batch for epoch in itertools.count()
                 for batch in data.batches(task_data.train, settings.batch_size, pad_token_id,
                                           epoch_order(len(task_data.train), seed, epoch)))
        for batch in itertools.islice(drawn, done, steps):  # batches done..steps-1 of training's order
            yield {k: v.to(settings.device) for k, v in batch.items()}

    def loss_of(batch):
        scale = None
        if world.distributed:  # this process's rows; its sums are added to the others' at the end
            batch, scale = distributed.share(batch, world)
            scale /= world.size  # no DDP average here: the sum over processes is the whole batch's mean
        with autocast(settings):
            return compute_loss(settings, model(batch["input_ids"], batch["attention_mask"],
                                                batch["token_type_ids"]), batch, scale)

    with Interrupt() as interrupt:
        def on_step(i, sums):
            stop = distributed.any_of(interrupt.requested or (settings.interrupt_after_steps is not None
                                                              and i >= settings.interrupt_after_steps), world)
            if stop:
                distributed.sum_tensors(list(sums.values()), world)  # in place, so the checkpoint has them all
                run["status"] = "interrupted"
                run["burn_in_seconds"] = run.get("burn_in_seconds", 0.0) + time.perf_counter() - started
                position = {"epoch": 0, "step_in_epoch": 0, "loss_sum": 0.0, "loss_count": 0,
                            "burn_in_step": done + i}
                save_checkpoint(checkpoint_path, model, None, [], None,
                                {"format_version": FORMAT_VERSION, "settings": settings.run_defining(),
                                 "seed": seed, "position": position, "run": run, "data_files": task_data.files},
                                {f"burnin/{name}": total for name, total in sums.items()})
                raise Interrupted(f"seed {seed}: interrupted in SAM's burn-in after batch {done + i} of {steps}; "
                                  f"checkpoint written to {checkpoint_path}; continue with --resume",
                                  interrupt.exit_code)

        scores = sparse.burn_in(model, eligible, batches(), loss_of, on_step,
                                lambda sums: distributed.sum_tensors(sums, world))
    run["status"] = "running"
    return scores, steps - done


def _blocks_label(blocks: list[int]) -> str:
    """1-based, as in the paper: [4, 5, 6, 7] -> '5-8'."""
    if not blocks:
        return "none"
    if blocks == list(range(blocks[0], blocks[-1] + 1)):
        return f"{blocks[0] + 1}-{blocks[-1] + 1}" if len(blocks) > 1 else str(blocks[0] + 1)
    return ",".join(str(b + 1) for b in blocks)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(settings: Settings, model: Transformer, encoded: data.Encoded, pad_token_id: int, on_batch=None):
    """Model outputs for every row of `encoded`, in row order (length-sorted batches, put back in place).
    on_batch(rows done, rows): called after each batch (predict.py's progress)."""
    model.eval()
    outputs: list = [None] * len(encoded)
    done = 0
    for batch in data.batches(encoded, settings.eval_batch_size, pad_token_id, data.length_sorted_order(encoded)):
        with autocast(settings):
            output = model(batch["input_ids"].to(settings.device), batch["attention_mask"].to(settings.device),
                           batch["token_type_ids"].to(settings.device))
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        for i, row in enumerate(batch["index"].tolist()):
            if settings.is_squad:
                outputs[row] = (output[0][i, :lengths[i]].float().cpu().numpy(),
                                output[1][i, :lengths[i]].float().cpu().numpy())
            else:
                outputs[row] = output[i].float().cpu().numpy()
        done += len(lengths)
        if on_batch is not None:
            on_batch(done, len(encoded))
    model.train()
    return outputs


def evaluate(settings: Settings, model: Transformer, task_data: TaskData, tokenizer, seed_dir: Path) -> dict:
    if settings.is_squad:
        return evaluate_squad(settings, model, task_data.evals[0], tokenizer, seed_dir)
    return evaluate_glue(settings, model, task_data.evals, tokenizer, seed_dir)


def evaluate_glue(settings: Settings, model: Transformer, evals: list[EvalSet], tokenizer, seed_dir: Path) -> dict:
    task = data.glue_task(settings.task)
    metrics = {}
    for eval_set in evals:
        outputs = np.stack(predict(settings, model, eval_set.encoded, tokenizer.pad_token_id))
        preds = outputs[:, 0] if task.is_regression else outputs.argmax(axis=1)
        metrics[eval_set.report_name] = glue_eval.compute_metrics(eval_set.report_name, preds,
                                                                  eval_set.encoded.targets["labels"])
        # GLUE-submission style: index (row of the dev file's examples) and the predicted label name.
        lines = ["index\tprediction"] + [
            f"{i}\t{float(p):.6f}" if task.is_regression else f"{i}\t{task.label_names[int(p)]}"
            for i, p in enumerate(preds)]
        write_text_atomic(seed_dir / f"predictions-{eval_set.report_name}.tsv", "\n".join(lines) + "\n")
    return metrics


def evaluate_squad(settings: Settings, model: Transformer, eval_set: EvalSet, tokenizer, seed_dir: Path) -> dict:
    outputs = predict(settings, model, eval_set.encoded, tokenizer.pad_token_id)
    width = max(len(start) for start, _ in outputs)
    start_logits = np.full((len(outputs), width), -1e4, dtype=np.float32)
    end_logits = np.full((len(outputs), width), -1e4, dtype=np.float32)
    for i, (start, end) in enumerate(outputs):
        start_logits[i, :len(start)], end_logits[i, :len(end)] = start, end
    version_2 = settings.task == "squad_v2"
    # Spans are chosen without blanking (threshold inf), so squad_eval can search the best threshold over
    # the real span answers; the reported exact/f1 apply --null-threshold.
    spans, na_probs = data.squad_predictions(eval_set.examples, eval_set.features, start_logits, end_logits,
                                             version_2=version_2, null_threshold=math.inf)
    predictions = {qid: "" if version_2 and na_probs[qid] > settings.null_threshold else text
                   for qid, text in spans.items()}
    write_text_atomic(seed_dir / f"predictions-{settings.task}.json", json.dumps(predictions, indent=1))
    if not version_2:
        return {settings.task: _squad_metrics(settings.task, eval_set.dataset, predictions, None)}
    write_text_atomic(seed_dir / f"na_probs-{settings.task}.json", json.dumps(na_probs, indent=1))
    scores = squad_eval.evaluate_v2(eval_set.dataset, spans, na_probs, na_prob_thresh=settings.null_threshold)
    scores["null_threshold"] = settings.null_threshold
    return {settings.task: scores}


# --------------------------------------------------------------------------------------------------
# Seeds and the results file
# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    settings = parse_args(argv)
    processes = distributed.world_size_from_environment()
    if settings.batch_size % processes:
        raise SystemExit(f"error: --batch-size {settings.batch_size} is the global batch and must split evenly "
                         f"over the {processes} processes of this torchrun job (WORLD_SIZE={processes}); use a "
                         f"multiple of {processes}")
    world, settings.device = distributed.init(settings.device, settings.dist_timeout)
    if not world.main:
        sys.stdout = open(os.devnull, "w")  # rank 0 reports for everyone; errors still reach stderr
    print("settings: " + json.dumps(dataclasses.asdict(settings)), flush=True)
    print(f"preset: {settings.preset_source}")
    positions = load_config(settings.model).max_length
    if settings.max_length > positions:
        raise SystemExit(f"error: --max-length {settings.max_length} exceeds the {positions} positions of "
                         f"{settings.model} (max_position_embeddings in its config.json); use --max-length "
                         f"{positions} or less")
    if settings.count_only:
        return count_only(settings) if world.main else {}
    with distributed.main_first():  # one process downloads a missing checkpoint, the others find it
        folder = resolve_checkpoint(settings.model)
    if not settings.random_init and not weight_files(folder):
        raise SystemExit(f"error: {folder} has config.json but no model.safetensors, so training would start "
                         "from random weights; add the weights, or pass --random-init if a random start is what "
                         "you mean (the records then say so)")

    out = Path(settings.output_dir)
    results_path = out / "results.json"
    previous = None
    if results_path.exists():
        if settings.resume:
            previous = read_json(results_path)
            _check_same_run(settings, previous, results_path)
        elif not settings.overwrite:
            raise SystemExit(f"error: {results_path} already exists; pass --resume to continue it, --overwrite "
                             "to replace it, or choose another --output-dir")
    if settings.resume and previous is None:
        print(f"note: --resume but no {results_path} yet; seeds continue from their checkpoints where present")
    if settings.overwrite and not settings.resume and world.main:
        for seed in settings.seeds:
            for stale in ("checkpoint.safetensors", "log.jsonl"):
                (out / f"seed-{seed}" / stale).unlink(missing_ok=True)

    if settings.export and not settings.overwrite:  # refuse now, not after hours of training
        for seed in settings.seeds:
            dest = export_dir(settings, seed)
            if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
                raise SystemExit(f"error: --export: {dest} exists and is not empty; pass --overwrite to replace "
                                 "it, or export to another folder")
    distributed.barrier()  # every process has read what exists before rank 0 writes anything
    torch.manual_seed(0)
    tokenizer = load_tokenizer(settings.model)
    with distributed.main_first():  # likewise a missing GLUE task or SQuAD file
        task_data = load_task_data(settings, tokenizer)
    planning_model = build_model(settings, weights=False)
    stages = plan(settings, planning_model)
    steps_per_epoch = math.ceil(len(task_data.train) / settings.batch_size)
    entries = planned_entries(settings, planning_model)
    if settings.method in SPARSE_METHODS and entries is None:
        counts = None  # each seed counts its own mask
        print(stage_diagram(stages, len(planning_model.blocks), settings.epochs))
        print(global_scope_note(settings, planning_model))
    else:
        counts = count_parameters(planning_model, stages, settings.method, settings.epochs, steps_per_epoch,
                                  settings.freeze_embeddings, entries)
        print(stage_diagram(stages, len(planning_model.blocks), settings.epochs, counts))
        print(counts_table(counts, stages, settings, steps_per_epoch))
    print(f"{len(task_data.train)} training rows, {steps_per_epoch} steps per epoch; "
          + ", ".join(f"{e.report_name}: {len(e.encoded)} dev rows" for e in task_data.evals), flush=True)

    main_metric = "f1" if settings.is_squad else glue_eval.main_metric(settings.task)
    results = {"kind": RESULTS_KIND, "format_version": FORMAT_VERSION, "settings": dataclasses.asdict(settings),
               "main_metric": main_metric, "stages": [block_numbers(blocks) for blocks in stages],
               **counts_record(counts),
               "majority_baseline": task_data.majority_baseline, "data_files": task_data.files,
               "skipped_rows": task_data.skipped_rows, "runs": [],
               "summary": {}, "environment": environment(settings)}
    if previous is not None:
        check_same_data(previous.get("data_files"), task_data.files, results_path)
        results["runs"] = [upgrade_run(r, previous.get("format_version", 1)) for r in previous.get("runs", [])
                           if r.get("seed") in settings.seeds]

    def save(run: dict) -> None:
        if results["updated_params"] is None and run.get("mask", {}).get("counts"):
            # --mask-scope global: the counts are the first chosen mask's (runs[].mask has each seed's)
            results.update(run["mask"]["counts"], counts_from_seed=run["seed"])
        results["runs"] = [r for r in results["runs"] if r["seed"] != run["seed"]] + [run]
        results["runs"].sort(key=lambda r: settings.seeds.index(r["seed"]))
        results["summary"] = summarize(results["runs"])
        write_json_atomic(results_path, results)

    not_written = []  # finished seeds whose trained file --save-trained cannot write any more
    for seed in settings.seeds:
        done = next((r for r in results["runs"] if r["seed"] == seed and r.get("status") == "complete"), None)
        if done is not None:
            seed_dir = out / f"seed-{seed}"
            if not settings.save_trained or (seed_dir / "trained.safetensors").exists():
                print(f"seed {seed}: already complete in {results_path}; skipped")
            elif (seed_dir / "checkpoint.safetensors").exists():
                # the final checkpoint holds every trained weight: loading it at its end position trains
                # nothing and leaves train_one_seed only its --save-trained step
                print(f"seed {seed}: already complete; writing its trained weights from its final checkpoint")
                train_one_seed(settings, seed, task_data, tokenizer, seed_dir, counts, save)
            else:
                not_written.append(seed)
            continue
        print(f"=== seed {seed} ===", flush=True)
        try:
            run = train_one_seed(settings, seed, task_data, tokenizer, out / f"seed-{seed}", counts, save)
        except Interrupted as stop:
            if world.main:
                save(checkpoint_meta(out / f"seed-{seed}" / "checkpoint.safetensors")["run"])
                print(stop, file=sys.stderr)
            raise SystemExit(stop.exit_code) from None
        save(run)

    print(f"results: {results_path}")
    for report_name, metrics in results["summary"].items():
        print(f"  {report_name}: " + ", ".join(f"{m} {s['mean']:.2f}"
                                               + (f" ± {s['std']:.2f}" if s["std"] is not None else "")
                                               + f" (n={s['n']})"
                                               for m, s in metrics.items()))
    if not_written:
        raise SystemExit(f"error: --save-trained: seed(s) {', '.join(map(str, not_written))} finished earlier "
                         "and their checkpoint was removed (--no-keep-checkpoint), so their trained weights can no "
                         "longer be written; run them again with --overwrite in another --output-dir")
    lost = {split: n for split, n in task_data.skipped_rows.items() if n}
    if lost:
        # Printed last, so it is the line a user sees: these scores are on a different set than the paper's.
        print(f"WARNING: malformed rows were skipped ({', '.join(f'{split} {n}' for split, n in lost.items())}; "
              "see the notes above and skipped_rows in results.json): "
              + ("the dev scores above are on fewer rows than the official dev set, so they are not "
                 "comparable with published numbers" if set(lost) - {"train"} else
                 "the model trained on fewer rows than the official training set"), file=sys.stderr)
    return results


def _check_same_run(settings: Settings, previous: dict, path: Path) -> None:
    """--resume may add seeds to a record, never mix runs made with other settings into it."""
    recorded = previous.get("settings")
    if not isinstance(recorded, dict):
        raise SystemExit(f"error: {path} has no 'settings' object; it was not written by run.py")
    differing = settings.differences(recorded)
    if differing:
        listed = "; ".join(f"{k}: recorded {old!r}, now {new!r}" for k, (old, new) in differing.items())
        raise SystemExit(f"error: --resume with settings that differ from {path}: {listed}. "
                         "Use the recorded settings, or another --output-dir for a new run")


def cli(argv: list[str] | None = None) -> None:
    """main() as the command line runs it: every expected failure ends as one line and an exit code."""
    try:
        main(argv)
    except (OSError, ValueError, FloatingPointError, SafetensorError, data.GlueDownloadError,
            data.SquadDownloadError) as error:
        # Bad input or a failing system (a missing or unwritable folder, a malformed file, a wrong flag value,
        # no network): one clear line, no traceback. OSError covers the file system and the network.
        raise SystemExit(f"error: {type(error).__name__ + ': ' if isinstance(error, OSError) else ''}{error}") \
            from None
    except RuntimeError as error:
        # Under torchrun, a collective that failed: another process died, was killed, or hung past the
        # timeout. Gloo and NCCL report it as a RuntimeError (or torch.distributed.DistError) naming the
        # transport; any other RuntimeError is a bug and keeps its traceback.
        if not (distributed.WORLD.distributed and (isinstance(error, torch.distributed.DistError) or
                                                   distributed.COMMUNICATION_FAILURE.search(str(error)))):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        distributed.abandon(f"error: process {distributed.WORLD.rank} of {distributed.WORLD.size}: waiting for "
                            f"the other processes failed ({type(error).__name__}: {first}); one of them stopped or "
                            "hung (the wait is limited by --dist-timeout). Finished epochs are in the checkpoint: "
                            "continue with --resume")
    except KeyboardInterrupt:
        # Training turns the first Ctrl-C into a checkpoint; this is one outside it (loading, tokenizing) or a
        # second one that aborts: what was written before (epoch checkpoints, finished seeds) stays valid.
        print("error: interrupted; files already written (finished seeds, epoch checkpoints) are kept: continue "
              "with --resume", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    cli()
