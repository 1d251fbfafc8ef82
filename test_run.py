"""run.py end to end: --count-only planning, the command line's errors, the training loop on real RTE with
a tiny model (fast) and the real MiniLM checkpoint, records, resume (bitwise on CPU), Ctrl-C, frozen
blocks that stay frozen, and stage switches under torch.compile."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import HANG, TINY_CONFIG, build_tiny_bert, squad_file
import data
import integrity
import model as M
import progtuning as P
import records
import evaluation
import report
import run
import training

HERE = Path(__file__).resolve().parent
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, minilm_dir) -> Path:
    """A 4-block, 32-wide BERT with random (saved) weights and MiniLM's real tokenizer."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


def run_args(model_dir, out, *extra, glue_dir=None):
    args = ["--task", "rte", "--model", str(model_dir), "--output-dir", str(out), "--log-every", "1"]
    if glue_dir is not None:
        args += ["--data-dir", str(glue_dir)]
    return args + [str(e) for e in extra]


def results_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def copy_checkpoint(source: Path, dest: Path) -> None:
    """A checkpoint with its digest file: --resume reads a checkpoint only when the two agree."""
    shutil.copy(source, dest)
    shutil.copy(integrity.digest_path(source), integrity.digest_path(dest))


# ------------------------------------------------------------------------------------------ planning

@pytest.mark.parametrize("method", ["full", "adapter", "bitfit", "lora"])
def test_count_only_on_a_config_only_folder(tmp_path, method, capsys):
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY_CONFIG, "num_hidden_layers": 6}))
    out = tmp_path / "out"
    record = run.main(["--task", "rte", "--mode", "pt", "--method", method, "--model", str(folder),
                       "--epochs", "3", "--count-only", "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert "epoch 3  . . . . # #" in printed  # the stage diagram: blocks 5-6 train in epoch 3
    saved = results_of(out)
    # The same numbers as the core computes on a real (initialised) model of the same shape.
    real = P.add_method(M.Transformer(M.ModelConfig.from_json(folder / "config.json"), "classification", 2),
                        method)
    counts = P.count_parameters(real, P.plan_stages(6, 3, "pt"), method, 3)
    for key in ("total_params", "trainable_params", "updated_params_per_epoch", "updated_params"):
        assert saved[key] == getattr(counts, key) == record[key], key
    assert saved["updated_params"] < saved["baseline_updated_params"]
    assert f"{counts.updated_params:,}" in printed


def test_count_only_refuses_to_replace_a_training_record(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text(json.dumps({"kind": records.RESULTS_KIND}))
    with pytest.raises(SystemExit, match="holds a training record"):
        run.main(["--task", "rte", "--model", str(folder), "--count-only", "--output-dir", str(tmp_path / "out")])


@pytest.mark.parametrize("argv,message", [
    (["--task", "rte", "--mode", "ft", "--schedule", "grow"], "applies to --mode pt only"),
    (["--task", "rte", "--lora-r", "4"], "--lora-r applies to --method lora"),
    (["--task", "rte", "--method", "lora", "--lora-r", "0"], "rank r must be >= 1"),
    (["--task", "rte", "--seeds", "1,x"], "comma-separated integers"),
    (["--task", "rte", "--seeds", "1,1"], "repeated"),
    (["--task", "rte", "--schedule", "no-low", "--epochs", "1"], "at least 2 stages"),
    (["--task", "rte", "--epochs", "0"], "--epochs must be >= 1"),
    (["--task", "rte", "--train-file", "x.json"], "select SQuAD files"),
    (["--task", "wnli"], "invalid choice"),
    (["--task", "rte", "--train-subset", "100", "--limit-train", "8"], "not both"),
    (["--task", "rte", "--subset-seed", "3"], "--subset-seed applies with --train-subset"),
    (["--task", "rte", "--train-subset", "0"], "--train-subset must be >= 1"),
])
def test_command_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        run.parse_args(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_presets_fill_defaults_and_flags_override():
    s = run.parse_args(["--task", "rte"])
    assert (s.epochs, s.stages, s.lr, s.batch_size, s.max_length, s.warmup_ratio) == (3, 3, 2e-5, 32, 128, 0.0)
    s = run.parse_args(["--task", "rte", "--method", "lora"])
    assert (s.epochs, s.lr, s.batch_size, s.warmup_ratio) == (80, 5e-4, 16, 0.06)
    s = run.parse_args(["--task", "mrpc", "--method", "lora", "--epochs", "5", "--stages", "2"])
    assert (s.epochs, s.stages, s.lr) == (5, 2, 4e-4)
    s = run.parse_args(["--task", "squad_v2"])
    assert (s.epochs, s.lr, s.batch_size, s.max_length, s.doc_stride) == (2, 3e-5, 12, 384, 128)


def test_missing_data_is_one_clear_line(tmp_path, tiny_dir):
    env = {**os.environ, "PROGTUNING_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(HERE / "run.py"), *run_args(tiny_dir, tmp_path / "o"),
                           "--data-dir", str(tmp_path / "nowhere")], capture_output=True, text=True, env=env,
                          timeout=HANG)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "error:" in done.stderr and "nowhere" in done.stderr


def test_lr_schedule():
    assert training.lr_at(0, 10, 0, 1.0) == 1.0 and training.lr_at(9, 10, 0, 1.0) == pytest.approx(0.1)
    assert training.lr_at(0, 10, 2, 1.0) == 0.0 and training.lr_at(1, 10, 2, 1.0) == 0.5 and training.lr_at(2, 10, 2, 1.0) == 1.0
    assert training.lr_at(6, 10, 2, 1.0) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ training

def test_tiny_run_records_resume_and_frozen_blocks(tmp_path, tiny_dir, glue_dir, monkeypatch, capsys):
    """One uninterrupted run; one that crashes right after epoch 1's checkpoint and is resumed; one
    interrupted mid-epoch and resumed. All three end bitwise equal, and part 1's blocks never move after
    epoch 1."""
    common = ("--epochs", 2, "--limit-train", 64, "--limit-eval", 32, "--batch-size", 8, "--lr", 1e-3,
              "--save-trained")
    straight = tmp_path / "straight"
    results = run.main(run_args(tiny_dir, straight, *common, glue_dir=glue_dir))
    printed = capsys.readouterr().out
    assert "rte: accuracy" in printed and "(n=1)" in printed and "± 0.00 (n=1)" not in printed
    record = results_of(straight)
    assert record["kind"] == records.RESULTS_KIND and record["runs"][0]["status"] == "complete"
    epochs = record["runs"][0]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert [e["trainable_blocks"] for e in epochs] == [[1, 2, 3, 4], [3, 4]]
    assert record["updated_params_per_epoch"] == [e["updated_params"] for e in epochs]
    # one seed: no spread, stored as null and printed without "± 0.00"
    assert record["summary"]["rte"]["accuracy"]["n"] == 1 and record["summary"]["rte"]["accuracy"]["std"] is None
    assert record["majority_baseline"]["rte"]["accuracy"] > 0
    for key in ("total_params", "trainable_params", "updated_params", "environment", "settings", "main_metric"):
        assert key in record
    log = [json.loads(line) for line in (straight / "seed-1" / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log].count("epoch") == 2 and [e["event"] for e in log].count("progress") == 16
    # an epoch's training loss is the mean of its own steps' losses (logged one by one: --log-every 1)
    for epoch in epochs:
        losses = [e["loss"] for e in log if e["event"] == "progress" and e["epoch"] == epoch["epoch"]]
        assert epoch["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)
    assert results["summary"] == record["summary"]
    straight_weights = load_file(straight / "seed-1" / "trained.safetensors")

    # Crash right after epoch 1's checkpoint (before results.json is updated), then --resume.
    crashed = tmp_path / "crashed"
    real_summarize = run.summarize

    def crash(runs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(run, "summarize", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run.main(run_args(tiny_dir, crashed, *common, glue_dir=glue_dir))
    monkeypatch.setattr(run, "summarize", real_summarize)
    after_epoch_1 = tmp_path / "after-epoch-1.safetensors"
    copy_checkpoint(crashed / "seed-1" / "checkpoint.safetensors", after_epoch_1)
    run.main(run_args(tiny_dir, crashed, *common, "--resume", glue_dir=glue_dir))
    resumed = results_of(crashed)
    assert resumed["runs"][0]["final"] == record["runs"][0]["final"]
    assert [e["metrics"] for e in resumed["runs"][0]["epochs"]] == [e["metrics"] for e in epochs]
    resumed_weights = load_file(crashed / "seed-1" / "trained.safetensors")
    assert resumed_weights.keys() == straight_weights.keys()
    for name in straight_weights:
        assert torch.equal(resumed_weights[name], straight_weights[name]), name

    # Part 1 (blocks 0-1) stops training after epoch 1: its final weights are exactly the epoch-1 ones;
    # part 2 kept training.
    epoch_1 = load_file(after_epoch_1)
    block_names = [n for n in straight_weights if n.startswith("encoder.layer.")]
    for name in block_names:
        same = torch.equal(straight_weights[name], epoch_1[f"model/{name}"])
        assert same == (int(name.split(".")[2]) < 2), name

    # Interrupted mid-epoch 1 (after 3 of 8 steps), as Ctrl-C does, then resumed.
    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stop:
        run.main(run_args(tiny_dir, interrupted, *common, "--interrupt-after-steps", 3, glue_dir=glue_dir))
    assert stop.value.code == 130
    assert results_of(interrupted)["runs"][0]["status"] == "interrupted"
    with pytest.raises(SystemExit, match="already exists"):
        run.main(run_args(tiny_dir, interrupted, *common, glue_dir=glue_dir))
    run.main(run_args(tiny_dir, interrupted, *common, "--resume", glue_dir=glue_dir))
    again = load_file(interrupted / "seed-1" / "trained.safetensors")
    for name in straight_weights:
        assert torch.equal(again[name], straight_weights[name]), name
    assert results_of(interrupted)["runs"][0]["final"] == record["runs"][0]["final"]
    assert [e["train_loss"] for e in results_of(interrupted)["runs"][0]["epochs"]] == [e["train_loss"] for e in epochs]

    epoch_1_record = results_of(interrupted)["runs"][0]["epochs"][0]  # 3 steps, an interrupt, 5 more steps
    assert 0 < epoch_1_record["wall_seconds_before_interrupt"] < epoch_1_record["wall_seconds"]

    # Killed (SIGKILL: no checkpoint) in epoch 2 after its steps were logged: the resumed attempt logs them
    # again after a "resumed" event, and read_log gives one history with nothing counted twice.
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    copy_checkpoint(after_epoch_1, killed / "seed-1" / "checkpoint.safetensors")
    data = results_of(killed)
    data["runs"][0].update(status="running", epochs=data["runs"][0]["epochs"][:1], final=None)
    (killed / "results.json").write_text(json.dumps(data))
    run.main(run_args(tiny_dir, killed, *common, "--resume", glue_dir=glue_dir))
    raw = [json.loads(line) for line in (killed / "seed-1" / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in raw].count("progress") == 16 + 8
    history = records.read_log(killed / "seed-1" / "log.jsonl")
    assert [e["step"] for e in history if e["event"] == "progress"] == list(range(1, 17))
    assert [e["epoch"] for e in history if e["event"] == "epoch"] == [1, 2]
    assert [(e["epoch"], e["step"]) for e in history if e["event"] == "resumed"] == [(2, 8)]

    _other_recipe_is_refused(tiny_dir, glue_dir, interrupted, after_epoch_1, common)


def _other_recipe_is_refused(tiny_dir, glue_dir, interrupted, after_epoch_1, common):
    """Resuming with a different recipe is refused, naming what differs."""
    (interrupted / "seed-1" / "checkpoint.safetensors").unlink()
    copy_checkpoint(after_epoch_1, interrupted / "seed-1" / "checkpoint.safetensors")
    data = results_of(interrupted)
    data["runs"][0]["status"] = "running"
    (interrupted / "results.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="lr"):
        run.main(run_args(tiny_dir, interrupted, *common[:-3], "--lr", 5e-4, "--save-trained", "--resume",
                          glue_dir=glue_dir))
    # Without results.json the checkpoint's own record of its settings refuses it too.
    (interrupted / "results.json").unlink()
    with pytest.raises(SystemExit, match=r"checkpoint.safetensors was written with other settings .*'lr'"):
        run.main(run_args(tiny_dir, interrupted, *common[:-3], "--lr", 5e-4, "--save-trained", "--resume",
                          glue_dir=glue_dir))


def test_frozen_parameters_never_move_and_peft_trains_only_its_own(tmp_path, tiny_dir, glue_dir):
    pretrained = load_file(tiny_dir / "model.safetensors")
    for method in ("bitfit", "lora", "adapter"):
        out = tmp_path / method
        run.main(run_args(tiny_dir, out, "--method", method, "--epochs", 2, "--limit-train", 32, "--limit-eval", 16,
                          "--batch-size", 8, "--lr", 1e-2, glue_dir=glue_dir))
        with safe_open(str(out / "seed-1" / "checkpoint.safetensors"), "pt") as file:
            saved = {k[len("model/"):]: file.get_tensor(k) for k in file.keys() if k.startswith("model/")}
        model = P.add_method(M.Transformer(M.ModelConfig.from_json(tiny_dir / "config.json"), "classification", 2),
                             method)
        ever = set().union(*(P.trainable_names(model, blocks, method) for blocks in P.plan_stages(4, 2, "pt")))
        assert set(saved) == ever, method
        record = results_of(out)
        counts = P.count_parameters(model, P.plan_stages(4, 2, "pt"), method, 2)
        assert record["updated_params"] == counts.updated_params
        # Pretrained weights the method trains have moved; with bitfit, block 0's biases did (stage 1) ...
        if method == "bitfit":
            assert not torch.equal(saved["encoder.layer.0.attention.self.query.bias"],
                                   pretrained["encoder.layer.0.attention.self.query.bias"])
        if method == "lora":
            assert saved["encoder.layer.3.attention.self.query.lora_B"].abs().sum() > 0


def test_minilm_real_rte_smoke(tmp_path, minilm_dir, glue_dir):
    """The real checkpoint on real RTE: 64 training pairs, 2 epochs of Progtuning; the training loss on
    those pairs goes down, and the record holds what the core counts."""
    out = tmp_path / "minilm"
    run.main(run_args(minilm_dir, out, "--mode", "pt", "--epochs", 2, "--limit-train", 64, "--limit-eval", 64,
                      "--batch-size", 16, "--lr", 1e-4, "--save-trained", glue_dir=glue_dir))
    record = results_of(out)
    assert record["runs"][0]["status"] == "complete"
    final = record["runs"][0]["final"]["rte"]["accuracy"]
    assert 0 <= final <= 100
    model = M.from_pretrained(minilm_dir, head="classification", num_labels=2)
    counts = P.count_parameters(model, P.plan_stages(6, 2, "pt"), "full", 2, steps_per_epoch=4)
    assert record["updated_params_per_epoch"] == counts.updated_params_per_epoch == [22_713_986, 17_390_594]
    assert record["total_params"] == counts.total_params

    # Training loss on the 64 pairs, before and after (eval mode, no dropout).
    tokenizer = M.load_tokenizer(minilm_dir)
    import data as D
    examples = D.read_glue("rte", "train", glue_dir)[:64]
    encoded = D.encode_glue(examples, tokenizer, 128, regression=False)

    def mean_loss(m):
        m.eval()
        with torch.no_grad():
            losses = [torch.nn.functional.cross_entropy(
                m(b["input_ids"], b["attention_mask"], b["token_type_ids"]), b["labels"], reduction="sum")
                for b in D.batches(encoded, 32, tokenizer.pad_token_id)]
        return float(sum(losses)) / len(encoded)

    torch.manual_seed(1)  # the run's seed initialises the head the same way
    before = mean_loss(M.from_pretrained(minilm_dir, head="classification", num_labels=2))
    trained = M.from_pretrained(minilm_dir, head="classification", num_labels=2)
    trained.load_state_dict(load_file(out / "seed-1" / "trained.safetensors"), strict=False)
    after = mean_loss(trained)
    assert after < before - 0.01, (before, after)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_real_ctrl_c_writes_a_checkpoint_and_resume_finishes(tmp_path, tiny_dir, glue_dir, sig, code):
    # SIGTERM is what SLURM and Kubernetes send before preemption: the same checkpoint as Ctrl-C, exit 143.
    out = tmp_path / "signal"
    argv = [sys.executable, str(HERE / "run.py"), *run_args(tiny_dir, out, "--epochs", 1, "--limit-train", 200,
                                                            "--limit-eval", 16, "--batch-size", 4,
                                                            glue_dir=glue_dir)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "seed-1" / "log.jsonl"
    deadline = time.monotonic() + HANG
    while not (log.exists() and '"progress"' in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=HANG)
    assert process.returncode == code, stderr
    assert "continue with --resume" in stderr and "Traceback" not in stderr
    assert f"{sig.name}: finishing this step" in stdout
    record = results_of(out)
    assert record["runs"][0]["status"] == "interrupted"
    with safe_open(str(out / "seed-1" / "checkpoint.safetensors"), "pt") as file:
        position = json.loads(file.metadata()["progtuning"])["position"]
    assert position["epoch"] == 0 and 0 < position["step_in_epoch"] < 50
    done = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 0, done.stderr
    assert f"step {position['step_in_epoch']} of 50" in done.stdout
    assert results_of(out)["runs"][0]["status"] == "complete"


def test_eta_counts_every_step_since_the_run_began(tmp_path, tiny_dir, glue_dir):
    # The ETA of a step = seconds per step so far x steps left. Its clock once restarted each epoch while
    # the step count did not, so from epoch 2 on it came out up to ~10x too low.
    run.main(run_args(tiny_dir, tmp_path, "--epochs", 3, "--limit-train", 64, "--limit-eval", 8, "--batch-size", 8,
                      glue_dir=glue_dir))
    entries = [json.loads(line) for line in (tmp_path / "seed-1" / "log.jsonl").read_text().splitlines()]
    progress = [e for e in entries if e["event"] == "progress"]
    began = next(e["time"] for e in entries if e["event"] == "stage")  # logged just before step 1
    for entry in progress[8:-1]:  # epochs 2 and 3
        # the rate behind the ETA must be the run's average so far, by the log's own clock
        rate = (entry["time"] - began) / entry["step"]
        predicted = entry["eta_s"] / (entry["total_steps"] - entry["step"])
        assert 0.8 * rate < predicted < 1.25 * rate, (entry, rate, predicted)


def test_max_length_beyond_the_models_positions_is_one_line(tmp_path, tiny_dir, capsys):
    with pytest.raises(SystemExit) as stop:
        run.main(run_args(tiny_dir, tmp_path, "--max-length", 100000))
    assert "--max-length 100000 exceeds the 512 positions" in str(stop.value)


def test_stsb_regression_and_several_seeds(tmp_path, tiny_dir, glue_dir):
    out = tmp_path / "stsb"
    argv = ["--task", "stsb", "--model", str(tiny_dir), "--data-dir", str(glue_dir), "--output-dir", str(out),
            "--epochs", 1, "--limit-train", 32, "--limit-eval", 24, "--batch-size", 16, "--seeds", "1,2"]
    run.main([str(a) for a in argv])
    record = results_of(out)
    assert [r["seed"] for r in record["runs"]] == [1, 2]
    pearsons = [r["final"]["stsb"]["pearson"] for r in record["runs"]]
    assert pearsons[0] != pearsons[1]  # different seeds, different runs
    summary = record["summary"]["stsb"]["pearson"]
    assert summary["n"] == 2 and summary["mean"] == pytest.approx(sum(pearsons) / 2)
    # A constant prediction has no correlation: the majority baseline is null, not a crash or NaN in JSON.
    assert record["majority_baseline"]["stsb"]["pearson"] is None
    lines = (out / "seed-1" / "predictions-stsb.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 25

    # --resume with more seeds adds seed 3 and keeps the finished seeds as they were.
    run.main([str(a) for a in argv[:-1]] + ["1,2,3", "--resume"])
    grown = results_of(out)
    assert [r["seed"] for r in grown["runs"]] == [1, 2, 3]
    assert grown["runs"][:2] == record["runs"] and grown["summary"]["stsb"]["pearson"]["n"] == 3
    # ... but never mixes in runs made with other settings.
    with pytest.raises(SystemExit, match=r"differ from .*results.json: lr: recorded 2e-05, now 0.0001"):
        run.main([str(a) for a in argv] + ["--resume", "--lr", "1e-4"])
    assert results_of(out) == grown
    # report.py reads what run.py wrote, undefined baseline included.
    row, notes = report.load_results(out / "results.json", need_baseline=True)
    assert row.runs_used == 3 and notes == []
    assert "| stsb | majority class | — | — | — | n/a | n/a | — | — | — | — |" in report.render_report([row], True)


# ------------------------------------------------------------------------------------------ torch.compile

def test_stage_switch_under_compile_gives_eager_gradients(tiny_dir):
    """Change requires_grad between calls of the per-block compiled model, as a stage switch does: the
    gradients must be exactly the set (and nearly the values) that eager mode computes, and after the first
    stage only a frozen-block variant is compiled, once."""
    torch.manual_seed(0)
    eager = M.from_pretrained(tiny_dir, head="classification", num_labels=2).eval()
    compiled = copy.deepcopy(eager)
    counter = training.GraphCounter("aot_eager")
    training.compile_blocks(compiled, counter)
    ids = torch.randint(1000, 2000, (4, 16))
    mask = torch.ones_like(ids)
    labels = torch.tensor([0, 1, 0, 1])
    graphs = []
    for blocks in P.plan_stages(4, 3, "pt"):
        grads = {}
        for name, model in (("eager", eager), ("compiled", compiled)):
            P.apply_stage(model, blocks, "full")
            model.zero_grad(set_to_none=True)
            before = counter.graphs
            torch.nn.functional.cross_entropy(model(ids, mask), labels).backward()
            grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        graphs.append(counter.graphs - before)
        assert grads["eager"].keys() == grads["compiled"].keys() == P.trainable_names(eager, blocks, "full")
        for n in grads["eager"]:
            torch.testing.assert_close(grads["compiled"][n], grads["eager"][n], rtol=1e-4, atol=1e-6)
    # stage 1: the graph all four blocks share; stage 2: the frozen variant (block 1 freezes); stage 3: none
    assert graphs == [1, 1, 0]


def test_compiled_run_matches_eager_run(tmp_path, tiny_dir, glue_dir):
    # Compiled runs pad batches to multiples of 32, which changes dropout's random masks; without dropout
    # the two runs differ only by floating-point rounding.
    no_dropout = tmp_path / "no-dropout"
    shutil.copytree(tiny_dir, no_dropout)
    config = json.loads((no_dropout / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (no_dropout / "config.json").write_text(json.dumps(config))
    tiny_dir = no_dropout
    common = ("--epochs", 2, "--limit-train", 32, "--limit-eval", 16, "--batch-size", 8, "--lr", 1e-3,
              "--save-trained")
    run.main(run_args(tiny_dir, tmp_path / "eager", *common, glue_dir=glue_dir))
    run.main(run_args(tiny_dir, tmp_path / "compiled", *common, "--compile", "--compile-backend", "aot_eager",
                      glue_dir=glue_dir))
    eager = load_file(tmp_path / "eager" / "seed-1" / "trained.safetensors")
    compiled = load_file(tmp_path / "compiled" / "seed-1" / "trained.safetensors")
    assert eager.keys() == compiled.keys() and not any("_orig_mod" in k for k in compiled)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ SQuAD

@pytest.mark.parametrize("task,train_file,dev_file", [
    ("squad", "train-v1.1.subset.json", "dev-v1.1.json"),
    ("squad_v2", "train-v2.0.subset.json", "dev-v2.0.subset.json"),
])
def test_minilm_squad_smoke(tmp_path, minilm_dir, squad_dir, task, train_file, dev_file):
    """The real checkpoint on real SQuAD questions, both versions: spans train with the same loop and
    stages, predictions are scored by squad_eval, and the files agree with the record."""
    import squad_eval
    train_file, dev_file = squad_file(squad_dir, train_file).name, squad_file(squad_dir, dev_file).name
    out = tmp_path / task
    run.main(["--task", task, "--mode", "pt", "--model", str(minilm_dir), "--data-dir", str(squad_dir),
              "--train-file", train_file, "--dev-file", dev_file, "--output-dir", str(out), "--epochs", "2",
              "--limit-train", "24", "--limit-eval", "40", "--max-length", "192", "--doc-stride", "64",
              "--batch-size", "8", "--lr", "1e-4", "--log-every", "2"])
    record = results_of(out)
    run_record = record["runs"][0]
    assert run_record["status"] == "complete"
    assert [e["trainable_blocks"] for e in run_record["epochs"]] == [[1, 2, 3, 4, 5, 6], [4, 5, 6]]
    final = run_record["final"][task]
    predictions = json.loads((out / "seed-1" / f"predictions-{task}.json").read_text())
    assert len(predictions) == 40
    dataset = evaluation.squad_subset(json.loads((squad_dir / dev_file).read_text()), set(predictions))
    if task == "squad":
        rescored = squad_eval.evaluate_v1(dataset, predictions)
        assert final["exact"] == rescored["exact_match"] and final["f1"] == rescored["f1"]
        assert all(predictions.values())  # v1.1 always answers
        assert record["majority_baseline"][task] == {"exact": 0.0, "f1": 0.0}
    else:
        na_probs = json.loads((out / "seed-1" / f"na_probs-{task}.json").read_text())
        rescored = squad_eval.evaluate_v2(dataset, predictions, na_probs, na_prob_thresh=1e30)
        assert final["exact"] == rescored["exact"] and final["f1"] == rescored["f1"]
        assert {"HasAns_exact", "NoAns_exact", "best_f1", "best_f1_thresh"} <= final.keys()
        # The majority baseline answers nothing: it scores the share of unanswerable questions.
        share = 100 * final["NoAns_total"] / final["total"]
        assert record["majority_baseline"][task]["exact"] == pytest.approx(share)
    assert 0 <= final["f1"] <= 100


def test_freeze_embeddings_never_trains_e(tmp_path, tiny_dir, glue_dir):
    out = tmp_path / "frozen-e"
    run.main(run_args(tiny_dir, out, "--freeze-embeddings", "--epochs", 2, "--limit-train", 16, "--limit-eval", 8,
                      "--batch-size", 8, glue_dir=glue_dir))
    with safe_open(str(out / "seed-1" / "checkpoint.safetensors"), "pt") as file:
        saved = [k for k in file.keys() if k.startswith("model/")]
    assert saved and not any(k.startswith("model/embeddings.") for k in saved)
    model = M.Transformer(M.ModelConfig.from_json(tiny_dir / "config.json"), "classification", 2)
    counts = P.count_parameters(model, P.plan_stages(4, 2, "pt"), "full", 2, freeze_embeddings=True)
    assert results_of(out)["updated_params"] == counts.updated_params


# ------------------------------------------------------------------------------------------ one-line errors

def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "run.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=HANG, **kwargs)


def assert_one_line(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unreadable_weights_and_checkpoints_are_one_line(tmp_path, tiny_dir, glue_dir):
    garbage = tmp_path / "garbage-weights"
    shutil.copytree(tiny_dir, garbage)
    (garbage / "model.safetensors").write_bytes(b"not safetensors at all")
    assert_one_line(cli(*run_args(garbage, tmp_path / "a", glue_dir=glue_dir)), str(garbage),
                    "not readable safetensors")

    out = tmp_path / "b"
    (out / "seed-1").mkdir(parents=True)
    (out / "results.json").write_text("[]")
    assert_one_line(cli(*run_args(tiny_dir, out, "--resume", glue_dir=glue_dir)), "holds a JSON list")
    (out / "results.json").unlink()
    (out / "seed-1" / "checkpoint.safetensors").write_bytes(b"\x00" * 64)
    assert_one_line(cli(*run_args(tiny_dir, out, "--resume", "--limit-train", 8, "--limit-eval", 4,
                                  glue_dir=glue_dir)), "checkpoint.safetensors is not a checkpoint", "--overwrite")


def test_output_dir_that_is_a_file_is_one_line(tmp_path, tiny_dir, glue_dir):
    (tmp_path / "a-file").write_text("")
    assert_one_line(cli(*run_args(tiny_dir, tmp_path / "a-file" / "run", "--limit-train", 8, "--limit-eval", 4,
                                  glue_dir=glue_dir)), "NotADirectoryError")


def test_nan_weights_are_named_as_a_broken_checkpoint(tmp_path, tiny_dir, glue_dir):
    broken = tmp_path / "nan-weights"
    shutil.copytree(tiny_dir, broken)
    weights = load_file(broken / "model.safetensors")
    weights["encoder.layer.0.attention.self.query.weight"][0, 0] = float("nan")
    save_file(weights, str(broken / "model.safetensors"))
    assert_one_line(cli(*run_args(broken, tmp_path / "out", "--limit-train", 8, "--limit-eval", 4, glue_dir=glue_dir)),
                    "encoder.layer.0.attention.self.query.weight holds nan or inf before any step",
                    "the checkpoint is broken")
    assert not (tmp_path / "out").exists()  # found before the data were read or a folder was made


def test_non_finite_loss_says_what_is_not_finite(tiny_dir):
    model = M.from_pretrained(tiny_dir, head="classification", num_labels=2)
    settings = run.Settings(task="stsb", model=str(tiny_dir), lr=1e-3)
    message = training.non_finite_loss(model, float("nan"), settings, "steps 1-4 of epoch 1 (stage 1)")
    assert message == ("loss is nan in steps 1-4 of epoch 1 (stage 1): weights and targets are finite and the loss "
                       "overflowed: lower --lr (now 0.001)")
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("inf")
    message = training.non_finite_loss(model, float("inf"), settings, "steps 5-8 of epoch 2 (stage 2)")
    assert message.startswith("loss is inf in steps 5-8 of epoch 2 (stage 2): training diverged: classifier.weight")


def test_a_folder_without_weights_is_refused_unless_random_init(tmp_path, tiny_dir, glue_dir):
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    short = ("--epochs", 1, "--limit-train", 8, "--limit-eval", 4)
    assert_one_line(cli(*run_args(no_weights, tmp_path / "a", *short, glue_dir=glue_dir)),
                    "no model.safetensors", "--random-init")
    assert not (tmp_path / "a" / "results.json").exists()
    run.main(run_args(no_weights, tmp_path / "b", *short, "--random-init", glue_dir=glue_dir))
    record = results_of(tmp_path / "b")
    assert record["settings"]["random_init"] is True and record["runs"][0]["status"] == "complete"


def test_resume_refuses_other_data_and_another_dev_subset(tmp_path, tiny_dir, glue_dir):
    other = tmp_path / "glue"
    (other / "RTE").mkdir(parents=True)
    shutil.copy(glue_dir / "RTE" / "dev.tsv", other / "RTE" / "dev.tsv")
    lines = (glue_dir / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()
    # the same header and row count, other rows: only the content tells them apart
    (other / "RTE" / "train.tsv").write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    short = ("--epochs", 1, "--limit-train", 8, "--limit-eval", 4, "--batch-size", 4)
    with pytest.raises(SystemExit):
        run.main(run_args(tiny_dir, out, *short, "--interrupt-after-steps", 1, glue_dir=glue_dir))
    assert set(results_of(out)["data_files"]) == {"RTE/train.tsv", "RTE/dev.tsv"}
    with pytest.raises(SystemExit, match=r"reads other data than .*results.json .*RTE/train.tsv"):
        run.main(run_args(tiny_dir, out, *short, "--resume", glue_dir=other))
    (out / "results.json").unlink()  # the checkpoint keeps the fingerprint too
    with pytest.raises(SystemExit, match=r"reads other data than .*checkpoint.safetensors .*RTE/train.tsv"):
        run.main(run_args(tiny_dir, out, *short, "--resume", glue_dir=other))
    with pytest.raises(SystemExit, match="limit_eval"):
        run.main(run_args(tiny_dir, out, *short[:-4], "--limit-eval", 6, "--batch-size", 4, "--resume",
                          glue_dir=glue_dir))
    run.main(run_args(tiny_dir, out, *short, "--resume", glue_dir=glue_dir))
    assert results_of(out)["runs"][0]["status"] == "complete"


def test_train_subset_is_one_fixed_draw_for_every_seed_and_mode(tmp_path, tiny_dir, glue_dir, capsys):
    short = ("--epochs", 1, "--limit-eval", 4, "--batch-size", 8, "--train-subset", 16)
    run.main(run_args(tiny_dir, tmp_path / "ft", *short, "--mode", "ft", "--seeds", "1,2", glue_dir=glue_dir))
    run.main(run_args(tiny_dir, tmp_path / "pt", *short, "--mode", "pt", "--seed", 3, glue_dir=glue_dir))
    assert "training subset: 16 of 2490 rows" in capsys.readouterr().out
    ft, pt = results_of(tmp_path / "ft"), results_of(tmp_path / "pt")
    drawn = ft["data_files"]["RTE/train.tsv subset"]
    assert drawn == pt["data_files"]["RTE/train.tsv subset"]  # the same rows, whatever the seed and mode
    assert (drawn["rows"], drawn["of"], drawn["subset_seed"]) == (16, 2490, 0)
    assert ft["runs"][0]["steps_per_epoch"] == 2
    assert report.row_from_record(ft, tmp_path / "ft" / "results.json")[0].subset == "train_subset=16, limit_eval=4"
    # The draw itself: sorted rows, a function of its own seed only, refused beyond the file.
    rows = data.subset_rows(2490, 16, 0)
    assert rows == sorted(set(rows)) and len(rows) == 16 and rows == data.subset_rows(2490, 16, 0)
    assert rows != data.subset_rows(2490, 16, 1) and rows != list(range(16))
    with pytest.raises(ValueError, match="the training set has 10 rows"):
        data.subset_rows(10, 11, 0)
    # Another draw is another run: refused by its settings, and by the rows' fingerprint on its own.
    more = run_args(tiny_dir, tmp_path / "pt", *short, "--mode", "pt", "--seeds", "3,4", "--resume", glue_dir=glue_dir)
    with pytest.raises(SystemExit, match="subset_seed: recorded 0, now 5"):
        run.main(more + ["--subset-seed", "5"])
    pt["data_files"]["RTE/train.tsv subset"]["sha256"] = "0" * 64
    (tmp_path / "pt" / "results.json").write_text(json.dumps(pt))
    with pytest.raises(SystemExit, match=r"reads other data .*RTE/train.tsv subset"):
        run.main(more)


def test_no_keep_checkpoint_removes_a_finished_seeds_checkpoint(tmp_path, tiny_dir, glue_dir):
    short = ("--epochs", 1, "--limit-train", 8, "--limit-eval", 4, "--batch-size", 4)
    run.main(run_args(tiny_dir, tmp_path / "keep", *short, glue_dir=glue_dir))
    assert (tmp_path / "keep" / "seed-1" / "checkpoint.safetensors").is_file()
    run.main(run_args(tiny_dir, tmp_path / "drop", *short, "--no-keep-checkpoint", glue_dir=glue_dir))
    assert not (tmp_path / "drop" / "seed-1" / "checkpoint.safetensors").exists()
    assert results_of(tmp_path / "drop")["runs"][0]["status"] == "complete"


def cli_error(argv: list, capsys) -> tuple[int, str]:
    """run.cli in-process: its exit code and the one line it printed (stderr, or the SystemExit text)."""
    with pytest.raises(SystemExit) as stop:
        run.cli([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    text = stop.value.code if isinstance(stop.value.code, str) else err
    assert "Traceback" not in err and len(text.splitlines()) == 1 and text.startswith("error: "), text
    return (1 if isinstance(stop.value.code, str) else stop.value.code), text


def test_system_failures_are_one_line(tmp_path, tiny_dir, glue_dir, monkeypatch, capsys):
    """No network for the model or for SQuAD, an unwritable output folder, Ctrl-C while tokenizing."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for variable in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "PROGTUNING_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    code, line = cli_error(["--task", "rte", "--data-dir", glue_dir, "--output-dir", tmp_path / "a"], capsys)
    assert "ConnectionError" in line and "bert-base-uncased" in line and "cannot download" in line

    monkeypatch.setenv("SQUAD_BASE_URL", "http://127.0.0.1:9/dataset")
    (tmp_path / "squad").mkdir()
    code, line = cli_error(["--task", "squad", "--model", tiny_dir, "--data-dir", tmp_path / "squad",
                            "--output-dir", tmp_path / "b"], capsys)
    assert "http://127.0.0.1:9/dataset/train-v1.1.json" in line and "place it at" in line
    assert os.listdir(tmp_path / "squad") == []

    # root ignores file modes, so a read-only folder is what the OS reports for it: EACCES on the first write
    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))
    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "write_text_atomic", refuse)
        code, line = cli_error(run_args(tiny_dir, tmp_path / "c", "--limit-train", 8, "--limit-eval", 4,
                                        glue_dir=glue_dir), capsys)
    assert line.startswith("error: PermissionError: [Errno 13] Permission denied:") and str(tmp_path / "c") in line

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(run, "load_task_data", ctrl_c)
    code, line = cli_error(run_args(tiny_dir, tmp_path / "d", glue_dir=glue_dir), capsys)
    assert code == 130 and "interrupted" in line and "--resume" in line


def test_skipped_dev_rows_are_recorded_and_said_last(tmp_path, tiny_dir, glue_dir, capsys):
    damaged = tmp_path / "glue"
    (damaged / "RTE").mkdir(parents=True)
    shutil.copy(glue_dir / "RTE" / "train.tsv", damaged / "RTE" / "train.tsv")
    lines = (glue_dir / "RTE" / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe\n"  # a label that is not one of RTE's two
    (damaged / "RTE" / "dev.tsv").write_text("".join(lines), encoding="utf-8")
    record = run.main(run_args(tiny_dir, tmp_path / "out", "--epochs", 1, "--limit-train", 8, "--batch-size", 4,
                               glue_dir=damaged))
    assert record["skipped_rows"] == {"train": 0, "dev": 1} == results_of(tmp_path / "out")["skipped_rows"]
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("WARNING: malformed rows were skipped (dev 1;") and "not comparable" in last


def test_records_number_blocks_from_1_and_a_version_1_record_is_upgraded(tmp_path, tiny_dir, glue_dir):
    short = ("--limit-train", 8, "--limit-eval", 4, "--batch-size", 4)  # 2 steps per epoch, 3 epochs/stages
    record = run.main(run_args(tiny_dir, tmp_path / "new", *short, glue_dir=glue_dir))
    numbered = [[1, 2, 3, 4], [2, 3, 4], [3, 4]]  # 4 blocks in 3 parts: {1}, {2}, {3, 4}
    assert record["format_version"] == 2 and record["stages"] == numbered
    assert [e["trainable_blocks"] for e in record["runs"][0]["epochs"]] == numbered

    # A version-1 run interrupted in epoch 2: its record and checkpoint counted blocks from 0.
    out = tmp_path / "old"
    with pytest.raises(SystemExit):
        run.main(run_args(tiny_dir, out, *short, "--interrupt-after-steps", 3, glue_dir=glue_dir))
    results = results_of(out)
    results["format_version"], results["stages"] = 1, [[0, 1, 2, 3], [1, 2, 3], [2, 3]]
    for entry in results["runs"][0]["epochs"]:
        entry["trainable_blocks"] = [b - 1 for b in entry["trainable_blocks"]]
    (out / "results.json").write_text(json.dumps(results))
    checkpoint = out / "seed-1" / "checkpoint.safetensors"
    meta = records.checkpoint_meta(checkpoint)
    del meta["format_version"]
    meta["run"]["epochs"][0]["trainable_blocks"] = [0, 1, 2, 3]
    save_file(load_file(checkpoint), str(checkpoint), metadata={"progtuning": json.dumps(meta)})
    integrity.digest_path(checkpoint).unlink()  # version 1 kept no digest
    resumed = run.main(run_args(tiny_dir, out, *short, "--resume", glue_dir=glue_dir))
    assert resumed["format_version"] == 2
    assert [e["trainable_blocks"] for e in resumed["runs"][0]["epochs"]] == numbered
    assert resumed["runs"][0]["final"] == record["runs"][0]["final"]


def test_resume_with_save_trained_writes_a_finished_seeds_weights(tmp_path, tiny_dir, glue_dir, capsys):
    short = ("--epochs", 1, "--limit-train", 8, "--limit-eval", 4, "--batch-size", 4)
    out = tmp_path / "run"
    run.main(run_args(tiny_dir, out, *short, glue_dir=glue_dir))
    assert not (out / "seed-1" / "trained.safetensors").exists()
    log_before = (out / "seed-1" / "log.jsonl").read_text()
    run.main(run_args(tiny_dir, out, *short, "--resume", "--save-trained", glue_dir=glue_dir))
    trained = load_file(out / "seed-1" / "trained.safetensors")
    final = records.checkpoint_tensors(out / "seed-1" / "checkpoint.safetensors", "model/")
    assert trained.keys() == final.keys() and all(torch.equal(trained[k], final[k]) for k in final)
    assert (out / "seed-1" / "log.jsonl").read_text() == log_before  # nothing trained, nothing logged

    gone = tmp_path / "gone"
    run.main(run_args(tiny_dir, gone, *short, "--no-keep-checkpoint", glue_dir=glue_dir))
    with pytest.raises(SystemExit, match=r"--save-trained: seed\(s\) 1 finished earlier and their checkpoint was "
                                         r"removed"):
        run.main(run_args(tiny_dir, gone, *short, "--resume", "--save-trained", glue_dir=glue_dir))


# ------------------------------------------------------------------------------------------ --train-blocks

def test_train_blocks_counts_equal_a_hand_count(tmp_path, tiny_dir):
    # TINY_CONFIG: E = word 30522x32 + positions 512x32 + types 2x32 + LayerNorm 2x32; a block = q, k, v, o
    # (32x32 + 32 each) + LayerNorm + 32->64 + 64->32 + LayerNorm; H = pooler 32x32 + 32, classifier 32x2 + 2
    embeddings = 30522 * 32 + 512 * 32 + 2 * 32 + 2 * 32
    block = 4 * (32 * 32 + 32) + 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 32
    head = (32 * 32 + 32) + (32 * 2 + 2)
    total = embeddings + 4 * block + head
    for spec, blocks in (("2", 1), ("2-3", 2), ("1,4", 2), ("none", 0)):
        record = run.main(["--task", "rte", "--model", str(tiny_dir), "--train-blocks", spec, "--count-only",
                           "--output-dir", str(tmp_path / spec)])
        trainable = embeddings + blocks * block + head
        assert record["settings"]["mode"] == "ft" and record["total_params"] == total
        assert record["trainable_params_per_stage"] == [trainable] * 3 and record["updated_params"] == 3 * trainable
        assert record["reduction"] == pytest.approx(1 - trainable / total)
    assert record["stages"] == [[], [], []]
    assert results_of(tmp_path / "1,4")["stages"] == [[1, 4]] * 3


def test_train_blocks_moves_only_the_named_block(tmp_path, tiny_dir, glue_dir):
    import export
    run.main(run_args(tiny_dir, tmp_path / "run", "--train-blocks", 2, "--epochs", 2, "--limit-train", 8,
                      "--limit-eval", 4, "--batch-size", 4, "--lr", 1e-3, glue_dir=glue_dir))
    trained, _, _ = export.load_run_model(tmp_path / "run")
    pretrained = load_file(tiny_dir / "model.safetensors")
    for name, param in trained.named_parameters():
        if name.startswith("encoder.layer."):
            same = torch.equal(param, pretrained[name])
            assert same != name.startswith("encoder.layer.1."), name  # block 2 is encoder.layer.1
    record = results_of(tmp_path / "run")
    assert [e["trainable_blocks"] for e in record["runs"][0]["epochs"]] == [[2], [2]]


@pytest.mark.parametrize("argv,message", [
    (["--train-blocks", "0"], "'0' is not a range of blocks numbered from 1"),
    (["--train-blocks", ""], "is not a block list"),
    (["--train-blocks", "two"], "is not a block list"),
    (["--train-blocks", "3-1"], "'3-1' is not a range of blocks numbered from 1"),
    (["--train-blocks", "2", "--mode", "pt"], "replaces Progtuning's schedule"),
])
def test_bad_train_blocks_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        run.parse_args(["--task", "rte", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_block_beyond_the_model_is_one_line(tmp_path, tiny_dir, capsys):
    code, line = cli_error(["--task", "rte", "--model", tiny_dir, "--train-blocks", "2,5", "--count-only",
                            "--output-dir", tmp_path / "x"], capsys)
    assert line == "error: --train-blocks '2,5': the model has blocks 1-4, so block 5 does not exist"
