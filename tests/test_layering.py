"""The import direction, enforced: every package and top-level module of `nexusgen/` has a row saying which
other ones it may import, and nothing imports in a circle.

Imports are read from the source (`ast`), wherever they stand: at the top of a module or inside a function,
absolute or relative, and dynamic ones spelled as a string (`importlib.import_module("nexusgen.x")`, an
f-string starting `"nexusgen.x."`, or a `"nexusgen.x:attr"` target). A new package or top-level module, or
a new edge between two of them, fails `test_every_package_and_module_has_a_row` or
`test_imports_follow_the_allow_list` until it is placed here on purpose.

The direction (arrows point at what may be imported):

    commands -> {api, serve, eval, bench, recipes, train, data, convert, ...}   the edge: argparse stops there
    serve -> api -> pipelines -> loading -> config -> models      inference: no worlds, eval, train, recipes
    recipes -> train -> data -> loading                            training
    eval, bench -> api, recipes, worlds, batch, ...               benchmarks sit under the commands
    batch -> pipelines, processing, files, validation             batch work over files of items
    worlds, processing, flow, models, files, tasks, openmp,       the bottom: they import no higher layer
    validation
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nexusgen"

# unit (a package or a top-level module of nexusgen; "nexusgen" is the package's own __init__) -> the other
# units it may import. Imports within a unit are always allowed.
ALLOWED: dict[str, set[str]] = {
    # -- the bottom: plain data, no nexusgen imports (or only other bottom units) -------------------------
    "tasks": set(),
    "validation": set(),
    "files": set(),
    "openmp": set(),
    "flow": set(),
    "models": {"validation"},
    "processing": {"tasks", "validation"},
    "worlds": {"processing", "files", "tasks"},
    # -- inference: never worlds, eval, train or recipes --------------------------------------------------
    "config": {"models", "processing", "validation"},
    "loading": {"config", "models", "processing", "files", "validation"},
    "pipelines": {"config", "models", "flow", "processing", "loading", "tasks", "validation"},
    "api": {"pipelines", "loading", "config", "processing", "validation"},
    "serve": {"pipelines", "api", "loading", "config", "processing", "validation"},
    # -- data and training --------------------------------------------------------------------------------
    "data": {"processing", "loading", "files", "tasks"},
    "train": {"data", "models", "flow", "processing", "loading", "config", "files", "tasks"},
    "recipes": {"train", "data", "worlds", "tasks"},
    "convert": {"loading", "config", "models", "processing", "files"},
    # -- batch work: files of items -> the pipelines (the exports of eval run its loop) -------------------
    "batch": {"pipelines", "processing", "files", "validation"},
    # -- benchmarks (under the commands) ------------------------------------------------------------------
    "eval": {"api", "worlds", "processing", "files", "tasks", "batch"},
    "bench": {"api", "pipelines", "loading", "config", "models", "processing", "recipes", "train", "serve", "openmp"},
    # -- the edge -----------------------------------------------------------------------------------------
    "commands": {"api", "serve", "eval", "batch", "bench", "recipes", "train", "data", "convert", "pipelines",
                 "loading", "models", "processing", "worlds", "files", "tasks", "config", "validation"},
    "cli": {"commands", "openmp", "validation"},  # validation: plain constants (defaults), no torch
    "__main__": {"cli"},
    "nexusgen": {"api", "config", "pipelines", "models"},  # the lazy public names of nexusgen/__init__.py
}
INFERENCE = ("pipelines", "api", "models", "loading")
NOT_FOR_INFERENCE = {"worlds", "eval", "train", "recipes"}
PENDING: set[str] = set()
"""Rows for units that another engineer is writing; a row for anything else that does not exist is stale."""
SERVE_ONLY = {"fastapi", "uvicorn", "starlette", "gradio", "multipart", "python_multipart"}
"""Third-party packages only nexusgen/serve may import: the web frameworks stay out of the library."""

MODULE_STRING = re.compile(r"nexusgen(\.\w+)+(:\w+)?")


# ----------------------------------------------------------------------------------------------------
# Reading the tree
# ----------------------------------------------------------------------------------------------------
def module_name(path: Path, root: Path) -> str:
    """nexusgen/data/prepare.py -> "nexusgen.data.prepare"; a package's __init__.py -> the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """"nexusgen.data.prepare" -> "data"; "nexusgen.files" -> "files"; "nexusgen" -> "nexusgen"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def units(root: Path) -> set[str]:
    """Every top-level module and package (a folder holding Python files) of the package at `root`."""
    found = {"nexusgen"}
    for entry in root.iterdir():
        if entry.suffix == ".py" and entry.name != "__init__.py":
            found.add(entry.stem)
        elif entry.is_dir() and any(entry.rglob("*.py")):
            found.add(entry.name)
    return found


def imported_modules(path: Path, root: Path) -> set[str]:
    """The nexusgen modules `path` imports (anywhere in the file; see the module docstring)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.update(_submodule_or_origin(origin, alias.name, root) for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.fullmatch(node.value):
            found.add(node.value.partition(":")[0])  # "nexusgen.x.y" or "nexusgen.x.y:attr"
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            prefix = str(node.values[0].value)  # f"nexusgen.x.{name}"
            if prefix.startswith("nexusgen.") and prefix.endswith("."):
                found.add(prefix.rstrip("."))
    found = {module for module in found if module.startswith("nexusgen.")}
    return {module for module in found if unit_of(module) in units(root)}  # not a file name like nexusgen.json


def _submodule_or_origin(origin: str, name: str, root: Path) -> str:
    """`from origin import name`: the submodule origin.name when it is one, else origin."""
    candidate = root.parent.joinpath(*f"{origin}.{name}".split("."))
    return f"{origin}.{name}" if candidate.with_suffix(".py").is_file() or candidate.is_dir() else origin


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the nexusgen modules it imports (itself excluded)."""
    graph = {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        graph[module] = imported_modules(path, root) - {module}
    return graph


# ----------------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------------
def unplaced_units(root: Path) -> list[str]:
    """Units of the tree without a row, and rows (other than PENDING) for units that do not exist."""
    present = units(root)
    return sorted(f"no row for nexusgen unit {u!r}" for u in present - set(ALLOWED)) + sorted(
        f"row for {u!r}, which does not exist" for u in set(ALLOWED) - present - PENDING)


def layering_violations(root: Path) -> list[str]:
    """Every import from one unit into another that its row does not allow."""
    violations = []
    for module, imported in import_graph(root).items():
        unit = unit_of(module)
        for target in sorted(imported):
            other = unit_of(target)
            if other != unit and other not in ALLOWED.get(unit, set()):
                violations.append(f"{module} imports {target}: {unit} may not import {other}")
    return violations


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


# ----------------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------------
def test_every_package_and_module_has_a_row():
    assert not unplaced_units(PACKAGE), "\n".join(unplaced_units(PACKAGE))


def test_imports_follow_the_allow_list():
    violations = layering_violations(PACKAGE)
    assert not violations, "\n".join(violations)


def test_no_module_imports_in_a_circle():
    cycles = import_cycles(import_graph(PACKAGE))
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_the_allow_list_itself_has_no_circle_and_keeps_inference_clean():
    graph = {unit: set(allowed) for unit, allowed in ALLOWED.items()}
    assert not import_cycles(graph)
    for unit in INFERENCE:
        reachable, todo = set(), [unit]
        while todo:
            for target in ALLOWED[todo.pop()] - reachable:
                reachable.add(target)
                todo.append(target)
        assert not reachable & NOT_FOR_INFERENCE, (unit, reachable & NOT_FOR_INFERENCE)


def test_argparse_stops_at_the_commands():
    outside = [str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
               if "argparse" in imported_names(path) and path.parent.name != "commands" and path.name != "cli.py"]
    assert not outside, outside


def test_only_the_serving_package_imports_web_frameworks():
    outside = [f"{path.relative_to(PACKAGE.parent)} imports {name}" for path in PACKAGE.rglob("*.py")
               if path.relative_to(PACKAGE).parts[0] != "serve" for name in sorted(imported_names(path) & SERVE_ONLY)]
    assert not outside, outside
    assert {"fastapi", "uvicorn"} <= set().union(*(imported_names(p) for p in (PACKAGE / "serve").rglob("*.py")))


def imported_names(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (any package, not only nexusgen)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


# ----------------------------------------------------------------------------------------------------
# The checks can fail
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def bad_tree(tmp_path):
    """A copy of the package's shape with one of each mistake the checks must catch."""
    root = tmp_path / "nexusgen"
    for unit in ALLOWED.keys() - PENDING - {"nexusgen", "__main__", "cli", "config", "api", "files", "tasks",
                                            "openmp", "validation"}:
        (root / unit).mkdir(parents=True)
        (root / unit / "__init__.py").write_text("")
    for module in ("__main__", "cli", "config", "api", "files", "tasks", "openmp", "validation"):
        (root / f"{module}.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "eval" / "harness.py").write_text("")
    (root / "models" / "bad.py").write_text(
        "import torch\n\n\ndef late():\n    from nexusgen.train.loop import train  # inside a function\n"
        "    from ..eval import harness  # relative\n"
        "    return importlib.import_module('nexusgen.worlds.shapes')  # dynamic\n")
    (root / "pipelines" / "dyn.py").write_text("def f(name):\n    return import_module(f'nexusgen.recipes.{name}')\n")
    (root / "data" / "a.py").write_text("from nexusgen.data import b\n")
    (root / "data" / "b.py").write_text("from . import a\n")
    (root / "newpkg").mkdir()
    (root / "newpkg" / "__init__.py").write_text("")
    (root / "newmodule.py").write_text("")
    return root


def test_the_checks_catch_a_violating_file_an_unplaced_unit_and_a_cycle(bad_tree):
    violations = layering_violations(bad_tree)
    assert "nexusgen.models.bad imports nexusgen.train.loop: models may not import train" in violations
    assert "nexusgen.models.bad imports nexusgen.eval.harness: models may not import eval" in violations
    assert "nexusgen.models.bad imports nexusgen.worlds.shapes: models may not import worlds" in violations
    assert "nexusgen.pipelines.dyn imports nexusgen.recipes: pipelines may not import recipes" in violations
    assert len(violations) == 4
    unplaced = unplaced_units(bad_tree)
    assert "no row for nexusgen unit 'newpkg'" in unplaced and "no row for nexusgen unit 'newmodule'" in unplaced
    assert import_cycles(import_graph(bad_tree)) == [["nexusgen.data.a", "nexusgen.data.b"]]
    (bad_tree / "convert" / "__init__.py").unlink()
    (bad_tree / "convert").rmdir()
    assert "row for 'convert', which does not exist" in unplaced_units(bad_tree)


def test_the_allow_list_check_catches_a_circle_and_an_inference_leak(monkeypatch):
    monkeypatch.setitem(ALLOWED, "models", {"config"})
    assert import_cycles({u: set(a) for u, a in ALLOWED.items()})
    monkeypatch.setitem(ALLOWED, "models", set())
    monkeypatch.setitem(ALLOWED, "loading", ALLOWED["loading"] | {"recipes"})
    with pytest.raises(AssertionError):
        test_the_allow_list_itself_has_no_circle_and_keeps_inference_clean()
