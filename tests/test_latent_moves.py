"""Moving through the latent space: slerp against hand computations, variation-seed noise (its ends are
the two seeds' noises exactly), KSamplerVariation and RandomNoiseVariation on the tiny model against
KSampler and RandomNoise, LatentSlerp, and export refusing flowrun's own nodes by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowrun.cache import codecs
from flowrun.diffusion.noise import SeedNoise, initial_noise
from flowrun.diffusion.slerp import slerp
from flowrun.execute.context import RunContext
from flowrun.nodes import ports
from flowrun.nodes.registry import default_registry
from flowrun.values import CondEntry, Conditioning, Latent, Noise

REG = default_registry(builtin_only=True)
LATENT = torch.zeros(2, 4, 8, 8)


def call(type_name: str, **values):
    """Run node `type_name` on a bare context: literal fields and linked inputs by name."""
    nd = REG.get(type_name)
    inputs = {k: values.pop(k) for k in list(values) if k in nd.inputs}
    return nd(nd.params(**values), RunContext(), **inputs)


# --- slerp by hand --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t, a, b, expected", [
    (0.5, [1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]),  # 90 degrees: sin 45 / sin 90 each
    (0.5, [2.0, 0.0], [0.0, 1.0], [math.sqrt(2.0), math.sqrt(0.5)]),  # lengths are not normalised away
    (1 / 3, [3.0, 0.0], [0.0, 4.0], [3 * math.sin(math.pi / 3), 4 * math.sin(math.pi / 6)]),
    (0.5, [1.0, 0.0], [0.5, math.sqrt(3) / 2], [math.sqrt(3) / 2, 0.5]),  # 60 degrees: half way is 30
    (0.25, [1.0, 0.0], [1.0, 0.01], [1.0, 0.0025]),  # nearly parallel: blended linearly
])
def test_slerp_matches_the_hand_computation(t, a, b, expected):
    out = slerp(t, torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    assert out[0].tolist() == pytest.approx(expected, abs=1e-12)


def test_slerp_ends_are_exact_and_rows_are_separate():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen)
    assert torch.equal(slerp(0.0, a, b), a) and torch.equal(slerp(1.0, a, b), b)
    mid = slerp(0.3, a, b)
    for row in range(3):
        assert torch.equal(mid[row:row + 1], slerp(0.3, a[row:row + 1], b[row:row + 1]))
    # a slerp between two Gaussian draws keeps their length, where a straight blend loses ~30% half way
    assert float(slerp(0.5, a, b).norm() / a.norm()) == pytest.approx(1.0, abs=0.05)
    assert float((0.5 * a + 0.5 * b).norm() / a.norm()) == pytest.approx(math.sqrt(0.5), abs=0.05)
    with pytest.raises(ValueError, match="different shapes"):
        slerp(0.5, a, b[:1])


# --- variation-seed noise ---------------------------------------------------------------------------------------

def test_variation_noise_ends_are_the_two_seeds_noises():
    base, other = initial_noise(LATENT, 5), initial_noise(LATENT, 9)
    assert torch.equal(SeedNoise([5]).varied([(9, 0.0)]).initial(LATENT), base)
    assert torch.equal(SeedNoise([5]).varied([(9, 1.0)]).initial(LATENT), other)
    assert torch.equal(SeedNoise([5]).initial(LATENT), base)


def test_variation_noise_in_between_is_the_slerp_of_the_draws():
    mid = SeedNoise([5]).varied([(9, 0.4)]).initial(LATENT)
    x = initial_noise(LATENT, 5).numpy().astype(np.float64).reshape(2, -1)
    y = initial_noise(LATENT, 9).numpy().astype(np.float64).reshape(2, -1)
    for row in range(2):  # each image of the batch is one vector
        omega = math.acos(x[row] @ y[row] / np.linalg.norm(x[row]) / np.linalg.norm(y[row]))
        want = (math.sin(0.6 * omega) * x[row] + math.sin(0.4 * omega) * y[row]) / math.sin(omega)
        np.testing.assert_allclose(mid[row].numpy().reshape(-1), want, rtol=0, atol=1e-6)


def test_variation_noise_per_cell_and_batch_index():
    cells = SeedNoise([5, 6]).varied([(9, 1.0), None]).initial(LATENT)
    assert torch.equal(cells[:2], initial_noise(LATENT, 9)) and torch.equal(cells[2:], initial_noise(LATENT, 6))
    one = SeedNoise([5]).varied([(9, 0.4)]).initial(LATENT[:1], batch_index=[1])
    assert torch.equal(one, SeedNoise([5]).varied([(9, 0.4)]).initial(LATENT)[1:])
    # per-step noise of ancestral samplers stays the seed's
    x = torch.zeros(2, 4, 8, 8)
    assert torch.equal(SeedNoise([5]).varied([(9, 0.4)]).gaussian(x)(1.0, 0.5), SeedNoise([5]).gaussian(x)(1.0, 0.5))
    with pytest.raises(ValueError, match="1 variations for 2 seeds"):
        SeedNoise([5, 6]).varied([None])


# --- on the tiny model -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    model = tiny_bundle[0]
    gen = torch.Generator().manual_seed(0)
    width = model.unet.config.cross_attention_dim
    pos = Conditioning([CondEntry(torch.randn(1, 77, width, generator=gen))])
    neg = Conditioning([CondEntry(torch.randn(1, 77, width, generator=gen))])
    return dict(model=model, positive=pos, negative=neg, latent_image=Latent(torch.zeros(1, 4, 8, 8)))


def test_ksampler_variation_ends_render_as_ksampler(tiny):
    kw = dict(steps=2, cfg=4.0, scheduler="normal", **tiny)
    for sampler in ("euler", "euler_ancestral"):
        base = call("KSampler", seed=5, sampler_name=sampler, **kw).samples
        at_zero = call("KSamplerVariation", seed=5, variation_seed=9, variation_strength=0.0, sampler_name=sampler, **kw)
        assert torch.equal(at_zero.samples, base)
    euler = dict(sampler_name="euler", **kw)
    at_one = call("KSamplerVariation", seed=5, variation_seed=9, variation_strength=1.0, **euler).samples
    assert torch.equal(at_one, call("KSampler", seed=9, **euler).samples)
    # an ancestral sampler keeps the seed's per-step noise, so strength 1 is not KSampler of the variation seed
    ancestral = dict(kw, sampler_name="euler_ancestral")
    assert not torch.allclose(call("KSamplerVariation", seed=5, variation_seed=9, variation_strength=1.0,
                                   **ancestral).samples, call("KSampler", seed=9, **ancestral).samples)


def test_ksampler_variation_batches_strengths_as_single_cells(tiny):
    nd = REG.get("KSamplerVariation")
    params = [nd.params(seed=5, variation_seed=9, variation_strength=s, steps=2, cfg=4.0) for s in (0.0, 0.5)]
    batched = nd.call_batch(params, RunContext(), **tiny)
    for p, out in zip(params, batched):
        alone = nd(p, RunContext(), **tiny).samples
        # up to float rounding of batched passes: within 1e-5 of the largest value (README, seed batching)
        assert (out.samples - alone).abs().max() <= 1e-5 * alone.abs().max()
    assert not torch.allclose(batched[1].samples, batched[0].samples, atol=1e-3)


def test_random_noise_variation_in_the_custom_sampling_graph(tiny):
    model = tiny["model"]
    pieces = dict(guider=call("CFGGuider", model=model, positive=tiny["positive"], negative=tiny["negative"], cfg=4.0),
                  sampler=call("KSamplerSelect"), sigmas=call("BasicScheduler", model=model, steps=2),
                  latent_image=tiny["latent_image"])
    noise = call("RandomNoiseVariation", noise_seed=5, variation_seed=9, variation_strength=0.0)
    assert noise == Noise(5, (9, 0.0))
    codec = codecs.for_port(ports.NOISE)  # cached as RandomNoise's value is
    assert codec.decode(codec.encode(noise)) == noise
    plain = call("SamplerCustomAdvanced", noise=call("RandomNoise", noise_seed=5), **pieces)["output"].samples
    assert torch.equal(call("SamplerCustomAdvanced", noise=noise, **pieces)["output"].samples, plain)
    half = call("RandomNoiseVariation", noise_seed=5, variation_seed=9, variation_strength=0.5)
    assert not torch.allclose(call("SamplerCustomAdvanced", noise=half, **pieces)["output"].samples, plain, atol=1e-3)
    full = call("RandomNoiseVariation", noise_seed=5, variation_seed=9, variation_strength=1.0)
    assert torch.equal(call("SamplerCustomAdvanced", noise=full, **pieces)["output"].samples,
                       call("SamplerCustomAdvanced", noise=call("RandomNoise", noise_seed=9), **pieces)["output"].samples)


# --- LatentSlerp ---------------------------------------------------------------------------------------------------

def test_latent_slerp_ends_and_a_fixed_middle():
    s1 = Latent(torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1), batch_index=(3,))
    s2 = Latent(torch.tensor([0.5, math.sqrt(3) / 2]).reshape(1, 2, 1, 1))
    assert torch.equal(call("LatentSlerp", samples1=s1, samples2=s2, ratio=1.0).samples, s1.samples)
    assert torch.equal(call("LatentSlerp", samples1=s1, samples2=s2, ratio=0.0).samples, s2.samples)
    mid = call("LatentSlerp", samples1=s1, samples2=s2, ratio=0.5)
    assert mid.samples.reshape(-1).tolist() == pytest.approx([math.sqrt(3) / 2, 0.5], abs=1e-6)  # 30 degrees
    assert mid.batch_index == (3,)
    # ratio 0.75: a quarter of the 60 degrees from samples1, on the unit circle
    quarter = call("LatentSlerp", samples1=s1, samples2=s2, ratio=0.75).samples.reshape(-1).tolist()
    assert quarter == pytest.approx([math.cos(math.pi / 12), math.sin(math.pi / 12)], abs=1e-6)
    assert list(REG.get("LatentSlerp").inputs) == ["samples1", "samples2"]


def test_latent_slerp_resizes_and_refuses_other_channels():
    from flowrun.errors import NodeError

    gen = torch.Generator().manual_seed(1)
    s1, s2 = Latent(torch.randn(2, 4, 8, 8, generator=gen)), Latent(torch.randn(1, 4, 4, 4, generator=gen))
    assert call("LatentSlerp", samples1=s1, samples2=s2, ratio=0.5).samples.shape == (2, 4, 8, 8)
    with pytest.raises(NodeError, match="'samples2' has 3 latent channels but 'samples1' has 4"):
        call("LatentSlerp", samples1=s1, samples2=Latent(torch.zeros(1, 3, 8, 8)), ratio=0.5)


# --- interop ---------------------------------------------------------------------------------------------------------

def test_export_refuses_the_flowrun_nodes_by_name(cli, workflow):
    from conftest import ROOT

    text = (ROOT / "workflows" / "sweep-2x2.yaml").read_text()
    wf = workflow(text.replace("type: KSampler", "type: KSamplerVariation"))
    r = cli("export", wf, "--out", "x")
    assert r.code != 0 and "Traceback" not in r.err
    assert "no ComfyUI counterpart for node type(s): KSamplerVariation" in r.err
    assert "at variation_strength 0 it renders as KSampler with the same seed" in r.err


# --- the interpolate sweep axis -------------------------------------------------------------------------------------

SWEPT = """\
version: 1
params: {strength: 0.5, seed: 1}
sweep:
  grid: {strength: AXIS}
nodes:
  t:
    type: Text
    with: {text: "strength {{ strength }}", seed: "{{ seed }}"}
  out:
    type: WriteText
    in: {text: t}
"""


def test_interpolate_axis_gives_evenly_spaced_numbers_with_exact_ends(workflow):
    from flowrun import api

    resolved = api.load(workflow(SWEPT.replace("AXIS", "{interpolate: [0, 1], steps: 5}")))
    assert [c.values["strength"] for c in resolved.cells] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert resolved.cells[1].label == "strength-0.25"
    resolved = api.load(workflow(SWEPT.replace("AXIS", "{interpolate: [0.9, 0.1], steps: 3}")))
    assert [c.values["strength"] for c in resolved.cells] == [0.9, 0.5, 0.1]
    resolved = api.load(workflow(SWEPT.replace("AXIS", "{interpolate: [0, 1], steps: 7}")))
    values = [c.values["strength"] for c in resolved.cells]
    assert values[0] == 0.0 and values[-1] == 1.0 and values[1] == round(1 / 6, 12)


@pytest.mark.parametrize("axis, line, col, fragment", [
    ("{interpolate: [0, 1], steps: 1}", 4, 49, "steps is how many values from a to b, a whole number of at least 2, "
                                               "got the number 1"),
    ("{interpolate: [0, 1], steps: 2.5}", 4, 49, "a whole number of at least 2, got the number 2.5"),
    ("{interpolate: [0, x], steps: 3}", 4, 34, "interpolate takes two numbers [a, b], got a list"),
    ("{interpolate: [0, 1, 2], steps: 3}", 4, 34, "interpolate takes two numbers [a, b]"),
    ("{interpolate: [0, 1]}", 4, 20, "an interpolation needs steps (how many values, at least 2)"),
    ("{interpolate: [0, 1], steps: 3, by: 2}", 4, 52, "unknown key 'by'"),
])
def test_bad_interpolate_axes_are_errors_at_their_place(workflow, axis, line, col, fragment):
    from flowrun import api
    from flowrun.errors import WorkflowInvalid

    path = workflow(SWEPT.replace("AXIS", axis))
    with pytest.raises(WorkflowInvalid) as info:
        api.load(path)
    problems = info.value.problems
    assert len(problems) == 1, info.value.render()
    p = problems[0]
    assert p.kind == "sweep" and p.field == "strength" and fragment in p.message, p.format()
    assert (p.location.file, p.location.line, p.location.col) == (str(path), line, col), p.format()


def test_an_interpolated_integer_param_is_refused_by_value(workflow):
    from flowrun import api
    from flowrun.errors import WorkflowInvalid

    text = SWEPT.replace("AXIS", "{interpolate: [0, 1], steps: 3}").replace("grid: {strength", "grid: {seed")
    with pytest.raises(WorkflowInvalid, match=r"value for 'seed': expected integer \(the type of the default 1\), got 0.5"):
        api.load(workflow(text))


def test_a_strength_out_of_range_names_node_field_and_line(cli, workflow):
    from conftest import ROOT

    text = (ROOT / "workflows" / "variation-seeds.yaml").read_text()
    wf = workflow(text.replace('variation_strength: "{{ variation_strength }}"', "variation_strength: 1.5"), "v.yaml")
    r = cli("validate", wf, "--no-file-check")
    assert r.code == 2 and "Traceback" not in r.err
    assert "v.yaml:32:51" in r.err and "node 'sample', field 'variation_strength'" in r.err
    assert "less than or equal to 1" in r.err
