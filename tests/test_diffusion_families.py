"""SD2 (OpenCLIP text tower, v-prediction) and SDXL (two text encoders, pooled and size conditioning) run
end to end at toy width, through the same single-file loader as SD1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from flowrun import api
from flowrun.settings import Settings

WORKFLOW = """\
version: 1
params: {ckpt: tiny-sd2, seed: 4}
nodes:
  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: "{{ ckpt }}"}}
  skip: {type: CLIPSetLastLayer, in: {clip: ckpt.clip}, with: {stop_at_clip_layer: -1}}
  pos: {type: CLIPTextEncode, in: {clip: skip}, with: {text: "a (blue:1.2) square"}}
  neg: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: ""}}
  latent: {type: EmptyLatentImage, with: {width: 64, height: 64, batch_size: 2}}
  sample:
    type: KSampler
    in: {model: ckpt.model, positive: pos, negative: neg, latent_image: latent}
    with: {seed: "{{ seed }}", steps: 6, cfg: 5.0, sampler_name: dpmpp_2m_sde, scheduler: karras}
  decode: {type: VAEDecode, in: {samples: sample, vae: ckpt.vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: "{{ ckpt }}"}}
"""


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    import tiny_model

    root = tmp_path_factory.mktemp("family-models")
    for family in ("sd2", "sdxl"):
        tiny_model.write_family(root, family)
    return root


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_family_renders(family, family_models, tmp_path):
    from flowrun.spec.sweep import Overrides

    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    settings = Settings(out_dir=tmp_path / "out", use_cache=False, models_dirs=(str(family_models),), device="cpu")
    result = api.run(api.load(tmp_path / "wf.yaml", Overrides.parse(sets=[f"ckpt=tiny-{family}"])), settings)
    names = sorted(p.name for p in result.files)
    assert names == [f"tiny-{family}-00.png", f"tiny-{family}-01.png"]
    a, b = (np.asarray(Image.open(p)) for p in sorted(result.files))
    assert a.shape == (64, 64, 3) and not np.array_equal(a, b)  # two images of one batch, different noise
    again = api.run(api.load(tmp_path / "wf.yaml", Overrides.parse(sets=[f"ckpt=tiny-{family}"])),
                    Settings(out_dir=tmp_path / "again", use_cache=False, models_dirs=(str(family_models),), device="cpu"))
    assert [p.read_bytes() for p in sorted(result.files)] == [p.read_bytes() for p in sorted(again.files)]


def test_family_specific_conditioning(family_models):
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.clip import encode

    sd2 = load_bundle(family_models / "checkpoints" / "tiny-sd2.safetensors", "sd2")
    assert sd2[0].sampling.prediction_type == "v_prediction" and sd2[1].family == "sd2"
    entry = encode(sd2[1], "a square")[0]
    assert entry.embedding.shape == (1, 77, 48) and entry.pooled_output is None
    xl = load_bundle(family_models / "checkpoints" / "tiny-sdxl.safetensors", "xl")
    entry = encode(xl[1], "a square")[0]
    assert entry.embedding.shape == (1, 77, 80) and entry.pooled_output.shape == (1, 48)
    config = json.loads((family_models / "checkpoints" / "tiny-sdxl.json").read_text())
    assert config["family"] == "sdxl"
