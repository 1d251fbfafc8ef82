"""evaluation.py: a run's data and its dev-set scores -- the task's training and dev sets tokenized once per
run (GLUE pairs, SQuAD windows), and each epoch's evaluation: model outputs on a dev set, its metrics
(docs/method.md §6, glue_eval.py and squad_eval.py) and the predictions files.

Reading order:
  TaskData, load_task_data      what a run reads: training rows, dev sets, the majority baseline, file prints
  predict                       outputs for every row of a dev set, in row order
  evaluate                      one epoch's metrics, with the predictions files written beside them
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import data
import glue_eval
import squad_eval
from model import Transformer, load_config
from recipe import Settings, autocast
from records import fingerprint, read_json, write_text_atomic


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


def load_task_data(settings: Settings, tokenizer) -> TaskData:
    """Read and tokenize the task's training and dev data once per run."""
    task_data = _load_squad(settings, tokenizer) if settings.is_squad else _load_glue(settings, tokenizer)
    check_token_ids(task_data, load_config(settings.model).vocab_size, settings.model)
    return task_data


def check_token_ids(task_data: TaskData, vocab_size: int, model: str) -> None:
    """Every token id must have a row in the embedding table, or the first batch would fail in an index."""
    largest = max((max(ids) for encoded in [task_data.train] + [e.encoded for e in task_data.evals]
                   for ids in encoded.input_ids if ids), default=-1)
    if largest >= vocab_size:
        raise ValueError(f"{model}: the tokenizer gives token id {largest}, but config.json's vocab_size is "
                         f"{vocab_size}, so the embedding table has no row for it; the tokenizer files and "
                         "config.json must come from the same checkpoint")


def _load_glue(settings: Settings, tokenizer) -> TaskData:
    task = data.glue_task(settings.task)
    data_dir = data.glue_data_dir(settings.data_dir)
    train_examples = data.read_glue(settings.task, "train", data_dir)
    _report_skipped(train_examples)
    paths, skipped = [train_examples.path], {"train": train_examples.skipped_rows}
    train_examples, subset_print = _training_rows(train_examples, settings, train_examples.path)
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
    return TaskData(train, evals, baseline, {**fingerprint(paths), **subset_print}, skipped)


def _training_rows(examples: list, settings: Settings, path: Path) -> tuple[list, dict]:
    """The training examples a run uses: all, the first --limit-train (smoke runs), or the fixed random
    --train-subset (docs/method.md §5). The subset's rows join the data fingerprint, so a --resume, and
    every seed and mode that is to be compared, provably trains on the same rows."""
    if settings.limit_train:
        return examples[:settings.limit_train], {}
    if not settings.train_subset:
        return examples, {}
    rows = data.subset_rows(len(examples), settings.train_subset, settings.subset_seed)
    chosen = [examples[i] for i in rows]
    ids = "\n".join(getattr(example, "guid", None) or example.id for example in chosen)
    print(f"training subset: {len(chosen)} of {len(examples)} rows of {path}, drawn uniformly without "
          f"replacement with subset seed {settings.subset_seed}")
    return chosen, {f"{path.parent.name}/{path.name} subset": {
        "rows": len(chosen), "of": len(examples), "subset_seed": settings.subset_seed,
        "sha256": hashlib.sha256(ids.encode()).hexdigest()}}


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
    train_examples, subset_print = _training_rows(data.read_squad(train_path, version_2), settings, train_path)
    train = data.squad_features(train_examples, tokenizer, settings.max_length, settings.doc_stride,
                                training=True).encoded
    dev_examples = data.read_squad(dev_path, version_2)
    if settings.limit_eval:
        dev_examples = dev_examples[:settings.limit_eval]
    features = data.squad_features(dev_examples, tokenizer, settings.max_length, settings.doc_stride, training=False)
    dataset = squad_subset(read_json(dev_path), {e.id for e in dev_examples})
    # SQuAD has no majority class; the trivial baseline answers nothing (v2.0: the unanswerable share).
    baseline = {settings.task: _squad_metrics(settings.task, dataset, {e.id: "" for e in dev_examples}, None)}
    print(f"SQuAD: {len(train_examples)} training questions -> {len(train)} windows; "
          f"{len(dev_examples)} dev questions -> {len(features.encoded)} windows")
    return TaskData(train, [EvalSet(settings.task, features.encoded, dev_examples, features, dataset)], baseline,
                    {**fingerprint([train_path, dev_path]), **subset_print})


def squad_subset(dataset: dict, ids: set[str]) -> dict:
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
# Evaluation
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(settings: Settings, model: Transformer, encoded: data.Encoded, pad_token_id: int, on_batch=None):
    """Model outputs for every row of `encoded`, in row order (length-sorted batches, put back in place).
    on_batch(rows done, rows): called after each batch (predict.py's progress). An output that is not
    finite stops with FloatingPointError: a score computed from it would look like a result."""
    model.eval()
    outputs: list = [None] * len(encoded)
    done = 0
    for batch in data.batches(encoded, settings.eval_batch_size, pad_token_id, data.length_sorted_order(encoded)):
        with autocast(settings):
            output = model(batch["input_ids"].to(settings.device), batch["attention_mask"].to(settings.device),
                           batch["token_type_ids"].to(settings.device))
        if not all(torch.isfinite(o).all() for o in (output if isinstance(output, tuple) else (output,))):
            raise FloatingPointError(f"the model's outputs hold nan or inf on rows {batch['index'][:3].tolist()}...: "
                                     "its weights or inputs are not finite")
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
    """The dev sets' metrics ({report name: {metric: value}}), the predictions files written in seed_dir."""
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
