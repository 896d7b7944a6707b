"""docs/ARCHITECTURE.md's module map is drawn from the code: every module of the three packages in
one line, its docstring's first sentence. A module missing from the map, one the map names that is
gone, or a line that no longer says what the docstring says fails here; the fix is one command:

    .venv/bin/python -m tests.unit.test_architecture --write
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from tests.support.processes import ROOT

LAYERS = ("statesvc", "pipeline", "review")  # lowest first, as in tests/system/test_imports.py
DOC = Path("docs") / "ARCHITECTURE.md"
BEGIN = "<!-- module map: drawn from the code by `.venv/bin/python -m tests.unit.test_architecture --write` -->"
END = "<!-- end of the module map -->"
LONG = 180  # a first sentence longer than this is cut at its first colon: what follows is the detail


def summary(path: Path) -> str | None:
    """A module's docstring, first sentence (None: the module has no docstring)."""
    doc = ast.get_docstring(ast.parse(path.read_bytes(), str(path)))
    if not doc:
        return None
    first = " ".join(doc.split("\n\n")[0].split())
    m = re.match(r"(.+?[.?!])(?:\s|$)", first)
    sentence = m.group(1) if m else first
    if len(sentence) > LONG and ": " in sentence:
        sentence = sentence.split(": ", 1)[0]
    return sentence.replace("|", "\\|")


def module_map(root: Path = ROOT) -> tuple[str, list[str]]:
    """The map's text, and the modules that have no docstring to draw their line from."""
    lines: list[str] = []
    undocumented: list[str] = []
    for top in LAYERS:
        for path in sorted((root / top).rglob("*.py"), key=lambda p: (p.parent != root / top, p)):
            rel = path.relative_to(root)
            name = f"{rel.parent}/" if path.name == "__init__.py" else str(rel)
            said = summary(path)
            if said is None:
                undocumented.append(str(rel))
            elif path.parent == root / top and path.name == "__init__.py":
                said = said.removeprefix(f"{top}: ")
                lines += ["", f"**`{name}`**: {said}", ""]
            else:
                lines.append(f"- `{name}`: {said}")
    return "\n".join(lines).strip("\n"), undocumented


def section(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def problems(root: Path = ROOT) -> list[str]:
    """What makes the map in the docs differ from the code, one line each."""
    drawn, undocumented = module_map(root)
    found = [f"{m} has no docstring to draw its line from" for m in undocumented]
    doc = root / DOC
    listed = section(doc.read_text(encoding="utf-8")) if doc.exists() else None
    if listed is None:
        return [*found, f"{DOC} holds no module map between {BEGIN!r} and {END!r}"]
    names = set(re.findall(r"`((?:statesvc|pipeline|review)/[^`]*)`", listed))
    wanted = set(re.findall(r"`((?:statesvc|pipeline|review)/[^`]*)`", drawn))
    found += [f"{m} is missing from the map" for m in sorted(wanted - names)]
    found += [f"{m} is in the map but not in the code" for m in sorted(names - wanted)]
    if not found and listed != drawn:
        changed = sorted(set(drawn.splitlines()) - set(listed.splitlines()))
        found += [f"the map says otherwise than the code: {line}" for line in changed]
    return found


def write(root: Path = ROOT) -> None:
    doc = root / DOC
    text = doc.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(f"{head}{BEGIN}\n{module_map(root)[0]}\n{END}{tail}", encoding="utf-8")


def test_the_module_map_is_the_codes() -> None:
    found = problems()
    assert not found, "\n".join([*found, "redraw it: .venv/bin/python -m tests.unit.test_architecture --write"])


def test_a_new_module_is_missing_until_the_map_is_redrawn(tmp_path: Path) -> None:
    """The check above, on a small tree: it names a module the map lacks, a line gone stale and
    a module without a docstring, and is quiet once the map is redrawn."""
    for top in LAYERS:
        (tmp_path / top).mkdir()
        (tmp_path / top / "__init__.py").write_text(f'"""{top}: one of the three services."""\n')
    (tmp_path / "statesvc" / "state.py").write_text('"""The entries. More detail here."""\n')
    (tmp_path / "docs").mkdir()
    (tmp_path / DOC).write_text(f"# Architecture\n\n{BEGIN}\n{END}\n\nThe data's way.\n")
    write(tmp_path)
    assert problems(tmp_path) == []
    assert "- `statesvc/state.py`: The entries." in (tmp_path / DOC).read_text()
    (tmp_path / "review" / "layout.py").write_text('"""Where a dataset keeps its files."""\n')
    (tmp_path / "pipeline" / "bare.py").write_text("X = 1\n")
    assert problems(tmp_path) == ["pipeline/bare.py has no docstring to draw its line from",
                                  "review/layout.py is missing from the map"]
    (tmp_path / "pipeline" / "bare.py").unlink()
    write(tmp_path)
    (tmp_path / "statesvc" / "state.py").write_text('"""The entries of a dataset."""\n')
    assert problems(tmp_path) == ["the map says otherwise than the code: - `statesvc/state.py`: The entries of a "
                                  "dataset."]
    write(tmp_path)
    assert problems(tmp_path) == [] and (tmp_path / DOC).read_text().endswith("\n\nThe data's way.\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    print("\n".join(problems()) or f"{DOC}: the module map is the code's")
