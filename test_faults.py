"""Bad inputs and faults, as a new user meets them: each ends in one clear line on stderr (no traceback),
an interrupt at any step resumes bitwise, a run whose weights go non-finite is never recorded as done, two
runs never share a folder, and a checkpoint is read only while it is the file that was written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import export
import integrity
import predict
import records
import run
import sparse
from conftest import HANG
from test_run import TINY_CONFIG, cli_error, results_of, run_args, tiny_dir  # noqa: F401  (tiny_dir: a fixture)

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
    pairs.write_text("A man sleeps.\tA person rests.\n\nIt rains.\tThe sun shines.\n\n")  # two blank lines
    done = command("predict.py", "--model", tmp_path / "run", "--task", "rte", "--input", pairs)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.strip().splitlines()[1:]
    assert [row.split("\t")[0] for row in rows] == ["0", "1"]  # examples counted, blank lines not
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


# ------------------------------------------------------------------------------------ one run per folder

def test_a_second_run_on_a_busy_folder_is_refused_and_the_first_keeps_its_log(tmp_path, tiny_dir, glue_dir):
    out = tmp_path / "run"
    args = run_args(tiny_dir, out, "--epochs", 3, "--limit-train", 96, "--limit-eval", 8, "--batch-size", 4,
                    glue_dir=glue_dir)  # 24 steps per epoch, 3 stages
    first = subprocess.Popen([sys.executable, str(HERE / "run.py"), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=HERE)
    log = out / "seed-1" / "log.jsonl"
    deadline = time.monotonic() + HANG
    try:
        while not (log.exists() and '"progress"' in log.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # paused mid-epoch 1, its lock held, before any results.json
        second = command("run.py", *args)  # a double launch: the same command on the same folder
    finally:
        first.send_signal(signal.SIGCONT)
    line = one_line(second, str(out), f"pid {first.pid} on host {socket.gethostname()}", "--output-dir", code=1)
    assert line.startswith(f"error: FolderInUse: {out} is in use by another run"), line
    stdout, stderr = first.communicate(timeout=HANG)
    assert first.returncode == 0, stderr[-3000:]
    events = [json.loads(entry)["event"] for entry in log.read_text().splitlines()]
    assert (events.count("stage"), events.count("progress"), events.count("epoch"), len(events)) == (3, 72, 3, 78)
    assert results_of(out)["runs"][0]["status"] == "complete"
    assert (out / "run.lock").read_text() == ""  # released at the end: it names no holder


def test_the_lock_names_its_holder_and_a_killed_holder_lets_go(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, records; lock = records.OutputLock("
                               "sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)", str(folder)],
                              stdout=subprocess.PIPE, text=True, cwd=HERE)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(records.FolderInUse, match=f"{folder} is in use by another run \\(pid {holder.pid} on"):
            records.OutputLock(folder).acquire()
    finally:
        holder.kill()  # SIGKILL: no code of ours runs, the OS lets go of the lock
        holder.wait(timeout=HANG)
    with records.OutputLock(folder) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(records.FolderInUse):  # one process, two locks: refused as well
            records.OutputLock(folder).acquire()
    assert lock.path.read_text() == ""
    records.OutputLock(folder).acquire()  # free again once released


def test_a_file_system_without_locks_is_warned_about(tmp_path, monkeypatch, capsys):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(records.fcntl, "flock", no_locks)
    with records.OutputLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()  # the holder is still written down
    assert capsys.readouterr().err == (f"WARNING: cannot lock {tmp_path / 'run.lock'} (the file system refused: "
                                       "No locks available), so nothing stops a second run from writing into "
                                       "this folder at the same time\n")


# ------------------------------------------------------------------------------------ intact checkpoints

RESUMABLE = ("--epochs", 2, *SHORT)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_dir, glue_dir) -> Path:
    """A run stopped after its first step, as Ctrl-C leaves it: results.json, a checkpoint and its digest."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.raises(SystemExit):
        run.main(run_args(tiny_dir, out, *RESUMABLE, "--interrupt-after-steps", 1, glue_dir=glue_dir))
    return out


def flip_low_bit(path: Path, tensor: str) -> None:
    """Flip the lowest bit of the first entry of `tensor` in the safetensors file: a float32 that changes in
    its last mantissa bit and stays finite."""
    raw = bytearray(path.read_bytes())
    header_length = int.from_bytes(raw[:8], "little")
    raw[8 + header_length + json.loads(raw[8:8 + header_length])[tensor]["data_offsets"][0]] ^= 1
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("digest_before", [True, False], ids=["digest", "a file from before digests"])
@pytest.mark.parametrize("crash_at", [1, 2, 3], ids=["before the new digest", "before the rename",
                                                     "before the old digest goes"])
def test_a_save_cut_short_anywhere_leaves_a_file_its_digest_vouches_for(tmp_path, monkeypatch, crash_at,
                                                                       digest_before):
    path = tmp_path / "checkpoint.safetensors"
    integrity.save_safetensors(path, {"w": torch.zeros(4)}, {})
    if not digest_before:
        integrity.digest_path(path).unlink()
    old, real, calls = path.read_bytes(), integrity.replace_durably, []

    def replace(temp: Path, dest: Path) -> None:  # renames: both digests, the file, the new digest alone
        calls.append(dest.name)
        if len(calls) == crash_at:
            raise KeyboardInterrupt  # the process dies instead of this rename: nothing of ours runs after it
        real(temp, dest)

    monkeypatch.setattr(integrity, "replace_durably", replace)
    with pytest.raises(KeyboardInterrupt):
        integrity.save_safetensors(path, {"w": torch.ones(4)}, {})
    assert (path.read_bytes() == old) == (crash_at <= 2)
    # never a mismatch; a file from before digests stays without one until its digest file is in place
    assert integrity.check_digest(path, "") is (digest_before or crash_at > 1)
    monkeypatch.undo()
    integrity.save_safetensors(path, {"w": torch.ones(4)}, {})
    assert integrity.recorded_digests(path) == [integrity.file_sha256(path)]


def test_a_checkpoint_with_one_flipped_bit_is_refused_by_name(tmp_path, interrupted, tiny_dir, glue_dir, capsys):
    out = shutil.copytree(interrupted, tmp_path / "run")
    checkpoint = out / "seed-1" / "checkpoint.safetensors"
    before = load_file(checkpoint)["model/classifier.weight"].clone()  # load_file maps the file: copy it
    flip_low_bit(checkpoint, "model/classifier.weight")
    after = load_file(checkpoint)["model/classifier.weight"]
    assert torch.isfinite(after).all() and not torch.equal(after, before)  # only its digest tells
    record = (out / "results.json").read_bytes()
    _, line = cli_error(run_args(tiny_dir, out, *RESUMABLE, "--resume", glue_dir=glue_dir), capsys)
    assert line.startswith(f"error: {checkpoint} does not match the SHA-256 recorded in "
                           "checkpoint.safetensors.sha256"), line
    assert "restore the file from a copy, or start this seed over with --overwrite" in line
    assert (out / "results.json").read_bytes() == record  # nothing trained on it


def test_a_nan_in_a_checkpoint_is_named_with_its_tensor(tmp_path, interrupted, tiny_dir, glue_dir, capsys):
    out = shutil.copytree(interrupted, tmp_path / "run")
    checkpoint = out / "seed-1" / "checkpoint.safetensors"
    tensors = load_file(checkpoint)
    with safe_open(str(checkpoint), "pt") as file:
        metadata = file.metadata()
    tensors["model/encoder.layer.2.output.dense.weight"][0, 0] = float("nan")
    integrity.save_safetensors(checkpoint, tensors, metadata)  # with a matching digest, as a run would write it
    _, line = cli_error(run_args(tiny_dir, out, *RESUMABLE, "--resume", glue_dir=glue_dir), capsys)
    assert line == (f"error: checkpoint {checkpoint} holds NaN in model/encoder.layer.2.output.dense.weight; "
                    "restore the file from a copy, or start this seed over with --overwrite")  # no "lower --lr"


def test_a_checkpoint_from_before_digests_resumes_with_a_warning(tmp_path, interrupted, tiny_dir, glue_dir, capsys):
    out = shutil.copytree(interrupted, tmp_path / "run")
    checkpoint = out / "seed-1" / "checkpoint.safetensors"
    integrity.digest_path(checkpoint).unlink()
    run.main(run_args(tiny_dir, out, *RESUMABLE, "--resume", glue_dir=glue_dir))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING")]
    assert warnings == [f"WARNING: {checkpoint} has no checkpoint.safetensors.sha256 beside it (written before "
                        "digests were kept), so its bytes cannot be verified; reading it as it is"]
    assert results_of(out)["runs"][0]["status"] == "complete"
    assert integrity.check_digest(checkpoint, "") and integrity.recorded_digests(checkpoint) == [
        integrity.file_sha256(checkpoint)]  # written anew, with its digest


@pytest.mark.parametrize("method", ["random", "full"])
def test_a_trained_file_with_one_flipped_bit_is_refused_where_it_is_read(tmp_path, tiny_dir, glue_dir, method,
                                                                         capsys):
    out = tmp_path / "run"
    sparsity = ("--sparsity", 0.05) if method == "random" else ()
    run.main(run_args(tiny_dir, out, "--method", method, *sparsity, "--epochs", 1, "--no-keep-checkpoint", *SHORT,
                      glue_dir=glue_dir))
    trained = out / "seed-1" / "trained.safetensors"
    export.load_run_model(out)  # intact: read without a word
    assert "WARNING" not in capsys.readouterr().err
    flip_low_bit(trained, "dense/classifier.weight" if method == "random" else "classifier.weight")
    refused = f"{trained} does not match the SHA-256 recorded in trained.safetensors.sha256"
    with pytest.raises(integrity.DamagedFile, match="restore it from a copy, or train the seed again"):
        export.load_run_model(out)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("A man sleeps.\tA person rests.\n")
    with pytest.raises(SystemExit) as stop:
        predict.main(["--model", str(out), "--task", "rte", "--input", str(pairs)])
    assert str(stop.value.code).startswith(f"error: {refused}")
    if method == "random":
        with pytest.raises(SystemExit) as stop:
            sparse.main(["rebuild", str(trained), "--out", str(tmp_path / "rebuilt")])
        assert str(stop.value.code).startswith(f"error: {refused}") and not (tmp_path / "rebuilt").exists()


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, tiny_dir, glue_dir):
    # A file-size limit of 1 MB fails the first write past it as a full disk does, with no file named by
    # the OS: the tiny model's checkpoint (about 12 MB with AdamW's moments) at the end of epoch 1.
    limited = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", limited, str(HERE / "run.py"),
                           *run_args(tiny_dir, out, "--epochs", 1, *SHORT, glue_dir=glue_dir)],
                          capture_output=True, text=True, timeout=HANG, cwd=HERE)
    checkpoint = out / "seed-1" / "checkpoint.safetensors"
    one_line(proc, f"error: WriteError: cannot write {checkpoint}: File too large; make room there", code=1)
    assert not checkpoint.exists() and not list(out.rglob("*.tmp"))  # the half-written temp file is gone
