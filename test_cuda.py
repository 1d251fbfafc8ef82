"""The GPU path of run.py: torch.compile (inductor) with autocast across Progtuning's stage switches.

Each test runs on CUDA when a GPU is there (`pytest -m cuda` selects those, as gpu_check.sh does) and,
where the logic allows, also on the CPU with the aot_eager backend, so the tests themselves are exercised
in CI on every change and not first on a rare GPU. On a machine without CUDA the cuda cases are skipped
with that reason. Dropout is off throughout: compiled runs pad batches to multiples of 32, which would
draw other dropout masks than an eager run and hide the comparison in noise.

What is checked:
- compiled + autocast gives the eager autocast losses over two stage switches (tolerance below);
- parameters a stage freezes stay bitwise unchanged under compile;
- one graph per stage, whatever the batch shapes (the short last batch, several length buckets);
- a checkpoint written by a compiled GPU run has no `_orig_mod.` keys and resumes on the CPU;
- fp16 with a GradScaler, forced even where bf16 exists: trains, and skips a step whose gradients hold inf.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import model as M
import progtuning as P
import recipe
import run
import training
from test_run import TINY_CONFIG, results_of, run_args, tiny_dir  # noqa: F401  (tiny_dir is a fixture)

NO_CUDA = "needs a CUDA GPU (torch.cuda.is_available() is False here); gpu_check.sh runs these on one"
ON_CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                           reason=NO_CUDA)])
DEVICES = [ON_CUDA, "cpu"]

# Per-step training loss, compiled against eager, both under bf16 autocast. bf16 keeps 8 bits of
# mantissa (a relative rounding of 0.4% per operation), and the compiled run pads to other widths and
# fuses differently; 0.02 on a loss near 0.69 is a few such roundings, while training the wrong set of
# parameters after a stage switch moves the loss by more (lr 5e-3 on a 32-wide model).
LOSS_TOLERANCE = 0.02

# 4 blocks, 3 stages: parts {1}, {2}, {3, 4} (1-based); stage 1 trains 1-4, stage 2 2-4, stage 3 3-4.
FROZEN_AFTER_EPOCH = {1: [0], 2: [0, 1]}  # epoch -> 0-based blocks frozen in every later epoch
COMMON = ("--mode", "pt", "--epochs", 3, "--limit-train", 44, "--limit-eval", 16, "--batch-size", 8,
          "--lr", 5e-3, "--amp", "--amp-dtype", "bf16")


def compile_flags(device: str) -> tuple:
    # On the CPU the aot_eager backend: the same dynamo graphs and autograd split, no code generation
    # (inductor on a 2-core CPU would take minutes).
    return ("--device", device, "--compile") + (("--compile-backend", "aot_eager") if device == "cpu" else ())


@pytest.fixture(scope="module")
def no_dropout_dir(tiny_dir, tmp_path_factory) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("tiny-no-dropout")
    shutil.copytree(tiny_dir, folder, dirs_exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**TINY_CONFIG, "hidden_dropout_prob": 0.0,
                                                    "attention_probs_dropout_prob": 0.0}))
    return folder


def step_losses(out: Path) -> list[float]:
    """The training loss of every step (the runs log every step)."""
    lines = [json.loads(line) for line in (out / "seed-1" / "log.jsonl").read_text().splitlines()]
    return [entry["loss"] for entry in lines if entry["event"] == "progress"]


@pytest.fixture(scope="module", params=DEVICES)
def compiled_pt_run(request, no_dropout_dir, glue_dir, tmp_path_factory) -> dict:
    """One compiled Progtuning run (3 stages) on the device, with the model's parameters as they were at
    the end of each epoch (taken where run.py writes its checkpoint), and the eager run it is compared to."""
    device = request.param
    out = tmp_path_factory.mktemp(f"compiled-{device}")
    snapshots = []
    save = training.save_checkpoint

    def save_and_snapshot(path, model, *args, **kwargs):
        snapshots.append({n: p.detach().cpu().clone() for n, p in model.named_parameters()})
        return save(path, model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "save_checkpoint", save_and_snapshot)
        run.main(run_args(no_dropout_dir, out / "compiled", *COMMON, *compile_flags(device), glue_dir=glue_dir))
    run.main(run_args(no_dropout_dir, out / "eager", *COMMON, "--device", device, "--no-compile",
                      glue_dir=glue_dir))
    return {"device": device, "out": out, "snapshots": snapshots}


def test_compiled_autocast_losses_match_eager_across_stage_switches(compiled_pt_run, record_property):
    compiled = step_losses(compiled_pt_run["out"] / "compiled")
    eager = step_losses(compiled_pt_run["out"] / "eager")
    assert len(compiled) == len(eager) == 18  # 3 epochs of 6 steps: two stage switches inside
    worst = max(abs(c - e) for c, e in zip(compiled, eager))
    record_property("max_loss_difference", worst)
    assert worst <= LOSS_TOLERANCE, f"compiled {compiled} vs eager {eager}"
    assert eager[-1] != eager[0]  # it trained: the comparison is not of two constant sequences


def test_frozen_parameters_stay_bitwise_unchanged_under_compile(compiled_pt_run):
    snapshots = compiled_pt_run["snapshots"]
    assert len(snapshots) == 3  # one per epoch
    for epoch, frozen_blocks in FROZEN_AFTER_EPOCH.items():
        for later in range(epoch, 3):
            before, after = snapshots[epoch - 1], snapshots[later]
            for name in before:
                part, block = M.part_of(name)
                if part == "block" and block in frozen_blocks:
                    assert torch.equal(before[name], after[name]), f"{name} moved in epoch {later + 1}"
    for epoch in (1, 2):  # what trains in every stage moves in every epoch: E, blocks 3-4, the head
        for name in ("embeddings.word_embeddings.weight", "encoder.layer.3.output.dense.weight",
                     "classifier.weight"):
            assert not torch.equal(snapshots[epoch - 1][name], snapshots[epoch][name]), name


def test_no_recompile_at_a_stage_switch_whatever_the_batch_shapes(compiled_pt_run):
    record = results_of(compiled_pt_run["out"] / "compiled")["runs"][0]
    stages = record["compile"]
    assert [s["stage"] for s in stages] == [1, 2, 3]
    # Per-block compile: stage 1 builds the graph every block shares (static for the first batch shape, then
    # once more with dynamic sizes at the next one); stage 2 the variant for frozen blocks; stage 3 nothing.
    assert 1 <= stages[0]["graphs"] <= 2 and stages[1]["graphs"] == 1 and stages[2]["graphs"] == 0, stages
    shapes = {tuple(shape) for s in stages for shape in s["batch_shapes"]}
    # 44 rows in batches of 8 (five of 8, one of 4) over RTE's lengths padded to multiples of 32: several
    # shapes, and no recompile for them after stage 1.
    assert {b for b, _ in shapes} == {8, 4} and len({t for _, t in shapes}) >= 2, shapes
    assert all(s["seconds"] > 0 for s in stages if s["graphs"])


@pytest.mark.parametrize("device", DEVICES)
def test_plain_fine_tuning_compiles_once(device, no_dropout_dir, glue_dir, tmp_path):
    # ft's three "stages" train the same parameters: no reason to throw the graph away between epochs.
    args = [a if a != "pt" else "ft" for a in COMMON]
    run.main(run_args(no_dropout_dir, tmp_path, *args, *compile_flags(device), glue_dir=glue_dir))
    stages = results_of(tmp_path)["runs"][0]["compile"]
    assert len(stages) == 1 and stages[0]["stage"] == 1 and 1 <= stages[0]["graphs"] <= 2


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoint_of_a_compiled_run_resumes_on_the_cpu(device, no_dropout_dir, glue_dir, tmp_path):
    with pytest.raises(SystemExit) as stop:
        run.main(run_args(no_dropout_dir, tmp_path, *COMMON, *compile_flags(device), "--save-trained",
                          "--interrupt-after-steps", 8, glue_dir=glue_dir))
    assert stop.value.code == 130
    checkpoint = tmp_path / "seed-1" / "checkpoint.safetensors"
    with safe_open(str(checkpoint), framework="pt") as file:
        keys = list(file.keys())
    assert keys and not any("_orig_mod" in k for k in keys)
    run.main(run_args(no_dropout_dir, tmp_path, *COMMON, "--device", "cpu", "--no-compile", "--save-trained",
                      "--resume", glue_dir=glue_dir))
    record = results_of(tmp_path)["runs"][0]
    assert record["status"] == "complete" and len(record["epochs"]) == 3
    with safe_open(str(tmp_path / "seed-1" / "trained.safetensors"), framework="pt") as file:
        trained = list(file.keys())
    assert "classifier.weight" in trained and not any("_orig_mod" in k for k in trained)


# ------------------------------------------------------------------------------------------ fp16

def tiny_batch(device: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 2000, (8, 32), generator=generator)  # (B, T)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
             "token_type_ids": torch.zeros_like(input_ids), "labels": torch.tensor([0, 1] * 4)}
    return {k: v.to(device) for k, v in batch.items()}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_fp16_grad_scaler_skips_a_step_with_inf_gradients(no_dropout_dir, tmp_path):
    settings = run.Settings(task="rte", device="cuda", amp=True, amp_dtype="fp16", compile=True, lr=1e-3)
    assert recipe.autocast_dtype(settings) == torch.float16  # forced, even on a GPU that has bf16
    torch.manual_seed(0)
    model = M.from_pretrained(no_dropout_dir, head="classification", num_labels=2).to("cuda")
    stages = [[0, 1, 2, 3]]
    names = recipe.ever_trainable(model, stages, settings)
    counts = P.count_parameters(model, stages, "full", 1)
    stepper = training.Stepper(model, names, settings, counts, training.SeedRun(settings, 1, tmp_path, {}, 11))
    stepper.apply_stage(1, stages[0], None, 0, 0, 0)
    batch = tiny_batch("cuda")

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scale = stepper.scaler.get_scale()
    poison = model.classifier.weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    loss = stepper.step(batch, settings.lr)
    poison.remove()
    assert torch.isfinite(loss)  # the forward was fine; only the gradients overflowed
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), f"{name} moved in a step with inf gradients"
    assert not stepper.optimizer.state  # AdamW never stepped: no moments, no step count
    assert stepper.scaler.get_scale() == scale * stepper.scaler.get_backoff_factor()

    losses = [stepper.step(batch, settings.lr).item() for _ in range(10)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # ten steps on one batch: it learns it
    assert not torch.equal(model.classifier.weight, before["classifier.weight"])
    assert any(n.startswith("encoder.layer.0.") for n in names)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_fp16_run_end_to_end(no_dropout_dir, glue_dir, tmp_path):
    run.main(run_args(no_dropout_dir, tmp_path, "--mode", "pt", "--epochs", 2, "--limit-train", 40,
                      "--limit-eval", 16, "--batch-size", 16, "--device", "cuda", "--compile", "--amp-dtype",
                      "fp16", glue_dir=glue_dir))
    results = results_of(tmp_path)
    record = results["runs"][0]
    assert record["status"] == "complete"
    assert results["environment"]["autocast"] == "float16"
    with safe_open(str(tmp_path / "seed-1" / "checkpoint.safetensors"), framework="pt") as file:
        meta = json.loads(file.metadata()["progtuning"])
    assert meta["scaler"]["scale"] > 0  # the GradScaler's state travels with the checkpoint
