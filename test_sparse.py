"""Sparse fine-tuning (sparse.py, docs/method.md §9): how many entries each rule picks and which, SAM's burn-in
touching nothing, SparseAdamW against torch's AdamW, masked runs that leave every other entry bitwise
alone (with Progtuning's frozen stages too), resume through an interrupted burn-in, the counts, and the
trained file that rebuilds the model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import model as M
import progtuning as P
import evaluation
import run
import sparse
import training
from test_run import TINY_CONFIG, results_of, run_args, tiny_dir  # noqa: F401  (tiny_dir is a fixture)

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------ how many

def test_k_per_tensor_and_global_and_tensors_left_with_none():
    scores = {"a": torch.arange(1000.0), "b": torch.arange(199.0).flip(0), "c": torch.ones(50)}
    mask = sparse.top_k_mask(scores, 0.01, "tensor")
    assert {n: len(i) for n, i in mask.items()} == {"a": 10, "b": 1}  # floor(0.01·50) = 0: c stays frozen
    assert mask["a"].tolist() == list(range(990, 1000)) and mask["b"].tolist() == [0]
    everything = sparse.top_k_mask(scores, 0.01, "global")  # floor(0.01·1249) = 12 largest over all three
    assert {n: i.tolist() for n, i in everything.items()} == {"a": list(range(988, 1000))}
    assert sparse.mask_entries(mask, ["a", "b", "c"]) == {"a": 10, "b": 1, "c": 0}
    assert sparse.planned_entries({"a": 1000, "c": 50}, 0.01, "tensor") == {"a": 10, "c": 0}
    assert sparse.planned_entries({"a": 1000}, 0.01, "global") is None
    whole = sparse.top_k_mask(scores, 1.0, "tensor")
    assert all(len(whole[n]) == scores[n].numel() for n in scores)


@pytest.mark.parametrize("value", ["0", "-0.1", "1.5"])
def test_sparsity_outside_zero_one_is_refused_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as stop:
        run.parse_args(["--task", "rte", "--method", "random", "--sparsity", value])
    assert stop.value.code == 2 and "--sparsity must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--sparsity must be in \(0, 1\]"):
        sparse.top_k_mask({"a": torch.ones(3)}, float(value), "tensor")


@pytest.mark.parametrize("argv,message", [
    (["--method", "full", "--sparsity", "0.01"], "--sparsity applies to --method sam/random/magnitude"),
    (["--method", "random", "--burn-in-steps", "5"], "--burn-in-steps applies to --method sam"),
    (["--method", "sam", "--burn-in-steps", "0"], "--burn-in-steps must be >= 1"),
    (["--method", "sam", "--mask-scope", "block"], "invalid choice"),
])
def test_sparse_flag_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--task", "rte", *argv])
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ which

class LinearRegression(nn.Module):
    """y = W·x on fixed features: the training loss's gradient has a closed form."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[0.5, -1.0, 2.0, 0.0, 0.3, -0.7]]))

    def forward(self, x):
        return x @ self.w.T


def test_sam_picks_the_entries_of_largest_summed_gradient():
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 6, generator=generator), torch.randn(4, 1, generator=generator)) for _ in range(3)]
    model = LinearRegression()
    w0 = model.w.detach().clone()
    # By hand: L_b = mean_i (w·x_i − y_i)², so g_b = (2/B) Σ_i (w·x_i − y_i) x_i; SAM ranks |Σ_b g_b|.
    by_hand = sum((2 / len(x)) * ((x @ w0.T - y) * x).sum(dim=0) for x, y in batches)
    scores = sparse.burn_in(model, ["w"], batches, lambda b: ((model(b[0]) - b[1]) ** 2).mean())
    torch.testing.assert_close(scores["w"].reshape(-1), by_hand.abs(), rtol=1e-6, atol=1e-7)
    mask = sparse.top_k_mask(scores, 0.5, "tensor")
    assert mask["w"].tolist() == sorted(by_hand.abs().argsort(descending=True)[:3].tolist())
    assert torch.equal(model.w, w0) and model.w.grad is None  # burn-in changed nothing


def test_random_is_reproducible_from_the_seed_and_magnitude_picks_the_largest_weights():
    numels = {"a": 1000, "b": 400}
    one, again, other = (sparse.random_mask(numels, 0.05, "tensor", seed) for seed in (1, 1, 2))
    assert all(torch.equal(one[n], again[n]) for n in numels)
    assert not torch.equal(one["a"], other["a"])
    assert [len(one[n]) for n in numels] == [50, 20]
    assert len(torch.cat(list(sparse.random_mask(numels, 0.05, "global", 1).values()))) == 70

    model = LinearRegression()
    mask = sparse.top_k_mask(sparse.magnitude_scores(model, ["w"]), 0.5, "tensor")
    assert mask["w"].tolist() == [1, 2, 5]  # |−1.0|, |2.0|, |−0.7|


def test_burn_in_on_a_bert_changes_no_weight_and_restores_requires_grad(tiny_dir):  # noqa: F811
    model = M.from_pretrained(tiny_dir, head="classification", num_labels=2)
    P.apply_stage(model, [3], "full")  # some frozen, some not: both must come back as they were
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ids = torch.randint(1000, 2000, (4, 12), generator=torch.Generator().manual_seed(0))
    batches = [(ids, torch.tensor([0, 1, 1, 0]))] * 3
    eligible = sparse.eligible_names(model)
    scores = sparse.burn_in(model, eligible, batches,
                            lambda b: torch.nn.functional.cross_entropy(model(b[0]), b[1]))
    assert set(scores) == set(eligible) and all(s.sum() > 0 for s in scores.values() if s.numel() > 2)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) and param.grad is None
        assert param.requires_grad == flags[name]
    assert not any(n.startswith(("pooler", "classifier")) for n in eligible)  # the head trains whole
    assert all(not n.startswith("embeddings") for n in sparse.eligible_names(model, freeze_embeddings=True))


def test_gradients_are_masked_through_stage_switches(tiny_dir):  # noqa: F811
    model = M.from_pretrained(tiny_dir, head="classification", num_labels=2)
    P.apply_stage(model, [2, 3], "random")  # block 1 frozen when the mask arrives
    eligible = sparse.eligible_names(model)
    params = dict(model.named_parameters())
    mask = sparse.random_mask({n: params[n].numel() for n in eligible}, 0.1, "tensor", seed=0)
    sparse.mask_gradients(model, mask)
    ids = torch.randint(1000, 2000, (4, 12), generator=torch.Generator().manual_seed(0))
    for blocks in ([0, 1, 2, 3], [2, 3]):
        P.apply_stage(model, blocks, "random", entries=sparse.mask_entries(mask, eligible))
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(ids), torch.tensor([0, 1, 1, 0])).backward()
        for name, indices in mask.items():
            grad = params[name].grad
            if M.part_of(name)[0] == "block" and M.part_of(name)[1] not in blocks:
                assert grad is None
                continue
            outside = torch.ones(grad.numel(), dtype=torch.bool)
            outside[indices] = False
            assert not grad.reshape(-1)[outside].any() and grad.reshape(-1)[indices].any(), name
    assert params["classifier.weight"].grad.all()  # the head: whole gradients


# ------------------------------------------------------------------------------------------ SparseAdamW

def test_sparse_adamw_equals_torch_adamw_on_masked_dense_tensors():
    generator = torch.Generator().manual_seed(0)
    shapes = {"matrix": (30, 20), "bias": (20,), "head": (5, 20)}
    start = {n: torch.randn(*s, generator=generator) for n, s in shapes.items()}
    mask = {n: torch.randperm(math.prod(shapes[n]), generator=generator)[:k].sort().values
            for n, k in (("matrix", 37), ("bias", 4))}   # the head trains whole
    ours = {n: nn.Parameter(t.clone()) for n, t in start.items()}
    dense = {n: nn.Parameter(t.clone()) for n, t in start.items()}
    keep = {n: torch.zeros(math.prod(shapes[n]), dtype=torch.bool).index_fill_(0, i, True).view(shapes[n])
            for n, i in mask.items()}
    decay = 0.1

    def groups(params):
        return [{"params": [params["matrix"], params["head"]], "weight_decay": decay},
                {"params": [params["bias"]], "weight_decay": 0.0}]

    sparse_opt = sparse.SparseAdamW(groups(ours), {ours[n]: i for n, i in mask.items()}, lr=1e-3)
    # The reference: torch's AdamW with its own decay off, the decay applied by hand to masked-in entries
    # of matrices (and all of the head) before each step -- AdamW's order -- and the gradient masked.
    torch_opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": 0.0} for g in groups(dense)], lr=1e-3)
    for step in range(60):
        lr = 1e-3 * min(1.0, (step + 1) / 10) * (1 - step / 60)  # warmup, then linear decay
        for opt in (sparse_opt, torch_opt):
            for group in opt.param_groups:
                group["lr"] = lr
        grads = {n: torch.randn(*s, generator=generator) for n, s in shapes.items()}
        for n in shapes:
            ours[n].grad = grads[n].clone()
            dense[n].grad = grads[n] * keep[n] if n in keep else grads[n].clone()
        with torch.no_grad():
            dense["matrix"][keep["matrix"]] *= 1 - lr * decay
            dense["head"].mul_(1 - lr * decay)
        sparse_opt.step()
        torch_opt.step()
    for n in shapes:
        torch.testing.assert_close(ours[n], dense[n], rtol=1e-6, atol=1e-6)
        if n in keep:  # every entry outside the mask: bitwise its start value
            assert torch.equal(ours[n][~keep[n]], start[n][~keep[n]])
    assert sparse_opt.state_bytes() == 4 * (2 * 37 + 2 * 4 + 2 * 100) + 3 * 4  # moments of k entries + steps
    assert sparse.dense_adamw_state_bytes(list(ours.values())) == 4 * 2 * (600 + 20 + 100)


# ------------------------------------------------------------------------------------------ runs

SHORT = ("--epochs", 3, "--limit-train", 48, "--limit-eval", 16, "--batch-size", 8, "--lr", 1e-2,
         "--sparsity", 0.05)


def test_sam_pt_run_moves_only_masked_entries_and_frozen_blocks_never(tmp_path, tiny_dir, glue_dir,  # noqa: F811
                                                                     monkeypatch):
    snapshots = []
    save = training.save_checkpoint

    def save_and_snapshot(path, model, *args, **kwargs):
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return save(path, model, *args, **kwargs)

    monkeypatch.setattr(training, "save_checkpoint", save_and_snapshot)
    run.main(run_args(tiny_dir, tmp_path, "--method", "sam", "--mode", "pt", *SHORT, "--burn-in-steps", 4,
                      glue_dir=glue_dir))
    record = results_of(tmp_path)
    mask_record = record["runs"][0]["mask"]
    assert mask_record["rule"] == "sam" and mask_record["burn_in_steps"] == 4 and mask_record["burn_in_seconds"] > 0
    mask = {n: i for n, i in load_file(tmp_path / "seed-1" / "checkpoint.safetensors").items()
            if n.startswith("mask/")}
    pretrained = load_file(tiny_dir / "model.safetensors")
    final = snapshots[-1]
    moved_somewhere = False
    for name, theta0 in pretrained.items():
        if M.part_of(name)[0] == "head":
            continue  # the head (here the pooler) trains whole
        keep = torch.zeros(theta0.numel(), dtype=torch.bool)
        if f"mask/{name}" in mask:
            keep[mask[f"mask/{name}"]] = True
        after = final[name].reshape(-1)
        assert torch.equal(after[~keep], theta0.reshape(-1)[~keep]), f"{name} moved outside its mask"
        moved_somewhere |= not torch.equal(after[keep], theta0.reshape(-1)[keep])
    assert moved_somewhere
    # 4 blocks, 3 stages: block 1 (0-based 0) trains in stage 1 only, block 2 in stages 1-2.
    for epoch, frozen in ((1, [0]), (2, [0, 1])):
        for name in final:
            part, block = M.part_of(name)
            if part == "block" and block in frozen:
                assert torch.equal(snapshots[epoch - 1][name], final[name]), f"{name} moved after epoch {epoch}"
    # counts: the masked-in entries + the head, per the stage's blocks
    entries = mask_record["entries_per_tensor"]
    head = sum(t.numel() for n, t in final.items() if M.part_of(n)[0] == "head")
    embeddings = sum(k for n, k in entries.items() if n.startswith("embeddings."))
    per_block = mask_record["entries_per_block"]
    assert record["updated_params_per_epoch"] == [head + embeddings + sum(per_block[b:]) for b in (0, 1, 2)]
    assert record["trainable_params"] == head + embeddings + sum(per_block)
    assert 0 < mask_record["optimizer_state_bytes"] < mask_record["dense_adamw_state_bytes"] / 10


def test_count_only_plans_scope_tensor_exactly_and_says_what_global_cannot(tmp_path, capsys):
    folder = tmp_path / "config-only"
    folder.mkdir()
    config = dict(model_type="bert", vocab_size=10, hidden_size=4, num_hidden_layers=3, num_attention_heads=2,
                  intermediate_size=8, max_position_embeddings=8, type_vocab_size=2)
    (folder / "config.json").write_text(json.dumps(config))
    record = run.main(["--task", "rte", "--method", "random", "--mode", "pt", "--model", str(folder), "--count-only",
                       "--sparsity", "0.1", "--max-length", "8", "--output-dir", str(tmp_path / "out")])
    # By hand, floor(0.1·numel) per tensor: E word 40 → 4, position 32 → 3, the rest 0 (7 in all);
    # a block: Q, K, V, attention-out weights 16 → 1 each, FFN weights 32 → 3 each, biases/LayerNorms 0 (10);
    # the head trains whole: pooler 4·4+4, classifier 4·2+2 = 30.
    assert record["trainable_params"] == 7 + 3 * 10 + 30
    assert record["updated_params_per_epoch"] == [67, 57, 47]
    assert record["baseline_updated_params"] == 3 * 67
    run.main(["--task", "rte", "--method", "random", "--model", str(folder), "--count-only", "--sparsity", "0.1",
              "--max-length", "8", "--mask-scope", "global", "--output-dir", str(tmp_path / "global")])
    printed = capsys.readouterr().out
    # eligible: E 40 + 32 + 8 + 8 = 88 and 3 blocks of 172: 604 entries, of which floor(0.1·604) = 60
    assert "depends on the mask" in printed and "k = 60 of 604 eligible entries" in printed


def test_resume_through_an_interrupted_burn_in_and_training_is_bitwise(tmp_path, tiny_dir, glue_dir):  # noqa: F811
    args = ("--method", "sam", "--mode", "pt", *SHORT, "--burn-in-steps", 5, "--save-trained")
    run.main(run_args(tiny_dir, tmp_path / "whole", *args, glue_dir=glue_dir))
    broken = tmp_path / "broken"
    for interrupt_after in (3, 6):  # inside the burn-in (5 batches), then inside training's first epoch
        with pytest.raises(SystemExit) as stop:
            run.main(run_args(tiny_dir, broken, *args, "--interrupt-after-steps", interrupt_after,
                              *(("--resume",) if interrupt_after == 6 else ()), glue_dir=glue_dir))
        assert stop.value.code == 130
    assert "burn_in_step" not in json.loads(
        __import__("safetensors").safe_open(str(broken / "seed-1" / "checkpoint.safetensors"), "pt")
        .metadata()["progtuning"])["position"]
    run.main(run_args(tiny_dir, broken, *args, "--resume", glue_dir=glue_dir))
    whole = load_file(tmp_path / "whole" / "seed-1" / "trained.safetensors")
    resumed = load_file(broken / "seed-1" / "trained.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert results_of(broken)["runs"][0]["final"] == results_of(tmp_path / "whole")["runs"][0]["final"]


def test_trained_file_rebuilds_a_model_with_the_runs_own_predictions(tmp_path, tiny_dir, glue_dir):  # noqa: F811
    run.main(run_args(tiny_dir, tmp_path, "--method", "random", "--mode", "pt", *SHORT, "--save-trained",
                      glue_dir=glue_dir))
    trained = tmp_path / "seed-1" / "trained.safetensors"
    assert all(k.split("/")[0] in ("indices", "values", "dense") for k in load_file(trained))
    settings = run.parse_args(run_args(tiny_dir, tmp_path, "--method", "random", *SHORT, glue_dir=glue_dir))
    tokenizer = M.load_tokenizer(tiny_dir)
    task_data = evaluation.load_task_data(settings, tokenizer)
    rebuilt = sparse.rebuild(trained)
    predictions = tmp_path / "again"
    predictions.mkdir()
    evaluation.evaluate_glue(settings, rebuilt, task_data.evals, tokenizer, predictions)
    assert (predictions / "predictions-rte.tsv").read_text() == \
        (tmp_path / "seed-1" / "predictions-rte.tsv").read_text()

    # The command line writes a whole model folder that loads as any checkpoint does.
    out = tmp_path / "folder"
    subprocess.run([sys.executable, str(HERE / "sparse.py"), "rebuild", str(trained), "--out", str(out)],
                   check=True, capture_output=True, text=True)
    loaded = M.from_pretrained(out, head="classification", num_labels=2)
    for name, tensor in rebuilt.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    proc = subprocess.run([sys.executable, str(HERE / "sparse.py"), "rebuild", str(tiny_dir / "model.safetensors"),
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 1 and "not a sparse trained file" in proc.stderr


def test_sam_pt_on_the_real_minilm_and_real_rte(tmp_path, minilm_dir, glue_dir):
    run.main(["--task", "rte", "--method", "sam", "--mode", "pt", "--model", str(minilm_dir), "--data-dir",
              str(glue_dir), "--limit-train", "32", "--limit-eval", "16", "--burn-in-steps", "2", "--output-dir",
              str(tmp_path), "--log-every", "100"])
    record = results_of(tmp_path)
    mask = record["runs"][0]["mask"]
    assert record["runs"][0]["status"] == "complete" and len(record["runs"][0]["epochs"]) == 3
    # 0.5% of each eligible tensor of MiniLM (scope tensor): the planned and the chosen counts agree.
    assert mask["entries"] == sum(math.floor(0.005 * n) for n in mask_numels(minilm_dir))
    assert record["updated_params"] < record["baseline_updated_params"]
    assert np.isfinite(record["runs"][0]["final"]["rte"]["accuracy"])


def mask_numels(folder: Path) -> list[int]:
    model = M.from_pretrained(folder, head="classification", num_labels=2)
    params = dict(model.named_parameters())
    return [params[n].numel() for n in sparse.eligible_names(model)]
