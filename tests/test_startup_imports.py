"""Loading a checkpoint imports the diffusers and transformers modules that define its models, not the
package trees around them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys
from flowrun.diffusion.checkpoint import load_bundle
from flowrun.diffusion.determinism import configure
import torch

configure()
model, clip, vae = load_bundle(__import__("pathlib").Path(sys.argv[1]), "t")
model.unet, clip.models, vae.model  # every part built
print(json.dumps({"modules": sorted(sys.modules), "deterministic": torch.are_deterministic_algorithms_enabled(),
                  "warn_only": torch.is_deterministic_algorithms_warn_only_enabled()}))
"""


def test_a_checkpoint_load_imports_only_the_model_modules(tiny_models):
    r = subprocess.run([sys.executable, "-c", CHILD, str(tiny_models / "checkpoints" / "tiny.safetensors")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    modules = set(seen["modules"])
    assert {"diffusers.models.unets.unet_2d_condition", "diffusers.models.autoencoders.autoencoder_kl",
            "transformers.models.clip.modeling_clip"} <= modules
    # the packages' __init__ would import every model class diffusers has: video, audio, 3D
    assert not {"diffusers.models.transformers.transformer_flux", "diffusers.models.autoencoders.autoencoder_kl_wan",
                "diffusers.models.unets.unet_3d_condition"} & modules
    assert seen["deterministic"] and seen["warn_only"]
