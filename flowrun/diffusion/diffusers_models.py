"""The diffusers model classes flowrun builds, imported from their own modules."""

from __future__ import annotations

from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # noqa: F401
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # noqa: F401
