"""A fine-tuned model in the Hugging Face folder layout, for tools that know nothing of this project.

    python export.py RUN_DIR --to DIR [--seed K] [--overwrite]     (after the fact, from a run's folder)
    python run.py ... --export DIR                                  (at the end of each seed)

writes DIR/config.json (the base model's config plus the task's num_labels, id2label / label2id with the
GLUE label names, problem_type, architectures), DIR/model.safetensors (the keys transformers'
BertForSequenceClassification / RobertaForSequenceClassification / MPNetForSequenceClassification /
...ForQuestionAnswering expect: `bert.` / `roberta.` / `mpnet.` before the encoder, MPNet's own names
inside its blocks, the head's own names) and the base model's tokenizer files.
Then, without this project:

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(DIR), AutoTokenizer.from_pretrained(DIR)

What each method exports: full, bitfit and the sparse methods (sam, random, magnitude) their weights as
they are (dense); lora the weights with B·A merged in (merged for the export only, then taken out again);
adapter nothing, since a plain BERT/RoBERTa has no place for adapter layers. The folder is written next to
DIR under a temporary name and renamed into place, so a crash leaves no half folder; a DIR that exists and
is not empty is replaced only with --overwrite.

A run's final weights come from its seed's checkpoint.safetensors (kept by default) or, failing that, from
trained.safetensors (--save-trained); either is read only when the SHA-256 written beside it still matches
and its numbers are finite.
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
import records
import sparse
from integrity import check_digest, check_finite, warn_unverified
from model import Transformer, checkpoint_name, part_of, resolve_checkpoint, write_model_folder
from progtuning import LoRALinear
from recipe import Settings, build_model

ARCHITECTURES = {("bert", "classification"): "BertForSequenceClassification",
                 ("roberta", "classification"): "RobertaForSequenceClassification",
                 ("mpnet", "classification"): "MPNetForSequenceClassification",
                 ("bert", "span"): "BertForQuestionAnswering",
                 ("roberta", "span"): "RobertaForQuestionAnswering",
                 ("mpnet", "span"): "MPNetForQuestionAnswering"}


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names: `bert.`/`roberta.`/`mpnet.` before E, the blocks and
    BERT's pooler, with MPNet's own names inside a block (model.SUBLAYER_NAMES, the table loading reads
    too); the head as it is. LoRA's A and B are left out (export merges them into the weights first)."""
    model_type = model.config.model_type
    state = {}
    for name, tensor in model.state_dict().items():
        if ".lora_A" in name or ".lora_B" in name:
            continue
        part, _ = part_of(name)
        inside = part != "head" or name.startswith("pooler.")
        key = (model_type + "." if inside else "") + checkpoint_name(name, model_type)
        # a copy: on the CPU .cpu() is the same storage, which the unmerge after the export would change back
        state[key] = tensor.detach().to("cpu", copy=True).contiguous()
    return state


def hf_config(model: Transformer, base: Path, settings) -> dict:
    """The base model's config.json with what a task model needs on top, and under "progtuning" what
    predict.py needs to read inputs as training did (task, max length)."""
    task = settings.task
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["architectures"] = [ARCHITECTURES[(model.config.model_type, model.head)]]
    if model.head == "classification":
        spec = data.glue_task(task)
        config["num_labels"] = spec.num_labels
        names = spec.label_names or ("score",)
        config["id2label"] = {str(i): name for i, name in enumerate(names)}
        config["label2id"] = {name: i for i, name in enumerate(names)}
        config["problem_type"] = "regression" if spec.is_regression else "single_label_classification"
    config["progtuning"] = {"task": task, "method": settings.method, "mode": settings.mode,
                            "base_model": str(settings.model), "max_length": settings.max_length}
    return config


def export_model(model: Transformer, settings, dest: Path, overwrite: bool = False) -> Path:
    """Write `model`, trained as run.py's `settings` say (method, base model, task, max length), as a Hugging
    Face folder."""
    if settings.method == "adapter":
        raise ValueError("an adapter run cannot be exported to the Hugging Face layout: a plain BERT/RoBERTa "
                         "has no adapter layers, so its weights would lose what was trained. Keep using "
                         "run.py's checkpoint (or trained.safetensors) with this project")
    base = resolve_checkpoint(settings.model)
    loras = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for lora in loras:  # explicit merge for the export, undone below: the training model stays unmerged
        lora.merge()
    try:
        state = hf_state_dict(model)
    finally:
        for lora in loras:
            lora.unmerge()
    return write_model_folder(Path(dest), state, hf_config(model, base, settings), base, overwrite)


def load_run_model(run_dir: Path, seed: int | None = None) -> tuple[Transformer, object, int]:
    """The fine-tuned model of one finished seed of a run folder, its settings and the seed."""
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} does not exist; give the --output-dir of a run.py run")
    record = records.read_json(results_path)
    complete = [r["seed"] for r in record.get("runs", []) if r.get("status") == "complete"]
    if seed is None:
        if not complete:
            raise ValueError(f"{results_path} has no finished seed to export")
        seed = complete[0]
    elif seed not in complete:
        raise ValueError(f"{results_path}: seed {seed} is not finished (finished: {complete or 'none'})")
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Export a run's fine-tuned model to the Hugging Face folder layout")
    p.add_argument("run_dir", help="a run.py --output-dir (holding results.json and seed-<k>/)")
    p.add_argument("--to", required=True, help="folder to write (config.json, model.safetensors, tokenizer)")
    p.add_argument("--seed", type=int, help="which seed (default: the first finished one)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --to folder")
    args = p.parse_args(argv)
    try:
        model, settings, seed = load_run_model(Path(args.run_dir), args.seed)
        dest = export_model(model, settings, Path(args.to), args.overwrite)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {dest} (seed {seed}, {settings.method}, {settings.task}); load it with transformers' "
          f"{ARCHITECTURES[(model.config.model_type, model.head)]}.from_pretrained({str(dest)!r})")


if __name__ == "__main__":
    sys.exit(main())
