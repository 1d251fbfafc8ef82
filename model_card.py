"""model_card.py: the README.md of an exported folder, the model card that the Hugging Face Hub shows (YAML
metadata between `---` lines, then Markdown, as the Hub's model card documentation lays it out), written from the
run's record (results.json) so that nothing in it is typed by hand.

    metadata  library_name, base_model (a Hub id; a local folder is named in a comment), tags (progtuning, the
              method), datasets (the task's Hub dataset), metrics (the task's, by their Hub ids)
    body      what the folder holds and how to load it; the task, method, mode, schedule and stage diagram; the
              updated parameters against the same method without Progtuning; the seed's dev scores per epoch;
              the command that trained it and the project's commit

Reading order: render (the whole card), then one function per section.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import data
from model import hub_name
from progtuning import ParameterCounts, stage_diagram

# The Hub's dataset ids of the tasks, and its metric ids of our metric names.
HUB_DATASETS = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}  # any other task: GLUE
GLUE_DATASET = "nyu-mll/glue"
HUB_METRICS = {"accuracy": "accuracy", "f1": "f1", "mcc": "matthews_correlation", "pearson": "pearsonr",
               "spearman": "spearmanr", "exact_match": "exact_match", "exact": "exact_match"}
LIBRARIES = {"hf": "transformers", "peft": "peft", "adapters": "adapter-transformers"}
AUTO_CLASSES = {True: "AutoModelForSequenceClassification", False: "AutoModelForQuestionAnswering"}
# The settings that shape what a method trains, as run.py's flags name them.
METHOD_FLAGS = {"adapter": ("adapter_size",), "lora": ("lora_r", "lora_alpha", "lora_dropout"),
                "sam": ("sparsity", "mask_scope", "burn_in_steps"), "random": ("sparsity", "mask_scope"),
                "magnitude": ("sparsity", "mask_scope")}
RECIPE_FLAGS = ("epochs", "stages", "lr", "batch_size", "max_length", "warmup_ratio", "weight_decay", "max_grad_norm")


def render(record: dict, seed: int, fmt: str, folder: Path, num_blocks: int, labels: dict) -> str:
    """The card of seed `seed` of the run `record` describes, exported in format `fmt` to `folder`; labels:
    export.label_config's num_labels / id2label / problem_type ({} for a span head)."""
    settings = record["settings"]
    run = next((r for r in record.get("runs", []) if r.get("seed") == seed), {})
    task, method = settings["task"], settings["method"]
    title = f"# {task_name(task)}: {method} fine-tuned with " + (
        "Progtuning" if settings["mode"] == "pt" else "plain fine-tuning (no Progtuning)")
    sections = [front_matter(settings, fmt, run), title, contents(settings, fmt),
                "## How to load\n\n" + loading(settings, fmt, folder, labels),
                "## Training\n\n" + training(record, seed, num_blocks),
                "## Updated parameters\n\n" + updated(record),
                f"## Dev scores of seed {seed}\n\n" + scores(run),
                "## Reproduce\n\n" + reproduce(record)]
    return "\n\n".join(sections) + "\n"


def task_name(task: str) -> str:
    """RTE, STS-B, ... (the GLUE folder names), SQuAD v1.1 / v2.0."""
    return f"SQuAD v{data.SQUAD_VERSIONS[task]}" if task in data.SQUAD_VERSIONS else data.GLUE_TASKS[task].folder


def front_matter(settings: dict, fmt: str, run: dict) -> str:
    base = hub_name(settings["model"])
    task = settings["task"]
    final = run.get("final") or {}
    metrics = list(dict.fromkeys(HUB_METRICS[m] for report in final.values() for m in report if m in HUB_METRICS))
    lines = ["---", f"library_name: {LIBRARIES[fmt]}",
             f"base_model: {json.dumps(base)}" if base else
             f"# base_model: none; the run's base model was the local folder {json.dumps(settings['model'])}",
             "tags:", "- progtuning", f"- {settings['method']}",
             "datasets:", f"- {HUB_DATASETS.get(task, GLUE_DATASET)}"]
    lines += ["metrics:"] + [f"- {m}" for m in metrics] if metrics else []
    return "\n".join(lines + ["---"])


def contents(settings: dict, fmt: str) -> str:
    """One paragraph: what the folder holds."""
    base = f"`{settings['model']}`"
    if fmt == "peft":
        return (f"A LoRA adapter in peft's layout (adapter_config.json, adapter_model.safetensors) for the base "
                f"model {base}: LoRA's A and B of every block, and whole the modules that trained besides "
                "(modules_to_save: the task head). The base model's own weights are not in it.")
    if fmt == "adapters":
        return ("A Houlsby bottleneck adapter in the layout of the adapters library (adapter/: adapter_config.json,"
                " adapter.safetensors), beside a transformers model folder (config.json, model.safetensors) with "
                f"{base}'s weights as this run left them: the run trained each block's two LayerNorms and the "
                "task head along with the adapter, so the adapter needs this folder's model, not the base model.")
    merged = " with LoRA's B·A merged into the weights" if settings["method"] == "lora" else ""
    return (f"A transformers model folder (config.json, model.safetensors, tokenizer) fine-tuned from {base}"
            f"{merged}.")


def loading(settings: dict, fmt: str, folder: Path, labels: dict) -> str:
    """The Python lines that load the folder (tested as written), and where the base model is a local folder,
    how to point them at it."""
    auto = AUTO_CLASSES[bool(labels)]
    where = json.dumps(str(folder))
    if fmt == "peft":
        options = "".join(f", {key}={value!r}" for key, value in python_labels(labels).items())
        lines = ["from peft import PeftModel", f"from transformers import {auto}, AutoTokenizer", "",
                 f"base = {auto}.from_pretrained({json.dumps(str(settings['model']))}{options})",
                 f"model = PeftModel.from_pretrained(base, {where})"]
    elif fmt == "adapters":
        lines = ["import adapters", f"from transformers import {auto}, AutoTokenizer", "",
                 f"model = {auto}.from_pretrained({where})", "adapters.init(model)",
                 f"model.load_adapter({json.dumps(str(folder / 'adapter'))}, set_active=True, use_safetensors=True)"]
    else:
        lines = [f"from transformers import {auto}, AutoTokenizer", "", f"model = {auto}.from_pretrained({where})"]
    text = "```python\n" + "\n".join(lines + [f"tokenizer = AutoTokenizer.from_pretrained({where})"]) + "\n```"
    if fmt == "adapters":
        text += ("\n\nThe adapters library (`pip install adapters`) pins its own transformers version; install it "
                 "in an environment of its own.")
    if fmt == "peft" and hub_name(settings["model"]) is None:
        text += (f"\n\nThe base model was the local folder `{settings['model']}` when this run trained. Elsewhere, "
                 "give `from_pretrained` the folder where that checkpoint is there, or its Hub name; "
                 "`base_model_name_or_path` in adapter_config.json names the same folder (peft's "
                 "AutoPeftModel classes load the base model from it), so change it there too.")
    return text


def python_labels(labels: dict) -> dict:
    """export.label_config as from_pretrained's keyword arguments (id2label with whole-number keys)."""
    if not labels:
        return {}
    kwargs = {"num_labels": labels["num_labels"], "problem_type": labels["problem_type"]}
    if labels["problem_type"] != "regression":
        kwargs["id2label"] = {int(i): name for i, name in labels["id2label"].items()}
    return kwargs


def training(record: dict, seed: int, num_blocks: int) -> str:
    s = record["settings"]
    mode = {"pt": f"Progtuning (`--mode pt`), schedule {s['schedule']}", "ft": "plain fine-tuning (`--mode ft`)"}

    def flags(names: tuple[str, ...]) -> str:
        return ", ".join(f"`--{n.replace('_', '-')} {s[n]}`" for n in names if s.get(n) is not None)

    lines = [f"- task: {task_name(s['task'])} ({HUB_DATASETS.get(s['task'], GLUE_DATASET)}), scored on its dev set",
             f"- method: {s['method']}" + (f" ({flags(METHOD_FLAGS[s['method']])})" if s["method"] in METHOD_FLAGS
                                            else ""),
             f"- mode: {mode[s['mode']]}" + (f"; fixed blocks `--train-blocks {s['train_blocks']}` in every epoch"
                                             if s.get("train_blocks") is not None else ""),
             f"- recipe: {flags(RECIPE_FLAGS)}, seed {seed}"]
    notes = {"limit_train": "trained on the first {} training rows", "train_subset": "trained on {} training rows "
             "drawn at random", "limit_eval": "scored on the first {} dev rows only",
             "freeze_embeddings": "embeddings frozen", "random_init": "trained from random weights, not the "
             "checkpoint's"}
    lines += [f"- {text.format(s[key])} (`--{key.replace('_', '-')}`)" for key, text in notes.items() if s.get(key)]
    stages = record.get("stages")
    if stages:
        zero_based = [[b - 1 for b in blocks] for blocks in stages] if record.get("format_version", 1) >= 2 else stages
        lines += ["", "Trainable blocks per stage (`#` trains, `.` frozen; block 1 is next to the embeddings):", "",
                  "```", stage_diagram(zero_based, num_blocks, s["epochs"], recorded_counts(record)), "```"]
    return "\n".join(lines)


def recorded_counts(record: dict) -> ParameterCounts | None:
    keys = ("total_params", "trainable_params", "trainable_params_per_stage", "updated_params_per_epoch",
            "updated_params", "baseline_updated_params")
    if any(record.get(key) is None for key in keys):
        return None
    return ParameterCounts(**{key: record[key] for key in keys})


def updated(record: dict) -> str:
    counts = recorded_counts(record)
    if counts is None:
        return "Not in the record (a sparse method with `--mask-scope global` counts each seed's own mask)."
    against = ("training every block" if record["settings"].get("train_blocks") is not None
               else "without Progtuning")
    per_epoch = ", ".join(f"{n:,.0f}" for n in counts.updated_params_per_epoch)
    return (f"Updated parameters (per epoch, the parameters that train in it, summed over the epochs): "
            f"{counts.updated_params:,.0f} (per epoch {per_epoch}), against {counts.baseline_updated_params:,} "
            f"for {record['settings']['method']} {against}: {100 * counts.reduction:.1f}% fewer. The model has "
            f"{counts.total_params:,} parameters, of which {counts.trainable_params:,} train in some stage.")


def scores(run: dict) -> str:
    epochs = run.get("epochs") or []
    if not epochs:
        return "No epoch of this seed is in the record."
    columns = [(report, metric) for report, values in epochs[-1]["metrics"].items() for metric in values]
    rows = ["| epoch | stage | trained blocks | train loss | " + " | ".join(f"{r} {m}" for r, m in columns) + " |",
            "|" + "---|" * (4 + len(columns))]
    for e in epochs:
        values = [e["metrics"].get(r, {}).get(m) for r, m in columns]
        rows.append(f"| {e['epoch']} | {e.get('stage', '')} | {blocks_text(e.get('trainable_blocks'))} | "
                    f"{e['train_loss']:.4f} | " + " | ".join("n/a" if v is None else f"{v:.2f}" for v in values)
                    + " |")
    return "\n".join(rows) + "\n\nScores are percentages; the last epoch's are the run's result."


def blocks_text(blocks: list[int] | None) -> str:
    if not blocks:
        return "none"
    return f"{blocks[0]}-{blocks[-1]}" if blocks == list(range(blocks[0], blocks[-1] + 1)) and len(blocks) > 1 \
        else ",".join(map(str, blocks))


def reproduce(record: dict) -> str:
    environment = record.get("environment") or {}
    processes = environment.get("processes") or 1
    launcher = f"torchrun --nproc-per-node {processes}" if processes > 1 else "python"
    commands = record.get("commands") or []
    lines = (["Trained with (one line per invocation; a `--resume` continues the one before):", "", "```"]
             + [f"{launcher} run.py {shlex.join(argv)}" for argv in commands] + ["```"]) if commands else [
        "This record holds no command (results.json's `commands`); the settings in the run's results.json "
        "reproduce it."]
    commit = environment.get("git_commit")
    lines += ["", f"Project commit: `{commit}`." if commit else "Project commit: not in the record."]
    return "\n".join(lines)
