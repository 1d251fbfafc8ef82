"""bench.py: the cost model against hand-computed numbers, the smoke run's JSON, and proof that freezing
E makes the backward pass stop at the lowest trainable block (docs/method.md §8)."""

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
from conftest import HANG

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
# Model FLOPs, by hand and against autograd's own count
# --------------------------------------------------------------------------------------------------

BERT_BASE = ModelConfig(**bench.CONFIGS["bert-base"])


def bert_base_flops(blocks: list[int], embeddings_train: bool = True) -> dict[str, int]:
    return bench.step_flops(BERT_BASE, 32, 128, blocks, "full", embeddings_train)


def test_step_flops_of_bert_base_full_ft_by_hand():
    # B = 32, T = 128: N = 4096 tokens; d = 768, f = 3072, L = 12, 2 labels.
    linear = 57_982_058_496      # 2 x 4096 x (4 x 768^2 + 2 x 768 x 3072): Q, K, V, attention out, FFN in, out
    attention = 1_610_612_736    # 4 x 32 x 128^2 x 768: Q K^T and P V
    head = 37_847_040            # 2 x 32 x (768^2 + 768 x 2): pooler and classifier on the [CLS] rows
    forward = 12 * (linear + attention) + head
    assert forward == 715_149_901_824
    dx = 12 * (linear + 2 * attention) + head   # 8 B T^2 d in attention: dQ, dK, dP, dV
    dw = 12 * linear + head
    assert bert_base_flops(list(range(12))) == {
        "forward": 715_149_901_824, "backward_dx": 734_477_254_656, "backward_dw": 695_822_548_992,
        "total": 2_145_449_705_472}
    assert (dx, dw) == (734_477_254_656, 695_822_548_992)


def test_step_flops_of_pt_stage_3():
    ft = bert_base_flops(list(range(12)))
    blocks = stage(3)  # blocks 9-12
    assert blocks == [8, 9, 10, 11]
    head = 37_847_040
    # E trains: the gradient still crosses all 12 blocks, but only 4 of them compute dW.
    e_trains = bert_base_flops(blocks)
    assert e_trains["forward"] == ft["forward"] and e_trains["backward_dx"] == ft["backward_dx"]
    assert e_trains["backward_dw"] - head == (ft["backward_dw"] - head) // 3 == 231_928_233_984
    # E frozen: blocks 1-8 get no dX, and block 9 none into its input through Q, K, V (6 N d^2 less).
    e_frozen = bert_base_flops(blocks, embeddings_train=False)
    per_block_dx = 61_203_283_968  # 57_982_058_496 + 8 x 32 x 128^2 x 768
    qkv_dx = 14_495_514_624        # 6 x 4096 x 768^2
    assert e_frozen["backward_dx"] == 4 * per_block_dx - qkv_dx + head == 230_355_468_288
    assert e_frozen["backward_dw"] == e_trains["backward_dw"]
    assert e_frozen["total"] == 1_177_471_451_136


TINY4 = ModelConfig(model_type="bert", vocab_size=50, hidden_size=16, num_hidden_layers=4,
                    num_attention_heads=2, intermediate_size=32)


def test_step_flops_of_lora_and_adapters_by_hand():
    # B = 3, T = 8: N = 24; d = 16, f = 32, L = 4; blocks 3-4 train, E frozen. Per block: linear 98,304
    # (2 x 24 x 2,048), attention forward 12,288 (4 x 3 x 64 x 16), and 6,144 (2 x 24 x 16 x 8) per
    # LoRA matmul (r = 8) or 3,072 (2 x 24 x 16 x 4) per adapter matmul (m = 4). Head 1,728.
    lora = bench.step_flops(TINY4, 3, 8, [2, 3], "lora", embeddings_train=False, lora_r=8)
    assert lora["forward"] == 4 * (98_304 + 12_288 + 4 * 6_144) + 1_728 == 542_400
    # Block 4 passes dX everywhere; block 3 not into its input (Q, K, V: 36,864; LoRA A: 2 x 6,144) and
    # no dK (6,144), since K carries no LoRA.
    assert lora["backward_dx"] == (98_304 + 24_576 + 24_576) + (61_440 + 18_432 + 12_288) + 1_728 == 241_344
    assert lora["backward_dw"] == 2 * 4 * 6_144 + 1_728 == 50_880

    adapter = bench.step_flops(TINY4, 3, 8, [2, 3], "adapter", embeddings_train=False, adapter_size=4)
    assert adapter["forward"] == 4 * (98_304 + 12_288 + 4 * 3_072) + 1_728 == 493_248
    # Block 3: nothing below its first adapter trains, so only FFN in and out (49,152) and three adapter
    # matmuls pass dX; attention's backward never runs.
    assert adapter["backward_dx"] == (98_304 + 24_576 + 12_288) + (49_152 + 3 * 3_072) + 1_728 == 195_264
    assert adapter["backward_dw"] == 2 * 4 * 3_072 + 1_728 == 26_304
    # BitFit: no matmul in a bias gradient, and BERT's pooler weight stays frozen.
    bitfit = bench.step_flops(TINY4, 3, 8, [2, 3], "bitfit", embeddings_train=False)
    assert bitfit["backward_dw"] == 2 * 3 * 16 * 2 == 192
    with pytest.raises(ValueError, match="outside"):
        bench.step_flops(TINY4, 3, 8, [4])
    assert bench.LORA_TARGETS == progtuning.MethodOptions().lora_targets


@pytest.mark.parametrize("method", progtuning.METHODS)
def test_step_flops_equals_what_autograd_runs(method):
    """torch's FlopCounterMode counts every matmul a real forward + backward executes; SDPA's math backend
    makes attention's matmuls visible to it. (Fused GPU kernels may compute dK where autograd needs none.)"""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    input_ids = torch.randint(0, TINY.vocab_size, (3, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1])
    stages = progtuning.plan_stages(6, 3, "pt") + [[]]
    for blocks in stages:
        for freeze_embeddings in (False, True):
            model = Transformer(TINY, head="classification", num_labels=2)
            progtuning.add_method(model, method)
            progtuning.apply_stage(model, blocks, method, freeze_embeddings)
            e_trains = bench.embeddings_train(method, freeze_embeddings)
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                F.cross_entropy(model(input_ids, torch.ones_like(input_ids)), labels).backward()
            expected = bench.step_flops(TINY, 3, 8, blocks, method, e_trains)["total"]
            assert counter.get_total_flops() == expected, (method, blocks, freeze_embeddings)


# --------------------------------------------------------------------------------------------------
# Peaks, the matmul yardstick, utilisation
# --------------------------------------------------------------------------------------------------

def test_gpu_peaks_by_device_name():
    assert bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3")[0] == 989.4
    assert bench.gpu_peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert bench.gpu_peak_tflops("NVIDIA H100 NVL")[0] == 835.0
    assert bench.gpu_peak_tflops("NVIDIA H200")[0] == 989.4
    assert bench.gpu_peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert "datasheet" in bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3")[1]
    assert bench.gpu_peak_tflops("Tesla V100-SXM2-16GB") is None


def test_utilisation():
    # 2e12 FLOPs in 10 ms: 200 TFLOP/s.
    h100 = bench.utilisation(2 * 10**12, 10.0, "bf16", "NVIDIA H100 80GB HBM3", matmul_tflops=800.0)
    assert h100["tflops"] == pytest.approx(200.0)
    assert h100["mfu"] == pytest.approx(200 / 989.4) and h100["mfu_vs_measured_matmul"] == pytest.approx(0.25)
    unknown = bench.utilisation(2 * 10**12, 10.0, "bf16", "Tesla V100", matmul_tflops=100.0)
    assert unknown["mfu"] is None and "Tesla V100" in unknown["mfu_note"]
    assert unknown["mfu_vs_measured_matmul"] == pytest.approx(2.0)
    fp32 = bench.utilisation(2 * 10**12, 10.0, "fp32", "NVIDIA H100 80GB HBM3", matmul_tflops=800.0)
    assert fp32["mfu"] is None and fp32["mfu_vs_measured_matmul"] is None
    cpu = bench.utilisation(10**9, 10.0, "fp32", None, matmul_tflops=0.1)
    assert cpu["tflops"] == pytest.approx(0.1) and cpu["mfu"] is None and "CPU" in cpu["mfu_note"]


def test_measure_matmul_tflops_on_cpu():
    assert 0 < bench.measure_matmul_tflops("cpu", torch.float32, n=64, warmup=1, reps=2) < 100


# --------------------------------------------------------------------------------------------------
# The smoke run, end to end in a child process
# --------------------------------------------------------------------------------------------------

def test_smoke_run_writes_complete_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(HERE / "bench.py"), "--smoke", "--no-reference",
                           "--freeze-embeddings", "--json-out", str(out)],
                          cwd=HERE, capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    names = [case["name"] for case in report["cases"]]
    expected = [f"{label}{c}" for label in ("", "adapter ", "bitfit ", "lora ", "sam ", "random ")
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
    # FLOPs and utilisation: the tiny config at 2 x 16, blocks 5-6, E frozen.
    tiny = ModelConfig(**bench.CONFIGS["tiny"])
    pt3_flops = bench.step_flops(tiny, 2, 16, [4, 5], "full", embeddings_train=False)["total"]
    assert cases["pt stage 3"]["flops_per_step"] == pt3_flops
    assert cases["eval ours"]["flops_per_step"] == bench.step_flops(tiny, 2, 16, list(range(6)))["forward"]
    for case in report["cases"]:
        assert case["flops_per_step"] > 0 and case["tflops"] > 0, case
        assert case["mfu"] is None and "CPU" in case["mfu_note"], case
        assert 0 < case["first_step_s"] <= case["warmup_s"], case
    assert report["measured_matmul_tflops"] > 0
    assert (report["measured_matmul_n"], report["measured_matmul_dtype"]) == (256, "float32")
    assert report["settings"]["isolate"] is False  # --smoke
    header = proc.stdout.splitlines()[0]
    assert "first s" in header and "TFLOP/s" in header and "MFU" in header
    assert "matmul 256x256x256 float32" in proc.stdout


def test_cases_filter_runs_only_the_named_cases(capsys):
    argv = ["--smoke", "--no-reference", "--cases", "lora pt stage 2, pt stage 3"]
    settings = bench.parse_args(argv).resolve()
    assert settings.cases == ("lora pt stage 2", "pt stage 3")
    report = bench.run_bench(settings, log=lambda line: None)
    # Planned order, not the order named; with neither ft nor lora ft run, no ratio can be formed.
    assert [c["name"] for c in report["cases"]] == ["pt stage 3", "lora pt stage 2"]
    for case in report["cases"]:
        assert case["ratio_to_full_ft"] is None and case["ratio_to_own_ft"] is None, case
        assert case["cost_ratio"] > 0 and case["flops_per_step"] > 0
    assert report["comparison"] == {}
    table = bench.format_table(report)
    assert "pt stage 3" in table and "lora pt stage 2" in table and "adapter" not in table
    with pytest.raises(SystemExit, match=r"no case named 'pt stage 9'; the cases are: ft, pt stage 1"):
        bench.main(["--smoke", "--cases", "ft,pt stage 9"])


def test_format_table_shows_mfu_and_the_peak_for_a_gpu_report():
    # A CUDA run is one-shot: check its table here, on a CPU report dressed as a GPU one.
    settings = bench.BenchSettings(smoke=True, reference=False, cases=("ft", "eval ours")).resolve()
    report = bench.run_bench(settings, log=lambda line: None)
    report["machine"].update(gpu="NVIDIA H100 80GB HBM3", gpu_peak_bf16_tflops=989.4,
                             gpu_peak_source=bench.gpu_peak_tflops("NVIDIA H100 80GB HBM3")[1])
    report["cases"][0].update(mfu=0.4123, tflops=407.9)
    lines = bench.format_table(report).splitlines()
    ft_row = next(line for line in lines if line.startswith("ft "))
    assert ft_row.split()[-4:-2] == ["408", "41.2%"]
    eval_row = next(line for line in lines if line.startswith("eval ours"))
    assert eval_row.split()[-3] == "-" and "ex/s" in eval_row
    assert any(line.startswith("gpu: NVIDIA H100 80GB HBM3, dense bf16 peak 989.4 TFLOP/s (NVIDIA H100")
               for line in lines)
    assert len(ft_row) == len(lines[0]) == len(eval_row)


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


def test_sparse_cases_hold_optimizer_state_for_their_entries_only():
    report = bench.run_bench(bench.parse_args(["--smoke", "--methods", "sam,random", "--no-reference",
                                               "--cases", "sam ft,sam pt stage 3,random pt stage 2"]).resolve(),
                             log=lambda line: None)
    assert [c["name"] for c in report["cases"]] == ["sam ft", "sam pt stage 3", "random pt stage 2"]
    for case in report["cases"]:
        # 0.5% of every eligible tensor and the whole head: far below AdamW's two moments of every entry
        assert 0 < case["optimizer_state_bytes"] < case["dense_adamw_state_bytes"]
        # the cost model's: dense dW like full fine-tuning, whatever the mask picks inside the tensors
        lowest = int(case["blocks"].split("-")[0]) - 1
        assert case["cost_ratio"] == bench.cost_ratio(6, list(range(lowest, 6)), "full")


# --------------------------------------------------------------------------------------------------
# The loop row and the command line
# --------------------------------------------------------------------------------------------------

def test_loop_row_times_runs_step_path_against_the_bare_step(capsys):
    settings = bench.parse_args(["--loop", "--config", "tiny", "--batch-size", "2", "--seq-len", "16", "--steps",
                                 "6", "--rounds", "2"]).resolve()
    report = bench.run_loop_bench(settings, log=lambda line: None)
    assert report["bare_step_ms"] > 0 and report["loop_step_ms"] > 0
    assert report["overhead"] == pytest.approx(report["loop_step_ms"] / report["bare_step_ms"] - 1)
    assert [len(v) for v in report["rounds_ms"].values()] == [2, 2] and report["log_every"] == 50
    table = bench.format_loop(report)
    assert "run.py loop (log every 50)" in table and "overhead:" in table and "tiny" in table
    assert capsys.readouterr().out == ""  # the loop's progress lines are part of its cost, not of the output


def test_smoke_refuses_sizes_it_would_ignore(capsys):
    proc = subprocess.run([sys.executable, str(HERE / "bench.py"), "--smoke", "--steps", "50", "--batch-size", "8"],
                          capture_output=True, text=True, timeout=HANG)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: --smoke fixes the sizes") and "--batch-size, --steps" in lines[0]
