"""experiments/ depends on the package one way: each experiment imports only `nexusgen` and libraries (not
another experiment), still imports against today's package, and nothing in nexusgen/ or tests/ imports it."""

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.py"))


def _imported(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            names.add(".")  # a relative import
    return names


def test_there_are_experiments_and_none_imports_another():
    assert EXPERIMENTS, "experiments/ holds no scripts"
    siblings = {path.stem for path in EXPERIMENTS}
    for path in EXPERIMENTS:
        assert not _imported(path) & (siblings | {".", "experiments", "scripts"}), path.name


def test_nothing_in_the_package_or_the_tests_imports_an_experiment():
    siblings = {path.stem for path in EXPERIMENTS}
    for path in [*(ROOT / "nexusgen").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        assert not _imported(path) & (siblings | {"experiments"}), path


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_each_experiment_imports_against_the_package(path):
    spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # every name it takes from nexusgen still exists
    assert callable(module.main)
