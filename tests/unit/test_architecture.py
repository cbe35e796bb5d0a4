"""The package's shape, read from the source (AST, nothing imported): layering, import cycles, length.

- Nothing outside ``connector/devtools`` imports ``connector.devtools`` (the developer tools need an extra
  the runtime install does not carry); cli.py names devtools modules only as strings, imported on demand.
- No import cycle between ``connector`` modules through module-level imports (imports inside a function
  run when it is called, so they are lazy and allowed).
- No function longer than ``MAX_FUNCTION_LINES`` outside generated code (a file marked ``@generated``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "connector"
DEVTOOLS = "connector.devtools"
MAX_FUNCTION_LINES = 60
GENERATED_MARKER = "@generated"


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_package: bool
    eager: set[str] = field(default_factory=set)  # connector modules imported at module level
    lazy: set[str] = field(default_factory=set)  # connector modules imported inside functions

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import under ``node`` with whether it only runs when a function is called."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, in_function
        elif isinstance(child, ast.If) and _is_type_checking(child):
            yield from _imports(child, True)  # never executed: as harmless as a lazy import
        else:
            lazy = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _imports(child, lazy)


def _targets(node: ast.Import | ast.ImportFrom, module: Module, known: set[str]) -> set[str]:
    """The connector modules an import statement loads (``from pkg import sub`` loads ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:
        anchor = module.package.split(".")
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    found: set[str] = set()
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        if candidate in known:
            found.add(candidate)
        elif base in known:
            found.add(base)
    return found


def load_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        name = _module_name(path)
        modules[name] = Module(name, path, tree, path.name == "__init__.py")
    known = set(modules)
    for module in modules.values():
        for node, lazy in _imports(module.tree):
            (module.lazy if lazy else module.eager).update(_targets(node, module, known) - {module.name})
    return modules


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

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
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_tree_is_read() -> None:
    modules = load_modules()
    assert "connector.cli" in modules and "connector.devtools.emulator.app" in modules
    assert "connector.devtools.emulator.config" in modules["connector.devtools.emulator.server"].eager


def test_nothing_outside_devtools_imports_devtools() -> None:
    offenders = [
        f"{module.name} imports {target}"
        for module in load_modules().values()
        if not (module.name == DEVTOOLS or module.name.startswith(DEVTOOLS + "."))
        for target in sorted(module.eager | module.lazy)
        if target == DEVTOOLS or target.startswith(DEVTOOLS + ".")
    ]
    assert not offenders, "the runtime must not need the devtools extra:\n" + "\n".join(offenders)


def test_no_import_cycles_between_connector_modules() -> None:
    modules = load_modules()
    cycles = _cycles({name: module.eager for name, module in modules.items()})
    assert not cycles, "module-level import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def long_functions(modules: dict[str, Module]) -> list[str]:
    found: list[str] = []
    for module in modules.values():
        if GENERATED_MARKER in module.path.read_text(encoding="utf-8"):
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    where = module.path.relative_to(REPO)
                    found.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    return sorted(found)


def test_no_function_is_longer_than_sixty_lines() -> None:
    found = long_functions(load_modules())
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)
