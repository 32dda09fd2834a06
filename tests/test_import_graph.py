"""The project's own import graph: no import loops anywhere, the shared library never reaches up into a
service or the client package, and the client (``goha/``) never loads the server's ORM.

How the graph is built (static, from the source with ``ast``; nothing is imported):

* nodes: every module under ``goha/``, ``shared/`` and ``services/`` (``pkg/__init__.py`` is ``pkg``);
* an edge A -> B for every ``import B`` / ``from B import name`` in A, at module level AND inside
  functions: a function-level import is still a dependency, only deferred (it is how loops were
  hidden), so it counts. ``from pkg import name`` points at ``pkg.name`` when that is a module,
  else at ``pkg``; relative imports are resolved against A's package;
* not counted: imports under ``if TYPE_CHECKING:`` (never executed, annotations only), and the
  implicit import of a module's parent packages by Python (``import a.b.c`` runs ``a/__init__``
  and ``a/b/__init__``: that is nesting, not a dependency this test judges).

``ACYCLIC_PACKAGES`` names each package's own loop check (the whole graph is checked too).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("goha", "shared", "services")

# Packages with no import loop among their own modules (dotted names).
ACYCLIC_PACKAGES = (
    "goha",
    "shared.platform",
    "shared.media",
    "shared.model",
    "shared.face",
    "shared.training",
    "services.gateway",
    "services.worker",
    "services.inference",
    "services.reconciler",
    "services.embedded",
)

# The client library (what ``goha.cli``'s client commands run on) may import, besides ``goha``, only
# these modules of the platform: its error types. Nothing of the database, models or settings.
CLIENT_LIBRARY = ("goha.client", "goha.display")
CLIENT_MAY_IMPORT = ("shared.errors", "shared.platform.errors")

# Loaded by the server and the local stack only: a client command that loads one of them pulls in the
# ORM or a service. (Building the ``goha`` parser reads the ``up`` and ``demo`` arguments from
# services/embedded/up.py and demo.py, which load none of these themselves.)
SERVER_ONLY_MODULES = (
    "sqlalchemy",
    "alembic",
    "shared.platform.db",
    "shared.platform.models",
    "shared.platform.repository",
    "shared.platform.admin",
    "services.embedded.stack",
    "services.gateway",
    "services.worker",
    "services.inference",
    "services.reconciler",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in TOP_LEVEL:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _executed_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node`` (any depth) except the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:  # the else branch does run
                yield from _executed_imports(stmt)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _executed_imports(child)


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    modules = _modules()
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        yield candidate if candidate in modules else base


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """module -> the project modules it imports (see the module docstring for what counts)."""
    modules = _modules()
    graph: dict[str, frozenset[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = {
            target
            for node in _executed_imports(tree)
            for target in _targets(module, path, node)
            if target in modules and target != module
        }
        graph[module] = frozenset(edges)
    return graph


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # recursion depth is bounded by the package size
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_loop_and_not_a_chain() -> None:
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_the_graph_sees_function_level_imports_and_skips_type_checking() -> None:
    graph = import_graph()
    # services/inference/backend.py imports the client and the engine inside open_backend.
    assert {"services.inference.client", "services.inference.engine"} <= graph["services.inference.backend"]
    # shared/model/serving.py names GOHANetwork under TYPE_CHECKING only.
    assert "shared.model.network" not in graph["shared.model.serving"]
    assert "shared.model.serving" in graph["shared.model.network"]


@pytest.mark.parametrize("package", ACYCLIC_PACKAGES)
def test_no_import_loop_inside_the_package(package: str) -> None:
    graph = import_graph()
    assert any(_in_package(m, package) for m in graph), f"{package}: no modules found"
    sub = {
        m: frozenset(t for t in targets if _in_package(t, package))
        for m, targets in graph.items()
        if _in_package(m, package)
    }
    loops = cycles(sub)
    assert not loops, f"import loops in {package}: {loops}"


def test_no_import_loop_in_the_whole_project() -> None:
    loops = cycles(import_graph())
    assert not loops, f"import loops: {loops}"


def test_the_shared_library_does_not_import_services_or_the_client() -> None:
    offenders = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if _in_package(module, "shared")
        for target in targets
        if _in_package(target, "services") or _in_package(target, "goha")
    )
    assert not offenders, f"shared/ imports services or goha: {offenders}"


def test_the_client_library_reaches_no_server_module() -> None:
    graph = import_graph()
    reached: set[str] = set()
    pending = list(CLIENT_LIBRARY)
    while pending:
        module = pending.pop()
        if module not in reached:
            reached.add(module)
            pending.extend(graph[module])
    outside = sorted(m for m in reached if not _in_package(m, "goha") and m not in CLIENT_MAY_IMPORT)
    assert not outside, f"the client library imports server modules: {outside}"


def test_a_client_command_loads_no_server_module() -> None:
    """``goha status`` (against a port where nothing listens) builds the whole parser and runs a client
    command: the admin and local-stack commands' server modules stay unloaded."""
    script = (
        "import json, sys\n"
        "from goha import cli\n"
        "code = cli.main(['status', 'abcdef12', '--api-url', 'http://127.0.0.1:9', '--api-key', 'k', '--timeout', '5'])\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 1, done.stderr  # unreachable: the API's error envelope, exit 1
    loaded = sorted(
        m for m in report["modules"] if any(_in_package(m, server) for server in SERVER_ONLY_MODULES)
    )
    assert not loaded, f"a client command loaded server modules: {loaded}"
