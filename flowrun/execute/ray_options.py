"""How a run uses a Ray cluster (--executor ray), and the check that Ray is installed.

Kept apart from the driver and the worker, which both need it, and light: Ray itself is imported only
when a cluster run starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowrun.errors import UsageError

INSTALL_HINT = "the Ray executor needs Ray: pip install 'flowrun[ray]'"


@dataclass
class RayOptions:
    """Which cluster, and how many workers with how much of it each."""

    address: str | None = None  # None: start a local cluster for this run; "auto": the running one
    workers: int | None = None  # None: as many as the cluster's CPUs (or GPUs, with gpus_per_worker)
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1


def require_ray():
    """The ray module, or a UsageError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray
