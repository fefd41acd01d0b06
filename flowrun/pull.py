"""`flowrun models pull`: fetch the models a lock pins and the models folder lacks, from each entry's
`source`, the one time flowrun reaches a network (running a workflow never downloads anything).

A source is a URL (`https://host/path/model.safetensors`) or a Hugging Face file,
`hf:OWNER/REPO@REVISION:PATH/IN/REPO` (huggingface_hub builds its address and headers: the token of
`huggingface-cli login` or $HF_TOKEN, and $HF_ENDPOINT for a mirror). A download goes to `NAME.part`
beside its target and resumes from there with an HTTP range request when interrupted; the whole file's
sha256 and size must equal the lock's before it is renamed into place, so a models folder never holds a
partial or wrong file under a model's name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flowrun.errors import FlowrunError, UsageError
from flowrun.lockfile import Lock

CHUNK = 1 << 20
Progress = Callable[[str, int, int | None], None]  # (key, bytes so far, total or None)


class PullError(FlowrunError):
    """A download that failed or did not give the pinned bytes (exit 1)."""


@dataclass(frozen=True)
class Wanted:
    """A pinned model to fetch: its lock key, where it goes, where it comes from, what it must hash to."""

    key: str
    target: Path
    source: str
    sha256: str
    size: int | None


def source_request(source: str) -> tuple[str, dict[str, str]]:
    """(URL, headers) for a lock entry's source."""
    if source.startswith(("http://", "https://")):
        return source, {}
    if source.startswith("hf:"):
        repo, sep, path = source[3:].partition(":")
        repo, _, revision = repo.partition("@")
        if not sep or not path or repo.count("/") != 1:
            raise UsageError(f"source '{source}': expected hf:OWNER/REPO@REVISION:PATH")
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(repo, path, revision=revision or None, endpoint=os.environ.get("HF_ENDPOINT") or None)
        return url, dict(build_hf_headers())
    raise UsageError(f"source '{source}': not a URL (http://, https://) or hf:OWNER/REPO@REVISION:PATH")


def wanted(lock: Lock, models_dir: Path, present: Callable[[str, str], bool],
           keys: set[str] | None = None) -> tuple[list[Wanted], list[str]]:
    """The lock's model entries (those in `keys`, if given) that `present(kind, name)` says are missing:
    (the ones with a source, the keys of those without)."""
    fetch, no_source = [], []
    for key, entry in sorted(lock.models.items()):
        if keys is not None and key not in keys:
            continue
        kind, _, name = key.partition("/")
        if present(kind, name):
            continue
        source = entry.get("source")
        if not source:
            no_source.append(key)
            continue
        suffix = "" if Path(name).suffix else Path(source.rsplit(":", 1)[-1].split("?")[0]).suffix
        fetch.append(Wanted(key, models_dir / kind / (name + suffix), source, entry["sha256"], entry.get("size")))
    return fetch, no_source


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(item: Wanted, progress: Progress | None = None, timeout: float = 60.0) -> None:
    """Fetch `item` to its target: resume `<target>.part`, check size and sha256, rename into place."""
    url, headers = source_request(item.source)
    item.target.parent.mkdir(parents=True, exist_ok=True)
    part = item.target.with_name(item.target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if item.size is None or have < item.size:
        request = urllib.request.Request(url, headers={**headers, **({"Range": f"bytes={have}-"} if have else {})})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416:  # 416: nothing left past what we have
                raise PullError(f"{item.key}: {url}: HTTP {exc.code} {exc.reason}") from None
            response = None
        except (urllib.error.URLError, OSError) as exc:
            raise PullError(f"{item.key}: {url}: {getattr(exc, 'reason', exc)}") from None
        if response is not None:
            with response:
                if have and response.status != 206:  # the server ignored the range: start again
                    have = 0
                with open(part, "ab" if have else "wb") as out:
                    try:
                        while chunk := response.read(CHUNK):
                            out.write(chunk)
                            have += len(chunk)
                            if progress:
                                progress(item.key, have, item.size)
                    except (OSError, http.client.HTTPException) as exc:  # broken: what arrived stays for the next try
                        raise PullError(f"{item.key}: {url}: interrupted after {have} bytes ({exc}); run the "
                                        f"command again to resume") from None
                    out.flush()
                    os.fsync(out.fileno())
    if item.size is not None and part.stat().st_size < item.size:
        raise PullError(f"{item.key}: {url}: the connection ended after {have} of {item.size} bytes; run the "
                        f"command again to resume")
    found = _sha256(part)
    if found != item.sha256 or (item.size is not None and part.stat().st_size != item.size):
        part.unlink()
        raise PullError(f"{item.key}: {url} gave {have} bytes with sha256 {found}; the lock pins "
                        f"{item.size} bytes with sha256 {item.sha256}: the download was removed")
    os.replace(part, item.target)
