"""Does every module the GPU check imports exist on the lent GPU machine?

``python scripts/gpu/imports.py [options] PATH...`` reads the given Python files (folders:
their ``*.py``), follows the project's own imports through the repository (``ecom2f``,
``tests``, ``benchmarks``: every first-party package found at the repository root), and
sorts each third-party top-level module it meets into: the standard library, the GPU
machine's preinstalled packages (``scripts/gpu/device_packages.txt``), the carried wheel
bundle (``scripts/gpu_bundle.txt``), or missing. It exits 1, naming file and line, when

- a module imported at import time (module level, not inside ``try: ... except ImportError``)
  is in none of them: collection or start-up would fail on the machine;
- a module imported inside a function is in none of them and not listed in
  ``scripts/gpu/lazy_only.txt`` (modules that only code paths the GPU check never takes import);
- a first-party module it imports does not exist (a moved or renamed module);
- a bundle requirement's own dependencies (from this environment's installed metadata) are
  neither in the bundle nor preinstalled, or a bundle pin differs from ``constraints.txt``.

``--write-allowed FILE`` also writes every importable top-level name (one a line) for
``block_imports.py``, which makes the others unimportable during a real collection;
``--bundle-modules`` only prints the bundle's top-level modules.
Pytest loads ``conftest.py`` files and package ``__init__.py`` files: both are followed too.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Removed from the standard library by Python 3.12, the GPU machine's Python.
REMOVED_IN_312 = {"distutils", "imp", "asynchat", "asyncore", "smtpd"}
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


# ----------------------------------------------------------------------------- package lists
@dataclasses.dataclass(frozen=True)
class Package:
    name: str  # normalised distribution name
    version: str | None
    imports: tuple[str, ...]
    source: str  # "file:line"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:==\s*([^\s;#]+))?[^#]*(?:#(.*))?$")


def read_packages(path: Path) -> list[Package]:
    """``name[==version]  # import: a, b`` lines; blank lines and ``#`` comments skipped."""
    packages = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        match = _LINE.match(raw)
        if match is None:
            raise SystemExit(f"{path}:{number}: cannot read {raw!r}; expected 'name[==version]  # import: a, b'")
        name, version, comment = match.groups()
        imports = (name.replace("-", "_").replace(".", "_"),)
        if comment and "import:" in comment:
            imports = tuple(x.strip() for x in comment.split("import:", 1)[1].split(",") if x.strip())
        packages.append(Package(normalise(name), version, imports, f"{path.name}:{number}"))
    return packages


def read_lazy_only(path: Path) -> dict[str, str]:
    """``module  # why the GPU check never calls the code that imports it`` lines."""
    entries = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        module, _, why = raw.partition("#")
        if not why.strip():
            raise SystemExit(f"{path}:{number}: say why the GPU check never imports {module.strip()!r} (after '#')")
        entries[module.strip()] = why.strip()
    return entries


def stdlib_names() -> set[str]:
    return (set(sys.stdlib_module_names) - REMOVED_IN_312) | {"__future__"}


# ----------------------------------------------------------------------------- parsing
@dataclasses.dataclass(frozen=True)
class ImportSite:
    module: str  # absolute dotted module
    names: tuple[str, ...]  # `from module import names`; () for `import module`
    line: int
    eager: bool  # runs when the file is imported
    guarded: bool  # inside try/except ImportError


class _Collector(ast.NodeVisitor):
    def __init__(self, package: str):
        self.package = package  # the file's package, for relative imports
        self.sites: list[ImportSite] = []
        self._functions = 0
        self._guards = 0

    def _absolute(self, module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        parts = self.package.split(".") if self.package else []
        base = parts[: len(parts) - (level - 1)] if level > 1 else parts
        return ".".join([*base, module] if module else base)

    def _add(self, module, names, node):
        self.sites.append(ImportSite(module, tuple(names), node.lineno, self._functions == 0, self._guards > 0))

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, (), node)

    def visit_ImportFrom(self, node):
        self._add(self._absolute(node.module, node.level), [a.name for a in node.names], node)

    def _function(self, node):
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Try(self, node):
        caught = set()
        for handler in node.handlers:
            kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            caught |= {k.id if isinstance(k, ast.Name) else "BaseException" if k is None else "" for k in kinds}
        guarded = bool(caught & IMPORT_ERRORS)
        self._guards += guarded
        for statement in node.body:
            self.visit(statement)
        self._guards -= guarded
        for rest in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(rest)

    visit_TryStar = visit_Try

    def visit_If(self, node):
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for statement in node.orelse:
                self.visit(statement)
            return
        self.generic_visit(node)


# ----------------------------------------------------------------------------- first-party modules
def first_party_names(repo: Path) -> set[str]:
    """Top-level folders of the repository that hold Python modules (packages or namespace packages)."""
    return {
        p.name for p in repo.iterdir()
        if p.is_dir() and p.name.isidentifier() and not p.name.startswith(".")
        and (any(p.glob("*.py")) or any(p.glob("*/__init__.py")))
    }


def module_file(repo: Path, module: str) -> Path | None:
    base = repo.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(repo: Path, path: Path) -> str:
    """The dotted name a file of the repository is imported as (folders may be namespace packages)."""
    parts = list(path.resolve().relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def conftests(repo: Path, path: Path) -> list[Path]:
    """The conftest.py files pytest loads for a test file: its folder's and every parent's up to the root."""
    found = []
    folder = path.resolve().parent
    while folder == repo or repo in folder.parents:
        candidate = folder / "conftest.py"
        if candidate.is_file() and candidate != path.resolve():
            found.append(candidate)
        if folder == repo:
            break
        folder = folder.parent
    return found


# ----------------------------------------------------------------------------- the walk
@dataclasses.dataclass
class Use:
    where: list[str] = dataclasses.field(default_factory=list)
    eager: bool = False


@dataclasses.dataclass
class Walk:
    third_party: dict[str, Use]
    missing_first_party: list[str]
    files: int


def walk(repo: Path, roots: list[Path], built: set[str]) -> Walk:
    first = first_party_names(repo)
    third: dict[str, Use] = {}
    missing: list[str] = []
    queue: deque[tuple[Path, bool]] = deque()
    state: dict[Path, bool] = {}  # file -> reached eagerly

    def push(path: Path, eager: bool) -> None:
        path = path.resolve()
        if state.get(path) is True or (path in state and not eager):
            return
        state[path] = eager
        queue.append((path, eager))

    def push_module(module: str, eager: bool, where: str) -> None:
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c imports a, a.b, a.b.c
            name = ".".join(parts[:i])
            found = module_file(repo, name)
            if found is not None:
                push(found, eager)
            elif repo.joinpath(*parts[:i]).is_dir():
                continue  # a namespace package: a folder without __init__.py
            elif name not in built and i == len(parts):
                missing.append(f"{where}: imports {module}, which does not exist in this repository")

    for root in roots:
        push(root, True)
        for conftest in conftests(repo, root):
            push(conftest, True)
        name = module_name(repo, root)
        if "." in name and name.split(".")[0] in first:  # a module of a package: its packages load first
            push_module(name.rsplit(".", 1)[0], True, str(root))
    while queue:
        path, eager = queue.popleft()
        if state[path] != eager:  # superseded by an eager visit
            continue
        name = module_name(repo, path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        collector = _Collector(package)
        collector.visit(ast.parse(path.read_text(), str(path)))
        for site in collector.sites:
            where = f"{path.relative_to(repo)}:{site.line}"
            top = site.module.split(".")[0]
            site_eager = eager and site.eager
            if top in first:
                push_module(site.module, site_eager and not site.guarded, where)
                for sub in site.names:  # `from pkg import submodule`
                    if module_file(repo, f"{site.module}.{sub}") is not None:
                        push_module(f"{site.module}.{sub}", site_eager and not site.guarded, where)
                continue
            if site.guarded or not top:
                continue
            use = third.setdefault(top, Use())
            use.where.append(where + ("" if site_eager else " (inside a function)"))
            use.eager |= site_eager
    return Walk(third, sorted(set(missing)), len(state))


# ----------------------------------------------------------------------------- checks
def provider_index(packages: list[Package]) -> dict[str, Package]:
    return {module: p for p in packages for module in p.imports}


def check_modules(result: Walk, stdlib, device, bundle, lazy_only) -> tuple[list[str], list[str]]:
    """(errors, report lines) for the third-party modules found."""
    errors, lines = list(result.missing_first_party), []
    device_modules, bundle_modules = provider_index(device), provider_index(bundle)
    for module in sorted(result.third_party):
        use = result.third_party[module]
        first_use = use.where[0] + (f" (+{len(use.where) - 1} more)" if len(use.where) > 1 else "")
        if module in stdlib:
            continue
        if module in bundle_modules:
            lines.append(f"  {module:<20} bundle ({bundle_modules[module].name})   {first_use}")
        elif module in device_modules:
            lines.append(f"  {module:<20} preinstalled ({device_modules[module].name})   {first_use}")
        elif not use.eager and module in lazy_only:
            lines.append(f"  {module:<20} never imported by the check: {lazy_only[module]}   {first_use}")
        else:
            when = "at import time" if use.eager else "inside a function"
            errors.append(
                f"{module}: imported {when} at {', '.join(use.where[:3])}, but it is neither in the standard "
                "library, nor preinstalled on the GPU machine (scripts/gpu/device_packages.txt), nor in "
                "scripts/gpu_bundle.txt: add its pinned version to the bundle list"
                + ("" if use.eager else " or, if the check never calls that code, to scripts/gpu/lazy_only.txt")
            )
    return errors, lines


def _constraints(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[normalise(name.strip())] = version.strip()
    return pins


def check_bundle(bundle: list[Package], device: list[Package], constraints: Path | None) -> tuple[list[str], list[str]]:
    """Pins against constraints.txt; each requirement's dependencies (installed metadata) resolvable."""
    import importlib.metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    errors, notes = [], []
    pins = _constraints(constraints) if constraints else {}
    for package in bundle:
        if package.version is None:
            errors.append(f"{package.source}: {package.name} has no pinned version (name==version)")
        elif package.name in pins and pins[package.name] != package.version:
            errors.append(f"{package.source}: {package.name}=={package.version} but constraints.txt pins "
                          f"{pins[package.name]}: use the project's pin")
    available = {p.name: p for p in device} | {p.name: p for p in bundle}  # the bundle shadows the device
    environment = dict(default_environment(), python_version="3.12", python_full_version="3.12.3",
                       sys_platform="linux", platform_machine="x86_64", implementation_name="cpython", extra="")
    for package in bundle:
        try:
            requirements = importlib.metadata.requires(package.name) or []
        except importlib.metadata.PackageNotFoundError:
            notes.append(f"{package.name}: not installed here, its dependencies were not checked")
            continue
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            provider = available.get(normalise(requirement.name))
            if provider is None:
                errors.append(f"{package.source}: {package.name} needs {text!r}, which is neither in the bundle "
                              "nor preinstalled on the GPU machine: add it to scripts/gpu_bundle.txt")
            elif provider.version and requirement.specifier and provider.version not in requirement.specifier:
                errors.append(f"{package.source}: {package.name} needs {text!r} but {provider.source} gives "
                              f"{provider.version}")
    return errors, notes


def python_files(paths: list[str]) -> list[Path]:
    files = []
    for raw in paths:
        path = Path(raw)
        if not path.is_absolute():
            path = Path.cwd() / path
        if path.is_dir():
            files.extend(sorted(path.rglob("*.py")))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"imports.py: {raw} does not exist")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="Python files or folders the GPU check runs or imports")
    parser.add_argument("--bundle", default=str(REPO / "scripts" / "gpu_bundle.txt"))
    parser.add_argument("--device", default=str(REPO / "scripts" / "gpu" / "device_packages.txt"))
    parser.add_argument("--lazy-only", default=str(REPO / "scripts" / "gpu" / "lazy_only.txt"))
    parser.add_argument("--constraints", default=str(REPO / "constraints.txt"))
    parser.add_argument("--built", default="ecom2f._C", help="comma-separated modules the check builds (no .py)")
    parser.add_argument("--write-allowed", metavar="FILE", help="write the importable top-level names here")
    parser.add_argument("--quiet", action="store_true", help="print only problems")
    parser.add_argument("--bundle-modules", action="store_true",
                        help="only print the bundle's top-level modules, one a line")
    args = parser.parse_args(argv)
    if args.bundle_modules:
        print("\n".join(sorted(provider_index(read_packages(Path(args.bundle))))))
        return 0
    if not args.paths:
        parser.error("give the Python files or folders to follow")

    stdlib = stdlib_names()
    device, bundle = read_packages(Path(args.device)), read_packages(Path(args.bundle))
    lazy_only = read_lazy_only(Path(args.lazy_only))
    result = walk(REPO, python_files(args.paths), set(filter(None, args.built.split(","))))
    errors, lines = check_modules(result, stdlib, device, bundle, lazy_only)
    constraints = Path(args.constraints) if args.constraints and Path(args.constraints).exists() else None
    bundle_errors, notes = check_bundle(bundle, device, constraints)
    errors += bundle_errors
    if args.write_allowed:
        allowed = stdlib | first_party_names(REPO) | set(provider_index(device)) | set(provider_index(bundle))
        Path(args.write_allowed).write_text("\n".join(sorted(allowed)) + "\n")
    if not args.quiet:
        print(f"{result.files} files read; third-party modules and where they come from on the GPU machine:")
        print("\n".join(lines))
        print("\n".join(f"note: {n}" for n in notes))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        print(f"imports.py: {len(errors)} problem(s): the GPU check would fail on the GPU machine", file=sys.stderr)
        return 1
    print("imports.py: every import of the GPU check resolves on the GPU machine")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
