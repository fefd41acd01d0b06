"""Inpainting, outpainting and edit conditioning: the pixel preparation of VAEEncodeForInpaint and
InpaintModelConditioning (fixed numbers), the extra channels of 9-channel and 8-channel models
(ComfyUI's concat_cond), differential diffusion's per-step mask, bad masks, and renders of tiny
inpainting and instruct-pix2pix checkpoints against diffusers' pipelines."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from flowrun.diffusion import inpaint
from flowrun.diffusion.concat import BLANK_INPAINT_LATENT, concat_channels, resize_to_batch_size
from flowrun.diffusion.differential import DifferentialMask
from flowrun.errors import NodeError
from flowrun.nodes.inpaint import (DifferentialDiffusionParams, EncodeForInpaintParams, InpaintConditioningParams,
                                   differential_diffusion, inpaint_model_conditioning,
                                   instruct_pix_to_pix_conditioning, vae_encode_for_inpaint)
from flowrun.nodes.registry import NoParams
from flowrun.values import CondEntry, Conditioning

CIRCLE = ROOT / "workflows" / "inputs" / "red-circle.png"


def _with_in_channels(model, n):
    return dataclasses.replace(model, unet=type("U", (), {"config": type("C", (), {"in_channels": n})()})())


def test_grow_is_a_box_reaching_one_further_down_and_right():
    mask = torch.zeros(1, 1, 10, 10)
    mask[0, 0, 4, 4] = 0.6  # rounded first
    rows = lambda m: torch.nonzero(m[0, 0].sum(1)).flatten().tolist()  # noqa: E731
    assert rows(inpaint.grow(mask, 6)) == [2, 3, 4, 5, 6, 7]  # padding 3: i - 3 .. i + 2 covers 4
    assert rows(inpaint.grow(mask, 3)) == [3, 4, 5]
    assert inpaint.grow(mask, 6).shape == (1, 1, 10, 10) and inpaint.grow(mask, 6).max() == 1
    assert torch.equal(inpaint.grow(mask, 0), mask)


def test_masked_pixels_are_grey_and_the_mask_is_stretched_and_cropped():
    pixels = np.random.default_rng(0).random((1, 20, 20, 4), dtype=np.float32)  # alpha dropped
    mask = np.zeros((10, 10), np.float32)
    mask[:5] = 1  # the top half, at half the image's size
    stretched = inpaint.mask_to_image(mask, 20, 20)
    assert stretched.shape == (1, 1, 20, 20)
    cropped, m = inpaint.crop_to_cell(pixels, stretched, 8)  # 20 -> 16, offset 2
    assert cropped.shape == (1, 16, 16, 3) and m.shape == (1, 1, 16, 16)
    assert torch.equal(cropped, torch.from_numpy(pixels[:, 2:18, 2:18, :3]))
    grey = inpaint.grey_masked(cropped, m)
    assert torch.all(grey[0, :7] == 0.5) and torch.equal(grey[0, 9:], cropped[0, 9:])
    with pytest.raises(ValueError, match=r"3 masks for 2 image\(s\); give 1 or 2 masks"):
        inpaint.check_mask_batch(torch.zeros(3, 1, 4, 4), 2)


def test_resize_to_batch_size_is_comfyuis():
    t = torch.arange(3.0).view(3, 1)
    assert resize_to_batch_size(t, 6).flatten().tolist() == [0, 0, 1, 1, 2, 2]
    assert resize_to_batch_size(t, 2).flatten().tolist() == [0, 2]
    assert resize_to_batch_size(t[:1], 4).shape[0] == 1  # one row broadcasts


def test_inpainting_channels_follow_comfyui(tiny_bundle):
    nine = _with_in_channels(tiny_bundle[0], 9)
    scale = nine.latent_scale
    latent = torch.randn(2, 4, 8, 8)
    plain = CondEntry(torch.zeros(1, 2, 4))
    blank = concat_channels(nine, plain, latent, None)  # nothing to go by: paint everything on a blank image
    assert blank.shape == (1, 5, 8, 8) and torch.all(blank[:, 0] == 1)
    assert torch.allclose(blank[0, 1:, 3, 3], torch.tensor(BLANK_INPAINT_LATENT))
    mask = torch.zeros(2, 4, 8, 8)
    mask[:, :, 2:5] = 1
    from_mask = concat_channels(nine, plain, latent, mask)  # the sampler's noise mask and latent
    assert torch.equal(from_mask[:, :1], mask[:, :1]) and torch.equal(from_mask[:, 1:], latent)
    # InpaintModelConditioning's: the mask at pixel size, rounded after a bilinear resize; the latent scaled
    soft = torch.zeros(1, 1, 64, 64)
    soft[:, :, :, :20] = 0.7
    source = torch.randn(1, 4, 8, 8)
    own = concat_channels(nine, CondEntry(torch.zeros(1, 2, 4), concat_latent=source, concat_mask=soft), latent, None)
    assert own.shape == (1, 5, 8, 8)  # one row stands for the batch
    # bilinear without antialiasing reads pixels 3.5, 11.5, 19.5 ...: 0.7, 0.7, 0.35 -> rounded 1, 1, 0
    assert own[0, 0, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert torch.allclose(own[0, 1:], source[0] * scale)
    # a latent of another aspect: centre-cropped to the sampled one's, then resized
    wide = torch.arange(4 * 8 * 16.0).view(1, 4, 8, 16)
    cropped = concat_channels(nine, CondEntry(torch.zeros(1, 2, 4), concat_latent=wide, concat_mask=soft), latent, None)
    assert torch.allclose(cropped[0, 1:], wide[0, :, :, 4:12] * scale)
    assert concat_channels(tiny_bundle[0], plain, latent, mask) is None  # a 4-channel model takes none


def test_instruct_pix2pix_channels_are_the_unscaled_source(tiny_bundle):
    eight = _with_in_channels(tiny_bundle[0], 8)
    latent = torch.randn(1, 4, 8, 8)
    source = torch.randn(1, 4, 8, 8)
    assert torch.equal(concat_channels(eight, CondEntry(torch.zeros(1, 2, 4), concat_latent=source), latent, None), source)
    assert torch.equal(concat_channels(eight, CondEntry(torch.zeros(1, 2, 4)), latent, None), torch.zeros(1, 4, 8, 8))


def _image():
    return (np.asarray(Image.open(CIRCLE), dtype=np.float32) / 255.0)[None]


def test_vae_encode_for_inpaint(tiny_bundle):
    from flowrun.diffusion.vae import encode

    vae = tiny_bundle[2]
    pixels = _image()
    mask = np.zeros((1, 32, 32), np.float32)  # half the image's size: stretched to it, as ComfyUI does
    mask[:, 8:24, 8:24] = 1
    out = vae_encode_for_inpaint(EncodeForInpaintParams(grow_mask_by=6), None, pixels=pixels, vae=vae, mask=mask)
    full = np.kron(mask, np.ones((2, 2), np.float32))
    grey = pixels.copy()
    grey[0, full[0] == 1, :] = 0.5
    assert torch.equal(out.samples, encode(vae, grey))
    assert out.noise_mask.shape == (1, 1, 64, 64)
    rows = torch.nonzero(out.noise_mask[0, 0].sum(1)).flatten()
    assert (rows.min().item(), rows.max().item()) == (14, 50)  # 16..47 grown 2 up, 3 down (the even box)
    with pytest.raises(NodeError, match=r"2 masks for 1 image\(s\); give one mask"):
        vae_encode_for_inpaint(EncodeForInpaintParams(), None, pixels=pixels, vae=vae, mask=np.zeros((2, 64, 64)))


def test_inpaint_model_conditioning_and_pix2pix_carry_latents(tiny_bundle):
    from flowrun.diffusion.vae import encode

    vae = tiny_bundle[2]
    pixels = _image()
    cond = Conditioning([CondEntry(torch.zeros(1, 2, 4))])
    mask = np.zeros((1, 64, 64), np.float32)
    mask[:, :32] = 1
    out = inpaint_model_conditioning(InpaintConditioningParams(noise_mask=False), None, positive=cond, negative=cond,
                                     vae=vae, pixels=pixels, mask=mask)
    assert out["latent"].noise_mask is None and torch.equal(out["latent"].samples, encode(vae, pixels))
    grey = pixels.copy()
    grey[:, :32] = 0.5
    for side in ("positive", "negative"):
        entry = out[side][0]
        assert torch.equal(entry.concat_latent, encode(vae, grey)) and torch.equal(entry.concat_mask[0], torch.from_numpy(mask))
    with_mask = inpaint_model_conditioning(InpaintConditioningParams(), None, positive=cond, negative=cond, vae=vae,
                                           pixels=pixels, mask=mask)
    assert torch.equal(with_mask["latent"].noise_mask[0], torch.from_numpy(mask))
    small = mask[:, ::2, ::2]  # half the image's size: stretched to it (bilinear), as ComfyUI does
    stretched = inpaint_model_conditioning(InpaintConditioningParams(), None, positive=cond, negative=cond, vae=vae,
                                           pixels=pixels, mask=small)
    assert torch.equal(stretched["positive"][0].concat_mask, inpaint.mask_to_image(small, 64, 64))
    assert stretched["positive"][0].concat_mask.shape == (1, 1, 64, 64)
    with pytest.raises(NodeError, match=r"input 'mask': 3 masks for 1 image\(s\)"):
        inpaint_model_conditioning(InpaintConditioningParams(), None, positive=cond, negative=cond, vae=vae,
                                   pixels=pixels, mask=np.zeros((3, 64, 64), np.float32))
    edit = instruct_pix_to_pix_conditioning(NoParams(), None, positive=cond, negative=cond, vae=vae, pixels=pixels)
    assert torch.equal(edit["negative"][0].concat_latent, encode(vae, pixels))
    assert torch.equal(edit["latent"].samples, torch.zeros(1, 4, 8, 8))


def test_differential_mask_thresholds_by_the_steps_left(tiny_bundle):
    model = tiny_bundle[0]
    sigmas = torch.tensor([14.6146, 2.9183, 0.9324, 0.0292, 0.0])  # normal, 4 steps: timesteps 999, 666, 333, 0
    mask = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0])
    at = lambda s, strength=1.0: DifferentialMask(strength)(torch.tensor([s]), mask, model, sigmas).tolist()  # noqa: E731
    assert at(14.6146) == [0, 0, 0, 0, 1]  # threshold 1 at the first step
    assert at(2.9183) == [0, 0, 0, 1, 1] and at(0.9324) == [0, 0, 1, 1, 1]  # 666 / 999, 333 / 999
    assert at(0.0292) == [1, 1, 1, 1, 1]  # the schedule's smallest sigma: threshold 0
    assert at(2.9183, 0.5) == pytest.approx([0, 0.15, 0.25, 0.85, 1])
    patched = differential_diffusion(DifferentialDiffusionParams(strength=0.5), None, model=model)
    assert patched.denoise_mask_function == DifferentialMask(0.5) and model.denoise_mask_function is None


def test_differential_diffusion_repaints_grey_later_than_white(tiny_bundle):
    """With a mask of white, grey (0.5) and black columns, 4 steps: white is repainted from the first step,
    grey from the third (threshold 333 / 999), black only at the last (threshold 0, a step that barely
    moves it): the change from the start latent falls in that order, and grey is no longer a blend."""
    from flowrun.diffusion.clip import encode as encode_text
    from flowrun.diffusion.ksampler import ksample
    from flowrun.values import Latent

    model, clip = tiny_bundle[0], tiny_bundle[1]
    pos, neg = encode_text(clip, "a blue square"), encode_text(clip, "")
    start = torch.randn(1, 4, 8, 9, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 8, 9)
    mask[..., :3], mask[..., 3:6] = 1.0, 0.5

    def run(m):
        return ksample(m, seed=1, steps=4, cfg=5.0, sampler_name="euler", scheduler="normal", positive=pos,
                       negative=neg, latent=Latent(start, noise_mask=mask)).samples

    soft = run(model.with_denoise_mask_function(DifferentialMask()))
    change = [(soft - start)[..., c:c + 3].abs().mean().item() for c in (0, 3, 6)]
    assert change[0] > change[1] > change[2] > 1e-4, change
    plain = run(model)  # the soft mask as a blend every step: black is never repainted
    assert torch.allclose(plain[..., 6:], start[..., 6:], atol=1e-6)
    assert not torch.allclose(soft[..., 3:6], plain[..., 3:6])


def _render(yaml_text: str, models: Path, tmp_path: Path) -> np.ndarray:
    from flowrun import api
    from flowrun.settings import Settings

    (tmp_path / "inputs").mkdir(exist_ok=True)
    (tmp_path / "inputs" / "red-circle.png").write_bytes(CIRCLE.read_bytes())
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml_text)
    result = api.run(api.load(wf), Settings(out_dir=tmp_path / "out", use_cache=False, models_dirs=(str(models),),
                                            device="cpu"))
    return np.asarray(Image.open(result.files[0])).astype(int)


GRAPH = """
version: 1
name: parity
nodes:
  ckpt: {{type: CheckpointLoaderSimple, with: {{ckpt_name: {ckpt}}}}}
  image: {{type: LoadImage, with: {{image: inputs/red-circle.png}}}}
  blank: {{type: SolidMask, with: {{value: 0.0, width: 64, height: 64}}}}
  hole: {{type: SolidMask, with: {{value: 1.0, width: 32, height: 32}}}}
  mask: {{type: MaskComposite, in: {{destination: blank, source: hole}}, with: {{x: 8, y: 16, operation: add}}}}
  pos: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: a blue square}}}}
  neg: {{type: CLIPTextEncode, in: {{clip: ckpt.clip}}, with: {{text: ""}}}}
  {cond}
  empty: {{type: EmptyLatentImage, with: {{width: 64, height: 64}}}}
  sample: {{type: KSampler, in: {{model: ckpt.model, positive: cond.positive, negative: cond.negative,
           latent_image: {latent}}}, with: {{seed: 42, steps: 8, cfg: 7.0, sampler_name: euler, scheduler: normal}}}}
  decode: {{type: VAEDecode, in: {{samples: sample, vae: ckpt.vae}}}}
  save: {{type: SaveImage, in: {{images: decode}}, with: {{filename_prefix: out}}}}
"""
INPAINT_COND = ("cond: {type: InpaintModelConditioning, in: {positive: pos, negative: neg, vae: ckpt.vae, "
                "pixels: image.image, mask: mask}, with: {noise_mask: false}}")
PIX2PIX_COND = ("cond: {type: InstructPixToPixConditioning, in: {positive: pos, negative: neg, vae: ckpt.vae, "
                "pixels: image.image}}")


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  timestep_spacing="linspace", steps_offset=1)


def test_a_9_channel_checkpoint_matches_diffusers_inpaint_pipeline(tmp_path):
    """A tiny inpainting checkpoint through InpaintModelConditioning (noise_mask off) and KSampler from an
    empty latent, and through StableDiffusionInpaintPipeline with EulerDiscreteScheduler at strength 1:
    within one 8-bit level. diffusers neither blends the unmasked latent back each step for 9-channel
    models nor starts from the image's latent at strength 1, hence noise_mask off and an empty latent;
    it samples the masked image's latent from the VAE's posterior, so it is given the posterior mean
    (what ComfyUI and flowrun encode)."""
    import tiny_model
    from diffusers import StableDiffusionInpaintPipeline

    from flowrun.diffusion.checkpoint import tokenizer

    tiny_model.write_inpaint(tmp_path / "models")
    _, unet, vae, text = tiny_model.build(0, in_channels=9)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer(), unet=unet,
                                          scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(CIRCLE).convert("RGB")
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 8:40] = 1
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        masked = vae.encode(pixels * torch.from_numpy(mask < 0.5)).latent_dist.mode() * vae.config.scaling_factor
    theirs = pipe("a blue square", image=image, mask_image=Image.fromarray((mask * 255).astype(np.uint8)),
                  masked_image_latents=masked, negative_prompt="", height=64, width=64, num_inference_steps=8,
                  guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(42), output_type="np").images[0]
    theirs = np.clip(255 * theirs, 0, 255).astype(np.uint8).astype(int)
    ours = _render(GRAPH.format(ckpt="tiny-inpainting", cond=INPAINT_COND, latent="empty"), tmp_path / "models", tmp_path)
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1, f"max difference {diff.max()} levels"
    # the channels matter: without them (a blank image, inpaint everything) the render is another one
    blank = _render(GRAPH.format(ckpt="tiny-inpainting", cond=INPAINT_COND.replace("InpaintModelConditioning",
                    "InstructPixToPixConditioning").replace(", mask: mask}, with: {noise_mask: false}", "}"),
                                 latent="empty"), tmp_path / "models", tmp_path)
    assert np.abs(blank - theirs).max() > 8


def test_an_8_channel_checkpoint_matches_diffusers_instruct_pix2pix_pipeline(tmp_path):
    """InstructPixToPixConditioning and KSampler (ordinary cfg, the source latent on both prompts) equal
    StableDiffusionInstructPix2PixPipeline at image_guidance_scale 1, where its three-way guidance is
    ordinary cfg between (prompt, image) and ("", image): within one 8-bit level."""
    import tiny_model
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from flowrun.diffusion.checkpoint import tokenizer

    tiny_model.write_inpaint(tmp_path / "models", "tiny-pix2pix", in_channels=8)
    _, unet, vae, text = tiny_model.build(0, in_channels=8)
    pipe = StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer(), unet=unet,
                                                  scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a blue square", image=Image.open(CIRCLE).convert("RGB"), negative_prompt="", num_inference_steps=8,
                  guidance_scale=7.0, image_guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(42),
                  output_type="np").images[0]
    theirs = np.clip(255 * theirs, 0, 255).astype(np.uint8).astype(int)
    ours = _render(GRAPH.format(ckpt="tiny-pix2pix", cond=PIX2PIX_COND, latent="cond.latent"), tmp_path / "models",
                   tmp_path)
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1, f"max difference {diff.max()} levels"


@pytest.mark.parametrize("shape", ["inpainting", "outpainting"])
def test_comfyui_graphs_import_validate_and_run(shape, cli, tiny_models, tmp_path):
    """Both forms of each hand-written graph import, validate and render the same pixels (the second from the
    disk cache the first wrote)."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "red-circle.png").write_bytes(CIRCLE.read_bytes())
    pixels = []
    for form in ("ui", "api"):
        wf = tmp_path / f"{shape}-{form}.yaml"
        assert cli("import", ROOT / "tests" / "comfyui" / f"{shape}-{form}.json", "--out", wf).code == 0
        assert cli("validate", wf, "--models-dir", tiny_models).code == 0
        # one disk cache: the second form's run reads what the first wrote (conditionings with latents too)
        r = cli("run", wf, "--models-dir", tiny_models, "--out", tmp_path / form, "--device", "cpu", "--cache-dir",
                tmp_path / "cache")
        assert r.code == 0, r.err
        with Image.open(tmp_path / form / f"{shape}.png") as im:
            pixels.append(np.asarray(im))
    assert pixels[0].shape == ((64, 96, 3) if shape == "outpainting" else (64, 64, 3))
    assert np.array_equal(*pixels)


def test_a_mask_batch_that_cannot_pair_with_the_images_names_node_and_field(cli, workflow, tiny_models, tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "red-circle.png").write_bytes(CIRCLE.read_bytes())
    wf = workflow("""
        version: 1
        name: bad-mask
        nodes:
          ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: flowrun-tiny}}
          image: {type: LoadImage, with: {image: inputs/red-circle.png}}
          two: {type: ImageBatch, in: {image1: image.image, image2: image.image}}
          masks: {type: ImageToMask, in: {image: two}, with: {channel: red}}
          encode:
            type: VAEEncodeForInpaint
            in: {pixels: image.image, vae: ckpt.vae, mask: masks}
          decode: {type: VAEDecode, in: {samples: encode, vae: ckpt.vae}}
          save: {type: SaveImage, in: {images: decode}}
        """)
    r = cli("run", wf, "--models-dir", tiny_models, "--out", tmp_path / "o", "--device", "cpu", "--no-cache")
    assert r.code == 1 and "Traceback" not in r.err, r.err
    # batch sizes are known only while running: flowrun's run-time errors name the node, not a line
    assert "node 'encode' (VAEEncodeForInpaint) failed: input 'mask': 2 masks for 1 image(s); give one mask" in r.err


def test_ddim_blends_the_kept_region_with_noise_of_seed_plus_one(tiny_bundle):
    """ComfyUI's ddim is Euler whose inpainting blend draws its own noise (CPU randn of seed + 1): the same
    as euler without a mask, another render with one, and the kept region comes out unchanged either way."""
    from flowrun.diffusion.clip import encode as encode_text
    from flowrun.diffusion.ksampler import ksample
    from flowrun.values import Latent

    model, clip = tiny_bundle[0], tiny_bundle[1]
    pos, neg = encode_text(clip, "a blue square"), encode_text(clip, "")
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1

    def run(sampler, noise_mask):
        return ksample(model, seed=4, steps=3, cfg=5.0, sampler_name=sampler, scheduler="normal", positive=pos,
                       negative=neg, latent=Latent(start, noise_mask=noise_mask)).samples

    assert torch.equal(run("ddim", None), run("euler", None))
    ddim, euler = run("ddim", mask), run("euler", mask)
    assert not torch.allclose(ddim[..., 2:6, 2:6], euler[..., 2:6, 2:6])
    for out in (ddim, euler):
        assert torch.allclose(out[..., :2, :], start[..., :2, :], atol=1e-6)


def test_cells_sampled_together_each_meet_their_own_images(tiny_bundle):
    """Two seeds in one batched call (a sweep's cells), a batch of 2 images with their own masked latents
    and masks on a 9-channel model: each cell renders as it does alone."""
    import tiny_model

    from flowrun.diffusion.clip import encode as encode_text
    from flowrun.diffusion.ksampler import ksample, ksample_batch
    from flowrun.diffusion.noise import SeedNoise
    from flowrun.values import Latent

    model = dataclasses.replace(tiny_bundle[0], unet=tiny_model.build(0, in_channels=9)[1])
    source = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, :32], mask[1, :, :, :32] = 1, 1
    carry = lambda c: c.map(lambda e: e.replace(concat_latent=source, concat_mask=mask))  # noqa: E731
    pos, neg = carry(encode_text(tiny_bundle[1], "a blue square")), carry(encode_text(tiny_bundle[1], ""))
    kw = dict(steps=2, sampler_name="euler", scheduler="normal", positive=pos, negative=neg,
              latent=Latent(torch.zeros(2, 4, 8, 8)))
    together = ksample_batch(model, noise=SeedNoise([1, 2]), cfgs=[5.0, 5.0], **kw)
    for seed, out in zip((1, 2), together):
        assert torch.allclose(out.samples, ksample(model, seed=seed, cfg=5.0, **kw).samples, atol=1e-4)
