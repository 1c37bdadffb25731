"""Imports run one way (docs/ARCHITECTURE.md): the composition root imports features, features import the
plumbing and the engine, and nothing below imports what stands above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "inference_api"

# Bottom: settings, errors and small utilities that know nothing else of the service.
CORE = {"errors", "settings", "redaction", "torch_threads", "keyed_locks", "maintenance"}
# Next: HTTP plumbing, the engine and models, metrics and the request context. No feature, no root.
PLUMBING = {
    "api",
    "engine",
    "modeling",
    "upstream",
    *(f"observability.{name}" for name in ("metrics", "context", "memory", "http")),
}
# Top: the composition root and the process around it.
ROOT_MODULES = {"app", "services", "server", "cli", "logs", "__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """'core', 'plumbing', 'feature' or 'root' for a module name relative to the package."""
    top = module.split(".")[0]
    if top in CORE or module == "":
        return "core"
    if top in ROOT_MODULES:
        return "root"
    if top in PLUMBING or any(module == name or module.startswith(name + ".") for name in PLUMBING):
        return "plumbing"
    return "feature"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("inference_api"):
            found.add(node.module.removeprefix("inference_api").lstrip("."))
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("inference_api").lstrip(".")
                for a in node.names
                if a.name.startswith("inference_api")
            }
    return found


ALLOWED = {
    "core": {"core"},
    "plumbing": {"core", "plumbing"},
    "feature": {"core", "plumbing", "feature"},
    "root": {"core", "plumbing", "feature", "root"},
}
MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "inference_api")
def test_imports_run_downwards(path: Path) -> None:
    source = module_name(path)
    upward = sorted(target for target in imports(path) if layer(target) not in ALLOWED[layer(source)])
    assert not upward, f"{source} ({layer(source)}) imports {upward}"


def test_the_layers_are_as_documented() -> None:
    """A rule that names a package that is gone checks nothing: keep the lists in step with the tree."""
    present = {module_name(path) for path in MODULES}
    for name in CORE | PLUMBING | ROOT_MODULES:
        assert any(module == name or module.startswith(name + ".") for module in present), name
    assert {"generation", "documents", "chat", "inference", "openai_api"} <= {m.split(".")[0] for m in present}
    assert layer("chat.serving") == "feature" and layer("observability.api_router") == "feature"
    assert layer("engine.batch") == "plumbing" and layer("services") == "root"
