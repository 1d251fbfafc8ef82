"""export.py --format adapters: an Adapter run's folder loaded by the adapter-hub `adapters` library as the model
card says, with our logits. adapters pins an older transformers than the one this project tests with, so it lives
in a Python environment of its own: PROGTUNING_ADAPTERS_PYTHON names that interpreter (default
../.venv-adapters/bin/python beside the checkout; docs/export-predict.md says how to make it), and a small script
runs there in a subprocess. Where that environment is absent those tests are skipped with the reason; the
layout of the files is checked here in any case."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import data
import export
import model as M
import progtuning as P
import run
from conftest import HANG

transformers = pytest.importorskip("transformers", reason="the tiny RoBERTa is made with transformers (dev)")

HERE = Path(__file__).resolve().parent
ATOL = 1e-5  # as test_export.py
# Run in the adapters environment: load the folder with the lines of its card, then the logits of the saved batch
# with the adapter and, to show that it is used, without it; and how far each loaded adapter's non-linearity is
# from the exact gelu (the tanh form would move these small test models' logits by less than ATOL).
CHECK = '''
import re, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
folder, inputs, output = map(Path, sys.argv[1:])
code = re.search(r"```python\\n(.*?)```", (folder / "README.md").read_text(encoding="utf-8"), re.S).group(1)
namespace = {}
exec(code, namespace)
model = namespace["model"].eval()
batch = load_file(str(inputs))
grid = torch.linspace(-6, 6, 1201)
activations = [m.adapter_down[-1] for m in model.modules() if hasattr(m, "adapter_up")]  # Linear, activation
gelu_error = max((a(grid) - torch.nn.functional.gelu(grid)).abs().max() for a in activations)
with torch.no_grad():
    logits = model(**batch).logits
    model.set_active_adapters(None)
    without = model(**batch).logits
save_file({"logits": logits.contiguous(), "without_adapter": without.contiguous(),
           "adapters": torch.tensor(len(activations)), "gelu_error": gelu_error}, str(output))
'''


@pytest.fixture(scope="module")
def adapters_python() -> Path:
    path = Path(os.environ.get("PROGTUNING_ADAPTERS_PYTHON") or HERE.parent / ".venv-adapters" / "bin" / "python")
    if not path.is_file():
        pytest.skip(f"no Python with the adapters library at {path} (docs/export-predict.md says how to make one; "
                    "or set PROGTUNING_ADAPTERS_PYTHON)")
    probe = subprocess.run([str(path), "-c", "import adapters, safetensors, torch"], capture_output=True, text=True,
                           timeout=HANG)
    if probe.returncode != 0:
        pytest.skip(f"{path} cannot import adapters, safetensors and torch: {probe.stderr.strip()[-300:]}")
    return path


def adapters_logits(python: Path, folder: Path, batch: dict[str, torch.Tensor], work: Path) -> dict:
    save_file({k: v.contiguous() for k, v in batch.items()}, str(work / "inputs.safetensors"))
    (work / "check.py").write_text(CHECK, encoding="utf-8")
    proc = subprocess.run([str(python), str(work / "check.py"), str(folder), str(work / "inputs.safetensors"),
                           str(work / "logits.safetensors")], capture_output=True, text=True, timeout=HANG,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(work / "logits.safetensors")


def dev_batch(model_dir: Path, glue_dir: Path, task: str) -> dict[str, torch.Tensor]:
    tokenizer = M.load_tokenizer(model_dir)
    encoded = data.encode_glue(data.read_glue(task, "dev", glue_dir)[:8], tokenizer, 128, regression=task == "stsb")
    batch = next(data.batches(encoded, 8, tokenizer.pad_token_id))
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def compare(ours: torch.Tensor, theirs: dict, blocks: int) -> float:
    assert theirs["adapters"] == 2 * blocks and theirs["gelu_error"] == 0  # every adapter, with the exact gelu
    torch.testing.assert_close(theirs["logits"], ours, atol=ATOL, rtol=0)
    assert (theirs["without_adapter"] - ours).abs().max() > 100 * ATOL  # the adapter is there, and it matters
    return (theirs["logits"] - ours).abs().max().item()


@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_a_minilm_adapter_run_loads_in_adapters_with_our_logits(tmp_path, minilm_dir, glue_dir, adapters_python,
                                                                 task, capsys):
    """RTE exported at the end of training (an Adapter run's default format), STS-B after it by export.py; a
    large learning rate so that the adapters and LayerNorms move far."""
    argv = ["--task", task, "--method", "adapter", "--model", str(minilm_dir), "--data-dir", str(glue_dir),
            "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--limit-train", "16", "--limit-eval", "8",
            "--batch-size", "8", "--lr", "1e-2"]
    if task == "rte":
        run.main(argv + ["--export", str(tmp_path / "out")])
    else:
        run.main(argv)
        export.main([str(tmp_path / "run"), "--to", str(tmp_path / "out"), "--format", "adapters"])
    model, _, _ = export.load_run_model(tmp_path / "run")
    batch = dev_batch(minilm_dir, glue_dir, task)
    with torch.no_grad():
        ours = model.eval()(**batch)
    difference = compare(ours, adapters_logits(adapters_python, tmp_path / "out", batch, tmp_path), 6)
    with capsys.disabled():
        print(f"\nMiniLM {task}: adapters logits against ours, max |difference| {difference:.2e}")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["progtuning"]["format"] == "adapters"


def test_a_roberta_adapter_loads_in_adapters_with_our_logits(tmp_path, adapters_python, capsys):
    """A tiny random RoBERTa with random adapters and LayerNorms, and a byte-level BPE tokenizer of its own (the
    card loads one): RoBERTa's names and its own positions."""
    from tokenizers.implementations import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(["The cat sat on the mat.", "A man sleeps; someone rests."] * 20, vocab_size=300,
                                min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    (tmp_path / "base").mkdir()
    trainer.save_model(str(tmp_path / "base"))
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=37, max_position_embeddings=40, type_vocab_size=1)
    transformers.RobertaModel(config).save_pretrained(tmp_path / "base", safe_serialization=True)
    model = P.add_method(M.from_pretrained(tmp_path / "base", head="classification", num_labels=3), "adapter",
                         P.MethodOptions(adapter_size=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adapter." in name or ".LayerNorm." in name:
                param.add_(torch.randn_like(param) * 0.5)
    settings = run.Settings(task="mnli", method="adapter", model=str(tmp_path / "base"), adapter_size=8)
    export.export_model(model, {"settings": dataclasses.asdict(settings)}, 1, tmp_path / "out")
    ids = torch.randint(3, 300, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, 3:] = 0, 0
    ids[mask == 0] = 1  # RoBERTa's padding id
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        ours = model.eval()(**batch)
    difference = compare(ours, adapters_logits(adapters_python, tmp_path / "out", batch, tmp_path), 2)
    with capsys.disabled():
        print(f"\ntiny RoBERTa: adapters logits against ours, max |difference| {difference:.2e}")


def test_the_adapters_layout(tmp_path, minilm_dir):
    """Without the adapters environment too: the adapter's files under the names and configuration the library
    reads, the rest of the model in the transformers folder beside them, the card's loading lines."""
    torch.manual_seed(0)
    model = P.add_method(M.from_pretrained(minilm_dir, head="classification", num_labels=2), "adapter")
    settings = run.Settings(task="rte", method="adapter", model=str(minilm_dir))
    export.export_model(model, {"settings": dataclasses.asdict(settings)}, 1, tmp_path / "out")
    adapter = load_file(tmp_path / "out" / "adapter" / "adapter.safetensors")
    assert len(adapter) == 6 * 2 * 4  # 6 blocks, 2 adapters each, down and up with their biases
    assert torch.equal(adapter["bert.encoder.layer.2.attention.output.adapters.rte.adapter_down.0.weight"],
                       model.encoder.layer[2].attention.output.adapter.down.weight)
    assert torch.equal(adapter["bert.encoder.layer.5.output.adapters.rte.adapter_up.bias"],
                       model.encoder.layer[5].output.adapter.up.bias)
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert config["version"] == export.ADAPTERS_VERSION and config["name"] == "rte"
    assert config["config"] == {**export.ADAPTERS_CONFIG, "reduction_factor": 6.0}  # 384 / 64
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert not [k for k in weights if "adapter" in k] and "bert.encoder.layer.0.output.LayerNorm.weight" in weights
    card = (tmp_path / "out" / "README.md").read_text()
    assert "adapters.init(model)\nmodel.load_adapter(" in card and "library_name: adapter-transformers" in card

    import predict
    (tmp_path / "pair.tsv").write_text("A man sleeps.\tSomeone rests.\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="is an export in the adapters format, whose adapter layers predict.py"):
        predict.main(["--model", str(tmp_path / "out"), "--task", "rte", "--input", str(tmp_path / "pair.tsv")])
    with pytest.raises(ValueError, match="a bottleneck of 13 in a 384-wide model has no reduction factor"):
        export.adapters_config(model, dataclasses.replace(settings, adapter_size=13))
