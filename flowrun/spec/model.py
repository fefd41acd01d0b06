"""The workflow document as pydantic models: the shape of the YAML file, before any node is looked up."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

NODE_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
LINK_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RangeAxis(_Strict):
    """Values from a range: [start, stop] or [start, stop, step]; stop is excluded, as in Python's range."""

    range: list[Union[int, float]] = Field(min_length=2, max_length=3)


class InterpolateAxis(_Strict):
    """`steps` evenly spaced numbers from a to b, both included: {interpolate: [a, b], steps: N}."""

    interpolate: list[StrictFloat] = Field(min_length=2, max_length=2)
    steps: StrictInt = Field(ge=2)


AxisValues = Union[list[Any], RangeAxis, InterpolateAxis]


class SweepSpec(_Strict):
    """How the workflow expands into cells."""

    grid: dict[str, AxisValues] = Field(default_factory=dict, description="Axes crossed as a cartesian product.")
    zip: dict[str, AxisValues] = Field(default_factory=dict,
                                       description="Axes paired index by index (equal lengths), crossed with the grid.")


class NodeSpec(_Strict):
    """One node: its type, its links (`in`) and its literals (`with`)."""

    type: str = Field(description="Node type, named as in ComfyUI (for example KSampler).")
    in_: dict[str, str] = Field(default_factory=dict, alias="in",
                                description="Links only: `node.output`, or `node` when it has one output.")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with",
                                  description="Literals only; strings may hold jinja templates.")


class TestSpec(_Strict):
    """How `flowrun test` grades this workflow's renders against their goldens."""

    pass_max_diff: int = Field(2, ge=0, le=255, description="Pass when no pixel differs by more than this (8-bit levels).")
    warn_min_psnr: float = Field(30.0, ge=0.0, description="Otherwise warn while PSNR (dB) is at least this...")
    warn_min_ssim: float = Field(0.95, ge=-1.0, le=1.0, description="...and SSIM at least this; else fail.")
    pixels: bool = Field(True, description="Grade the pixels (above); false: only the semantic checks below grade.")
    min_clip_score: float | None = Field(None, ge=0.0, le=2.5, description="Fail when an output's CLIPScore is "
                                         "below this: against clip_text, else the cell's CLIPScore node value.")
    clip_text: str | None = Field(None, min_length=1, description="The text min_clip_score scores each output against.")
    min_similarity_to_golden: float | None = Field(None, ge=-1.0, le=1.0, description="Fail when the cosine "
                                                   "similarity of an output's CLIP image embedding to its golden's "
                                                   "is below this.")
    clip_model: str = Field("flowrun-tiny-clip", min_length=1, description="The CLIP model of the semantic checks, "
                            "by name under clip_score/ (or clip_vision/).")


class WorkflowSpec(_Strict):
    """A flowrun workflow file."""

    version: Literal[1] = Field(description="Format version of the workflow file.")
    name: str | None = Field(None, description="A short name for the workflow.")
    description: str | None = Field(None, description="What the workflow makes.")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="Typed defaults, used through jinja and overridden with --set.")
    sweep: SweepSpec | None = Field(None, description="Optional expansion of the workflow into cells.")
    nodes: dict[str, NodeSpec] = Field(min_length=1, description="The nodes, by id.")
    test: TestSpec | None = Field(None, description="Thresholds for regression renders (flowrun test).")


TOP_LEVEL_KEYS = tuple(f.alias or n for n, f in WorkflowSpec.model_fields.items())
NODE_KEYS = ("type", "in", "with")
