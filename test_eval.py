"""Tests for glue_eval.py (GLUE metrics, docs/method.md §6) and squad_eval.py (the official SQuAD v1.1 /
v2.0 evaluation, reimplemented): hand-computed values, degenerate inputs, the shared SQuAD dev files,
and the command line."""

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import glue_eval
import squad_eval
from squad_eval import evaluate_v1, evaluate_v2, exact_match, f1_score, normalize_answer
from conftest import HANG, squad_file

REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("PROGTUNING_DATA", REPO_DIR.parent / "shared" / "data"))
SQUAD_DIR = DATA_DIR / "squad"

# ---------------------------------------------------------------------------------------------------
# GLUE metrics

# A confusion matrix with TP = 3, FP = 1, FN = 2, TN = 4 (10 examples).
CONFUSION_PREDS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
CONFUSION_LABELS = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


def test_accuracy_counts_matches_in_percent() -> None:
    # 3 of 5 agree (positions 0, 1, 3) -> 60 %.
    assert glue_eval.accuracy([1, 0, 1, 1, 0], [1, 0, 0, 1, 1]) == pytest.approx(60.0)
    # Confusion matrix: (TP + TN) / n = 7 / 10.
    assert glue_eval.accuracy(np.array(CONFUSION_PREDS), np.array(CONFUSION_LABELS)) == pytest.approx(70.0)


def test_f1_binary_on_confusion_matrix() -> None:
    # P = 3/4, R = 3/5, F1 = 2PR / (P + R) = (9/10) / (27/20) = 2/3 -> 66.67 %.
    assert glue_eval.f1_binary(CONFUSION_PREDS, CONFUSION_LABELS) == pytest.approx(200.0 / 3)


def test_f1_binary_scores_class_1_not_class_0() -> None:
    # Swapping the roles of 0 and 1 gives TP = 4, FP = 2, FN = 1: F1 = 8 / (8 + 3) = 72.73 %, not 66.67 %.
    flipped_preds = [1 - p for p in CONFUSION_PREDS]
    flipped_labels = [1 - y for y in CONFUSION_LABELS]
    assert glue_eval.f1_binary(flipped_preds, flipped_labels) == pytest.approx(800.0 / 11)


def test_matthews_on_confusion_matrix() -> None:
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 − 2) / sqrt(4·5·5·6) = 10 / sqrt(600)
    # = 1 / sqrt(6) = 0.408248 -> 40.82 %.
    assert glue_eval.matthews_corrcoef(CONFUSION_PREDS, CONFUSION_LABELS) == pytest.approx(100 / math.sqrt(6))


def test_matthews_perfect_and_inverted() -> None:
    labels = [0, 1, 1, 0, 1]
    assert glue_eval.matthews_corrcoef(labels, labels) == pytest.approx(100.0)
    assert glue_eval.matthews_corrcoef([1 - y for y in labels], labels) == pytest.approx(-100.0)


def test_matthews_does_not_overflow_on_large_dev_sets() -> None:
    # The confusion matrix above scaled by 20,000 (n = 200,000, larger than QQP's dev set): same
    # coefficient. Products of counts reach n^4 = 1.6e21, beyond int64.
    scale = 20_000
    preds = np.repeat(CONFUSION_PREDS, scale)
    labels = np.repeat(CONFUSION_LABELS, scale)
    assert glue_eval.matthews_corrcoef(preds, labels) == pytest.approx(100 / math.sqrt(6))


def test_pearson_hand_computed() -> None:
    # x − mean = (−1.5, −0.5, 0.5, 1.5), y − mean = (−3, −1, 0, 4): Σdxdy = 4.5 + 0.5 + 0 + 6 = 11,
    # Σdx² = 5, Σdy² = 26, r = 11 / sqrt(130) = 0.964764.
    assert glue_eval.pearson([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0]) == pytest.approx(
        100 * 11 / math.sqrt(130)
    )


def test_spearman_hand_computed() -> None:
    # Ranks (1, 2, 3, 4) vs (1, 3, 2, 4): Σd² = 2, rho = 1 − 6·2 / (4·15) = 0.8.
    assert glue_eval.spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]) == pytest.approx(80.0)
    # Any strictly increasing relation has rank correlation 1, though Pearson is below 1.
    assert glue_eval.spearman([1.0, 2.0, 3.0, 4.0], [1.0, 8.0, 27.0, 1000.0]) == pytest.approx(100.0)
    assert glue_eval.pearson([1.0, 2.0, 3.0, 4.0], [1.0, 8.0, 27.0, 1000.0]) < 90.0


def test_spearman_gives_ties_their_average_rank() -> None:
    # Ranks of (1, 2, 2, 3) are (1, 2.5, 2.5, 4); Pearson of those with (1, 2, 3, 4): deviations
    # (−1.5, 0, 0, 1.5) and (−1.5, −0.5, 0.5, 1.5), Σdxdy = 4.5, Σdx² = 4.5, Σdy² = 5:
    # rho = 4.5 / sqrt(22.5) = sqrt(0.9) = 0.948683.
    rho = glue_eval.spearman([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert rho == pytest.approx(100 * math.sqrt(0.9))


def test_degenerate_classification_inputs_score_zero() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Constant predictions: MCC 0/0 -> 0 by convention.
        assert glue_eval.matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
        # One class only in the labels (and the predictions).
        assert glue_eval.matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0
        assert glue_eval.matthews_corrcoef([1, 1], [1, 1]) == 0.0
        # No positive predictions: precision 0/0 -> F1 0.
        assert glue_eval.f1_binary([0, 0, 0], [1, 0, 1]) == 0.0
        # No positive labels and no positive predictions: F1 0 although accuracy is 100.
        assert glue_eval.f1_binary([0, 0, 0], [0, 0, 0]) == 0.0
        assert glue_eval.accuracy([0, 0, 0], [0, 0, 0]) == 100.0


def test_constant_regression_output_is_nan_without_warning() -> None:
    with warnings.catch_warnings():
        # Any warning that escapes (scipy's ConstantInputWarning in particular) fails the test.
        warnings.simplefilter("error")
        assert math.isnan(glue_eval.pearson([3.0, 3.0, 3.0], [1.0, 2.0, 5.0]))
        assert math.isnan(glue_eval.spearman([3.0, 3.0, 3.0], [1.0, 2.0, 5.0]))
        result = glue_eval.compute_metrics("stsb", [1.0, 2.0, 5.0], [4.0, 4.0, 4.0])
    assert math.isnan(result["pearson"]) and math.isnan(result["spearman"])


def test_f1_binary_rejects_non_binary_labels() -> None:
    with pytest.raises(ValueError, match=r"binary.*\[2\]"):
        glue_eval.f1_binary([0, 1, 2], [0, 1, 1])


def test_length_mismatch_and_empty_input_are_errors() -> None:
    with pytest.raises(ValueError, match="3 predictions vs 2 labels"):
        glue_eval.accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="3 predictions vs 2 labels"):
        glue_eval.compute_metrics("stsb", [0.5, 1.0, 2.0], [0.5, 1.0])
    with pytest.raises(ValueError, match="empty"):
        glue_eval.matthews_corrcoef([], [])


def test_compute_metrics_orders_keys_as_reported() -> None:
    mrpc = glue_eval.compute_metrics("mrpc", CONFUSION_PREDS, CONFUSION_LABELS)
    assert list(mrpc) == ["f1", "accuracy"]
    assert mrpc["f1"] == pytest.approx(200.0 / 3) and mrpc["accuracy"] == pytest.approx(70.0)
    stsb = glue_eval.compute_metrics("stsb", [1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0])
    assert list(stsb) == ["pearson", "spearman"]
    assert stsb["spearman"] == pytest.approx(80.0)
    assert list(glue_eval.compute_metrics("cola", CONFUSION_PREDS, CONFUSION_LABELS)) == ["mcc"]
    for mnli_name in ("mnli", "mnli-m", "mnli-mm"):
        assert glue_eval.compute_metrics(mnli_name, [0, 1, 2, 2], [0, 1, 2, 1]) == {"accuracy": 75.0}


def test_main_metric_is_the_first_reported() -> None:
    expected = {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "stsb": "pearson", "qqp": "f1",
                "mnli-mm": "accuracy", "qnli": "accuracy", "rte": "accuracy"}
    assert {task: glue_eval.main_metric(task) for task in expected} == expected


def test_unknown_task_and_wnli_are_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown GLUE task 'SST-2'.*sst2.*stsb"):
        glue_eval.compute_metrics("SST-2", [1], [1])
    with pytest.raises(ValueError, match="WNLI is excluded"):
        glue_eval.main_metric("wnli")


# ---------------------------------------------------------------------------------------------------
# SQuAD: answer normalization, exact match and F1


def test_normalize_answer_punctuation_articles_white_space() -> None:
    assert normalize_answer("  The Quick,  brown-fox! ") == "quick brownfox"
    assert normalize_answer("an apple a day") == "apple day"
    # Articles only as whole words.
    assert normalize_answer("Another theory anathema") == "another theory anathema"
    # Punctuation goes first, so "the" glued on by a hyphen is no longer a word of its own.
    assert normalize_answer("the-end") == "theend"
    assert normalize_answer("\tTHE\n") == ""


def test_normalize_answer_keeps_accents_and_non_ascii_punctuation() -> None:
    assert normalize_answer("Beyoncé") == "beyoncé"
    assert normalize_answer("FRÉDÉRIC Chopin") == "frédéric chopin"
    # "à" is not an article; "a" next to an accented word still is.
    assert normalize_answer("a café à la carte") == "café à la carte"
    # Only string.punctuation (ASCII) is removed: an en dash stays, a hyphen goes.
    assert normalize_answer("1990–2000") == "1990–2000"
    assert normalize_answer("1990-2000") == "19902000"


def test_exact_match_after_normalization() -> None:
    assert exact_match("Denver Broncos!", "the  denver broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    assert exact_match("Frédéric Chopin", "frédéric chopin.") == 1.0
    # Accents are not stripped, so the unaccented spelling does not match.
    assert exact_match("Frederic Chopin", "Frédéric Chopin") == 0.0
    assert exact_match("Beyonce", "Beyoncé") == 0.0


def test_f1_partial_overlap() -> None:
    # Tokens (denver, broncos, won) vs (denver, broncos): overlap 2, P = 2/3, R = 1,
    # F1 = 2·(2/3)·1 / (2/3 + 1) = 0.8.
    assert f1_score("the Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    # Overlap counts each token at most as often as it occurs on both sides: min(3, 1) = 1,
    # P = 1/3, R = 1/2, F1 = (1/3) / (5/6) = 0.4.
    assert f1_score("one one one", "one two") == pytest.approx(0.4)
    # One accented token of two differs: overlap 1 (chopin), P = R = 1/2, F1 = 0.5.
    assert f1_score("Frederic Chopin", "Frédéric Chopin") == pytest.approx(0.5)
    assert f1_score("Broncos", "Panthers") == 0.0


def test_f1_empty_answers_v2_rule_and_v1_behaviour() -> None:
    # v2.0: both empty -> 1, one empty -> 0; "The." normalizes to nothing.
    assert f1_score("", "") == 1.0
    assert f1_score("The.", "") == 1.0
    assert f1_score("", "Denver") == 0.0
    assert f1_score("Denver", "") == 0.0
    # v1.1 has no special case: an empty overlap scores 0, even when both sides are empty.
    assert f1_score("", "", version="1.1") == 0.0
    assert f1_score("", "Denver", version="1.1") == 0.0
    assert f1_score("the Denver Broncos won", "Denver Broncos", version="1.1") == pytest.approx(0.8)
    # Exact match has no version difference: two empty strings are equal.
    assert exact_match("", "") == 1.0
    with pytest.raises(ValueError, match="unknown SQuAD version '2.0'"):
        f1_score("a", "b", version="2.0")


# ---------------------------------------------------------------------------------------------------
# SQuAD: evaluate_v1 / evaluate_v2 on tiny hand-written datasets


def make_dataset(version: str, answers_by_id: dict[str, list[str]]) -> dict:
    """A one-article, one-paragraph dataset in the official layout."""
    qas = []
    for question_id, answer_texts in answers_by_id.items():
        qa = {"id": question_id, "question": f"question {question_id}?",
              "answers": [{"text": text, "answer_start": 0} for text in answer_texts]}
        if version == squad_eval.V2:
            qa["is_impossible"] = not answer_texts
        qas.append(qa)
    return {"version": version, "data": [{"title": "Tiny", "paragraphs": [{"context": "...", "qas": qas}]}]}


def test_evaluate_v1_max_over_gold_answers_and_missing_predictions(capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset("1.1", {
        "q1": ["Denver Broncos", "Broncos"],
        "q2": ["Denver Broncos", "Broncos"],
        "q3": ["Santa Clara"],
    })
    predictions = {"q1": "broncos.", "q2": "the Broncos team"}
    # q1: EM 1 and F1 1 against "Broncos". q2: against "Broncos" P = 1/2, R = 1, F1 = 2/3; against
    # "Denver Broncos" P = R = 1/2, F1 = 1/2; max 2/3, EM 0. q3: no prediction, 0.
    # EM = 1/3, F1 = (1 + 2/3) / 3 = 5/9.
    result = evaluate_v1(dataset, predictions)
    assert list(result) == ["exact_match", "f1"]
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(500 / 9)
    assert "Unanswered question q3 will receive score 0." in capsys.readouterr().err
    # The bare "data" list is accepted too.
    assert evaluate_v1(dataset["data"], predictions) == result


def test_evaluate_v1_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="entry 'q1' has a value of type int"):
        evaluate_v1(make_dataset("1.1", {"q1": ["x"]}), {"q1": 3})
    with pytest.raises(ValueError, match=r"data\[0\] must be an article object"):
        evaluate_v1({"version": "1.1", "data": [{"title": "no paragraphs"}]}, {})
    with pytest.raises(ValueError, match="q1 has no gold answers"):
        evaluate_v1(make_dataset("1.1", {"q1": []}), {"q1": ""})


# Two answerable and two unanswerable questions, worked through by hand below.
V2_ANSWERS = {"q1": ["Denver Broncos"], "q2": ["Carolina Panthers"], "q3": [], "q4": []}
V2_PREDICTIONS = {"q1": "Denver Broncos", "q2": "Panthers", "q3": "", "q4": "Broncos"}
V2_NA_PROBS = {"q1": 0.1, "q2": 0.6, "q3": 0.4, "q4": 0.8}


def test_evaluate_v2_splits_by_answerability() -> None:
    # Raw EM: q1 1, q2 0, q3 1 ("" is the only gold), q4 0. Raw F1: 1, 2/3 (P = 1, R = 1/2), 1, 0.
    result = evaluate_v2(make_dataset("v2.0", V2_ANSWERS), V2_PREDICTIONS)
    assert list(result) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                            "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert result["exact"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(100 * (8 / 3) / 4)
    assert result["HasAns_exact"] == pytest.approx(50.0)
    assert result["HasAns_f1"] == pytest.approx(100 * (5 / 3) / 2)
    assert (result["NoAns_exact"], result["NoAns_f1"]) == (50.0, 50.0)
    assert (result["total"], result["HasAns_total"], result["NoAns_total"]) == (4, 2, 2)


def test_evaluate_v2_na_prob_threshold_and_best_threshold() -> None:
    dataset = make_dataset("v2.0", V2_ANSWERS)
    result = evaluate_v2(dataset, V2_PREDICTIONS, na_probs=V2_NA_PROBS, na_prob_thresh=0.5)
    # Above 0.5: q2 (0.6) and q4 (0.8) become "no answer": q2 (has an answer) scores 0, q4 scores 1.
    # EM = F1 = (1 + 0 + 1 + 1) / 4.
    assert (result["exact"], result["f1"]) == (75.0, 75.0)
    assert (result["HasAns_exact"], result["NoAns_exact"]) == (50.0, 100.0)
    # best_*: start from "answer nothing" = the 2 unanswerable right, thresh 0.0; then in na_prob order
    # q1 (0.1), q3 (0.4), q2 (0.6), q4 (0.8):
    #   EM: 2 → q1 +1 = 3 (best, 0.1) → q3 +0 = 3 (a tie keeps 0.1) → q2 +0 = 3 → q4 −1 = 2.
    #   F1: 2 → q1 +1 = 3 (0.1) → q3 +0 = 3 → q2 +2/3 = 11/3 (best, 0.6) → q4 −1.
    assert result["best_exact"] == pytest.approx(75.0) and result["best_exact_thresh"] == 0.1
    assert result["best_f1"] == pytest.approx(100 * (11 / 3) / 4) and result["best_f1_thresh"] == 0.6
    assert list(result)[-4:] == ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]
    # The default threshold 1.0 changes nothing; best_* appear only with na_probs.
    assert "best_f1" not in evaluate_v2(dataset, V2_PREDICTIONS)
    assert evaluate_v2(dataset, V2_PREDICTIONS, na_probs=V2_NA_PROBS)["exact"] == 50.0


def test_best_threshold_stays_at_start_when_answering_never_helps() -> None:
    # Every answerable prediction is wrong and the unanswerable one answered: answering anything only
    # loses, so the best is the start, "answer nothing", 1 of 3 right, at thresh 0.0.
    dataset = make_dataset("v2.0", {"q1": ["Denver"], "q2": ["Carolina"], "q3": []})
    predictions = {"q1": "Paris", "q2": "Rome", "q3": "Oslo"}
    result = evaluate_v2(dataset, predictions, na_probs={"q1": 0.2, "q2": 0.3, "q3": 0.1})
    assert (result["best_exact"], result["best_exact_thresh"]) == (pytest.approx(100 / 3), 0.0)
    assert (result["best_f1"], result["best_f1_thresh"]) == (pytest.approx(100 / 3), 0.0)


def test_evaluate_v2_gold_answers_that_normalize_to_nothing_are_dropped() -> None:
    # q1's gold "The" normalizes to "" and is dropped, leaving "Denver": an empty prediction scores 0
    # (kept, "The" would have matched it). q2's only gold "A" is dropped too, leaving none, so "" is
    # the gold; q2 still counts as HasAns since its answers list is not empty.
    dataset = make_dataset("v2.0", {"q1": ["The", "Denver"], "q2": ["A"]})
    result = evaluate_v2(dataset, {"q1": "", "q2": ""})
    assert (result["exact"], result["f1"], result["HasAns_total"]) == (50.0, 50.0, 2)
    assert "NoAns_total" not in result


def test_best_threshold_judges_answering_on_the_raw_prediction() -> None:
    # q2 is unanswerable and predicted "The": scored as right (it normalizes to ""), but in the search
    # for the best threshold answering it with a non-empty string costs 1, as in the official script.
    # Start: 1 unanswerable right, then q2 (0.1) −1 = 0, then q1 (0.2) +1 = 1, never above the start.
    dataset = make_dataset("v2.0", {"q1": ["Denver"], "q2": []})
    result = evaluate_v2(dataset, {"q1": "Denver", "q2": "The"}, na_probs={"q1": 0.2, "q2": 0.1})
    assert result["exact"] == 100.0
    assert (result["best_exact"], result["best_exact_thresh"]) == (50.0, 0.0)


def test_evaluate_v2_missing_prediction_is_reported_and_scores_zero(capsys: pytest.CaptureFixture) -> None:
    # q1 (answerable) and q3 (no answer) predicted right; q2 (answerable) and q4 (no answer) missing: they
    # count as wrong on both splits, so predicting only what one gets right cannot score 100.
    result = evaluate_v2(make_dataset("v2.0", V2_ANSWERS), {"q1": "Denver Broncos", "q3": ""},
                         na_probs={"q1": 0.1, "q3": 0.9})
    err = capsys.readouterr().err
    assert "Missing prediction for q2" in err and "2 of 4 questions have no prediction; each scores 0" in err
    assert (result["exact"], result["HasAns_exact"], result["NoAns_exact"]) == (50.0, 50.0, 50.0)
    assert (result["total"], result["HasAns_total"], result["NoAns_total"]) == (4, 2, 2)
    assert result["best_exact"] == 50.0  # the threshold search cannot give a missing question credit either
    only_answerable = evaluate_v2(make_dataset("v2.0", V2_ANSWERS), {"q1": "Denver Broncos"})
    assert only_answerable["exact"] == 25.0 and only_answerable["NoAns_exact"] == 0.0
    with pytest.raises(ValueError, match="none of the dataset's 4 questions has a prediction"):
        evaluate_v2(make_dataset("v2.0", V2_ANSWERS), {"other": "x"})
    with pytest.raises(ValueError, match="na_probs has no entry for 1 predicted question"):
        evaluate_v2(
            make_dataset("v2.0", V2_ANSWERS), V2_PREDICTIONS, na_probs={"q1": 0.0, "q2": 0.0, "q3": 0.0}
        )


# ---------------------------------------------------------------------------------------------------
# SQuAD: the shared dev files


def load_squad(file_name: str) -> dict:
    if not SQUAD_DIR.is_dir():
        pytest.skip(f"real SQuAD data not found at {SQUAD_DIR} (set PROGTUNING_DATA to the folder holding squad/)")
    return json.loads(squad_file(SQUAD_DIR, file_name).read_text(encoding="utf-8"))


def first_gold_or_empty(dataset: dict) -> dict[str, str]:
    return {
        qa["id"]: qa["answers"][0]["text"] if qa["answers"] else ""
        for article in dataset["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]
    }


def test_dev_v11_perfect_predictions_score_100() -> None:
    dataset = load_squad("dev-v1.1.json")
    predictions = first_gold_or_empty(dataset)
    assert len(predictions) == 10570
    result = evaluate_v1(dataset, predictions)
    assert result["exact_match"] == pytest.approx(100.0) and result["f1"] == pytest.approx(100.0)


def test_dev_v20_subset_perfect_and_all_empty_predictions() -> None:
    dataset = load_squad("dev-v2.0.subset.json")
    perfect = evaluate_v2(dataset, first_gold_or_empty(dataset))
    assert (perfect["total"], perfect["HasAns_total"], perfect["NoAns_total"]) == (1124, 583, 541)
    for key in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"):
        assert perfect[key] == pytest.approx(100.0), key

    all_empty = evaluate_v2(dataset, {question_id: "" for question_id in first_gold_or_empty(dataset)})
    no_answer_share = 100 * 541 / 1124
    assert all_empty["exact"] == pytest.approx(no_answer_share)
    assert all_empty["f1"] == pytest.approx(no_answer_share)
    assert (all_empty["HasAns_exact"], all_empty["HasAns_f1"]) == (0.0, 0.0)
    assert (all_empty["NoAns_exact"], all_empty["NoAns_f1"]) == (100.0, 100.0)


# ---------------------------------------------------------------------------------------------------
# SQuAD: the command line


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_DIR / "squad_eval.py"), *map(str, args)],
        capture_output=True, text=True, timeout=HANG,
    )


def write_json(path: Path, content: object) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def test_cli_v11_prints_official_keys(tmp_path: Path) -> None:
    dataset = make_dataset("1.1", {"q1": ["Denver Broncos"], "q2": ["Santa Clara"]})
    data = write_json(tmp_path / "data.json", dataset)
    predictions = write_json(tmp_path / "pred.json", {"q1": "the Denver Broncos", "q2": "Clara"})
    completed = run_cli(data, predictions)
    assert completed.returncode == 0, completed.stderr
    # q1 exact; q2 P = 1, R = 1/2, F1 = 2/3. EM = 50, F1 = (1 + 2/3) / 2 = 83.33.
    result = json.loads(completed.stdout)
    assert list(result) == ["exact_match", "f1"]
    assert result["exact_match"] == 50.0 and result["f1"] == pytest.approx(250 / 3)


def test_cli_v20_with_na_probs_and_out_file(tmp_path: Path) -> None:
    data = write_json(tmp_path / "data.json", make_dataset("v2.0", V2_ANSWERS))
    predictions = write_json(tmp_path / "pred.json", V2_PREDICTIONS)
    na_probs = write_json(tmp_path / "na.json", V2_NA_PROBS)
    completed = run_cli(data, predictions, "--na-prob-file", na_probs, "--na-prob-thresh", "0.5")
    assert completed.returncode == 0, completed.stderr
    printed = json.loads(completed.stdout)
    # Same numbers as test_evaluate_v2_na_prob_threshold_and_best_threshold.
    assert (printed["exact"], printed["NoAns_exact"], printed["best_f1_thresh"]) == (75.0, 100.0, 0.6)
    assert printed == evaluate_v2(make_dataset("v2.0", V2_ANSWERS), V2_PREDICTIONS, V2_NA_PROBS, 0.5)

    out_file = tmp_path / "eval.json"
    completed = run_cli(data, predictions, "--out-file", out_file)
    assert completed.returncode == 0 and completed.stdout == ""
    assert json.loads(out_file.read_text())["exact"] == 50.0


BAD_INPUTS = {
    # case: (data file content, None = absent; predictions content; extra args; expected message;
    #        the file the message must name)
    "data file missing": (None, {}, [], "cannot read", "data.json"),
    "data not JSON": ("{not json", {}, [], "is not valid JSON", "data.json"),
    "data without 'data'": ({"version": "1.1"}, {}, [], "has the wrong shape", "data.json"),
    "unknown version": ({"version": "2.0", "data": []}, {}, [], "field 'version' is '2.0'", "data.json"),
    "article without paragraphs": ({"version": "1.1", "data": [{"title": "x"}]}, {}, [], "'paragraphs' list",
                                   "data.json"),
    "predictions a list": (make_dataset("1.1", {"q1": ["x"]}), ["x"], [], "must map question id",
                           "pred.json"),
    "prediction not a string": (make_dataset("1.1", {"q1": ["x"]}), {"q1": 1}, [], "value of type int",
                                "pred.json"),
    "na probs on v1.1": (make_dataset("1.1", {"q1": ["x"]}), {"q1": "x"}, ["--na-prob-thresh", "0.5"],
                         "v2.0 data only", "data.json"),
    "no matching ids": (make_dataset("v2.0", {"q1": ["x"]}), {"other": "x"}, [], "none of the dataset's",
                        "pred.json"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_input_is_one_clear_line(tmp_path: Path, case: str) -> None:
    data_content, predictions_content, extra_args, expected_message, named_file = BAD_INPUTS[case]
    data = tmp_path / "data.json"
    if isinstance(data_content, str):
        data.write_text(data_content)
    elif data_content is not None:
        write_json(data, data_content)
    predictions = write_json(tmp_path / "pred.json", predictions_content)
    completed = run_cli(data, predictions, *extra_args)
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    # One error line, last; "Missing prediction for ..." notices may come before it.
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1 and completed.stderr.splitlines()[-1] == error_lines[0], completed.stderr
    assert expected_message in error_lines[0] and named_file in error_lines[0]


def test_cli_bad_na_prob_file_and_out_file(tmp_path: Path) -> None:
    data = write_json(tmp_path / "data.json", make_dataset("v2.0", V2_ANSWERS))
    predictions = write_json(tmp_path / "pred.json", V2_PREDICTIONS)
    not_numbers = write_json(tmp_path / "na.json", {"q1": "high"})
    completed = run_cli(data, predictions, "--na-prob-file", not_numbers)
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    assert "na.json" in completed.stderr and "entry 'q1' is 'high'" in completed.stderr

    incomplete = write_json(tmp_path / "na.json", {"q1": 0.5})
    completed = run_cli(data, predictions, "--na-prob-file", incomplete)
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    assert "na.json" in completed.stderr
    assert "na_probs has no entry for 3 predicted question(s)" in completed.stderr

    completed = run_cli(data, predictions, "--out-file", tmp_path / "no_such_folder" / "eval.json")
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    assert "cannot write the metrics" in completed.stderr


# ---------------------------------------------------------------------------------------------------
# GLUE: the predictions-file command line


def write_glue_predictions(path: Path, predictions: list[str], header: str = "index\tprediction") -> Path:
    path.write_text(header + "\n" + "".join(f"{index}\t{value}\n" for index, value in enumerate(predictions)),
                    encoding="utf-8")
    return path


def gold_label_names(task: str, glue_dir: Path) -> tuple[list[str], tuple[str, ...]]:
    import data

    names = data.GLUE_TASKS[task].label_names
    return [names[example.label] for example in data.read_glue(task, "dev", glue_dir)], names


def test_glue_cli_gold_predictions_score_100_on_real_rte(tmp_path: Path, glue_dir: Path) -> None:
    gold, _ = gold_label_names("rte", glue_dir)
    assert len(gold) == 277  # RTE dev as distributed by GLUE
    predictions = write_glue_predictions(tmp_path / "rte.tsv", gold)
    out_file = tmp_path / "metrics.json"
    completed = subprocess.run(
        [sys.executable, str(REPO_DIR / "glue_eval.py"), "rte", str(predictions), "--data-dir", str(glue_dir),
         "--json-out", str(out_file)],
        capture_output=True, text=True, timeout=HANG,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {"accuracy": 100.0}
    assert json.loads(out_file.read_text()) == {"accuracy": 100.0}


def test_glue_predictions_flipped_score_0_and_order_is_by_index(tmp_path: Path, glue_dir: Path) -> None:
    gold, names = gold_label_names("rte", glue_dir)
    flipped = [names[1 - names.index(label)] for label in gold]
    predictions = write_glue_predictions(tmp_path / "rte.tsv", flipped)
    assert glue_eval.evaluate_predictions_file("rte", predictions, data_dir=glue_dir) == {"accuracy": 0.0}

    # Rows may come in any order: the index, not the line, says which example a prediction is for.
    rows = [f"{index}\t{label}\n" for index, label in enumerate(gold)]
    reordered = tmp_path / "reordered.tsv"
    reordered.write_text("index\tprediction\n" + "".join(reversed(rows)), encoding="utf-8")
    assert glue_eval.main(["rte", str(reordered), "--data-dir", str(glue_dir)]) == {"accuracy": 100.0}


def test_glue_predictions_stsb_floats(tmp_path: Path, glue_dir: Path) -> None:
    import data

    scores = [example.label for example in data.read_glue("stsb", "dev", glue_dir)]
    exact = write_glue_predictions(tmp_path / "exact.tsv", [repr(score) for score in scores])
    metrics = glue_eval.evaluate_predictions_file("stsb", exact, split="dev", data_dir=glue_dir)
    assert list(metrics) == ["pearson", "spearman"]
    assert metrics["pearson"] == pytest.approx(100.0) and metrics["spearman"] == pytest.approx(100.0)
    # 5 - score reverses the ranking: both correlations are -100.
    reversed_scores = write_glue_predictions(tmp_path / "reversed.tsv", [str(5 - score) for score in scores])
    metrics = glue_eval.evaluate_predictions_file("stsb", reversed_scores, data_dir=glue_dir)
    assert metrics["pearson"] == pytest.approx(-100.0) and metrics["spearman"] == pytest.approx(-100.0)


def test_read_predictions_label_names_to_class_ids(tmp_path: Path) -> None:
    path = write_glue_predictions(tmp_path / "p.tsv", ["neutral", "contradiction", "entailment"])
    assert glue_eval.read_predictions(path, ("contradiction", "entailment", "neutral"), 3) == [2, 0, 1]


BAD_PREDICTIONS = {
    # case: (file body after the header, or a full file when header is given; expected message)
    "unknown label": ("0\tentailment\n1\tmaybe\n2\tentailment\n", "line 3: unknown label 'maybe'"),
    "class id instead of name": ("0\t0\n1\t1\n2\t0\n", "line 2: unknown label '0'"),
    "duplicate index": ("0\tentailment\n1\tentailment\n1\tentailment\n",
                        "line 4: index 1 is duplicated (first given on line 3)"),
    "missing index": ("0\tentailment\n2\tentailment\n", "1 of 3 dev examples have no prediction (missing indices: 1)"),
    "extra index": ("0\tentailment\n1\tentailment\n2\tentailment\n3\tentailment\n",
                    "line 5: index 3 is out of range"),
    "negative index": ("-1\tentailment\n", "line 2: index '-1' is not a non-negative integer"),
    "one field": ("0\tentailment\n1 entailment\n", "line 3 has 1 tab-separated field(s), expected 2"),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTIONS))
def test_read_predictions_errors_name_file_and_line(tmp_path: Path, case: str) -> None:
    body, expected_message = BAD_PREDICTIONS[case]
    path = tmp_path / "preds.tsv"
    path.write_text("index\tprediction\n" + body, encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        glue_eval.read_predictions(path, ("entailment", "not_entailment"), 3)
    assert str(path) in str(raised.value) and expected_message in str(raised.value)


@pytest.mark.parametrize("header", ["idx\tprediction", "index\tlabel", "0\tentailment", ""])
def test_read_predictions_rejects_wrong_header(tmp_path: Path, header: str) -> None:
    path = tmp_path / "preds.tsv"
    path.write_text(header + "\n" if header else "", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 must be the header 'index<TAB>prediction'"):
        glue_eval.read_predictions(path, ("entailment", "not_entailment"), 1)


@pytest.mark.parametrize("value", ["high", "nan", "inf"])
def test_read_predictions_regression_needs_finite_numbers(tmp_path: Path, value: str) -> None:
    path = write_glue_predictions(tmp_path / "stsb.tsv", ["1.5", value])
    with pytest.raises(ValueError, match=f"line 3: prediction '{value}' is not"):
        glue_eval.read_predictions(path, None, 2)


def test_glue_cli_bad_line_is_one_clear_error(tmp_path: Path, glue_dir: Path) -> None:
    gold, _ = gold_label_names("rte", glue_dir)
    gold[9] = "yes"  # written on line 11: the header is line 1, index 0 line 2
    predictions = write_glue_predictions(tmp_path / "bad.tsv", gold)
    completed = subprocess.run(
        [sys.executable, str(REPO_DIR / "glue_eval.py"), "rte", str(predictions), "--data-dir", str(glue_dir)],
        capture_output=True, text=True, timeout=HANG,
    )
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines() == [
        f"error: {predictions}: line 11: unknown label 'yes'; expected one of the label names 'entailment', "
        "'not_entailment'"
    ]


def test_glue_cli_split_must_belong_to_the_task(tmp_path: Path) -> None:
    predictions = write_glue_predictions(tmp_path / "p.tsv", ["entailment"])
    with pytest.raises(SystemExit, match="'dev_matched' is not a dev split of GLUE task 'rte'"):
        glue_eval.main(["rte", str(predictions), "--split", "dev_matched", "--data-dir", str(tmp_path)])


def test_matthews_refuses_non_finite_class_predictions() -> None:
    with pytest.raises(ValueError, match="needs class predictions and labels, got nan or inf"):
        glue_eval.matthews_corrcoef([0.0, 1.0, float("nan"), 1.0], [0, 1, 0, 1])
