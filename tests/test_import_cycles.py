"""No import cycles among first_core's modules (GUIDE: "no import cycles").

The graph is built from the source with `ast`: every `import` / `from ... import` of a
first_core module anywhere in a module, at its top or inside a function (a lazy import that
closes a cycle is still a cycle: it only moves the failure to run time). Cycles are found as
the strongly connected components of that graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "first_core"

# Cycles other branches are removing; the lead empties this set once they are merged. Any
# other cycle fails the test, and so does a listed one that no longer exists (stale entry).
KNOWN_CYCLES_BEING_FIXED: set[frozenset[str]] = set()  # none left: keep it that way


def _resolve(node: ast.ImportFrom | ast.Import, modules: set[str]) -> set[str]:
    """The first_core modules one import statement names."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == "first_core" and len(parts) > 1 and parts[1] in modules:
                out.add(parts[1])
        return out
    if node.level == 0:  # absolute: from first_core[.x] import y
        parts = (node.module or "").split(".")
        if parts[0] != "first_core":
            return out
        rest = parts[1:]
    elif node.level == 1:  # relative to the package: from .x import y / from . import y
        rest = node.module.split(".") if node.module else []
    else:
        return out  # beyond the package
    if rest:
        if rest[0] in modules:
            out.add(rest[0])
    else:  # from . import a, b: each name may be a module
        out.update(alias.name for alias in node.names if alias.name in modules)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the first_core modules it imports anywhere in its source."""
    modules = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in sorted(modules):
        tree = ast.parse((package / f"{name}.py").read_text(encoding="utf-8"))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _resolve(node, modules)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert set(cycles(graph)) == {frozenset("abc"), frozenset("ef")}
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .c import x\n")
    (tmp_path / "c.py").write_text("import first_core.a\nfrom first_core import b\n"
                                   "from .missing import y\nimport os\n")
    assert import_graph(tmp_path) == {"a": {"b"}, "b": {"c"}, "c": {"a", "b"}}
    assert cycles(import_graph(tmp_path)) == [frozenset("abc")]


def test_first_core_has_no_import_cycles() -> None:
    graph = import_graph()
    assert {"pipeline", "instruct_pipeline", "stage_base"} <= graph.keys()
    new = sorted(sorted(c) for c in set(cycles(graph)) - KNOWN_CYCLES_BEING_FIXED)
    assert not new, f"import cycles among first_core modules: {new}"


def test_known_cycles_being_fixed_still_exist() -> None:
    """A cycle can only be "being fixed" while it exists: once gone, drop its entry."""
    stale = [sorted(c) for c in KNOWN_CYCLES_BEING_FIXED - set(cycles(import_graph()))]
    assert not stale, f"KNOWN_CYCLES_BEING_FIXED lists cycles that are gone: {stale}"
