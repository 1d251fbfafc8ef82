"""GLUE dev-set metrics, as reported in the Progtuning paper (SPEC.md section 6).

The metric per task follows the GLUE benchmark (Wang et al. 2018, "GLUE: A Multi-Task Benchmark and
Analysis Platform for Natural Language Understanding"): Matthews correlation for CoLA, F1 and accuracy
for MRPC and QQP, Pearson and Spearman correlation for STS-B, accuracy for the rest. Every metric is
returned in percent (0-100), the unit of the paper's tables (e.g. CoLA 58.2).
"""

import warnings
from collections.abc import Callable, Sequence

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

# Task -> metrics in reporting order (SPEC.md section 6); the first one is the task's main metric.
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
            "WNLI is excluded from evaluation, as in the Progtuning paper (SPEC.md section 5); "
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
