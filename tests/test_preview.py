"""PreviewImage: images to look at while iterating, written under previews/ of the run's output folder,
made anew every run, never cached and never among the outputs that goldens and contact sheets use."""

from __future__ import annotations

import json

WORKFLOW = """
version: 1
sweep: {grid: {color: [255, 65280]}}
nodes:
  image: {type: EmptyImage, with: {width: 8, height: 4, color: "{{ color }}"}}
  inverted: {type: ImageInvert, in: {image: image}}
  look: {type: PreviewImage, in: {images: inverted}}
  save: {type: SaveImage, in: {images: image}, with: {filename_prefix: "kept-{{ color }}"}}
"""


def test_previews_are_written_apart_every_run_and_never_cached(cli, workflow, tmp_path):
    path = workflow(WORKFLOW)
    out, cache = tmp_path / "out", tmp_path / "cache"
    for attempt in range(2):
        r = cli("run", path, "--out", out, "--cache-dir", cache)
        assert r.code == 0, r.err
        manifest = json.loads((out / "run.json").read_text())
        looks = [n for n in manifest["nodes"] if n["id"] == "look"]
        assert [n["status"] for n in looks] == ["executed", "executed"], attempt  # also when all else is cached
        assert all(n["outputs"] == [] and len(n["previews"]) == 1 for n in looks)
        saves = [n for n in manifest["nodes"] if n["id"] == "save"]
        assert [n["status"] for n in saves] == (["executed"] * 2 if attempt == 0 else ["cached"] * 2)
    previews = sorted(p.relative_to(out).as_posix() for p in (out / "previews").iterdir())
    assert previews == sorted(n["previews"][0] for n in looks) and all(p.startswith("previews/preview") for p in previews)
    assert not any(p.name.startswith("preview") for p in out.iterdir() if p.is_file())
    # the contact sheet holds the saved images only
    assert (out / "contact-save.png").is_file() and not (out / "contact-look.png").exists()
    r = cli("plan", path, "--cache-dir", cache)
    assert "a preview: never cached" in r.out
