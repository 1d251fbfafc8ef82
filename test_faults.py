"""Bad inputs and faults, as a new user meets them: each ends in one clear line on stderr (no traceback),
an interrupt at any step resumes bitwise, and a run whose weights go non-finite is never recorded as done."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import export
import run
from conftest import HANG
from test_run import TINY_CONFIG, results_of, run_args, tiny_dir  # noqa: F401  (tiny_dir is a fixture)

HERE = Path(__file__).resolve().parent
SHORT = ("--limit-train", 16, "--limit-eval", 8, "--batch-size", 8, "--lr", 1e-3, "--save-trained")  # 2 steps/epoch


def command(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / script), *map(str, args)], capture_output=True, text=True,
                          timeout=HANG, cwd=HERE)


def one_line(proc: subprocess.CompletedProcess, *fragments: str, code: int | None = None) -> str:
    """The single stderr line of a failed command, checked to hold each fragment."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error"), proc.stderr[-3000:]
    if code is not None:
        assert proc.returncode == code, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def copy_model(tiny_dir: Path, folder: Path, **config) -> Path:
    shutil.copytree(tiny_dir, folder)
    if config:
        (folder / "config.json").write_text(json.dumps({**TINY_CONFIG, **config}))
    return folder


# ------------------------------------------------------------------------------------ resume, anywhere

@pytest.mark.parametrize("stop_after", [2, 4], ids=["last step of epoch 1", "last step of the last epoch"])
def test_an_interrupt_on_an_epochs_last_step_resumes_bitwise(tmp_path, tiny_dir, glue_dir, stop_after):
    common = ("--epochs", 2, *SHORT)
    run.main(run_args(tiny_dir, tmp_path / "straight", *common, glue_dir=glue_dir))
    out = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stop:
        run.main(run_args(tiny_dir, out, *common, "--interrupt-after-steps", stop_after, glue_dir=glue_dir))
    assert stop.value.code == 130 and results_of(out)["runs"][0]["status"] == "interrupted"
    for _ in range(2):  # a second --resume of the finished run changes nothing
        run.main(run_args(tiny_dir, out, *common, "--resume", glue_dir=glue_dir))
    straight, resumed = results_of(tmp_path / "straight")["runs"][0], results_of(out)["runs"][0]
    assert resumed["status"] == "complete" and resumed["final"] == straight["final"]
    for key in ("metrics", "train_loss", "trainable_blocks", "stage"):
        assert [e[key] for e in resumed["epochs"]] == [e[key] for e in straight["epochs"]], key
    a, b = (load_file(folder / "seed-1" / "trained.safetensors") for folder in (tmp_path / "straight", out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupt_on_sams_last_burn_in_batch_resumes_bitwise(tmp_path, tiny_dir, glue_dir):
    common = ("--method", "sam", "--epochs", 2, "--burn-in-steps", 3, "--sparsity", 0.05, *SHORT)
    run.main(run_args(tiny_dir, tmp_path / "straight", *common, glue_dir=glue_dir))
    out = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stop:
        run.main(run_args(tiny_dir, out, *common, "--interrupt-after-steps", 3, glue_dir=glue_dir))
    assert stop.value.code == 130
    run.main(run_args(tiny_dir, out, *common, "--resume", glue_dir=glue_dir))
    straight, resumed = results_of(tmp_path / "straight")["runs"][0], results_of(out)["runs"][0]
    assert resumed["mask"]["entries_per_tensor"] == straight["mask"]["entries_per_tensor"]
    assert resumed["final"] == straight["final"]
    a, b = (load_file(folder / "seed-1" / "trained.safetensors") for folder in (tmp_path / "straight", out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ numbers

def test_a_learning_rate_adamw_cannot_take_is_refused(tmp_path):
    one_line(command("run.py", "--task", "rte", "--lr", "1e38", "--output-dir", tmp_path / "o"),
             "--lr must be in (0, 1]", "got 1e+38", code=2)


@pytest.mark.parametrize("flag,value,method", [("--lr", "inf", "full"), ("--lora-alpha", "nan", "lora"),
                                               ("--warmup-ratio", "nan", "full"), ("--weight-decay", "inf", "full"),
                                               ("--sparsity", "nan", "sam")])
def test_a_non_finite_flag_is_refused_by_name(tmp_path, flag, value, method):
    proc = command("run.py", "--task", "rte", "--method", method, flag, value, "--output-dir", tmp_path / "o")
    one_line(proc, f"argument {flag}: must be a finite number, got '{value}'", code=2)


def test_a_run_whose_loss_goes_non_finite_is_stopped_and_its_epoch_never_recorded(tmp_path, tiny_dir, glue_dir):
    # finite weights whose forward overflows: a bias near float32's largest value
    folder = copy_model(tiny_dir, tmp_path / "model")
    weights = load_file(folder / "model.safetensors")
    weights["encoder.layer.3.output.dense.bias"].fill_(3e38)
    save_file(weights, str(folder / "model.safetensors"))
    out = tmp_path / "diverged"
    proc = command("run.py", *run_args(folder, out, "--epochs", 2, *SHORT, glue_dir=glue_dir))
    one_line(proc, "loss is nan in steps 1-1 of epoch 1 (stage 1)", "lower --lr (now 0.001)", code=1)
    record = results_of(out) if (out / "results.json").exists() else {"runs": []}
    assert all(not r["epochs"] and r["status"] != "complete" for r in record["runs"])
    assert not (out / "seed-1" / "predictions-rte.tsv").exists()  # never evaluated


# ------------------------------------------------------------------------------------ model files

@pytest.mark.parametrize("config,fragment", [
    ({"num_attention_heads": 0}, "num_attention_heads is 0; expected a whole number >= 1"),
    ({"num_attention_heads": -2}, "num_attention_heads is -2; expected a whole number >= 1"),
    ({"hidden_size": "384"}, "hidden_size is '384' (str); expected a whole number"),
    ({"layer_norm_eps": -1}, "layer_norm_eps is -1; expected a small positive number"),
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob is 1.5; expected a probability in [0, 1)"),
])
def test_a_bad_config_field_is_named_when_config_json_is_read(tmp_path, tiny_dir, glue_dir, config, fragment):
    folder = copy_model(tiny_dir, tmp_path / "model", **config)
    proc = command("run.py", *run_args(folder, tmp_path / "out", *SHORT, glue_dir=glue_dir))
    one_line(proc, str(folder / "config.json"), fragment)
    assert not (tmp_path / "out").exists()


def test_token_ids_beyond_vocab_size_are_one_line(tmp_path, tiny_dir, glue_dir):
    folder = copy_model(tiny_dir, tmp_path / "model", vocab_size=1000)
    (folder / "model.safetensors").unlink()
    proc = command("run.py", *run_args(folder, tmp_path / "out", *SHORT, "--random-init", glue_dir=glue_dir))
    one_line(proc, "the tokenizer gives token id", "config.json's vocab_size is 1000")


def test_weights_are_checked_before_the_data_and_leave_no_folder(tmp_path, tiny_dir, glue_dir):
    garbage = copy_model(tiny_dir, tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00" * 100)
    proc = command("run.py", *run_args(garbage, tmp_path / "a", *SHORT, glue_dir=glue_dir))
    one_line(proc, str(garbage), "not readable safetensors")
    assert not (tmp_path / "a").exists() and "training rows" not in proc.stdout  # nothing was tokenized

    integers = copy_model(tiny_dir, tmp_path / "integers")
    weights = load_file(integers / "model.safetensors")
    weights["encoder.layer.1.output.dense.weight"] = weights["encoder.layer.1.output.dense.weight"].long()
    save_file(weights, str(integers / "model.safetensors"))
    proc = command("run.py", *run_args(integers, tmp_path / "b", *SHORT, glue_dir=glue_dir))
    one_line(proc, "encoder.layer.1.output.dense.weight is I64", "not floating point")
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------ the other tools

def test_sparse_rebuild_never_replaces_a_folder_unasked(tmp_path, tiny_dir, glue_dir):
    run.main(run_args(tiny_dir, tmp_path / "run", "--method", "random", "--epochs", 1, "--sparsity", 0.05, *SHORT,
                      glue_dir=glue_dir))
    trained = tmp_path / "run" / "seed-1" / "trained.safetensors"
    out = tmp_path / "folder"
    out.mkdir()
    (out / "model.safetensors").write_text("someone else's")
    one_line(command("sparse.py", "rebuild", trained, "--out", out), str(out), "--overwrite")
    assert (out / "model.safetensors").read_text() == "someone else's"
    assert command("sparse.py", "rebuild", trained, "--out", out, "--overwrite").returncode == 0
    assert (out / "config.json").is_file() and not list(tmp_path.glob(".folder.*"))  # written via a temp folder
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"garbage")
    one_line(command("sparse.py", "rebuild", garbage, "--out", tmp_path / "g"), str(garbage))


def test_bench_names_a_missing_model_folder(tmp_path):
    one_line(command("bench.py", "--model", tmp_path / "nowhere"), "--model", "nowhere", "config.json")


def test_predict_names_the_file_and_line_and_checks_the_output_folder_first(tmp_path, tiny_dir, glue_dir):
    run.main(run_args(tiny_dir, tmp_path / "run", "--epochs", 1, *SHORT, glue_dir=glue_dir))
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("une phrase\tune autre\n".encode() + "déjà vu\tça va\n".encode("latin-1"))
    one_line(command("predict.py", "--model", tmp_path / "run", "--task", "rte", "--input", latin1),
             f"{latin1}:2", "not UTF-8")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("A man sleeps.\tA person rests.\nIt rains.\tThe sun shines.\n\n")  # one blank line at the end
    done = command("predict.py", "--model", tmp_path / "run", "--task", "rte", "--input", pairs)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 3  # the header and two predictions
    missing = tmp_path / "no" / "such" / "out.tsv"
    proc = command("predict.py", "--model", tmp_path / "run", "--task", "rte", "--input", pairs, "--output", missing)
    one_line(proc, "--output", str(missing.parent), "does not exist")
    assert "examples in" not in proc.stderr  # refused before predicting


def test_report_skips_a_foreign_results_file_with_a_warning(tmp_path, tiny_dir, glue_dir):
    run.main(run_args(tiny_dir, tmp_path / "ours", "--epochs", 1, *SHORT, glue_dir=glue_dir))
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "results.json").write_text(json.dumps({"accuracy": 0.9}))
    done = command("report.py", tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"WARNING: {tmp_path / 'theirs' / 'results.json'}: not a record run.py wrote" in done.stderr
    assert "| rte |" in done.stdout


def test_gpu_check_refuses_a_bad_budget_before_writing_anything(tmp_path):
    proc = subprocess.run(["bash", str(HERE / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out"),
                           "--carry", str(tmp_path / "carry"), "--budget", "abc"], capture_output=True, text=True,
                          timeout=HANG)
    one_line(proc, "--budget must be whole seconds, got abc", code=2)
    assert not (tmp_path / "carry").exists()


def test_more_stages_than_steps_is_said(tmp_path, tiny_dir, glue_dir, capsys):
    run.main(run_args(tiny_dir, tmp_path / "run", "--epochs", 1, "--stages", 5, *SHORT, glue_dir=glue_dir))
    assert "WARNING: --stages 5 but the run has only 2 steps, so 3 stages never run" in capsys.readouterr().err


def test_an_exported_folder_gets_the_usual_permissions(tmp_path, tiny_dir, glue_dir):
    run.main(run_args(tiny_dir, tmp_path / "run", "--epochs", 1, *SHORT, glue_dir=glue_dir))
    model, _, seed = export.load_run_model(tmp_path / "run")
    dest = export.export_model(model, export.read_record(tmp_path / "run"), seed, tmp_path / "export")
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask
    assert {path.stat().st_mode & 0o777 for path in dest.iterdir()} == {0o666 & ~umask}
