"""ember's import graph: no cycles, arrows only pointing down, no private names across modules.

Every module of the installed ``ember`` package is parsed (never imported for this: the check
sees function-level imports too) and each of its imports of an ember module becomes an arrow.
``from package import name`` points at the submodule when ``name`` is one, else at the package.
The rooms and which rooms each may import are DESIGN.md's: ``ember → runtime → graph``,
``runtime → kernels``, ``importers → graph``.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil

import ember

ROOMS = ("graph", "runtime", "kernels", "importers")
MAY_IMPORT = {
    "ember": {"ember", "graph", "runtime", "kernels", "importers"},
    "runtime": {"runtime", "graph", "kernels"},
    "importers": {"importers", "graph"},
    "graph": {"graph"},
    "kernels": {"kernels"},
}


def ember_modules() -> dict:
    """{module name: file} for every module of the installed package (compiled kernels
    included: they are arrows' targets, though only Python sources are parsed)."""
    found = {}
    packages = [ember] + [importlib.import_module(f"ember.{room}") for room in ROOMS]
    for package in packages:
        found[package.__name__] = package.__file__
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            spec = importlib.util.find_spec(info.name)
            if spec is not None and spec.origin:
                found[info.name] = spec.origin
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "ember"


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(source: str, target: str, taken: list) -> list:
    """The private names ``source`` takes from ``target``: a private name belongs to its module,
    a private submodule to its package (whose own modules may import it)."""
    private = [name for name in taken if is_private(name)]
    package, _, last = target.rpartition(".")
    if is_private(last) and not (source == package or source.startswith(package + ".")):
        private.append(last)
    return private


def imports_of(module: str, path: str, modules: dict) -> list:
    """[(imported module, names taken from it, line)] for every import of an ember module, at
    module level or inside functions."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if os.path.basename(path) == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names
                      if alias.name.split(".")[0] == "ember"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "ember":
                continue
            taken = []
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, [], node.lineno))
                else:
                    taken.append(alias.name)
            if taken:
                found.append((source, taken, node.lineno))
    return found


def import_graph() -> tuple:
    modules = ember_modules()
    edges = {m: {} for m in modules}
    names = {}
    for module, path in modules.items():
        if not path.endswith(".py"):
            continue
        for target, taken, line in imports_of(module, path, modules):
            if target != module:
                edges[module].setdefault(target, line)
            names.setdefault(module, []).append((target, taken, line))
    return modules, edges, names


def find_cycles(edges: dict) -> list:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def test_the_walk_sees_every_room():
    modules = ember_modules()
    for expected in ("ember.graph.ops.base", "ember.runtime.session", "ember.importers.onnx",
                     "ember.kernels", "ember.nn"):
        assert expected in modules


def test_no_import_cycle():
    _, edges, _ = import_graph()
    assert find_cycles(edges) == []


def test_arrows_point_down():
    modules, edges, _ = import_graph()
    wrong = [f"{source} -> {target} ({os.path.basename(modules[source])}:{line})"
             for source, targets in sorted(edges.items())
             for target, line in sorted(targets.items())
             if room(target) not in MAY_IMPORT[room(source)]]
    assert wrong == []


def test_no_private_name_crosses_modules():
    modules, _, names = import_graph()
    private = [f"{source} imports {name} from {target} "
               f"({os.path.basename(modules[source])}:{line})"
               for source, imports in sorted(names.items())
               for target, taken, line in imports if target != source
               for name in private_imports(source, target, taken)]
    assert private == []
