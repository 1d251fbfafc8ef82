"""A fine-tuned model in the formats other tools load, each folder with a model card.

    python export.py RUN_DIR --to DIR [--format hf|peft|adapters] [--seed K] [--overwrite]   (from a run's folder)
    python run.py ... --export DIR [--export-format hf|peft|adapters]                        (at the end of each seed)

Formats (FORMATS says which method exports to which; without --format, adapter runs export as `adapters`
and every other run as `hf`):

  hf        The Hugging Face model folder that transformers loads: DIR/config.json (the base model's config plus
            the task's num_labels, id2label / label2id with the GLUE label names, problem_type, architectures),
            DIR/model.safetensors under transformers' key names (`bert.` / `roberta.` / `mpnet.` before the
            encoder, MPNet's own names inside its blocks, the head's own names) and the base model's tokenizer
            files. full, bitfit and the sparse methods export their weights as they are (dense); lora the
            weights with B·A merged in (merged for the export only, then taken out again).
  peft      lora only: the adapter folder of Hugging Face's peft library, DIR/adapter_config.json (peft_type
            LORA, the task type, r, lora_alpha, lora_dropout, target_modules, the base model's name or path,
            and modules_to_save for what trained whole, the head) and DIR/adapter_model.safetensors under peft's
            key names (`base_model.model.` + transformers' name, `.lora_A.weight` / `.lora_B.weight`), which
            `peft.PeftModel.from_pretrained(base model, DIR)` loads onto the unchanged public base model.
  adapters  adapter only, BERT and RoBERTa: the adapter in the layout of the adapter-hub `adapters` library,
            DIR/adapter/adapter_config.json (its bottleneck configuration that computes our adapter, see
            ADAPTERS_CONFIG) and DIR/adapter/adapter.safetensors, beside an hf folder in DIR that holds the
            rest of the model: an adapter run also trains every block's two LayerNorms and the head, and an
            `adapters` adapter file carries only adapter layers.

Every folder also gets README.md, a model card written from the run's results.json (model_card.py). The folder
is written next to DIR under a temporary name and renamed into place, so a crash leaves no half folder; a DIR
that exists and is not empty is replaced only with --overwrite. A run's final weights come from its seed's
checkpoint.safetensors (kept by default) or, failing that, from trained.safetensors (--save-trained); either
is read only when the SHA-256 written beside it still matches and its numbers are finite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import data
import model_card
import records
import sparse
from integrity import check_digest, check_finite, warn_unverified
from model import (Transformer, checkpoint_name, load_config, part_of, resolve_checkpoint, tokenizer_files,
                   write_folder)
from progtuning import METHODS, LoRALinear
from recipe import Settings, build_model, ever_trainable, plan

ARCHITECTURES = {("bert", "classification"): "BertForSequenceClassification",
                 ("roberta", "classification"): "RobertaForSequenceClassification",
                 ("mpnet", "classification"): "MPNetForSequenceClassification",
                 ("bert", "span"): "BertForQuestionAnswering",
                 ("roberta", "span"): "RobertaForQuestionAnswering",
                 ("mpnet", "span"): "MPNetForQuestionAnswering"}

# The formats, and the methods each one can hold.
FORMATS = {"hf": tuple(m for m in METHODS if m != "adapter"), "peft": ("lora",), "adapters": ("adapter",)}
# The model types the adapters library has its own classes for (it has none for MPNet).
ADAPTERS_MODEL_TYPES = ("bert", "roberta")


def default_format(method: str) -> str:
    return "adapters" if method == "adapter" else "hf"


def check_format(method: str, fmt: str | None, model_type: str | None = None, random_init: bool = False,
                 flag: str = "--format") -> str:
    """The format a run of `method` exports to (`fmt`, or the method's default); ValueError in one line, naming
    `flag`, when the run cannot be written in it. model_type None: the checks that need the model are left to
    the export."""
    fmt = fmt or default_format(method)
    if fmt not in FORMATS:
        raise ValueError(f"{flag} {fmt}: unknown format; expected one of {', '.join(FORMATS)}")
    if method not in FORMATS[fmt]:
        supported = [name for name, methods in FORMATS.items() if method in methods]
        raise ValueError(f"{flag} {fmt} holds {'/'.join(FORMATS[fmt])} runs only; {method} runs export as "
                         f"{flag} {' or '.join(supported)}")
    if fmt == "peft" and random_init:
        raise ValueError(f"{flag} peft: this run trained from random weights (--random-init), which no base "
                         f"model holds, so an adapter has nothing to load onto; export it as {flag} hf")
    if fmt == "adapters" and model_type is not None and model_type not in ADAPTERS_MODEL_TYPES:
        raise ValueError(f"{flag} adapters: the adapters library has no {model_type} model classes (it has "
                         f"{' and '.join(ADAPTERS_MODEL_TYPES)} among those this project trains), so it cannot "
                         "load this adapter; keep using the run's checkpoint with this project")
    return fmt


# --------------------------------------------------------------------------------------------------
# Names: ours → theirs, one table per format
# --------------------------------------------------------------------------------------------------

def hf_name(name: str, model_type: str) -> str:
    """transformers' key for one of our parameter names: `bert.`/`roberta.`/`mpnet.` before E, the blocks and
    BERT's pooler, MPNet's own names inside a block (model.SUBLAYER_NAMES, the table loading reads too); the
    head as it is."""
    part, _ = part_of(name)
    inside = part != "head" or name.startswith("pooler.")
    return (model_type + "." if inside else "") + checkpoint_name(name, model_type)


# PeftModel holds the transformers model as `base_model.model`; its lora_A and lora_B are nn.Linear modules,
# so their matrices end in `.weight`. A module in modules_to_save is saved whole under its own names.
PEFT_PREFIX = "base_model.model."
PEFT_NAMES = ((".lora_A", ".lora_A.weight"), (".lora_B", ".lora_B.weight"))
# A span head gets no task type: peft's question-answering wrapper (PeftModelForQuestionAnswering, peft 0.22)
# does not pass token_type_ids on to the model, so BERT would read every token as its first segment; the plain
# PeftModel passes every input through.
PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "span": None}

# The adapters library keeps a layer's bottleneck adapters in `adapters.<adapter name>` of BertSelfOutput and
# BertOutput (RoBERTa's likewise): adapter_down is Sequential(Linear, activation), adapter_up a Linear.
ADAPTERS_NAMES = ((".adapter.down.", ".adapters.{name}.adapter_down.0."),
                  (".adapter.up.", ".adapters.{name}.adapter_up."))

# The adapters library's bottleneck configuration that computes docs/method.md §3's adapter exactly: its
# DoubleSeqBnConfig (Houlsby et al. 2019) with gelu. Adapters after the attention output projection
# (mh_adapter) and after the feed-forward output projection (output_adapter), each on that projection's output
# after its dropout; out = x + up(gelu(down(x))) (residual_before_ln, scaling 1, no dropout, no gate, no LayerNorm
# of its own), then the block's pretrained LayerNorm of out + the sublayer's input (original_ln_after, not
# original_ln_before). "gelu" is transformers' GELUActivation, the exact erf form that Adapter uses.
# reduction_factor (hidden / bottleneck) is set per model.
ADAPTERS_CONFIG = {"mh_adapter": True, "output_adapter": True, "non_linearity": "gelu",
                   "original_ln_before": False, "original_ln_after": True, "residual_before_ln": True,
                   "adapter_residual_before_ln": False, "ln_before": False, "ln_after": False, "is_parallel": False,
                   "scaling": 1.0, "use_gating": False, "dropout": 0.0, "phm_layer": False, "leave_out": []}
# The adapters release whose layout is written (and tested). adapter_config.json must name one: the library reads
# a file without a version as the older adapter-transformers layout and renames its non_linearity "gelu" to
# "gelu_new", the tanh approximation.
ADAPTERS_VERSION = "adapters.1.3.0"


def rename(key: str, table, **fields) -> str | None:
    """`key` with the first of the table's (ours, theirs) fragments it holds replaced (theirs filled in with
    `fields`), or None if it holds none."""
    for ours, theirs in table:
        if ours in key:
            return key.replace(ours, theirs.format(**fields))
    return None


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names. LoRA's A and B are left out (export merges them into the
    weights first), and so are adapter layers (the adapters format writes them on their own)."""
    model_type = model.config.model_type
    return {hf_name(name, model_type): cpu_copy(tensor) for name, tensor in model.state_dict().items()
            if not rename(name, PEFT_NAMES) and ".adapter." not in name}


def peft_state_dict(model: Transformer, whole: list[str]) -> dict[str, torch.Tensor]:
    """LoRA's A and B of every LoRA layer, and the parameters in `whole` (what trained besides), under peft's
    names."""
    model_type, state = model.config.model_type, {}
    for name, tensor in model.state_dict().items():
        ours = rename(name, PEFT_NAMES) or (name if name in whole else None)
        if ours is not None:
            state[PEFT_PREFIX + hf_name(ours, model_type)] = cpu_copy(tensor)
    return state


def adapters_state_dict(model: Transformer, adapter_name: str) -> dict[str, torch.Tensor]:
    model_type = model.config.model_type
    return {hf_name(theirs, model_type): cpu_copy(tensor) for name, tensor in model.state_dict().items()
            if (theirs := rename(name, ADAPTERS_NAMES, name=adapter_name)) is not None}


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    # a copy: on the CPU .cpu() is the same storage, which the unmerge after an hf export of LoRA would change back
    return tensor.detach().to("cpu", copy=True).contiguous()


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

def hf_config(model: Transformer, base: Path, settings: Settings, fmt: str) -> dict:
    """The base model's config.json with what a task model needs on top, and under "progtuning" what
    predict.py needs to read inputs as training did (task, max length) and which format the folder is."""
    task = settings.task
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["architectures"] = [ARCHITECTURES[(model.config.model_type, model.head)]]
    config.update(label_config(model, task))
    config["progtuning"] = {"task": task, "method": settings.method, "mode": settings.mode,
                            "base_model": str(settings.model), "max_length": settings.max_length, "format": fmt}
    return config


def label_config(model: Transformer, task: str) -> dict:
    """num_labels, id2label / label2id with the GLUE label names, problem_type (classification heads)."""
    if model.head != "classification":
        return {}
    spec = data.glue_task(task)
    names = spec.label_names or ("score",)
    return {"num_labels": spec.num_labels, "id2label": {str(i): name for i, name in enumerate(names)},
            "label2id": {name: i for i, name in enumerate(names)},
            "problem_type": "regression" if spec.is_regression else "single_label_classification"}


def peft_config(model: Transformer, settings: Settings, whole: list[str]) -> dict:
    """adapter_config.json: a LoraConfig whose arithmetic is LoRALinear's."""
    model_type = model.config.model_type
    lora_modules = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    # transformers' name of each LoRA module, its last part: query / value (MPNet: q / v)
    targets = sorted({hf_name(name + ".weight", model_type).split(".")[-2] for name in lora_modules})
    # a head module is saved whole by its top name (pooler, classifier, qa_outputs); anything else by its own
    to_save = sorted({name.split(".")[0] if part_of(name)[0] == "head"
                      else hf_name(name, model_type).rsplit(".", 1)[0] for name in whole})
    return {"peft_type": "LORA", "task_type": PEFT_TASK_TYPES[model.head],
            "base_model_name_or_path": str(settings.model), "r": settings.lora_r, "lora_alpha": settings.lora_alpha,
            "lora_dropout": settings.lora_dropout, "target_modules": targets, "modules_to_save": to_save,
            # LoRA trains no bias; scaling alpha / r (rsLoRA's would be alpha / sqrt(r)); no DoRA magnitude
            "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
            "init_lora_weights": True, "inference_mode": True}


def adapters_config(model: Transformer, settings: Settings) -> dict:
    """adapter/adapter_config.json in the adapters library's layout: the adapter's name (the task), the model
    it belongs to and ADAPTERS_CONFIG with the model's reduction factor."""
    hidden, bottleneck = model.config.hidden_size, settings.adapter_size
    # the library sizes the bottleneck as int(hidden // reduction_factor)
    if int(hidden // (hidden / bottleneck)) != bottleneck:
        raise ValueError(f"--format adapters: a bottleneck of {bottleneck} in a {hidden}-wide model has no "
                         "reduction factor the adapters library turns back into that size")
    return {"name": settings.task, "version": ADAPTERS_VERSION, "model_type": model.config.model_type,
            "model_name": str(settings.model),
            "model_class": ARCHITECTURES[(model.config.model_type, model.head)], "hidden_size": hidden,
            "config": {**ADAPTERS_CONFIG, "reduction_factor": hidden / bottleneck}}


# --------------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------------

def export_model(model: Transformer, record: dict, seed: int, dest: Path, fmt: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write `model`, seed `seed` of the run that `record` (its results.json) describes, to `dest` in format
    `fmt` (default: the method's), with its model card."""
    settings = Settings.from_record(record["settings"])
    fmt = check_format(settings.method, fmt, model.config.model_type, bool(settings.random_init))
    base = resolve_checkpoint(settings.model)
    if fmt == "peft":
        whole = [n for n in ever_trainable(model, plan(settings, model), settings) if not rename(n, PEFT_NAMES)]
        files = {"adapter_model.safetensors": peft_state_dict(model, whole),
                 "adapter_config.json": peft_config(model, settings, whole)}
    else:
        loras = [m for m in model.modules() if isinstance(m, LoRALinear)]
        for lora in loras:  # explicit merge for the export, undone below: the training model stays unmerged
            lora.merge()
        try:
            files = {"model.safetensors": hf_state_dict(model), "config.json": hf_config(model, base, settings, fmt)}
        finally:
            for lora in loras:
                lora.unmerge()
    if fmt == "adapters":
        files["adapter/adapter_config.json"] = adapters_config(model, settings)
        files["adapter/adapter.safetensors"] = adapters_state_dict(model, settings.task)
    files["README.md"] = model_card.render(record, seed, fmt, Path(dest), model.config.num_hidden_layers,
                                           label_config(model, settings.task))
    return write_folder(Path(dest), {**files, **tokenizer_files(base)}, overwrite)


def load_run_model(run_dir: Path, seed: int | None = None) -> tuple[Transformer, Settings, int]:
    """The fine-tuned model of one finished seed of a run folder, its settings and the seed."""
    record = read_record(run_dir)
    complete = [r["seed"] for r in record.get("runs", []) if r.get("status") == "complete"]
    if seed is None:
        if not complete:
            raise ValueError(f"{run_dir / 'results.json'} has no finished seed to export")
        seed = complete[0]
    elif seed not in complete:
        raise ValueError(f"{run_dir / 'results.json'}: seed {seed} is not finished (finished: {complete or 'none'})")
    settings = Settings.from_record(record["settings"])
    settings.device, settings.compile, settings.random_init = "cpu", False, bool(settings.random_init)
    model = build_model(settings)
    seed_dir = run_dir / f"seed-{seed}"
    checkpoint, trained = seed_dir / "checkpoint.safetensors", seed_dir / "trained.safetensors"
    params = dict(model.named_parameters())
    try:  # either file is read only once its digest and its finite numbers show it intact
        if checkpoint.is_file():
            records.verified_checkpoint_meta(checkpoint)
            weights = records.checkpoint_tensors(checkpoint, "model/")
        elif trained.is_file() and settings.method in sparse.SPARSE_METHODS:
            sparse.checked_trained_meta(trained)
            return sparse.apply_trained(model, trained), settings, seed
        elif trained.is_file():
            has_digest = check_digest(trained, sparse.TRAINED_ADVICE)
            weights = load_file(trained)
            check_finite(trained, "trained file", sparse.TRAINED_ADVICE)
            if not has_digest:
                warn_unverified(trained)
        else:
            raise FileNotFoundError(f"{seed_dir} has neither checkpoint.safetensors nor trained.safetensors, so "
                                    "the trained weights are gone; rerun with --save-trained (or keep the "
                                    "checkpoint)")
    except SafetensorError as error:
        raise ValueError(f"{seed_dir}: the weights file is not readable safetensors ({error})") from None
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"{seed_dir}: weights {unknown[:3]} are not in the model the run describes")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    return model, settings, seed


def read_record(run_dir: Path) -> dict:
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} does not exist; give the --output-dir of a run.py run")
    return records.read_json(results_path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Export a run's fine-tuned model for transformers, peft or adapters")
    p.add_argument("run_dir", help="a run.py --output-dir (holding results.json and seed-<k>/)")
    p.add_argument("--to", required=True, help="folder to write (the format's files, tokenizer, README.md)")
    p.add_argument("--format", help=f"{', '.join(FORMATS)} (default: adapters for adapter runs, hf otherwise)")
    p.add_argument("--seed", type=int, help="which seed (default: the first finished one)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --to folder")
    args = p.parse_args(argv)
    try:
        record = read_record(Path(args.run_dir))
        settings = Settings.from_record(record["settings"])
        # the format first: a wrong one is named before minutes of loading weights
        fmt = check_format(settings.method, args.format, load_config(settings.model).model_type,
                           bool(settings.random_init))
        model, settings, seed = load_run_model(Path(args.run_dir), args.seed)
        dest = export_model(model, record, seed, Path(args.to), fmt, args.overwrite)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {dest} (seed {seed}, {settings.method}, {settings.task}, format {fmt}); {dest / 'README.md'} "
          "says how to load it")


if __name__ == "__main__":
    sys.exit(main())
