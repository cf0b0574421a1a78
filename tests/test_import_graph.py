"""kar's import graph (read with ast, nothing imported): no cycles, no private names
imported from another module, and ``import kar`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kar

PACKAGE = Path(kar.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The kar module ``name`` is (or is inside), None outside kar."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every import that runs: at module
    level and inside functions (lazy ones), not under ``if TYPE_CHECKING:``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, None, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.extend((base, a.name, node.lineno) for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for base, name, _ in _imports(module):
            full = f"{base}.{name}" if name else base
            target = full if full in MODULES else _owner(base)
            if target is not None and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
            connect(v)
    return found


def test_the_walk_sees_lazy_imports_and_would_report_a_cycle() -> None:
    graph = _graph()
    assert "kar.pipeline" in graph["kar.facade"]
    assert "kar.refresh.run" in graph["kar.facade"] or "kar.refresh" in graph["kar.facade"]
    assert (
        "kar.generation.store" in graph["kar.pipeline"] or "kar.generation" in graph["kar.pipeline"]
    )  # imported inside a stage function
    looped = {**graph, "kar.project": graph["kar.project"] | {"kar.facade"}}
    assert any("kar.facade" in c and "kar.project" in c for c in _cycles(looped))


def test_no_import_cycles_in_kar() -> None:
    assert _cycles(_graph()) == []


def test_no_private_names_imported_from_another_module() -> None:
    offenders = [
        f"{module}:{line} imports {name} from {base}"
        for module in MODULES
        for base, name, line in _imports(module)
        if base.startswith("kar")
        and name is not None
        and name.startswith("_")
        and not name.startswith("__")
        and base != module
    ]
    assert offenders == []


def _loaded_after(statement: str) -> list[str]:
    heavy = ("torch", "transformers", "feast", "polars")
    code = f"import sys; {statement}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout.strip())


def test_import_kar_is_light_and_the_facade_loads_no_model_library() -> None:
    assert _loaded_after("import kar") == []
    assert _loaded_after("import kar; kar.Project") == ["polars"]  # no torch, feast


def test_no_package_exports_a_name_that_is_also_its_submodule() -> None:
    """A package whose ``__all__`` names a function after one of its submodules breaks once
    that submodule is imported (Python then binds the package attribute to the module, and
    ``from kar.features import publish`` returned a module, not the function)."""
    clashes = []
    for module, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        exported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                exported |= {
                    e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)
                }
        clashes += [f"{module}.{name}" for name in exported if f"{module}.{name}" in MODULES]
    assert not clashes, f"exported names that are also submodules: {clashes}"
