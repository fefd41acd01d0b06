"""The package's shape, read from its source: no import cycles; dependencies that point down the floors
(cli → api → interop, regress, watch → pipeline → the core); a CLI that reaches the package only through the api;
and a light side (spec, graph, cache keys, errors, the CLI's start-up) that never imports torch.

Imports are read statically (with `ast`), so the test sees every import, including those inside functions
that a run may never reach. `from flowrun.x import y` counts as an import of the module `flowrun.x.y` when
there is one, else of `flowrun.x`. An imported module also imports the packages above it (their
`__init__.py` runs first).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flowrun"
HEAVY = {"torch", "diffusers", "transformers"}
# the light side: what `flowrun validate` and editors' schema tooling load (STYLE.md, "Layout")
# and node declarations, which import without heavy libraries (their bodies import them when they run)
LIGHT_PREFIXES = ("flowrun.spec.", "flowrun.graph.", "flowrun.nodes.")
LIGHT_MODULES = {"flowrun.cache.keys", "flowrun.errors", "flowrun.cli", "flowrun.values", "flowrun.files"}


@dataclass
class Imports:
    """What one module imports: flowrun modules and other top-level packages, split by when they load."""

    eager: set[str] = field(default_factory=set)  # flowrun modules imported when the module is imported
    deferred: set[str] = field(default_factory=set)  # inside functions, or for type checkers only
    eager_external: set[str] = field(default_factory=set)  # top-level names of other packages, eagerly


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module):
    """(import node, eager?) for every import statement; eager means it runs when the module is imported."""

    def walk(node, eager):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, eager
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), eager)
            else:
                yield from walk(child, eager)

    yield from walk(tree, True)


def _with_parents(name: str, modules: dict[str, Path]) -> set[str]:
    """`name` and the packages above it that are flowrun modules."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()


def _targets(node, module: str, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(flowrun modules, other top-level packages) that one import statement imports."""
    ours, others = set(), set()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's own package upwards
            is_package = modules[module].name == "__init__.py"
            package = module.split(".")[: len(module.split(".")) - (node.level - 1) - (0 if is_package else 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    for name in names:
        if name.split(".")[0] == "flowrun":
            found = next((c for c in (name, name.rsplit(".", 1)[0]) if c in modules), None)
            assert found is not None, f"{module} imports {name}, which is not a module of flowrun"
            ours |= _with_parents(found, modules)
        else:
            others.add(name.split(".")[0])
    return ours, others


def import_map(modules: dict[str, Path] | None = None) -> dict[str, Imports]:
    """Each flowrun module's imports, read from its source."""
    modules = modules or module_files()
    result = {}
    for module, path in modules.items():
        imports = Imports()
        for node, eager in _import_nodes(ast.parse(path.read_text(), str(path))):
            ours, others = _targets(node, module, modules)
            ours.discard(module)
            (imports.eager if eager else imports.deferred).update(ours)
            if eager:
                imports.eager_external |= others
        imports.deferred -= imports.eager
        result[module] = imports
    return result


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> b -> ... -> a) for each group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_cycle_path(group, edges) for group in groups]


def _cycle_path(group: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest way round from the group's first module back to itself, inside the group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges.get(v, set()) & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group always has one


def all_edges(imports: dict[str, Imports]) -> dict[str, set[str]]:
    return {m: i.eager | i.deferred for m, i in imports.items()}


def _is_light(module: str) -> bool:
    return module in LIGHT_MODULES or module.startswith(LIGHT_PREFIXES)


def heavy_paths(module: str, imports: dict[str, Imports]) -> list[list[str]]:
    """Chains of eager imports from `module` to a heavy library, e.g. [a, b, 'torch']."""
    paths = {module: [module]}
    frontier, found = [module], []
    while frontier:
        following = []
        for v in frontier:
            found += [paths[v] + [lib] for lib in sorted(imports[v].eager_external & HEAVY)]
            for w in sorted(imports[v].eager):
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    return found


def test_no_import_cycles():
    cycles = find_cycles(all_edges(import_map()))
    assert not cycles, "import cycles between flowrun's modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_light_side_imports_no_torch_at_module_level():
    imports = import_map()
    light = sorted(m for m in imports if _is_light(m))
    assert "flowrun.cli" in light and "flowrun.graph.build" in light and "flowrun.spec.document" in light
    chains = [p for m in light for p in heavy_paths(m, imports)]
    assert not chains, "the light side imports a heavy library when it is imported:\n" + "\n".join(
        " -> ".join(c) for c in chains)


def test_dependencies_point_down_the_floors():
    # cli -> api -> (interop, regress, watch) -> pipeline -> the core; nothing reaches back up
    imports = import_map()
    floors = [("flowrun.cli", "flowrun.__main__"), ("flowrun.api",), ("flowrun.interop", "flowrun.regress", "flowrun.watch"),
              ("flowrun.pipeline",)]

    def floor(module: str) -> int:
        return next((i for i, f in enumerate(floors) if module.startswith(f)), len(floors))

    upward = [f"{m} imports {t}" for m, i in sorted(imports.items()) for t in sorted(i.eager | i.deferred)
              if floor(t) < floor(m)]
    assert not upward, "imports that reach up the floors:\n" + "\n".join(upward)


def test_cli_only_parses_and_renders_over_the_api():
    allowed = {"flowrun", "flowrun.api", "flowrun.errors", "flowrun.settings", "flowrun.execute",
               "flowrun.execute.events", "flowrun.safepath", "flowrun.spec", "flowrun.spec.sweep"}
    cli = import_map()["flowrun.cli"]
    assert (cli.eager | cli.deferred) <= allowed, sorted((cli.eager | cli.deferred) - allowed)


# The checks themselves, on small made-up packages: they must be able to fail.

def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = tmp_path / "flowrun" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(tmp_path / "flowrun")


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    modules = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from flowrun.b import thing\n",
        "b.py": "def thing():\n    from flowrun import c\n",
        "c.py": "import flowrun.a\n",
        "d.py": "from flowrun import a\n",
    })
    assert find_cycles(all_edges(import_map(modules))) == [["flowrun.a", "flowrun.b", "flowrun.c", "flowrun.a"]]


def test_from_package_import_module_resolves_to_the_module(tmp_path):
    modules = _package(tmp_path, {
        "__init__.py": "", "sub/__init__.py": "", "sub/x.py": "X = 1\n",
        "y.py": "from flowrun.sub import x\nfrom flowrun.sub.x import X\nfrom . import sub\n",
    })
    assert import_map(modules)["flowrun.y"].eager == {"flowrun", "flowrun.sub", "flowrun.sub.x"}


def test_torch_through_another_module_is_found_but_not_when_deferred(tmp_path):
    modules = _package(tmp_path, {
        "__init__.py": "",
        "light.py": "from typing import TYPE_CHECKING\nimport flowrun.mid\nif TYPE_CHECKING:\n    import diffusers\n",
        "mid.py": "import os\ntry:\n    import torch\nexcept ImportError:\n    pass\n",
        "lazy.py": "def f():\n    import torch\n",
    })
    imports = import_map(modules)
    assert heavy_paths("flowrun.light", imports) == [["flowrun.light", "flowrun.mid", "torch"]]
    assert heavy_paths("flowrun.lazy", imports) == []
