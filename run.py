"""run.py: fine-tune a BERT/RoBERTa/MPNet encoder on a GLUE task or SQuAD with plain fine-tuning (`--mode ft`)
or Progtuning (`--mode pt`), for full fine-tuning or a PEFT method, and leave a record that survives.

    python run.py --task rte --mode pt
    python run.py --task rte --mode pt --method lora --model roberta-base
    python run.py --task squad_v2 --mode pt --train-file train-v2.0.json
    python run.py --task rte --mode pt --epochs 3 --model DIR --count-only   # plan: parameter counts only

Reading order, top to bottom as a run goes:
  OPTIONS, parse_args     the command line (a table) into recipe.Settings, filled from the paper's presets
  main, train_run         plan the run, lock the output folder, read the data once, train each seed,
                          write results.json
  train_one_seed          the loop: for each epoch, for each batch: switch the stage if it changed, one
                          training step, progress; then evaluate, record and checkpoint
The machinery lives below: recipe.py (settings, presets, the model and its plan), training.py (the step,
per-block compile, progress, signals, checkpoints), evaluation.py (data and dev scores), records.py
(files, the folder's lock), integrity.py (durable writes, digests), progtuning.py and sparse.py (the
methods), model.py (the encoder).

Layout of a run (default --output-dir runs/<task>-<mode>-<method>[-<schedule>]):
  results.json               settings, parameter counts, every epoch's metrics, per-seed and mean ± std
  run.lock                   held by the run writing here (its pid, host, start); a second run is refused
  seed-<k>/log.jsonl         one JSON line per progress report, stage switch and epoch
  seed-<k>/checkpoint.safetensors   trainable weights, optimizer, scaler, RNG and position (for --resume),
                             with its SHA-256 in checkpoint.safetensors.sha256 (checked before reading it)
  seed-<k>/predictions-*.tsv|json   dev predictions of the last finished epoch
  seed-<k>/trained.safetensors      with --save-trained: only the parameters that ever trained
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from safetensors import SafetensorError

import data
import distributed
import export
import glue_eval
import sparse
from evaluation import evaluate, load_task_data
from model import load_config, load_tokenizer, resolve_checkpoint, weight_files
from progtuning import METHODS, MODES, SCHEDULES, count_parameters, parse_blocks, stage_diagram, stage_of_step
from recipe import (TASKS, Settings, build_model, check_checkpoint, counts_record, counts_table, ever_trainable,
                    global_scope_note, plan, planned_entries, preset)
from records import (COUNT_KIND, FORMAT_VERSION, RESULTS_KIND, OutputLock, block_numbers, check_same_data,
                     checkpoint_meta, output_lock, read_json, summarize, upgrade_run, write_json_atomic)
from sparse import SPARSE_METHODS
from training import (Interrupt, Interrupted, Progress, SeedRun, Stepper, check_weights, environment, export_dir,
                      finish_seed, keep_large_tensors_in_the_heap, lr_at, prepare_mask)


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------

def finite(text: str) -> float:
    """argparse type of every real-valued flag: inf and nan are refused by the flag's name."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


# (group, flag, argparse keywords). Recipe flags default to None: the task's and method's preset fills them.
OPTIONS = [
    ("what to run", "--task", dict(required=True, choices=TASKS, help="GLUE task (WNLI is excluded) or squad / squad_v2")),
    ("what to run", "--mode", dict(choices=MODES, help="ft: every block every epoch; pt: Progtuning (default pt; "
                                                       "ft with --train-blocks)")),
    ("what to run", "--train-blocks", dict(metavar="SPEC", help="train E, exactly these blocks (numbered from 1: "
                                           "3, 1-2, 5,6; or none) and H in every epoch, instead of a schedule "
                                           "(the paper's Figure 1 probe)")),
    ("what to run", "--method", dict(default="full", choices=METHODS, help="what trains inside the blocks")),
    ("what to run", "--schedule", dict(default="shrink", choices=SCHEDULES,
                                       help="pt only: shrink (Progtuning), no-low or grow (the paper's ablations)")),
    ("what to run", "--model", dict(default="bert-base-uncased", help="local Hugging Face folder (config.json + "
                                    "model.safetensors) or hub name")),
    ("what to run", "--data-dir", dict(help="GLUE: folder of task folders (default $GLUE_DIR or ./glue_data); "
                                            "SQuAD: folder of the JSON files (default $SQUAD_DIR or ./squad)")),
    ("what to run", "--train-file", dict(help="SQuAD: training file name inside --data-dir (default "
                                              "train-v1.1.json / train-v2.0.json)")),
    ("what to run", "--dev-file", dict(help="SQuAD: dev file name inside --data-dir (default dev-v1.1.json / "
                                            "dev-v2.0.json)")),
    ("recipe", "--epochs", dict(type=int, help="training epochs")),
    ("recipe", "--stages", dict(type=int, help="Progtuning stages T (default: = epochs; otherwise the stages split "
                                                "the training steps evenly)")),
    ("recipe", "--lr", dict(type=finite, help="peak learning rate (linear decay to zero)")),
    ("recipe", "--batch-size", dict(type=int, help="training batch size")),
    ("recipe", "--eval-batch-size", dict(type=int, default=128)),
    ("recipe", "--max-length", dict(type=int, help="tokens per example (GLUE 128, SQuAD 384)")),
    ("recipe", "--doc-stride", dict(type=int, default=128, help="SQuAD: tokens shared by consecutive windows")),
    ("recipe", "--warmup-ratio", dict(type=finite, help="share of steps with linear warmup")),
    ("recipe", "--weight-decay", dict(type=finite, help="AdamW weight decay for matrices (not biases/LayerNorm)")),
    ("recipe", "--freeze-embeddings", dict(action="store_true", help="beyond the paper: never train E, so backward "
                                           "stops at the lowest trainable block")),
    ("recipe", "--random-init", dict(action="store_true", help="train from randomly initialised weights, not the "
                                     "checkpoint's (a baseline; a model folder without weights is refused "
                                     "otherwise); marked in results.json and report.py")),
    ("PEFT methods", "--adapter-size", dict(type=int, help="adapter bottleneck m (default 64)")),
    ("PEFT methods", "--lora-r", dict(type=int, help="LoRA rank r (default 8)")),
    ("PEFT methods", "--lora-alpha", dict(type=finite, help="LoRA alpha (default 8)")),
    ("PEFT methods", "--lora-dropout", dict(type=finite, help="LoRA dropout on its input (default 0)")),
    ("PEFT methods", "--sparsity", dict(type=finite, help="sam/random/magnitude: share of entries that train "
                                                           "(default 0.005)")),
    ("PEFT methods", "--mask-scope", dict(choices=sparse.SCOPES, help="sam/random/magnitude: k = floor(sparsity·"
                                          "numel) per tensor (tensor, the default), or one top-k over all "
                                          "eligible entries (global)")),
    ("PEFT methods", "--burn-in-steps", dict(type=int, help="sam: batches whose summed gradient ranks the entries "
                                                            "(default: one epoch)")),
    ("runs and records", "--seed", dict(type=int, help="one seed (default 1)")),
    ("runs and records", "--seeds", dict(help="several seeds, e.g. 1,2,3: one run each, then mean ± std")),
    ("runs and records", "--output-dir", dict(help="default runs/<task>-<mode>-<method>[-<schedule>]")),
    ("runs and records", "--resume", dict(action="store_true", help="continue unfinished seeds from their "
                                                                    "checkpoints")),
    ("runs and records", "--overwrite", dict(action="store_true", help="replace an existing results.json")),
    ("runs and records", "--keep-checkpoint", dict(action=argparse.BooleanOptionalAction, default=True,
                                                   help="keep a finished seed's checkpoint.safetensors (trained "
                                                        "weights and AdamW's two moments, about 3x the model); "
                                                        "--no-keep-checkpoint deletes it once the seed is recorded")),
    ("runs and records", "--save-trained", dict(action="store_true", help="write seed-<k>/trained.safetensors with "
                                                "only the parameters that ever trained")),
    ("runs and records", "--count-only", dict(action="store_true", help="print the stage diagram and parameter "
                                              "counts from config.json; load no weights or data")),
    ("runs and records", "--limit-train", dict(type=int, help="train on the first N examples (smoke runs)")),
    ("recipe", "--train-subset", dict(type=int, metavar="N", help="train on N rows drawn uniformly without "
                                      "replacement, in file order; the same rows for every seed and mode")),
    ("recipe", "--subset-seed", dict(type=int, help="the --train-subset draw's own seed (default 0)")),
    ("runs and records", "--limit-eval", dict(type=int, help="evaluate on the first N dev examples / questions")),
    ("runs and records", "--log-every", dict(type=int, default=50, help="progress line every N steps")),
    ("runs and records", "--null-threshold", dict(type=finite, default=0.0, help="SQuAD v2.0: answer nothing when "
                                                  "null score - best span score exceeds this")),
    ("speed", "--device", dict(help="cuda or cpu (default: cuda when available)")),
    ("speed", "--compile", dict(action=argparse.BooleanOptionalAction, default=None,
                                help="torch.compile each block (default: on for CUDA, off on CPU)")),
    ("speed", "--amp", dict(action=argparse.BooleanOptionalAction, default=None,
                            help="autocast: bf16 (or fp16 with loss scaling) on CUDA, default on; bf16 on CPU, "
                                 "default off")),
    ("speed", "--amp-dtype", dict(default="auto", choices=("auto", "bf16", "fp16"), help="autocast precision: "
                                  "auto = bf16 where the device supports it, else fp16 with a GradScaler")),
    ("speed", "--export", dict(metavar="DIR", help="at the end of each seed, write the model with a model card to "
                               "DIR (DIR/seed-<k> with several seeds); see export.py")),
    ("speed", "--export-format", dict(choices=tuple(export.FORMATS), help="--export's format: hf (transformers), "
                                      "peft (LoRA runs), adapters (Adapter runs); default adapters for Adapter runs, "
                                      "hf otherwise")),
    ("speed", "--dist-timeout", dict(type=finite, default=30.0, help="torchrun: minutes a process waits in a "
                                     "collective before it stops with an error")),
    (None, "--compile-backend", dict(default="inductor", help=argparse.SUPPRESS)),
    (None, "--interrupt-after-steps", dict(type=int, help=argparse.SUPPRESS)),  # tests: a Ctrl-C after N steps
]

# What each setting must be, checked once the preset has filled it: (flag, test, expected).
CHECKS = [
    ("--epochs", lambda s: s.epochs >= 1, ">= 1"),
    ("--stages", lambda s: s.stages >= 1, ">= 1"),
    ("--lr", lambda s: 0 < s.lr <= 1, "in (0, 1] (AdamW's peak learning rate; the recipes use 2e-5 to 1e-3)"),
    ("--batch-size", lambda s: s.batch_size >= 1, ">= 1"),
    ("--eval-batch-size", lambda s: s.eval_batch_size >= 1, ">= 1"),
    ("--max-length", lambda s: s.max_length >= 8, ">= 8"),
    ("--doc-stride", lambda s: not s.is_squad or 0 <= s.doc_stride < s.max_length // 2,
     "in [0, --max-length / 2) so each window still holds new context"),
    ("--warmup-ratio", lambda s: 0 <= s.warmup_ratio < 1, "in [0, 1)"),
    ("--weight-decay", lambda s: s.weight_decay >= 0, ">= 0"),
    ("--log-every", lambda s: s.log_every >= 1, ">= 1"),
    ("--dist-timeout", lambda s: s.dist_timeout > 0, "> 0 (minutes)"),
    ("--limit-train", lambda s: s.limit_train is None or s.limit_train >= 1, ">= 1"),
    ("--train-subset", lambda s: s.train_subset is None or s.train_subset >= 1, ">= 1"),
    ("--subset-seed", lambda s: s.subset_seed >= 0, ">= 0"),
    ("--limit-eval", lambda s: s.limit_eval is None or s.limit_eval >= 2, ">= 2 (correlations need two examples)"),
    ("--sparsity", lambda s: 0 < s.sparsity <= 1, "in (0, 1] (the share of entries that train)"),
    ("--burn-in-steps", lambda s: s.burn_in_steps is None or s.burn_in_steps >= 1, ">= 1"),
    ("--interrupt-after-steps", lambda s: s.interrupt_after_steps is None or s.interrupt_after_steps >= 1, ">= 1"),
]

# Flags that belong to some methods only.
METHOD_FLAGS = {"adapter_size": ("adapter",), "lora_r": ("lora",), "lora_alpha": ("lora",), "lora_dropout": ("lora",),
                "sparsity": SPARSE_METHODS, "mask_scope": SPARSE_METHODS, "burn_in_steps": ("sam",)}


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a wrong flag reported as one line (exit 2) instead of the usage block and the error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (python run.py --help lists the options)\n")


def parse_args(argv: list[str] | None = None) -> Settings:
    p = OneLineParser(description="Progtuning: progressive fine-tuning of BERT/RoBERTa/MPNet on GLUE and SQuAD",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = {}
    for group, flag, keywords in OPTIONS:
        if group is not None and group not in groups:
            groups[group] = p.add_argument_group(group)
        (groups[group] if group is not None else p).add_argument(flag, **keywords)
    args = p.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as error:
        p.error(str(error))  # one line, exit status 2
    return settings


def settings_from(args: argparse.Namespace) -> Settings:
    """The parsed flags, checked against each other and filled from the preset; ValueError says what is wrong."""
    if args.train_blocks is not None:
        if args.mode == "pt":
            raise ValueError("--train-blocks fixes which blocks train in every epoch, which replaces Progtuning's "
                             "schedule; leave out --mode pt (it then runs as ft)")
        try:
            parse_blocks(args.train_blocks)
        except ValueError as error:
            raise ValueError(f"--train-blocks {error}") from None
    args.mode = args.mode or ("ft" if args.train_blocks is not None else "pt")
    if args.mode == "ft" and args.schedule != "shrink":
        raise ValueError(f"--schedule {args.schedule} applies to --mode pt only; plain fine-tuning trains every block")
    for flag, methods in METHOD_FLAGS.items():
        if getattr(args, flag) is not None and args.method not in methods:
            raise ValueError(f"--{flag.replace('_', '-')} applies to --method {'/'.join(methods)}, not --method "
                             f"{args.method}")
    if args.train_subset is not None and args.limit_train is not None:
        raise ValueError("give --train-subset (a fixed random sample) or --limit-train (the first rows), not both")
    if args.subset_seed is not None and args.train_subset is None:
        raise ValueError("--subset-seed applies with --train-subset N")
    if args.task not in data.SQUAD_VERSIONS and (args.train_file or args.dev_file):
        raise ValueError("--train-file / --dev-file select SQuAD files; GLUE files are found by task under --data-dir")
    seeds = _seeds(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to PyTorch here")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    amp = args.amp if args.amp is not None else device.startswith("cuda")
    if args.amp_dtype != "auto" and not amp:
        raise ValueError(f"--amp-dtype {args.amp_dtype} applies with --amp (autocast), which is off for this run")
    if args.amp_dtype == "fp16" and not device.startswith("cuda"):
        raise ValueError("--amp-dtype fp16 needs CUDA (loss scaling with torch.amp.GradScaler); on CPU use bf16")
    defaults, source = preset(args.task, args.method)
    given = {key: getattr(args, key) for key in defaults if getattr(args, key) is not None}
    name = f"{args.task}-{args.mode}-{args.method}" + (f"-{args.schedule}" if args.schedule != "shrink" else "") + (
        f"-blocks-{args.train_blocks.replace(',', '_')}" if args.train_blocks is not None else "")
    options = {key: value for key, value in vars(args).items()
               if key in Settings.__dataclass_fields__ and value is not None}
    settings = Settings(**{**options, **defaults, **given, "mode": args.mode, "seeds": seeds, "device": device,
                           "amp": amp, "preset_source": source,
                           "stages": args.stages if args.stages is not None else given.get("epochs", defaults["epochs"]),
                           "compile": args.compile if args.compile is not None else device.startswith("cuda"),
                           "output_dir": args.output_dir or str(Path("runs") / (("count-" if args.count_only
                                                                                 else "") + name))})
    for flag, ok, expected in CHECKS:
        if not ok(settings):
            raise ValueError(f"{flag} must be {expected}, got {getattr(settings, flag[2:].replace('-', '_'))}")
    if settings.export_format and not settings.export:
        raise ValueError("--export-format applies with --export DIR")
    if settings.export:
        export.check_format(settings.method, settings.export_format, random_init=settings.random_init,
                            flag="--export-format")
    if settings.mode == "pt" and settings.schedule == "no-low" and settings.stages == 1:
        raise ValueError("--schedule no-low needs at least 2 stages: with one stage it would train no block at all")
    settings.method_options().validate()
    return settings


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seed is not None and args.seeds is not None:
        raise ValueError("give --seed or --seeds, not both")
    try:
        seeds = [args.seed] if args.seed is not None else [int(s) for s in args.seeds.split(",")] if args.seeds else [1]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers such as 1,2,3, got {args.seeds!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds has repeated values: {args.seeds}")
    return seeds


# --------------------------------------------------------------------------------------------------
# Planning only
# --------------------------------------------------------------------------------------------------

def plan_counts(settings: Settings, model, steps_per_epoch: int | None):
    """The stages and the run's counts (None for a sparse method with --mask-scope global, whose seeds count
    their own masks), with the stage diagram and the counts table printed."""
    stages = plan(settings, model)
    entries = planned_entries(settings, model)
    if settings.method in SPARSE_METHODS and entries is None:
        print(stage_diagram(stages, len(model.blocks), settings.epochs))
        print(global_scope_note(settings, model))
        return stages, None
    counts = count_parameters(model, stages, settings.method, settings.epochs, steps_per_epoch,
                              settings.freeze_embeddings, entries)
    print(stage_diagram(stages, len(model.blocks), settings.epochs, counts))
    print(counts_table(counts, settings, steps_per_epoch))
    return stages, counts


def count_only(settings: Settings) -> dict:
    """Plan a run from config.json alone: stage diagram and parameter counts, written to results.json."""
    start = time.perf_counter()
    stages, counts = plan_counts(settings, build_model(settings, weights=False), None)
    seconds = time.perf_counter() - start
    record = {"kind": COUNT_KIND, "format_version": FORMAT_VERSION, "settings": dataclasses.asdict(settings),
              "stages": [block_numbers(blocks) for blocks in stages], **counts_record(counts), "seconds": seconds}
    existing = Path(settings.output_dir) / "results.json"
    with OutputLock(existing.parent):  # a training run in this folder is never replaced by a plan
        if existing.exists() and not settings.overwrite:
            kind = read_json(existing).get("kind")
            if kind != COUNT_KIND:
                raise SystemExit(f"error: {existing} holds a training record ({kind}); choose another "
                                 "--output-dir or pass --overwrite")
        write_json_atomic(existing, record)
    print(f"wrote {existing} ({seconds * 1000:.0f} ms)")
    return record


# --------------------------------------------------------------------------------------------------
# One seed: the training loop
# --------------------------------------------------------------------------------------------------

def train_one_seed(settings: Settings, seed: int, task_data, tokenizer, seed_dir: Path, counts,
                   on_epoch_end) -> dict:
    """Train one seed to the end (or to an interrupt) and return its run record. `counts` is the run's
    parameter accounting (the same for every seed; a sparse method's mask fixes its own)."""
    world = distributed.WORLD
    torch.manual_seed(seed)  # the new head's initialisation (the same in every process), then dropout
    model = build_model(settings).to(settings.device)
    if world.rank:  # under torchrun, each process its own dropout stream, from (seed, rank)
        torch.manual_seed(seed * 1_000_003 + world.rank)
    stages = plan(settings, model)
    steps_per_epoch = math.ceil(len(task_data.train) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup_steps = int(settings.warmup_ratio * total_steps)
    seed_run = SeedRun(settings, seed, seed_dir, task_data.files, steps_per_epoch)  # checks a --resume
    mask, entries, counts, burn_in_steps = prepare_mask(settings, seed_run, model, stages, task_data,
                                                        tokenizer.pad_token_id, counts)
    stepper = Stepper(model, ever_trainable(model, stages, settings, entries), settings, counts, seed_run, mask)
    seed_run.restore(stepper)  # a resumed seed's weights, AdamW moments, random generators, position
    progress = Progress(settings, seed_run, stepper, total_steps, steps_before=burn_in_steps)

    with Interrupt() as interrupt:
        for epoch in range(seed_run.position["epoch"], settings.epochs):
            progress.start_epoch(epoch)
            for step_in_epoch, batch in seed_run.batches_left(epoch, task_data.train, tokenizer.pad_token_id):
                step = epoch * steps_per_epoch + step_in_epoch
                stage = stage_of_step(step, total_steps, settings.stages)
                if stage != stepper.stage:  # Progtuning: the next part of the blocks stops training
                    stepper.apply_stage(stage, stages[stage - 1], entries, epoch, step_in_epoch, step)
                loss = stepper.step(batch, lr_at(step, total_steps, warmup_steps, settings.lr))
                if progress.after_step(step, step_in_epoch, loss, batch, interrupt):
                    seed_run.interrupt(stepper, progress, interrupt.exit_code)  # checkpoint, then stop

            check_weights(model, epoch, settings)  # an epoch that diverged is never evaluated or recorded
            metrics = evaluate(settings, model, task_data, tokenizer, seed_dir) if world.main else {}
            distributed.barrier()  # the other processes wait for rank 0's evaluation
            last_stage = stage_of_step((epoch + 1) * steps_per_epoch - 1, total_steps, settings.stages)
            seed_run.end_epoch(epoch, last_stage, stages[last_stage - 1], metrics, progress, stepper)
            on_epoch_end(seed_run.run)  # results.json
    finish_seed(settings, seed_run, stepper)  # --save-trained, --export, --no-keep-checkpoint
    return seed_run.run


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
    if settings.device == "cpu":
        keep_large_tensors_in_the_heap()
    if not world.main:
        sys.stdout = open(os.devnull, "w")  # rank 0 reports for everyone; errors still reach stderr
    print("settings: " + json.dumps(dataclasses.asdict(settings)), flush=True)
    print(f"preset: {settings.preset_source}")
    config = load_config(settings.model)
    positions = config.max_length
    if settings.export:  # the format's checks that need the model type, before any training
        try:
            export.check_format(settings.method, settings.export_format, config.model_type, flag="--export-format")
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
    if settings.max_length > positions:
        raise SystemExit(f"error: --max-length {settings.max_length} exceeds the {positions} positions of "
                         f"{settings.model} (max_position_embeddings in its config.json); use --max-length "
                         f"{positions} or less")
    if settings.count_only:
        return count_only(settings) if world.main else {}
    check_weights_first(settings)
    with output_lock(Path(settings.output_dir)):  # held while this run writes there; a second run stops here
        return train_run(settings, sys.argv[1:] if argv is None else list(argv))


def train_run(settings: Settings, command: list[str]) -> dict:
    """Read the data once, train each seed, write results.json after every epoch (`command`, this run's
    arguments, joins its list of commands); returns the record."""
    results_path = Path(settings.output_dir) / "results.json"
    previous = existing_results(settings, results_path)
    distributed.barrier()  # every process has read what exists before rank 0 writes anything
    torch.manual_seed(0)
    tokenizer = load_tokenizer(settings.model)
    with distributed.main_first():  # one process downloads a missing GLUE task or SQuAD file
        task_data = load_task_data(settings, tokenizer)
    steps_per_epoch = math.ceil(len(task_data.train) / settings.batch_size)
    if settings.stages > steps_per_epoch * settings.epochs:
        print(f"WARNING: --stages {settings.stages} but the run has only {steps_per_epoch * settings.epochs} steps, "
              f"so {settings.stages - steps_per_epoch * settings.epochs} stages never run (a step belongs to one "
              f"stage); use --stages {steps_per_epoch * settings.epochs} or fewer", file=sys.stderr)
    stages, counts = plan_counts(settings, build_model(settings, weights=False), steps_per_epoch)
    print(f"{len(task_data.train)} training rows, {steps_per_epoch} steps per epoch; "
          + ", ".join(f"{e.report_name}: {len(e.encoded)} dev rows" for e in task_data.evals), flush=True)

    main_metric = "f1" if settings.is_squad else glue_eval.main_metric(settings.task)
    results = {"kind": RESULTS_KIND, "format_version": FORMAT_VERSION, "settings": dataclasses.asdict(settings),
               "main_metric": main_metric, "stages": [block_numbers(blocks) for blocks in stages],
               **counts_record(counts), "majority_baseline": task_data.majority_baseline,
               "data_files": task_data.files, "skipped_rows": task_data.skipped_rows, "runs": [],
               "summary": {}, "environment": environment(settings)}
    results["commands"] = [*(previous or {}).get("commands", []), command]
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

    not_written = run_seeds(settings, results, task_data, tokenizer, counts, save)
    print_summary(results, results_path)
    if not_written:
        raise SystemExit(f"error: --save-trained: seed(s) {', '.join(map(str, not_written))} finished earlier "
                         "and their checkpoint was removed (--no-keep-checkpoint), so their trained weights can no "
                         "longer be written; run them again with --overwrite in another --output-dir")
    warn_skipped_rows(task_data.skipped_rows)
    return results


def run_seeds(settings: Settings, results: dict, task_data, tokenizer, counts, save) -> list[int]:
    """Train each seed not yet complete, saving results.json after every epoch; returns the finished seeds
    whose trained file --save-trained can no longer write."""
    out, not_written = Path(settings.output_dir), []
    for seed in settings.seeds:
        seed_dir = out / f"seed-{seed}"
        done = next((r for r in results["runs"] if r["seed"] == seed and r.get("status") == "complete"), None)
        if done is not None:
            if not settings.save_trained or (seed_dir / "trained.safetensors").exists():
                print(f"seed {seed}: already complete in {out / 'results.json'}; skipped")
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
            run = train_one_seed(settings, seed, task_data, tokenizer, seed_dir, counts, save)
        except Interrupted as stop:
            if distributed.WORLD.main:
                save(checkpoint_meta(seed_dir / "checkpoint.safetensors")["run"])
                print(stop, file=sys.stderr)
            raise SystemExit(stop.exit_code) from None
        save(run)
    return not_written


def check_weights_first(settings: Settings) -> None:
    """The checkpoint is readable and finite, before the data are read and any folder is made: a truncated
    download or a broken file would otherwise show only after minutes of tokenizing."""
    with distributed.main_first():  # one process downloads a missing checkpoint, the others find it
        folder = resolve_checkpoint(settings.model)
    if settings.random_init:
        return
    if not weight_files(folder):
        raise SystemExit(f"error: {folder} has config.json but no model.safetensors, so training would start "
                         "from random weights; add the weights, or pass --random-init if a random start is what "
                         "you mean (the records then say so)")
    check_checkpoint(settings)


def existing_results(settings: Settings, results_path: Path) -> dict | None:
    """The results.json a --resume continues (checked to be the same run), after refusing to overwrite one
    without --overwrite; with --overwrite, the seeds' stale checkpoints and logs are removed."""
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
    if settings.overwrite and not settings.resume and distributed.WORLD.main:
        for seed in settings.seeds:
            for stale in ("checkpoint.safetensors", "checkpoint.safetensors.sha256", "log.jsonl"):
                (results_path.parent / f"seed-{seed}" / stale).unlink(missing_ok=True)
    if settings.export and not settings.overwrite:  # refuse now, not after hours of training
        for seed in settings.seeds:
            dest = export_dir(settings, seed)
            if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
                raise SystemExit(f"error: --export: {dest} exists and is not empty; pass --overwrite to replace "
                                 "it, or export to another folder")
    return previous


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


def print_summary(results: dict, results_path: Path) -> None:
    print(f"results: {results_path}")
    for report_name, metrics in results["summary"].items():
        print(f"  {report_name}: " + ", ".join(f"{m} {s['mean']:.2f}"
                                               + (f" ± {s['std']:.2f}" if s["std"] is not None else "")
                                               + f" (n={s['n']})" for m, s in metrics.items()))


def warn_skipped_rows(skipped_rows: dict) -> None:
    lost = {split: n for split, n in skipped_rows.items() if n}
    if lost:
        # Printed last, so it is the line a user sees: these scores are on a different set than the paper's.
        print(f"WARNING: malformed rows were skipped ({', '.join(f'{split} {n}' for split, n in lost.items())}; "
              "see the notes above and skipped_rows in results.json): "
              + ("the dev scores above are on fewer rows than the official dev set, so they are not "
                 "comparable with published numbers" if set(lost) - {"train"} else
                 "the model trained on fewer rows than the official training set"), file=sys.stderr)


def cli(argv: list[str] | None = None) -> None:
    """main() as the command line runs it: every expected failure ends as one line and an exit code."""
    try:
        main(argv)
        # Under torchrun the processes leave together: rank 0 may still be writing files when the others are
        # done, and a gloo group torn down while a peer still works can abort the process at exit.
        distributed.barrier()
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
