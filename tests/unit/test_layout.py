"""The dataset's layout has one home: statesvc/layout.py is the only module of the three packages
whose code spells the names of the dataset's files and folders (docstrings, comments and tests
may name them)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from statesvc import layout

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("statesvc", "pipeline", "review")
# a file's name, or a folder as a path's part ("wavs", "wavs/", "x/requeued/..."): "stale" alone is
# also an effect's kind and "requeued" a reply's key, so only their path forms count
SPELLED = re.compile(r"generation_state\.(json|journal)|statesvc(-events)?\.(sock|lock)|^wavs$|"
                     r"(^|/)(wavs|requeued|stale|quarantine|logs)/")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def spelled(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string in the code (not a docstring) that spells a layout name."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and SPELLED.search(node.value)]


def test_only_the_layout_module_spells_the_dataset_s_names() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             if path != ROOT / "statesvc" / "layout.py"
             for line, text in spelled(path.read_text())]
    assert not found, "spelled outside statesvc/layout.py:\n" + "\n".join(found)


def test_the_check_sees_a_name_spelled_in_code_but_not_in_a_docstring() -> None:
    code = '"""Writes generation_state.json."""\nx = dataset / "wavs" / name\ny = f"requeued/{n}"\n'
    assert sorted(line for line, _ in spelled(code)) == [2, 3]
    assert spelled(Path(layout.__file__).read_text())  # the home itself: what the test excludes


def test_the_layout_s_paths() -> None:
    ds = Path("/d")
    assert (layout.state_path(ds), layout.journal_path(ds), layout.lock_path(ds)) == (
        ds / "generation_state.json", ds / "generation_state.journal", ds / "statesvc.lock")
    assert (layout.wav_path(ds, "a_0001"), layout.wav_name("a_0001")) == (ds / "wavs" / "a_0001.wav", "wavs/a_0001.wav")
    assert (layout.set_aside(ds), layout.set_aside_name("x.wav")) == (ds / "requeued", "requeued/x.wav")
    assert layout.log_path(ds, "generate-0") == ds / "logs" / "generate-0.log"
