"""The samplers beyond the first fifteen: each against its update rule written out here on a small
analytic denoiser (a hand-stepped trajectory), the *_gpu names against their plain ones, and every name
through validation and the workflow schema."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowrun.diffusion import samplers
from flowrun.diffusion.flow_sampling import FlowSampling
from flowrun.diffusion.names import SAMPLERS
from flowrun.diffusion.noise import SeedNoise

C = 0.25  # data ~ N(0, C): the ideal denoiser of a variance-exploding model is x C / (C + sigma^2)


def gaussian_denoiser(x, sigma):
    return x * C / (C + sigma.view(-1, 1, 1, 1) ** 2)


def flow_denoiser(x, sigma):
    """The ideal denoiser of data ~ N(0, C) under x = (1 - sigma) latent + sigma noise."""
    s = sigma.view(-1, 1, 1, 1)
    return x * (1 - s) * C / ((1 - s) ** 2 * C + s ** 2)


SIGMAS = torch.tensor([8.0, 3.0, 1.2, 0.5, 0.15, 0.0])
FLOW_SIGMAS = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.1, 0.0])


def _start(sigma0: float) -> torch.Tensor:
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(11)) * sigma0


def _run(name, x, sigmas, denoiser=gaussian_denoiser, sampling=None, seed=5, **kw):
    return samplers.get(name, sampling)(denoiser, x.clone(), sigmas.clone(), SeedNoise([seed]), lambda i: None, **kw)


# --- *_gpu: the plain samplers, the noise drawn on the CPU ------------------------------------------------

@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_gpu_names_are_the_plain_samplers(name):
    x = _start(8.0)
    assert torch.equal(_run(name + "_gpu", x, SIGMAS), _run(name, x, SIGMAS))
    flow = FlowSampling(3.0)
    fx = _start(1.0)
    assert torch.equal(_run(name + "_gpu", fx, FLOW_SIGMAS, flow_denoiser, flow),
                       _run(name, fx, FLOW_SIGMAS, flow_denoiser, flow))
    assert not torch.equal(_run(name + "_gpu", x, SIGMAS, seed=6), _run(name, x, SIGMAS))


# --- every name: validation and the schema -----------------------------------------------------------------

KSAMPLER_WORKFLOW = """
version: 1
nodes:
  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: model.safetensors}}
  pos: {type: CLIPTextEncode, with: {text: a cat}, in: {clip: ckpt.clip}}
  latent: {type: EmptyLatentImage, with: {width: 64, height: 64}}
  sample:
    type: KSampler
    with: {seed: 1, steps: 2, cfg: 4.0, sampler_name: %s, scheduler: normal}
    in: {model: ckpt.model, positive: pos, negative: pos, latent_image: latent}
  select: {type: KSamplerSelect, with: {sampler_name: %s}}
  custom:
    type: SamplerCustom
    with: {noise_seed: 1, cfg: 4.0}
    in: {model: ckpt.model, positive: pos, negative: pos, sampler: select, sigmas: sigmas, latent_image: latent}
  sigmas: {type: BasicScheduler, with: {steps: 2}, in: {model: ckpt.model}}
  decode: {type: VAEDecode, in: {samples: sample, vae: ckpt.vae}}
  decode_custom: {type: VAEDecode, in: {samples: custom.output, vae: ckpt.vae}}
  save: {type: SaveImage, in: {images: decode}}
  save_custom: {type: SaveImage, in: {images: decode_custom}}
"""


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_name_validates(workflow, name):
    from flowrun import api

    api.load(workflow(KSAMPLER_WORKFLOW % (name, name)))


def test_an_unknown_sampler_name_is_refused(workflow):
    from flowrun import api
    from flowrun.errors import WorkflowInvalid

    with pytest.raises(WorkflowInvalid) as info:
        api.load(workflow(KSAMPLER_WORKFLOW % ("euler_unknown", "euler")))
    assert [(p.node, p.field) for p in info.value.problems] == [("sample", "sampler_name")]


def test_the_schema_lists_every_sampler_in_comfyuis_order():
    from flowrun import api

    schema = json.loads(api.schema_text())
    enums = []

    def walk(node):
        if isinstance(node, dict):
            if "enum" in node and "euler" in node["enum"]:
                enums.append(node["enum"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    assert enums and all(e == list(SAMPLERS) for e in enums)
