"""Where things live: output folder, cache folder, and how much the caches may hold."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from flowrun.cache.housekeeping import default_max_bytes
from flowrun.cache.memory import DEFAULT_MAX_BYTES
from flowrun.execute.ray_options import RayOptions
from flowrun.precision import DTYPES, problem as dtype_problem  # noqa: F401  (the CLI's choices and check)

CACHE_ENV = "FLOWRUN_CACHE_DIR"


def cache_location(text: str) -> Path | str:
    """A --cache-dir value: an fsspec URL stays text, a folder becomes a Path."""
    return text if "://" in text else Path(text)


def default_cache_dir() -> Path | str:
    """$FLOWRUN_CACHE_DIR, else $XDG_CACHE_HOME/flowrun, else ~/.cache/flowrun."""
    if os.environ.get(CACHE_ENV):
        return cache_location(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flowrun"


def default_out_dir(workflow_file: str) -> Path:
    """out/<workflow file name without .yaml>, relative to the current folder."""
    return Path("out") / Path(workflow_file).stem


@dataclass
class Settings:
    out_dir: Path | None = None  # None: default_out_dir(workflow)
    cache_dir: Path | str = field(default_factory=default_cache_dir)  # a folder, or an fsspec URL (s3://...)
    use_cache: bool = True
    memory_bytes: int = DEFAULT_MAX_BYTES
    disk_max_bytes: int = field(default_factory=default_max_bytes)  # LRU eviction after a run; 0: no limit
    plugins: tuple[str, ...] = ()
    models_dirs: tuple[str, ...] = ()  # searched before $FLOWRUN_MODELS, models/ beside the workflow, bundled models
    allow_pickle: bool = False  # load .ckpt/.pt checkpoints (with torch.load(weights_only=True))
    device: str | None = None  # torch device for models; None: cuda if available, else cpu
    # precision of the models (flowrun.precision.DTYPES); None: the device's default (cpu float32, cuda float16)
    dtype: str | None = None
    keep_going: bool = False  # a failing node stops only what depends on it; RunFailed at the end lists all
    max_batch: int | None = None  # cells per batched call at most (None: all that can batch together)
    executor: str = "local"  # "local", or "ray" (with ray_options; execute/executor.py picks by this)
    ray_options: RayOptions | None = None  # None: RayOptions() (a local cluster, one worker per CPU)
    batch: bool = True  # cells differing only in seed/cfg sample in one batched call (see README)
    contact_sheets: bool = True  # sweeps write contact-<node>.png and index.html into the output folder
    animate: str | None = None  # a sweep axis: its cells as animated PNGs per output node (execute/animate.py)
    animate_fps: float = 6.0
    # the lock the files a run reads must match: "auto" the nearest flowrun.lock (flowrun/lockfile.py),
    # a path, or None for none
    lock: str | Path | None = "auto"

    @property
    def local_cache_dir(self) -> Path | None:
        """The cache folder when the cache is used and on this machine (timings, file checksums and
        eviction live there); None for no cache or a cache at a URL."""
        if not self.use_cache or "://" in str(self.cache_dir):
            return None
        return Path(self.cache_dir)
