"""GLUE data for progtuning, in the `glue_data` layout of GLUE's classic download_glue_data.py.

Format followed: the GLUE benchmark (Wang et al., 2018) as laid out by download_glue_data.py
(nyu-mll/GLUE-baselines): one folder per task (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE), each
holding tab-separated `train.tsv` and `dev.tsv` (MNLI: `dev_matched.tsv` and `dev_mismatched.tsv`).
Fields are split on tabs with quoting disabled, as the BERT and transformers GLUE readers do, so a
`"` is always part of the text. WNLI is left out, as in the Progtuning paper.

    read_glue(task, split, data_dir) -> GlueExamples  (a list of Example, plus .path and .skipped_rows)
    subset_rows(total, size, seed) -> list[int]        (a fixed random training subset: row indices, in order)
    download_glue_task(task, data_dir) -> Path        (the task folder, fetched when it is missing)

Splits are "train" and the dev split names in GLUE_TASKS: "dev" for every task except MNLI, whose dev
splits are "dev_matched" (reported as mnli-m) and "dev_mismatched" (reported as mnli-mm).

Environment: $GLUE_DIR is the glue_data folder when no data_dir is given (default ./glue_data);
$GLUE_BASE_URL and $MRPC_BASE_URL replace the download locations (DEFAULT_GLUE_BASE_URL,
DEFAULT_MRPC_BASE_URL), e.g. with a mirror.

Downloads (GLUE and SQuAD alike): PROGTUNING_OFFLINE=1 or HF_HUB_OFFLINE=1 stops them (model.offline_variable,
the rule the model download follows too). A missing task is downloaded into the default folder, created
for it, or into a folder the user named (data_dir or the environment variable) only when that folder
exists: a mistyped path is an error, never a new tree of folders. A failed download leaves nothing behind
(not even the default folder it created).

SQuAD v1.1 / v2.0 (Rajpurkar et al. 2016, 2018), in the official JSON layout, is at the end of the file:

    squad_files(task, data_dir) -> (train path, dev path)   (default files downloaded when missing)
    read_squad(path, version_2) -> list[SquadExample]
    squad_features(examples, tokenizer) -> SquadFeatures     (overlapping windows, start/end targets)
    squad_predictions(examples, features, start_logits, end_logits) -> (predictions, na_probs)

$SQUAD_DIR is the folder holding the SQuAD JSON files (default ./squad); $SQUAD_BASE_URL replaces
DEFAULT_SQUAD_BASE_URL. Downloads follow the rule above.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from model import offline_variable

log = logging.getLogger("progtuning")

GLUE_DIR_ENV = "GLUE_DIR"
GLUE_BASE_URL_ENV = "GLUE_BASE_URL"
MRPC_BASE_URL_ENV = "MRPC_BASE_URL"
# The locations download_glue_data.py fetches from: the task zips (and MRPC's dev id list) under
# the GLUE folder, MRPC's sentence pairs from SentEval, because GLUE may not host MRPC itself.
DEFAULT_GLUE_BASE_URL = "https://dl.fbaipublicfiles.com/glue/data"
DEFAULT_MRPC_BASE_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data"
MRPC_DEV_IDS_URL_NAME = "mrpc_dev_ids.tsv"
MRPC_SOURCE_FILES = ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt")
DOWNLOAD_TIMEOUT_SECONDS = 60.0
STSB_SCORE_RANGE = (0.0, 5.0)


@dataclass(frozen=True)
class DevSplit:
    name: str  # the `split` argument of read_glue
    file: str
    report_name: str  # the name results on this split are reported under


@dataclass(frozen=True)
class GlueTask:
    folder: str
    zip_name: str | None  # None: MRPC, rebuilt from SentEval's files instead of one zip
    train_file: str
    dev_splits: tuple[DevSplit, ...]
    # Header names of the (text_a, text_b, label) columns; None means the file has no header line.
    header_names: tuple[str, str | None, str] | None
    text_a_column: int
    text_b_column: int | None  # None for single-sentence tasks
    label_column: int  # negative counts from the end of the row
    label_names: tuple[str, ...] | None  # None for STS-B, whose label is a float score
    column_counts: tuple[int, ...]  # fields a line may have; a row must match its file's header

    @property
    def has_header(self) -> bool:
        return self.header_names is not None

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)


def _dev(task_name: str) -> tuple[DevSplit, ...]:
    return (DevSplit(name="dev", file="dev.tsv", report_name=task_name),)


GLUE_TASKS: dict[str, GlueTask] = {
    # CoLA train/dev have no header: source, label, original annotation, sentence.
    "cola": GlueTask(folder="CoLA", zip_name="CoLA.zip", train_file="train.tsv",
                     dev_splits=_dev("cola"), header_names=None,
                     text_a_column=3, text_b_column=None, label_column=1,
                     label_names=("0", "1"), column_counts=(4,)),
    "sst2": GlueTask(folder="SST-2", zip_name="SST-2.zip", train_file="train.tsv",
                     dev_splits=_dev("sst2"), header_names=("sentence", None, "label"),
                     text_a_column=0, text_b_column=None, label_column=1,
                     label_names=("0", "1"), column_counts=(2,)),
    # MRPC: Quality, #1 ID, #2 ID, #1 String, #2 String; the header starts with a UTF-8 BOM.
    "mrpc": GlueTask(folder="MRPC", zip_name=None, train_file="train.tsv",
                     dev_splits=_dev("mrpc"), header_names=("#1 String", "#2 String", "Quality"),
                     text_a_column=3, text_b_column=4, label_column=0,
                     label_names=("0", "1"), column_counts=(5,)),
    # STS-B: index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score.
    "stsb": GlueTask(folder="STS-B", zip_name="STS-B.zip", train_file="train.tsv",
                     dev_splits=_dev("stsb"), header_names=("sentence1", "sentence2", "score"),
                     text_a_column=7, text_b_column=8, label_column=9,
                     label_names=None, column_counts=(10,)),
    # QQP: id, qid1, qid2, question1, question2, is_duplicate.
    "qqp": GlueTask(folder="QQP", zip_name="QQP-clean.zip", train_file="train.tsv",
                    dev_splits=_dev("qqp"), header_names=("question1", "question2", "is_duplicate"),
                    text_a_column=3, text_b_column=4, label_column=5,
                    label_names=("0", "1"), column_counts=(6,)),
    # MNLI train has one annotator label column before gold_label, the dev files five, so the
    # label is addressed from the end and a row must have as many fields as its own file's header.
    "mnli": GlueTask(folder="MNLI", zip_name="MNLI.zip", train_file="train.tsv",
                     dev_splits=(DevSplit(name="dev_matched", file="dev_matched.tsv",
                                          report_name="mnli-m"),
                                 DevSplit(name="dev_mismatched", file="dev_mismatched.tsv",
                                          report_name="mnli-mm")),
                     header_names=("sentence1", "sentence2", "gold_label"),
                     text_a_column=8, text_b_column=9, label_column=-1,
                     label_names=("contradiction", "entailment", "neutral"), column_counts=(12, 16)),
    # QNLI: index, question, sentence, label (the v2 release, QNLIv2.zip).
    "qnli": GlueTask(folder="QNLI", zip_name="QNLIv2.zip", train_file="train.tsv",
                     dev_splits=_dev("qnli"), header_names=("question", "sentence", "label"),
                     text_a_column=1, text_b_column=2, label_column=3,
                     label_names=("entailment", "not_entailment"), column_counts=(4,)),
    "rte": GlueTask(folder="RTE", zip_name="RTE.zip", train_file="train.tsv",
                    dev_splits=_dev("rte"), header_names=("sentence1", "sentence2", "label"),
                    text_a_column=1, text_b_column=2, label_column=3,
                    label_names=("entailment", "not_entailment"), column_counts=(4,)),
}


@dataclass
class Example:
    guid: str  # "<task>-<split>-<line number in the file>", so a row can be found again
    text_a: str
    text_b: str | None
    label: int | float  # index into GlueTask.label_names, or the STS-B score


class GlueExamples(list[Example]):
    """The examples of one split, with the file they came from and how many rows were skipped."""

    def __init__(self, examples: list[Example], path: Path, skipped_rows: int) -> None:
        super().__init__(examples)
        self.path = path
        self.skipped_rows = skipped_rows


class GlueDownloadError(RuntimeError):
    pass


def subset_rows(total: int, size: int, seed: int) -> list[int]:
    """`size` of `total` rows drawn uniformly without replacement, returned in file order (run.py
    --train-subset). The draw has its own seed, never the run's: FT and PT, and every training seed, see the
    same rows, so a comparison across them changes the method and nothing else."""
    if not 1 <= size <= total:
        raise ValueError(f"--train-subset {size}: the training set has {total} rows; expected 1 to {total}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(total, size=size, replace=False))


def glue_task(task: str) -> GlueTask:
    if task.lower() == "wnli":
        raise ValueError("GLUE task 'wnli' is excluded, as in the Progtuning paper; choose one of "
                         f"{', '.join(GLUE_TASKS)}.")
    if task not in GLUE_TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; expected one of {', '.join(GLUE_TASKS)} "
                         "(lower-case, no hyphen).")
    return GLUE_TASKS[task]


def split_file_name(task: str, split: str) -> str:
    spec = glue_task(task)
    if split == "train":
        return spec.train_file
    for dev_split in spec.dev_splits:
        if dev_split.name == split:
            return dev_split.file
    known = ", ".join(["train"] + [dev_split.name for dev_split in spec.dev_splits])
    raise ValueError(f"Unknown split {split!r} for GLUE task {task!r}; expected one of {known}.")


DEFAULT_GLUE_DIR = "glue_data"


def _data_folder(data_dir: str | Path | None, env: str, default: str) -> Path:
    """data_dir if given, else the folder named by $env, else the default (relative to the working folder)."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get(env) or default)


def glue_data_dir(data_dir: str | Path | None = None) -> Path:
    """The glue_data folder: data_dir, else $GLUE_DIR, else ./glue_data."""
    return _data_folder(data_dir, GLUE_DIR_ENV, DEFAULT_GLUE_DIR)


@contextlib.contextmanager
def download_root(root: Path, default: Path, named_by: str):
    """The folder a download goes into. The default folder is created for it (and removed again, when still
    empty, if the download fails); a folder the user named must exist already, since a typo in a path
    should be an error, not a stray tree of new folders."""
    created = False
    if not root.is_dir():
        if root.exists():
            raise NotADirectoryError(f"{root} ({named_by}) is a file; expected a folder for the data")
        if root != default:
            raise FileNotFoundError(
                f"{root} ({named_by}) does not exist; check the path, or create the folder first if the "
                "data should be downloaded into it (nothing is downloaded into a folder that is not there)")
        root.mkdir(parents=True)
        created = True
    try:
        yield root
    except BaseException:
        if created and not any(root.iterdir()):
            root.rmdir()
        raise


def read_glue(task: str, split: str, data_dir: str | Path | None = None) -> GlueExamples:
    """Read one labelled split; the task folder is downloaded first when it is missing.

    Malformed rows are skipped, counted in `.skipped_rows` and reported in one warning. A file whose
    layout is wrong as a whole (header, or no readable row at all) raises ValueError.
    """
    spec = glue_task(task)
    file_name = split_file_name(task, split)
    root = glue_data_dir(data_dir)
    task_folder = root / spec.folder
    path = task_folder / file_name
    if not task_folder.is_dir():
        variable = offline_variable()
        if variable:
            raise FileNotFoundError(
                f"GLUE task {task!r}: {path} does not exist and {variable} is set, so it is not "
                f"downloaded. Pass --data-dir or set ${GLUE_DIR_ENV} to a glue_data folder holding "
                f"{spec.folder}/{file_name} (the layout of GLUE's download_glue_data.py), or unset "
                f"{variable} to download it automatically.")
        download_glue_task(task, data_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"GLUE task {task!r}: {path} does not exist, although its folder {task_folder} does. "
            f"Place {file_name} there (the layout of GLUE's download_glue_data.py), pass --data-dir "
            f"or set ${GLUE_DIR_ENV} to a complete glue_data folder, or remove {task_folder} so "
            "that the task is downloaded again.")
    return _read_glue_file(path, task, split)


def _column_place(column: int) -> str:
    return "the last column" if column == -1 else f"column {column}"


def _layout_description(spec: GlueTask) -> str:
    columns = f"text in column {spec.text_a_column}"
    if spec.text_b_column is not None:
        columns += f" and {spec.text_b_column}"
    label_kind = ("a score in [0, 5]" if spec.label_names is None
                  else "one of " + ", ".join(spec.label_names))
    counts = " or ".join(str(count) for count in spec.column_counts)
    header = ("no header line" if spec.header_names is None
              else "a header naming " + ", ".join(name for name in spec.header_names if name))
    return (f"{counts} tab-separated fields per line, {header}, {columns} (counting from 0), "
            f"and the label ({label_kind}) in {_column_place(spec.label_column)}")


def _parse_row(fields: list[str], spec: GlueTask) -> tuple[str, str | None, int | float] | str:
    """The row's (text_a, text_b, label), or the reason it is malformed."""
    text_a = fields[spec.text_a_column]
    if not text_a.strip():
        return f"empty text in column {spec.text_a_column}"
    text_b = None
    if spec.text_b_column is not None:
        text_b = fields[spec.text_b_column]
        if not text_b.strip():
            return f"empty text in column {spec.text_b_column}"
    raw_label = fields[spec.label_column]
    if spec.label_names is not None:
        if raw_label not in spec.label_names:
            return f"unknown label {raw_label!r} (expected one of {', '.join(spec.label_names)})"
        return text_a, text_b, spec.label_names.index(raw_label)
    try:
        score = float(raw_label)
    except ValueError:
        return f"score {raw_label!r} is not a number"
    low, high = STSB_SCORE_RANGE
    if not (math.isfinite(score) and low <= score <= high):
        return f"score {raw_label!r} is outside [{low:g}, {high:g}]"
    return text_a, text_b, score


def _read_glue_file(path: Path, task: str, split: str) -> GlueExamples:
    spec = glue_task(task)
    raw = path.read_bytes()
    try:
        # utf-8-sig: MRPC's files start with a byte order mark that would otherwise stick to
        # the first header name.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_number = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path}: line {line_number} is not valid UTF-8 ({error.reason} at byte "
                         f"{error.start}); GLUE files are UTF-8. Download the file again.") from error
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last row (CoLA dev.tsv has none)
    # Rows end at "\n" only: str.splitlines would also break at \x85, \u2028 and other characters
    # that scraped text can hold (CoLA and STS-B train carry stray \x08 and \x12). A "\r" before
    # the "\n" comes from a file re-saved with CRLF endings.
    lines = [line.removesuffix("\r") for line in lines]

    first_data_line = 1
    allowed_counts = set(spec.column_counts)
    if spec.header_names is not None:
        if not lines:
            raise ValueError(f"{path} is empty; expected a {task} {split} file with "
                             f"{_layout_description(spec)}.")
        header = lines[0].split("\t")
        expected_names = [(column, name) for column, name in zip(
            (spec.text_a_column, spec.text_b_column, spec.label_column), spec.header_names)
            if column is not None]
        if len(header) not in allowed_counts or any(
                header[column] != name for column, name in expected_names):
            expected = ", ".join(f"{name!r} in {_column_place(column)}"
                                 for column, name in expected_names)
            raise ValueError(
                f"{path}: line 1 is not a {task} header: expected {expected} "
                f"({' or '.join(map(str, spec.column_counts))} columns), found {header!r}. Is this "
                f"the {task} {split} file in the layout of GLUE's download_glue_data.py?")
        allowed_counts = {len(header)}
        first_data_line = 2

    examples: list[Example] = []
    skipped_rows = 0
    first_problem: tuple[int, str] | None = None
    for line_number, line in enumerate(lines[first_data_line - 1:], start=first_data_line):
        fields = line.split("\t")
        if len(fields) not in allowed_counts:
            parsed: tuple[str, str | None, int | float] | str = (
                f"expected {' or '.join(map(str, sorted(allowed_counts)))} tab-separated fields, "
                f"found {len(fields)}")
        else:
            parsed = _parse_row(fields, spec)
        if isinstance(parsed, str):
            skipped_rows += 1
            if first_problem is None:
                first_problem = (line_number, parsed)
            continue
        text_a, text_b, label = parsed
        examples.append(Example(f"{task}-{split}-{line_number}", text_a, text_b, label))

    data_rows = len(lines) - (first_data_line - 1)
    if data_rows == 0:
        raise ValueError(f"{path} has no data rows; expected a {task} {split} file with "
                         f"{_layout_description(spec)}.")
    if not examples:
        assert first_problem is not None
        raise ValueError(
            f"{path}: none of its {data_rows} rows could be read as {task} {split} (first at line "
            f"{first_problem[0]}: {first_problem[1]}). Expected {_layout_description(spec)}.")
    if first_problem is not None:
        log.warning("%s: skipped %d malformed row(s) of %d; first at line %d: %s",
                    path, skipped_rows, data_rows, first_problem[0], first_problem[1])
    return GlueExamples(examples, path, skipped_rows)


def _base_url(env_name: str, default: str) -> str:
    return (os.environ.get(env_name) or default).rstrip("/")


def _fetch(url: str, destination: Path, manual_hint: str) -> None:
    """Stream `url` into `destination`; the name only appears once every byte has arrived."""
    partial = destination.with_name(destination.name + ".part")

    def failure(why: str) -> GlueDownloadError:
        return GlueDownloadError(f"Could not download {url}: {why}. {manual_hint}")

    request = urllib.request.Request(url, headers={"User-Agent": "progtuning"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response, \
                open(partial, "wb") as out:
            announced = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                received += len(chunk)
        # http.client returns a short body without complaint when the connection drops early.
        if announced is not None and received != int(announced):
            raise failure(f"the connection ended after {received} of {announced} bytes")
        os.replace(partial, destination)
    except urllib.error.HTTPError as error:
        raise failure(f"HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise failure(f"no connection ({error.reason})") from error
    except (TimeoutError, ConnectionError, http.client.HTTPException) as error:
        raise failure(f"the transfer failed ({error!r})") from error
    finally:
        partial.unlink(missing_ok=True)


def _check_zip_members(archive: zipfile.ZipFile, destination: Path, source: str) -> None:
    root = destination.resolve()
    for member in archive.infolist():
        # Backslashes are separators on Windows, so "..\\x" must be judged as "../x".
        name = member.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        escapes = (name.startswith("/") or ".." in parts or (parts and ":" in parts[0])
                   or not (root / name).resolve().is_relative_to(root))
        if escapes:
            raise ValueError(f"Refusing to extract {source}: its member {member.filename!r} would "
                             f"be written outside {destination}. The archive is corrupt or hostile; "
                             "fetch the task from its official location.")


def _extract_zip(archive_path: Path, destination: Path, source: str) -> None:
    try:
        with zipfile.ZipFile(archive_path) as archive:
            _check_zip_members(archive, destination, source)
            archive.extractall(destination)
    except zipfile.BadZipFile as error:
        head = archive_path.read_bytes()[:40]
        raise GlueDownloadError(f"{source} is not a zip archive (it starts with {head!r}); a "
                                "proxy or error page may have answered instead.") from error


def _universal_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file as Python's text mode (universal newlines) would yield them."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not valid UTF-8 ({error.reason} at byte {error.start}); "
                         "download it again.") from error
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def build_mrpc_splits(msr_train: Path, msr_test: Path, dev_ids: Path, out_dir: Path) -> None:
    """Write MRPC train.tsv/dev.tsv/test.tsv into `out_dir` the way download_glue_data.py does.

    The SentEval training pairs whose (#1 ID, #2 ID) appear in the dev id list form dev.tsv, the
    others train.tsv; both keep the source header byte for byte, BOM included. test.tsv gets an
    `index` column in place of the labels. Rows are stripped of surrounding whitespace first.
    """
    def pair_rows(path: Path) -> tuple[str, list[tuple[int, list[str]]]]:
        lines = _universal_lines(path)
        if not lines:
            raise ValueError(f"{path} is empty; expected SentEval's MRPC file with a header line.")
        rows = []
        for line_number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue  # a blank line carries no pair
            fields = line.strip().split("\t")
            if len(fields) != 5:
                raise ValueError(f"{path}: line {line_number} has {len(fields)} tab-separated "
                                 "fields; expected 5 (Quality, #1 ID, #2 ID, #1 String, #2 String).")
            rows.append((line_number, fields))
        return lines[0] + "\n", rows

    dev_pairs: set[tuple[str, str]] = set()
    for line_number, line in enumerate(_universal_lines(dev_ids), start=1):
        if not line.strip():
            continue
        ids = line.strip().split("\t")
        if len(ids) != 2:
            raise ValueError(f"{dev_ids}: line {line_number} should hold two tab-separated ids "
                             f"(#1 ID, #2 ID), found {line!r}.")
        dev_pairs.add((ids[0], ids[1]))

    header, train_rows = pair_rows(msr_train)
    train_out, dev_out = [header], [header]
    dev_pairs_seen: set[tuple[str, str]] = set()
    for _, fields in train_rows:
        pair = (fields[1], fields[2])
        if pair in dev_pairs:
            dev_out.append("\t".join(fields) + "\n")
            dev_pairs_seen.add(pair)
        else:
            train_out.append("\t".join(fields) + "\n")
    missing = dev_pairs - dev_pairs_seen
    if missing:
        raise ValueError(f"{len(missing)} of the {len(dev_pairs)} id pairs in {dev_ids} (e.g. "
                         f"{sorted(missing)[0]}) are not in {msr_train}; the two files do not "
                         "belong together. Download both again.")

    _, test_rows = pair_rows(msr_test)
    test_out = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"]
    for index, (_, fields) in enumerate(test_rows):
        test_out.append("\t".join([str(index)] + fields[1:]) + "\n")

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in (("train.tsv", train_out), ("dev.tsv", dev_out), ("test.tsv", test_out)):
        (out_dir / name).write_bytes("".join(content).encode("utf-8"))


def download_glue_task(task: str, data_dir: str | Path | None = None) -> Path:
    """Fetch a task's folder from the classic GLUE locations unless it already exists.

    Everything is built in a hidden staging folder inside `data_dir` and renamed into place at the
    end, so an interrupted download never leaves a task folder that looks complete.
    """
    spec = glue_task(task)
    root = glue_data_dir(data_dir)
    target = root / spec.folder
    if target.is_dir():
        return target
    named_by = _named_by(data_dir, GLUE_DIR_ENV, "the GLUE data folder")
    with download_root(root, Path(DEFAULT_GLUE_DIR), named_by):
        _fetch_glue_task(spec, root, target)
    return target


def _named_by(data_dir, env: str, what: str) -> str:
    if data_dir is not None:
        return f"{what}, from --data-dir"
    return f"{what}, from ${env}" if os.environ.get(env) else f"{what}, the default"


def _fetch_glue_task(spec: GlueTask, root: Path, target: Path) -> None:
    glue_base = _base_url(GLUE_BASE_URL_ENV, DEFAULT_GLUE_BASE_URL)
    needed = [spec.train_file] + [dev_split.file for dev_split in spec.dev_splits]
    manual_hint = (
        f"Without network access, fetch the files elsewhere and place them as "
        f"{', '.join(str(target / name) for name in needed)} (the layout of GLUE's "
        f"download_glue_data.py), or pass --data-dir / set ${GLUE_DIR_ENV} to a glue_data folder "
        f"that has them. A mirror can be set with ${GLUE_BASE_URL_ENV}"
        + (f" and ${MRPC_BASE_URL_ENV}." if spec.zip_name is None else "."))

    staging = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.download-", dir=root))
    try:
        staged_folder = staging / spec.folder
        if spec.zip_name is None:
            mrpc_base = _base_url(MRPC_BASE_URL_ENV, DEFAULT_MRPC_BASE_URL)
            staged_folder.mkdir()
            for name in MRPC_SOURCE_FILES:
                log.info("downloading %s/%s", mrpc_base, name)
                _fetch(f"{mrpc_base}/{name}", staged_folder / name, manual_hint)
            log.info("downloading %s/%s", glue_base, MRPC_DEV_IDS_URL_NAME)
            _fetch(f"{glue_base}/{MRPC_DEV_IDS_URL_NAME}", staged_folder / "dev_ids.tsv", manual_hint)
            build_mrpc_splits(staged_folder / MRPC_SOURCE_FILES[0], staged_folder / MRPC_SOURCE_FILES[1],
                              staged_folder / "dev_ids.tsv", staged_folder)
        else:
            url = f"{glue_base}/{spec.zip_name}"
            log.info("downloading %s into %s", url, root)
            archive_path = staging / spec.zip_name
            _fetch(url, archive_path, manual_hint)
            _extract_zip(archive_path, staging, url)
            absent = [name for name in needed if not (staged_folder / name).is_file()]
            if absent:
                found = sorted(entry.name for entry in staging.iterdir() if entry != archive_path)
                raise GlueDownloadError(
                    f"{url} has no {spec.folder}/{absent[0]} (its top level holds {found}). "
                    + manual_hint)
        if not target.exists():  # another process may have finished the same download first
            staged_folder.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Tokenized splits and batches (shared by GLUE and SQuAD)
# --------------------------------------------------------------------------------------------------

@dataclass
class Encoded:
    """A tokenized split, tokenized once per run: token ids and token-type ids per row, and the training
    targets by name ("labels" for GLUE; "start_positions" and "end_positions" for SQuAD)."""
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    targets: dict[str, list]

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, count: int) -> "Encoded":
        return Encoded(self.input_ids[:count], self.token_type_ids[:count],
                       {name: values[:count] for name, values in self.targets.items()})


def encode_glue(examples: list[Example], tokenizer, max_length: int, regression: bool) -> Encoded:
    """Tokenize GLUE examples (pairs where the task has them), truncating the longer text first."""
    texts_b = None if examples and examples[0].text_b is None else [e.text_b for e in examples]
    encodings = tokenizer.encode_batch([e.text_a for e in examples], texts_b, max_length=max_length)
    labels = [float(e.label) if regression else int(e.label) for e in examples]
    return Encoded([e.ids for e in encodings], [e.type_ids for e in encodings], {"labels": labels})


def batches(data: Encoded, batch_size: int, pad_token_id: int, order: list[int] | None = None,
            pad_to_multiple_of: int | None = None):
    """Yield padded batches of `data` in `order` (default: as stored).

    Each batch holds input_ids, attention_mask, token_type_ids (B, T), the targets, and "index" (the row
    numbers, so outputs of a reordered pass can be put back in place). T is the longest row in the batch
    (dynamic padding), rounded up to a multiple of pad_to_multiple_of when given, so a compiled model
    sees only a few distinct shapes instead of recompiling for every batch.
    """
    order = list(range(len(data))) if order is None else order
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(data.input_ids[r]) for r in rows)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(data.input_ids[r])
            input_ids[i, :n] = torch.tensor(data.input_ids[r])
            token_type_ids[i, :n] = torch.tensor(data.token_type_ids[r])
            attention_mask[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "index": torch.tensor(rows)}
        for name, values in data.targets.items():
            column = [values[r] for r in rows]
            dtype = torch.float32 if isinstance(column[0], float) else torch.long
            batch[name] = torch.tensor(column, dtype=dtype)
        yield batch


def length_sorted_order(data: Encoded) -> list[int]:
    """Rows from shortest to longest: evaluation pads far less when similar lengths share a batch."""
    return sorted(range(len(data)), key=lambda r: len(data.input_ids[r]))


# --------------------------------------------------------------------------------------------------
# SQuAD v1.1 / v2.0: the official JSON files, windowed features, and answer spans from logits
# --------------------------------------------------------------------------------------------------

SQUAD_DIR_ENV = "SQUAD_DIR"
SQUAD_BASE_URL_ENV = "SQUAD_BASE_URL"
# Where the SQuAD explorer publishes the four official files.
DEFAULT_SQUAD_BASE_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset"
# run.py's task name -> SQuAD version.
SQUAD_VERSIONS = {"squad": "1.1", "squad_v2": "2.0"}
SQUAD_DEFAULT_FILES = {"1.1": ("train-v1.1.json", "dev-v1.1.json"),
                       "2.0": ("train-v2.0.json", "dev-v2.0.json")}
# The values of the official files' "version" field, used to catch a file read as the wrong version.
_SQUAD_VERSION_FIELDS = {"1.1": "1.1", "2.0": "v2.0"}


class SquadDownloadError(RuntimeError):
    pass


def task_head(task: str) -> tuple[str, int | None]:
    """The task head H a task trains (model.Transformer's `head`, `num_labels`): SQuAD's span head, or a
    sequence classifier with the GLUE task's labels (1: STS-B's regression)."""
    if task in SQUAD_VERSIONS:
        return "span", None
    return "classification", glue_task(task).num_labels


def squad_task_version(task: str) -> str:
    if task not in SQUAD_VERSIONS:
        raise ValueError(f"Unknown SQuAD task {task!r}; expected one of {', '.join(SQUAD_VERSIONS)} "
                         "(squad = SQuAD v1.1, squad_v2 = SQuAD v2.0).")
    return SQUAD_VERSIONS[task]


DEFAULT_SQUAD_DIR = "squad"


def squad_data_dir(data_dir: str | Path | None = None) -> Path:
    """The folder holding the SQuAD JSON files: data_dir, else $SQUAD_DIR, else ./squad."""
    return _data_folder(data_dir, SQUAD_DIR_ENV, DEFAULT_SQUAD_DIR)


def squad_files(task: str, data_dir: str | Path | None = None, train_file: str | None = None,
                dev_file: str | None = None) -> tuple[Path, Path]:
    """The (train, dev) JSON paths of a SQuAD task, downloading a missing official file.

    train_file / dev_file pick other files inside the data folder (e.g. "train-v1.1.subset.json"); an
    absolute path is used as it is. Only the official file names are downloaded: a missing file of any
    other name is a FileNotFoundError, since no URL could hold it.
    """
    version = squad_task_version(task)
    root = squad_data_dir(data_dir)
    default_train, default_dev = SQUAD_DEFAULT_FILES[version]
    paths = []
    for name, default_name in ((train_file or default_train, default_train),
                               (dev_file or default_dev, default_dev)):
        path = root / name  # an absolute name replaces root
        if not path.is_file():
            if path != root / default_name:
                present = sorted(entry.name for entry in root.glob("*.json")) if root.is_dir() else []
                raise FileNotFoundError(
                    f"SQuAD task {task!r}: {path} does not exist (JSON files in {root}: "
                    f"{', '.join(present) or 'none'}). Only the official {default_name} can be "
                    "downloaded; check the file name, or pass --data-dir / set "
                    f"${SQUAD_DIR_ENV} to the folder holding it.")
            _download_squad_file(task, default_name, root,
                                 _named_by(data_dir, SQUAD_DIR_ENV, "the SQuAD data folder"))
        paths.append(path)
    return paths[0], paths[1]


def _download_squad_file(task: str, name: str, root: Path, named_by: str) -> Path:
    destination = root / name
    base = _base_url(SQUAD_BASE_URL_ENV, DEFAULT_SQUAD_BASE_URL)
    url = f"{base}/{name}"
    manual_hint = (f"Without network access, fetch {name} elsewhere (SQuAD explorer, "
                   f"{DEFAULT_SQUAD_BASE_URL}/{name}) and place it at {destination}, or pass "
                   f"--data-dir / set ${SQUAD_DIR_ENV} to a folder that has it. A mirror can be set "
                   f"with ${SQUAD_BASE_URL_ENV}.")
    variable = offline_variable()
    if variable:
        raise FileNotFoundError(
            f"SQuAD task {task!r}: {destination} does not exist and {variable} is set, so it is "
            f"not downloaded from {url}. {manual_hint} Or unset {variable} to download it "
            "automatically.")
    with download_root(root, Path(DEFAULT_SQUAD_DIR), named_by):
        _fetch_squad_file(url, destination, manual_hint)
    return destination


def _fetch_squad_file(url: str, destination: Path, manual_hint: str) -> None:
    root, name = destination.parent, destination.name
    # A unique temporary name in the same folder, so two runs fetching the same file do not write
    # into each other's partial file, and os.replace publishes only a complete, checked file.
    handle, temporary_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".download", dir=root)
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        log.info("downloading %s into %s", url, root)
        try:
            _fetch(url, temporary, manual_hint)
        except GlueDownloadError as error:  # _fetch is shared with GLUE; the message names the URL
            raise SquadDownloadError(str(error)) from error
        with open(temporary, "rb") as file:
            head = file.read(64)
        # A proxy or captive portal answers with an HTML page and status 200; keep it out of the
        # cache, where it would otherwise fail every later run as "not valid JSON".
        if not head.lstrip().startswith(b"{"):
            raise SquadDownloadError(f"{url} is not a SQuAD JSON file (it starts with {head!r}); a "
                                     f"proxy or error page may have answered instead. {manual_hint}")
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


@dataclass
class SquadExample:
    id: str
    title: str
    context: str
    question: str
    answers: list[str]  # gold answer texts; several for dev questions, none when is_impossible
    answer_starts: list[int]  # character offset of each answer in context
    is_impossible: bool


def _squad_error(path: Path, where: str, problem: str) -> ValueError:
    return ValueError(f"{path}: {where} {problem}. Expected the official SQuAD layout: "
                      '{"version": ..., "data": [{"title", "paragraphs": [{"context", "qas": [{"id", '
                      '"question", "answers": [{"text", "answer_start"}], "is_impossible" (v2.0)}]}]}]}.')


def _squad_field(path: Path, where: str, record, key: str, kind: type):
    if not isinstance(record, dict):
        raise _squad_error(path, where, f"is a {type(record).__name__}, not an object")
    if key not in record:
        raise _squad_error(path, where, f"has no {key!r} key (it has {sorted(record)})")
    value = record[key]
    # bool is an int subclass, but true is no answer_start.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _squad_error(path, f"{where}.{key}", f"is {type(value).__name__} {value!r:.60}, "
                           f"expected {kind.__name__}")
    return value


def read_squad(path: str | Path, version_2: bool) -> list[SquadExample]:
    """Every question of an official SQuAD JSON file, in file order, with its layout checked.

    Each answer must be the text found at its answer_start in the context; v1.1 questions need at
    least one answer; v2.0 questions need "is_impossible", true exactly when there is no answer (the
    v2.0 "plausible_answers" are ignored). Question ids must be unique, since predictions are keyed
    by them. Any violation is a ValueError naming the file and the place, e.g.
    data[3].paragraphs[2].qas[5].
    """
    path = Path(path)
    version = "2.0" if version_2 else "1.1"
    try:
        with open(path, encoding="utf-8") as file:
            dataset = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid UTF-8 JSON ({error}); expected an official SQuAD "
                         f"v{version} file. Download it again.") from error
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise _squad_error(path, "the top level", "is not an object with a 'data' list")
    other = "1.1" if version_2 else "2.0"
    if dataset.get("version") == _SQUAD_VERSION_FIELDS[other]:
        hint = "--task squad" if version_2 else "--task squad_v2"
        raise ValueError(f"{path} says \"version\": {dataset['version']!r}, a SQuAD v{other} file, but "
                         f"it is read as SQuAD v{version}; use {hint} for it, or give a v{version} file.")

    examples: list[SquadExample] = []
    seen_ids: dict[str, str] = {}
    for article_index, article in enumerate(dataset["data"]):
        where = f"data[{article_index}]"
        title = _squad_field(path, where, article, "title", str)
        paragraphs = _squad_field(path, where, article, "paragraphs", list)
        for paragraph_index, paragraph in enumerate(paragraphs):
            where = f"data[{article_index}].paragraphs[{paragraph_index}]"
            context = _squad_field(path, where, paragraph, "context", str)
            qas = _squad_field(path, where, paragraph, "qas", list)
            for question_index, qa in enumerate(qas):
                where = f"data[{article_index}].paragraphs[{paragraph_index}].qas[{question_index}]"
                question_id = _squad_field(path, where, qa, "id", str)
                question = _squad_field(path, where, qa, "question", str)
                answers = _squad_field(path, where, qa, "answers", list)
                texts, starts = [], []
                for answer_index, answer in enumerate(answers):
                    answer_where = f"{where}.answers[{answer_index}]"
                    text = _squad_field(path, answer_where, answer, "text", str)
                    start = _squad_field(path, answer_where, answer, "answer_start", int)
                    if context[start:start + len(text)] != text or start < 0:
                        raise _squad_error(path, answer_where,
                                           f"(question {question_id}) has text {text!r:.80} but the "
                                           f"context at answer_start {start} reads "
                                           f"{context[max(start, 0):max(start, 0) + len(text)]!r:.80}")
                    texts.append(text)
                    starts.append(start)
                if version_2:
                    is_impossible = _squad_field(path, where, qa, "is_impossible", bool)
                    if is_impossible == bool(texts):
                        raise _squad_error(path, where, f"(question {question_id}) has is_impossible "
                                           f"{str(is_impossible).lower()} but {len(texts)} answer(s); "
                                           "an unanswerable question has none, others at least one")
                else:
                    if qa.get("is_impossible") is True:
                        raise ValueError(
                            f"{path}: {where} (question {question_id}) is marked is_impossible, "
                            "which only SQuAD v2.0 has; this is a v2.0 file read as SQuAD v1.1. Use "
                            "--task squad_v2 for it.")
                    if not texts:
                        raise _squad_error(path, where, f"(question {question_id}) has no answers, "
                                           "which SQuAD v1.1 requires (for v2.0 data use --task squad_v2)")
                    is_impossible = False
                if question_id in seen_ids:
                    raise _squad_error(path, where, f"repeats question id {question_id!r}, already at "
                                       f"{seen_ids[question_id]}")
                seen_ids[question_id] = where
                examples.append(SquadExample(question_id, title, context, question, texts, starts,
                                             is_impossible))
    if not examples:
        raise _squad_error(path, "the 'data' list", "holds no questions")
    return examples


@dataclass
class SquadFeatures:
    """Tokenized SQuAD windows, one row per window; an example with a long context has several.

    encoded: input_ids, token_type_ids and the targets "start_positions" / "end_positions" (token
        indices of the first gold answer, 0 = the [CLS] / <s> token when the window holds no answer).
    example_index: the position in the examples list that each window came from.
    offsets: per token, its (start, end) character span in the example's context; None for question
        and special tokens, so a span over them is never predicted.
    """
    encoded: Encoded
    example_index: list[int]
    offsets: list[list[tuple[int, int] | None]]

    def __len__(self) -> int:
        return len(self.encoded)


def _cut_long_questions(questions: list[str], tokenizer, longest: int) -> list[str]:
    """Questions cut to at most `longest` tokens; almost always returned unchanged."""
    def token_count(text: str) -> int:
        return len(tokenizer.backend.encode(text, add_special_tokens=False).ids)

    encodings = tokenizer.backend.encode_batch(questions, add_special_tokens=False)
    cut = list(questions)
    for index, encoding in enumerate(encodings):
        if len(encoding.ids) <= longest:
            continue
        for keep in range(longest, 0, -1):
            # Cut after a token's last character, then count again: a BPE prefix can tokenize
            # into more pieces than it had inside the whole question.
            cut[index] = questions[index][:encoding.offsets[keep - 1][1]]
            if token_count(cut[index]) <= longest:
                break
        else:
            raise ValueError(f"question {questions[index]!r:.80} cannot be cut to {longest} tokens")
    changed = sum(1 for before, after in zip(questions, cut) if before != after)
    if changed:
        log.warning("cut %d question(s) to %d tokens, so that each window keeps more than doc_stride "
                    "context tokens (BERT's run_squad.py cuts questions at 64 tokens for the same reason)",
                    changed, longest)
    return cut


def squad_features(examples: list[SquadExample], tokenizer, max_length: int = 384, doc_stride: int = 128,
                   training: bool = True) -> SquadFeatures:
    """Tokenize (question, context) pairs into windows of at most max_length tokens.

    The question comes first and is kept whole in every window; the context is cut into windows
    ("only_second" truncation). doc_stride follows the `tokenizers` library and transformers' run_qa.py:
    it is the number of context tokens that consecutive windows SHARE, not the step between them
    (BERT's original run_squad.py used it as the step). With the defaults a window holds up to
    384 - question - 3 context tokens and the next one starts 128 tokens before its end.

    Targets: the token indices of the first gold answer's first and last token when the whole answer
    lies inside the window's context; otherwise, and for unanswerable questions, 0 and 0 (the [CLS] / <s>
    position, which the model learns as "no answer here"). training only documents the call site:
    evaluation also needs every window, and its targets come free from the dev gold answers, so the
    output is the same either way.
    """
    del training  # see the docstring: windows and targets do not depend on it
    if doc_stride < 0 or doc_stride >= max_length:
        raise ValueError(f"doc_stride {doc_stride} must be in [0, max_length={max_length}); it is the "
                         "number of tokens consecutive windows share")
    special_tokens = tokenizer.backend.num_special_tokens_to_add(True)
    # tokenizers panics (PanicException, not an Exception subclass) unless every window keeps more than
    # doc_stride context tokens, so a question may take at most what is left.
    longest_question = max_length - special_tokens - doc_stride - 1
    if longest_question < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a question after {special_tokens} "
                         f"special tokens and more than doc_stride={doc_stride} context tokens; raise "
                         "max_length or lower doc_stride")
    # Some SQuAD questions start with runs of spaces. WordPiece drops them anyway, but byte-level BPE
    # (RoBERTa) turns each into a token that takes a context token's place in every window.
    questions = _cut_long_questions([example.question.lstrip() for example in examples], tokenizer,
                                    longest_question)
    contexts = [example.context for example in examples]
    encodings = tokenizer.encode_batch(questions, contexts, max_length=max_length,
                                       truncation="only_second", stride=doc_stride)

    input_ids, token_type_ids, example_index, all_offsets = [], [], [], []
    start_positions, end_positions = [], []
    for index, (example, encoding) in enumerate(zip(examples, encodings)):
        for window in [encoding, *encoding.overflowing]:
            if window.ids[0] != tokenizer.cls_token_id:
                raise ValueError(f"{tokenizer.source}: windows must start with the classification "
                                 f"token (id {tokenizer.cls_token_id}), the \"no answer\" position; "
                                 f"found id {window.ids[0]}")
            offsets = [tuple(span) if sequence == 1 else None
                       for span, sequence in zip(window.offsets, window.sequence_ids)]
            start_token = end_token = 0
            if example.answers:
                answer_start = example.answer_starts[0]
                answer_end = answer_start + len(example.answers[0])
                context_tokens = [t for t, span in enumerate(offsets) if span is not None]
                if (context_tokens and offsets[context_tokens[0]][0] <= answer_start
                        and offsets[context_tokens[-1]][1] >= answer_end):
                    # First token ending after the answer's start, last token starting before its
                    # end: spaces at either edge of an answer then map to no token of their own.
                    start_token = next(t for t in context_tokens if offsets[t][1] > answer_start)
                    end_token = max(t for t in context_tokens if offsets[t][0] < answer_end)
                    if end_token < start_token:  # the answer is only characters the tokenizer drops
                        start_token = end_token = 0
            input_ids.append(window.ids)
            token_type_ids.append(window.type_ids)
            example_index.append(index)
            all_offsets.append(offsets)
            start_positions.append(start_token)
            end_positions.append(end_token)
    encoded = Encoded(input_ids, token_type_ids,
                      {"start_positions": start_positions, "end_positions": end_positions})
    return SquadFeatures(encoded, example_index, all_offsets)


def squad_predictions(examples: list[SquadExample], features: SquadFeatures, start_logits, end_logits,
                      n_best: int = 20, max_answer_length: int = 30, version_2: bool = False,
                      null_threshold: float = 0.0) -> tuple[dict[str, str], dict[str, float]]:
    """Answer text per question id from the model's start/end logits, and the no-answer score diffs.

    start_logits, end_logits: arrays (num_features, width) in feature order; columns past a feature's
    own length are padding and ignored. For each example, over all its windows, the n_best highest
    start and end tokens are paired; a pair counts when both tokens are context tokens, end >= start
    and the span has at most max_answer_length tokens. Its score is start + end logit, its text the
    context between the start token's first and the end token's last character.

    The null score is the lowest start[0] + end[0] over the example's windows (a window that cannot
    see the answer says "no answer" most loudly, so the least confident one is used, as in BERT's
    run_squad.py). na_probs[id] = null score - best span score; SQuAD v2.0 predicts "" when it
    exceeds null_threshold. The diffs are what squad_eval's --na-prob-file / evaluate_v2(na_probs=...)
    take. To let squad_eval search the best threshold, predict with null_threshold=math.inf (no answer
    blanked here) and evaluate with na_prob_thresh=t: that scores the same as blanking at t here.
    Without any valid span the answer is "" and its diff math.inf (json writes Infinity, which
    Python's json and squad_eval read back).
    """
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    longest = max((len(offsets) for offsets in features.offsets), default=0)
    for name, logits in (("start_logits", start_logits), ("end_logits", end_logits)):
        if logits.ndim != 2 or logits.shape[0] != len(features) or logits.shape[1] < longest:
            raise ValueError(f"{name} has shape {logits.shape}; expected ({len(features)}, >= {longest}): "
                             "one row per feature, in feature order, as wide as the longest feature")
    windows_of: list[list[int]] = [[] for _ in examples]
    for feature, index in enumerate(features.example_index):
        if index >= len(examples):
            raise ValueError(f"feature {feature} belongs to example {index}, but only {len(examples)} "
                             "examples were given; pass the list squad_features was built from")
        windows_of[index].append(feature)

    predictions: dict[str, str] = {}
    na_probs: dict[str, float] = {}
    without_span: list[str] = []
    for example, windows in zip(examples, windows_of):
        if not windows:
            raise ValueError(f"example {example.id} has no feature; pass the examples list and the "
                             "SquadFeatures built from it, unshortened")
        null_score = math.inf
        best_score, best_text = -math.inf, None
        for feature in windows:
            offsets = features.offsets[feature]
            starts = start_logits[feature, :len(offsets)]
            ends = end_logits[feature, :len(offsets)]
            null_score = min(null_score, starts[0] + ends[0])
            # Stable sort, so among equal logits the earlier token wins.
            top_ends = np.argsort(-ends, kind="stable")[:n_best]
            for start in np.argsort(-starts, kind="stable")[:n_best]:
                if offsets[start] is None:
                    continue
                for end in top_ends:
                    if offsets[end] is None or end < start or end - start + 1 > max_answer_length:
                        continue
                    score = starts[start] + ends[end]
                    if score > best_score:
                        best_score = score
                        best_text = example.context[offsets[start][0]:offsets[end][1]]
        if best_text is None:
            without_span.append(example.id)
            predictions[example.id], na_probs[example.id] = "", math.inf
            continue
        na_probs[example.id] = float(null_score - best_score)
        blank = version_2 and na_probs[example.id] > null_threshold
        predictions[example.id] = "" if blank else best_text
    if without_span and not version_2:
        log.warning("%d of %d SQuAD v1.1 question(s) got no valid span among the top %d start and end "
                    "tokens and are answered \"\" (first: %s)", len(without_span), len(examples), n_best,
                    without_span[0])
    return predictions, na_probs
