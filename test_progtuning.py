"""progtuning.py: partitions and schedules (pure numbers), the PEFT modules, stage masks, and parameter
counting checked against hand-computed numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

import model as M
import progtuning as P

# ------------------------------------------------------------------------------------------ partitions

@pytest.mark.parametrize("L,T,expected_sizes", [
    (12, 3, [4, 4, 4]),
    (12, 2, [6, 6]),
    (24, 3, [8, 8, 8]),
    (12, 5, [2, 2, 3, 2, 3]),            # bounds 0 2 4 7 9 12
    (12, 8, [1, 2, 1, 2, 1, 2, 1, 2]),   # bounds 0 1 3 4 6 7 9 10 12
    (1, 1, [1]),
    (6, 1, [6]),
    (6, 3, [2, 2, 2]),
])
def test_partition_sizes(L, T, expected_sizes):
    parts = P.partition(L, T)
    assert [len(p) for p in parts] == expected_sizes
    check_partition(parts, L)


def check_partition(parts, L):
    blocks = [b for part in parts for b in part]
    assert blocks == list(range(L)), "every block in exactly one part, parts contiguous and in order"
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_partition_with_more_stages_than_blocks():
    parts = P.partition(12, 80)
    assert len(parts) == 80
    check_partition(parts, 12)
    assert sum(1 for p in parts if len(p) == 1) == 12 and sum(1 for p in parts if not p) == 68
    # b_t = floor(t·12/80): block 0 ends part 7 (b_7 = 1), the last block ends part 80
    assert list(parts[6]) == [0] and list(parts[79]) == [11]


def test_partition_matches_spec_formula_for_many_shapes():
    for L in range(1, 25):
        for T in range(1, 30):
            parts = P.partition(L, T)
            check_partition(parts, L)
            for t, part in enumerate(parts, start=1):
                assert part.start == (t - 1) * L // T and part.stop == t * L // T


def test_schedules_for_twelve_blocks_three_stages():
    parts = P.partition(12, 3)
    low, mid, high = list(range(0, 4)), list(range(4, 8)), list(range(8, 12))
    shrink = [P.stage_blocks(t, parts, "shrink") for t in (1, 2, 3)]
    no_low = [P.stage_blocks(t, parts, "no-low") for t in (1, 2, 3)]
    grow = [P.stage_blocks(t, parts, "grow") for t in (1, 2, 3)]
    assert shrink == [low + mid + high, mid + high, high]      # Eq. 3
    assert no_low == [mid + high, high, []]                    # Eq. 4: the last stage trains only H
    assert grow == [high, mid + high, low + mid + high]        # Eq. 5
    assert P.stage_blocks(1, parts) == shrink[0]               # shrink is the default


def test_plan_stages_full_fine_tuning_trains_every_block():
    assert P.plan_stages(6, 3, "ft") == [list(range(6))] * 3
    assert P.plan_stages(6, 3, "pt") == [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5], [4, 5]]


def test_stage_of_step():
    # 3 epochs of 10 steps, 3 stages: stage = epoch
    assert [P.stage_of_step(s, 30, 3) for s in range(30)] == [1] * 10 + [2] * 10 + [3] * 10
    # 4 stages over 10 steps: boundaries at floor positions 2.5 → 3, 5, 7.5 → 8
    assert [P.stage_of_step(s, 10, 4) for s in range(10)] == [1, 1, 1, 2, 2, 3, 3, 3, 4, 4]
    with pytest.raises(ValueError, match="outside"):
        P.stage_of_step(10, 10, 4)


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match=r"T must be >= 1, got 0"):
        P.partition(12, 0)
    with pytest.raises(ValueError, match=r"unknown schedule 'reverse'"):
        P.stage_blocks(1, P.partition(12, 3), "reverse")
    with pytest.raises(ValueError, match=r"'no-low' with one stage trains no block"):
        P.stage_blocks(1, P.partition(12, 1), "no-low")
    with pytest.raises(ValueError, match=r"stage 4 is outside 1\.\.3"):
        P.stage_blocks(4, P.partition(12, 3))
    with pytest.raises(ValueError, match=r"unknown mode 'xx'"):
        P.plan_stages(12, 3, "xx")


# ------------------------------------------------------------------------------------------- counting

TINY = dict(model_type="bert", vocab_size=10, hidden_size=4, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=8, max_position_embeddings=6, type_vocab_size=2)
# Hand count for TINY with a 2-label classification head:
#   E     word 10·4 + position 6·4 + type 2·4 + LayerNorm 2·4                          =  80
#   block q, k, v 3·(4·4+4) + attn-out 4·4+4 + LN 8 + inter 4·8+8 + out 8·4+4 + LN 8  = 172
#   H     pooler 4·4+4 + classifier 4·2+2                                              =  30
#   total 80 + 3·172 + 30 = 626
# Adapter m=2: down 4·2+2 + up 2·4+4 = 22, two per block = 44; trainable in a block: 44 + 2 LayerNorms 16 = 60.
# BitFit: per block q,k,v 12 + attn-out 4 + LN 4 + inter 8 + out 4 + LN 4 = 36; outside: emb-LN bias 4
#   + pooler bias 4 + classifier 10 = 18.
# LoRA r=2 on query, value: A 2·4 + B 4·2 = 16 each, 32 per block.
HAND_COUNTS = {
    # method: (total, per-block trainable, non-block trainable)
    "full": (626, 172, 110),
    "adapter": (626 + 3 * 44, 60, 30),
    "bitfit": (626, 36, 18),
    "lora": (626 + 3 * 32, 32, 30),
    # Sparse methods, tensor by tensor (before a mask picks entries: test_sparse.py counts those): as full.
    "sam": (626, 172, 110), "random": (626, 172, 110), "magnitude": (626, 172, 110),
}
OPTIONS = P.MethodOptions(adapter_size=2, lora_r=2, lora_alpha=4)


def tiny_model(method: str) -> M.Transformer:
    torch.manual_seed(0)
    return P.add_method(M.Transformer(M.ModelConfig(**TINY), head="classification", num_labels=2), method, OPTIONS)


@pytest.mark.parametrize("method", P.METHODS)
@pytest.mark.parametrize("mode", P.MODES)
def test_counts_match_hand_computation(method, mode):
    total, per_block, outside = HAND_COUNTS[method]
    stages = P.plan_stages(3, 3, mode)
    counts = P.count_parameters(tiny_model(method), stages, method, epochs=3)
    per_epoch = [outside + 3 * per_block] * 3 if mode == "ft" else [outside + n * per_block for n in (3, 2, 1)]
    assert counts.total_params == total
    assert counts.trainable_params == outside + 3 * per_block
    assert counts.updated_params_per_epoch == per_epoch
    assert counts.updated_params == sum(per_epoch)
    assert counts.baseline_updated_params == 3 * (outside + 3 * per_block)
    assert counts.reduction == pytest.approx(1 - sum(per_epoch) / (3 * (outside + 3 * per_block)))


def test_count_for_full_fine_tuning_method_example():
    """docs/method.md §4: full fine-tuning of a model for 3 epochs updates 3 × its size."""
    model = tiny_model("full")
    counts = P.count_parameters(model, P.plan_stages(3, 3, "ft"), "full", epochs=3)
    assert counts.updated_params == 3 * 626 and counts.reduction == 0


def test_counts_with_stages_not_equal_to_epochs():
    # 2 stages over 3 epochs: stage 1 (all 3 blocks) covers epochs 1 and the first half of 2.
    model = tiny_model("full")
    counts = P.count_parameters(model, P.plan_stages(3, 2, "pt"), "full", epochs=3)
    stage1, stage2 = 626, 626 - 172  # parts [0] and [1, 2]: stage 2 trains blocks 1 and 2
    assert counts.trainable_params_per_stage == [stage1, stage2]
    assert counts.updated_params_per_epoch == [stage1, (stage1 + stage2) / 2, stage2]
    # with real steps: 5 per epoch, 15 in all, stage 2 starts at step floor(15/2) + ... = step 8
    real = P.count_parameters(model, P.plan_stages(3, 2, "pt"), "full", epochs=3, steps_per_epoch=5)
    assert real.updated_params_per_epoch == [stage1, (3 * stage1 + 2 * stage2) / 5, stage2]


def test_counts_identical_with_and_without_weights(tmp_path):
    config = M.ModelConfig(**TINY)
    random_model = M.Transformer(config, head="classification", num_labels=2)
    save_file(random_model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(__import__("json").dumps(TINY))
    loaded = M.from_pretrained(tmp_path, head="classification", num_labels=2)
    with torch.device("meta"):
        planned = M.Transformer(config, head="classification", num_labels=2)
    for method in P.METHODS:
        stages = P.plan_stages(3, 3, "pt")
        results = [P.count_parameters(P.add_method(copy.deepcopy(m), method, OPTIONS), stages, method, epochs=3)
                   for m in (random_model, loaded, planned)]
        assert results[0] == results[1] == results[2]


def test_freeze_embeddings_counts():
    model = tiny_model("full")
    counts = P.count_parameters(model, P.plan_stages(3, 3, "pt"), "full", epochs=3, freeze_embeddings=True)
    assert counts.trainable_params_per_stage == [30 + 3 * 172, 30 + 2 * 172, 30 + 172]


# ---------------------------------------------------------------------------------------- stage masks

def trainable_now(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_apply_stage_full_by_name():
    model = tiny_model("full")
    P.apply_stage(model, [1, 2], "full")
    everything = {name for name, _ in model.named_parameters()}
    assert trainable_now(model) == {n for n in everything if not n.startswith("encoder.layer.0.")}
    P.apply_stage(model, [], "full")
    assert trainable_now(model) == {n for n in everything if not n.startswith("encoder.")}
    P.apply_stage(model, [2], "full", freeze_embeddings=True)
    assert trainable_now(model) == {n for n in everything
                                    if n.startswith(("encoder.layer.2.", "pooler.", "classifier."))}


def test_apply_stage_peft_by_name():
    head = {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"}
    model = tiny_model("bitfit")
    P.apply_stage(model, [2], "bitfit")
    block2_biases = {f"encoder.layer.2.{m}.bias" for m in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")}
    assert trainable_now(model) == block2_biases | {"embeddings.LayerNorm.bias", "pooler.dense.bias",
                                                    "classifier.weight", "classifier.bias"}

    model = tiny_model("lora")
    P.apply_stage(model, [0], "lora")
    assert trainable_now(model) == head | {f"encoder.layer.0.attention.self.{t}.lora_{ab}"
                                           for t in ("query", "value") for ab in "AB"}

    model = tiny_model("adapter")
    P.apply_stage(model, [1], "adapter")
    adapter_names = {f"encoder.layer.1.{s}.{x}.{wb}" for s in ("attention.output", "output")
                     for x in ("adapter.down", "adapter.up", "LayerNorm") for wb in ("weight", "bias")}
    assert trainable_now(model) == head | adapter_names


def test_roberta_bitfit_trains_its_new_classification_head():
    config = M.ModelConfig(**{**TINY, "model_type": "roberta", "pad_token_id": 1, "type_vocab_size": 1,
                              "max_position_embeddings": 8})
    model = M.Transformer(config, head="classification", num_labels=3)
    names = P.apply_stage(model, [], "bitfit")
    assert names == {"embeddings.LayerNorm.bias", "classifier.dense.weight", "classifier.dense.bias",
                     "classifier.out_proj.weight", "classifier.out_proj.bias"}


def test_frozen_parameters_do_not_move_across_a_stage_switch():
    """AdamW with weight decay: parameters frozen in the new stage stay bitwise unchanged."""
    torch.manual_seed(0)
    model = tiny_model("full")
    stages = P.plan_stages(3, 3, "pt")
    ever = set().union(*(P.trainable_names(model, s, "full") for s in stages))
    params = [p for n, p in model.named_parameters() if n in ever]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    input_ids = torch.randint(1, 10, (4, 6))
    labels = torch.tensor([0, 1, 0, 1])

    def steps(n):
        for _ in range(n):
            loss = torch.nn.functional.cross_entropy(model(input_ids), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    P.apply_stage(model, stages[0], "full")
    steps(2)
    P.apply_stage(model, stages[1], "full")  # block 0 stops training
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps(3)
    for name, param in model.named_parameters():
        if name.startswith("encoder.layer.0."):
            assert param.grad is None
            assert torch.equal(param, before[name]), f"{name} moved while frozen"
        elif name not in ("embeddings.word_embeddings.weight",):
            assert not torch.equal(param, before[name]), f"{name} did not train"
    # token rows that never occur keep their values, rows that occur change
    used = torch.unique(input_ids)
    assert not torch.equal(model.embeddings.word_embeddings.weight[used], before["embeddings.word_embeddings.weight"][used])


# ------------------------------------------------------------------------------------- PEFT modules

def test_adapter_and_lora_at_init_leave_outputs_unchanged():
    torch.manual_seed(0)
    base = M.Transformer(M.ModelConfig(**TINY), head="classification", num_labels=2).eval()
    input_ids = torch.randint(1, 10, (3, 6))
    with torch.no_grad():
        expected = base(input_ids)
        for method in ("adapter", "lora"):
            assert torch.equal(P.add_method(copy.deepcopy(base), method, OPTIONS)(input_ids), expected)


def test_lora_merge_equals_unmerged_and_unmerge_restores():
    torch.manual_seed(0)
    model = P.add_method(M.Transformer(M.ModelConfig(**TINY)), "lora", OPTIONS).eval()
    layers = P.lora_layers(model)
    assert len(layers) == 6
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.normal_()
    original = [layer.weight.detach().clone() for layer in layers]
    input_ids = torch.randint(1, 10, (3, 6))
    with torch.no_grad():
        unmerged = model(input_ids)
        for layer in layers:
            layer.merge()
        merged = model(input_ids)
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
        for layer, weight in zip(layers, original):
            layer.unmerge()
            torch.testing.assert_close(layer.weight, weight, atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="not merged"):
        layers[0].unmerge()


def test_lora_keeps_pretrained_parameter_names_and_objects():
    model = M.Transformer(M.ModelConfig(**TINY))
    query_weight = model.blocks[0].attention.self.query.weight
    P.add_method(model, "lora", OPTIONS)
    assert model.blocks[0].attention.self.query.weight is query_weight
    names = set(model.state_dict())
    assert {"encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.query.lora_A",
            "encoder.layer.0.attention.self.value.lora_B"} <= names
    assert "encoder.layer.0.attention.self.key.lora_A" not in names


def test_bad_method_inputs():
    with pytest.raises(ValueError, match=r"unknown method 'prefix'"):
        P.add_method(M.Transformer(M.ModelConfig(**TINY)), "prefix")
    with pytest.raises(ValueError, match=r"LoRA rank r must be >= 1, got 0"):
        P.add_method(M.Transformer(M.ModelConfig(**TINY)), "lora", P.MethodOptions(lora_r=0))
    with pytest.raises(ValueError, match=r"LoRA rank r must be >= 1, got -2"):
        P.LoRALinear(4, 4, r=-2, alpha=8)
    with pytest.raises(ValueError, match=r"LoRA targets must be"):
        P.MethodOptions(lora_targets=("output",)).validate()
    with pytest.raises(ValueError, match=r"unknown method 'prefix'"):
        P.method_trains("prefix", "classifier.weight")
    with pytest.raises(ValueError, match=r"epochs must be >= 1"):
        P.count_parameters(tiny_model("full"), [[0]], "full", epochs=0)


def test_stage_diagram():
    model = tiny_model("full")
    stages = P.plan_stages(3, 3, "pt")
    text = P.stage_diagram(stages, 3, epochs=3, counts=P.count_parameters(model, stages, "full", epochs=3))
    lines = text.splitlines()
    assert lines[0].split() == ["block", "1", "2", "3"]
    assert [line.split()[2:5] for line in lines[1:]] == [["#", "#", "#"], [".", "#", "#"], [".", ".", "#"]]
    assert "626 trainable" in lines[1] and "282 trainable" in lines[3]
