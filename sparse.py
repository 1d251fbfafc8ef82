"""Sparse fine-tuning (Fu et al., "On the Effectiveness of Parameter-Efficient Fine-Tuning", AAAI 2023),
as fixed by docs/method.md §9: a fixed 0/1 mask over the pretrained weights, of which only the masked-in
entries train (θ = θ0 + M·δ). Three rules choose the mask:

  sam        SAM: rank entry i by |g_i|, g = Σ_b g_b the summed per-batch mean gradients of the training
             loss at θ0 over B burn-in batches (a second-order bound with a diagonal Hessian reduces to g²)
  random     k entries uniformly, from the run's seed
  magnitude  the k entries of largest |θ0| (the rule as the paper states it, on the pretrained weights)

Scope `tensor` takes k = floor(s·numel) entries of every eligible tensor (E and the blocks; E only while it
trains), scope `global` one top-k with k = floor(s·N) over all of them together. The task head H trains
whole and is not masked.

Training differs from the authors' code in two ways (docs/method.md §9): SparseAdamW keeps moments only for the
masked-in entries (2·k floats per tensor, not 2·numel), and weight decay touches masked-in entries only,
so every other entry stays bitwise equal to θ0 for the whole run. Gradients are masked where autograd
hands them over (mask_gradients), so clipping and loss scaling see the gradient that trains.

Reading order:
  eligible_names, planned_entries, validate_sparsity    what may train, and how much
  top_k_mask, random_mask, magnitude_scores, burn_in     the three rules (SAM's scores come from burn_in)
  mask_gradients, SparseAdamW                           training only the masked-in entries
  save_trained, rebuild                                 the fine-tuned model as θ0 + (indices, values)
  checked_trained_meta                                  that file read back only when its SHA-256 matches

    python sparse.py rebuild seed-1/trained.safetensors --base MODEL_DIR --out DIR   # a full model folder
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

import data
from integrity import check_digest, check_finite, save_safetensors, warn_unverified
from model import Transformer, from_pretrained, part_of, resolve_checkpoint, write_model_folder

SPARSE_METHODS = ("sam", "random", "magnitude")
SCOPES = ("tensor", "global")
TRAINED_FORMAT = "progtuning-sparse-trained"
TRAINED_ADVICE = "restore it from a copy, or train the seed again with --save-trained"

Mask = dict[str, torch.Tensor]  # parameter name -> sorted flat indices (int64) of its masked-in entries


# --------------------------------------------------------------------------------------------------
# What may train, and how much
# --------------------------------------------------------------------------------------------------

def validate_sparsity(sparsity: float) -> None:
    if not 0 < sparsity <= 1:
        raise ValueError(f"--sparsity must be in (0, 1] (the share of entries that train), got {sparsity}")


def eligible_names(model: nn.Module, freeze_embeddings: bool = False) -> list[str]:
    """The tensors a mask covers, in model order: every tensor of E (unless E is frozen) and of the blocks,
    weights, biases and LayerNorms alike. The head trains whole."""
    names = []
    for name, _ in model.named_parameters():
        part, _ = part_of(name)
        if part == "block" or (part == "embeddings" and not freeze_embeddings):
            names.append(name)
    return names


def planned_entries(numels: dict[str, int], sparsity: float, scope: str) -> dict[str, int] | None:
    """Masked-in entries per tensor as the shapes fix them: floor(s·numel) each for scope `tensor` (a tensor
    with 0 stays frozen). None for scope `global`, whose split over the tensors depends on the scores."""
    validate_sparsity(sparsity)
    if scope == "global":
        return None
    return {name: math.floor(sparsity * n) for name, n in numels.items()}


def global_k(numels: dict[str, int], sparsity: float) -> int:
    return math.floor(sparsity * sum(numels.values()))


def mask_entries(mask: Mask, names: list[str]) -> dict[str, int]:
    """Masked-in entries per eligible tensor (0 where the mask holds none)."""
    return {name: len(mask[name]) if name in mask else 0 for name in names}


# --------------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------------

def top_k_mask(scores: dict[str, torch.Tensor], sparsity: float, scope: str) -> Mask:
    """The entries of largest score: k = floor(s·numel) per tensor, or one top-k = floor(s·N) over all.
    Tensors left with no entry are not in the mask."""
    validate_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"--mask-scope must be one of {SCOPES}, got {scope!r}")
    flat = {name: s.detach().reshape(-1).float().cpu() for name, s in scores.items()}
    mask: Mask = {}
    if scope == "tensor":
        for name, s in flat.items():
            k = math.floor(sparsity * s.numel())
            if k > 0:
                mask[name] = torch.topk(s, k).indices.sort().values
        return mask
    names = list(flat)
    offsets = [0]
    for name in names:
        offsets.append(offsets[-1] + flat[name].numel())
    k = math.floor(sparsity * offsets[-1])
    chosen = torch.topk(torch.cat([flat[n] for n in names]), k).indices.sort().values if k else torch.empty(0)
    for i, name in enumerate(names):
        inside = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
        if len(inside):
            mask[name] = inside.long()
    return mask


def random_mask(numels: dict[str, int], sparsity: float, scope: str, seed: int) -> Mask:
    """k entries uniformly without replacement, per tensor or over all, reproducible from the seed. The
    generator is the mask's own, so drawing the mask changes nothing else the run draws."""
    generator = torch.Generator().manual_seed(seed)
    return top_k_mask({name: torch.rand(n, generator=generator) for name, n in numels.items()}, sparsity, scope)


def magnitude_scores(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """MagPruning's score: |θ0|, on the pretrained weights."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().abs() for name in names}


def burn_in(model: nn.Module, names: list[str], batches, loss_of, on_step=None,
            combine=None) -> dict[str, torch.Tensor]:
    """SAM's scores |Σ_b g_b|: the training loss's gradient at θ0 summed over the burn-in batches, in train
    mode (dropout on), as training would draw them. Autograd sums the per-batch gradients itself when
    .grad is not cleared between backward passes. Only `names` require grad meanwhile; the weights, the
    optimizer and the lr schedule are untouched, and requires_grad is restored at the end.

    batches: iterable of batches; loss_of(batch) -> the batch's mean loss; on_step(i, grads): called after
    each batch i (1-based) with the running sums, so a caller can checkpoint or stop (by raising).
    A .grad already present on a name (the running sums of an interrupted burn-in) is summed onto.
    combine(sums): called once with the final sums (a list, changed in place) before the scores are taken;
    several processes each summing their share of every batch add theirs together there.
    """
    params = dict(model.named_parameters())
    before = {name: p.requires_grad for name, p in params.items()}
    for name, p in params.items():
        p.requires_grad_(name in names)
    model.train()
    try:
        for i, batch in enumerate(batches, start=1):
            loss_of(batch).backward()
            if on_step is not None:
                on_step(i, {name: params[name].grad for name in names})
        if combine is not None:
            combine([params[name].grad for name in names])
        return {name: params[name].grad.abs() for name in names}
    finally:
        for name, p in params.items():
            p.grad = None
            p.requires_grad_(before[name])


# --------------------------------------------------------------------------------------------------
# Training the masked-in entries only
# --------------------------------------------------------------------------------------------------

def mask_gradients(model: nn.Module, mask: Mask) -> list:
    """Zero each masked tensor's gradient outside its mask as autograd delivers it, so that gradient
    clipping, the GradScaler's inf check and the optimizer all see the gradient that trains. Returns
    the hook handles."""
    params = dict(model.named_parameters())
    handles = []
    for name, indices in mask.items():
        param = params[name]
        keep = torch.zeros(param.numel(), dtype=torch.bool, device=param.device)
        keep[indices.to(param.device)] = True
        keep = keep.view_as(param)
        # A hook can only be registered while the tensor requires grad (a stage may have frozen it); it
        # stays through every later requires_grad switch.
        requires_grad = param.requires_grad
        param.requires_grad_(True)
        handles.append(param.register_hook(lambda grad, keep=keep: grad.masked_fill(~keep, 0)))
        param.requires_grad_(requires_grad)
    return handles


class SparseAdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter 2019, torch's update order) over the masked-in entries of each masked
    parameter, and over the whole of a parameter without a mask (the head).

    For a masked parameter with flat indices I (k entries): g = grad[I], θ = param[I]; its state is
    exp_avg m and exp_avg_sq v of k entries each and a step count t; then
        θ ← θ·(1 − lr·λ);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
        θ ← θ − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + ε);  param[I] ← θ
    Entries outside I are never read or written. A parameter whose grad is None (frozen in this stage)
    is skipped whole: no decay, no moment update, no step count.
    """

    def __init__(self, param_groups: list[dict], indices: dict[nn.Parameter, torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(param_groups, dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0))
        self.indices = {param: idx.to(param.device) for param, idx in indices.items()}

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient. The arithmetic runs once per group over all its
        tensors together (torch._foreach_*: a few kernels, not a few per tensor); only the gather of a masked
        tensor's entries and their scatter back are per tensor."""
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            thetas, grads, exp_avgs, exp_avg_sqs, step_sizes, corrections = [], [], [], [], [], []
            for param in params:
                indices = self.indices.get(param)
                flat, grad = param.view(-1), param.grad.reshape(-1)
                thetas.append(flat if indices is None else flat[indices])  # (k,) a gathered copy
                grads.append(grad if indices is None else grad[indices])
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(thetas[-1], memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(thetas[-1], memory_format=torch.preserve_format)
                state["step"] += 1  # a CPU tensor, as torch's AdamW keeps it: reading it waits for no device
                t = state["step"].item()
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                step_sizes.append(-lr / (1 - beta1 ** t))
                corrections.append(math.sqrt(1 - beta2 ** t))
            if decay:
                torch._foreach_mul_(thetas, 1 - lr * decay)
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            denoms = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denoms, corrections)
            torch._foreach_add_(denoms, eps)
            torch._foreach_addcdiv_(thetas, exp_avgs, denoms, step_sizes)
            for param, theta in zip(params, thetas):
                indices = self.indices.get(param)
                if indices is not None:
                    param.view(-1).index_copy_(0, indices, theta)
        return None

    def state_bytes(self) -> int:
        """Bytes of optimizer state held now (moments and step counts; the mask's indices not included)."""
        return sum(t.numel() * t.element_size() for state in self.state.values() for t in state.values())


def dense_adamw_state_bytes(params: list[nn.Parameter]) -> int:
    """What torch's AdamW would hold for the same parameters: two fp32 moments of every entry."""
    return sum(2 * p.numel() * p.element_size() for p in params)


# --------------------------------------------------------------------------------------------------
# The fine-tuned model as θ0 + (indices, values)
# --------------------------------------------------------------------------------------------------

def save_trained(path: Path, model: nn.Module, mask: Mask, dense_names: list[str], meta: dict) -> None:
    """Only what trained: per masked tensor its flat indices and their new values, and the tensors that
    trained whole (the head), with `meta` (settings, base model) in the metadata."""
    params = dict(model.named_parameters())
    tensors = {}
    for name, indices in mask.items():
        tensors[f"indices/{name}"] = indices.cpu().contiguous()
        tensors[f"values/{name}"] = params[name].detach().reshape(-1)[indices.to(params[name].device)].cpu()
    for name in dense_names:
        tensors[f"dense/{name}"] = params[name].detach().cpu().contiguous()
    save_safetensors(path, tensors, {"format": TRAINED_FORMAT, "progtuning": json.dumps(meta)})


def trained_meta(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if metadata.get("format") != TRAINED_FORMAT:
        raise ValueError(f"{path}: not a sparse trained file (format {metadata.get('format')!r}, "
                         f"expected {TRAINED_FORMAT!r}); it is written by run.py --save-trained with --method "
                         f"{'/'.join(SPARSE_METHODS)}")
    return json.loads(metadata["progtuning"])


def checked_trained_meta(path: Path) -> dict:
    """trained_meta of a trained file shown to be intact: its bytes match the SHA-256 written with it and
    its values are finite (a file from before digests were kept is read with a warning)."""
    has_digest = check_digest(path, TRAINED_ADVICE)
    meta = trained_meta(path)
    check_finite(path, "trained file", TRAINED_ADVICE)
    if not has_digest:
        warn_unverified(path)
    return meta


def apply_trained(model: nn.Module, path: Path) -> nn.Module:
    """Write a sparse trained file's values into a model holding the pretrained weights θ0 (the file
    checked by checked_trained_meta first)."""
    trained_meta(path)
    params = dict(model.named_parameters())
    with safe_open(str(path), framework="pt") as file, torch.no_grad():
        for key in file.keys():
            kind, name = key.split("/", 1)
            if name not in params:
                raise ValueError(f"{path}: {key} names no parameter of this model; was it trained on another?")
            param = params[name]
            if kind == "dense":
                param.copy_(file.get_tensor(key))
            elif kind == "values":
                indices = file.get_tensor(f"indices/{name}").to(param.device)
                param.view(-1).index_copy_(0, indices, file.get_tensor(key).to(param.device, param.dtype))
    return model


def rebuild(trained: Path, base: str | Path | None = None) -> Transformer:
    """The fine-tuned model: the pretrained checkpoint (`base`, default the one the run used) with the
    task head the run trained, and the trained file's values written in. (A sparse method adds no module
    to the encoder, so the pretrained model is the whole architecture.)"""
    meta = checked_trained_meta(trained)
    head, num_labels = data.task_head(meta["settings"]["task"])
    model = from_pretrained(base or meta["settings"]["model"], head=head, num_labels=num_labels)
    return apply_trained(model, trained)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Rebuild a sparse fine-tuned model: pretrained checkpoint + "
                                            "run.py --save-trained's indices and values")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rebuild", help="write a full model folder (config, model.safetensors, tokenizer)")
    r.add_argument("trained", help="seed-<k>/trained.safetensors of a sam/random/magnitude run")
    r.add_argument("--base", help="the pretrained model folder (default: the one the run used)")
    r.add_argument("--out", required=True, help="folder to write (refused if it exists and is not empty)")
    r.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = p.parse_args(argv)
    out, trained = Path(args.out), Path(args.trained)
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
            raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it, or "
                                  "write to another folder")
        model = rebuild(trained, args.base)
        base = resolve_checkpoint(args.base or trained_meta(trained)["settings"]["model"])
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
        # Our parameter names are the checkpoint's keys (model.py's loader maps both spellings), head included.
        write_model_folder(out, {k: v.contiguous() for k, v in model.state_dict().items()}, config, base,
                           overwrite=True)
    except (OSError, ValueError, SafetensorError) as error:
        raise SystemExit(f"error: {type(error).__name__ + ': ' if isinstance(error, OSError) else ''}{error}") \
            from None
    print(f"wrote {out}: {len(model.state_dict())} tensors; load with model.from_pretrained({str(out)!r}, "
          f"head={model.head!r}, num_labels={model.num_labels})")


if __name__ == "__main__":
    sys.exit(main())
