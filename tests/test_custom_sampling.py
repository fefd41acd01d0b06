"""Custom sampling: the schedules and sigma lists (fixed numbers), the new port types, SamplerCustom and
SamplerCustomAdvanced against KSampler on the tiny model, ModelSamplingDiscrete, masked sampling, errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flowrun.cache import codecs
from flowrun.diffusion.ksampler import ksample
from flowrun.diffusion.model import ModelSampling
from flowrun.execute.context import RunContext
from flowrun.nodes import ports
from flowrun.nodes.registry import default_registry
from flowrun.values import CondEntry, Conditioning, Latent, Noise, Sampler

REG = default_registry(builtin_only=True)
SD = SimpleNamespace(sampling=ModelSampling())  # all a scheduler node reads of a MODEL


def call(type_name: str, **values):
    """Run node `type_name` on a bare context: literal fields and linked inputs by name."""
    nd = REG.get(type_name)
    inputs = {k: values.pop(k) for k in list(values) if k in nd.inputs}
    return nd(nd.params(**values), RunContext(), **inputs)


def rounded(sigmas) -> list[float]:
    return [round(float(v), 4) for v in sigmas]


# --- schedules and sigma lists (ComfyUI's numbers for SD's schedule) ---------------------------------------

@pytest.mark.parametrize("type_name, values, expected", [
    ("KarrasScheduler", {"steps": 4}, [14.6146, 3.1686, 0.4469, 0.0292, 0.0]),
    ("ExponentialScheduler", {"steps": 4}, [14.6146, 1.84, 0.2317, 0.0292, 0.0]),
    ("PolyexponentialScheduler", {"steps": 4, "rho": 2.0}, [14.6146, 0.4622, 0.0582, 0.0292, 0.0]),
    ("SDTurboScheduler", {"model": SD, "steps": 4}, [14.6146, 8.3028, 5.0878, 3.3211, 0.0]),
    ("SDTurboScheduler", {"model": SD, "steps": 2, "denoise": 0.5}, [1.6129, 1.1606, 0.0]),
    ("BasicScheduler", {"model": SD, "steps": 4}, [14.6146, 2.9183, 0.9324, 0.0292, 0.0]),
    ("BasicScheduler", {"model": SD, "steps": 4, "denoise": 0.5}, [1.2768, 0.7913, 0.4397, 0.0292, 0.0]),
    ("BasicScheduler", {"model": SD, "steps": 4, "denoise": 0.0}, []),
])
def test_schedule_fixed_numbers(type_name, values, expected):
    assert rounded(call(type_name, **values)) == expected


def test_polyexponential_of_rho_one_is_exponential():
    assert torch.allclose(call("PolyexponentialScheduler", steps=7), call("ExponentialScheduler", steps=7))


def test_sigma_splits_and_flip():
    sigmas = call("KarrasScheduler", steps=4)
    split = call("SplitSigmas", sigmas=sigmas, step=2)
    assert rounded(split["high_sigmas"]) == [14.6146, 3.1686, 0.4469]
    assert rounded(split["low_sigmas"]) == [0.4469, 0.0292, 0.0]
    last = call("SplitSigmas", sigmas=sigmas, step=4)
    assert len(last["high_sigmas"]) == 5 and rounded(last["low_sigmas"]) == [0.0]
    by_denoise = call("SplitSigmasDenoise", sigmas=sigmas, denoise=0.25)
    assert rounded(by_denoise["high_sigmas"]) == [14.6146, 3.1686, 0.4469, 0.0292]
    assert rounded(by_denoise["low_sigmas"]) == [0.0292, 0.0]
    assert rounded(call("FlipSigmas", sigmas=sigmas)) == [0.0001, 0.0292, 0.4469, 3.1686, 14.6146]
    assert rounded(sigmas) == [14.6146, 3.1686, 0.4469, 0.0292, 0.0]  # the input is left alone
    assert len(call("FlipSigmas", sigmas=torch.FloatTensor([]))) == 0


def test_a_split_past_the_end_names_the_field():
    from flowrun.errors import NodeError

    with pytest.raises(NodeError, match="step 9 is past the end of the sigmas: they have 5 values, so step may be 0..4"):
        call("SplitSigmas", sigmas=call("KarrasScheduler", steps=4), step=9)


# --- port types -------------------------------------------------------------------------------------------

def test_new_ports_are_typed_and_cached_as_the_others():
    assert {ports.SAMPLER, ports.SIGMAS, ports.NOISE, ports.GUIDER} <= set(ports.ALL)
    assert ports.GUIDER in ports.MEMORY_ONLY and codecs.for_port(ports.GUIDER) is None
    for port, value in ((ports.SAMPLER, call("SamplerDPMPP_2M_SDE", solver_type="heun", eta=0.5)),
                        (ports.NOISE, call("RandomNoise", noise_seed=2**64 - 1)), (ports.NOISE, call("DisableNoise"))):
        codec = codecs.for_port(port)
        assert codec.decode(codec.encode(value)) == value
    sigmas = call("KarrasScheduler", steps=3)
    assert torch.equal(codecs.for_port(ports.SIGMAS).decode(codecs.for_port(ports.SIGMAS).encode(sigmas)), sigmas)
    assert call("KSamplerSelect", sampler_name="dpmpp_2m") == Sampler("dpmpp_2m")
    assert call("SamplerLMS", order=3).kwargs() == {"order": 3}
    assert call("DisableNoise") == Noise(None)
    adv = REG.get("SamplerCustomAdvanced")
    assert [i.type for i in adv.inputs.values()] == ["NOISE", "GUIDER", "SAMPLER", "SIGMAS", "LATENT"]
    assert list(adv.outputs) == ["output", "denoised_output"]
    assert list(REG.get("SamplerCustom").params.model_fields) == ["add_noise", "noise_seed", "cfg"]


# --- on the tiny model ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    model = tiny_bundle[0]
    gen = torch.Generator().manual_seed(0)
    width = model.unet.config.cross_attention_dim
    pos = Conditioning([CondEntry(torch.randn(1, 77, width, generator=gen))])
    neg = Conditioning([CondEntry(torch.randn(1, 77, width, generator=gen))])
    return model, pos, neg


def test_sampler_custom_advanced_is_ksampler_in_pieces(tiny):
    model, pos, neg = tiny
    latent = Latent(torch.zeros(1, 4, 8, 8))
    expected = ksample(model, seed=5, steps=3, cfg=4.0, sampler_name="euler", scheduler="normal", positive=pos,
                       negative=neg, latent=latent).samples
    sigmas = call("BasicScheduler", model=model, scheduler="normal", steps=3)
    sampler = call("KSamplerSelect", sampler_name="euler")
    guider = call("CFGGuider", model=model, positive=pos, negative=neg, cfg=4.0)
    adv = call("SamplerCustomAdvanced", noise=call("RandomNoise", noise_seed=5), guider=guider, sampler=sampler,
               sigmas=sigmas, latent_image=latent)
    custom = call("SamplerCustom", model=model, positive=pos, negative=neg, sampler=sampler, sigmas=sigmas,
                  latent_image=latent, noise_seed=5, cfg=4.0)
    assert (adv["output"].samples - expected).abs().max().item() == 0.0
    assert torch.equal(custom["output"].samples, expected)
    # with euler the last step's prediction is the result itself (x + d * (0 - sigma) = denoised)
    assert torch.allclose(adv["denoised_output"].samples, expected, atol=1e-5)


def test_no_noise_and_no_steps_leave_the_latent_alone(tiny):
    model, pos, neg = tiny
    latent = Latent(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)))
    out = call("SamplerCustomAdvanced", noise=call("DisableNoise"),
               guider=call("CFGGuider", model=model, positive=pos, negative=neg),
               sampler=call("KSamplerSelect"), sigmas=call("BasicScheduler", model=model, denoise=0.0),
               latent_image=latent)
    assert torch.equal(out["output"].samples, latent.samples)
    assert torch.equal(out["denoised_output"].samples, latent.samples)


def test_model_sampling_discrete_gives_a_new_model(tiny):
    model, pos, neg = tiny
    v = call("ModelSamplingDiscrete", model=model, sampling="v_prediction")
    assert v.sampling.prediction_type == "v_prediction" and model.sampling.prediction_type == "epsilon"
    assert v is not model and v.unet is model.unet  # the weights are shared, the input is not changed
    zsnr = call("ModelSamplingDiscrete", model=model, sampling="eps", zsnr=True)
    assert rounded(zsnr.sampling.sigmas[[0, 999]]) == [0.0292, 4518.7637]
    assert float(model.sampling.sigma_max) == pytest.approx(14.614641, abs=1e-5)
    lcm = call("ModelSamplingDiscrete", model=model, sampling="lcm").sampling  # 50 distilled timesteps
    from flowrun.diffusion import schedules

    lcm_sigmas = schedules.calculate(lcm, "sgm_uniform", 4)
    assert rounded(lcm_sigmas) == [14.6146, 4.1708, 1.6679, 0.7325, 0.0]
    assert lcm.timestep(lcm_sigmas[:-1]).tolist() == [999, 759, 499, 259]  # LCM's own 4-step timesteps
    kw = dict(seed=2, steps=2, cfg=3.0, sampler_name="euler", scheduler="normal", positive=pos, negative=neg,
              latent=Latent(torch.zeros(1, 4, 8, 8)))
    assert not torch.allclose(ksample(v, **kw).samples, ksample(model, **kw).samples)
    lcm_model = call("ModelSamplingDiscrete", model=model, sampling="lcm")
    assert torch.isfinite(ksample(lcm_model, **{**kw, "sampler_name": "lcm", "scheduler": "sgm_uniform"}).samples).all()


@pytest.mark.parametrize("sampler_name", ["euler", "dpmpp_2m"])
def test_masked_sampling_keeps_the_unmasked_latent(tiny, sampler_name):
    model, pos, neg = tiny
    original = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    mask = np.zeros((1, 16, 16), np.float32)  # a mask at another size is resized to the latent
    mask[:, :, :8] = 1.0  # the left half may change
    latent = call("SetLatentNoiseMask", samples=Latent(original), mask=mask)
    assert latent.noise_mask.shape == (1, 1, 16, 16)
    out = ksample(model, seed=9, steps=3, cfg=4.0, sampler_name=sampler_name, scheduler="normal", positive=pos,
                  negative=neg, latent=latent, denoise=0.8).samples
    # the last step lands on the prediction, which outside the mask is the original latent itself
    assert torch.allclose(out[..., 4:], original[..., 4:], atol=1e-5)
    assert (out[..., :4] - original[..., :4]).abs().max() > 0.1
    custom = call("SamplerCustom", model=model, positive=pos, negative=neg, noise_seed=9, cfg=4.0,
                  sampler=call("KSamplerSelect", sampler_name=sampler_name),
                  sigmas=call("BasicScheduler", model=model, steps=3, denoise=0.8), latent_image=latent)
    assert torch.equal(custom["output"].samples, out)


def test_parameterised_samplers_run_and_differ(tiny):
    model, pos, neg = tiny
    sigmas = call("KarrasScheduler", steps=3)
    guider = call("BasicGuider", model=model, conditioning=pos)
    latent = Latent(torch.zeros(1, 4, 8, 8))

    def run(sampler):
        return call("SamplerCustomAdvanced", noise=call("RandomNoise", noise_seed=1), guider=guider,
                    sampler=sampler, sigmas=sigmas, latent_image=latent)["output"].samples

    plain = run(call("KSamplerSelect", sampler_name="euler_ancestral"))
    assert torch.equal(run(call("SamplerEulerAncestral")), plain)  # defaults: the same sampler
    assert not torch.allclose(run(call("SamplerEulerAncestral", s_noise=0.5)), plain)
    assert torch.equal(run(call("SamplerEulerAncestral", eta=0.0)), run(call("KSamplerSelect", sampler_name="euler")))
    sde = run(call("KSamplerSelect", sampler_name="dpmpp_2m_sde"))
    assert torch.equal(run(call("SamplerDPMPP_2M_SDE")), sde)
    assert not torch.allclose(run(call("SamplerDPMPP_2M_SDE", solver_type="heun")), sde)
    assert torch.isfinite(run(call("SamplerDPMPP_SDE", r=0.3))).all()
    assert torch.isfinite(run(call("SamplerLMS", order=2))).all()
    dual = call("DualCFGGuider", model=model, cond1=pos, cond2=neg, negative=neg, cfg_conds=1.0, cfg_cond2_negative=1.0)
    assert torch.allclose(call("SamplerCustomAdvanced", noise=call("RandomNoise", noise_seed=1), guider=dual,
                               sampler=call("KSamplerSelect"), sigmas=sigmas, latent_image=latent)["output"].samples,
                          run(call("KSamplerSelect")), atol=1e-5)  # cfg 1 and 1: the first conditioning alone


# --- bad input through the CLI ------------------------------------------------------------------------------

def test_a_sigma_list_too_short_for_a_split(cli, workflow, tiny_models, tmp_path):
    from conftest import ROOT

    text = (ROOT / "workflows" / "custom-sampling.yaml").read_text()
    wf = workflow(text.replace("{step: 6}", "{step: 12}"))
    r = cli("run", wf, "--models-dir", tiny_models, "--out", tmp_path / "o", "--device", "cpu")
    assert r.code == 1 and "Traceback" not in r.err, r.err
    assert "split" in r.err and "SplitSigmas" in r.err and "step 12 is past the end of the sigmas: they have 11 values" in r.err
    r = cli("validate", workflow(text.replace("{step: 6}", "{step: -1}"), "neg.yaml"))
    assert r.code == 2 and "Traceback" not in r.err
    assert "neg.yaml:41:18" in r.err and "node 'split', field 'step'" in r.err


# --- ComfyUI's graphs of it ---------------------------------------------------------------------------------

def test_comfyui_graphs_import_run_and_export(cli, tiny_models, tmp_path):
    import json

    from conftest import ROOT
    from test_interop import _shape

    source = ROOT / "tests" / "comfyui" / "custom-sampling-api.json"
    assert cli("import", source, "--out", tmp_path / "wf.yaml").code == 0
    text = (tmp_path / "wf.yaml").read_text()
    assert "type: SamplerCustomAdvanced" in text and "split.low_sigmas" in text
    r = cli("run", tmp_path / "wf.yaml", "--models-dir", tiny_models, "--out", tmp_path / "o", "--device", "cpu")
    assert r.code == 0, r.err
    with __import__("PIL.Image").Image.open(tmp_path / "o" / "ComfyUI.png") as im:
        assert im.size == (64, 64) and _shape(json.loads(im.info["prompt"])) == _shape(json.loads(source.read_text()))
    assert cli("import", ROOT / "tests" / "comfyui" / "custom-sampling-ui.json", "--out", tmp_path / "ui.yaml").code == 0
    assert cli("validate", tmp_path / "ui.yaml", "--models-dir", tiny_models).code == 0
