"""ComfyUI's closed-form latent, mask and image nodes against numbers worked out by hand from their
definitions, the size mismatches they refuse, and a mask composition run through the CLI and through
ComfyUI graphs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from flowrun.errors import NodeError
from flowrun.execute.context import NodeFiles, RunContext
from flowrun.files import FileLookup
from flowrun.nodes import image_ops as im
from flowrun.nodes import latent_ops as lo
from flowrun.nodes import mask as mk
from flowrun.nodes.registry import NoParams
from flowrun.values import Latent

from conftest import ROOT

NONE = NoParams()


def lat(values, **kw) -> Latent:
    return Latent(torch.tensor(values, dtype=torch.float32), **kw)


def full(shape, value) -> torch.Tensor:
    return torch.full(shape, float(value))


def close(got, want) -> bool:
    return np.allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), atol=1e-6)


# --- latents ----------------------------------------------------------------------------------------

def test_latent_composite_pastes_and_feathers_only_inner_edges():
    to, src = Latent(full((1, 1, 4, 6), 2)), Latent(full((1, 1, 4, 4), 1))
    plain = lo.latent_composite(lo.LatentCompositeParams(x=8), None, samples_to=to, samples_from=src).samples
    assert plain[0, 0, 0].tolist() == [2, 1, 1, 1, 1, 2]
    # feather 16 px = 2 latent px: ramps 1/2, 1 on the left (x > 0) and right (inside samples_to) edges,
    # none at top and bottom (they touch samples_to's border)
    soft = lo.latent_composite(lo.LatentCompositeParams(x=8, feather=16), None, samples_to=to, samples_from=src).samples
    assert soft[0, 0].tolist() == [[2, 1.5, 1, 1, 1.5, 2]] * 4
    # a tile sticking out is cut at the edge; a ramp on every inner side multiplies at the corners
    small = Latent(full((1, 1, 2, 2), 1))
    mid = lo.latent_composite(lo.LatentCompositeParams(x=8, y=8, feather=16), None,
                              samples_to=Latent(torch.zeros(1, 1, 4, 4)), samples_from=small).samples
    assert mid[0, 0].tolist() == [[0, 0, 0, 0], [0, 0.25, 0.25, 0], [0, 0.25, 0.25, 0], [0, 0, 0, 0]]
    edge = lo.latent_composite(lo.LatentCompositeParams(x=24), None, samples_to=Latent(torch.zeros(1, 1, 2, 4)),
                               samples_from=small).samples
    assert edge[0, 0].tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]


def test_latent_composite_masked_stretches_the_mask_over_the_source():
    dest, src = Latent(torch.zeros(1, 1, 2, 4), batch_index=(3,)), Latent(full((1, 1, 2, 2), 1))
    mask = np.array([[[1.0, 0.0], [0.5, 1.0]]], np.float32)
    out = lo.latent_composite_masked(lo.LatentCompositeMaskedParams(x=16), None, destination=dest, source=src, mask=mask)
    assert out.samples[0, 0].tolist() == [[0, 0, 1, 0], [0, 0, 0.5, 1]] and out.batch_index == (3,)
    # a 16 x 16 pixel mask, left half 0: bilinear to 2 x 2 samples pixels 3.5 and 11.5 -> 0 and 1
    pixels = np.zeros((1, 16, 16), np.float32)
    pixels[:, :, 8:] = 1
    out = lo.latent_composite_masked(lo.LatentCompositeMaskedParams(), None, destination=dest, source=src, mask=pixels)
    assert out.samples[0, 0].tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]
    stretched = lo.latent_composite_masked(lo.LatentCompositeMaskedParams(resize_source=True), None,
                                           destination=dest, source=src)
    assert stretched.samples.eq(1).all()


def test_latent_arithmetic():
    a, b = Latent(full((2, 4, 2, 2), 2), batch_index=(5, 6)), Latent(full((1, 4, 4, 4), 4))
    assert lo.latent_blend(lo.LatentBlendParams(blend_factor=0.25), None, samples1=a, samples2=b).samples.eq(3.5).all()
    added = lo.latent_add(NONE, None, samples1=a, samples2=b)
    assert added.samples.shape == (2, 4, 2, 2) and added.samples.eq(6).all() and added.batch_index == (5, 6)
    assert lo.latent_subtract(NONE, None, samples1=a, samples2=b).samples.eq(-2).all()
    assert lo.latent_multiply(lo.LatentMultiplyParams(multiplier=-1.5), None, samples=a).samples.eq(-3).all()


def test_latent_interpolate_lerps_direction_and_length():
    s1 = lat([[[[3.0]], [[4.0]]]])  # one pixel, channel vector (3, 4): length 5
    s2 = lat([[[[0.0]], [[2.0]]]])  # (0, 2): length 2
    out = lo.latent_interpolate(lo.LatentInterpolateParams(ratio=0.5), None, samples1=s1, samples2=s2).samples
    # direction (0.6, 0.8) / 2 + (0, 1) / 2 = (0.3, 0.9), normalised (1, 3) / sqrt(10); length (5 + 2) / 2
    assert out.flatten().tolist() == pytest.approx([3.5 / 10 ** 0.5, 10.5 / 10 ** 0.5], abs=1e-6)
    assert torch.allclose(lo.latent_interpolate(lo.LatentInterpolateParams(ratio=1.0), None, samples1=s1,
                                                samples2=s2).samples, s1.samples)


def test_latent_batches_and_their_batch_index():
    a = Latent(torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 2, 2).clone())
    b = Latent(full((1, 1, 4, 4), 7), batch_index=(5,))
    joined = lo.latent_batch(NONE, None, samples1=a, samples2=b)
    assert joined.samples.shape == (3, 1, 2, 2) and joined.samples[:, 0, 0, 0].tolist() == [0, 1, 7]
    assert joined.batch_index == (0, 1, 5)

    four = Latent(torch.arange(4.0).view(4, 1, 1, 1), noise_mask=torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
    part = lo.latent_from_batch(lo.LatentFromBatchParams(batch_index=2, length=5), None, samples=four)
    assert part.samples.flatten().tolist() == [2, 3] and part.batch_index == (2, 3)
    assert part.noise_mask.flatten().tolist() == [0, 1]  # the mask's 2 rows cycled over the 4 latents
    last = lo.latent_from_batch(lo.LatentFromBatchParams(batch_index=9), None, samples=four.replace(batch_index=(10, 11, 12, 13)))
    assert last.samples.flatten().tolist() == [3] and last.batch_index == (13,)

    twice = Latent(torch.zeros(2, 1, 1, 1), batch_index=(3, 4))
    thrice = lo.repeat_latent_batch(lo.RepeatLatentBatchParams(amount=3), None, samples=twice)
    assert thrice.samples.shape[0] == 6 and thrice.batch_index == (3, 4, 5, 6, 7, 8)
    assert lo.repeat_latent_batch(lo.RepeatLatentBatchParams(amount=2), None, samples=a).batch_index is None

    seeds = Latent(torch.zeros(3, 1, 1, 1), batch_index=(4, 5, 6))
    behave = lo.LatentBatchSeedBehaviorParams
    assert lo.latent_batch_seed_behavior(behave(seed_behavior="fixed"), None, samples=seeds).batch_index == (4, 4, 4)
    assert lo.latent_batch_seed_behavior(behave(), None, samples=Latent(torch.zeros(2, 1, 1, 1))).batch_index == (0, 0)
    assert lo.latent_batch_seed_behavior(behave(seed_behavior="random"), None, samples=seeds).batch_index is None


def test_latent_crop_flip_rotate():
    grid = Latent(torch.arange(256.0).view(1, 1, 16, 16))
    crop = lo.latent_crop(lo.LatentCropParams(width=64, height=64, x=80, y=8), None, samples=grid).samples
    assert crop.shape == (1, 1, 8, 8) and crop[0, 0, 0, 0] == 1 * 16 + 8  # x = 10 pulled back to 16 - 8
    sq = lat([[[[1, 2], [3, 4]]]])
    flip, rot = lo.LatentFlipParams, lo.LatentRotateParams
    assert lo.latent_flip(flip(), None, samples=sq).samples[0, 0].tolist() == [[3, 4], [1, 2]]
    assert lo.latent_flip(flip(flip_method="y-axis: horizontally"), None, samples=sq).samples[0, 0].tolist() == [[2, 1], [4, 3]]
    turns = {r: lo.latent_rotate(rot(rotation=r), None, samples=sq).samples[0, 0].tolist()
             for r in ("none", "90 degrees", "180 degrees", "270 degrees")}
    assert turns == {"none": [[1, 2], [3, 4]], "90 degrees": [[3, 1], [4, 2]], "180 degrees": [[4, 3], [2, 1]],
                     "270 degrees": [[2, 4], [1, 3]]}  # clockwise


def test_bislerp_slerps_channel_vectors():
    from flowrun.diffusion.resize import bislerp, upscale

    # two pixels, (2, 0) and (0, 1); to 3 wide, torch's bilinear sampling puts the middle halfway between:
    # direction sin(pi/4) * ((1, 0) + (0, 1)), length (2 + 1) / 2
    row = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    out = bislerp(row, 3, 2)
    mid = 1.5 * np.sin(np.pi / 4)
    assert out.shape == (1, 2, 2, 3)
    assert close(out[0, :, 0].T, [[2, 0], [mid, mid], [0, 1]])
    assert torch.equal(out[:, :, 0], out[:, :, 1])  # 1 -> 2 rows: both copies
    opposite = bislerp(torch.tensor([[[[1.0, -1.0]], [[0.0, 0.0]]]]), 3, 1)  # opposite directions: a lerp
    assert opposite[0, 0, 0].tolist() == pytest.approx([1, 0, -1], abs=1e-6)
    assert torch.equal(upscale(row, 3, 2, "bislerp", "disabled"), out)
    from flowrun.nodes.latent import LatentUpscaleByParams, latent_upscale_by

    up = latent_upscale_by(LatentUpscaleByParams(upscale_method="bislerp", scale_by=1.5), None,
                           samples=Latent(row.expand(1, 2, 2, 2).contiguous())).samples
    assert up.shape == (1, 2, 3, 3) and all(torch.allclose(up[:, :, i], out[:, :, 0]) for i in range(3))


@pytest.mark.parametrize("call, message", [
    (lambda: lo.latent_composite(lo.LatentCompositeParams(), None, samples_to=Latent(torch.zeros(3, 4, 2, 2)),
                                 samples_from=Latent(torch.zeros(2, 4, 2, 2))),
     "'samples_from' has a batch of 2 but 'samples_to' has 3: give 1 or 3"),
    (lambda: lo.latent_add(NONE, None, samples1=Latent(torch.zeros(1, 4, 2, 2)), samples2=Latent(torch.zeros(1, 16, 2, 2))),
     "'samples2' has 16 latent channels but 'samples1' has 4"),
    (lambda: lo.latent_composite_masked(lo.LatentCompositeMaskedParams(), None, destination=Latent(torch.zeros(2, 4, 2, 2)),
                                        source=Latent(torch.zeros(1, 4, 2, 2)), mask=np.ones((3, 16, 16), np.float32)),
     "'mask' has a batch of 3 but 'destination' has 2"),
    (lambda: im.image_composite_masked(im.ImageCompositeMaskedParams(), None, destination=np.zeros((1, 4, 4, 3), np.float32),
                                       source=np.zeros((2, 4, 4, 3), np.float32)),
     "'source' has a batch of 2 but 'destination' has 1"),
    (lambda: mk.mask_composite(mk.MaskCompositeParams(), None, destination=np.zeros((2, 4, 4), np.float32),
                               source=np.zeros((3, 4, 4), np.float32)), "'source' has a batch of 3 but 'destination' has 2"),
    (lambda: im.image_batch(NONE, None, image1=np.zeros((1, 4, 4, 3), np.float32), image2=np.zeros((1, 4, 4, 1), np.float32)),
     "'image2' has 1 channels where 3 are needed"),
    (lambda: mk.image_to_mask(mk.ImageToMaskParams(channel="alpha"), None, image=np.zeros((1, 2, 2, 3), np.float32)),
     "field 'channel': the image has 3 channels, no alpha"),
    (lambda: im.image_blur(im.ImageBlurParams(blur_radius=3), None, image=np.zeros((1, 3, 3, 3), np.float32)),
     "field 'blur_radius': 3 must be smaller than the image's 3x3 pixels"),
])
def test_sizes_that_cannot_match_are_node_errors(call, message):
    with pytest.raises(NodeError) as info:
        call()
    assert message in str(info.value)


# --- masks ------------------------------------------------------------------------------------------

def test_masks_from_images_solid_invert_crop():
    image = np.zeros((2, 2, 3, 4), np.float32)
    image[..., 1], image[..., 3] = 0.25, 0.75
    assert mk.image_to_mask(mk.ImageToMaskParams(channel="green"), None, image=image).tolist() == [[[0.25] * 3] * 2] * 2
    assert mk.image_to_mask(mk.ImageToMaskParams(channel="alpha"), None, image=image)[0, 0, 0] == 0.75
    grey = mk.mask_to_image(NONE, None, mask=np.array([[0.5, 1.0]], np.float32))  # a 2-D mask is a batch of one
    assert grey.shape == (1, 1, 2, 3) and grey[0, 0].tolist() == [[0.5] * 3, [1.0] * 3]
    solid = mk.solid_mask(mk.SolidMaskParams(value=0.25, width=3, height=2), None)
    assert solid.shape == (1, 2, 3) and solid.dtype == np.float32 and (solid == 0.25).all()
    assert (mk.invert_mask(NONE, None, mask=solid) == 0.75).all()
    grid = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    assert mk.crop_mask(mk.CropMaskParams(x=1, y=2, width=2, height=5), None, mask=grid).tolist() == [[[9, 10], [13, 14]]]
    with pytest.raises(NodeError, match=r"fields 'x', 'y': \(4, 0\) lies outside the 4x4 mask"):
        mk.crop_mask(mk.CropMaskParams(x=4), None, mask=grid)


def test_grow_mask():
    dot = np.zeros((1, 5, 5), np.float32)
    dot[0, 2, 2] = 1
    plus = mk.grow_mask(mk.GrowMaskParams(expand=1), None, mask=dot)[0]
    assert plus[1:4, 1:4].tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]] and plus.sum() == 5
    square = mk.grow_mask(mk.GrowMaskParams(expand=1, tapered_corners=False), None, mask=dot)[0]
    assert square[1:4, 1:4].tolist() == [[1] * 3] * 3 and square.sum() == 9
    diamond = mk.grow_mask(mk.GrowMaskParams(expand=2), None, mask=dot)[0]
    assert diamond.sum() == 13 and diamond[0, 2] == 1 and diamond[1, 1] == 1 and diamond[0, 1] == 0
    # shrinking: only pixels whose whole neighbourhood is set survive; the border repeats outwards
    assert mk.grow_mask(mk.GrowMaskParams(expand=-1, tapered_corners=False), None, mask=square[None])[0].sum() == 1
    ones = np.ones((1, 3, 3), np.float32)
    assert (mk.grow_mask(mk.GrowMaskParams(expand=-2), None, mask=ones) == 1).all()


def test_feather_mask_ramps_as_comfyui():
    ones = np.ones((1, 1, 6), np.float32)
    out = mk.feather_mask(mk.FeatherMaskParams(left=2, right=3), None, mask=ones)[0, 0]
    # left: 1/2, 1; right (ComfyUI's indexing from column -0 = 0): 1/3 on column 0, 2/3 on column 5, 1 on 4
    assert out.tolist() == pytest.approx([0.5 / 3, 1, 1, 1, 1, 2 / 3])
    tall = mk.feather_mask(mk.FeatherMaskParams(top=4), None, mask=np.ones((1, 4, 1), np.float32))[0, :, 0]
    assert tall.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("operation, inside", [("multiply", 0.6), ("add", 1.0), ("subtract", 0.0),
                                               ("and", 1.0), ("or", 1.0), ("xor", 0.0)])
def test_mask_composite(operation, inside):
    dest = np.full((1, 4, 4), 0.6, np.float32)
    dest[0, 0] = 0.4  # rounds to 0
    src = np.ones((1, 2, 2), np.float32)
    out = mk.mask_composite(mk.MaskCompositeParams(x=3, y=1, operation=operation), None, destination=dest, source=src)
    assert out[0, 1:3, 3].tolist() == pytest.approx([inside] * 2)
    assert close(out[0, 1:3, :3], 0.6) and close(out[0, 0], 0.4)
    top = mk.mask_composite(mk.MaskCompositeParams(x=0, y=0, operation=operation), None, destination=dest, source=src)
    logic = {"and": 0.0, "or": 1.0, "xor": 1.0}
    assert top[0, 0, 0] == pytest.approx(logic.get(operation, {"multiply": 0.4, "add": 1.0, "subtract": 0.0}.get(operation)))


def test_load_image_mask(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = [[0, 51, 255], [255, 255, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "rgb.png")
    ctx = RunContext(files=NodeFiles(FileLookup(tmp_path)))
    alpha = mk.load_image_mask(mk.LoadImageMaskParams(image="a.png"), ctx)
    assert alpha.shape == (1, 2, 3) and alpha[0, 0].tolist() == pytest.approx([1.0, 0.8, 0.0])
    assert (mk.load_image_mask(mk.LoadImageMaskParams(image="a.png", channel="red"), ctx) == 1).all()
    assert (mk.load_image_mask(mk.LoadImageMaskParams(image="rgb.png"), ctx) == 0).all()  # no alpha: opaque
    with pytest.raises(NodeError, match="cannot read image 'a.png.txt'"):
        (tmp_path / "a.png.txt").write_text("no")
        mk.load_image_mask(mk.LoadImageMaskParams(image="a.png.txt"), ctx)


# --- images -----------------------------------------------------------------------------------------

G_CENTRE, G_EDGE, G_CORNER = 1 / 4.897650, 0.606531 / 4.897650, 0.367879 / 4.897650  # 3x3, sigma 1, over [-1, 1]


def test_blur_and_sharpen():
    impulse = np.zeros((1, 5, 5, 1), np.float32)
    impulse[0, 2, 2] = 1
    blurred = im.image_blur(im.ImageBlurParams(), None, image=impulse)[0, 1:4, 1:4, 0]
    assert close(blurred, [[G_CORNER, G_EDGE, G_CORNER], [G_EDGE, G_CENTRE, G_EDGE], [G_CORNER, G_EDGE, G_CORNER]])
    corner = np.zeros((1, 5, 5, 1), np.float32)
    corner[0, 0, 0] = 1  # mirrored without repeating the edge: nothing folds back onto the corner pixel
    assert im.image_blur(im.ImageBlurParams(), None, image=corner)[0, 0, 0, 0] == pytest.approx(G_CENTRE, abs=1e-6)
    bump = np.full((1, 5, 5, 1), 0.5, np.float32)
    bump[0, 2, 2] = 0.6
    sharp = im.image_sharpen(im.ImageSharpenParams(alpha=0.1), None, image=bump)[0, :, :, 0]
    # kernel: -Gaussian (alpha 0.1 x 10), centre raised to 2 - G_CENTRE so it sums to 1
    assert sharp[2, 2] == pytest.approx(0.5 + 0.1 * (2 - G_CENTRE), abs=1e-6)
    assert sharp[2, 1] == pytest.approx(0.5 - 0.1 * G_EDGE, abs=1e-6)
    assert sharp[1, 1] == pytest.approx(0.5 - 0.1 * G_CORNER, abs=1e-6) and sharp[0, 4] == pytest.approx(0.5)
    assert im.image_sharpen(im.ImageSharpenParams(alpha=5.0), None, image=bump).max() == 1.0  # clamped


def test_quantize():
    two = np.zeros((1, 2, 4, 3), np.float32)
    two[:, :, :2, 0], two[:, :, 2:, 2] = 1.0, 1.0
    for dither in ("none", "floyd-steinberg", "bayer-2"):
        out = im.image_quantize(im.ImageQuantizeParams(colors=2, dither=dither), None, image=two)
        assert np.array_equal(out, two), dither  # two colours fit a palette of two exactly
    ramp = np.broadcast_to(np.linspace(0, 1, 8, dtype=np.float32)[None, None, :, None], (1, 4, 8, 3)).copy()
    flat = im.image_quantize(im.ImageQuantizeParams(colors=2), None, image=ramp)
    assert len(np.unique(flat)) == 2 and np.array_equal(flat[0, 0, :, 0] > 0.5, ramp[0, 0, :, 0] > 0.5)
    dithered = im.image_quantize(im.ImageQuantizeParams(colors=2, dither="bayer-4"), None, image=ramp)
    assert len(np.unique(dithered)) == 2 and not np.array_equal(dithered, flat)
    with pytest.raises(NodeError, match="takes RGB images"):
        im.image_quantize(im.ImageQuantizeParams(), None, image=np.zeros((1, 2, 2, 4), np.float32))


def test_scale_crop_batch():
    image = np.arange(24, dtype=np.float32).reshape(1, 2, 4, 3) / 24
    by = im.image_scale_by(im.ImageScaleByParams(scale_by=1.5), None, image=image)
    assert by.shape == (1, 3, 6, 3) and by[0, 0, 0].tolist() == image[0, 0, 0].tolist()
    total = im.ImageScaleToTotalPixelsParams
    wide = np.zeros((1, 4, 8, 3), np.float32)
    # 0.01 MP = 10485.76 pixels: scale sqrt(10485.76 / 32) = 18.10, to 144.8 x 72.4
    assert im.image_scale_to_total_pixels(total(megapixels=0.01), None, image=wide).shape == (1, 72, 145, 3)
    assert im.image_scale_to_total_pixels(total(megapixels=0.01, resolution_steps=8), None, image=wide).shape == (1, 72, 144, 3)
    crop = im.image_crop(im.ImageCropParams(width=3, height=3, x=9, y=1), None, image=image)
    assert crop.shape == (1, 1, 1, 3) and crop[0, 0, 0].tolist() == image[0, 1, 3].tolist()  # x kept inside
    batch = im.image_batch(NONE, None, image1=np.zeros((1, 2, 2, 3), np.float32), image2=np.ones((2, 4, 4, 4), np.float32))
    assert batch.shape == (3, 2, 2, 4) and batch[0, 0, 0].tolist() == [0, 0, 0, 1] and (batch[1:] == 1).all()


def test_image_composite_masked():
    dest, src = np.zeros((2, 4, 4, 3), np.float32), np.ones((1, 2, 2, 3), np.float32)
    mask = np.array([[[1.0, 0.5], [0.0, 1.0]]], np.float32)
    out = im.image_composite_masked(im.ImageCompositeMaskedParams(x=1, y=1), None, destination=dest, source=src, mask=mask)
    assert out.shape == (2, 4, 4, 3) and out[1, :, :, 0].tolist() == [[0, 0, 0, 0], [0, 1, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    edge = im.image_composite_masked(im.ImageCompositeMaskedParams(x=3, y=3), None, destination=dest, source=src)
    assert edge[0, :, :, 0].sum() == 1 and edge[0, 3, 3, 0] == 1  # cut at the destination's edge
    rgba = np.full((1, 2, 2, 4), 0.5, np.float32)  # the source's alpha is dropped to fit an RGB destination
    assert im.image_composite_masked(im.ImageCompositeMaskedParams(), None, destination=dest[:1], source=rgba)[0, 0, 0].tolist() == [0.5] * 3


def test_pad_for_outpaint_and_its_mask():
    image = np.ones((1, 5, 5, 1), np.float32)
    out = im.image_pad_for_outpaint(im.ImagePadForOutpaintParams(left=8, feathering=2), None, image=image)
    assert out["image"].shape == (1, 5, 13, 1) and (out["image"][0, :, :8] == 0.5).all() and (out["image"][0, :, 8:] == 1).all()
    # 1 on the padding; inside, ((2 - d) / 2)^2 for d = 0, 1 pixels from the padded (left) side
    assert out["mask"].shape == (1, 5, 13) and out["mask"][0, 0].tolist() == [1] * 9 + [0.25, 0, 0, 0]
    image = np.ones((1, 4, 4, 1), np.float32)
    plain = im.image_pad_for_outpaint(im.ImagePadForOutpaintParams(top=8, bottom=8, feathering=2), None, image=image)
    assert plain["mask"][0, :, 0].tolist() == [1] * 8 + [0] * 4 + [1] * 8  # no ramp unless 2 x feathering < 4


# --- through the CLI and ComfyUI graphs ------------------------------------------------------------------

COMPOSE = """
version: 1
name: compose
params: {grow: 1}
sweep:
  grid: {grow: [1, 2]}
nodes:
  base:
    type: EmptyImage
    with: {width: 16, height: 8, batch_size: 1, color: 0}
  tile:
    type: EmptyImage
    with: {width: 8, height: 8, batch_size: 1, color: 0xFFFFFF}
  wide:
    type: ImagePadForOutpaint
    in: {image: base}
    with: {left: 0, top: 0, right: 8, bottom: 0, feathering: 0}
  dot:
    type: SolidMask
    with: {value: 1.0, width: 2, height: 2}
  canvas:
    type: SolidMask
    with: {value: 0.0, width: 8, height: 8}
  spot:
    type: MaskComposite
    in: {destination: canvas, source: dot}
    with: {x: 3, y: 3, operation: add}
  grown:
    type: GrowMask
    in: {mask: spot}
    with: {expand: "{{ grow }}", tapered_corners: false}
  paste:
    type: ImageCompositeMasked
    in: {destination: wide.image, source: tile, mask: grown}
    with: {x: 16, y: 0, resize_source: false}
  save:
    type: SaveImage
    in: {images: paste}
    with: {filename_prefix: "composed-{{ grow }}"}
"""


def test_mask_composition_through_the_cli(cli, workflow, tmp_path):
    path = workflow(COMPOSE)
    r = cli("run", path, "--out", tmp_path / "o")
    assert r.code == 0, r.err
    for grow in (1, 2):
        pixels = np.asarray(Image.open(tmp_path / "o" / f"composed-{grow}.png").convert("L")).astype(int)
        assert pixels.shape == (8, 24) and (pixels[:, :16] == 0).all()
        square = np.zeros((8, 8), bool)
        square[3 - grow:5 + grow, 3 - grow:5 + grow] = True  # the 2 x 2 spot grown by `grow` on every side
        assert (pixels[:, 16:][square] == 255).all() and (pixels[:, 16:][~square] == 127).all()  # 0.5, truncated

    # a batch that cannot stand beside the other: exit 1, naming the node and the cell, no traceback
    (tmp_path / "bad.yaml").write_text(path.read_text().replace("batch_size: 1, color: 0}", "batch_size: 3, color: 0}")
                                       .replace("batch_size: 1, color: 0xFFFFFF", "batch_size: 2, color: 0xFFFFFF"))
    r = cli("run", tmp_path / "bad.yaml", "--out", tmp_path / "b")
    assert r.code == 1 and "node 'paste' (ImageCompositeMasked)" in r.err and "in cell" in r.err
    assert "'source' has a batch of 2 but 'destination' has 3: give 1 or 3" in r.err and "Traceback" not in r.err
    # a literal that breaks a rule known before running: exit 2 at its line
    (tmp_path / "odd.yaml").write_text(path.read_text().replace("right: 8,", "right: 12,"))
    r = cli("validate", tmp_path / "odd.yaml")
    assert r.code == 2 and f"{tmp_path / 'odd.yaml'}:16:36:" in r.err and "node 'wide', field 'right'" in r.err
    assert "multiple of 8" in r.err


def _shape(graph: dict) -> set:
    """A graph up to node ids: each node's type, literals (numbers as floats) and linked inputs."""
    def norm(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    types = {k: v["class_type"] for k, v in graph.items()}
    return {(n["class_type"],
             tuple(sorted((k, json.dumps(norm(v))) for k, v in n["inputs"].items() if not isinstance(v, list))),
             tuple(sorted((k, types[str(v[0])], v[1]) for k, v in n["inputs"].items() if isinstance(v, list))))
            for n in graph.values()}


def test_comfyui_mask_composition_graphs_import_run_and_round_trip(cli, tmp_path):
    from flowrun import api
    from flowrun.interop.comfy_import import load_graph

    source = ROOT / "tests" / "comfyui" / "mask-composition-api.json"
    original = json.loads(source.read_text())
    assert _shape(load_graph(ROOT / "tests" / "comfyui" / "mask-composition-ui.json", api.registry())) == _shape(original)
    for name in ("mask-composition-api", "mask-composition-ui"):
        assert cli("import", ROOT / "tests" / "comfyui" / f"{name}.json", "--out", tmp_path / f"{name}.yaml").code == 0
        assert cli("validate", tmp_path / f"{name}.yaml").code == 0
        assert cli("export", tmp_path / f"{name}.yaml", "--out", tmp_path / name).code == 0
        assert _shape(json.loads(next((tmp_path / name).glob("*.json")).read_text())) == _shape(original)
    r = cli("run", tmp_path / "mask-composition-api.yaml", "--out", tmp_path / "o")
    assert r.code == 0, r.err
    picture = np.asarray(Image.open(tmp_path / "o" / "mask-composition.png").convert("RGB")).astype(int)
    assert picture.shape == (64, 120, 3)
    assert (picture[:, 64:, 2] - picture[:, 64:, 0]).max() > 100  # the blue square, pasted on the widened canvas


def test_the_example_exports_to_comfyui_and_back(cli, tmp_path):
    assert cli("export", ROOT / "workflows" / "mask-composition.yaml", "--out", tmp_path / "e").code == 0
    exported = json.loads((tmp_path / "e" / "mask-composition.json").read_text())
    assert {n["class_type"] for n in exported.values()} >= {"ImagePadForOutpaint", "SolidMask", "FeatherMask",
                                                             "ImageCompositeMasked"}
    assert exported["widen"]["inputs"]["image"] == ["circle", 0] and exported["paste"]["inputs"]["destination"] == ["widen", 0]
    assert cli("import", tmp_path / "e" / "mask-composition.json", "--out", tmp_path / "again.yaml").code == 0
    assert cli("export", tmp_path / "again.yaml", "--out", tmp_path / "again").code == 0
    assert _shape(json.loads(next((tmp_path / "again").glob("*.json")).read_text())) == _shape(exported)
