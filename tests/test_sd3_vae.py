"""SD3's and Flux's 16-channel autoencoder (no quant convolutions) from VAELoader files in the original and
the diffusers layout: the same decode as diffusers' AutoencoderKL on the same weights; the full-size layout
mapped on the meta device."""

from __future__ import annotations

import pytest
import torch

import tiny_sd3


@pytest.fixture(scope="module")
def vae_files(tmp_path_factory):
    return tiny_sd3.write_vae(tmp_path_factory.mktemp("vae16"))


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_a_16_channel_vae_file_decodes_as_diffusers(vae_files, layout):
    from flowrun.diffusion import vae as vae_ops
    from flowrun.diffusion.components import load_vae

    vae = load_vae(vae_files[layout], "fp")
    reference = tiny_sd3.build_vae()
    assert vae.latent_channels == 16 and vae.model.quant_conv is None and vae.model.post_quant_conv is None
    latent = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = ((reference.decode(latent).sample + 1) / 2).clamp(0, 1).movedim(1, -1).numpy()
    assert vae_ops.decode(vae, latent) == pytest.approx(expected, abs=1e-6)
    image = vae_ops.decode(vae, latent)
    assert vae_ops.encode(vae, image).shape == (1, 16, 4, 4)


def test_the_full_size_16_channel_layout_maps_on_the_meta_device():
    from diffusers import AutoencoderKL

    from flowrun.diffusion.components import build_vae, vae_config
    from flowrun.diffusion.configs import _SD_VAE
    from flowrun.diffusion.ldm_layout import vae_to_ldm

    full = {**_SD_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}
    with torch.device("meta"):
        reference = AutoencoderKL(**full)
    state = {k[len("first_stage_model."):]: v for k, v in vae_to_ldm(reference.state_dict(), full).items()}
    config = vae_config(state, _SD_VAE)  # what VAELoader reads from a file without a sidecar (ae.safetensors)
    assert (config["latent_channels"], config["use_quant_conv"], config["use_post_quant_conv"]) == (16, False, False)
    assert (config["scaling_factor"], config["shift_factor"]) == (1.5305, 0.0609)
    vae = build_vae(state, config, "ae.safetensors")
    assert sum(p.numel() for p in vae.parameters()) == 83_819_683  # SD3's / Flux's autoencoder: 83.8 M
