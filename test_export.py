"""export.py: a run's model in the Hugging Face layout, loaded by transformers (test-only dependency) with the
same logits as ours; LoRA merged for the export only; adapters refused; no folder overwritten by accident."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import data
import export
import model as M
import run
from progtuning import LoRALinear

transformers = pytest.importorskip("transformers", reason="the export is checked against transformers (dev)")

SHORT = ("--epochs", 1, "--limit-train", 16, "--limit-eval", 8, "--batch-size", 8, "--log-every", 100)


def train(minilm_dir: Path, glue_dir: Path, out: Path, task: str, *extra) -> dict:
    return run.main([str(a) for a in ("--task", task, "--mode", "pt", "--model", minilm_dir, "--data-dir", glue_dir,
                                      "--output-dir", out, *SHORT, *extra)])


def dev_pairs(glue_dir: Path, task: str, n: int = 8) -> tuple[list[str], list[str] | None]:
    examples = data.read_glue(task, "dev", glue_dir)[:n]
    return [e.text_a for e in examples], [e.text_b for e in examples] if examples[0].text_b is not None else None


def our_logits(model: M.Transformer, minilm_dir: Path, texts_a, texts_b) -> torch.Tensor:
    tokenizer = M.load_tokenizer(minilm_dir)
    examples = [data.Example(str(i), a, None if texts_b is None else texts_b[i], 0) for i, a in enumerate(texts_a)]
    encoded = data.encode_glue(examples, tokenizer, 128, regression=False)
    batch = next(data.batches(encoded, len(examples), tokenizer.pad_token_id))
    model.eval()
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def their_logits(folder: Path, texts_a, texts_b, question_answering: bool = False):
    auto = (transformers.AutoModelForQuestionAnswering if question_answering
            else transformers.AutoModelForSequenceClassification)
    hf_model = auto.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(texts_a, texts_b, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        return hf_model(**inputs), hf_model


EXTRA = {"full": (), "lora": (),
         # sam: no checkpoint kept, so the export reads trained.safetensors (indices and values)
         "sam": ("--sparsity", 0.01, "--burn-in-steps", 1, "--save-trained", "--no-keep-checkpoint")}


@pytest.mark.parametrize("task,method", [("rte", "full"), ("stsb", "full"), ("rte", "lora"), ("rte", "sam")])
def test_transformers_loads_the_export_with_our_logits(tmp_path, minilm_dir, glue_dir, task, method):
    at_the_end = task == "rte" and method != "sam"
    extra = ("--method", method, *EXTRA[method]) + (("--export", tmp_path / "hf") if at_the_end else ())
    train(minilm_dir, glue_dir, tmp_path / "run", task, *extra)
    if not at_the_end:  # after the fact, from the run folder, through the command line
        export.main([str(tmp_path / "run"), "--to", str(tmp_path / "hf")])
    model, settings, seed = export.load_run_model(tmp_path / "run")
    if method == "sam":  # the model as sparse.py rebuilds it, independently of export.py
        import sparse
        model = sparse.rebuild(tmp_path / "run" / "seed-1" / "trained.safetensors")
    texts_a, texts_b = dev_pairs(glue_dir, task)
    ours = our_logits(model, minilm_dir, texts_a, texts_b)
    output, hf_model = their_logits(tmp_path / "hf", texts_a, texts_b)
    torch.testing.assert_close(output.logits, ours, atol=1e-5, rtol=0)

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    if task == "stsb":
        assert config["num_labels"] == 1 and config["problem_type"] == "regression"
    else:
        assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
        assert config["problem_type"] == "single_label_classification"
    if method == "lora":  # merged into the export, never left merged in the model
        loras = [m for m in model.modules() if isinstance(m, LoRALinear)]
        assert loras and not any(m.merged for m in loras)
        assert any(m.lora_B.abs().sum() > 0 for m in loras)  # B·A really is in the exported weights
        export.export_model(model, settings, tmp_path / "again")
        # unmerge subtracts B·A again: the weights come back up to float rounding
        torch.testing.assert_close(our_logits(model, minilm_dir, texts_a, texts_b), ours, atol=1e-6, rtol=0)


def test_a_span_head_loads_as_question_answering(tmp_path, minilm_dir):
    torch.manual_seed(0)
    model = M.from_pretrained(minilm_dir, head="span")
    export.export_model(model, run.parse_args(["--task", "squad", "--model", str(minilm_dir)]), tmp_path / "qa")
    question, context = ["Who sat on the mat?"], ["The cat sat on the mat."]
    ours_start, ours_end = our_logits(model, minilm_dir, question, context)
    output, _ = their_logits(tmp_path / "qa", question, context, question_answering=True)
    torch.testing.assert_close(output.start_logits, ours_start, atol=1e-5, rtol=0)
    torch.testing.assert_close(output.end_logits, ours_end, atol=1e-5, rtol=0)


def test_adapters_are_refused_and_a_folder_is_not_overwritten(tmp_path, minilm_dir, glue_dir, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--task", "rte", "--method", "adapter", "--export", str(tmp_path / "hf")])
    assert "an adapter run cannot be exported" in capsys.readouterr().err
    model = M.from_pretrained(minilm_dir, head="classification", num_labels=2)

    def settings(method):
        return run.Settings(task="rte", method=method, model=str(minilm_dir))
    with pytest.raises(ValueError, match="a plain BERT/RoBERTa has no adapter layers"):
        export.export_model(model, settings("adapter"), tmp_path / "hf")

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty; pass --overwrite"):
        export.export_model(model, settings("full"), taken)
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
    with pytest.raises(SystemExit, match="--export: .*taken exists and is not empty"):
        train(minilm_dir, glue_dir, tmp_path / "run", "rte", "--export", taken)
    assert not (tmp_path / "run" / "results.json").exists()  # refused before training, not after
    export.export_model(model, settings("full"), taken, overwrite=True)
    assert "notes.txt" not in {p.name for p in taken.iterdir()} and (taken / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_predict_reproduces_the_runs_dev_predictions(tmp_path, minilm_dir, glue_dir, capsys):
    """From the export and from the run folder, on RTE's real dev file (the run scored its first 8 rows)."""
    import predict

    train(minilm_dir, glue_dir, tmp_path / "run", "rte", "--export", tmp_path / "hf")
    written = (tmp_path / "run" / "seed-1" / "predictions-rte.tsv").read_text().splitlines()
    lines = (glue_dir / "RTE" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "dev8.tsv").write_text("\n".join(lines[:9]) + "\n", encoding="utf-8")
    for source in (tmp_path / "hf", tmp_path / "run"):
        predict.main(["--model", str(source), "--task", "rte", "--input", str(tmp_path / "dev8.tsv"),
                      "--output", str(tmp_path / "out.tsv")])
        rows = [line.split("\t") for line in (tmp_path / "out.tsv").read_text().splitlines()]
        assert rows[0] == ["index", "prediction", "p(entailment)", "p(not_entailment)"]
        assert ["\t".join(row[:2]) for row in rows] == written
        assert all(abs(float(row[2]) + float(row[3]) - 1) < 1e-5 for row in rows[1:])

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"sentence1": "A man sleeps.", "sentence2": "Someone rests."}) + "\n"
                     + '{"text_a": "only one side"}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"pairs.jsonl:2: expected an object with 'text_a' and 'text_b'"):
        predict.main(["--model", str(tmp_path / "hf"), "--task", "rte", "--input", str(pairs)])
    plain = tmp_path / "pairs.tsv"
    plain.write_text("A man sleeps.\tSomeone rests.\nno tab here\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"pairs.tsv:2: expected 2 tab-separated field\(s\), found 1"):
        predict.main(["--model", str(tmp_path / "hf"), "--task", "rte", "--input", str(plain)])
