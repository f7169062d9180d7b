"""The architecture's bar, checked by reading the source with `ast` (nothing here imports it).

- every library file (engine/, backends/, benchmarks/, gpo/, perf/) has under 600 lines, and
  bench.py under 450;
- every function or method has under 80 lines, counted from its `def` line to its last line
  (decorators excluded, docstring and nested functions included);
- every file opens with a module docstring saying what it is for;
- imports follow the layers of docs/ARCHITECTURE.md: backends imports no other project package;
  benchmarks only `backends.errors` and `backends.protocol`; engine only backends and
  benchmarks; gpo only engine, backends and benchmarks; perf anything but bench.py; nothing
  imports bench.py. Every import counts: module level, inside functions, under TYPE_CHECKING;
- the project's modules import each other without a cycle (the same imports, function-level
  ones included);
- model calls have one HTTP client: `aiohttp.ClientSession` is constructed once in library code
  for them, in backends/openai_client.py; the few other sites are listed below, each with why.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backends", "benchmarks", "engine", "gpo", "perf")
FRONT_DOOR = "bench"  # bench.py at the root
MAX_FILE_LINES = 600
MAX_FRONT_DOOR_LINES = 450
MAX_FUNCTION_LINES = 80

# What each top-level package may import from the project (itself always included). A name
# allows that module and everything under it.
ALLOWED_IMPORTS: Mapping[str, tuple[str, ...]] = {
    "backends": (),
    "benchmarks": ("backends.errors", "backends.protocol"),
    "engine": ("backends", "benchmarks"),
    "gpo": ("engine", "backends", "benchmarks"),
    "perf": ("gpo", "engine", "backends", "benchmarks"),
    FRONT_DOOR: ("perf", "gpo", "engine", "backends", "benchmarks"),
}

# The one client for model calls, and every other `aiohttp.ClientSession(...)` in library code.
MODEL_CLIENT = "backends/openai_client.py"
OTHER_CLIENT_SESSIONS: Mapping[str, str] = {
    "perf/contenders/cookbook.py": "a bench contender reproducing the OpenAI cookbook's parallel "
    "processor, which opens its own aiohttp session; measured against the engine, not used by it",
    "perf/contenders/lm_eval.py": "a bench contender reproducing lm-evaluation-harness "
    "local-completions, whose own session and connector are part of what is measured",
    "perf/fault_run.py": "the fault matrix's control client: posts fault settings to the "
    "simulated server's control endpoint and reads its /metrics; it makes no model call",
}


def library_files() -> list[Path]:
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    return [*files, ROOT / f"{FRONT_DOOR}.py"]


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@functools.cache
def project_modules() -> frozenset[str]:
    return frozenset(module_name(path) for path in library_files())


FILES = library_files()
IDS = [relative(path) for path in FILES]


# -- imports -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectImport:
    """One import of a project module: where it is written and the module it loads."""

    line: int
    target: str


def _is_project(name: str) -> bool:
    """A name of the project's own code; `tests` too, which library code must never import."""
    return name.split(".")[0] in (*PACKAGES, FRONT_DOOR, "tests")


def _known_prefix(name: str, modules: frozenset[str]) -> str:
    """The longest leading part of a dotted name that is a project module (or the name)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return name


def _from_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` reads from, relative levels resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def project_imports(
    tree: ast.Module, module: str, is_package: bool, modules: frozenset[str]
) -> Iterator[ProjectImport]:
    """Every import of a project module anywhere in `tree` (functions and TYPE_CHECKING too).

    `from pkg import name` loads `pkg.name` when that is a module, else `pkg` (as grimp and
    import-linter read it); `import a.b.c` loads the longest known module of `a.b.c`.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, module, is_package)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            if _is_project(name):
                yield ProjectImport(node.lineno, _known_prefix(name, modules))


@functools.cache
def import_graph() -> dict[str, frozenset[str]]:
    modules = project_modules()
    graph: dict[str, frozenset[str]] = {}
    for path in FILES:
        module = module_name(path)
        found = project_imports(parsed(path), module, path.name == "__init__.py", modules)
        graph[module] = frozenset(i.target for i in found if i.target != module)
    return graph


def find_cycles(graph: Mapping[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def allowed(importer: str, target: str) -> bool:
    layer = importer.split(".")[0]
    if target.split(".")[0] == layer:
        return True
    return any(target == a or target.startswith(f"{a}.") for a in ALLOWED_IMPORTS[layer])


# -- the checker checks what it should -------------------------------------------------------


def test_the_library_is_found() -> None:
    tops = {module_name(path).split(".")[0] for path in FILES}
    assert tops == {*PACKAGES, FRONT_DOOR}
    assert len(FILES) > 100


def test_imports_are_resolved_like_python_does() -> None:
    modules = frozenset({"gpo", "gpo.a", "gpo.sub", "gpo.sub.b", "engine", "engine.x"})
    source = (
        "import os\n"
        "from . import a\n"
        "from .sub import b, NAME\n"
        "def f():\n"
        "    import engine.x.inner\n"
        "    from engine import Thing\n"
    )
    found = list(project_imports(ast.parse(source), "gpo.c", False, modules))
    assert [(i.line, i.target) for i in found] == [
        (2, "gpo.a"),
        (3, "gpo.sub.b"),
        (3, "gpo.sub"),
        (5, "engine.x"),
        (6, "engine"),
    ]


def test_cycles_are_found() -> None:
    graph = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a"}),
        "e": frozenset({"e"}),
    }
    assert find_cycles(graph) == [["a", "b", "c"], ["e"]]
    assert find_cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_layers_are_read_as_designed() -> None:
    assert allowed("engine.cache", "backends.protocol")
    assert allowed("gpo.runner", "gpo.optimizer")
    assert allowed("benchmarks.layout", "backends.errors")
    assert not allowed("benchmarks.layout", "backends.openai_client")
    assert not allowed("backends.llamacpp", "engine.engine")
    assert not allowed("engine.evaluator", "gpo.runner")
    assert not allowed("gpo.report", "perf.bar")
    assert not allowed("perf.bar", "bench")


# -- the bar -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_file_length(path: Path) -> None:
    limit = MAX_FRONT_DOOR_LINES if path.stem == FRONT_DOOR and path.parent == ROOT else None
    limit = limit or MAX_FILE_LINES
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines < limit, f"{relative(path)} has {lines} lines; the limit is under {limit}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_function_length(path: Path) -> None:
    long = [
        f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(parsed(path))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 >= MAX_FUNCTION_LINES
    ]
    assert not long, f"{relative(path)}: functions of {MAX_FUNCTION_LINES}+ lines: {long}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_file_opens_with_a_docstring(path: Path) -> None:
    tree = parsed(path)
    first = tree.body[0] if tree.body else None
    is_docstring = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
        and first.value.value.strip()
    )
    assert is_docstring, f"{relative(path)} does not open with a docstring saying what it is for"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_imports_follow_the_layers(path: Path) -> None:
    module = module_name(path)
    modules = project_modules()
    found = project_imports(parsed(path), module, path.name == "__init__.py", modules)
    wrong = [
        f"line {i.line}: {i.target}"
        for i in found
        if i.target not in modules or not allowed(module, i.target)
    ]
    assert not wrong, f"{relative(path)} imports against the layers (or unknown modules): {wrong}"


def test_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, f"modules that import each other in a cycle: {cycles}"


def test_one_http_client_for_model_calls() -> None:
    sites: dict[str, list[int]] = {}
    for path in FILES:
        for node in ast.walk(parsed(path)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "ClientSession":
                sites.setdefault(relative(path), []).append(node.lineno)
    assert len(sites.get(MODEL_CLIENT, [])) == 1, f"{MODEL_CLIENT}: {sites.get(MODEL_CLIENT)}"
    explained = {MODEL_CLIENT, *OTHER_CLIENT_SESSIONS}
    unexplained = {p: lines for p, lines in sites.items() if p not in explained}
    assert not unexplained, (
        "aiohttp.ClientSession constructed outside the one model client; send model calls "
        f"through {MODEL_CLIENT} (or list a non-model client here, with why): {unexplained}"
    )
    stale = sorted(set(OTHER_CLIENT_SESSIONS) - set(sites))
    assert not stale, f"listed as opening a ClientSession but no longer does: {stale}"
