"""GLUE dev-set metrics, as reported in the Progtuning paper (docs/method.md §6).

The metric per task follows the GLUE benchmark (Wang et al. 2018, "GLUE: A Multi-Task Benchmark and
Analysis Platform for Natural Language Understanding"): Matthews correlation for CoLA, F1 and accuracy
for MRPC and QQP, Pearson and Spearman correlation for STS-B, accuracy for the rest. Every metric is
returned in percent (0-100), the unit of the paper's tables (e.g. CoLA 58.2).

Command line: score a predictions TSV in the GLUE submission layout (header `index<TAB>prediction`,
index = 0-based position in data.read_glue's example list, prediction = label name or STS-B float):

    python glue_eval.py TASK PREDICTIONS [--data-dir DIR] [--split dev|dev_matched|dev_mismatched] [--json-out F]
"""

import argparse
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import stats

ArrayLike = Sequence[float] | Sequence[int] | np.ndarray


def _as_paired_arrays(preds: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    preds_array = np.asarray(preds)
    labels_array = np.asarray(labels)
    if preds_array.ndim != 1 or labels_array.ndim != 1:
        raise ValueError(
            f"preds and labels must be 1-D, got shapes {preds_array.shape} and {labels_array.shape}; "
            "pass one prediction and one label per example (argmax the logits first)"
        )
    if len(preds_array) != len(labels_array):
        raise ValueError(
            f"preds and labels differ in length: {len(preds_array)} predictions vs "
            f"{len(labels_array)} labels; pass one prediction per labelled example"
        )
    if len(preds_array) == 0:
        raise ValueError("preds and labels are empty; a metric needs at least one example")
    return preds_array, labels_array


def _require_binary(values: np.ndarray, what: str) -> None:
    unexpected = sorted(set(np.unique(values).tolist()) - {0, 1})
    if unexpected:
        raise ValueError(
            f"{what} must be binary class ids 0/1 (1 = positive), got other values {unexpected[:5]}"
        )


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    preds_array, labels_array = _as_paired_arrays(preds, labels)
    return 100.0 * float(np.mean(preds_array == labels_array))


def f1_binary(preds: ArrayLike, labels: ArrayLike) -> float:
    """F1 of the positive class 1 (MRPC: paraphrase, QQP: duplicate)."""
    preds_array, labels_array = _as_paired_arrays(preds, labels)
    _require_binary(preds_array, "preds")
    _require_binary(labels_array, "labels")
    true_positives = int(np.sum((preds_array == 1) & (labels_array == 1)))
    predicted_positives = int(np.sum(preds_array == 1))
    actual_positives = int(np.sum(labels_array == 1))
    # With no positive predictions precision is 0/0, with no positive labels recall is 0/0; either way
    # F1 is taken as 0.0, the convention of scikit-learn's f1_score (zero_division=0).
    if true_positives == 0:
        return 0.0
    # 2PR/(P+R) with P = TP/predicted, R = TP/actual simplifies to 2TP/(predicted + actual).
    return 100.0 * 2 * true_positives / (predicted_positives + actual_positives)


def matthews_corrcoef(preds: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation coefficient, in its multiclass form (Gorodkin 2004), which equals the
    binary (TP·TN − FP·FN) / sqrt(...) formula when there are two classes, as in CoLA."""
    preds_array, labels_array = _as_paired_arrays(preds, labels)
    if any(array.dtype.kind == "f" and not np.isfinite(array).all() for array in (preds_array, labels_array)):
        # nan != nan: a NaN "class" would count as neither right nor any class, and the result look valid.
        raise ValueError("Matthews correlation needs class predictions and labels, got nan or inf")
    classes = np.union1d(preds_array, labels_array)
    # Floats on purpose: for a dev set of n examples the products below reach n^4, which overflows
    # int64 once n exceeds about 55,000.
    predicted_per_class = np.array([np.sum(preds_array == c) for c in classes], dtype=np.float64)
    actual_per_class = np.array([np.sum(labels_array == c) for c in classes], dtype=np.float64)
    n_examples = float(len(labels_array))
    n_correct = float(np.sum(preds_array == labels_array))
    covariance = n_correct * n_examples - float(predicted_per_class @ actual_per_class)
    prediction_spread = n_examples**2 - float(predicted_per_class @ predicted_per_class)
    label_spread = n_examples**2 - float(actual_per_class @ actual_per_class)
    # Constant predictions or a single class in the labels make a spread zero and the coefficient
    # 0/0; the usual convention (scikit-learn's too) is to report 0.0, "no better than chance".
    if prediction_spread == 0.0 or label_spread == 0.0:
        return 0.0
    return 100.0 * covariance / float(np.sqrt(prediction_spread * label_spread))


def _correlation(
    correlation_function: Callable[[np.ndarray, np.ndarray], object],
    preds: ArrayLike,
    labels: ArrayLike,
) -> float:
    preds_array, labels_array = _as_paired_arrays(preds, labels)
    if len(preds_array) < 2:
        raise ValueError(f"a correlation needs at least 2 examples, got {len(preds_array)}")
    # A constant input makes the correlation undefined: scipy returns nan and warns. nan is the honest
    # answer (a constant regressor has no correlation, not a zero one), so keep it and silence only
    # that one warning, which would otherwise repeat after every STS-B evaluation.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=stats.ConstantInputWarning)
        result = correlation_function(preds_array.astype(np.float64), labels_array.astype(np.float64))
    return 100.0 * float(result.statistic)


def pearson(preds: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation in percent; nan when either input is constant."""
    return _correlation(stats.pearsonr, preds, labels)


def spearman(preds: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation (ties get their average rank) in percent; nan when either input is
    constant."""
    return _correlation(stats.spearmanr, preds, labels)


METRIC_FUNCTIONS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}

# Task -> metrics in reporting order (docs/method.md §6); the first one is the task's main metric.
# MNLI has two dev sets; callers name them mnli-m (matched) and mnli-mm (mismatched).
TASK_METRICS: dict[str, list[str]] = {
    "cola": ["mcc"],
    "sst2": ["accuracy"],
    "mrpc": ["f1", "accuracy"],
    "stsb": ["pearson", "spearman"],
    "qqp": ["f1", "accuracy"],
    "mnli": ["accuracy"],
    "mnli-m": ["accuracy"],
    "mnli-mm": ["accuracy"],
    "qnli": ["accuracy"],
    "rte": ["accuracy"],
}


def metric_names(task: str) -> list[str]:
    if task == "wnli":
        raise ValueError(
            "WNLI is excluded from evaluation, as in the Progtuning paper (docs/method.md §5); "
            f"use one of: {', '.join(TASK_METRICS)}"
        )
    if task not in TASK_METRICS:
        raise ValueError(
            f"unknown GLUE task {task!r}; known tasks (lower-case, no dashes except the MNLI dev "
            f"sets): {', '.join(TASK_METRICS)}"
        )
    return TASK_METRICS[task]


def main_metric(task: str) -> str:
    """The metric used to report a task in one number and to choose the best epoch."""
    return metric_names(task)[0]


def compute_metrics(task: str, preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """The task's metrics in percent, in reporting order. preds/labels are class ids, or floats for
    stsb."""
    return {name: METRIC_FUNCTIONS[name](preds, labels) for name in metric_names(task)}


# ---------------------------------------------------------------------------------------------------
# Command line: score a GLUE-submission-style predictions TSV against a dev split.

PREDICTIONS_HEADER = ["index", "prediction"]


def read_predictions(path: str | Path, label_names: Sequence[str] | None, num_examples: int) -> list[int | float]:
    """Predictions in dev-example order from a TSV with header `index<TAB>prediction`.

    index is the 0-based position in read_glue's example list; prediction is a label name from
    label_names (class ids are returned), or a float for regression (label_names None). Every index in
    0..num_examples-1 must appear exactly once. Raises ValueError naming the file and line."""
    path = Path(path)
    try:
        # utf-8-sig: a spreadsheet that re-saved the file may have put a byte order mark before "index".
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ValueError(f"cannot read predictions file {path} ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"predictions file {path} is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last row
    if not lines or lines[0].split("\t") != PREDICTIONS_HEADER:
        found = repr(lines[0]) if lines else "an empty file"
        raise ValueError(f"{path}: line 1 must be the header 'index<TAB>prediction', found {found}")

    expected_kind = ("a number" if label_names is None
                     else "one of the label names " + ", ".join(repr(name) for name in label_names))
    predictions: dict[int, int | float] = {}
    line_of_index: dict[int, int] = {}
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}: line {line_number} has {len(fields)} tab-separated field(s), "
                             f"expected 2 (index, prediction): {line!r}")
        raw_index, raw_prediction = fields
        if not (raw_index.isascii() and raw_index.isdigit()):
            raise ValueError(f"{path}: line {line_number}: index {raw_index!r} is not a non-negative integer")
        index = int(raw_index)
        if index >= num_examples:
            raise ValueError(f"{path}: line {line_number}: index {index} is out of range; the dev split has "
                             f"{num_examples} examples, so indices run from 0 to {num_examples - 1}")
        if index in predictions:
            raise ValueError(f"{path}: line {line_number}: index {index} is duplicated "
                             f"(first given on line {line_of_index[index]})")
        if label_names is None:
            try:
                value: int | float = float(raw_prediction)
            except ValueError:
                raise ValueError(f"{path}: line {line_number}: prediction {raw_prediction!r} is not "
                                 f"{expected_kind}") from None
            if not math.isfinite(value):
                raise ValueError(f"{path}: line {line_number}: prediction {raw_prediction!r} is not finite; "
                                 "a regression prediction must be a finite number")
        else:
            if raw_prediction not in label_names:
                raise ValueError(f"{path}: line {line_number}: unknown label {raw_prediction!r}; "
                                 f"expected {expected_kind}")
            value = list(label_names).index(raw_prediction)
        predictions[index] = value
        line_of_index[index] = line_number

    missing = [index for index in range(num_examples) if index not in predictions]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"{path}: {len(missing)} of {num_examples} dev examples have no prediction "
                         f"(missing indices: {shown}); write one row per dev example (a run with a limit on the dev "
                         "examples predicts only the first ones and cannot be scored on the whole split)")
    return [predictions[index] for index in range(num_examples)]


def evaluate_predictions_file(task: str, predictions_path: str | Path, split: str | None = None,
                              data_dir: str | Path | None = None) -> dict[str, float]:
    """The task's metrics for a predictions TSV (see read_predictions) on one dev split (default: the
    task's first, e.g. MNLI dev_matched)."""
    # Imported here, not at the top: data.py pulls in torch, which the metric functions above do not need.
    import data

    spec = data.glue_task(task)
    if split is None:
        split = spec.dev_splits[0].name
    dev_names = [dev_split.name for dev_split in spec.dev_splits]
    if split not in dev_names:
        raise ValueError(f"split {split!r} is not a dev split of GLUE task {task!r}; expected one of "
                         f"{', '.join(dev_names)}")
    examples = data.read_glue(task, split, data_dir)
    labels = [example.label for example in examples]
    preds = read_predictions(predictions_path, spec.label_names, len(examples))
    return compute_metrics(task, preds, labels)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Score a GLUE dev-set predictions TSV (header 'index<TAB>prediction'; index = 0-based "
        "position in the dev file's readable rows, prediction = label name, or a float for stsb) and print "
        "the task's metrics in percent as JSON."
    )
    parser.add_argument("task", metavar="TASK", help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte")
    parser.add_argument("predictions", metavar="PREDICTIONS", help="predictions TSV")
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="glue_data folder (default: $GLUE_DIR, else ./glue_data)")
    parser.add_argument("--split", default=None, choices=["dev", "dev_matched", "dev_mismatched"],
                        help="dev split (default: the task's first: dev, or dev_matched for mnli)")
    parser.add_argument("--json-out", metavar="F", default=None, help="also write the metrics JSON here")
    args = parser.parse_args(argv)

    import data  # see evaluate_predictions_file for why not at the top

    # OSError: a missing dev file (read_glue's FileNotFoundError); ValueError: every malformed input.
    try:
        metrics = evaluate_predictions_file(args.task, args.predictions, args.split, args.data_dir)
    except (ValueError, OSError, data.GlueDownloadError) as error:
        raise SystemExit(f"error: {error}") from None

    if args.json_out:
        try:
            Path(args.json_out).write_text(json.dumps(metrics) + "\n", encoding="utf-8")
        except OSError as error:
            raise SystemExit(f"error: cannot write the metrics to {args.json_out} ({error.strerror}); give a "
                             "path in an existing, writable folder") from None
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
