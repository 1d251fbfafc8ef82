"""MPNet (Song et al. 2020) in the same encoder: parity with transformers' MPNet on random small configs
(hidden states, both heads, a training step), on the real all-mpnet-base-v2 checkpoint when it is present,
token ids against transformers' tokenizer on real GLUE pairs, the 12-block shape's counts by hand, and a
tiny MPNet trained, exported, loaded by transformers and used by predict.py end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import data
import model as M
import progtuning as P
import run

transformers = pytest.importorskip("transformers", reason="MPNet parity is checked against transformers (dev)")

TINY = dict(vocab_size=99, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
            max_position_embeddings=40)
GET_MPNET = "bash scripts/get-mpnet.sh (or set PROGTUNING_MPNET_DIR)"


@pytest.fixture(scope="session")
def mpnet_dir() -> Path:
    """The real all-mpnet-base-v2 folder: $PROGTUNING_MPNET_DIR, else where get-mpnet.sh puts it."""
    path = Path(os.environ.get("PROGTUNING_MPNET_DIR")
                or Path.home() / ".cache" / "progtuning" / "all-mpnet-base-v2")
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"the real MPNet checkpoint is not at {path}; get it with {GET_MPNET}")
    return path


def save_reference(cls_name: str, folder: Path, **config) -> torch.nn.Module:
    """A random transformers MPNet saved as safetensors; returns it in eval mode."""
    torch.manual_seed(0)
    reference = getattr(transformers, cls_name)(transformers.MPNetConfig(**{**TINY, **config})).eval()
    reference.save_pretrained(folder, safe_serialization=True)
    return reference


def padded_batch(pad_id: int = 1) -> dict[str, torch.Tensor]:
    """Three sequences of lengths 12, 7 and 3 padded to 12 (MPNet pads with id 1)."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, TINY["vocab_size"], (3, 12), generator=g)
    attention_mask = torch.zeros(3, 12, dtype=torch.long)
    for row, n in enumerate([12, 7, 3]):
        attention_mask[row, :n] = 1
        input_ids[row, n:] = pad_id
    return dict(input_ids=input_ids, attention_mask=attention_mask)


# ---------------------------------------------------------------------------------------------- parity

def test_relative_position_buckets_match_transformers():
    # 300 positions reach past max_distance (128), where every distance shares the last bucket of its half
    expected = transformers.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket(
        torch.arange(300)[None, :] - torch.arange(300)[:, None])
    got = M.relative_position_buckets(300)
    assert torch.equal(got, expected)
    assert got.min() == 0 and got.max() == 31 and got[0, 0] == 0 and got[5, 0] == 5 and got[0, 5] == 21


def test_hidden_states_match_transformers(tmp_path):
    reference = save_reference("MPNetModel", tmp_path)
    ours = M.from_pretrained(tmp_path).eval()
    assert ours.embeddings.token_type_embeddings is None
    batch = padded_batch()
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        got = ours(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_labels", [3, 1])
def test_classification_logits_match_transformers(tmp_path, num_labels):
    reference = save_reference("MPNetForSequenceClassification", tmp_path, num_labels=num_labels)
    ours = M.from_pretrained(tmp_path, head="classification", num_labels=num_labels).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(**padded_batch()), reference(**padded_batch()).logits, atol=1e-5, rtol=0)


def test_span_logits_match_transformers(tmp_path):
    reference = save_reference("MPNetForQuestionAnswering", tmp_path)
    ours = M.from_pretrained(tmp_path, head="span").eval()
    with torch.no_grad():
        expected = reference(**padded_batch())
        start, end = ours(**padded_batch())
    torch.testing.assert_close(start, expected.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(end, expected.end_logits, atol=1e-5, rtol=0)


def test_a_training_step_matches_transformers(tmp_path):
    """Gradients of every weight (the shared position bias included) and the weights after one AdamW step,
    in train mode; dropout off so that both draw nothing."""
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reference = save_reference("MPNetForSequenceClassification", tmp_path, num_labels=2, **no_dropout).train()
    ours = M.from_pretrained(tmp_path, head="classification", num_labels=2).train()
    labels = torch.tensor([0, 1, 1])
    losses = []
    for model, logits in ((reference, lambda b: reference(**b).logits), (ours, lambda b: ours(**b))):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss = torch.nn.functional.cross_entropy(logits(padded_batch()), labels)
        loss.backward()
        losses.append(loss.item())
        if model is ours:
            grads = {name: p.grad.clone() for name, p in ours.named_parameters()}
        else:
            their_grads = {name: p.grad.clone() for name, p in reference.named_parameters()}
        optimizer.step()
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    theirs = dict(reference.named_parameters())
    assert len(grads) == len(their_grads) == len(theirs)
    for name, grad in grads.items():
        key = "mpnet." + M.checkpoint_name(name, "mpnet") if not name.startswith("classifier.") else name
        torch.testing.assert_close(grad, their_grads[key], atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(dict(ours.named_parameters())[name], theirs[key], atol=1e-5, rtol=0)
    assert grads["encoder.relative_attention_bias.weight"].abs().sum() > 0


def test_position_bias_is_part_of_the_embeddings():
    ours = M.Transformer(M.ModelConfig(model_type="mpnet", pad_token_id=1, **TINY), head="classification",
                         num_labels=2)
    assert M.part_of("encoder.relative_attention_bias.weight") == ("embeddings", None)
    # it trains with E under full fine-tuning and is frozen with E for the PEFT methods and --freeze-embeddings
    assert P.method_trains("full", "encoder.relative_attention_bias.weight")
    assert not P.method_trains("full", "encoder.relative_attention_bias.weight", freeze_embeddings=True)
    assert not P.method_trains("bitfit", "encoder.relative_attention_bias.weight")
    assert not hasattr(ours, "pooler")  # MPNet's sequence head is RoBERTa's: dense + tanh + out_proj on <s>


def test_a_config_with_other_buckets_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mpnet", "pad_token_id": 1, **TINY,
                                                      "relative_attention_num_buckets": 64}))
    with pytest.raises(ValueError, match=r"relative_attention_num_buckets is 64; expected 32"):
        M.load_config(tmp_path)


# ---------------------------------------------------------------------------------------- tokenizer

def glue_pairs(glue_dir: Path, n: int = 60) -> tuple[list[str], list[str]]:
    pairs = [e for task in ("rte", "mrpc", "stsb") for e in data.read_glue(task, "dev", glue_dir)[:n // 3]]
    return [e.text_a for e in pairs], [e.text_b for e in pairs]


def test_token_ids_match_transformers_on_glue_pairs(mpnet_dir, glue_dir):
    ours = M.load_tokenizer(mpnet_dir)
    assert ours.source.endswith("tokenizer.json") and ours.pad_token_id == 1 and ours.cls_token_id == 0
    reference = transformers.AutoTokenizer.from_pretrained(str(mpnet_dir))
    firsts, seconds = glue_pairs(glue_dir)
    for max_length in (128, 24):
        expected = reference(firsts, seconds, truncation=True, max_length=max_length)["input_ids"]
        assert [e.ids for e in ours.encode_batch(firsts, seconds, max_length=max_length)] == expected


def mpnet_vocab_folder(folder: Path, minilm_dir: Path) -> Path:
    """A WordPiece vocabulary laid out as MPNet's (<s> 0, <pad> 1, </s> 2, [UNK] 3, ..., <mask> last) from
    MiniLM's real BERT vocabulary, with MPNet's tokenizer_config.json: no tokenizer.json."""
    bert_specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    words = [w for w in (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines() if w not in bert_specials]
    vocab = ["<s>", "<pad>", "</s>", "[UNK]"] + words + ["<mask>"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
         "unk_token": "[UNK]", "pad_token": "<pad>", "mask_token": "<mask>"}))
    return folder


def test_vocab_txt_fallback_matches_transformers_mpnet_tokenizer(tmp_path, minilm_dir, glue_dir):
    folder = mpnet_vocab_folder(tmp_path, minilm_dir)
    vocab_size = len((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())
    (folder / "config.json").write_text(json.dumps({"model_type": "mpnet", "pad_token_id": 1,
                                                    **{**TINY, "vocab_size": vocab_size}}))
    ours = M.load_tokenizer(folder)
    assert ours.source.endswith("vocab.txt") and ours.pad_token_id == 1
    reference = transformers.MPNetTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    firsts, seconds = glue_pairs(glue_dir)
    for max_length in (128, 24):
        expected = reference(firsts, seconds, truncation=True, max_length=max_length)["input_ids"]
        got = [e.ids for e in ours.encode_batch(firsts, seconds, max_length=max_length)]
        assert got == expected
    assert got[0][:1] == [0] and got[0].count(2) == 3  # <s> A </s></s> B </s>


def test_real_checkpoint_matches_transformers(mpnet_dir, glue_dir):
    tokenizer = M.load_tokenizer(mpnet_dir)
    firsts, seconds = glue_pairs(glue_dir, n=12)
    examples = [data.Example(str(i), a, b, 0) for i, (a, b) in enumerate(zip(firsts, seconds))]
    batch = next(data.batches(data.encode_glue(examples, tokenizer, 128, regression=False), len(examples),
                              tokenizer.pad_token_id))
    reference = transformers.MPNetModel.from_pretrained(str(mpnet_dir)).eval()
    ours = M.from_pretrained(mpnet_dir).eval()
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------- the 12-block shape

MPNET_BASE = dict(model_type="mpnet", vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=514, pad_token_id=1, layer_norm_eps=1e-5)
# Hand count, 2-label classification head:
#   E      word 30527·768 + position 514·768 + LayerNorm 2·768 + position bias 32·12     = 23,841,408
#   block  q, k, v, o 4·(768·768 + 768) + LN 1,536 + inter 768·3072 + 3072
#          + out 3072·768 + 768 + LN 1,536                                               =  7,087,872
#   H      dense 768·768 + 768 + out_proj 768·2 + 2                                      =    592,130
#   total  23,841,408 + 12 · 7,087,872 + 592,130                                         = 109,488,002
# Progtuning, 3 epochs: parts of 4 blocks; E and H in every epoch.
#   epoch 1  109,488,002;  epoch 2  23,841,408 + 8·7,087,872 + 592,130 = 81,136,514;
#   epoch 3  23,841,408 + 4·7,087,872 + 592,130 = 52,785,026;  sum 243,409,542 of 3 · 109,488,002 = 328,464,006
# LoRA r 8 on q and v: A 8·768 + B 768·8 = 12,288 each, 24,576 a block; trainable outside the blocks: H.
#   total 109,488,002 + 12·24,576 = 109,782,914; epochs 592,130 + (12, 8, 4)·24,576
HAND = {"full": (109_488_002, [109_488_002, 81_136_514, 52_785_026], 3 * 109_488_002),
        "lora": (109_782_914, [887_042, 788_738, 690_434], 3 * 887_042)}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_counts_of_the_12_block_shape_by_hand(method):
    with torch.device("meta"):
        model = P.add_method(M.Transformer(M.ModelConfig(**MPNET_BASE), head="classification", num_labels=2),
                             method)
    total, per_epoch, baseline = HAND[method]
    counts = P.count_parameters(model, P.plan_stages(12, 3, "pt"), method, epochs=3)
    assert counts.total_params == total
    assert counts.updated_params_per_epoch == per_epoch and counts.updated_params == sum(per_epoch)
    assert counts.baseline_updated_params == baseline
    if method == "full":
        assert round(100 * counts.reduction, 1) == 25.9  # the paper's shape; MiniLM's 6 blocks give 15.6


def test_count_only_on_the_mpnet_config(tmp_path, capsys):
    folder = tmp_path / "mpnet-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MPNET_BASE))
    record = run.main(["--task", "rte", "--mode", "pt", "--model", str(folder), "--count-only",
                       "--output-dir", str(tmp_path / "out")])
    assert record["total_params"] == 109_488_002
    assert record["updated_params_per_epoch"] == HAND["full"][1]
    assert record["baseline_updated_params"] == 328_464_006
    assert "243,409,542" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory, minilm_dir) -> Path:
    """A 3-block, 32-wide random MPNet saved by transformers, with the MPNet-layout WordPiece vocabulary."""
    folder = mpnet_vocab_folder(tmp_path_factory.mktemp("tiny-mpnet"), minilm_dir)
    vocab_size = len((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())
    torch.manual_seed(0)
    config = transformers.MPNetConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=3,
                                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=130)
    transformers.MPNetModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_train_export_and_predict_end_to_end(tmp_path, tiny_mpnet, glue_dir):
    out, exported = tmp_path / "run", tmp_path / "export"
    record = run.main(["--task", "rte", "--mode", "pt", "--model", str(tiny_mpnet), "--data-dir", str(glue_dir),
                       "--output-dir", str(out), "--epochs", "2", "--limit-train", "32", "--limit-eval", "16",
                       "--batch-size", "8", "--lr", "1e-3", "--export", str(exported)])
    assert record["runs"][0]["status"] == "complete"
    assert record["runs"][0]["epochs"][1]["trainable_blocks"] == [2, 3]
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["MPNetForSequenceClassification"]

    assert type(export_matches_and_predicts(out, exported, tiny_mpnet, glue_dir, 16)).__name__ == \
        "MPNetForSequenceClassification"


def export_matches_and_predicts(out: Path, exported: Path, model_dir: Path, glue_dir: Path, rows: int):
    """The export of run `out` loads in transformers with our logits on RTE dev pairs, and predict.py on it
    gives the run's own dev predictions on the first `rows` dev rows, the ones the run evaluated."""
    import export
    import predict

    ours, _, _ = export.load_run_model(out)
    ours.eval()
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(exported).eval()
    tokenizer = M.load_tokenizer(model_dir)
    batch = next(data.batches(data.encode_glue(data.read_glue("rte", "dev", glue_dir)[:8], tokenizer, 128,
                                               regression=False), 8, tokenizer.pad_token_id))
    with torch.no_grad():
        expected = hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    predictions, evaluated = out.parent / "predictions.tsv", out.parent / "dev-head.tsv"
    evaluated.write_text("".join((glue_dir / "RTE" / "dev.tsv").read_text().splitlines(keepends=True)[:rows + 1]))
    predict.main(["--model", str(exported), "--task", "rte", "--input", str(evaluated), "--output", str(predictions)])
    written = (out / "seed-1" / "predictions-rte.tsv").read_text().splitlines()
    predicted = predictions.read_text().splitlines()
    assert len(written) == len(predicted) == rows + 1
    assert [line.split("\t")[:2] for line in predicted[1:]] == [line.split("\t") for line in written[1:]]
    return hf_model


def test_real_mpnet_trains_exports_and_predicts(tmp_path, mpnet_dir, glue_dir):
    """The real 12-block checkpoint end to end: two Progtuning epochs on 32 RTE pairs (32 tokens each), the
    export loaded by transformers with our logits, and predict.py on the export giving the run's own dev
    predictions."""
    out, exported = tmp_path / "run", tmp_path / "export"
    record = run.main(["--task", "rte", "--mode", "pt", "--model", str(mpnet_dir), "--data-dir", str(glue_dir),
                       "--output-dir", str(out), "--epochs", "2", "--limit-train", "32", "--limit-eval", "16",
                       "--batch-size", "16", "--max-length", "32", "--export", str(exported)])
    assert [e["trainable_blocks"] for e in record["runs"][0]["epochs"]] == [list(range(1, 13)), list(range(7, 13))]
    assert record["total_params"] == 109_488_002
    export_matches_and_predicts(out, exported, mpnet_dir, glue_dir, 16)


@pytest.mark.parametrize("extra", [("--method", "adapter"), ("--method", "bitfit"), ("--method", "lora"),
                                   ("--method", "sam", "--burn-in-steps", "1", "--sparsity", "0.05"),
                                   ("--train-blocks", "2")], ids=["adapter", "bitfit", "lora", "sam", "probe"])
def test_every_method_and_the_probe_train_mpnet(tmp_path, tiny_mpnet, glue_dir, extra):
    record = run.main(["--task", "rte", "--model", str(tiny_mpnet), "--data-dir", str(glue_dir), "--output-dir",
                       str(tmp_path), "--epochs", "2", "--limit-train", "16", "--limit-eval", "8", "--batch-size",
                       "8", *extra])
    assert record["runs"][0]["status"] == "complete"
    model = run.build_model(run.Settings.from_record(record["settings"]))
    stages = run.plan(run.Settings.from_record(record["settings"]), model)
    counts = P.count_parameters(model, stages, record["settings"]["method"], 2, steps_per_epoch=2,
                                entries=record["runs"][0].get("mask", {}).get("entries_per_tensor"))
    assert record["updated_params_per_epoch"] == counts.updated_params_per_epoch


def test_a_span_head_exports_as_mpnet_question_answering(tmp_path, tiny_mpnet):
    import dataclasses

    import export

    torch.manual_seed(0)
    model = M.from_pretrained(tiny_mpnet, head="span").eval()
    settings = run.parse_args(["--task", "squad", "--model", str(tiny_mpnet)])
    export.export_model(model, {"settings": dataclasses.asdict(settings)}, 1, tmp_path / "qa")
    hf_model = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "qa").eval()
    assert type(hf_model).__name__ == "MPNetForQuestionAnswering"
    batch = padded_batch()
    with torch.no_grad():
        expected = hf_model(**batch)
        start, end = model(**batch)
    torch.testing.assert_close(start, expected.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(end, expected.end_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_real_mpnet_lora_loads_as_a_peft_adapter_with_our_logits(tmp_path, mpnet_dir, glue_dir, task, capsys):
    """One LoRA step on the real checkpoint (a large learning rate, so that B·A shows), exported as a peft adapter:
    peft's PeftModel on transformers' MPNet gives our logits on real dev rows."""
    from test_export import check_peft_export

    run.main(["--task", task, "--method", "lora", "--model", str(mpnet_dir), "--data-dir", str(glue_dir),
              "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--limit-train", "8", "--limit-eval", "4",
              "--batch-size", "8", "--max-length", "64", "--lr", "1e-2", "--export", str(tmp_path / "peft"),
              "--export-format", "peft"])
    difference = check_peft_export(tmp_path / "peft", tmp_path / "run", mpnet_dir, glue_dir, task, max_length=64)
    with capsys.disabled():
        print(f"\nMPNet {task}: peft logits against ours, max |difference| {difference:.2e}")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q", "v"] and config["modules_to_save"] == ["classifier"]


def test_an_mpnet_adapter_run_cannot_take_the_adapters_format(tmp_path, tiny_mpnet, glue_dir, capsys):
    argv = ["--task", "rte", "--method", "adapter", "--model", str(tiny_mpnet), "--data-dir", str(glue_dir),
            "--output-dir", str(tmp_path / "run"), "--export", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="^error: --export-format adapters: the adapters library has no mpnet "
                                         "model classes"):
        run.main(argv)
    assert not (tmp_path / "run").exists()  # said before any training
