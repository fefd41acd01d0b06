"""What a run stands on, built from Settings: the node cache and the services every node's run context
draws on (device policy, model pool, file lookup).

One place for both the process that plans a run and the Ray workers that render its cells, so that the
two see the same cache and resolve the same file names.
"""

from __future__ import annotations

from pathlib import Path

from flowrun.cache.location import open_store
from flowrun.cache.memory import MemoryCache
from flowrun.cache.tiers import NodeCache
from flowrun.execute.context import DevicePolicy, ModelPool, Services
from flowrun.files import FileLookup
from flowrun.settings import Settings


def open_cache(settings: Settings, memory: MemoryCache | None = None) -> NodeCache | None:
    """Memory (`memory`, or a new one of settings.memory_bytes) in front of the store at settings.cache_dir.
    With the cache turned off: None, or `memory` alone when the caller keeps one across runs."""
    if not settings.use_cache:
        return NodeCache(memory, None) if memory is not None else None
    return NodeCache(memory if memory is not None else MemoryCache(settings.memory_bytes), open_store(settings.cache_dir))


def services(workflow_file: str | Path, settings: Settings, models: ModelPool | None = None) -> Services:
    """What every node of one run shares: the device policy, the model pool, the file lookup."""
    return Services(DevicePolicy(settings.device, settings.dtype), models or ModelPool(),
                    FileLookup.for_workflow(workflow_file, settings))
