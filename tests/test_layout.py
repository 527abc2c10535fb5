"""The package layout shows the architecture (issue 28): subpackages by concern, each saying
its job; few modules at the top; no module past about 400 lines without a stated reason; no
module using another module's private (`_name`) helpers.

Read from the source with `ast` (tests/helpers/import_graph.py). The KNOWN_* sets list what
the redesign still has to move; each entry fails the test once it is fixed (stale entry), so
the sets only shrink.
"""

from __future__ import annotations

import ast

from helpers.import_graph import PACKAGE, module_names, resolve_import

MAX_TOP_MODULES = 10
MAX_LINES = 400
REASON = "Longer than 400 lines because"  # what a longer module's docstring says

KNOWN_LONG: set[str] = set()  # none left: keep it that way
KNOWN_PRIVATE_USES: set[tuple[str, str]] = set()  # none left: keep it that way


def private_uses(package=PACKAGE) -> set[tuple[str, str]]:
    """(module, 'other_module._name') for every private name a module takes from another
    first_core module: `from .x import _name` or `x._name` on an imported module `x`."""
    modules = module_names(package)
    found: set[tuple[str, str]] = set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        here, is_pkg = (name.split(".") if name else []), path.name == "__init__.py"
        aliases: dict[str, str] = {}  # local name -> first_core module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = resolve_import(node, here, is_pkg, set(modules))
                for alias in node.names:
                    for target in targets:
                        if target.rsplit(".", 1)[-1] == alias.name or target.endswith(
                                "." + alias.name) or target == alias.name:
                            aliases[alias.asname or alias.name] = target
                        elif _private(alias.name) and target != name:
                            found.add((name, f"{target}.{alias.name}"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)
                    and aliases[node.value.id] != name):
                found.add((name, f"{aliases[node.value.id]}.{node.attr}"))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_private_use_finder_finds_both_forms(tmp_path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "__init__.py").write_text("")
    (tmp_path / "p" / "a.py").write_text("def _h(): pass\n")
    (tmp_path / "p" / "b.py").write_text("from .a import _h\nfrom . import a\na._h()\n")
    (tmp_path / "c.py").write_text("def f():\n    from .p.a import _h, x\n")
    assert private_uses(tmp_path) == {("p.b", "p.a._h"), ("c", "p.a._h")}


def test_no_module_uses_another_modules_private_names() -> None:
    uses = private_uses()
    new = sorted(uses - KNOWN_PRIVATE_USES)
    assert not new, f"move what two modules share to where both can own it: {new}"
    stale = sorted(KNOWN_PRIVATE_USES - uses)
    assert not stale, f"KNOWN_PRIVATE_USES lists uses that are gone: {stale}"


def test_few_modules_at_the_top_and_every_subpackage_says_its_job() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 20, f"{init.relative_to(PACKAGE)}: say the package's job"


def test_no_long_module_without_a_reason() -> None:
    long = set()
    for name, path in module_names().items():
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_LINES and REASON not in doc:
            long.add(name)
    new = sorted(long - KNOWN_LONG)
    assert not new, f"over {MAX_LINES} lines with no '{REASON} ...' in the docstring: {new}"
    stale = sorted(KNOWN_LONG - long)
    assert not stale, f"KNOWN_LONG lists modules that are short now: {stale}"


def test_every_import_of_a_first_core_name_resolves() -> None:
    """Every `from first_core... import name` and relative import in first_core, the pages,
    benchmarks, scripts and tests names something that exists, lazy imports inside
    functions included (a moved module breaks only the path that runs them). Scripts that
    run at an older commit (tests/fixtures) are left out."""
    import importlib
    import importlib.util

    root = PACKAGE.parent

    def exists(module: str, name: str) -> bool:
        mod = importlib.import_module(module)
        return hasattr(mod, name) or (hasattr(mod, "__path__") and importlib.util.find_spec(
            f"{module}.{name}") is not None)

    missing = []
    files = [*PACKAGE.rglob("*.py"), root / "app.py", *(root / "pages").glob("*.py"),
             *(root / "benchmarks").glob("*.py"), *(root / "scripts").glob("*.py"),
             *(p for p in (root / "tests").rglob("*.py") if "fixtures" not in p.parts)]
    for path in files:
        here = path.relative_to(root).with_suffix("").parts
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:  # relative: only inside first_core
                base = list(here[:-1])[:len(here) - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "first_core":
                module = node.module
            else:
                continue
            try:
                missing += [f"{path.relative_to(root)}:{node.lineno} {module}.{a.name}"
                            for a in node.names if not exists(module, a.name)]
            except ImportError as exc:
                missing.append(f"{path.relative_to(root)}:{node.lineno} {module}: {exc}")
    assert not missing, missing
