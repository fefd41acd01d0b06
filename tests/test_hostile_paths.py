"""Every path a workflow names stays inside its folder: symbolic links that point outside the output or
input folder are refused, and nothing is read or written through them. Model folders are the exception
(configured by the person running flowrun, and trusted): tests/test_model_links.py."""

from __future__ import annotations

import shutil

from conftest import ROOT

SAVE = """
version: 1
nodes:
  text: {{type: Text, with: {{text: hello}}}}
  out: {{type: WriteText, in: {{text: text}}, with: {{filename_prefix: "{prefix}"}}}}
"""

LOAD = """
version: 1
nodes:
  image: {{type: LoadImage, with: {{image: "{name}"}}}}
  inverted: {{type: ImageInvert, in: {{image: image.image}}}}
  save: {{type: SaveImage, in: {{images: inverted}}, with: {{filename_prefix: out}}}}
"""

CHECKPOINT = """
version: 1
nodes:
  ckpt: {{type: CheckpointLoaderSimple, with: {{ckpt_name: "{name}"}}}}
  empty: {{type: EmptyLatentImage, with: {{width: 64, height: 64}}}}
  decode: {{type: VAEDecode, in: {{samples: empty, vae: ckpt.vae}}}}
  save: {{type: SaveImage, in: {{images: decode}}, with: {{filename_prefix: out}}}}
"""


def test_output_prefix_through_a_link_outside_is_refused(cli, workflow, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "escape").symlink_to(outside)
    r = cli("run", workflow(SAVE.format(prefix="escape/x")), "--out", out)
    assert r.code == 1 and "leads outside" in r.err and "node 'out'" in r.err, r.err
    assert list(outside.iterdir()) == []


def test_output_prefix_through_a_link_inside_is_allowed(cli, workflow, tmp_path):
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    (out / "alias").symlink_to(out / "real")
    r = cli("run", workflow(SAVE.format(prefix="alias/x")), "--out", out)
    assert r.code == 0, r.err
    assert (out / "real" / "x.txt").read_text().startswith("hello")


def test_input_image_link_outside_is_refused(cli, workflow, tmp_path):
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    shutil.copy(ROOT / "workflows" / "inputs" / "red-circle.png", secret)
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "innocent.png").symlink_to(secret)
    path = folder / "wf.yaml"
    path.write_text(LOAD.format(name="innocent.png"))
    r = cli("run", path, "--out", tmp_path / "out")
    assert r.code == 2 and "leads outside" in r.err, r.err
    assert f"{path}:4:" in r.err and "node 'image', field 'image'" in r.err, r.err
    assert not (tmp_path / "out").exists()


def test_input_names_with_nul_dotdot_or_absolute_are_refused(cli, workflow, tmp_path):
    for name, fragment in [("../x.png", "'..'"), ("/etc/passwd", "absolute"), ("a\\x00b.png", "NUL")]:
        r = cli("validate", workflow(LOAD.format(name=name)))
        assert r.code == 2 and fragment in r.err, (name, r.err)


def test_checkpoint_link_inside_the_models_folder_is_allowed(cli, tmp_path, tiny_models):
    project = tmp_path / "project"
    ckpts = project / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_models / "checkpoints" / f"tiny{suffix}", ckpts / f"tiny{suffix}")
        (ckpts / f"alias{suffix}").symlink_to(ckpts / f"tiny{suffix}")
    path = project / "wf.yaml"
    path.write_text(CHECKPOINT.format(name="alias"))
    r = cli("run", path, "--out", tmp_path / "out")
    assert r.code == 0, r.err
