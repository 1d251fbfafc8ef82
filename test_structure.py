"""The house rules that keep the code readable (STYLE.md, last section), checked on the source itself: no
function longer than 100 lines, run.py at most 600 lines, nothing imports run.py, and no two modules import
each other, directly or around a circle -- an import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = {path.stem: path for path in HERE.glob("*.py") if not path.stem.startswith("test_")
           and path.stem != "conftest"}


def imports_of(path: Path) -> set[str]:
    """The project modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def test_no_function_is_longer_than_100_lines():
    long = []
    for path in sorted(HERE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 100:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_run_py_stays_a_page_of_pages():
    assert len((HERE / "run.py").read_text(encoding="utf-8").splitlines()) <= 600


def test_imports_point_down():
    graph = {name: imports_of(path) - {name} for name, path in MODULES.items()}
    assert not [name for name, imported in graph.items() if "run" in imported], "a module imports run.py"

    def cycle_from(start: str, node: str, trail: list[str]) -> list[str] | None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                return trail + [nxt]
            if nxt not in trail:
                found = cycle_from(start, nxt, trail + [nxt])
                if found:
                    return found
        return None

    cycles = [cycle for name in graph if (cycle := cycle_from(name, name, [name]))]
    assert not cycles, cycles[0]


def test_the_check_sees_a_circle(tmp_path):
    """The import scan finds an import inside a function, so the rule above can fail."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    import run\n    from training import Stepper\n")
    assert imports_of(source) == {"run", "training"}
