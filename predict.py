"""Labels (and probabilities, or STS-B scores) for a file of sentences, from a fine-tuned model.

    python predict.py --model DIR --task rte --input pairs.tsv [--output predictions.tsv]

DIR is a folder export.py wrote in the hf format (Hugging Face layout) or a run.py --output-dir (its first
finished seed, or --seed K). The tokenizer, max length and batching are the training run's, so a GLUE dev file
gives exactly the predictions the run wrote for it (predictions-<task>.tsv).

Input, one example per line:
  .tsv    text_a, or text_a<TAB>text_b for pair tasks; or a GLUE file of the task (recognised by its
          header, e.g. RTE's index/sentence1/sentence2/label, or CoLA's four columns), whose text
          columns are read and whose labels are ignored
  .jsonl  {"text_a": ..., "text_b": ...}, or the task's GLUE column names ({"sentence1": ..., ...})
A line that fits none of these stops the run with its file and line number.

Output (tab-separated, stdout or --output): index, prediction (the label name, or the STS-B score), then
one probability column per label. index counts the input's examples from 0, not its lines: blank lines and a
GLUE file's header hold no example and are not counted, so on a GLUE file the index is the example's row as
in the run's predictions-<task>.tsv and glue_eval.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import data
import export
from evaluation import predict
from integrity import writing
from model import from_pretrained, load_tokenizer
from recipe import Settings


def read_inputs(path: Path, task: str) -> list[data.Example]:
    """The examples of a .tsv or .jsonl input file (module docstring), or ValueError naming file and line."""
    spec = data.glue_task(task)
    pair = spec.text_b_column is not None
    lines = _text_lines(path)
    if not lines:
        raise ValueError(f"{path} is empty; expected one example per line")
    examples = []
    if path.suffix in (".jsonl", ".json"):
        names_a = ("text_a",) + ((spec.header_names[0],) if spec.header_names else ())
        names_b = ("text_b",) + ((spec.header_names[1],) if spec.header_names and pair else ())
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON object ({error.msg})") from None
            text_a = next((row[k] for k in names_a if isinstance(row, dict) and k in row), None)
            text_b = next((row[k] for k in names_b if isinstance(row, dict) and k in row), None)
            if not isinstance(text_a, str) or (pair and not isinstance(text_b, str)):
                wanted = f"{names_a[0]!r}" + (f" and {names_b[0]!r}" if pair else "")
                raise ValueError(f"{path}:{number}: expected an object with {wanted} (strings) for {task}")
            examples.append(data.Example(f"input-{number}", text_a, text_b if pair else None, 0))
        return examples
    if path.suffix != ".tsv":
        raise ValueError(f"{path}: expected a .tsv or .jsonl file")
    first = lines[0].split("\t")
    start, columns, width = 1, (0, 1 if pair else None), 2 if pair else 1
    if spec.header_names and spec.header_names[0] in first and (not pair or spec.header_names[1] in first):
        # a GLUE file of the task: its header names the text columns
        start, width = 2, len(first)
        columns = (first.index(spec.header_names[0]), first.index(spec.header_names[1]) if pair else None)
    elif not spec.header_names and len(first) in spec.column_counts:
        columns, width = (spec.text_a_column, None), len(first)  # CoLA's header-less GLUE layout
    for number, line in enumerate(lines[start - 1:], start=start):
        if not line.strip():
            continue  # a blank line (a trailing newline too many, say) holds no example
        fields = line.split("\t")
        if len(fields) != width:
            raise ValueError(f"{path}:{number}: expected {width} tab-separated field(s), found {len(fields)}")
        text_b = fields[columns[1]] if columns[1] is not None else None
        examples.append(data.Example(f"input-{number}", fields[columns[0]], text_b, 0))
    return examples


def _text_lines(path: Path) -> list[str]:
    """The file's lines as UTF-8 text; a byte that is not UTF-8 is named with its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        for number, line in enumerate(raw.split(b"\n"), start=1):
            try:
                line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{number}: not UTF-8 text (byte {line[error.start]:#04x} at column "
                                 f"{error.start + 1}); save the file as UTF-8") from None
        raise


def load_model(folder: Path, task: str, seed: int | None):
    """(model, tokenizer folder, max length, eval batch size) from an export or a run folder."""
    if (folder / "results.json").is_file():
        model, settings, _ = export.load_run_model(folder, seed)
        if settings.task != task:
            raise ValueError(f"{folder} was trained on {settings.task}, not {task}")
        return model, settings.model, settings.max_length, settings.eval_batch_size
    config_path = folder / "config.json"
    if (folder / "adapter_config.json").is_file() and not config_path.is_file():
        raise ValueError(f"{folder} is a peft adapter (export.py --format peft), which holds no whole model; give "
                         "--model the run folder, or an export in the hf format")
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: neither an export (config.json) nor a run folder (results.json)")
    made = json.loads(config_path.read_text(encoding="utf-8")).get("progtuning")
    if not made:
        raise ValueError(f"{config_path} has no 'progtuning' entry: not a folder export.py wrote")
    if made.get("format", "hf") != "hf":
        raise ValueError(f"{folder} is an export in the {made['format']} format, whose adapter layers predict.py "
                         "does not load; give --model the run folder, or an export in the hf format")
    if made["task"] != task:
        raise ValueError(f"{folder} was trained on {made['task']}, not {task}")
    spec = data.glue_task(task)
    model = from_pretrained(folder, head="classification", num_labels=spec.num_labels)
    return model, folder, made["max_length"], Settings.eval_batch_size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Predict GLUE labels with a fine-tuned model (an export or a run)")
    p.add_argument("--model", required=True, help="export.py's folder, or a run.py --output-dir")
    p.add_argument("--task", required=True, choices=list(data.GLUE_TASKS))
    p.add_argument("--input", required=True, help=".tsv or .jsonl, one example per line")
    p.add_argument("--output", help="write the predictions here (default: stdout)")
    p.add_argument("--seed", type=int, help="run folder: which seed's model (default: the first finished)")
    args = p.parse_args(argv)
    try:
        if args.output and not Path(args.output).resolve().parent.is_dir():
            raise FileNotFoundError(f"--output {args.output}: the folder {Path(args.output).resolve().parent} "
                                    "does not exist; create it first, or write elsewhere")
        examples = read_inputs(Path(args.input), args.task)
        model, tokenizer_source, max_length, batch_size = load_model(Path(args.model), args.task, args.seed)
        tokenizer = load_tokenizer(tokenizer_source)
        spec = data.glue_task(args.task)
        encoded = data.encode_glue(examples, tokenizer, max_length, spec.is_regression)
        settings = Settings(task=args.task, max_length=max_length, eval_batch_size=batch_size, device="cpu")
        started = last = time.perf_counter()

        def progress(done: int, rows: int) -> None:
            nonlocal last
            if time.perf_counter() - last > 10:  # a line every 10 s on long files
                last = time.perf_counter()
                print(f"{done:,} of {rows:,} examples", file=sys.stderr, flush=True)

        outputs = np.stack(predict(settings, model, encoded, tokenizer.pad_token_id, progress))
        print(f"{len(examples)} examples in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if spec.is_regression:
            lines = ["index\tprediction"] + [f"{i}\t{float(o[0]):.6f}" for i, o in enumerate(outputs)]
        else:
            probabilities = torch.softmax(torch.from_numpy(outputs), dim=-1).numpy()
            lines = ["\t".join(["index", "prediction"] + [f"p({name})" for name in spec.label_names])] + [
                "\t".join([str(i), spec.label_names[int(o.argmax())]] + [f"{q:.6f}" for q in probs])
                for i, (o, probs) in enumerate(zip(outputs, probabilities))]
        text = "\n".join(lines) + "\n"
        if args.output:
            with writing(Path(args.output)):
                Path(args.output).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
