"""The shape of the package: imports point downward (no cycle), the core knows nothing of Ray,
DeepSpeed or boto3, and no library function is longer than a screen."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "ecom2f"
CORE = ("ecom2f.modeling", "ecom2f.ops", "ecom2f.data", "ecom2f.evaluation")
FORBIDDEN_IN_CORE = ("ray", "deepspeed", "boto3", "botocore")
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(module: str) -> set[str]:
    """Every module an import statement of ``module`` names, function-level imports included."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:  # `from pkg import submodule` names the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def _graph() -> dict[str, set[str]]:
    return {module: {name for name in _imports(module) if name in MODULES and name != module} for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
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
                components.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycle_in_ecom2f():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", CORE)
def test_the_core_imports_no_ray_deepspeed_or_boto3(package):
    offenders = {
        module: sorted(name for name in _imports(module) if name.split(".")[0] in FORBIDDEN_IN_CORE)
        for module in MODULES
        if module == package or module.startswith(package + ".")
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_importing_the_core_loads_none_of_them():
    code = (
        "import sys, ecom2f.modeling, ecom2f.ops, ecom2f.data, ecom2f.evaluation; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_IN_CORE!r}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_no_library_function_is_longer_than_a_screen():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


# Who may import the heavy frameworks (docs/architecture.md): anything else is a layering slip.
ALLOWED_IMPORTERS = {
    "ray": ("ecom2f.steps", "ecom2f.submit", "ecom2f.cli.submit"),
    "deepspeed": ("ecom2f.steps.parent", "ecom2f.engine"),
    "boto3": ("ecom2f.storage.s3",),
    "botocore": ("ecom2f.storage.s3",),
}


@pytest.mark.parametrize("framework", sorted(ALLOWED_IMPORTERS))
def test_only_the_documented_modules_import_each_framework(framework):
    allowed = ALLOWED_IMPORTERS[framework]
    importers = sorted(module for module in MODULES if any(name.split(".")[0] == framework for name in _imports(module)))
    assert [m for m in importers if not any(m == a or m.startswith(a + ".") for a in allowed)] == []
