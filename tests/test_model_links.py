"""Model folders follow the links people make (Hugging Face cache snapshots, linked files, linked
folders), while a name written in a workflow still cannot leave its folder; `validate` and `plan` look
models up like `run` and report every missing file at once."""

from __future__ import annotations

import hashlib
import os
import shutil

from test_hostile_paths import CHECKPOINT

from flowrun.files import FileLookup, available_names


def _project(tmp_path, name: str):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    path = project / "wf.yaml"
    path.write_text(CHECKPOINT.format(name=name))
    return project, path


def _hf_snapshot(source, hub):
    """A Hugging Face cache entry for the diffusers folder `source`: every file a blob named by its hash
    under blobs/, and snapshots/<revision>/ a tree of relative links into ../../blobs/."""
    repo = hub / "models--flowrun--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def test_a_diffusers_folder_in_a_hugging_face_cache_snapshot_loads(cli, tmp_path, tiny_models):
    snapshot = _hf_snapshot(tiny_models / "checkpoints" / "tiny-diffusers", tmp_path / "hub")
    assert (snapshot / "model_index.json").is_symlink()
    project, path = _project(tmp_path, "tiny-hf")
    (project / "models" / "checkpoints").mkdir(parents=True)
    (project / "models" / "checkpoints" / "tiny-hf").symlink_to(snapshot)
    r = cli("run", path, "--out", tmp_path / "out")
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "out.png").is_file()
    lookup = FileLookup(project)
    assert "tiny-hf" in available_names("checkpoints", lookup.model_roots())
    # the folder's fingerprint is its content: the same as the plain folder's
    plain = FileLookup(tiny_models.parent, (str(tiny_models),)).fingerprint("checkpoints", "tiny-diffusers")
    assert lookup.fingerprint("checkpoints", "tiny-hf") == plain


def test_a_linked_single_file_loads_with_the_sidecar_beside_its_target(cli, tmp_path, tiny_models):
    shared = tmp_path / "shared-drive"
    shared.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(tiny_models / "checkpoints" / f"tiny{suffix}", shared / f"tiny{suffix}")
    project, path = _project(tmp_path, "linked")
    (project / "models" / "checkpoints").mkdir(parents=True)
    (project / "models" / "checkpoints" / "linked.safetensors").symlink_to(shared / "tiny.safetensors")
    r = cli("run", path, "--out", tmp_path / "out")
    assert r.code == 0, r.err


def test_a_linked_checkpoints_folder_loads(cli, tmp_path, tiny_models):
    project, path = _project(tmp_path, "tiny")
    (project / "models").mkdir()
    (project / "models" / "checkpoints").symlink_to(tiny_models / "checkpoints")
    r = cli("run", path, "--out", tmp_path / "out")
    assert r.code == 0, r.err


def test_a_link_loop_in_a_models_folder_ends(tmp_path):
    folder = tmp_path / "models" / "checkpoints" / "family"
    folder.mkdir(parents=True)
    (folder / "a.safetensors").write_bytes(b"x")
    (folder / "again").symlink_to(folder.parent)  # a loop back up
    names = available_names("checkpoints", [tmp_path / "models"])
    assert names.count("family/a") == 1


def test_a_name_in_the_workflow_still_cannot_leave_its_folder(cli, tmp_path, tiny_models):
    for name, fragment in [("../x", "'..'"), ("/etc/passwd", "absolute"), ("C:x", "absolute")]:
        project, path = _project(tmp_path, name)
        r = cli("validate", path, "--models-dir", tiny_models)
        assert r.code == 2 and fragment in r.err and "field 'ckpt_name'" in r.err, (name, r.err)


EVERYTHING_MISSING = """
version: 1
nodes:
  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: no-such-model}}
  lora: {type: LoraLoader, in: {model: ckpt.model, clip: ckpt.clip}, with: {lora_name: no-such-lora}}
  image: {type: LoadImage, with: {image: no-such-image.png}}
  encode: {type: VAEEncode, in: {pixels: image.image, vae: ckpt.vae}}
  positive: {type: CLIPTextEncode, in: {clip: lora.clip}, with: {text: a}}
  sample: {type: KSampler, in: {model: lora.model, positive: positive, negative: positive, latent_image: encode}}
  decode: {type: VAEDecode, in: {samples: sample, vae: ckpt.vae}}
  save: {type: SaveImage, in: {images: decode}}
"""


def test_validate_and_plan_report_every_missing_file_at_once(cli, workflow, tmp_path):
    path = workflow(EVERYTHING_MISSING)
    for command in ("validate", "plan"):
        r = cli(command, path)
        assert r.code == 2, r.err
        assert r.err.count("error[file]") == 3, r.err
        assert f"{path}:3:" in r.err and "no checkpoint named 'no-such-model'" in r.err, r.err
        assert f"{path}:4:" in r.err and "no lora named 'no-such-lora'" in r.err, r.err
        assert f"{path}:5:" in r.err and "no file 'no-such-image.png'" in r.err, r.err
    r = cli("run", path, "--out", tmp_path / "out")
    assert r.code == 2 and r.err.count("error[file]") == 3, r.err


def test_validate_takes_the_models_folder_like_run(cli, tmp_path, tiny_models):
    _, path = _project(tmp_path, "tiny")
    r = cli("validate", path)
    assert r.code == 2 and "no checkpoint named 'tiny'" in r.err and "field 'ckpt_name'" in r.err, r.err
    r = cli("validate", path, "--models-dir", tiny_models)
    assert r.code == 0, r.err
