"""GLUE data for progtuning, in the `glue_data` layout of GLUE's classic download_glue_data.py.

Format followed: the GLUE benchmark (Wang et al., 2018) as laid out by download_glue_data.py
(nyu-mll/GLUE-baselines): one folder per task (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE), each
holding tab-separated `train.tsv` and `dev.tsv` (MNLI: `dev_matched.tsv` and `dev_mismatched.tsv`).
Fields are split on tabs with quoting disabled, as the BERT and transformers GLUE readers do, so a
`"` is always part of the text. WNLI is left out, as in the Progtuning paper.

    read_glue(task, split, data_dir) -> GlueExamples  (a list of Example, plus .path and .skipped_rows)
    download_glue_task(task, data_dir) -> Path        (the task folder, fetched when it is missing)

Splits are "train" and the dev split names in GLUE_TASKS: "dev" for every task except MNLI, whose dev
splits are "dev_matched" (reported as mnli-m) and "dev_mismatched" (reported as mnli-mm).

Environment: $GLUE_DIR is the glue_data folder when no data_dir is given (default ./glue_data);
PROGTUNING_OFFLINE=1 stops read_glue from downloading; $GLUE_BASE_URL and $MRPC_BASE_URL replace the
download locations (DEFAULT_GLUE_BASE_URL, DEFAULT_MRPC_BASE_URL), e.g. with a mirror.
"""

from __future__ import annotations

import http.client
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

import torch

log = logging.getLogger("progtuning")

GLUE_DIR_ENV = "GLUE_DIR"
OFFLINE_ENV = "PROGTUNING_OFFLINE"
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


def glue_data_dir(data_dir: str | Path | None = None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    from_env = os.environ.get(GLUE_DIR_ENV)
    return Path(from_env) if from_env else Path("glue_data")


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes"}


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
        if _offline():
            raise FileNotFoundError(
                f"GLUE task {task!r}: {path} does not exist and {OFFLINE_ENV} is set, so it is not "
                f"downloaded. Pass --data-dir or set ${GLUE_DIR_ENV} to a glue_data folder holding "
                f"{spec.folder}/{file_name} (the layout of GLUE's download_glue_data.py), or unset "
                f"{OFFLINE_ENV} to download it automatically.")
        download_glue_task(task, root)
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
    root.mkdir(parents=True, exist_ok=True)
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
    return target


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
