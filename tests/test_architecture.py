"""The package's import structure: no import cycles, and evaluation imported only by the command layer.

Every module of ``workembed`` is parsed (not imported) with :mod:`ast`:

- cycles: the module-level imports (statements run at import time: the module body and its class bodies,
  ``if`` / ``try`` blocks included, function bodies and ``if TYPE_CHECKING:`` blocks excluded) form a
  graph between modules that must have no cycle;
- evaluation: no module outside ``workembed.eval`` and the command layer (:data:`COMMAND_LAYER`) imports
  ``workembed.eval``, at module level or inside a function.

``from package import name`` counts as importing ``package.name`` when that is a module, else ``package``.
"""

from __future__ import annotations

import ast
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import workembed

EVAL = "workembed.eval"
COMMAND_LAYER = frozenset(
    {
        "workembed.cli",
        "workembed.stages",
        "workembed.job_runner",
        "workembed.reference",
        "workembed.demo",
        "workembed.registry_commands",
    }
)
"""Modules that wire evaluation into commands: the CLI, the stage table, the pipeline runner, the
orchestrators and the registry commands that pass the evaluation to the registry."""


def package_modules() -> dict[str, Path]:
    """Every module of the package (packages as their ``__init__.py``) → its file."""
    modules = {"workembed": Path(workembed.__file__)}
    for info in pkgutil.walk_packages(workembed.__path__, "workembed."):
        folder = Path(info.module_finder.path)
        name = info.name.rsplit(".", 1)[-1]
        modules[info.name] = folder / name / "__init__.py" if info.ispkg else folder / f"{name}.py"
    return modules


MODULES = package_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], module_level: bool) -> Iterator[ast.stmt]:
    """The statements of ``body``, nested ones included; with ``module_level``, only those run at import time
    (no function bodies, no ``if TYPE_CHECKING:`` blocks)."""
    for node in body:
        yield node
        if module_level and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if module_level and isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.orelse, module_level)
            continue
        nested = [getattr(node, field, []) for field in ("body", "orelse", "finalbody")]
        nested += [handler.body for handler in getattr(node, "handlers", [])]
        for children in nested:
            if isinstance(children, list):
                yield from _statements(children, module_level)


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def imported(module: str, module_level: bool) -> set[str]:
    """The names of the modules ``module`` imports (in the package or not)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))
    found: set[str] = set()
    for node in _statements(tree.body, module_level):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = _package_of(module).split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports at module level."""
    return {module: {m for m in imported(module, True) if m in MODULES and m != module} for module in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_is_found():
    assert {"workembed.cli", "workembed.eval.runner", "workembed.retrieval.scoring"} <= set(MODULES)
    assert all(path.is_file() for path in MODULES.values())


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_command_layer_imports_evaluation():
    offenders = {
        module: sorted(m for m in imported(module, False) if m == EVAL or m.startswith(EVAL + "."))
        for module in MODULES
        if module != EVAL and not module.startswith(EVAL + ".") and module not in COMMAND_LAYER
    }
    assert {module: names for module, names in offenders.items() if names} == {}
