"""records.py: what a run leaves on disk and how it is read back -- results.json, each seed's log.jsonl and
checkpoint.safetensors -- every file written to a temp name and renamed, so a crash never leaves half a file.

Reading order:
  write_text_atomic, write_json_atomic, read_json    results.json and the predictions files
  append_log, read_log                               log.jsonl: one JSON line per event, read as one history
  summarize                                          mean ± sample std over the finished seeds
  save_checkpoint, load_checkpoint, checkpoint_meta  one safetensors file per seed (never a pickle): trainable
                                                     weights, AdamW moments, RNG states, and the position as JSON,
                                                     with its SHA-256 beside it (integrity.py)
  verified_checkpoint_meta                           --resume reads only a checkpoint that digest vouches for
  fingerprint, check_same_data                       the data files a record was made from, checked on --resume
  block_numbers, upgrade_run                         the format's versions (blocks count from 1 since version 2)
  OutputLock, output_lock                            one run at a time in an output folder (run.lock)

Under torchrun only rank 0 writes; save_checkpoint is a collective that every process calls.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

import distributed
from integrity import check_digest, check_finite, replace_durably, save_safetensors, warn_unverified, writing

RESULTS_KIND = "progtuning-results"
COUNT_KIND = "progtuning-count"
# 2: block numbers in records (stages, trainable_blocks) count from 1, as every printed line and the paper do;
# version 1 counted them from 0. A --resume upgrades a version-1 record and checkpoint as it reads them.
FORMAT_VERSION = 2
CHECKPOINT_ADVICE = "restore the file from a copy, or start this seed over with --overwrite"
LOCK_NAME = "run.lock"


def json_safe(value):
    """nan/inf (e.g. a correlation of a constant prediction) become null: results.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_text_atomic(path: Path, text: str) -> None:
    """Temp file + rename: a crash mid-write leaves the previous version, never half a file. Under torchrun
    only rank 0 writes (here and in append_log, save_checkpoint)."""
    if not distributed.WORLD.main:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    with writing(path, temp):
        temp.write_text(text, encoding="utf-8")
        replace_durably(temp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(json_safe(obj), indent=2) + "\n")


def read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: {path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise SystemExit(f"error: {path} holds a JSON {type(value).__name__}, not the object run.py writes; "
                         "choose another --output-dir or pass --overwrite")
    return value


def read_log(path: Path) -> list[dict]:
    """A seed's log.jsonl as one history. A run killed without a checkpoint of its last steps logged them
    once, and its --resume logs them again after a "resumed" event: the earlier lines past the resumed
    position are dropped here, so nothing is counted twice."""
    history: list[dict] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["event"] == "resumed":
            history = [e for e in history if not (
                (e["event"] == "progress" and e["step"] > entry["step"])
                or (e["event"] == "stage" and e["step"] >= entry["step"])
                or (e["event"] == "epoch" and e["epoch"] >= entry["epoch"]))]
        history.append(entry)
    return history


def append_log(path: Path, entry: dict) -> None:
    if not distributed.WORLD.main:
        return
    with writing(path), open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(json_safe({"time": time.time(), **entry})) + "\n")


def summarize(runs: list[dict]) -> dict:
    """mean ± sample std over the finished seeds, per dev set and metric."""
    finished = [r for r in runs if r.get("status") == "complete"]
    summary: dict = {}
    for run in finished:
        for report_name, metrics in run["final"].items():
            for metric, value in metrics.items():
                summary.setdefault(report_name, {}).setdefault(metric, []).append(value)
    # One seed has no sample spread: its std is null, not a 0 that reads as "no variation".
    return {name: {metric: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None,
                            "n": len(v)}
                   for metric, v in metrics.items() if all(isinstance(x, (int, float)) and math.isfinite(x)
                                                           for x in v)}
            for name, metrics in summary.items()}


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, names: list[str],
                    scaler, meta: dict, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Trainable weights, AdamW moments, RNG states and the JSON position, written to a temp file and
    renamed, so a crash mid-write leaves the previous checkpoint intact, with its SHA-256 beside it in
    checkpoint.safetensors.sha256 (integrity.save_safetensors). `extra`: more tensors under their own
    prefixes (a sparse method's mask/..., or burnin/... sums of an interrupted SAM burn-in)."""
    params = dict(model.named_parameters())
    tensors = {f"model/{n}": params[n].detach().cpu().contiguous() for n in names}
    tensors.update({key: value.detach().cpu().contiguous() for key, value in (extra or {}).items()})
    for name in names:
        for key, value in optimizer.state.get(params[name], {}).items():
            tensors[f"optim/{name}/{key}"] = value.detach().cpu().contiguous()
    # Every process's dropout generator (rank 0's under rng/, rank r's under rng/rank-r/), gathered first:
    # this is a collective, so every process calls save_checkpoint and only rank 0 writes.
    world = distributed.WORLD
    for rank, states in enumerate(distributed.gather(rng_states(), world)):
        tensors.update({rng_prefix(rank) + key: state for key, state in states.items()})
    if not world.main:
        return
    meta = {**meta, "world_size": world.size, "scaler": scaler.state_dict() if scaler is not None else None}
    save_safetensors(path, tensors, {"progtuning": json.dumps(json_safe(meta))})


def load_checkpoint(path: Path, meta: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                    names: list[str], scaler) -> None:
    """Copy the tensors of `path` into model, optimizer and RNG; `meta` is its checkpoint_meta, already
    checked against this run's settings."""
    params = dict(model.named_parameters())
    with safe_open(str(path), framework="pt") as file:
        keys = set(file.keys())
        expected = {f"model/{n}" for n in names}
        if not expected <= keys:
            missing = sorted(expected - keys)
            raise SystemExit(f"error: {path} lacks {len(missing)} trainable weight(s), e.g. {missing[0]}; "
                             "it was written by a different model or method")
        with torch.no_grad():
            for name in names:
                params[name].copy_(file.get_tensor(f"model/{name}"))
        for name in names:
            state = {key.rsplit("/", 1)[1]: file.get_tensor(key).to(params[name].device)
                     for key in keys if key.startswith(f"optim/{name}/")}
            if state and not optimizer.defaults.get("fused"):
                state["step"] = state["step"].cpu()  # AdamW keeps its step count on the CPU; fused, on the device
                optimizer.state[params[name]] = state
    restore_rng(path)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])


def rng_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def rng_prefix(rank: int) -> str:
    return "rng/" if rank == 0 else f"rng/rank-{rank}/"


def restore_rng(path: Path) -> None:
    """The random generators as the checkpoint saved them (this process's, under torchrun): dropout goes on
    as if never interrupted."""
    rng = checkpoint_tensors(path, rng_prefix(distributed.WORLD.rank))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def checkpoint_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under `prefix`, keyed by the rest of their name."""
    with safe_open(str(path), framework="pt") as file:
        return {key[len(prefix):]: file.get_tensor(key) for key in file.keys() if key.startswith(prefix)}


def verified_checkpoint_meta(path: Path) -> dict:
    """checkpoint_meta of a checkpoint shown to be intact: its bytes match the SHA-256 written with it
    (checked before anything is read from it) and every tensor in it is finite. One from before digests
    were kept is read with a warning."""
    has_digest = check_digest(path, CHECKPOINT_ADVICE)
    meta = checkpoint_meta(path)
    check_finite(path, "checkpoint", CHECKPOINT_ADVICE)
    if not has_digest and distributed.WORLD.main:
        warn_unverified(path)
    return meta


def checkpoint_meta(path: Path) -> dict:
    """The JSON written beside the tensors: settings, seed, position and the run record so far."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return json.loads(file.metadata()["progtuning"])
    except (SafetensorError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: {path} is not a checkpoint run.py wrote, or it was cut short "
                         f"({type(error).__name__}: {error}); start this seed over with --overwrite") from None


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


def block_numbers(blocks: list[int]) -> list[int]:
    """Blocks as records and printed lines number them: from 1 (the paper's numbering), not Python's 0."""
    return [block + 1 for block in blocks]


def upgrade_run(run: dict, version: int) -> dict:
    """A run record (or a checkpoint's copy of one) as the current format writes it."""
    if version < 2:
        for epoch in run.get("epochs", []):
            epoch["trainable_blocks"] = block_numbers(epoch["trainable_blocks"])
    return run


# --------------------------------------------------------------------------------------------------
# One run at a time in an output folder
# --------------------------------------------------------------------------------------------------

class FolderInUse(OSError):
    """Another process holds the output folder's lock; the message names it and what to do."""


class OutputLock:
    """An exclusive lock on an output folder: fcntl.flock on <folder>/run.lock, which also names its holder
    (pid, host, start time) for the run that is refused. The OS lets go of it when the holder's process
    ends, however it ends (a kill included), so no stale lock is ever left to clear by hand. The file stays;
    it is emptied when the lock is released. A file system that refuses locks (some network ones) gets a
    warning and an unlocked run (docs/run-files.md)."""

    def __init__(self, folder: Path):
        self.folder, self.path, self.file = Path(folder), Path(folder) / LOCK_NAME, None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+", encoding="utf-8")  # "a+": the holder's line stays until the lock is ours
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip()
            file.close()
            raise FolderInUse(f"{self.folder} is in use by another run ({_holder(holder)}), which holds "
                              f"{self.path}; wait until it ends or stop it, or give this run another "
                              "--output-dir") from None
        except OSError as error:
            print(f"WARNING: cannot lock {self.path} (the file system refused: {error.strerror}), so nothing "
                  "stops a second run from writing into this folder at the same time", file=sys.stderr)
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}) + "\n")
        file.flush()
        self.file = file

    def release(self) -> None:
        if self.file is not None:
            self.file.truncate(0)  # emptied while still held: a file left behind names no holder
            self.file.close()  # closing the file lets go of the lock
            self.file = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "its pid not written yet"


@contextlib.contextmanager
def output_lock(folder: Path):
    """OutputLock on `folder` for the enclosed work. Under torchrun rank 0 takes it before any process writes
    there, and every process learns whether it could: a refused rank 0 says why, the others leave quietly."""
    lock, failure = OutputLock(folder), None
    if distributed.WORLD.main:
        try:
            lock.acquire()
        except OSError as error:  # FolderInUse, or a folder that cannot be made
            failure = error
    if distributed.any_of(failure is not None, distributed.WORLD):
        raise failure if failure is not None else SystemExit(1)
    try:
        yield lock
    finally:
        lock.release()
