"""VAELoader's tiny autoencoders (`taesd`, `taesdxl`): the two original files in vae_approx/ load on
diffusers' AutoencoderTiny and decode and encode as the original network does (a reference written here
from the TAESD paper's layout), over unscaled latents as ComfyUI does; missing halves are reported at
validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flowrun import api
from flowrun.errors import WorkflowInvalid
from flowrun.settings import Settings


def _conv(n_in, n_out, **kw):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv = nn.Sequential(_conv(n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


def _encoder():
    down = lambda: [_conv(64, 64, stride=2, bias=False), _Block(64), _Block(64), _Block(64)]  # noqa: E731
    return nn.Sequential(_conv(3, 64), _Block(64), *down(), *down(), *down(), _conv(64, 4))


def _decoder():
    up = lambda: [_Block(64), _Block(64), _Block(64), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]  # noqa: E731
    return nn.Sequential(_Clamp(), _conv(4, 64), nn.ReLU(), *up(), *up(), *up(), _Block(64), _conv(64, 3))


@pytest.fixture(scope="module")
def tiny_vae_models(tiny_models, tmp_path_factory):
    """The tiny models folder plus a TAESD pair (seeded weights) in vae_approx/, and the reference networks."""
    import shutil

    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("taesd-models")
    shutil.copytree(tiny_models, root, dirs_exist_ok=True)
    torch.manual_seed(7)
    encoder, decoder = _encoder().eval(), _decoder().eval()
    (root / "vae_approx").mkdir()
    save_file(encoder.state_dict(), str(root / "vae_approx" / "taesd_encoder.safetensors"))
    save_file(decoder.state_dict(), str(root / "vae_approx" / "taesd_decoder.safetensors"))
    return root, encoder, decoder


WORKFLOW = """\
version: 1
nodes:
  vae: {type: VAELoader, with: {vae_name: taesd}}
  image: {type: EmptyImage, with: {width: 32, height: 24, color: 0xC04020}}
  encode: {type: VAEEncode, in: {pixels: image, vae: vae}}
  decode: {type: VAEDecode, in: {samples: encode, vae: vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: out}}
"""


def test_taesd_decodes_and_encodes_as_the_original(tiny_vae_models, tmp_path):
    from flowrun.diffusion import vae as vae_ops
    from flowrun.diffusion.taesd import load

    root, encoder, decoder = tiny_vae_models
    vae = load("taesd", root / "vae_approx" / "taesd_encoder.safetensors",
               root / "vae_approx" / "taesd_decoder.safetensors", "fp")
    assert vae.downscale == 8
    latent = torch.randn(1, 4, 3, 4) * 5
    with torch.no_grad():
        expected = decoder(latent * 0.18215).clamp(0, 1).movedim(1, -1).numpy()
        pixels = np.random.default_rng(0).random((1, 24, 32, 3), dtype=np.float32)
        expected_latent = encoder(torch.from_numpy(pixels).movedim(-1, 1)) / 0.18215
    np.testing.assert_allclose(vae_ops.decode(vae, latent), expected, atol=1e-5)
    torch.testing.assert_close(vae_ops.encode(vae, pixels), expected_latent, atol=1e-4, rtol=1e-4)

    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    result = api.run(api.load(wf), Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache",
                                            models_dirs=(str(root),), device="cpu"))
    assert result.manifest["status"] == "ok" and len(result.files) == 1


def test_missing_halves_are_reported_at_their_line(tiny_models, tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW.replace("taesd}", "taesdxl}"))
    with pytest.raises(WorkflowInvalid) as err:
        api.load(wf, files=Settings(models_dirs=(str(tiny_models),)))
    text = str(err.value)
    assert "wf.yaml:3:" in text and "vae_name" in text and "taesdxl_encoder" in text and "vae_approx" in text
