"""The import direction of DESIGN.md, enforced: a lower layer never imports a higher one."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nexusgen"

# package -> nexusgen subpackages it must never import
FORBIDDEN = {
    "models": {"flow", "pipelines", "data", "train", "eval", "cli", "serve", "recipes", "worlds", "api", "bench"},
    "flow": {"models", "pipelines", "data", "train", "eval", "cli", "serve", "recipes", "worlds", "api", "bench"},
    "processing": {"models", "flow", "pipelines", "data", "train", "eval", "cli", "serve", "recipes", "api"},
    "worlds": {"models", "flow", "pipelines", "data", "train", "eval", "cli", "serve", "recipes", "api", "bench"},
    "pipelines": {"train", "eval", "cli", "serve", "recipes", "bench"},
    "data": {"pipelines", "train", "eval", "cli", "serve", "recipes", "bench"},
    "train": {"pipelines", "eval", "cli", "serve", "bench"},
    "convert": {"pipelines", "train", "eval", "cli", "serve", "bench"},
    "eval": {"train", "cli", "serve", "bench"},
    "serve": {"train", "eval", "recipes", "worlds", "data", "convert", "bench", "cli"},
}

# third-party packages only nexusgen/serve may import: the web frameworks stay out of the library
SERVE_ONLY = {"fastapi", "uvicorn", "starlette", "gradio", "multipart", "python_multipart"}


def _nexusgen_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n.split(".")[1] for n in names if n.startswith("nexusgen.") and n.count(".") >= 1}


def test_import_direction():
    violations = []
    for package, forbidden in FORBIDDEN.items():
        for path in (PACKAGE / package).rglob("*.py") if (PACKAGE / package).exists() else []:
            bad = _nexusgen_imports(path) & forbidden
            violations += [f"{path.relative_to(PACKAGE.parent)} imports nexusgen.{b}" for b in sorted(bad)]
    assert not violations, "\n".join(violations)


def test_layering_check_catches_a_violation(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("from nexusgen.train.loop import train\nimport nexusgen.pipelines.generate\n")
    assert _nexusgen_imports(bad) == {"train", "pipelines"}


def _third_party_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_serving_package_imports_web_frameworks():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        if "serve" in path.relative_to(PACKAGE).parts[:1]:
            continue
        bad = _third_party_imports(path) & SERVE_ONLY
        violations += [f"{path.relative_to(PACKAGE.parent)} imports {b}" for b in sorted(bad)]
    assert not violations, "\n".join(violations)
    assert {"fastapi", "uvicorn"} <= set().union(*(_third_party_imports(p) for p in (PACKAGE / "serve").rglob("*.py")))
