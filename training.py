"""training.py: the machinery behind run.py's training loop, so that the loop itself reads as the method.

Reading order:
  lr_at, compute_loss, make_optimizer   the recipe's schedule, loss and optimizer (docs/method.md §5)
  Stepper                               one training step that never waits for the device, and the stage
                                        switch: requires_grad by name (progtuning.apply_stage), DDP rebuilt
  compile_blocks, CompileLog            torch.compile per block: one graph that every block reuses
  Progress                              the loss summed on the device; at log points the progress line,
                                        the ETA, the non-finite check and (torchrun) the stop flag
  Interrupt, Interrupted                Ctrl-C / SIGTERM: finish the step, checkpoint, stop
  SeedRun                               a seed's record and position, its checkpoint and --resume
  prepare_mask                          a sparse method's fixed mask (docs/method.md §9), SAM's burn-in
  finish_seed                           what a finished seed leaves: trained file, export, no checkpoint
  keep_large_tensors_in_the_heap        the CPU step's tensors from glibc's heap, not an mmap each
  environment, machine                  which machine a record was made on
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import torch
import torch.nn.functional as F

import data
import distributed
import export
import progtuning
import sparse
from integrity import digest_path, save_safetensors
from model import Transformer, part_of
from progtuning import ParameterCounts, count_parameters
from recipe import Settings, autocast, autocast_dtype, counts_record, first_non_finite
from records import (FORMAT_VERSION, append_log, block_numbers, check_same_data, checkpoint_tensors,
                     load_checkpoint, read_json, restore_rng, save_checkpoint, upgrade_run, verified_checkpoint_meta)
from sparse import SPARSE_METHODS


# --------------------------------------------------------------------------------------------------
# Schedule, loss, optimizer
# --------------------------------------------------------------------------------------------------

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


def make_optimizer(model: Transformer, names: list[str], settings: Settings,
                   mask: sparse.Mask | None = None) -> torch.optim.Optimizer:
    """AdamW over the parameters that ever train; decay for matrices only, none for biases and LayerNorm.
    With a sparse method's mask, sparse.SparseAdamW: state and updates for the masked-in entries only.
    On CUDA torch's fused AdamW: one kernel for every tensor instead of a launch per tensor and operation."""
    params = dict(model.named_parameters())
    decay = [params[n] for n in names if params[n].dim() >= 2]
    no_decay = [params[n] for n in names if params[n].dim() < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if mask is not None:
        return sparse.SparseAdamW(groups, {params[n]: mask[n] for n in names if n in mask}, lr=settings.lr)
    fused = settings.device.startswith("cuda")
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


# --------------------------------------------------------------------------------------------------
# The step and the stage switch
# --------------------------------------------------------------------------------------------------

class Stepper:
    """The model, its optimizer and the step: set lr -> forward under autocast -> backward -> (unscale) ->
    clip -> step -> zero_grad. Nothing in a step waits for the device: the loss comes back as a tensor
    for Progress to sum where it is, and gradient clipping scales on the device. (fp16's GradScaler is
    the exception: its step reads whether a gradient overflowed.) Under torchrun each process trains on
    its share of the global batch and DDP's backward averages the gradients, so every process steps with
    the global batch's gradient."""

    def __init__(self, model: Transformer, names: list[str], settings: Settings, counts: ParameterCounts,
                 seed_run: "SeedRun", mask: sparse.Mask | None = None):
        """names: the parameters that ever train (the optimizer's); mask: a sparse method's entries."""
        self.model, self.names, self.settings, self.counts, self.mask = model, names, settings, counts, mask
        self.log_path = seed_run.log_path
        self.optimizer = make_optimizer(model, names, settings, mask)
        self.scaler = torch.amp.GradScaler("cuda") if autocast_dtype(settings) == torch.float16 else None
        self.stage, self.trainable, self.step_model, self.wrapped_for = None, [], model, None
        # runs[].compile: one entry per stage, kept across a --resume
        self.compile_log = (CompileLog(settings.compile_backend, seed_run.run.setdefault("compile", []))
                            if settings.compile else None)
        if self.compile_log is not None:
            compile_blocks(model, self.compile_log.counter)

    def apply_stage(self, stage: int, blocks: list[int], entries: dict[str, int] | None, epoch: int,
                    step_in_epoch: int, step: int) -> None:
        """Switch to stage `stage`: exactly its parameters require grad (progtuning.apply_stage), the step
        clips and DDP reduces only those; say so on the console and in the log."""
        names = progtuning.apply_stage(self.model, blocks, self.settings.method, self.settings.freeze_embeddings,
                                       entries)
        self.trainable = [p for n, p in self.model.named_parameters() if n in names]
        if names != self.wrapped_for:  # ft's stages change nothing
            # DDP captures which parameters train when it is built (distributed.wrap says why): a new one
            self.step_model = distributed.wrap(self.model, distributed.WORLD)
            self.wrapped_for = names
            if self.compile_log is not None:
                self.compile_log.new_stage(stage, epoch)
        self.stage = stage
        print(f"stage {stage}/{self.settings.stages} from epoch {epoch + 1} step {step_in_epoch}: training "
              f"blocks {blocks_label(blocks)} of {len(self.model.blocks)} "
              f"({self.counts.trainable_params_per_stage[stage - 1]:,} parameters)", flush=True)
        append_log(self.log_path, {"event": "stage", "stage": stage, "epoch": epoch + 1, "step": step,
                                   "trainable_blocks": block_numbers(blocks)})

    def step(self, batch: dict, lr: float) -> torch.Tensor:
        """One optimizer step on `batch` (already on the device) at learning rate `lr`; returns the loss,
        detached, on the device. With a compile log, the steps that built graphs are timed whole."""
        if self.compile_log is not None:
            self.compile_log.before_step()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        world, scale = distributed.WORLD, None
        if world.distributed:
            batch, scale = distributed.share(batch, world)
        with autocast(self.settings):
            output = self.step_model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss = compute_loss(self.settings, output, batch, scale)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.settings.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, self.settings.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.compile_log is not None:
            self.compile_log.after_step(list(batch["input_ids"].shape))
        return loss.detach()


def compile_blocks(model: Transformer, backend) -> None:
    """torch.compile each block in place. Every block runs the same code on inputs of the same shapes, and
    its weights are the graph's inputs, so one graph serves all of them; a block whose weights are frozen
    gets one variant (requires_grad is among what a graph is specialised on: its backward computes no
    weight gradient). So a stage switch compiles nothing, or only that variant the first time a block
    freezes, where compiling the whole model meant one new graph of every block per stage. E and H stay
    eager: a gather, a LayerNorm and two small matmuls. fullgraph: a graph break would be a silent
    slowdown; make it an error instead. The module keeps its own parameter names (no `_orig_mod.`)."""
    # Graphs of an earlier model in this process (the seed before, a test) share Block.forward's cache,
    # whose size is limited (dynamo's recompile_limit): drop them.
    torch._dynamo.reset()
    for block in model.blocks:
        block.compile(backend=backend, fullgraph=True)


class GraphCounter:
    """A torch.compile backend that counts the graphs dynamo hands to the real one (inductor by default).
    Each costs seconds to build; a count above what a stage needs is a recompile (a batch shape, a failed
    guard) that the run record shows."""

    def __init__(self, backend: str):
        self.backend = torch._dynamo.lookup_backend(backend)
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return self.backend(graph_module, example_inputs)


class CompileLog:
    """Graphs and compile seconds per stage, for runs[].compile: the steps that built a graph are counted
    whole as compile time (the step's own work is small beside it), and the batch shapes each stage saw."""

    def __init__(self, backend: str, stages: list[dict]):
        self.counter = GraphCounter(backend)
        self.stages = stages
        self._graphs_before, self._started = 0, 0.0

    def new_stage(self, stage: int, epoch: int) -> None:
        self.stages.append({"stage": stage, "epoch": epoch + 1, "graphs": 0, "seconds": 0.0, "batch_shapes": []})

    def before_step(self) -> None:
        self._graphs_before, self._started = self.counter.graphs, time.perf_counter()

    def after_step(self, shape: list[int]) -> None:
        record = self.stages[-1]
        built = self.counter.graphs - self._graphs_before
        if built:
            record["graphs"] += built
            record["seconds"] += time.perf_counter() - self._started
        if shape not in record["batch_shapes"]:
            record["batch_shapes"].append(shape)


def blocks_label(blocks: list[int]) -> str:
    """1-based, as in the paper: [4, 5, 6, 7] -> '5-8'."""
    if not blocks:
        return "none"
    if blocks == list(range(blocks[0], blocks[-1] + 1)):
        return f"{blocks[0] + 1}-{blocks[-1] + 1}" if len(blocks) > 1 else str(blocks[0] + 1)
    return ",".join(str(b + 1) for b in blocks)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------------------------------
# Progress: the loss on the device, read at log points
# --------------------------------------------------------------------------------------------------

class Progress:
    """The running loss, summed on the device step by step (no step waits to read it), and what happens at
    log points -- every --log-every steps and at each epoch's end: the sums are read once, a loss that is
    not finite stops the run naming the steps it came from, the progress line and log entry are written,
    and under torchrun the processes agree there whether to stop (so a Ctrl-C takes effect at the next
    log point). With one process a stop takes effect after the current step.

    Each process sums loss / processes, starting from the recorded sum / processes, so that the sum over
    processes is the global batches' summed loss; with one process that is the plain float64 sum in step
    order, bitwise what a run never interrupted computes."""

    def __init__(self, settings: Settings, seed_run: "SeedRun", stepper: Stepper, total_steps: int,
                 steps_before: int = 0):
        self.settings, self.seed_run, self.stepper, self.total_steps = settings, seed_run, stepper, total_steps
        self.world = distributed.WORLD
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=settings.device)  # this epoch's so far
        self.window = torch.zeros((), dtype=torch.float64, device=settings.device)
        self.steps_before = steps_before  # steps taken earlier in this process (SAM's burn-in)
        self.steps_here, self.started = 0, time.perf_counter()

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.epoch_started, self.train_seconds = epoch, time.perf_counter(), 0.0
        position = self.seed_run.position  # a resumed epoch goes on from the sum its checkpoint recorded
        self.loss_sum.fill_(position["loss_sum"] / self.world.size)
        self._new_window(position["step_in_epoch"])

    def _new_window(self, first_step_in_epoch: int) -> None:
        self.window.zero_()
        self.window_first, self.window_count, self.window_examples = first_step_in_epoch, 0, 0
        self.window_started = time.perf_counter()

    def after_step(self, step: int, step_in_epoch: int, loss: torch.Tensor, batch: dict,
                   interrupt: "Interrupt") -> bool:
        """Add a step's loss; at a log point, report. Returns True when the run must stop after this step."""
        share = loss.to(torch.float64) / self.world.size
        self.loss_sum += share
        self.window += share
        self.window_count += 1
        self.window_examples += len(batch["index"])
        self.steps_here += 1
        position = self.seed_run.position
        position["loss_count"] += 1
        position["step_in_epoch"] = step_in_epoch + 1
        limit = self.settings.interrupt_after_steps
        stop = interrupt.requested or (limit is not None and self.steps_before + self.steps_here >= limit)
        last = step_in_epoch + 1 == self.seed_run.steps_per_epoch
        log_point = (step + 1) % self.settings.log_every == 0 or last
        if self.world.distributed:  # the processes read the sums and decide together, at log points only
            if not log_point:
                return False
            values = distributed.summed(torch.stack([self.loss_sum, self.window, torch.tensor(
                float(stop), dtype=torch.float64, device=self.loss_sum.device)]), self.world).tolist()
            position["loss_sum"], window, stop = values[0], values[1], values[2] > 0
        elif log_point or stop:
            position["loss_sum"], window = self.loss_sum.item(), self.window.item()
        if log_point:
            self._report(step, step_in_epoch, window)
        if last:  # the sums were just read, so the device has finished the epoch's steps
            self.train_seconds = time.perf_counter() - self.epoch_started
        return stop

    def _report(self, step: int, step_in_epoch: int, window: float) -> None:
        stage = self.stepper.stage
        if not math.isfinite(window):
            where = f"steps {self.window_first + 1}-{step_in_epoch + 1} of epoch {self.epoch + 1} (stage {stage})"
            raise FloatingPointError(non_finite_loss(self.stepper.model, window, self.settings, where))
        elapsed = time.perf_counter() - self.window_started
        seconds_per_step = (time.perf_counter() - self.started) / self.steps_here
        entry = {"event": "progress", "epoch": self.epoch + 1, "stage": stage, "step": step + 1,
                 "total_steps": self.total_steps, "loss": window / self.window_count,
                 "lr": self.stepper.optimizer.param_groups[0]["lr"], "examples_per_s": self.window_examples / elapsed,
                 "eta_s": seconds_per_step * (self.total_steps - step - 1)}
        print(f"epoch {self.epoch + 1}/{self.settings.epochs} stage {stage} step {step + 1}/{self.total_steps} "
              f"loss {entry['loss']:.4f} lr {entry['lr']:.2e} {entry['examples_per_s']:.1f} ex/s "
              f"ETA {duration(entry['eta_s'])}", flush=True)
        append_log(self.seed_run.log_path, entry)
        self._new_window(step_in_epoch + 1)

    def epoch_seconds(self) -> float:
        return time.perf_counter() - self.epoch_started


def non_finite_loss(model: Transformer, loss: float, settings: Settings, where: str) -> str:
    """What is not finite -- the weights, or the loss of finite ones -- and what to do. The weights were
    checked finite before the first step (a broken checkpoint is named there) and the targets when the
    data were read, so what remains is a run that diverged."""
    broken = first_non_finite(model)
    if broken is not None:
        cause = f"training diverged: {plain_name(broken)} holds nan or inf; lower --lr (now {settings.lr})"
    else:
        cause = f"weights and targets are finite and the loss overflowed: lower --lr (now {settings.lr})"
    return f"loss is {loss} in {where}: {cause}"


def plain_name(name: str) -> str:
    """A parameter's name without the prefixes torch.compile and DDP wrappers add."""
    while name.startswith(("_orig_mod.", "module.")):
        name = name.split(".", 1)[1]
    return name


# --------------------------------------------------------------------------------------------------
# Signals
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
            print(f"\n{signal.Signals(signum).name}: finishing the steps to the next log point, then writing a "
                  "checkpoint", flush=True)
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


# --------------------------------------------------------------------------------------------------
# A seed: its record, its position, its checkpoint
# --------------------------------------------------------------------------------------------------

def epoch_order(rows: int, seed: int, epoch: int) -> list[int]:
    """The order in which epoch `epoch` (0-based) of a seed visits the training rows."""
    return torch.randperm(rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def on_device(batches, device: str):
    """The batches on the device, each copied one step ahead of its use: on CUDA from pinned memory with
    non_blocking copies, so the next batch travels while the current step runs; on the CPU as they are."""
    if not device.startswith("cuda"):
        yield from batches
        return
    ahead = None
    for batch in batches:
        moved = {key: value.pin_memory().to(device, non_blocking=True) for key, value in batch.items()}
        if ahead is not None:
            yield ahead
        ahead = moved
    if ahead is not None:
        yield ahead


class SeedRun:
    """One seed: its record (runs[] in results.json), its position in training, and its files in seed-<k>/,
    log.jsonl and checkpoint.safetensors -- what a checkpoint saves and --resume reads back and checks."""

    def __init__(self, settings: Settings, seed: int, seed_dir: Path, data_files: dict, steps_per_epoch: int):
        seed_dir.mkdir(parents=True, exist_ok=True)
        self.settings, self.seed, self.seed_dir, self.data_files = settings, seed, seed_dir, data_files
        self.steps_per_epoch = steps_per_epoch
        self.log_path, self.checkpoint_path = seed_dir / "log.jsonl", seed_dir / "checkpoint.safetensors"
        self.run = {"seed": seed, "status": "running", "epochs": [], "final": None, "wall_seconds": 0.0,
                    "steps_per_epoch": steps_per_epoch}
        self.position = {"epoch": 0, "step_in_epoch": 0, "loss_sum": 0.0, "loss_count": 0}
        self.meta, self.extra = None, {}  # extra: tensors saved beside the weights (a sparse method's mask)
        if settings.resume and self.checkpoint_path.exists():
            self.meta = self._checked_meta()
            self.run = upgrade_run(self.meta["run"], self.meta.get("format_version", 1))
        elif self.log_path.exists() and distributed.WORLD.main:
            self.log_path.unlink()  # a fresh start; an old log would mix two runs
        # Where this seed's time was spent (a resumed seed may have moved), so its minutes name their machine.
        if machine(settings) not in self.run.setdefault("machines", []):
            self.run["machines"].append(machine(settings))
        self.clock = time.perf_counter()

    def _checked_meta(self) -> dict:
        """The checkpoint's metadata, once the file is shown intact (its digest, finite tensors) and to
        continue this very run. Settings are compared before any tensor is copied: another lora_r or method
        would otherwise fail inside torch on a shape mismatch instead of saying what differs."""
        meta, path, world = verified_checkpoint_meta(self.checkpoint_path), self.checkpoint_path, distributed.WORLD
        differing = self.settings.differences(meta["settings"])
        if differing or meta["seed"] != self.seed:
            raise SystemExit(f"error: {path} was written with other settings "
                             f"{ {k: a for k, (a, b) in differing.items()} }; this run has "
                             f"{ {k: b for k, (a, b) in differing.items()} }. Resume with the same flags, or "
                             "start over with --overwrite")
        check_same_data(meta.get("data_files"), self.data_files, path)
        if meta.get("world_size", 1) != world.size:
            raise SystemExit(f"error: {path} was written by {meta.get('world_size', 1)} process(es) and this run "
                             f"has {world.size}; resume with --nproc_per_node (x nodes) = "
                             f"{meta.get('world_size', 1)}, since each process's dropout stream is in it")
        return meta

    @property
    def resumes_training(self) -> bool:
        """Whether the checkpoint holds trained weights (not an interrupted SAM burn-in's sums)."""
        return self.meta is not None and "burn_in_step" not in self.meta["position"]

    def restore(self, stepper: Stepper) -> None:
        """A resumed seed's weights, AdamW moments, loss scale, random generators and position."""
        if self.resumes_training:
            load_checkpoint(self.checkpoint_path, self.meta, stepper.model, stepper.optimizer, stepper.names,
                            stepper.scaler)
            self.position = self.meta["position"]
            if self.position["epoch"] < self.settings.epochs:  # else a finished seed, for --save-trained only
                print(f"resuming seed {self.seed} from {self.checkpoint_path}: epoch {self.position['epoch'] + 1}, "
                      f"step {self.position['step_in_epoch']} of {self.steps_per_epoch}")
                # Lines an earlier attempt logged past this checkpoint are superseded from here (read_log).
                append_log(self.log_path, {"event": "resumed", "epoch": self.position["epoch"] + 1,
                                           "step": self.position["epoch"] * self.steps_per_epoch
                                           + self.position["step_in_epoch"]})
        self.clock = time.perf_counter()

    def batches_left(self, epoch: int, train: data.Encoded, pad_token_id: int):
        """(step in epoch, batch on the device) for the steps of `epoch` not done yet: all of them, or those
        after the step an interrupted run stopped at (none when it stopped on the epoch's last step)."""
        done = self.position["step_in_epoch"]
        order = epoch_order(len(train), self.seed, epoch)[done * self.settings.batch_size:]
        pad = 32 if self.settings.compile else None  # few distinct shapes, and widths tensor cores like
        batches = data.batches(train, self.settings.batch_size, pad_token_id, order, pad)
        return enumerate(on_device(batches, self.settings.device), start=done)

    def save(self, stepper: Stepper) -> None:
        meta = {"format_version": FORMAT_VERSION, "settings": self.settings.run_defining(), "seed": self.seed,
                "position": self.position, "run": self.run, "data_files": self.data_files}
        save_checkpoint(self.checkpoint_path, stepper.model, stepper.optimizer, stepper.names, stepper.scaler,
                        meta, self.extra)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.run["wall_seconds"] += now - self.clock
        self.clock = now

    def interrupt(self, stepper: Stepper, progress: Progress, exit_code: int) -> NoReturn:
        """Checkpoint where the loop stands and stop: Interrupted carries the exit code out of run.main."""
        self._tick()
        self.run["status"] = "interrupted"
        self.position["epoch_seconds_before"] = (self.position.get("epoch_seconds_before", 0.0)
                                                 + progress.epoch_seconds())
        self.save(stepper)
        epoch, step = self.position["epoch"], self.position["step_in_epoch"]
        append_log(self.log_path, {"event": "interrupted", "epoch": epoch + 1,
                                   "step": epoch * self.steps_per_epoch + step})
        raise Interrupted(f"seed {self.seed}: interrupted at epoch {epoch + 1} step {step}; checkpoint written to "
                          f"{self.checkpoint_path}; continue with --resume", exit_code)

    def end_epoch(self, epoch: int, stage: int, blocks: list[int], metrics: dict, progress: Progress,
                  stepper: Stepper) -> None:
        """The epoch's record, line and log entry; the position moves to the next epoch; a checkpoint."""
        position = self.position
        train_loss = position["loss_sum"] / max(1, position["loss_count"])
        before = position.get("epoch_seconds_before", 0.0)  # an epoch resumed after an interrupt
        # wall_seconds: the whole epoch, evaluation included; train_seconds: its steps only (with compiling)
        record = {"epoch": epoch + 1, "stage": stage, "trainable_blocks": block_numbers(blocks),
                  "train_loss": train_loss, "metrics": metrics, "wall_seconds": before + progress.epoch_seconds(),
                  "train_seconds": before + progress.train_seconds,
                  "updated_params": stepper.counts.updated_params_per_epoch[epoch]}
        if before:
            record["wall_seconds_before_interrupt"] = before
        if distributed.WORLD.distributed:  # proof that frozen parts stayed bitwise and the processes agree
            record["digests"] = distributed.agreed_digests(stepper.model, distributed.WORLD)
        self.run["epochs"].append(record)
        self._tick()
        print(f"epoch {epoch + 1} done in {duration(record['wall_seconds'])}: train loss {train_loss:.4f}; "
              + "; ".join(f"{name} " + ", ".join(f"{m} {v:.2f}" for m, v in values.items() if isinstance(v, float))
                          for name, values in metrics.items()), flush=True)
        append_log(self.log_path, {"event": "epoch", **record})
        self.position = {"epoch": epoch + 1, "step_in_epoch": 0, "loss_sum": 0.0, "loss_count": 0}
        if epoch + 1 == self.settings.epochs:
            self.run["status"], self.run["final"] = "complete", metrics
        if stepper.mask is not None:
            self.run["mask"]["optimizer_state_bytes"] = stepper.optimizer.state_bytes()
            self.run["mask"]["dense_adamw_state_bytes"] = sparse.dense_adamw_state_bytes(
                [p for n, p in stepper.model.named_parameters() if n in stepper.names])
        self.save(stepper)


def check_weights(model: Transformer, epoch: int, settings: Settings) -> None:
    """Never evaluate or record an epoch whose weights hold nan or inf: its scores would look like results."""
    broken = first_non_finite(model)
    if broken is not None:
        raise FloatingPointError(f"the weights hold nan or inf after epoch {epoch + 1} ({plain_name(broken)}): "
                                 f"training diverged; lower --lr (now {settings.lr})")


# --------------------------------------------------------------------------------------------------
# A sparse method's mask (docs/method.md §9)
# --------------------------------------------------------------------------------------------------

def prepare_mask(settings: Settings, seed_run: SeedRun, model: Transformer, stages: list[list[int]],
                 task_data, pad_token_id: int, counts: ParameterCounts | None):
    """A sparse method's fixed mask, chosen before training (SAM: after its burn-in) or read back from the
    checkpoint, with its gradients masked and the counts it fixes. Returns (mask, entries per eligible
    tensor, counts, burn-in steps taken here); (None, None, counts, 0) for the other methods."""
    if settings.method not in SPARSE_METHODS:
        return None, None, counts, 0
    mask, burn_in_here = choose_mask(settings, seed_run, model, task_data, pad_token_id)
    entries = sparse.mask_entries(mask, sparse.eligible_names(model, settings.freeze_embeddings))
    counts = count_parameters(model, stages, settings.method, settings.epochs, seed_run.steps_per_epoch,
                              settings.freeze_embeddings, entries)
    seed_run.run["mask"]["counts"] = counts_record(counts)
    seed_run.extra = {f"mask/{name}": indices for name, indices in mask.items()}
    sparse.mask_gradients(model, mask)
    return mask, entries, counts, burn_in_here


def choose_mask(settings: Settings, seed_run: SeedRun, model: Transformer, task_data,
                pad_token_id: int) -> tuple[sparse.Mask, int]:
    """A sparse method's mask for this seed, and the burn-in steps taken here (they count toward
    --interrupt-after-steps). A resumed run reads its mask back from the checkpoint, or continues an
    interrupted SAM burn-in from the sums saved there; otherwise the method's rule chooses it now."""
    if seed_run.resumes_training:
        return checkpoint_tensors(seed_run.checkpoint_path, "mask/"), 0
    eligible = sparse.eligible_names(model, settings.freeze_embeddings)
    params = dict(model.named_parameters())
    started = time.perf_counter()
    burn_in_steps, burn_in_done, scores = None, 0, None
    if settings.method == "random":
        mask = sparse.random_mask({n: params[n].numel() for n in eligible}, settings.sparsity, settings.mask_scope,
                                  seed_run.seed)
    elif settings.method == "magnitude":
        scores = sparse.magnitude_scores(model, eligible)
    else:
        burn_in_steps = settings.burn_in_steps or seed_run.steps_per_epoch
        scores, burn_in_done = sam_burn_in(settings, seed_run, model, eligible, task_data, pad_token_id,
                                           burn_in_steps)
    if scores is not None:
        mask = sparse.top_k_mask(scores, settings.sparsity, settings.mask_scope)
    entries = sparse.mask_entries(mask, eligible)
    per_block = [0] * len(model.blocks)
    for name, k in entries.items():
        part, block = part_of(name)
        if part == "block":
            per_block[block] += k
    run = seed_run.run
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


def sam_burn_in(settings: Settings, seed_run: SeedRun, model: Transformer, eligible: list[str], task_data,
                pad_token_id: int, steps: int) -> tuple[dict[str, torch.Tensor], int]:
    """SAM's scores from `steps` burn-in batches, drawn in training's own order (epoch 1's batches, then
    epoch 2's, ...). Ctrl-C (or --interrupt-after-steps) saves the running sums, the RNG and the position,
    and --resume goes on from there: the scores end bitwise as if never interrupted (on CPU)."""
    params = dict(model.named_parameters())
    world, meta, done = distributed.WORLD, seed_run.meta, 0
    if meta is not None:  # an interrupted burn-in: its sums become the .grad that burn_in adds onto
        done = meta["position"]["burn_in_step"]
        for name, total in checkpoint_tensors(seed_run.checkpoint_path, "burnin/").items():
            # the saved sums are every process's together: rank 0 carries them on, the others start at 0
            params[name].grad = total.to(params[name].device) if world.main else torch.zeros_like(
                total, device=params[name].device)
        restore_rng(seed_run.checkpoint_path)
        print(f"resuming seed {seed_run.seed}'s SAM burn-in at batch {done + 1} of {steps}")
    started = time.perf_counter()

    def batches():
        drawn = (batch for epoch in itertools.count()
                 for batch in data.batches(task_data.train, settings.batch_size, pad_token_id,
                                           epoch_order(len(task_data.train), seed_run.seed, epoch)))
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
                run = seed_run.run
                run["status"] = "interrupted"
                run["burn_in_seconds"] = run.get("burn_in_seconds", 0.0) + time.perf_counter() - started
                position = {"epoch": 0, "step_in_epoch": 0, "loss_sum": 0.0, "loss_count": 0, "burn_in_step": done + i}
                save_checkpoint(seed_run.checkpoint_path, model, None, [], None,
                                {"format_version": FORMAT_VERSION, "settings": settings.run_defining(),
                                 "seed": seed_run.seed, "position": position, "run": run,
                                 "data_files": seed_run.data_files},
                                {f"burnin/{name}": total for name, total in sums.items()})
                raise Interrupted(f"seed {seed_run.seed}: interrupted in SAM's burn-in after batch {done + i} of "
                                  f"{steps}; checkpoint written to {seed_run.checkpoint_path}; continue with "
                                  "--resume", interrupt.exit_code)

        scores = sparse.burn_in(model, eligible, batches(), loss_of, on_step,
                                lambda sums: distributed.sum_tensors(sums, world))
    seed_run.run["status"] = "running"
    return scores, steps - done


# --------------------------------------------------------------------------------------------------
# A finished seed's files
# --------------------------------------------------------------------------------------------------

def finish_seed(settings: Settings, seed_run: SeedRun, stepper: Stepper) -> None:
    """What a seed leaves once its loop is done: with --save-trained only the parameters that ever trained,
    with --export the Hugging Face folder, with --no-keep-checkpoint no checkpoint (once complete)."""
    if not distributed.WORLD.main:
        return
    model, names, mask = stepper.model, stepper.names, stepper.mask
    complete = seed_run.run["status"] == "complete"
    if settings.save_trained:
        path = seed_run.seed_dir / "trained.safetensors"
        meta = {"settings": dataclasses.asdict(settings), "seed": seed_run.seed}
        if mask is not None:  # only what trained: indices and values per masked tensor, the head whole
            sparse.save_trained(path, model, mask, [n for n in names if n not in mask], meta)
            print(f"wrote {path} ({sum(len(i) for i in mask.values()):,} masked-in entries and "
                  f"{len(names) - len(mask)} whole tensors); rebuild with `python sparse.py rebuild {path} --out DIR`")
        else:
            params = dict(model.named_parameters())
            save_safetensors(path, {n: params[n].detach().cpu().contiguous() for n in names},
                             {"progtuning": json.dumps(meta)})
            print(f"wrote {path} ({len(names)} tensors, {sum(params[n].numel() for n in names):,} parameters)")
    if settings.export and complete:
        model.eval()
        # the card is written from the record, which the last epoch's end has just saved
        record = read_json(Path(settings.output_dir) / "results.json")
        dest = export.export_model(model, record, seed_run.seed, export_dir(settings, seed_run.seed),
                                   settings.export_format, overwrite=True)
        print(f"exported {dest} (format {settings.export_format or export.default_format(settings.method)}); "
              f"{dest / 'README.md'} says how to load it")
    if not settings.keep_checkpoint and complete:
        seed_run.checkpoint_path.unlink(missing_ok=True)
        digest_path(seed_run.checkpoint_path).unlink(missing_ok=True)
        print(f"removed {seed_run.checkpoint_path} (--no-keep-checkpoint; the seed is complete)")


def export_dir(settings: Settings, seed: int) -> Path:
    return Path(settings.export) / f"seed-{seed}" if len(settings.seeds) > 1 else Path(settings.export)


# --------------------------------------------------------------------------------------------------
# The machine a record was made on
# --------------------------------------------------------------------------------------------------

def keep_large_tensors_in_the_heap() -> None:
    """On the CPU under glibc, let the training step's tensors (activations and gradients of a few MB each)
    come from the heap instead of one mmap and munmap each. glibc maps every allocation above its mmap
    threshold and raises that threshold as mapped blocks are freed, so where a step's tensors land depends on
    what the process freed before training. Measured on MiniLM's full fine-tuning step at 32 x 128 against
    the loop before this one (experiments/step-time.sh; PERFORMANCE.md): 1.02-1.03x its time with the default
    threshold, 0.97-0.99x with this fixed 64 MiB one; a fixed 128 KiB one made both 40% slower. Elsewhere
    (another C library, another OS) nothing changes."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
    libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)  # and keep freed heap memory for the next step, not the OS


def cpu_model() -> str:
    """The CPU's model name (Linux), so timings in a record say which machine made them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(settings: Settings) -> str:
    """Where a seed's minutes were spent, as runs[].machines lists it."""
    world = distributed.WORLD
    return f"{cpu_model()}, {torch.get_num_threads()} thread(s), {settings.device}" + (
        f" ({torch.cuda.get_device_name(settings.device)})" if settings.device.startswith("cuda") else "") + (
        f", {world.size} processes" if world.distributed else "")


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
