"""The identity of the code that computes a node, for its cache key: flowrun's version and a hash of the
source of every flowrun module the node's function can reach through imports.

Dependencies are found statically, without importing anything (this runs on the light side at plan
time): each module's source is scanned for `import` statements that name flowrun modules, lazy ones
inside functions included, and the closure is taken from the module that defines the node. Package
`__init__` files on the way count, and so do the data files a package ships (the CLIP vocabulary).
Every byte of those files counts, comments too: a hash cannot tell a comment from a constant.
Sources and hashes are read once per process: a few milliseconds for every node of the registry.
"""

from __future__ import annotations

import functools
import hashlib
import marshal
import os
import re
import sys
from typing import Any

import flowrun

PACKAGE = "flowrun"
ROOT = os.path.dirname(os.path.realpath(flowrun.__file__))
_TOP = len(os.path.dirname(ROOT)) + 1  # files are named from the folder above the package: flowrun/...
# Bundled model files are not code: the loaders that read them fingerprint them into keys like any model.
_NOT_PACKAGE_DATA = {os.path.join(ROOT, "models")}
# What every node runs through besides its own imports: the run context it is handed (output names,
# provenance chunks, model files) and the codecs that turn its outputs into cached bytes and back.
RUNTIME = ("flowrun.execute.context", "flowrun.cache.codecs")

# `from X import a, b` (names possibly in parentheses over several lines) and `import X, Y`, at any
# indentation. A regex reads the whole package in a few milliseconds where `ast` takes a hundred or more;
# an import written inside a string is followed too, which can only make a key change more often.
# Anchored on "\n" rather than `^` with re.M, which is three times slower; sources get a "\n" in front.
_IMPORT = re.compile(
    rb"\n[ \t]*(?:from[ \t]+(?P<base>\.*[\w.]*)[ \t]+import[ \t]*(?P<names>\([^)]*\)|[^\n]*(?:\\\n[^\n]*)*)"
    rb"|import[ \t]+(?P<modules>[^\n]*(?:\\\n[^\n]*)*))")
_COMMENT = re.compile(rb"#[^\n]*")


@functools.lru_cache(maxsize=None)
def module_path(name: str) -> str | None:
    """The source file of flowrun module `name` (a package's `__init__.py`), or None if there is none."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = os.path.join(ROOT, *name.split(".")[1:])
    for path in (os.path.join(base, "__init__.py"), base + ".py"):
        if os.path.isfile(path):
            return path
    return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def _sha256(path: str) -> str:
    return hashlib.sha256(_read(path)).hexdigest()


def _names(text: bytes) -> list[str]:
    """The dotted names of an import list: `(a as b,\n c)` -> ['a', 'c']."""
    text = _COMMENT.sub(b"", text).replace(b"\\\n", b" ").strip(b" \t()\n")
    return [item.split()[0].decode() for item in text.split(b",") if item.strip()]


def _absolute(base: str, importer: str, is_package: bool) -> str:
    """`base` of `from base import ...` with leading dots resolved against the importing module."""
    level = len(base) - len(base.lstrip("."))
    if not level:
        return base
    parts = importer.split(".")[: len(importer.split(".")) - (level - 1 if is_package else level)]
    return ".".join(parts + ([base[level:]] if base[level:] else []))


def imports_in(source: bytes, importer: str = "", is_package: bool = False) -> set[str]:
    """The flowrun modules that `source` imports anywhere (inside functions too); `importer` is the
    module's own name, to resolve relative imports."""
    found: set[str] = set()
    for m in _IMPORT.finditer(b"\n" + source):
        if m.group("modules") is not None:
            candidates = _names(m.group("modules"))
        else:
            base = _absolute(m.group("base").decode(), importer, is_package)
            # `from flowrun.nodes import ports` imports a module; `from flowrun import __version__` a name
            candidates = [base] + [f"{base}.{n}" for n in _names(m.group("names")) if n != "*"]
        found.update(c for c in candidates if module_path(c) is not None)
    return found


@functools.lru_cache(maxsize=None)
def _direct_imports(name: str) -> frozenset[str]:
    path = module_path(name)
    return frozenset(imports_in(_read(path), name, path.endswith("__init__.py")))


def _with_packages(name: str) -> list[str]:
    """`name` and the packages above it, whose `__init__` runs when it is imported."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure_of(roots: set[str]) -> tuple[str, ...]:
    """Every flowrun module reachable by imports from the flowrun modules `roots`, sorted."""
    seen: set[str] = set()
    todo = [p for r in roots for p in _with_packages(r)]
    while todo:
        name = todo.pop()
        if name in seen or module_path(name) is None:
            continue
        seen.add(name)
        todo.extend(p for dep in _direct_imports(name) for p in _with_packages(dep))
    return tuple(sorted(seen))


def module_closure(name: str) -> tuple[str, ...]:
    """The flowrun modules that flowrun module `name` depends on, itself and its packages included."""
    return closure_of({name})


def _label(path: str) -> str:
    return path[_TOP:].replace(os.sep, "/")


@functools.lru_cache(maxsize=None)
def _package_data(package_dir: str) -> dict[str, str]:
    """Hashes of the data files under a package's folders that are not packages themselves."""
    out: dict[str, str] = {}
    for entry in sorted(os.scandir(package_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name == "__pycache__" or entry.path in _NOT_PACKAGE_DATA \
                or os.path.exists(os.path.join(entry.path, "__init__.py")):
            continue
        for folder, dirs, files in os.walk(entry.path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            out.update((_label(os.path.join(folder, f)), _sha256(os.path.join(folder, f))) for f in sorted(files))
    return out


def _hashes(modules: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in modules:
        path = module_path(name)
        out[_label(path)] = _sha256(path)
        if path.endswith("__init__.py"):
            out.update(_package_data(os.path.dirname(path)))
    return out


def _identity(files: dict[str, str]) -> str:
    text = "\n".join(f"{k} {v}" for k, v in sorted(files.items()))
    return f"{flowrun.__version__}:{hashlib.sha256(text.encode()).hexdigest()}"


@functools.lru_cache(maxsize=None)
def _flowrun_identity(module_name: str) -> str:
    return _identity(_hashes(closure_of({module_name, *RUNTIME})))


def _outside_identity(label: str, source: bytes) -> str:
    files = _hashes(closure_of(imports_in(source) | set(RUNTIME)))
    return _identity({**files, label: hashlib.sha256(source).hexdigest()})


@functools.lru_cache(maxsize=None)
def _outside_file_identity(module_name: str, path: str) -> str:
    return _outside_identity(f"{module_name}.py", _read(path))


def node_code_identity(node_def: Any) -> str:
    """`version:sha256` of the code that computes `node_def`: flowrun's version and the source of the
    module defining its function (a plugin's too), of every flowrun module it imports, directly or not,
    and of RUNTIME."""
    fn = node_def.fn
    if module_path(fn.__module__) is not None:
        return _flowrun_identity(fn.__module__)
    path = getattr(sys.modules.get(fn.__module__), "__file__", None)
    if path and os.path.isfile(path):
        return _outside_file_identity(fn.__module__, path)
    # defined where there is no source file (interactively): its compiled code stands for its source
    return _outside_identity(f"{fn.__module__}:{fn.__qualname__}", marshal.dumps(fn.__code__))


def package_modules() -> list[str]:
    """Every module of the package, sorted."""
    names = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if os.path.exists(os.path.join(folder, d, "__init__.py"))]
        package = PACKAGE + _label(folder)[len(PACKAGE):].replace("/", ".")
        names += [package if f == "__init__.py" else f"{package}.{f[:-3]}" for f in files if f.endswith(".py")]
    return sorted(names)


@functools.lru_cache(maxsize=1)
def package_identity() -> str:
    """`version:sha256` of every module and data file of the package: Ray workers must match the
    driver's, since the keys the driver computed describe its code."""
    return _identity(_hashes(tuple(package_modules())))
