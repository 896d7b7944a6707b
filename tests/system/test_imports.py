"""The import boundaries, read from the code: the three services are three packages layered
statesvc (the daemon and its clients) < pipeline (generators, reconciler, supervisor) < review
(the page). A package imports only from its own layer or lower ones, through their public names,
with no cycle between modules; imports inside functions count as much as those at the top. And
the daemon's host needs no web stack: importing statesvc.daemon or statesvc.cli loads none, and
without the `review` extra `statesvc dashboard` says which extra to install."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.books import make_dataset
from tests.support.processes import ROOT, cli

LAYERS = ("statesvc", "pipeline", "review")  # lowest first
WEB = ("fastapi", "starlette", "uvicorn", "sse_starlette")  # what the `review` extra installs


@dataclass(frozen=True)
class Import:
    importer: str  # the module whose code holds the import
    imported: str  # the module it loads (a package's own module when it names one)
    names: tuple[str, ...]  # the names taken from it (`from m import a, b`), empty for `import m`
    line: int
    typing_only: bool  # under `if TYPE_CHECKING:`: a dependency, but never executed (no cycle at run time)
    path: str  # the importer's file, from the repository's root

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the three packages, by dotted name (a package by its __init__)."""
    found = {}
    for top in LAYERS:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _statements(tree: ast.AST, typing_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node, with whether it stands under `if TYPE_CHECKING:` (functions and classes included)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                yield child, True
                yield from _statements(child, True)
            for child in node.orelse:
                yield child, typing_only
                yield from _statements(child, typing_only)
        else:
            yield node, typing_only
            yield from _statements(node, typing_only)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    """Every import in a module's code, wherever it stands (functions, TYPE_CHECKING blocks), of our
    packages' modules, resolved as Python would: `from pkg import mod` loads pkg.mod."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    where = "/".join(path.parts[-len(name.split(".")) - (path.name == "__init__.py"):])
    for node, typing_only in _statements(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LAYERS:
                    yield Import(name, alias.name, (), node.lineno, typing_only, where)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source.split(".")[0] not in LAYERS:
                continue
            names = tuple(a.name for a in node.names)
            submodules = [n for n in names if f"{source}.{n}" in known]
            for n in submodules:  # `from . import pages`: the module pages
                yield Import(name, f"{source}.{n}", (), node.lineno, typing_only, where)
            if len(submodules) < len(names):
                yield Import(name, source, tuple(n for n in names if n not in submodules), node.lineno,
                             typing_only, where)


def graph(root: Path = ROOT) -> list[Import]:
    known = modules(root)
    return [imp for name, path in known.items() for imp in imports_of(name, path, known)]


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def upward(imports: list[Import]) -> list[str]:
    """Imports of a higher layer's module: statesvc of pipeline or review, pipeline of review."""
    return [str(i) for i in imports if layer(i.imported) > layer(i.importer)]


def private(imports: list[Import]) -> list[str]:
    """Names another package's module keeps to itself (a leading underscore), taken across packages."""
    return [f"{i} (private {n})" for i in imports if i.imported.split(".")[0] != i.importer.split(".")[0]
            for n in i.names if n.startswith("_") and not n.startswith("__")]


def cycles(imports: list[Import]) -> list[list[str]]:
    """The groups of modules that import each other, directly or around a loop (the modules each
    reaches back from), at run time: an import only for the type checker closes no loop."""
    edges: dict[str, set[str]] = {}
    for i in imports:
        if not i.typing_only:
            edges.setdefault(i.importer, set()).add(i.imported)
    reach: dict[str, set[str]] = {}
    for start in edges:
        seen: set[str] = set()
        todo = list(edges[start])
        while todo:
            v = todo.pop()
            if v not in seen:
                seen.add(v)
                todo += edges.get(v, ())
        reach[start] = seen
    groups = {frozenset(w for w in reach[v] if v in reach.get(w, ())) for v in reach if v in reach[v]}
    return sorted(sorted(g) for g in groups)


def test_no_package_imports_a_higher_one() -> None:
    assert upward(graph()) == []


def test_packages_use_each_others_public_names_only() -> None:
    assert private(graph()) == []


def test_no_cycle_between_modules() -> None:
    assert cycles(graph()) == []


def test_the_checks_see_imports_wherever_they_stand(tmp_path: Path) -> None:
    """The three checks above, on a small tree that breaks each rule once (so they can fail)."""
    files = {
        "statesvc/__init__.py": "",
        "statesvc/low.py": "def later():\n    from review import page  # lazily: still upward\n",
        "statesvc/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.a import A\n",
        "pipeline/__init__.py": "",
        "pipeline/a.py": "from . import b\nfrom statesvc.typed import _hidden\n",
        "pipeline/b.py": "class B:\n    def f(self):\n        from .a import A\n",
        "pipeline/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import D\n",
        "pipeline/d.py": "from .c import C\n",
        "review/__init__.py": "",
        "review/page.py": "import statesvc.low\nfrom pipeline import a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    g = graph(tmp_path)
    assert upward(g) == ["statesvc/low.py:2: statesvc.low imports review.page",
                         "statesvc/typed.py:3: statesvc.typed imports pipeline.a"]
    assert private(g) == ["pipeline/a.py:2: pipeline.a imports statesvc.typed (private _hidden)"]
    # a and b import each other; low and page too (low lazily, as the page's sync once did with the
    # reconciler); c and d only for the type checker: no loop at run time
    assert cycles(g) == [["pipeline.a", "pipeline.b"], ["review.page", "statesvc.low"]]


def _fresh(code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_the_daemon_and_its_cli_load_no_web_framework(tmp_path: Path) -> None:
    """On a daemon host: importing the daemon and the CLI, and running a command of its own (here
    `statesvc status`), loads neither a web framework nor the higher packages; `statesvc --help`,
    which lists the page's command, loads no web framework either."""
    ds = make_dataset(tmp_path, ["uno", "dos"])
    loaded = ("print('loaded:', ' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
              f"{(*WEB, 'review', 'pipeline')!r})))\n")
    code = ("import sys\n"
            "import statesvc.daemon, statesvc.cli\n"
            f"statesvc.cli.main(['status', '--dataset', {str(ds)!r}], standalone_mode=False)\n"
            f"{loaded}"
            "statesvc.cli.main(['--help'], standalone_mode=False)\n"
            f"{loaded}")
    r = _fresh(code, tmp_path)
    assert r.returncode == 0, r.stderr
    after_status, after_help = [line for line in r.stdout.splitlines() if line.startswith("loaded:")]
    assert "pending" in r.stdout and after_status == "loaded: ", r.stdout
    assert "dashboard" in r.stdout and after_help == "loaded: review review.cli", r.stdout


# Stands in for a host where a module was never installed: looking it up or importing it fails as
# for an absent one (a finder ahead of the others; sitecustomize runs at every start).
ABSENT = """import sys


class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)


sys.meta_path.insert(0, Absent())
"""


def test_without_the_review_extra_the_dashboard_says_which_to_install(tmp_path: Path) -> None:
    """With a module of the extra absent (each in turn, as on a host where the extra was never
    installed): `statesvc dashboard` says in one line which extra to install and exits 2, whatever
    its arguments; the help still lists it, and the daemon's own commands work as before."""
    ds = make_dataset(tmp_path, ["uno", "dos"])
    for module in ("fastapi", "uvicorn", "sse_starlette"):  # what the extra installs
        shim = tmp_path / f"without-{module}"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(ABSENT.format(module=module))
        env = {"PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}
        for argv in (["dashboard", "--dataset", str(ds)], ["dashboard", "--help"], ["dashboard"]):
            r = cli(*argv, env=env)
            assert r.returncode == 2 and r.stdout == "", (module, argv, r.returncode, r.stdout)
            assert len(r.stderr.splitlines()) == 1, r.stderr
            assert r.stderr.startswith("statesvc: error: `statesvc dashboard` needs the extra [review] "
                                       f"installed (No module named '{module}')"), r.stderr
            assert r.stderr.rstrip().endswith("pip install 'tts-dataset-pipeline[review]'"), r.stderr
    r = cli("--help", env=env)
    assert r.returncode == 0 and "dashboard" in r.stdout and "needs the extra" in r.stdout, r.stdout
    r = cli("status", "--dataset", str(ds), env=env)
    assert r.returncode == 0 and "pending" in r.stdout, r.stderr
    r = cli("dashboard", "--help")  # the same command with the extra installed
    assert r.returncode == 0 and "Serve the review dashboard" in r.stdout, r.stderr


if __name__ == "__main__":  # a look at the graph: .venv/bin/python -m tests.system.test_imports
    g = graph()
    print("\n".join(upward(g) + private(g)) or "no upward or private import")
    for c in cycles(g):
        print("cycle:", " ".join(c))
