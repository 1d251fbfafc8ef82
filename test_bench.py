"""bench.py: the cost model against hand-computed numbers, the smoke run's JSON, and proof that freezing
E makes the backward pass stop at the lowest trainable block (SPEC.md section 8)."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bench
import progtuning
from model import ModelConfig, Transformer

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------------------------------
# The cost model, by hand
# --------------------------------------------------------------------------------------------------

def stage(t: int, L: int = 12, T: int = 3) -> list[int]:
    return progtuning.plan_stages(L, T, "pt")[t - 1]


def test_full_ft_costs_three_units_per_block():
    assert bench.full_ft_units(12) == 36  # 12 forward + 12 x (dX + dW)
    assert bench.cost_ratio(12, list(range(12))) == 1.0


def test_pt_stages_with_embeddings_training():
    # The gradient must reach E, so every frozen block still costs its dX.
    assert bench.cost_ratio(12, stage(1)) == 1.0
    assert bench.cost_ratio(12, stage(2)) == pytest.approx((12 + 4 * 1 + 8 * 2) / 36)  # 32/36
    assert bench.cost_ratio(12, stage(3)) == pytest.approx((12 + 8 * 1 + 4 * 2) / 36)  # 28/36


def test_pt_stages_with_embeddings_frozen():
    # Backward stops at the lowest trainable block: frozen blocks below it cost nothing.
    assert bench.cost_ratio(12, stage(1), embeddings_train=False) == 1.0
    assert bench.cost_ratio(12, stage(2), embeddings_train=False) == pytest.approx((12 + 8 * 2) / 36)  # 28/36
    assert bench.cost_ratio(12, stage(3), embeddings_train=False) == pytest.approx((12 + 4 * 2) / 36)  # 20/36
    assert bench.cost_ratio(12, stage(3), embeddings_train=False) <= 0.75


def test_peft_blocks_cost_their_input_gradient_only():
    # A PEFT-trainable block: 1 unit backward (dX), its small dW counted as 0.
    assert bench.cost_units(12, list(range(12)), "lora", embeddings_train=False) == 24
    assert bench.cost_units(12, stage(3), "lora", embeddings_train=False) == 12 + 4
    assert bench.cost_units(12, stage(2), "adapter", embeddings_train=False) == 12 + 8
    # BitFit trains the embedding LayerNorm bias, so its gradient crosses every block in every stage.
    assert bench.embeddings_train("bitfit", freeze_embeddings=False)
    assert bench.cost_units(12, stage(3), "bitfit", embeddings_train=True) == 24
    assert not bench.embeddings_train("bitfit", freeze_embeddings=True)
    assert not bench.embeddings_train("lora", freeze_embeddings=False)
    assert bench.embeddings_train("full", freeze_embeddings=False)
    assert not bench.embeddings_train("full", freeze_embeddings=True)


def test_uneven_parts_and_bad_input():
    # L = 6, T = 4: parts of 1, 2, 1, 2 blocks (b = 0, 1, 3, 4, 6); stage 3 trains blocks 5-6 (0-based 4, 5).
    assert stage(3, L=6, T=4) == [3, 4, 5]
    assert Fraction(bench.cost_units(6, [3, 4, 5], "full", False), bench.full_ft_units(6)) == Fraction(6 + 6, 18)
    with pytest.raises(ValueError, match="outside"):
        bench.cost_units(6, [6])
    with pytest.raises(ValueError, match="unknown method"):
        bench.cost_units(6, [5], "prefix")


def test_block_span_is_one_based():
    assert bench.block_span([8, 9, 10, 11]) == "9-12"
    assert bench.block_span([5]) == "6"
    assert bench.block_span([]) == "none"


# --------------------------------------------------------------------------------------------------
# The smoke run, end to end in a child process
# --------------------------------------------------------------------------------------------------

def test_smoke_run_writes_complete_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(HERE / "bench.py"), "--smoke", "--no-reference",
                           "--freeze-embeddings", "--json-out", str(out)],
                          cwd=HERE, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    names = [case["name"] for case in report["cases"]]
    expected = [f"{label}{c}" for label in ("", "adapter ", "bitfit ", "lora ")
                for c in ("ft", "pt stage 1", "pt stage 2", "pt stage 3")]
    assert names == expected + ["ft [bf16]", "eval ours"]
    for case in report["cases"]:
        assert case["step_ms"] > 0 and case["peak_memory_mib"] > 0, case
        if case["kind"] == "train":
            assert 0 < case["cost_ratio"] <= 1, case
    cases = {case["name"]: case for case in report["cases"]}
    # tiny config: L = 6, T = 3, E frozen. pt stage 3 trains blocks 5-6: (6 + 2 x 2) / 18.
    assert cases["pt stage 3"]["blocks"] == "5-6"
    assert cases["pt stage 3"]["cost_ratio"] == pytest.approx(10 / 18)
    assert cases["lora pt stage 2"]["cost_ratio"] == pytest.approx((6 + 4) / 18)
    assert cases["ft"]["ratio_to_full_ft"] == 1.0
    # E frozen: backward provably does not enter the lowest trainable block of a later stage ...
    assert cases["pt stage 3"]["backward_enters_lowest_trainable_block"] is False
    # ... nor even block 1's input (E's output) in stage 1, since nothing in E trains.
    assert cases["pt stage 1"]["backward_enters_lowest_trainable_block"] is False
    assert cases["eval ours"]["examples_per_s"] > 0
    machine = report["machine"]
    assert machine["threads"] >= 1 and machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    assert "ft_step_time_bf16_over_fp32" in report["comparison"]
    assert "x full FT" in proc.stdout and "pt stage 3" in proc.stdout


def test_reference_case_runs_in_process():
    pytest.importorskip("transformers")
    settings = bench.BenchSettings(smoke=True).resolve()
    case = bench.Case("ft reference", blocks=list(range(6)), impl="reference", section="reference")
    result = bench.run_case(settings, case)
    assert result["step_ms"] > 0 and result["trainable_params"] > 0
    eval_case = bench.Case("eval reference", blocks=list(range(6)), impl="reference", kind="eval")
    assert bench.run_case(settings, eval_case)["examples_per_s"] > 0


def test_profile_splits_the_step_into_its_phases_and_names_operators(capsys, tmp_path):
    bench.main(["--smoke", "--profile", "ft,lora pt stage 3", "--json-out", str(tmp_path / "profile.json")])
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["ms", "per", "step", "ft", "lora", "pt", "stage", "3"]
    assert all(phase in printed for phase in bench.PHASES)
    assert "lora pt stage 3 (blocks 5-6): top operators" in printed
    ft, lora = json.loads((tmp_path / "profile.json").read_text())["profiles"]
    assert (ft["blocks"], lora["blocks"]) == ("1-6", "5-6")
    for profile in (ft, lora):
        assert set(profile["phase_ms_per_step"]) == set(bench.PHASES)
        assert all(ms > 0 for ms in profile["phase_ms_per_step"].values())
        ops = profile["top_ops_self_cpu_ms_per_step"]
        assert 0 < len(ops) <= bench.TOP_OPS and not any(o["op"] in bench.PHASES for o in ops)
    with pytest.raises(SystemExit, match=r"no case named \['lora stage 9'\]"):
        bench.run_profiles(bench.BenchSettings(smoke=True, profile=("lora stage 9",)).resolve())


# --------------------------------------------------------------------------------------------------
# freeze_embeddings: the backward pass really stops at the lowest trainable block
# --------------------------------------------------------------------------------------------------

TINY = ModelConfig(model_type="bert", vocab_size=50, hidden_size=16, num_hidden_layers=6,
                   num_attention_heads=2, intermediate_size=32)


def stage_two_of_three(freeze_embeddings: bool):
    torch.manual_seed(0)
    model = Transformer(TINY, head="classification", num_labels=2)
    blocks = progtuning.plan_stages(6, 3, "pt")[1]  # stage 2: blocks 3-6 (0-based 2..5)
    progtuning.apply_stage(model, blocks, "full", freeze_embeddings=freeze_embeddings)
    inputs_seen = []
    model.blocks[min(blocks)].register_forward_pre_hook(lambda module, args: inputs_seen.append(args[0]))
    input_ids = torch.randint(0, TINY.vocab_size, (3, 7))
    labels = torch.tensor([0, 1, 1])
    return model, blocks, inputs_seen, input_ids, labels


def test_frozen_embeddings_stop_backward_at_lowest_trainable_block():
    model, blocks, inputs_seen, input_ids, labels = stage_two_of_three(freeze_embeddings=True)
    F.cross_entropy(model(input_ids), labels).backward()
    assert inputs_seen[0].requires_grad is False  # no graph below block 3: backward stopped there
    for j in range(min(blocks)):
        assert all(p.grad is None for p in model.blocks[j].parameters()), f"block {j + 1} got a gradient"
    assert all(p.grad is None for p in model.embeddings.parameters())
    assert all(p.grad is not None for j in blocks for p in model.blocks[j].parameters())


def test_trainable_embeddings_pull_backward_through_frozen_blocks():
    # The counterpart that makes the test above able to fail.
    model, blocks, inputs_seen, input_ids, labels = stage_two_of_three(freeze_embeddings=False)
    F.cross_entropy(model(input_ids), labels).backward()
    assert inputs_seen[0].requires_grad is True
    assert model.embeddings.word_embeddings.weight.grad is not None
    assert all(p.grad is None for p in model.blocks[0].parameters())  # frozen, though dX passed through


def test_frozen_embeddings_stay_bitwise_unchanged_under_adamw():
    model, blocks, _, input_ids, labels = stage_two_of_three(freeze_embeddings=True)
    before = {k: v.clone() for k, v in model.embeddings.state_dict().items()}
    trained_before = model.blocks[5].output.dense.weight.detach().clone()
    optimizer = bench.make_optimizer(model)
    for _ in range(3):
        F.cross_entropy(model(input_ids), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for key, value in model.embeddings.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(model.blocks[5].output.dense.weight, trained_before)
