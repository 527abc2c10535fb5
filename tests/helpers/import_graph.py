"""The import graph of first_core, read from its source with `ast` (tests only).

Every `import` / `from ... import` of a first_core module anywhere in a module, at its top
or inside a function (a lazy import that closes a cycle is still a cycle: it only moves the
failure to run time). Modules are named by their dotted path under the package
(`pipeline.runner`).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "first_core"


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name under it (`pipeline.runner`; a
    package's `__init__` by the package's name, `pipeline`)."""
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def resolve_import(node: ast.ImportFrom | ast.Import, here: list[str], is_package: bool,
             modules: set[str]) -> set[str]:
    """The first_core modules one import statement in module `here` names."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == "first_core" and ".".join(parts[1:]) in modules:
                out.add(".".join(parts[1:]))
        return out
    if node.level == 0:  # absolute: from first_core[.x] import y
        parts = (node.module or "").split(".")
        if parts[0] != "first_core":
            return out
        base = parts[1:]
    else:  # relative to the package of `here`, one level up per extra dot
        pkg = here if is_package else here[:-1]
        if node.level - 1 > len(pkg):
            return out  # beyond first_core
        base = pkg[:len(pkg) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    target = ".".join(base)
    for alias in node.names:  # from pkg import module: the module is what is used
        sub = f"{target}.{alias.name}" if target else alias.name
        if sub in modules:
            out.add(sub)
        elif target in modules:
            out.add(target)
    return out - {""}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the first_core modules it imports anywhere in its source."""
    modules = module_names(package)
    graph: dict[str, set[str]] = {}
    for name, path in sorted(modules.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        here = name.split(".") if name else []
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= resolve_import(node, here, path.name == "__init__.py", set(modules))
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
