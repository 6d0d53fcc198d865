"""The package's layering: no import cycle among its modules, and nothing outside the command line
(``netspace_fast.cli``) imports the command line.

The import graph is read from the source (``ast``), not by importing: every ``import`` and
``from ... import`` statement counts, at module level or inside a function, relative imports
resolved. Edges go to concrete modules: ``from . import x`` and ``from .pkg import x`` are an edge to
the submodule ``x`` when ``x`` is a module, and to the package's ``__init__`` only when ``x`` is a
name defined there (a compiled submodule such as ``_C`` is neither: no edge); ``import a.b.c`` is an
edge to ``a.b.c``. A package ``__init__`` that re-exports its submodules is then no cycle with a
submodule that imports a sibling.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "netspace_fast"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _target(name: str, mods: dict[str, Path]) -> str | None:
    """The deepest module of the package that ``name`` (dotted) names or lies in; None outside it."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in mods:
            return ".".join(parts)
        parts.pop()
    return None


def _bound_names(path: Path) -> set[str]:
    """The names a module binds at its top level (also inside top-level ``if`` / ``try`` / ``with``)."""
    names: set[str] = set()

    def visit(body) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
            else:  # if / try / with: their blocks run at import time too
                for block in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, block, []))

    visit(ast.parse(path.read_text(), str(path)).body)
    return names


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (see the module doc)."""
    mods = modules(root, package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    bound_cache: dict[str, set[str]] = {}

    def bound(package_name: str) -> set[str]:
        if package_name not in bound_cache:
            bound_cache[package_name] = _bound_names(mods[package_name])
        return bound_cache[package_name]

    for mod, path in mods.items():
        here = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package of `mod`, level - 1 packages up
                    up = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = []
                for a in node.names:
                    if f"{base}.{a.name}" in mods:  # a submodule
                        names.append(f"{base}.{a.name}")
                    elif base not in mods or mods[base].name != "__init__.py" or a.name in bound(base):
                        names.append(base)  # a name of the module, or of the package's __init__
                    # else: a submodule that is not Python source (the compiled extension): no edge
            else:
                continue
            for name in names:
                t = _target(name, mods)
                if t is not None and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def cli_importers(graph: dict[str, set[str]], package: str = PACKAGE) -> dict[str, list[str]]:
    """Modules outside ``<package>.cli`` that import it or one of its modules -> those modules."""
    cli = f"{package}.cli"

    def in_cli(m: str) -> bool:
        return m == cli or m.startswith(cli + ".")

    return {m: sorted(t for t in ts if in_cli(t)) for m, ts in sorted(graph.items())
            if not in_cli(m) and any(in_cli(t) for t in ts)}


def _explain(graph: dict[str, set[str]], comp: list[str]) -> str:
    edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
    return "cycle among " + ", ".join(comp) + ":\n    " + "\n    ".join(edges)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_graph_reads_every_kind_of_import(tmp_path):
    """The graph on a made-up package: relative and absolute imports, at module level and inside a
    function; ``from . import submodule`` and ``from .package import name``; a re-exporting
    ``__init__`` is no cycle with a submodule importing a sibling; a compiled submodule is no edge."""
    _write(tmp_path / "p", {
        "__init__.py": "from . import a\nfrom .sub import thing\n",
        "a.py": "import os\nfrom . import _C\nfrom .sub import helper\n\ndef f():\n    from .top import g\n",
        "top.py": "import p.sub.deep as d\nfrom p import a\nfrom .sub import more\n",
        "sub/__init__.py": "from .helper import thing\ntry:\n    from .deep import x as more\nexcept ImportError:\n"
                           "    more = None\n",
        "sub/helper.py": "from . import deep\nfrom ..sub import deep as again\n",
        "sub/deep.py": "import math\n",
    })
    g = import_graph(tmp_path / "p", "p")
    assert g == {"p": {"p.a", "p.sub"}, "p.a": {"p.sub.helper", "p.top"}, "p.top": {"p.sub.deep", "p.a", "p.sub"},
                 "p.sub": {"p.sub.helper", "p.sub.deep"}, "p.sub.helper": {"p.sub.deep"}, "p.sub.deep": set()}
    assert cycles(g) == [["p.a", "p.top"]]


def test_no_import_cycle():
    g = import_graph()
    found = cycles(g)
    assert not found, "\n".join(_explain(g, c) for c in found)


def test_only_the_cli_imports_the_cli():
    """The command line is the top floor: the library never imports it."""
    assert cli_importers(import_graph()) == {}


def test_checks_find_a_cycle_and_a_cli_import():
    """The two checks on a made-up graph: a cycle of three, a library module importing the CLI."""
    g = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a", "p.d"}, "p.d": set(), "p.cli": {"p.d"},
         "p.cli.x": {"p.cli"}, "p.e": {"p.cli.x"}}
    assert cycles(g) == [["p.a", "p.b", "p.c"]]
    assert cli_importers(g, "p") == {"p.e": ["p.cli.x"]}
