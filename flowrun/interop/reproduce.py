"""Render an image again from the resolved workflow that flowrun wrote into it, and say if it is identical."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from flowrun.errors import FlowrunError, UsageError

WORKFLOW_CHUNK = "flowrun_workflow"


def read_workflow(image: Path) -> str:
    """The resolved workflow YAML that flowrun stored in `image`; UsageError if it has none."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as im:
            text = im.info.get(WORKFLOW_CHUNK)
    except (OSError, UnidentifiedImageError) as exc:
        raise UsageError(f"cannot read {image}: {exc}") from None
    if not text:
        raise UsageError(f"{image} carries no flowrun workflow (no '{WORKFLOW_CHUNK}' text chunk)")
    return text


@dataclass
class Reproduction:
    """The image, its new render, and whether they match (with a message saying how)."""

    original: Path
    new: Path
    identical: bool
    message: str


def reproduce(image: Path, settings, workflow_dir: Path | None = None) -> Reproduction:
    """Re-render `image`. Relative file names in its workflow (input images) resolve against workflow_dir,
    by default the image's folder."""
    from flowrun import pipeline
    from flowrun.regress.compare import Thresholds, compare, load_rgb

    text = read_workflow(image)
    folder = Path(workflow_dir or image.parent).resolve()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=folder, delete=False, prefix=".reproduce-") as fh:
        fh.write(text)
        wf = Path(fh.name)
    try:
        resolved = pipeline.load(wf, plugins=settings.plugins)
        out = Path(settings.out_dir or tempfile.mkdtemp(prefix="flowrun-reproduce-"))
        result = pipeline.run(resolved, replace(settings, out_dir=out, contact_sheets=False))
    finally:
        wf.unlink(missing_ok=True)
    match = [f for f in result.files if f.name == image.name] or [f for f in result.files if f.suffix == ".png"]
    if not match:
        raise FlowrunError("the workflow rendered no image")
    new = match[0]
    if new.read_bytes() == image.read_bytes():
        return Reproduction(image, new, True, "identical, byte for byte")
    c = compare(load_rgb(new), load_rgb(image), Thresholds())
    if c.identical:
        # the text chunks differ (the re-rendered workflow has its templates already resolved)
        return Reproduction(image, new, True, "identical pixels")
    return Reproduction(image, new, False, f"differs: {c.reason}")
