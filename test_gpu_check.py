"""gpu_check.sh, the prepared GPU check: its --dry-run runs every phase on the CPU at toy sizes, so the
script that a GPU machine runs in one go is itself tested on every change; and the carry folder it
needs (MiniLM as fp16, RTE and MRPC) is built by one command and stays under what may travel. The same for
gpu_runs.sh, the real-data runs that follow the check on the same machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from safetensors import safe_open

import gpu_check
import report

HERE = Path(__file__).resolve().parent


def test_prepare_writes_an_fp16_model_and_the_two_tasks(tmp_path, minilm_dir, glue_dir):
    carry = tmp_path / "carry"
    gpu_check.prepare(carry, minilm_dir, glue_dir)
    with safe_open(str(carry / "minilm-fp16" / "model.safetensors"), framework="pt") as fp16, \
            safe_open(str(minilm_dir / "model.safetensors"), framework="pt") as fp32:
        assert set(fp16.keys()) == set(fp32.keys())
        key = "embeddings.word_embeddings.weight"
        original, half = fp32.get_tensor(key), fp16.get_tensor(key)
    assert half.dtype.is_floating_point and half.element_size() == 2
    assert (half.float() - original).abs().max() < 1e-3  # rounding, not another model
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        assert (carry / "minilm-fp16" / name).is_file()
    for task in ("RTE", "MRPC"):
        assert (carry / "glue" / task / "train.tsv").read_bytes() == (glue_dir / task / "train.tsv").read_bytes()
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
    assert size < gpu_check.CARRY_LIMIT_MIB * 2**20


def test_prepare_names_what_is_missing(tmp_path, minilm_dir):
    with pytest.raises(SystemExit, match="RTE/train.tsv is missing"):
        gpu_check.prepare(tmp_path / "carry", minilm_dir, tmp_path / "no-glue")


@pytest.mark.parametrize("args,message", [
    ([], "--out DIR is required"),
    (["--out"], "--out needs a value"),
    (["--bogus"], "unknown option --bogus"),
])
def test_command_line_errors_are_one_line(args, message):
    proc = subprocess.run(["bash", str(HERE / "gpu_check.sh"), *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_gpu_mode_refuses_without_the_carry_folder(tmp_path):
    proc = subprocess.run(["bash", str(HERE / "gpu_check.sh"), "--out", str(tmp_path / "out"), "--carry",
                           str(tmp_path / "nothing")], capture_output=True, text=True)
    assert proc.returncode == 2 and "run 'bash gpu_check.sh --prepare'" in proc.stderr


def test_dry_run_runs_every_phase_and_summarises(tmp_path, minilm_dir, glue_dir):
    carry, out = tmp_path / "carry", tmp_path / "out"
    gpu_check.prepare(carry, minilm_dir, glue_dir)
    proc = subprocess.run(["bash", str(HERE / "gpu_check.sh"), "--dry-run", "--out", str(out), "--carry",
                           str(carry), "--work", str(tmp_path / "work")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["bench-frozen.json", "bench.json", "gpu_check.log",
                                                     "pytest-cuda.xml", "runs.json", "summary.md"]
    summary = (out / "summary.md").read_text()
    assert proc.stdout.rstrip().endswith(summary.rstrip())  # the summary is printed last
    for phase in ("pytest-cuda", "bench", "bench-frozen", "run-rte-ft", "run-rte-pt"):  # MRPC's on the GPU only
        assert f"| {phase} | ok |" in summary
    assert "skipped" in summary  # no CUDA here: the cuda tests skip, with their reason in the XML

    bench = json.loads((out / "bench.json").read_text())
    assert [c["name"] for c in bench["cases"]] == ["ft", "pt stage 1", "pt stage 2", "pt stage 3", "ft reference"]
    assert all(c["flops_per_step"] > 0 for c in bench["cases"]) and not bench["failed_cases"]
    frozen = json.loads((out / "bench-frozen.json").read_text())
    assert frozen["settings"]["freeze_embeddings"] and len(frozen["cases"]) == 4

    runs = json.loads((out / "runs.json").read_text())
    assert [(r["task"], r["mode"], r["status"]) for r in runs] == [("rte", "ft", "complete"), ("rte", "pt", "complete")]
    for r in runs:
        assert len(r["epochs"]) == 3 and r["final"] and r["compile"] and r["autocast"] == "bfloat16"
        # per-block compile: ft's three epochs train the same set (one stage record); pt's stage 3 compiles
        # nothing, its stages 1 and 2 a shared block graph and the frozen variant
        assert len(r["compile_stages"]) == (1 if r["mode"] == "ft" else 3)
        assert r["mode"] == "ft" or r["compile_stages"][2]["graphs"] == 0
        assert all(e["ms_per_step"] > 0 and e["train_seconds"] > 0 for e in r["epochs"])
    assert "| rte | pt | complete |" in summary and "compile s per stage (graphs)" in summary


# gpu_runs.sh: the real-data runs for a GPU machine, which only the CPU dry run can check here

def _gpu_runs(*args: str, glue_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    if glue_dir is not None:
        env["PROGTUNING_DATA"] = str(glue_dir.parent)
    return subprocess.run(["bash", str(HERE / "gpu_runs.sh"), *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("args,message", [
    ([], "--out DIR is required"),
    (["--seeds"], "--seeds needs a value"),
    (["--out", "x", "--parallel", "many"], "--parallel and --budget take whole numbers, got many"),
    (["--out", "x", "--seeds", "1;2"], "--seeds takes a list such as 1,2,3, got 1;2"),
    (["--out", "x", "--carry", "/nonexistent"], "/nonexistent lacks minilm-fp16/; run 'bash gpu_runs.sh --prepare'"),
    (["--out", "x", "--resume", "/nonexistent"], "--resume /nonexistent has no runs/ folder; pass the work dir"),
])
def test_gpu_runs_command_line_errors_are_one_line(args, message):
    proc = _gpu_runs(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_gpu_runs_dry_run_packs_records_report_py_reads(tmp_path, glue_dir):
    carry, out = tmp_path / "carry", tmp_path / "out"
    proc = _gpu_runs("--prepare", "--carry", str(carry), glue_dir=glue_dir)
    assert proc.returncode == 0, proc.stderr
    for task in ("RTE", "MRPC", "SST-2", "STS-B", "CoLA"):
        assert (carry / "glue" / task / "dev.tsv").read_bytes() == (glue_dir / task / "dev.tsv").read_bytes()

    proc = _gpu_runs("--dry-run", "--out", str(out), "--carry", str(carry), "--seeds", "2", "--only", "^sst2-blocks-6$")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [line.split("\t")[:2] for line in (out / "jobs.tsv").read_text().splitlines()] == [["sst2-blocks-6", "0"]]
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    with tarfile.open(out / "runs.tar.gz") as tar:
        assert not [name for name in tar.getnames() if name.endswith(".safetensors")]  # no checkpoints travel back
        tar.extractall(unpacked, filter="data")
    assert (unpacked / "logs" / "sst2-blocks-6.log").is_file()
    rows, _ = report.load_all([unpacked])
    assert [(row.task, row.method, row.mode, row.train_blocks, tuple(row.seed_scores)) for row in rows] == [
        ("sst2", "full", "ft", "6", (2,))]

    # --resume goes on in the first call's work dir: here it adds seed 3 to the finished record
    work = re.search(r"^=== work dir: (\S+)$", (out / "gpu_runs.log").read_text(), re.M).group(1)
    out2 = tmp_path / "out2"
    proc = _gpu_runs("--dry-run", "--out", str(out2), "--carry", str(carry), "--seeds", "2,3", "--resume", work,
                     "--only", "^sst2-blocks-6$")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(resumed)" in (out2 / "gpu_runs.log").read_text()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    with tarfile.open(out2 / "runs.tar.gz") as tar:
        tar.extractall(resumed, filter="data")
    rows, _ = report.load_all([resumed])
    assert [tuple(row.seed_scores) for row in rows] == [(2, 3)]
    assert (resumed / "logs" / "sst2-blocks-6.log").read_text().count("settings: ") == 2  # the log goes on, too
    shutil.rmtree(work)  # the calls' work dir is outside tmp_path

    # a budget with too little left for a job: skipped and said so, and the records still come back
    proc = _gpu_runs("--dry-run", "--out", str(out), "--carry", str(carry), "--budget", "35", "--only", "mrpc-sam-ft")
    assert proc.returncode == 1 and (out / "jobs.tsv").read_text() == "mrpc-sam-ft\tskipped\t0\n"
    assert (out / "runs.tar.gz").is_file()
