"""Tests for data.py: the GLUE readers on the real shared glue_data files, on small synthetic files
in the real column layouts (MNLI and QQP are not in the shared data), and the download path against
a loopback HTTP server."""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import data
from conftest import LoopbackServer


def _shared_glue_dir() -> Path:
    shared_data = os.environ.get("PROGTUNING_DATA")
    base = Path(shared_data) if shared_data else Path(__file__).resolve().parent.parent / "shared" / "data"
    return base / "glue"


SHARED_GLUE = _shared_glue_dir()


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may reach the network by accident; the download tests lift this themselves.
    monkeypatch.setenv("PROGTUNING_OFFLINE", "1")
    for name in (data.GLUE_DIR_ENV, data.GLUE_BASE_URL_ENV, data.MRPC_BASE_URL_ENV):
        monkeypatch.delenv(name, raising=False)


def _require_shared(task: str, split: str) -> None:
    path = SHARED_GLUE / data.GLUE_TASKS[task].folder / data.split_file_name(task, split)
    if not path.is_file():
        pytest.skip(f"shared GLUE file {path} is absent (set PROGTUNING_DATA to the shared data folder)")


def _write(path: Path, lines: list[str], ending: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + ending for line in lines).encode("utf-8"))
    return path


# ---------------------------------------------------------------- real files

REAL_SPLITS = [
    ("cola", "train", 8551), ("cola", "dev", 1043),
    ("sst2", "train", 67349), ("sst2", "dev", 872),
    ("mrpc", "train", 3668), ("mrpc", "dev", 408),
    ("stsb", "train", 5749), ("stsb", "dev", 1500),
    ("rte", "train", 2490), ("rte", "dev", 277),
    ("qnli", "dev", 5463),
]


@pytest.mark.parametrize("task,split,rows", REAL_SPLITS)
def test_real_split_has_readme_row_count_and_valid_labels(task: str, split: str, rows: int) -> None:
    _require_shared(task, split)
    spec = data.GLUE_TASKS[task]
    examples = data.read_glue(task, split, SHARED_GLUE)
    assert len(examples) == rows
    assert examples.skipped_rows == 0
    assert len({example.guid for example in examples}) == rows
    assert all(example.text_a.strip() for example in examples)
    if spec.text_b_column is None:
        assert all(example.text_b is None for example in examples)
    else:
        assert all(example.text_b and example.text_b.strip() for example in examples)
    labels = [example.label for example in examples]
    if spec.is_regression:
        assert all(isinstance(label, float) and 0.0 <= label <= 5.0 for label in labels)
        assert min(labels) == 0.0 and max(labels) == 5.0
    else:
        assert all(isinstance(label, int) for label in labels)
        assert set(labels) == set(range(spec.num_labels))


REAL_FIRST_ROWS = [
    ("cola", "train", "Our friends won't buy this analysis, let alone the next one we propose.", None, 1),
    ("sst2", "train", "hide new secretions from the parental units ", None, 0),
    ("mrpc", "train",
     'Amrozi accused his brother , whom he called " the witness " , '
     'of deliberately distorting his evidence .',
     'Referring to him as only " the witness " , '
     'Amrozi accused his brother of deliberately distorting his evidence .',
     1),
    ("stsb", "train", "A plane is taking off.", "An air plane is taking off.", 5.0),
    ("rte", "train", "No Weapons of Mass Destruction Found in Iraq Yet.",
     "Weapons of Mass Destruction Found in Iraq.", 1),
    ("qnli", "dev", "What came into force after the new constitution was herald?",
     "As of that day, the new constitution heralding the Second Republic came into force.", 0),
]


@pytest.mark.parametrize("task,split,text_a,text_b,label", REAL_FIRST_ROWS)
def test_real_first_row(task: str, split: str, text_a: str, text_b: str | None, label: int | float) -> None:
    _require_shared(task, split)
    first = data.read_glue(task, split, SHARED_GLUE)[0]
    first_data_line = 2 if data.GLUE_TASKS[task].has_header else 1
    assert first == data.Example(f"{task}-{split}-{first_data_line}", text_a, text_b, label)


def test_real_qnli_keeps_stray_leading_quotes_without_merging_rows() -> None:
    _require_shared("qnli", "dev")
    examples = data.read_glue("qnli", "dev", SHARED_GLUE)
    by_guid = {example.guid: example for example in examples}
    # Line 660 opens with an unmatched quote; a quote-aware reader would swallow the rows after it.
    stray = by_guid["qnli-dev-660"]
    assert stray.text_b.startswith('" This term describes cells with low levels of a cell-surface marker')
    assert stray.text_a == ("Missing self desribes cells that only have small amounts of what "
                            "cell-surface marker?")
    assert by_guid["qnli-dev-661"].text_a != stray.text_a
    assert sum(example.text_b.startswith('"') for example in examples) == 19
    assert not any("\n" in example.text_b or "\t" in example.text_b for example in examples)


def test_real_mrpc_rebuild_reproduces_shared_splits_byte_for_byte(tmp_path: Path) -> None:
    mrpc = SHARED_GLUE / "MRPC"
    sources = [mrpc / name for name in (*data.MRPC_SOURCE_FILES, "dev_ids.tsv")]
    if not all(path.is_file() for path in sources):
        pytest.skip(f"shared MRPC source files are absent under {mrpc}")
    data.build_mrpc_splits(*sources, tmp_path)
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        assert (tmp_path / name).read_bytes() == (mrpc / name).read_bytes(), name


# ---------------------------------------------------------------- synthetic files

RTE_HEADER = "index\tsentence1\tsentence2\tlabel"


def test_malformed_rows_are_skipped_counted_and_reported_once(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "RTE" / "train.tsv", [
        RTE_HEADER,
        "0\tA cat sat.\tAn animal sat.\tentailment",
        "1\tonly three\tfields",
        "2\tA dog ran.\tA dog slept.\tmaybe",
        "3\t \tNothing before.\tnot_entailment",
        "4\tIt rained.\tIt was dry.\tnot_entailment",
    ])
    with caplog.at_level(logging.WARNING, logger="progtuning"):
        examples = data.read_glue("rte", "train", tmp_path)
    assert [(example.guid, example.label) for example in examples] == [("rte-train-2", 0), ("rte-train-6", 1)]
    assert examples.skipped_rows == 3
    assert examples.path == path
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0]
    assert "skipped 3 malformed row(s) of 5" in warnings[0]
    assert "line 3: expected 4 tab-separated fields, found 3" in warnings[0]


def test_stsb_unparsable_and_out_of_range_scores_are_skipped(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    prefix = "main-captions\tMSRvid\t2012test\t0001\tnone\tnone"
    _write(tmp_path / "STS-B" / "dev.tsv", [
        header,
        f"0\t{prefix}\tA plane takes off.\tA jet takes off.\t4.200",
        f"1\t{prefix}\tA man sings.\tA man plays.\tabout three",
        f"2\t{prefix}\tA cat.\tA dog.\t7.5",
        f"3\t{prefix}\tA boy runs.\tA girl runs.\t0.33300000000000",
    ])
    with caplog.at_level(logging.WARNING, logger="progtuning"):
        examples = data.read_glue("stsb", "dev", tmp_path)
    assert [example.label for example in examples] == [4.2, 0.333]
    assert examples.skipped_rows == 2
    assert "line 3: score 'about three' is not a number" in caplog.text


def test_crlf_line_endings_read_like_lf(tmp_path: Path) -> None:
    rows = [RTE_HEADER, "0\tA cat sat.\tAn animal sat.\tentailment",
            "1\tIt rained.\tIt was dry.\tnot_entailment"]
    _write(tmp_path / "lf" / "RTE" / "dev.tsv", rows)
    _write(tmp_path / "crlf" / "RTE" / "dev.tsv", rows, ending="\r\n")
    assert data.read_glue("rte", "dev", tmp_path / "crlf") == data.read_glue("rte", "dev", tmp_path / "lf")


def test_header_that_does_not_match_the_task_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "RTE" / "dev.tsv", ["index\tpremise\thypothesis\tlabel",
                                                  "0\tA cat sat.\tAn animal sat.\tentailment"])
    with pytest.raises(ValueError, match="'sentence1' in column 1") as error:
        data.read_glue("rte", "dev", tmp_path)
    assert str(path) in str(error.value)


def test_file_with_no_readable_row_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    # An RTE-shaped file holding 0/1 labels, e.g. a different task's data put in the wrong folder.
    path = _write(tmp_path / "RTE" / "train.tsv", [RTE_HEADER, "0\tA.\tB.\t0", "1\tC.\tD.\t1"])
    with pytest.raises(ValueError, match="none of its 2 rows") as error:
        data.read_glue("rte", "train", tmp_path)
    assert str(path) in str(error.value) and "line 2: unknown label '0'" in str(error.value)

    _write(tmp_path / "RTE" / "dev.tsv", [RTE_HEADER])
    with pytest.raises(ValueError, match="has no data rows"):
        data.read_glue("rte", "dev", tmp_path)


def test_missing_file_and_missing_folder_name_the_path(tmp_path: Path) -> None:
    _write(tmp_path / "RTE" / "dev.tsv", [RTE_HEADER, "0\tA cat sat.\tAn animal sat.\tentailment"])
    with pytest.raises(FileNotFoundError) as missing_file:
        data.read_glue("rte", "train", tmp_path)
    assert str(tmp_path / "RTE" / "train.tsv") in str(missing_file.value)
    with pytest.raises(FileNotFoundError) as missing_folder:
        data.read_glue("cola", "train", tmp_path)
    message = str(missing_folder.value)
    assert str(tmp_path / "CoLA" / "train.tsv") in message
    assert "--data-dir" in message and "$GLUE_DIR" in message and "PROGTUNING_OFFLINE" in message


MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                     "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\t"
                   "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")


def _mnli_row(index: int, premise: str, hypothesis: str, labels: list[str]) -> str:
    parses = ["( parse )"] * 4
    return "\t".join([str(index), "31193", f"31193{labels[-1][0]}", "government", *parses,
                      premise, hypothesis, *labels])


def test_mnli_layout_label_is_last_column_and_dev_splits_are_named(tmp_path: Path) -> None:
    _write(tmp_path / "MNLI" / "train.tsv", [
        MNLI_TRAIN_HEADER,
        _mnli_row(0, "The new rights are nice.", "Everyone likes them.", ["neutral", "neutral"]),
        _mnli_row(1, "He left.", "He stayed.", ["contradiction", "contradiction"]),
        # A dev-layout row (five annotator labels) does not fit the train header.
        _mnli_row(2, "It is red.", "It has a colour.", ["entailment"] * 6),
        _mnli_row(3, "It is red.", "It has a colour.", ["neutral", "entailment"]),
    ])
    _write(tmp_path / "MNLI" / "dev_matched.tsv", [
        MNLI_DEV_HEADER,
        _mnli_row(0, "A man eats.", "A person eats.", ["entailment"] * 4 + ["neutral", "entailment"])])
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", [
        MNLI_DEV_HEADER, _mnli_row(0, "A man eats.", "Nobody eats.", ["contradiction"] * 6)])

    train = data.read_glue("mnli", "train", tmp_path)
    assert [(example.text_a, example.text_b, example.label) for example in train] == [
        ("The new rights are nice.", "Everyone likes them.", 2),
        ("He left.", "He stayed.", 0),
        ("It is red.", "It has a colour.", 1),
    ]
    assert train.skipped_rows == 1
    assert [example.label for example in data.read_glue("mnli", "dev_matched", tmp_path)] == [1]
    assert [example.label for example in data.read_glue("mnli", "dev_mismatched", tmp_path)] == [0]
    assert [(split.name, split.file, split.report_name) for split in data.GLUE_TASKS["mnli"].dev_splits] == [
        ("dev_matched", "dev_matched.tsv", "mnli-m"), ("dev_mismatched", "dev_mismatched.tsv", "mnli-mm")]
    with pytest.raises(ValueError, match="dev_matched, dev_mismatched"):
        data.read_glue("mnli", "dev", tmp_path)


def test_qqp_layout_skips_a_row_broken_by_a_newline(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "QQP" / "train.tsv", [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "201359\t303345\t303346\tWhy are cats so calm?\tWhy are dogs so calm?\t0",
        "5\t11\t12\tHow do I learn",  # a question holding a newline splits its row in two
        "Rust?\tWhat is Rust?\t1",
        "172974\t266948\t175089\tWhy travel alone?\tWhat are reasons to travel alone?\t1",
    ])
    with caplog.at_level(logging.WARNING, logger="progtuning"):
        examples = data.read_glue("qqp", "train", tmp_path)
    assert [(example.guid, example.text_a, example.label) for example in examples] == [
        ("qqp-train-2", "Why are cats so calm?", 0), ("qqp-train-5", "Why travel alone?", 1)]
    assert examples.skipped_rows == 2
    assert "line 3: expected 6 tab-separated fields, found 4" in caplog.text


def test_wnli_unknown_tasks_and_unknown_splits_are_errors(tmp_path: Path) -> None:
    for name in ("wnli", "WNLI"):
        with pytest.raises(ValueError, match="excluded, as in the Progtuning paper"):
            data.read_glue(name, "train", tmp_path)
    with pytest.raises(ValueError, match="cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte"):
        data.glue_task("sst-2")
    with pytest.raises(ValueError, match="expected one of train, dev"):
        data.split_file_name("rte", "test")


def test_glue_data_dir_prefers_argument_then_environment(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    assert data.glue_data_dir(None) == Path("glue_data")
    monkeypatch.setenv(data.GLUE_DIR_ENV, str(tmp_path / "from_env"))
    assert data.glue_data_dir(None) == tmp_path / "from_env"
    assert data.glue_data_dir(str(tmp_path / "given")) == tmp_path / "given"


# ---------------------------------------------------------------- download

@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    monkeypatch.delenv("PROGTUNING_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv(data.GLUE_DIR_ENV, raising=False)
    loopback = LoopbackServer()
    monkeypatch.setenv(data.GLUE_BASE_URL_ENV, f"{loopback.url}/glue/data/")
    monkeypatch.setenv(data.MRPC_BASE_URL_ENV, f"{loopback.url}/senteval/senteval_data")
    yield loopback
    loopback.close()


def _zip(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


RTE_ZIP_MEMBERS = {
    "RTE/train.tsv": (f"{RTE_HEADER}\n0\tA cat sat.\tAn animal sat.\tentailment\n"
                      "1\tIt rained.\tIt was dry.\tnot_entailment\n"),
    "RTE/dev.tsv": f"{RTE_HEADER}\n0\tShe won.\tShe lost.\tnot_entailment\n",
    "RTE/test.tsv": "index\tsentence1\tsentence2\n0\tA.\tB.\n",
}


def test_read_glue_downloads_and_extracts_a_missing_task(server: LoopbackServer, tmp_path: Path) -> None:
    server.serve("/glue/data/RTE.zip", _zip(RTE_ZIP_MEMBERS))
    root = tmp_path / "glue_data"
    root.mkdir()  # a folder the user names must exist; test_the_default_folder_... covers the default
    train = data.read_glue("rte", "train", root)
    assert [(example.text_a, example.label) for example in train] == [("A cat sat.", 0), ("It rained.", 1)]
    assert sorted(os.listdir(root)) == ["RTE"]  # no archive, staging folder or partial file left
    assert sorted(os.listdir(root / "RTE")) == ["dev.tsv", "test.tsv", "train.tsv"]
    server.routes.clear()  # the folder is there now, so no second download is attempted
    assert data.read_glue("rte", "dev", root)[0].label == 1


def test_mrpc_download_rebuilds_train_dev_test_like_the_classic_script(server: LoopbackServer,
                                                                        tmp_path: Path) -> None:
    bom_header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    pairs = [("1", "10", "11"), ("0", "20", "21"), ("1", "30", "31"), ("0", "40", "41"), ("1", "50", "51")]
    msr_train = bom_header + "".join(f"{label}\t{a}\t{b}\tSentence {a} .\tSentence {b} . \n"
                                     for label, a, b in pairs)
    msr_test = bom_header + "1\t60\t61\tTest a .\tTest b .\n0\t70\t71\tTest c .\tTest d .\n"
    server.serve("/senteval/senteval_data/msr_paraphrase_train.txt", msr_train.encode("utf-8"))
    server.serve("/senteval/senteval_data/msr_paraphrase_test.txt", msr_test.encode("utf-8"))
    server.serve("/glue/data/mrpc_dev_ids.tsv", b"40\t41\n20\t21\n")

    root = tmp_path / "glue_data"
    root.mkdir()
    dev = data.read_glue("mrpc", "dev", root)
    train = data.read_glue("mrpc", "train", root)
    # dev keeps the training file's order, not the id list's; trailing whitespace is stripped.
    assert [(example.text_a, example.text_b, example.label) for example in dev] == [
        ("Sentence 20 .", "Sentence 21 .", 0), ("Sentence 40 .", "Sentence 41 .", 0)]
    assert [example.text_a for example in train] == ["Sentence 10 .", "Sentence 30 .", "Sentence 50 ."]
    folder = root / "MRPC"
    assert (folder / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t#1 ID")
    assert (folder / "test.tsv").read_text(encoding="utf-8") == (
        "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "0\t60\t61\tTest a .\tTest b .\n1\t70\t71\tTest c .\tTest d .\n")
    assert sorted(os.listdir(folder)) == ["dev.tsv", "dev_ids.tsv", "msr_paraphrase_test.txt",
                                          "msr_paraphrase_train.txt", "test.tsv", "train.tsv"]


def test_http_404_is_a_clear_error_and_leaves_nothing_behind(server: LoopbackServer, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default ./glue_data is created for the download, and removed again
    with pytest.raises(data.GlueDownloadError) as error:
        data.read_glue("cola", "train")
    message = str(error.value)
    assert f"{server.url}/glue/data/CoLA.zip" in message and "HTTP 404" in message
    assert str(Path("glue_data") / "CoLA" / "train.tsv") in message and "place them" in message
    assert os.listdir(tmp_path) == []


def test_the_default_folder_is_created_only_for_a_download_that_succeeds(server: LoopbackServer,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    server.serve("/glue/data/RTE.zip", _zip(RTE_ZIP_MEMBERS))
    monkeypatch.chdir(tmp_path)
    assert len(data.read_glue("rte", "dev")) == 1
    assert os.listdir(tmp_path) == ["glue_data"] and os.listdir(tmp_path / "glue_data") == ["RTE"]


@pytest.mark.parametrize("named_by", ["--data-dir", "$GLUE_DIR"])
def test_a_named_folder_that_does_not_exist_is_an_error_and_creates_nothing(
        server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named_by: str) -> None:
    server.serve("/glue/data/RTE.zip", _zip(RTE_ZIP_MEMBERS))
    typo = tmp_path / "data" / "gleu"
    if named_by == "$GLUE_DIR":
        monkeypatch.setenv(data.GLUE_DIR_ENV, str(typo))
    with pytest.raises(FileNotFoundError) as error:
        data.read_glue("rte", "train", typo if named_by == "--data-dir" else None)
    assert str(error.value).startswith(f"{typo} (the GLUE data folder, from {named_by}) does not exist; "
                                       "check the path")
    assert os.listdir(tmp_path) == [] and server.requests == []


def test_hf_hub_offline_stops_the_data_download_too(server: LoopbackServer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    server.serve("/glue/data/RTE.zip", _zip(RTE_ZIP_MEMBERS))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="does not exist and HF_HUB_OFFLINE is set, so it is not "
                                                "downloaded"):
        data.read_glue("rte", "train", tmp_path)
    assert os.listdir(tmp_path) == [] and server.requests == []


def test_interrupted_download_leaves_no_file_that_looks_finished(server: LoopbackServer,
                                                                  tmp_path: Path) -> None:
    archive = _zip(RTE_ZIP_MEMBERS)
    server.serve("/glue/data/RTE.zip", archive[:100], announced_length=len(archive))
    root = tmp_path / "glue_data"
    root.mkdir()
    with pytest.raises(data.GlueDownloadError, match=f"ended after 100 of {len(archive)} bytes"):
        data.download_glue_task("rte", root)
    assert os.listdir(root) == []


def test_an_error_page_instead_of_a_zip_is_named(server: LoopbackServer, tmp_path: Path) -> None:
    server.serve("/glue/data/SST-2.zip", b"<html>Sign in to continue</html>")
    with pytest.raises(data.GlueDownloadError, match="SST-2.zip is not a zip archive"):
        data.download_glue_task("sst2", tmp_path)


@pytest.mark.parametrize("unsafe_name", ["../escaped.txt", "RTE/../../escaped.txt", "/abs/escaped.txt",
                                         "..\\escaped.txt"])
def test_zip_member_escaping_the_target_folder_is_rejected(server: LoopbackServer, tmp_path: Path,
                                                           unsafe_name: str) -> None:
    server.serve("/glue/data/RTE.zip", _zip({**RTE_ZIP_MEMBERS, unsafe_name: "overwritten"}))
    root = tmp_path / "glue_data"
    root.mkdir()
    with pytest.raises(ValueError, match="would be written outside"):
        data.download_glue_task("rte", root)
    assert os.listdir(root) == []
    assert not (tmp_path / "escaped.txt").exists()
