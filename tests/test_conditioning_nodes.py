"""Where and when a conditioning applies: ConditioningSetAreaPercentage, -AreaStrength, -Mask,
-TimestepRange, ConditioningZeroOut and ConditioningAverage; the fields they set (closed form) and what
the sampler does with them on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowrun.diffusion.clip import encode
from flowrun.diffusion.ksampler import ksample
from flowrun.execute.context import RunContext
from flowrun.nodes.registry import default_registry
from flowrun.values import CondEntry, Conditioning, Latent

REG = default_registry(builtin_only=True)


def call(type_name: str, **kw):
    nd = REG.get(type_name)
    fields = {k: v for k, v in kw.items() if k in nd.params.model_fields}
    inputs = {k: v for k, v in kw.items() if k not in fields}
    return nd(nd.params(**fields), RunContext(), **inputs)


def cond(*values, pooled=None):
    return Conditioning([CondEntry(torch.tensor([[list(v) for v in values]], dtype=torch.float32), pooled_output=pooled)])


# --- the fields each node sets ------------------------------------------------------------------------

def test_area_percentage_strength_and_timestep_range_set_their_fields():
    c = cond((1.0, 2.0))
    pct = call("ConditioningSetAreaPercentage", conditioning=c, width=0.5, height=0.25, x=0.5, y=0.75, strength=2.0)
    assert pct[0].area_percent == (0.25, 0.5, 0.75, 0.5) and pct[0].area is None and pct[0].strength == 2.0
    # a later pixel area replaces the percentage, as ComfyUI's single 'area' key does
    px = call("ConditioningSetArea", conditioning=pct, width=64, height=128, x=64, y=0, strength=1.0)
    assert px[0].area == (16, 8, 0, 8) and px[0].area_percent is None
    assert call("ConditioningSetAreaStrength", conditioning=px, strength=0.3)[0].strength == 0.3
    assert call("ConditioningSetTimestepRange", conditioning=c, start=0.2, end=0.7)[0].timestep_range == (0.2, 0.7)
    assert c[0].timestep_range is None  # inputs are never changed


def test_set_mask_keeps_the_mask_as_a_tensor_with_its_strength_and_bounds_flag():
    mask = np.zeros((2, 4), np.float32)
    mask[:, 2:] = 1.0
    out = call("ConditioningSetMask", conditioning=cond((1.0,)), mask=mask, strength=0.5, set_cond_area="mask bounds")
    entry = out[0]
    assert torch.equal(entry.mask, torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]]))
    assert entry.mask_strength == 0.5 and entry.set_area_to_bounds
    assert not call("ConditioningSetMask", conditioning=cond((1.0,)), mask=mask)[0].set_area_to_bounds


def test_zero_out_and_average_in_closed_form():
    c = cond((1.0, 2.0), (3.0, 4.0), pooled=torch.tensor([[5.0, 6.0]]))
    zero = call("ConditioningZeroOut", conditioning=c)
    assert torch.equal(zero[0].embedding, torch.zeros(1, 2, 2)) and torch.equal(zero[0].pooled_output, torch.zeros(1, 2))
    to = cond((2.0, 2.0), (2.0, 2.0), (2.0, 2.0), pooled=torch.tensor([[4.0, 4.0]]))
    source = cond((1.0, 1.0), (1.0, 1.0), pooled=torch.tensor([[0.0, 8.0]]))
    avg = call("ConditioningAverage", conditioning_to=to, conditioning_from=source, conditioning_to_strength=0.25)
    # 2 * 0.25 + 1 * 0.75 where the source has tokens, 2 * 0.25 + 0 where it is padded with zeros
    assert torch.equal(avg[0].embedding, torch.tensor([[[1.25, 1.25], [1.25, 1.25], [0.5, 0.5]]]))
    assert torch.equal(avg[0].pooled_output, torch.tensor([[1.0, 7.0]]))
    longer = call("ConditioningAverage", conditioning_to=source, conditioning_from=to, conditioning_to_strength=0.5)
    assert longer[0].embedding.shape == (1, 2, 2)  # the source is cut to the target's length


# --- what sampling does with them ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def prompts(tiny_bundle):
    clip = tiny_bundle[1]
    return {t: encode(clip, t) for t in ("a white background", "a red circle", "a blue square", "")}


def _sample(model, positive, negative, size=16, seed=3, steps=4):
    return ksample(model, seed=seed, steps=steps, cfg=5.0, sampler_name="euler", scheduler="normal",
                   positive=positive, negative=negative, latent=Latent(torch.zeros(1, 4, size, size))).samples


def test_a_full_range_or_a_full_mask_changes_nothing(tiny_bundle, prompts):
    model = tiny_bundle[0]
    red, empty = prompts["a red circle"], prompts[""]
    plain = _sample(model, red, empty)
    ranged = call("ConditioningSetTimestepRange", conditioning=red, start=0.0, end=1.0)
    assert torch.equal(_sample(model, ranged, empty), plain)
    masked = call("ConditioningSetMask", conditioning=red, mask=np.ones((128, 128), np.float32))
    assert torch.equal(_sample(model, masked, empty), plain)


def test_timestep_ranges_hand_over_from_one_prompt_to_another(tiny_bundle, prompts):
    model = tiny_bundle[0]
    red, blue, empty = prompts["a red circle"], prompts["a blue square"], prompts[""]
    first = call("ConditioningSetTimestepRange", conditioning=red, start=0.0, end=0.5)
    second = call("ConditioningSetTimestepRange", conditioning=blue, start=0.5, end=1.0)
    both = call("ConditioningCombine", conditioning_1=first, conditioning_2=second)
    handed = _sample(model, both, empty)
    only_red, only_blue = _sample(model, red, empty), _sample(model, blue, empty)
    assert not torch.allclose(handed, only_red, atol=1e-3) and not torch.allclose(handed, only_blue, atol=1e-3)
    # a prompt whose range never comes takes no part: the other one alone remains
    never = call("ConditioningSetTimestepRange", conditioning=blue, start=1.0, end=1.0)
    alone = _sample(model, call("ConditioningCombine", conditioning_1=red, conditioning_2=never), empty)
    assert torch.allclose(alone, only_red, atol=1e-5)


def test_a_zero_mask_takes_no_part_and_a_half_mask_paints_half(tiny_bundle, prompts):
    model = tiny_bundle[0]
    base, red, empty = prompts["a white background"], prompts["a red circle"], prompts[""]
    only_base = _sample(model, base, empty)
    zero = call("ConditioningSetMask", conditioning=red, mask=np.zeros((128, 128), np.float32))
    with_zero = _sample(model, call("ConditioningCombine", conditioning_1=base, conditioning_2=zero), empty)
    assert torch.allclose(with_zero, only_base, atol=1e-5)
    half = np.zeros((128, 128), np.float32)
    half[:, 64:] = 1.0
    right = call("ConditioningSetMask", conditioning=red, mask=half)
    painted = _sample(model, call("ConditioningCombine", conditioning_1=base, conditioning_2=right), empty)
    assert not torch.allclose(painted, only_base, atol=1e-3)
    bounded = call("ConditioningSetMask", conditioning=red, mask=half, set_cond_area="mask bounds")
    in_bounds = _sample(model, call("ConditioningCombine", conditioning_1=base, conditioning_2=bounded), empty)
    assert not torch.allclose(in_bounds, painted, atol=1e-4)  # sampled over its rectangle, at that size


def test_an_area_in_percent_is_the_same_area_in_pixels(tiny_bundle, prompts):
    model = tiny_bundle[0]
    base, red, empty = prompts["a white background"], prompts["a red circle"], prompts[""]
    pct = call("ConditioningSetAreaPercentage", conditioning=red, width=0.5, height=1.0, x=0.5, y=0.0)
    px = call("ConditioningSetArea", conditioning=red, width=64, height=128, x=64, y=0)
    a = _sample(model, call("ConditioningCombine", conditioning_1=base, conditioning_2=pct), empty)
    b = _sample(model, call("ConditioningCombine", conditioning_1=base, conditioning_2=px), empty)
    assert torch.equal(a, b)


def test_a_comfyui_graph_of_the_family_imports_validates_and_runs(cli, tmp_path):
    from conftest import ROOT

    for form in ("ui", "api"):
        wf = tmp_path / f"regional-{form}.yaml"
        assert cli("import", ROOT / "tests" / "comfyui" / f"regional-{form}.json", "--out", wf).code == 0
        assert cli("validate", wf).code == 0
        r = cli("run", wf, "--out", tmp_path / form, "--cache-dir", tmp_path / "cache")
        assert r.code == 0, r.err
    # both forms are the same graph, so the same pixels (their provenance names the files they came from)
    from PIL import Image

    pixels = [np.asarray(Image.open(tmp_path / form / "regional.png")) for form in ("ui", "api")]
    assert np.array_equal(*pixels)
