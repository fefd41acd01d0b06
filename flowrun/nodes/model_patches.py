"""Patches people stack on a MODEL: each returns a new model value, so the model it was given (shared by
other nodes and cells) stays as it was, and the patch's settings reach every downstream cache key through
this node's own key. So far: RescaleCFG."""

from __future__ import annotations

from pydantic import Field

from flowrun.nodes import ports
from flowrun.nodes.registry import NodeParams, node


class RescaleCFGParams(NodeParams):
    multiplier: float = Field(0.7, ge=0.0, le=1.0)


@node("RescaleCFG", outputs={"model": ports.MODEL}, category="advanced/model")
def rescale_cfg(p: RescaleCFGParams, ctx, *, model: ports.Model) -> ports.Model:
    """Guidance rescaled to the conditional prediction's spread (for v-prediction and zero-SNR models,
    whose high cfg otherwise overexposes)."""
    from flowrun.diffusion.cfg_patches import RescaleCFG

    return model.with_cfg_function(RescaleCFG(p.multiplier))
