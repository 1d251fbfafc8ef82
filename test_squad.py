"""Tests for the SQuAD part of data.py: read_squad on the real shared files and on small broken ones,
windowed features with the real MiniLM tokenizer, answer spans from logits scored by squad_eval, and
the download path against a loopback HTTP server."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import data
import model
import squad_eval
from conftest import LoopbackServer, squad_file

SQUAD_COUNTS = {  # file: (questions, unanswerable), from ../shared/data/README.md
    "dev-v1.1.json": (10570, 0),
    "train-v1.1.subset.json": (3807, 0),
    "train-v2.0.subset.json": (4719, 348),
    "dev-v2.0.subset.json": (1124, 541),
}


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may reach the network by accident; the download tests lift this themselves.
    monkeypatch.setenv("PROGTUNING_OFFLINE", "1")
    for name in (data.SQUAD_DIR_ENV, data.SQUAD_BASE_URL_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> model.Tokenizer:
    return model.load_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def dev_v1(squad_dir: Path) -> list[data.SquadExample]:
    return data.read_squad(squad_file(squad_dir, "dev-v1.1.json"), version_2=False)


@pytest.fixture(scope="module")
def dev_v2(squad_dir: Path) -> list[data.SquadExample]:
    return data.read_squad(squad_file(squad_dir, "dev-v2.0.subset.json"), version_2=True)


def _write_json(path: Path, content) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def _squad_json(qas: list[dict], context: str = "The cat sat on the mat in Paris.", version: str | None = "1.1"):
    content = {"data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}
    if version is not None:
        content["version"] = version
    return content


def _qa(qid: str = "q1", question: str = "Where?", text: str = "Paris", start: int = 26, **extra) -> dict:
    return {"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}], **extra}


def _as_dataset(examples: list[data.SquadExample]) -> dict:
    """The examples as an official-layout dataset, for squad_eval."""
    qas = [{"id": e.id, "answers": [{"text": text} for text in e.answers]} for e in examples]
    return {"version": "v2.0", "data": [{"paragraphs": [{"qas": qas}]}]}


# ---------------------------------------------------------------- reading

@pytest.mark.parametrize("file_name", list(SQUAD_COUNTS))
def test_read_squad_counts_match_the_shared_data_readme(squad_dir: Path, file_name: str) -> None:
    questions, unanswerable = SQUAD_COUNTS[file_name]
    examples = data.read_squad(squad_file(squad_dir, file_name, exact=True), version_2="v2.0" in file_name)
    assert len(examples) == questions
    assert sum(e.is_impossible for e in examples) == unanswerable
    assert all(bool(e.answers) != e.is_impossible for e in examples)
    assert len({e.id for e in examples}) == questions
    assert all(e.context[s:s + len(t)] == t for e in examples for t, s in zip(e.answers, e.answer_starts))


def test_read_squad_keeps_file_order_and_every_dev_answer(dev_v1: list[data.SquadExample]) -> None:
    first = dev_v1[0]
    assert first.title == "Super_Bowl_50" and first.id == "56be4db0acb8001400a502ec"
    assert first.question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first.answers == ["Denver Broncos", "Denver Broncos", "Denver Broncos"]
    assert sum(len(e.answers) for e in dev_v1) == 34726  # the README's count of checked answers


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"version": "1.1", "data": [', encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid UTF-8 JSON") as error:
        data.read_squad(path, version_2=False)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("break_it, where, problem", [
    (lambda c: c["data"][0]["paragraphs"][0]["qas"][1].pop("question"),
     "data[0].paragraphs[0].qas[1]", "has no 'question' key"),
    (lambda c: c["data"][0]["paragraphs"][0].pop("context"), "data[0].paragraphs[0]", "has no 'context' key"),
    (lambda c: c["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start="26"),
     "data[0].paragraphs[0].qas[1].answers[0].answer_start", "is str '26', expected int"),
    (lambda c: c["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start=True),
     "data[0].paragraphs[0].qas[1].answers[0].answer_start", "is bool True, expected int"),
    (lambda c: c["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start=25),
     "data[0].paragraphs[0].qas[1].answers[0]",
     "(question q1) has text 'Paris' but the context at answer_start 25 reads ' Pari'"),
    (lambda c: c["data"][0]["paragraphs"][0]["qas"][1].update(answers=[]),
     "data[0].paragraphs[0].qas[1]", "(question q1) has no answers, which SQuAD v1.1 requires"),
    (lambda c: c["data"][0]["paragraphs"][0]["qas"][1].update(id="q0"),
     "data[0].paragraphs[0].qas[1]", "repeats question id 'q0', already at data[0].paragraphs[0].qas[0]"),
    (lambda c: c.update(data={}), "the top level", "is not an object with a 'data' list"),
])
def test_layout_errors_name_the_file_and_json_location(tmp_path: Path, break_it, where: str, problem: str) -> None:
    content = _squad_json([_qa("q0", start=26), _qa("q1", start=26)])
    data.read_squad(_write_json(tmp_path / "ok.json", content), version_2=False)  # valid before breaking
    break_it(content)
    path = _write_json(tmp_path / "bad.json", content)
    with pytest.raises(ValueError) as error:
        data.read_squad(path, version_2=False)
    message = str(error.value)
    assert f"{path}: {where} {problem}" in message, message


def test_a_v2_file_read_as_v1_is_refused_with_a_hint(squad_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'v2.0', a SQuAD v2.0 file, but it is read as SQuAD v1.1; "
                                         r"use --task squad_v2"):
        data.read_squad(squad_file(squad_dir, "train-v2.0.subset.json"), version_2=False)
    # Without the version field, the unanswerable questions give it away.
    unmarked = _squad_json([_qa("q0"), {"id": "q1", "question": "Who?", "answers": [], "is_impossible": True}],
                           version=None)
    with pytest.raises(ValueError, match=r"qas\[1\] \(question q1\) is marked is_impossible.*--task squad_v2"):
        data.read_squad(_write_json(tmp_path / "unmarked.json", unmarked), version_2=False)


def test_a_v1_file_read_as_v2_is_refused_with_a_hint(squad_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a SQuAD v1.1 file, but it is read as SQuAD v2.0; use --task squad "):
        data.read_squad(squad_file(squad_dir, "train-v1.1.subset.json"), version_2=True)
    unmarked = _squad_json([_qa("q0")], version=None)
    with pytest.raises(ValueError, match=r"qas\[0\] has no 'is_impossible' key"):
        data.read_squad(_write_json(tmp_path / "unmarked.json", unmarked), version_2=True)
    inconsistent = _squad_json([_qa("q0", is_impossible=True)], version="v2.0")
    with pytest.raises(ValueError, match="has is_impossible true but 1 answer"):
        data.read_squad(_write_json(tmp_path / "inconsistent.json", inconsistent), version_2=True)


# ---------------------------------------------------------------- features

def _recovered(example: data.SquadExample, features: data.SquadFeatures, row: int) -> str:
    start = features.encoded.targets["start_positions"][row]
    end = features.encoded.targets["end_positions"][row]
    offsets = features.offsets[row]
    return example.context[offsets[start][0]:offsets[end][1]]


def test_targets_recover_the_gold_answer_text(squad_dir: Path, dev_v1, tokenizer) -> None:
    train_v2 = data.read_squad(squad_file(squad_dir, "train-v2.0.subset.json"), version_2=True)
    examples = dev_v1[::40] + [e for e in train_v2 if not e.is_impossible][::20]
    assert len(examples) > 400
    features = data.squad_features(examples, tokenizer, max_length=384, doc_stride=128)
    starts = features.encoded.targets["start_positions"]
    recovered = matched = 0
    for row, index in enumerate(features.example_index):
        if starts[row] == 0:
            continue  # the answer is not in this window
        recovered += 1
        text = _recovered(examples[index], features, row)
        matched += squad_eval.normalize_answer(text) == squad_eval.normalize_answer(examples[index].answers[0])
    # Every answer sits whole in at least one window at 384 tokens.
    assert {index for row, index in enumerate(features.example_index) if starts[row] > 0} == set(range(len(examples)))
    # Misses are answers that end inside a word piece ("gold" of "golden", "8" of "18"): 0.3 % of
    # the answer windows over the whole dev-v1.1 set with this tokenizer.
    assert matched / recovered >= 0.99, (matched, recovered)


def test_long_context_gives_overlapping_windows(dev_v1, tokenizer) -> None:
    example = max(dev_v1[:300], key=lambda e: len(e.context))
    stride = 32
    features = data.squad_features([example], tokenizer, max_length=128, doc_stride=stride)
    assert len(features) >= 4 and features.example_index == [0] * len(features)
    question_ids = None
    context_spans = []
    for row in range(len(features)):
        ids, offsets = features.encoded.input_ids[row], features.offsets[row]
        assert len(ids) <= 128 and len(features.encoded.token_type_ids[row]) == len(ids) == len(offsets)
        first_context = next(t for t, span in enumerate(offsets) if span is not None)
        assert question_ids in (None, ids[:first_context])  # the whole question in every window
        question_ids = ids[:first_context]
        context_spans.append([span for span in offsets if span is not None])
    for before, after in zip(context_spans, context_spans[1:]):
        assert before[-stride:] == after[:stride]  # consecutive windows share exactly doc_stride tokens
        assert after[stride][0] >= before[-1][1]  # and move on after that
    assert context_spans[0][0][0] == 0 and context_spans[-1][-1][1] == len(example.context.rstrip())
    # The answer is a target only in windows that hold it whole.
    gold_start = example.answer_starts[0]
    gold_end = gold_start + len(example.answers[0])
    for row, spans in enumerate(context_spans):
        holds = spans[0][0] <= gold_start and spans[-1][1] >= gold_end
        assert (features.encoded.targets["start_positions"][row] != 0) == holds
        if holds:
            assert _recovered(example, features, row) == example.answers[0]


def test_unanswerable_questions_target_the_classification_token(dev_v2, tokenizer) -> None:
    examples = dev_v2[::4]
    features = data.squad_features(examples, tokenizer)
    targets = features.encoded.targets
    impossible_rows = [row for row, index in enumerate(features.example_index) if examples[index].is_impossible]
    assert len(impossible_rows) > 100
    assert all(targets["start_positions"][row] == targets["end_positions"][row] == 0 for row in impossible_rows)
    assert all(features.encoded.input_ids[row][0] == tokenizer.cls_token_id for row in impossible_rows)
    answerable_rows = sorted(set(range(len(features))) - set(impossible_rows))
    assert sum(targets["start_positions"][row] > 0 for row in answerable_rows) >= 0.95 * len(answerable_rows)


def test_features_work_with_batches_and_subset(dev_v1, tokenizer) -> None:
    features = data.squad_features(dev_v1[:10], tokenizer, max_length=128, doc_stride=32)
    assert len(features) > 10  # some of these contexts need more than one 128-token window
    batch = next(data.batches(features.encoded.subset(6), 4, tokenizer.pad_token_id, pad_to_multiple_of=8))
    assert batch["input_ids"].shape == (4, 128) and batch["start_positions"].dtype == batch["index"].dtype
    assert batch["start_positions"].tolist() == features.encoded.targets["start_positions"][:4]
    assert batch["end_positions"].tolist() == features.encoded.targets["end_positions"][:4]


def test_a_question_too_long_for_the_window_is_cut_not_fatal(dev_v1, tokenizer, caplog) -> None:
    example = dev_v1[0]
    long_question = data.SquadExample("long", example.title, example.context, "why " * 200 + "?",
                                      example.answers, example.answer_starts, False)
    with caplog.at_level(logging.WARNING, logger="progtuning"):
        features = data.squad_features([long_question, example], tokenizer, max_length=128, doc_stride=32)
    assert "cut 1 question(s) to 92 tokens" in caplog.text  # 128 - 3 special tokens - 32 - 1
    long_rows = [row for row, index in enumerate(features.example_index) if index == 0]
    assert all(len(features.encoded.input_ids[row]) <= 128 for row in long_rows)
    assert all(sum(span is not None for span in features.offsets[row]) > 32 for row in long_rows)
    with pytest.raises(ValueError, match="doc_stride 128 must be in"):
        data.squad_features([example], tokenizer, max_length=128, doc_stride=128)


@pytest.fixture(scope="module")
def byte_level_tokenizer(dev_v1) -> model.Tokenizer:
    """A small byte-level BPE in RoBERTa's layout (<s> question </s></s> context </s>), trained on dev
    contexts in a fraction of a second, since no RoBERTa checkpoint is installed for the tests."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    trainer = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    trainer.train_from_iterator(sorted({e.context for e in dev_v1[:1000]}), vocab_size=1000,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False)
    backend = trainer._tokenizer
    backend.post_processor = RobertaProcessing(("</s>", backend.token_to_id("</s>")),
                                               ("<s>", backend.token_to_id("<s>")), trim_offsets=True,
                                               add_prefix_space=False)
    return model.Tokenizer(backend, pad_token_id=backend.token_to_id("<pad>"),
                           cls_token_id=backend.token_to_id("<s>"), source="byte-level BPE trained in the test")


def test_roberta_layout_targets_recover_the_gold_answer_text(dev_v1, byte_level_tokenizer) -> None:
    examples = dev_v1[1::25]
    features = data.squad_features(examples, byte_level_tokenizer)
    assert byte_level_tokenizer.backend.id_to_token(features.encoded.input_ids[0][0]) == "<s>"
    rows = [row for row in range(len(features)) if features.encoded.targets["start_positions"][row] > 0]
    assert {features.example_index[row] for row in rows} == set(range(len(examples)))
    matched = sum(squad_eval.exact_match(_recovered(examples[features.example_index[row]], features, row),
                                         examples[features.example_index[row]].answers[0]) for row in rows)
    assert matched >= 0.99 * len(rows)


def test_leading_spaces_of_a_question_are_dropped(dev_v1, byte_level_tokenizer) -> None:
    example = dev_v1[0]
    padded = data.SquadExample(example.id, example.title, example.context, "     " + example.question,
                               example.answers, example.answer_starts, False)
    # Byte-level BPE makes a token of each leading space (WordPiece would drop them).
    raw = byte_level_tokenizer.encode_batch([padded.question, example.question], max_length=512)
    assert len(raw[0].ids) > len(raw[1].ids)
    with_spaces = data.squad_features([padded], byte_level_tokenizer)
    plain = data.squad_features([example], byte_level_tokenizer)
    assert with_spaces.encoded == plain.encoded and with_spaces.offsets == plain.offsets


# ---------------------------------------------------------------- predictions

def _gold_logits(features: data.SquadFeatures, examples, rng: np.random.Generator, padding: int = 5):
    """Noise in [-1, 1], +10 at each window's gold start and end (or at [CLS] for no answer), and
    much larger logits in the padding columns that must be ignored."""
    width = max(len(offsets) for offsets in features.offsets) + padding
    start = rng.uniform(-1, 1, (len(features), width))
    end = rng.uniform(-1, 1, (len(features), width))
    for row, offsets in enumerate(features.offsets):
        start[row, len(offsets):] = end[row, len(offsets):] = 50.0
        start[row, features.encoded.targets["start_positions"][row]] += 10
        end[row, features.encoded.targets["end_positions"][row]] += 10
    return start, end


def test_logits_on_the_gold_span_give_the_gold_answers(dev_v1, tokenizer) -> None:
    # Long contexts in short windows: most answers are missing from some of their windows.
    examples = dev_v1[::15]
    features = data.squad_features(examples, tokenizer, max_length=128, doc_stride=32)
    without_answer = {index for row, index in enumerate(features.example_index)
                      if features.encoded.targets["start_positions"][row] == 0}
    assert len(without_answer) > 200
    keep = {index for row, index in enumerate(features.example_index)
            if features.encoded.targets["start_positions"][row] > 0
            and squad_eval.exact_match(_recovered(examples[index], features, row), examples[index].answers[0])}
    assert len(keep) >= 0.99 * len(examples)
    start, end = _gold_logits(features, examples, np.random.default_rng(0))
    predictions, na_probs = data.squad_predictions(examples, features, start, end)
    assert set(predictions) == set(na_probs) == {e.id for e in examples}
    # A window without the answer scores its null +10+10 as well, but the span in the answer's
    # window wins because the null is the least confident window's: every diff is negative.
    assert all(na_probs[e.id] < 0 for e in examples)
    kept = [e for index, e in enumerate(examples) if index in keep]
    result = squad_eval.evaluate_v1(_as_dataset(kept), {e.id: predictions[e.id] for e in kept})
    assert result == {"exact_match": 100.0, "f1": 100.0}


def test_v2_null_answers_and_thresholds(dev_v2, tokenizer) -> None:
    examples = dev_v2[::3]
    features = data.squad_features(examples, tokenizer)
    start, end = _gold_logits(features, examples, np.random.default_rng(1))
    predictions, na_probs = data.squad_predictions(examples, features, start, end, version_2=True)
    for example in examples:
        if example.is_impossible:
            assert predictions[example.id] == "" and na_probs[example.id] > 15
        else:
            assert predictions[example.id] and na_probs[example.id] < 0
    dataset = _as_dataset(examples)
    assert squad_eval.evaluate_v2(dataset, predictions, na_probs, na_prob_thresh=math.inf)["exact"] > 99
    # Unblanked predictions evaluated at threshold t score what blanking at t here scores.
    unblanked, same_probs = data.squad_predictions(examples, features, start, end, version_2=True,
                                                   null_threshold=math.inf)
    assert same_probs == na_probs and sum(answer == "" for answer in unblanked.values()) == 0
    for threshold in (-5.0, 0.0, 15.0, 25.0):
        blanked, _ = data.squad_predictions(examples, features, start, end, version_2=True,
                                            null_threshold=threshold)
        here = squad_eval.evaluate_v2(dataset, blanked, na_probs, na_prob_thresh=math.inf)
        there = squad_eval.evaluate_v2(dataset, unblanked, na_probs, na_prob_thresh=threshold)
        assert (here["exact"], here["f1"]) == (there["exact"], there["f1"])
    best = squad_eval.evaluate_v2(dataset, unblanked, na_probs)
    assert best["best_exact"] > 99 and -20 < best["best_exact_thresh"] < 20


def _one_window(tokenizer, context: str = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu "
                                          "nu xi omicron pi rho sigma tau upsilon phi chi psi omega " * 2):
    example = data.SquadExample("x", "T", context, "Which letter?", ["gamma"], [context.index("gamma")], False)
    features = data.squad_features([example], tokenizer)
    assert len(features) == 1
    offsets = features.offsets[0]
    first_context = next(t for t, span in enumerate(offsets) if span is not None)
    return example, features, first_context, len(offsets)


def test_spans_outside_the_context_reversed_or_too_long_are_never_chosen(tokenizer) -> None:
    example, features, c, n = _one_window(tokenizer)
    assert c > 2

    def predict(start_peaks: dict[int, float], end_peaks: dict[int, float], **kwargs) -> str:
        # A low background, so that a peak paired with any background token loses to the valid span.
        start, end = np.full((1, n + 3), -100.0), np.full((1, n + 3), -100.0)
        for token, value in start_peaks.items():
            start[0, token] = value
        for token, value in end_peaks.items():
            end[0, token] = value
        predictions, _ = data.squad_predictions([example], features, start, end, **kwargs)
        return predictions["x"]

    def text(first: int, last: int) -> str:
        return example.context[features.offsets[0][first][0]:features.offsets[0][last][1]]

    valid = ({c + 2: 5.0}, {c + 3: 5.0})
    assert predict(*valid) == text(c + 2, c + 3) == "gamma delta"
    # A question token and the final [SEP] outscore everything, but are not context (no length
    # limit here, so that only the context rule stands between them and the answer).
    assert predict({1: 100.0, **valid[0]}, {n - 1: 100.0, **valid[1]}, max_answer_length=1000) == "gamma delta"
    # end before start.
    assert predict({c + 8: 100.0, **valid[0]}, {c + 1: 100.0, **valid[1]}) == "gamma delta"
    # 31 tokens is one too many by default; allowed when max_answer_length says so.
    too_long = ({c + 4: 100.0, **valid[0]}, {c + 34: 100.0, **valid[1]})
    assert predict(*too_long) == "gamma delta"
    assert predict(*too_long, max_answer_length=31) == text(c + 4, c + 34)
    # Peaks past the feature's length are padding.
    assert predict({n + 1: 100.0, **valid[0]}, {n + 2: 100.0, **valid[1]}) == "gamma delta"


def test_null_score_is_the_least_confident_window(dev_v1, tokenizer, caplog) -> None:
    example = max(dev_v1[:300], key=lambda e: len(e.context))
    features = data.squad_features([example], tokenizer, max_length=128, doc_stride=32)
    assert len(features) >= 3
    width = max(len(offsets) for offsets in features.offsets)
    start, end = np.zeros((len(features), width)), np.zeros((len(features), width))
    start[:, 0] = end[:, 0] = [6.0 + row for row in range(len(features))]  # nulls 12, 14, 16, ...
    first_context = next(t for t, span in enumerate(features.offsets[1]) if span is not None)
    start[1, first_context] = end[1, first_context + 1] = 5.0  # the best span scores 10
    predictions, na_probs = data.squad_predictions([example], features, start, end, version_2=True,
                                                   null_threshold=1.0)
    assert na_probs[example.id] == pytest.approx(12.0 - 10.0)
    assert predictions[example.id] == ""  # 2 > 1
    predictions, _ = data.squad_predictions([example], features, start, end, version_2=True, null_threshold=2.5)
    offsets = features.offsets[1]
    assert predictions[example.id] == example.context[offsets[first_context][0]:offsets[first_context + 1][1]]
    # v1.1 never answers "" for a null score.
    predictions, _ = data.squad_predictions([example], features, start, end, null_threshold=-100.0)
    assert predictions[example.id] != ""
    # No valid span at all: "" with an infinite diff, and v1.1 says so.
    with caplog.at_level(logging.WARNING, logger="progtuning"):
        predictions, na_probs = data.squad_predictions([example], features, start, end, n_best=1)
    assert predictions == {example.id: ""} and na_probs == {example.id: math.inf}
    assert "1 of 1 SQuAD v1.1 question(s) got no valid span" in caplog.text


def test_logits_that_do_not_match_the_features_are_refused(dev_v1, tokenizer) -> None:
    features = data.squad_features(dev_v1[:3], tokenizer)
    width = max(len(offsets) for offsets in features.offsets)
    good = np.zeros((len(features), width))
    with pytest.raises(ValueError, match=r"start_logits has shape \(2, "):
        data.squad_predictions(dev_v1[:3], features, good[:2], good)
    with pytest.raises(ValueError, match="end_logits has shape"):
        data.squad_predictions(dev_v1[:3], features, good, good[:, :-1])
    with pytest.raises(ValueError, match="has no feature"):
        data.squad_predictions(dev_v1[:4], features, good, good)


# ---------------------------------------------------------------- files and download

def test_squad_data_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data.squad_data_dir(None) == Path("squad")
    monkeypatch.setenv(data.SQUAD_DIR_ENV, str(tmp_path / "from_env"))
    assert data.squad_data_dir(None) == tmp_path / "from_env"
    assert data.squad_data_dir(tmp_path / "given") == tmp_path / "given"


def test_squad_files_picks_named_files_and_refuses_unknown_tasks(squad_dir: Path) -> None:
    train_v1, dev_v1 = squad_file(squad_dir, "train-v1.1.subset.json"), squad_file(squad_dir, "dev-v1.1.json")
    assert data.squad_files("squad", squad_dir, train_file=train_v1.name) == (train_v1, dev_v1)
    train_v2, dev_v2 = squad_file(squad_dir, "train-v2.0.subset.json"), squad_file(squad_dir, "dev-v2.0.subset.json")
    assert data.squad_files("squad_v2", squad_dir, train_v2.name, dev_v2.name) == (train_v2, dev_v2)
    with pytest.raises(ValueError, match="Unknown SQuAD task 'squad2'; expected one of squad, squad_v2"):
        data.squad_files("squad2", squad_dir)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    monkeypatch.delenv("PROGTUNING_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv(data.SQUAD_DIR_ENV, raising=False)
    loopback = LoopbackServer()
    monkeypatch.setenv(data.SQUAD_BASE_URL_ENV, f"{loopback.url}/dataset/")
    yield loopback
    loopback.close()


TINY_TRAIN = json.dumps(_squad_json([_qa("t1")])).encode()
TINY_DEV = json.dumps(_squad_json([_qa("d1"), _qa("d2", "Who sat?", "The cat", 0)])).encode()


def test_missing_official_files_are_downloaded_once(server: LoopbackServer, tmp_path: Path) -> None:
    server.serve("/dataset/train-v1.1.json", TINY_TRAIN)
    server.serve("/dataset/dev-v1.1.json", TINY_DEV)
    root = tmp_path / "squad"
    root.mkdir()
    train, dev = data.squad_files("squad", root)
    assert (train, dev) == (root / "train-v1.1.json", root / "dev-v1.1.json")
    assert train.read_bytes() == TINY_TRAIN and dev.read_bytes() == TINY_DEV
    assert sorted(os.listdir(root)) == ["dev-v1.1.json", "train-v1.1.json"]  # no temporary file left
    assert [e.id for e in data.read_squad(dev, version_2=False)] == ["d1", "d2"]
    assert data.squad_files("squad", root) == (train, dev)
    assert server.requests == ["/dataset/train-v1.1.json", "/dataset/dev-v1.1.json"]  # not fetched again


def test_http_404_is_a_clear_error_and_leaves_nothing_behind(server: LoopbackServer, tmp_path: Path) -> None:
    with pytest.raises(data.SquadDownloadError) as error:
        data.squad_files("squad_v2", tmp_path)
    message = str(error.value)
    assert f"{server.url}/dataset/train-v2.0.json" in message and "HTTP 404" in message
    assert f"place it at {tmp_path / 'train-v2.0.json'}" in message and data.SQUAD_DIR_ENV in message
    assert os.listdir(tmp_path) == []


def test_a_mistyped_folder_is_an_error_and_the_default_one_is_removed_after_a_failure(
        server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"squda \(the SQuAD data folder, from --data-dir\) does not exist"):
        data.squad_files("squad", tmp_path / "squda")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.SquadDownloadError, match="HTTP 404"):
        data.squad_files("squad")  # ./squad, the default, is created for the download
    assert os.listdir(tmp_path) == [] and server.requests == ["/dataset/train-v1.1.json"]


def test_an_error_page_is_not_kept_as_the_data_file(server: LoopbackServer, tmp_path: Path) -> None:
    server.serve("/dataset/train-v1.1.json", b"<html>Sign in to continue</html>")
    with pytest.raises(data.SquadDownloadError, match="train-v1.1.json is not a SQuAD JSON file"):
        data.squad_files("squad", tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_missing_file_of_another_name_is_not_downloaded(server: LoopbackServer, tmp_path: Path) -> None:
    (tmp_path / "dev-v1.1.json").write_bytes(TINY_DEV)
    with pytest.raises(FileNotFoundError) as error:
        data.squad_files("squad", tmp_path, train_file="train-v1.1.subset.json")
    message = str(error.value)
    assert f"{tmp_path / 'train-v1.1.subset.json'} does not exist" in message
    assert "JSON files in" in message and "dev-v1.1.json" in message
    assert server.requests == []


def test_offline_a_missing_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.SQUAD_BASE_URL_ENV, "http://127.0.0.1:9/never")
    with pytest.raises(FileNotFoundError) as error:
        data.squad_files("squad", tmp_path / "squad")
    message = str(error.value)
    assert f"{tmp_path / 'squad' / 'train-v1.1.json'} does not exist and PROGTUNING_OFFLINE is set" in message
    assert "http://127.0.0.1:9/never/train-v1.1.json" in message and "--data-dir" in message
    assert not (tmp_path / "squad").exists()
