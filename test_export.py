"""export.py: a run's model in the formats other tools load, loaded by them (test-only dependencies) with the same
logits as ours, each time through the Python lines its model card gives. The hf folder in transformers (LoRA
merged for the export only); a LoRA run as a peft adapter on the unchanged public base model; the model card
read back with huggingface_hub's own parser and checked against the record; formats a run cannot take refused
in one line; no folder overwritten by accident. The adapters-library format is checked in its own environment
(test_adapters_export.py)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import data
import export
import model as M
import model_card
import progtuning as P
import run
from conftest import build_tiny_bert
from progtuning import LoRALinear

transformers = pytest.importorskip("transformers", reason="the export is checked against transformers (dev)")

SHORT = ("--epochs", 1, "--limit-train", 16, "--limit-eval", 8, "--batch-size", 8, "--log-every", 100)
# The exports' logits against ours, float32 on both sides: tight enough that an adapter computed with the tanh
# form of gelu instead of the exact one fails it.
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_dir) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


def train(model_dir: Path, glue_dir: Path, out: Path, task: str, *extra) -> dict:
    return run.main([str(a) for a in ("--task", task, "--mode", "pt", "--model", model_dir, "--data-dir", glue_dir,
                                      "--output-dir", out, *SHORT, *extra)])


def dev_pairs(glue_dir: Path, task: str, n: int = 8) -> tuple[list[str], list[str] | None]:
    examples = data.read_glue(task, "dev", glue_dir)[:n]
    return [e.text_a for e in examples], [e.text_b for e in examples] if examples[0].text_b is not None else None


def our_logits(model: M.Transformer, model_dir: Path, texts_a, texts_b, max_length: int = 128) -> torch.Tensor:
    tokenizer = M.load_tokenizer(model_dir)
    examples = [data.Example(str(i), a, None if texts_b is None else texts_b[i], 0) for i, a in enumerate(texts_a)]
    encoded = data.encode_glue(examples, tokenizer, max_length, regression=False)
    batch = next(data.batches(encoded, len(examples), tokenizer.pad_token_id))
    model.eval()
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def card_code(folder: Path) -> str:
    """The Python lines the folder's model card gives for loading it."""
    return re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(encoding="utf-8"), re.S).group(1)


def their_logits(folder: Path, texts_a, texts_b, max_length: int = 128):
    """The folder loaded as its card says (the card's `model` and `tokenizer`), run on the texts."""
    namespace: dict = {}
    exec(card_code(folder), namespace)
    loaded = namespace["model"].eval()
    inputs = namespace["tokenizer"](texts_a, texts_b, padding=True, truncation=True, max_length=max_length,
                                    return_tensors="pt")
    with torch.no_grad():
        return loaded(**inputs), loaded


def card_metadata(folder: Path) -> dict:
    from huggingface_hub import ModelCard  # transformers' own dependency: the Hub's card parser

    return ModelCard.load(folder / "README.md").data.to_dict()


# --------------------------------------------------------------------------------------------------- hf

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
    torch.testing.assert_close(output.logits, ours, atol=ATOL, rtol=0)

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["progtuning"]["format"] == "hf"
    if task == "stsb":
        assert config["num_labels"] == 1 and config["problem_type"] == "regression"
    else:
        assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
        assert config["problem_type"] == "single_label_classification"
    assert card_metadata(tmp_path / "hf")["library_name"] == "transformers"
    if method == "lora":  # merged into the export, never left merged in the model
        loras = [m for m in model.modules() if isinstance(m, LoRALinear)]
        assert loras and not any(m.merged for m in loras)
        assert any(m.lora_B.abs().sum() > 0 for m in loras)  # B·A really is in the exported weights
        export.export_model(model, export.read_record(tmp_path / "run"), seed, tmp_path / "again")
        # unmerge subtracts B·A again: the weights come back up to float rounding
        torch.testing.assert_close(our_logits(model, minilm_dir, texts_a, texts_b), ours, atol=1e-6, rtol=0)


def test_a_span_head_loads_as_question_answering(tmp_path, minilm_dir):
    torch.manual_seed(0)
    model = M.from_pretrained(minilm_dir, head="span")
    settings = run.parse_args(["--task", "squad", "--model", str(minilm_dir)])
    export.export_model(model, {"settings": dataclasses.asdict(settings)}, 1, tmp_path / "qa")
    question, context = ["Who sat on the mat?"], ["The cat sat on the mat."]
    ours_start, ours_end = our_logits(model, minilm_dir, question, context)
    output, _ = their_logits(tmp_path / "qa", question, context)
    torch.testing.assert_close(output.start_logits, ours_start, atol=ATOL, rtol=0)
    torch.testing.assert_close(output.end_logits, ours_end, atol=ATOL, rtol=0)
    assert card_metadata(tmp_path / "qa")["datasets"] == ["rajpurkar/squad"]


# ------------------------------------------------------------------------------------------------- peft

def lora_effect(model: M.Transformer, model_dir: Path, texts_a, texts_b, max_length: int = 128) -> float:
    """How far the LoRA update moves the logits: the model's against the same model with every B zeroed."""
    trained = our_logits(model, model_dir, texts_a, texts_b, max_length)
    with torch.no_grad():
        saved = [m.lora_B.clone() for m in model.modules() if isinstance(m, LoRALinear)]
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.zero_()
        without = our_logits(model, model_dir, texts_a, texts_b, max_length)
        for m, b in zip([m for m in model.modules() if isinstance(m, LoRALinear)], saved):
            m.lora_B.copy_(b)
    return (trained - without).abs().max().item()


def check_peft_export(folder: Path, run_dir: Path, base_dir: Path, glue_dir: Path, task: str,
                      max_length: int = 128) -> float:
    """peft's PeftModel on the base model, loaded as the card says, gives our logits on the task's dev rows (and
    the LoRA update is far larger than the tolerance, so a missing one would show); returns max |difference|."""
    peft = pytest.importorskip("peft", reason="the peft export is checked against peft (dev)")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 8.0, 0.0)
    assert config["base_model_name_or_path"] == str(base_dir) and config["use_rslora"] is False
    model, _, _ = export.load_run_model(run_dir)
    keys = load_file(folder / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.") for k in keys) and not (folder / "model.safetensors").exists()
    assert sum(k.endswith(".lora_A.weight") for k in keys) == 2 * len(model.blocks)  # query and value
    texts_a, texts_b = dev_pairs(glue_dir, task)
    assert lora_effect(model, base_dir, texts_a, texts_b, max_length) > 100 * ATOL
    ours = our_logits(model, base_dir, texts_a, texts_b, max_length)
    output, loaded = their_logits(folder, texts_a, texts_b, max_length)
    assert isinstance(loaded, peft.PeftModel)
    torch.testing.assert_close(output.logits, ours, atol=ATOL, rtol=0)
    return (output.logits - ours).abs().max().item()


@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_a_lora_run_loads_as_a_peft_adapter_with_our_logits(tmp_path, minilm_dir, glue_dir, task, capsys):
    """RTE exported at the end of training (run.py --export-format peft), STS-B after it (export.py --format peft);
    a large learning rate so that B·A moves the logits far beyond the tolerance."""
    extra = ("--method", "lora", "--lr", 1e-2)
    if task == "rte":
        train(minilm_dir, glue_dir, tmp_path / "run", task, *extra, "--export", tmp_path / "peft", "--export-format",
              "peft")
    else:
        train(minilm_dir, glue_dir, tmp_path / "run", task, *extra)
        export.main([str(tmp_path / "run"), "--to", str(tmp_path / "peft"), "--format", "peft"])
    difference = check_peft_export(tmp_path / "peft", tmp_path / "run", minilm_dir, glue_dir, task)
    with capsys.disabled():
        print(f"\nMiniLM {task}: peft logits against ours, max |difference| {difference:.2e}")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["query", "value"] and config["modules_to_save"] == ["classifier", "pooler"]
    metadata = card_metadata(tmp_path / "peft")
    assert metadata["library_name"] == "peft" and metadata["tags"] == ["progtuning", "lora"]
    assert "base_model" not in metadata  # a local folder, which the card names in a comment and in its text
    assert f"The base model was the local folder `{minilm_dir}`" in (tmp_path / "peft" / "README.md").read_text()

    import predict
    (tmp_path / "pair.tsv").write_text("A man sleeps.\tSomeone rests.\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"is a peft adapter \(export.py --format peft\), which holds no whole"):
        predict.main(["--model", str(tmp_path / "peft"), "--task", task, "--input", str(tmp_path / "pair.tsv")])


def test_a_lora_span_head_loads_as_a_peft_question_answering_adapter(tmp_path, minilm_dir):
    """No training: LoRA's B drawn at random (the span head is new anyway), then exported, loaded and compared on
    a question and its context, whose token types BERT reads."""
    peft = pytest.importorskip("peft", reason="the peft export is checked against peft (dev)")
    torch.manual_seed(0)
    model = P.add_method(M.from_pretrained(minilm_dir, head="span"), "lora")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(std=0.5)
    settings = run.parse_args(["--task", "squad", "--method", "lora", "--model", str(minilm_dir)])
    export.export_model(model, {"settings": dataclasses.asdict(settings)}, 1, tmp_path / "qa", "peft")
    config = json.loads((tmp_path / "qa" / "adapter_config.json").read_text())
    assert config["task_type"] is None and config["modules_to_save"] == ["qa_outputs"]
    question, context = ["Who sat on the mat?"], ["The cat sat on the mat."]
    ours_start, ours_end = our_logits(model, minilm_dir, question, context)
    output, loaded = their_logits(tmp_path / "qa", question, context)
    assert isinstance(loaded, peft.PeftModel)
    torch.testing.assert_close(output.start_logits, ours_start, atol=ATOL, rtol=0)
    torch.testing.assert_close(output.end_logits, ours_end, atol=ATOL, rtol=0)


# -------------------------------------------------------------------------------------------- the card

def test_the_card_says_what_the_record_says(tmp_path, tiny_dir, glue_dir):
    """An interrupted run and its --resume, exported: the card's metadata, stage diagram, counts, per-epoch dev
    scores, both commands and the commit are the record's."""
    out = tmp_path / "run"
    args = ["--task", "rte", "--model", str(tiny_dir), "--data-dir", str(glue_dir), "--output-dir", str(out),
            "--epochs", "2", "--limit-train", "16", "--limit-eval", "8", "--batch-size", "8", "--lr", "1e-3"]
    with pytest.raises(SystemExit):
        run.main(args + ["--interrupt-after-steps", "3"])
    run.main(args + ["--resume"])
    export.main([str(out), "--to", str(tmp_path / "hf")])
    record = export.read_record(out)
    text = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")

    assert card_metadata(tmp_path / "hf") == {"library_name": "transformers", "tags": ["progtuning", "full"],
                                               "datasets": ["nyu-mll/glue"], "metrics": ["accuracy"]}
    assert f'# base_model: none; the run\'s base model was the local folder "{tiny_dir}"' in text
    assert text.count("```python") == 1 and "# RTE: full fine-tuned with Progtuning" in text
    stages = [[b - 1 for b in blocks] for blocks in record["stages"]]
    assert P.stage_diagram(stages, 4, 2, model_card.recorded_counts(record)) in text
    assert (f"{record['updated_params']:,} (per epoch {record['updated_params_per_epoch'][0]:,}, "
            f"{record['updated_params_per_epoch'][1]:,}), against {record['baseline_updated_params']:,} for full "
            f"without Progtuning: {100 * record['reduction']:.1f}% fewer") in text
    for epoch in record["runs"][0]["epochs"]:
        assert (f"| {epoch['epoch']} | {epoch['stage']} | {epoch['trainable_blocks'][0]}-4 | "
                f"{epoch['train_loss']:.4f} | {epoch['metrics']['rte']['accuracy']:.2f} |") in text
    assert len(record["commands"]) == 2 and record["commands"][1][-1] == "--resume"
    for argv in record["commands"]:
        assert f"python run.py {shlex.join(argv)}\n" in text
    assert f"Project commit: `{record['environment']['git_commit']}`." in text
    assert "- trained on the first 16 training rows (`--limit-train`)" in text

    # the same record with a hub name for its base model, made by a two-process torchrun job, and one that
    # predates the recorded command: metadata and text follow
    record["settings"]["model"], record["environment"]["processes"] = "bert-base-uncased", 2
    labels = export.label_config(export.load_run_model(out)[0], "rte")
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "README.md").write_text(model_card.render(record, 1, "peft", Path("out"), 4, labels))
    assert card_metadata(tmp_path / "card")["base_model"] == "bert-base-uncased"
    assert f"torchrun --nproc-per-node 2 run.py {shlex.join(record['commands'][0])}" in \
        (tmp_path / "card" / "README.md").read_text()
    del record["commands"], record["environment"]
    assert "This record holds no command" in model_card.render(record, 1, "hf", Path("out"), 4, labels)


# ------------------------------------------------------------------------------------- refusals, folders

@pytest.mark.parametrize("argv,message", [
    (["--method", "full", "--export-format", "peft"], "--export-format peft holds lora runs only; full runs "
                                                      "export as --export-format hf"),
    (["--method", "adapter", "--export-format", "hf"], "--export-format hf holds full/bitfit/lora/sam/random/"
                                                       "magnitude runs only; adapter runs export as "
                                                       "--export-format adapters"),
    (["--method", "lora", "--export-format", "peft", "--random-init"], "which no base model holds"),
])
def test_a_format_the_method_cannot_take_is_one_line(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        run.parse_args(["--task", "rte", "--export", str(tmp_path / "x"), *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.parse_args(["--task", "rte", "--export-format", "hf"])
    assert "--export-format applies with --export DIR" in capsys.readouterr().err


def test_export_py_names_the_formats_a_run_supports(tmp_path, tiny_dir, glue_dir):
    train(tiny_dir, glue_dir, tmp_path / "run", "rte", "--method", "bitfit")
    for fmt, message in (("peft", "--format peft holds lora runs only; bitfit runs export as --format hf"),
                         ("adapters", "--format adapters holds adapter runs only; bitfit runs export as "
                                      "--format hf"),
                         ("onnx", "--format onnx: unknown format; expected one of hf, peft, adapters")):
        with pytest.raises(SystemExit, match=f"^error: {re.escape(message)}$"):
            export.main([str(tmp_path / "run"), "--to", str(tmp_path / "out"), "--format", fmt])
    assert not (tmp_path / "out").exists()


def test_a_folder_is_not_overwritten(tmp_path, minilm_dir, glue_dir):
    model = M.from_pretrained(minilm_dir, head="classification", num_labels=2)
    record = {"settings": dataclasses.asdict(run.Settings(task="rte", method="full", model=str(minilm_dir)))}
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty; pass --overwrite"):
        export.export_model(model, record, 1, taken)
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
    with pytest.raises(SystemExit, match="--export: .*taken exists and is not empty"):
        train(minilm_dir, glue_dir, tmp_path / "run", "rte", "--export", taken)
    assert not (tmp_path / "run" / "results.json").exists()  # refused before training, not after
    export.export_model(model, record, 1, taken, overwrite=True)
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
