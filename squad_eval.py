"""SQuAD v1.1 and v2.0 evaluation: exact match and F1, as computed by the official scripts.

Follows the behaviour of evaluate-v1.1.py (Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for Machine
Comprehension of Text") and evaluate-v2.0.py (Rajpurkar, Jia and Liang 2018, "Know What You Don't Know:
Unanswerable Questions for SQuAD"), both published on rajpurkar.github.io/SQuAD-explorer, so that the
numbers are comparable with the Progtuning paper's SQuAD results. Reimplemented, not copied.

Input format: the official dataset JSON ({"version": ..., "data": [article → paragraphs → qas]}) and a
predictions JSON mapping question id → answer text ("" = no answer, v2.0). For v2.0 an optional JSON
maps question id → the model's probability that the question has no answer.

    python squad_eval.py DATA.json PREDICTIONS.json [--na-prob-file F] [--na-prob-thresh X] [--out-file F]
"""

import argparse
import json
import re
import string
import sys
from collections import Counter
from collections.abc import Mapping
from numbers import Real
from typing import Any

# The values of the data file's "version" field.
V1 = "1.1"
V2 = "v2.0"

_PUNCTUATION = frozenset(string.punctuation)
# Python 3 regexes on str are Unicode-aware, as the official scripts' are: \b sees "é" as a word
# character, so the "a" in "café a" is removed but nothing inside "Beyoncé" is.
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse white space.

    The order matters and is the official one: punctuation goes before articles, so "the-end" becomes
    the single token "theend". Accents are kept ("Frédéric" ≠ "Frederic"): the official scripts do not
    strip them, and neither may we.
    """
    lowered = text.lower()
    without_punctuation = "".join(char for char in lowered if char not in _PUNCTUATION)
    without_articles = _ARTICLES.sub(" ", without_punctuation)
    return " ".join(without_articles.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, version: str = V2) -> float:
    """Bag-of-tokens F1 between the normalized prediction and gold answer.

    The two official scripts differ when a side normalizes to nothing: v2.0 scores 1.0 if both are
    empty (a correct "no answer") and 0.0 otherwise; v1.1 has no such rule, so its overlap is empty
    and the score is 0.0 even when both are empty. Pass version="1.1" for the v1.1 behaviour.
    """
    if version not in (V1, V2):
        raise ValueError(f"unknown SQuAD version {version!r}; use {V1!r} or {V2!r}")
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if version == V2 and (not prediction_tokens or not gold_tokens):
        return float(prediction_tokens == gold_tokens)
    overlap = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    # Same operation order as the official scripts, so results agree to the last bit.
    precision = 1.0 * overlap / len(prediction_tokens)
    recall = 1.0 * overlap / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def _questions(dataset: Any) -> list[tuple[str, list[str]]]:
    """(question id, gold answer texts) for every question, in file order; checks the layout."""
    articles = dataset["data"] if isinstance(dataset, Mapping) and "data" in dataset else dataset
    if not isinstance(articles, list):
        raise ValueError(
            "dataset must be the official SQuAD JSON object or its 'data' list of articles, got "
            f"{type(dataset).__name__}"
        )
    questions = []
    for article_index, article in enumerate(articles):
        where = f"data[{article_index}]"
        if not isinstance(article, Mapping) or not isinstance(article.get("paragraphs"), list):
            raise ValueError(f"dataset: {where} must be an article object with a 'paragraphs' list")
        for paragraph_index, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{article_index}].paragraphs[{paragraph_index}]"
            if not isinstance(paragraph, Mapping) or not isinstance(paragraph.get("qas"), list):
                raise ValueError(f"dataset: {where} must be a paragraph object with a 'qas' list")
            for question_index, qa in enumerate(paragraph["qas"]):
                where = f"data[{article_index}].paragraphs[{paragraph_index}].qas[{question_index}]"
                if not isinstance(qa, Mapping) or not isinstance(qa.get("id"), str):
                    raise ValueError(f"dataset: {where} must be a question object with a string 'id'")
                answers = qa.get("answers")
                if not isinstance(answers, list) or not all(
                    isinstance(answer, Mapping) and isinstance(answer.get("text"), str) for answer in answers
                ):
                    raise ValueError(
                        f"dataset: {where} (id {qa['id']}) must have an 'answers' list of objects with a "
                        "string 'text'"
                    )
                questions.append((qa["id"], [answer["text"] for answer in answers]))
    return questions


def _check_predictions(predictions: Any) -> None:
    if not isinstance(predictions, Mapping):
        raise ValueError(
            f"predictions must map question id → answer text, got {type(predictions).__name__}"
        )
    for question_id, answer in predictions.items():
        if not isinstance(question_id, str) or not isinstance(answer, str):
            raise ValueError(
                f"predictions must map question id → answer text (a string, \"\" for no answer); "
                f"entry {question_id!r} has a value of type {type(answer).__name__}"
            )


def _check_na_probs(na_probs: Any) -> None:
    if not isinstance(na_probs, Mapping):
        raise ValueError(
            f"na_probs must map question id → no-answer probability, got {type(na_probs).__name__}"
        )
    for question_id, probability in na_probs.items():
        if not isinstance(probability, Real) or isinstance(probability, bool):
            raise ValueError(
                f"na_probs must map question id → a number; entry {question_id!r} is {probability!r}"
            )


def evaluate_v1(dataset: Any, predictions: Mapping[str, str]) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1 in percent; a question without a prediction scores 0."""
    _check_predictions(predictions)
    questions = _questions(dataset)
    if not questions:
        raise ValueError("dataset has no questions")
    exact_total = f1_total = 0.0
    for question_id, gold_texts in questions:
        if question_id not in predictions:
            print(f"Unanswered question {question_id} will receive score 0.", file=sys.stderr)
            continue
        if not gold_texts:
            raise ValueError(
                f"dataset: question {question_id} has no gold answers, which SQuAD v1.1 does not allow; "
                f"evaluate data with unanswerable questions as version {V2!r}"
            )
        prediction = predictions[question_id]
        exact_total += max(exact_match(prediction, gold) for gold in gold_texts)
        f1_total += max(f1_score(prediction, gold, version=V1) for gold in gold_texts)
    return {
        "exact_match": 100.0 * exact_total / len(questions),
        "f1": 100.0 * f1_total / len(questions),
    }


def _best_threshold(
    predictions: Mapping[str, str],
    raw_scores: dict[str, float],
    na_probs: Mapping[str, float],
    has_answer: dict[str, bool],
    missing: int = 0,
) -> tuple[float, float]:
    """The official find_best_thresh: the best score over no-answer thresholds, and that threshold.

    It starts from "answer nothing" (every no-answer question right, thresh 0.0) and lowers the
    no-answer bar one question at a time in increasing na_prob order (a stable sort, so ties keep
    na_probs' own order). Each question switched to "answer" adds its raw score if it has an answer,
    and costs 1 if it has none and the model wrote a non-empty string (judged on the raw string,
    not normalized). Only a strictly better score moves the threshold. `missing` questions without a
    prediction score 0 at every threshold: they only add to the denominator.
    """
    score = float(sum(1 for question_id in raw_scores if not has_answer[question_id]))
    best_score = score
    best_threshold = 0.0
    for question_id in sorted(na_probs, key=lambda key: na_probs[key]):
        if question_id not in raw_scores:
            continue
        if has_answer[question_id]:
            score += raw_scores[question_id]
        elif predictions[question_id]:
            score -= 1
        if score > best_score:
            best_score = score
            best_threshold = na_probs[question_id]
    return 100.0 * best_score / (len(raw_scores) + missing), best_threshold


def evaluate_v2(
    dataset: Any,
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """SQuAD v2.0 metrics with the official keys, scores in percent.

    A question whose na_prob exceeds na_prob_thresh counts as answered with "no answer". A question
    without a prediction is reported ("Missing prediction for <id>", then how many) and scores 0 on
    every measure and split, as v1.1's official script scores it: it stays in "total", so a file that
    predicts only the questions it gets right cannot score 100. (The official v2.0 script leaves it out
    of "total" and then fails with a KeyError in the HasAns/NoAns split.)
    """
    _check_predictions(predictions)
    if na_probs is not None:
        _check_na_probs(na_probs)
    questions = _questions(dataset)
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    unpredicted: list[str] = []
    for question_id, gold_texts in questions:
        has_answer[question_id] = bool(gold_texts)
        if question_id not in predictions:
            # stderr, not the official stdout, so that the CLI's stdout stays valid JSON.
            print(f"Missing prediction for {question_id}", file=sys.stderr)
            unpredicted.append(question_id)
            continue
        # Gold answers that normalize to nothing (e.g. "the") are dropped; with none left, the only
        # correct answer is "no answer".
        gold_answers = [text for text in gold_texts if normalize_answer(text)] or [""]
        prediction = predictions[question_id]
        exact_raw[question_id] = max(exact_match(prediction, gold) for gold in gold_answers)
        f1_raw[question_id] = max(f1_score(prediction, gold, version=V2) for gold in gold_answers)
    if not exact_raw:
        raise ValueError(
            f"none of the dataset's {len(questions)} questions has a prediction; predictions must be "
            "keyed by the dataset's question ids"
        )

    # Without na_probs every question is treated as answered as predicted, as in the official script.
    probabilities = na_probs if na_probs is not None else {question_id: 0.0 for question_id in predictions}
    missing = [question_id for question_id in exact_raw if question_id not in probabilities]
    if missing:
        raise ValueError(
            f"na_probs has no entry for {len(missing)} predicted question(s), e.g. {missing[0]}; give a "
            "no-answer probability for every prediction"
        )

    def thresholded(raw_scores: dict[str, float]) -> dict[str, float]:
        return {
            question_id: float(not has_answer[question_id])
            if probabilities[question_id] > na_prob_thresh
            else score
            for question_id, score in raw_scores.items()
        }

    exact_final = thresholded(exact_raw)
    f1_final = thresholded(f1_raw)
    if unpredicted:
        print(f"{len(unpredicted)} of {len(questions)} questions have no prediction; each scores 0",
              file=sys.stderr)
    for question_id in unpredicted:  # no credit, whatever the threshold
        exact_final[question_id] = f1_final[question_id] = 0.0
    result: dict[str, float] = {}
    splits = [
        ("", list(exact_final)),
        ("HasAns_", [question_id for question_id in exact_final if has_answer[question_id]]),
        ("NoAns_", [question_id for question_id in exact_final if not has_answer[question_id]]),
    ]
    for prefix, question_ids in splits:
        if not question_ids:
            continue
        result[f"{prefix}exact"] = 100.0 * sum(exact_final[q] for q in question_ids) / len(question_ids)
        result[f"{prefix}f1"] = 100.0 * sum(f1_final[q] for q in question_ids) / len(question_ids)
        result[f"{prefix}total"] = len(question_ids)
    if na_probs is not None:
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(
            predictions, exact_raw, na_probs, has_answer, len(unpredicted)
        )
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(
            predictions, f1_raw, na_probs, has_answer, len(unpredicted)
        )
    return result


def _load_json(path: str, expected: str) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except OSError as error:
        raise SystemExit(f"error: cannot read {path} ({error.strerror}); expected {expected}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: {path} is not valid JSON ({error}); expected {expected}") from None


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description="Official SQuAD v1.1 / v2.0 evaluation (reimplemented); the version is read from "
        "the data file's 'version' field."
    )
    parser.add_argument("data_file", metavar="DATA.json", help="official SQuAD dataset JSON")
    parser.add_argument(
        "pred_file", metavar="PREDICTIONS.json", help="JSON object: question id → answer text"
    )
    parser.add_argument(
        "--na-prob-file",
        "-n",
        metavar="F",
        help="v2.0 only: JSON object: question id → no-answer probability",
    )
    parser.add_argument(
        "--na-prob-thresh",
        "-t",
        metavar="X",
        type=float,
        default=None,
        help='v2.0 only: predict "" when the no-answer probability exceeds X (default 1.0)',
    )
    parser.add_argument("--out-file", "-o", metavar="F", help="write the metrics here instead of stdout")
    args = parser.parse_args(argv)

    data_expected = 'the official SQuAD JSON object {"version": "1.1" or "v2.0", "data": [...]}'
    data_json = _load_json(args.data_file, data_expected)
    if not isinstance(data_json, dict) or "version" not in data_json or "data" not in data_json:
        raise SystemExit(f"error: {args.data_file} has the wrong shape; expected {data_expected}")
    version = data_json["version"]
    if version not in (V1, V2):
        raise SystemExit(
            f"error: {args.data_file}: field 'version' is {version!r}; expected {V1!r} (SQuAD v1.1) or "
            f"{V2!r} (SQuAD v2.0)"
        )
    try:
        _questions(data_json)
    except ValueError as error:
        raise SystemExit(f"error: {args.data_file}: {error}") from None

    predictions_expected = 'a JSON object mapping question id → answer text ("" for no answer)'
    predictions = _load_json(args.pred_file, predictions_expected)
    try:
        _check_predictions(predictions)
    except ValueError as error:
        raise SystemExit(f"error: {args.pred_file}: {error}; expected {predictions_expected}") from None

    na_probs = None
    if args.na_prob_file is not None:
        na_probs_expected = "a JSON object mapping question id → no-answer probability (a number)"
        na_probs = _load_json(args.na_prob_file, na_probs_expected)
        try:
            _check_na_probs(na_probs)
        except ValueError as error:
            raise SystemExit(f"error: {args.na_prob_file}: {error}; expected {na_probs_expected}") from None

    try:
        if version == V1:
            if na_probs is not None or args.na_prob_thresh is not None:
                raise SystemExit(
                    f"error: {args.data_file} is SQuAD v1.1, which has no unanswerable questions; "
                    "--na-prob-file and --na-prob-thresh apply to v2.0 data only"
                )
            result = evaluate_v1(data_json, predictions)
        else:
            thresh = 1.0 if args.na_prob_thresh is None else args.na_prob_thresh
            result = evaluate_v2(data_json, predictions, na_probs=na_probs, na_prob_thresh=thresh)
    except ValueError as error:
        inputs = f"{args.pred_file} against {args.data_file}"
        if args.na_prob_file is not None:
            inputs += f" with no-answer probabilities {args.na_prob_file}"
        raise SystemExit(f"error: evaluating {inputs}: {error}") from None

    if args.out_file:
        try:
            with open(args.out_file, "w", encoding="utf-8") as file:
                json.dump(result, file)
        except OSError as error:
            raise SystemExit(
                f"error: cannot write the metrics to {args.out_file} ({error.strerror}); give a path in an "
                "existing, writable folder"
            ) from None
    else:
        # v1.1's script prints one line, v2.0's an indented object; keep each one's shape.
        print(json.dumps(result) if version == V1 else json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
