"""The files a workflow names (models, LoRAs, input images): found and fingerprinted, every missing or
escaping one reported at once, at the field that names it.

Which literal fields name files, and where they are looked up, is part of each node's declaration
(`files=` in `@node`). Checking only looks (`flowrun validate`); fingerprinting reads each file once per
version (hashes are remembered by path, size and modification time).
"""

from __future__ import annotations

from flowrun.errors import Problem, WorkflowInvalid
from flowrun.cache.keys import digest
from flowrun.files import FileLookup, InText, VaeFiles
from flowrun.lockfile import LockError
from flowrun.graph.resolve import Resolved


def _named_files(resolved: Resolved, node_ids=None):
    """(cell index, node id, field, kind, name, in_text) for every file a field of a cell names; in_text:
    the field is a text naming files within it (a prompt's embeddings), not a file name itself."""
    for ci, instances in enumerate(resolved.instances):
        for nid, inst in instances.items():
            if node_ids is not None and nid not in node_ids:
                continue
            for field_name, kind in inst.node_def.files.items():
                value = inst.literals.get(field_name)
                if not isinstance(value, str):
                    continue
                if isinstance(kind, (InText, VaeFiles)):
                    for file_kind, name in kind.files(value):
                        yield ci, nid, field_name, file_kind, name, True
                else:
                    yield ci, nid, field_name, kind, value, False


def named_files(resolved: Resolved) -> list[tuple[str, str]]:
    """(kind, name) of every file any cell of the workflow reads, each once, in order of appearance."""
    return list(dict.fromkeys((kind, name) for _, _, _, kind, name, _ in _named_files(resolved)))


def _problem(resolved: Resolved, nid: str, field_name: str, exc: Exception) -> Problem:
    message = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror and exc.filename \
        else str(exc)
    return Problem("lock" if isinstance(exc, LockError) else "file", message, resolved.source.where(("nodes", nid, "with", field_name)), node=nid,
                   field=field_name)


def _raise_collected(resolved: Resolved, found: dict[tuple, Problem], cells_of: dict[tuple, list[str]]) -> None:
    if not found:
        return
    n = len(resolved.cells)
    problems = []
    for k, p in found.items():
        labels = cells_of[k]
        named = () if n == 1 or len(labels) == n else tuple(labels)
        problems.append(Problem(p.kind, p.message, p.location, p.node, p.field, p.hint, named))
    raise WorkflowInvalid(problems)


def fingerprints(resolved: Resolved, lookup: FileLookup, node_ids=None) -> list[dict[str, dict[str, str]]]:
    """Per cell: node id -> {field: content fingerprint} of the files its fields name. Raises
    WorkflowInvalid listing every file that is missing, unreadable or outside its folder."""
    out: list[dict[str, dict[str, str]]] = [{} for _ in resolved.cells]
    found: dict[tuple, Problem] = {}
    cells_of: dict[tuple, list[str]] = {}
    done: dict[tuple[str, str], str | Exception] = {}
    in_text: dict[tuple[int, str, str], dict[str, str]] = {}
    for ci, nid, field_name, kind, name, within in _named_files(resolved, node_ids):
        if (kind, name) not in done:
            try:
                done[(kind, name)] = lookup.fingerprint(kind, name)
            except (OSError, ValueError) as exc:
                done[(kind, name)] = exc
        result = done[(kind, name)]
        if isinstance(result, Exception):
            key = (nid, field_name, str(result))
            found.setdefault(key, _problem(resolved, nid, field_name, result))
            cells_of.setdefault(key, []).append(resolved.cells[ci].label)
        elif within:
            in_text.setdefault((ci, nid, field_name), {})[name] = result
        else:
            out[ci].setdefault(nid, {})[field_name] = result
    _raise_collected(resolved, found, cells_of)
    for (ci, nid, field_name), prints in in_text.items():  # one fingerprint for all the files a text names
        out[ci].setdefault(nid, {})[field_name] = digest(prints)
    return out


def check(resolved: Resolved, lookup: FileLookup) -> None:
    """Raise WorkflowInvalid listing every named file that does not exist or would leave its folder
    (nothing is read: `flowrun validate` stays fast on large checkpoints)."""
    found: dict[tuple, Problem] = {}
    cells_of: dict[tuple, list[str]] = {}
    for ci, nid, field_name, kind, name, _ in _named_files(resolved):
        try:
            lookup.path(kind, name)
        except (OSError, ValueError) as exc:
            key = (nid, field_name, str(exc))
            found.setdefault(key, _problem(resolved, nid, field_name, exc))
            cells_of.setdefault(key, []).append(resolved.cells[ci].label)
    _raise_collected(resolved, found, cells_of)
