"""ControlNet and T2I-Adapter: files in both layouts, renders equal to diffusers' ControlNet pipeline, chains,
percent ranges, the adapter computed once per hint, ControlNetApply's control on the negative prompt, Canny
against numbers worked out by hand, and the errors a wrong file gives."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import tiny_model
from flowrun.diffusion import shapes
from flowrun.diffusion.canny import canny
from flowrun.diffusion.control import AppliedControl, controls_to_uncond
from flowrun.diffusion.controlnet_files import load_control_file
from flowrun.values import CondEntry, Conditioning

STEPS, SEED, CFG, STRENGTH = 10, 7, 6.0, 0.8
PROMPT = "a red circle on a white background"


def _hint_png(folder) -> np.ndarray:
    from PIL import Image

    image = shapes.render(shapes.Scene("square", "blue", "black", 24.0, 38.0, 14.0))
    Image.fromarray(image).save(folder / "hint.png")
    return image


WORKFLOW = """
version: 1
name: cn
nodes:
  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}
  pos: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: "%(prompt)s"}}
  neg: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: ""}}
  hint: {type: LoadImage, with: {image: hint.png}}
  cnet: {type: ControlNetLoader, with: {control_net_name: %(name)s}}
  apply:
    type: ControlNetApplyAdvanced
    in: {positive: pos, negative: neg, control_net: cnet, image: hint.image}
    with: {strength: %(strength)s, start_percent: 0.0, end_percent: 1.0}
  latent: {type: EmptyLatentImage, with: {width: 64, height: 64}}
%(sampler)s
  decode: {type: VAEDecode, in: {samples: %(samples)s, vae: ckpt.vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: cn}}
"""

KSAMPLER = """  sample:
    type: KSampler
    in: {model: ckpt.model, positive: apply.positive, negative: apply.negative, latent_image: latent}
    with: {seed: %d, steps: %d, cfg: %s, sampler_name: euler, scheduler: normal}""" % (SEED, STEPS, CFG)

CUSTOM = """  noise: {type: RandomNoise, with: {noise_seed: %d}}
  guider:
    type: CFGGuider
    in: {model: ckpt.model, positive: apply.positive, negative: apply.negative}
    with: {cfg: %s}
  sampler: {type: KSamplerSelect, with: {sampler_name: euler}}
  sigmas: {type: BasicScheduler, in: {model: ckpt.model}, with: {scheduler: normal, steps: %d, denoise: 1.0}}
  sample:
    type: SamplerCustomAdvanced
    in: {noise: noise, guider: guider, sampler: sampler, sigmas: sigmas, latent_image: latent}""" % (SEED, CFG, STEPS)


def _render(workflow, tmp_path, models, sampler=KSAMPLER, samples="sample", name="flowrun-tiny-canny",
            strength=STRENGTH) -> np.ndarray:
    from PIL import Image

    from flowrun import api
    from flowrun.settings import Settings

    path = workflow(WORKFLOW % {"prompt": PROMPT, "name": name, "strength": strength, "sampler": sampler,
                                "samples": samples}, f"cn-{abs(hash((sampler, name, strength)))}.yaml")
    result = api.run(api.load(path), Settings(out_dir=tmp_path / "out", use_cache=False,
                                              models_dirs=tuple(str(m) for m in models), device="cpu"))
    return np.asarray(Image.open(result.files[-1])).astype(int)


def test_controlnet_render_matches_diffusers_pipeline(tiny_models, tmp_path, workflow):
    """ControlNetApplyAdvanced + KSampler (euler, normal) and diffusers' StableDiffusionControlNetPipeline
    with EulerDiscreteScheduler (linspace spacing), same toy models, seed, cfg, strength: within one 8-bit
    level; SamplerCustomAdvanced with the same control gives KSampler's image; the control changes it."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline
    from PIL import Image

    from flowrun.diffusion.checkpoint import tokenizer

    hint = _hint_png(tmp_path)
    _, unet, vae, text = tiny_model.build(0)
    controlnet = tiny_model.build_controlnet(unet)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="linspace", steps_offset=1)
    pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer(), unet=unet,
                                             controlnet=controlnet, scheduler=sched, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=Image.fromarray(hint), negative_prompt="", height=64, width=64,
                  num_inference_steps=STEPS, guidance_scale=CFG, controlnet_conditioning_scale=STRENGTH,
                  generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images[0]
    theirs = np.clip(255 * theirs, 0, 255).astype(np.uint8).astype(int)

    ours = _render(workflow, tmp_path, [tiny_models])
    assert np.abs(ours - theirs).max() <= 1, f"max difference {np.abs(ours - theirs).max()} levels"
    custom = _render(workflow, tmp_path, [tiny_models], sampler=CUSTOM, samples="sample.output")
    assert np.abs(custom - ours).max() <= 1
    plain = _render(workflow, tmp_path, [tiny_models], strength=0.0)  # strength 0: the control is not applied
    assert np.abs(plain - ours).mean() > 2.0


def test_original_and_diffusers_layouts_load_the_same_weights(tmp_path):
    """A ControlNet written in the original (control_model.*) layout loads to the weights of the diffusers
    layout; without a stored config its config is read off the weights (widths, depths, hint embedding)."""
    diffusers_file = tiny_model.write_controlnet(tmp_path, "a", layout="diffusers")
    ldm_file = tiny_model.write_controlnet(tmp_path, "b", layout="ldm")
    bare = tiny_model.write_controlnet(tmp_path, "c", layout="ldm", config_in_file=False)
    a, b, c = (load_control_file(p, p.stem) for p in (diffusers_file, ldm_file, bare))
    sa, sb, sc = (x.module.state_dict() for x in (a, b, c))
    assert set(sa) == set(sb) == set(sc) and all(torch.equal(sa[k], sb[k]) and torch.equal(sa[k], sc[k]) for k in sa)
    assert (a.family, b.family, c.family, a.kind) == ("sd1", "sd1", "sd1", "controlnet")
    inferred = c.module.config
    assert list(inferred.block_out_channels) == [32, 64] and inferred.layers_per_block == 1
    assert list(inferred.down_block_types) == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert inferred.cross_attention_dim == 32 and list(inferred.conditioning_embedding_out_channels) == [8, 8, 16, 16]
    assert load_control_file(tiny_model.write_controlnet(tmp_path, "xl", family="sdxl"), "xl").family == "sdxl"


def _model():
    from flowrun.diffusion.configs import ModelConfig
    from flowrun.diffusion.model import DiffusionModel, ModelSampling

    config, unet, _, _ = tiny_model.build(0)
    return DiffusionModel(unet, ModelSampling(), ModelConfig("sd1", dict(unet.config), {}, [], "epsilon"), "tiny")


def _control_file(seed: int, tmp_path):
    path = tiny_model.write_controlnet(tmp_path, f"cn{seed}", seed=seed)
    return load_control_file(path, str(seed))


def test_chain_sums_residuals_and_percent_range_turns_it_off(tmp_path):
    """A control applied over another gives the sum of both residuals; outside its (start, end) percent
    range a control gives none (its predecessor's only); strength scales the residuals."""
    model = _model()
    hint = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    first_file, second_file = _control_file(3, tmp_path), _control_file(4, tmp_path)
    first = AppliedControl(first_file, hint, 1.0)
    second_alone = AppliedControl(second_file, hint, 0.5)
    chained = AppliedControl(second_file, hint, 0.5, (0.0, 0.5), previous=first)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    context = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([900.0, 900.0])
    high, low = torch.tensor([10.0, 10.0]), torch.tensor([0.1, 0.1])  # early (sigma high) and late in the schedule

    def res(control, sigma):
        return control.for_sampling(model, 2).residuals(x, t, sigma, context, None)

    r1, r2, both = res(first, high), res(second_alone, high), res(chained, high)
    for a, b, s in zip(r1["down_block_additional_residuals"], r2["down_block_additional_residuals"],
                       both["down_block_additional_residuals"]):
        assert torch.allclose(a + b, s, atol=1e-5)
    assert torch.allclose(r1["mid_block_additional_residual"] + r2["mid_block_additional_residual"],
                          both["mid_block_additional_residual"], atol=1e-5)
    full = res(AppliedControl(second_file, hint, 1.0), high)["mid_block_additional_residual"]
    assert torch.allclose(full * 0.5, r2["mid_block_additional_residual"], atol=1e-5)
    late = res(chained, low)  # past 50 %: only the first control
    assert torch.allclose(late["mid_block_additional_residual"], res(first, low)["mid_block_additional_residual"])
    assert model.sampling.percent_to_sigma(0.5) > 0.1


def test_t2i_adapter_features_once_per_hint_as_intrablock_residuals(tmp_path):
    """A T2I-Adapter in TencentARC's original layout loads to diffusers' T2IAdapter; its features times
    strength go to down_intrablock_additional_residuals, computed once for all steps."""
    from diffusers import T2IAdapter
    from safetensors.torch import save_file

    torch.manual_seed(0)
    adapter = T2IAdapter(in_channels=3, channels=[32, 64], num_res_blocks=2, downscale_factor=8).eval()
    original = {}
    for key, value in adapter.state_dict().items():  # diffusers -> original keys: body.{level * 2 + resnet}
        parts = key.removeprefix("adapter.").split(".")
        if parts[0] == "body":
            level = int(parts[1])
            if parts[2] == "resnets":
                parts = ["body", str(level * 2 + int(parts[3]))] + parts[4:]
            else:
                parts = ["body", str(level * 2)] + parts[2:]
        original[".".join(parts)] = value.contiguous()
    path = tmp_path / "t2i.safetensors"
    save_file(original, str(path))
    loaded = load_control_file(path, "t2i")
    assert loaded.kind == "t2i_adapter" and loaded.family == "sd1"
    state = loaded.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in adapter.state_dict().items())

    calls = []
    loaded.module.register_forward_hook(lambda *a: calls.append(1))
    hint = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    control = AppliedControl(loaded, hint, 0.7).for_sampling(_model(), 1)
    x = torch.zeros(2, 4, 8, 8)
    for sigma in (10.0, 5.0, 1.0):
        out = control.residuals(x, torch.tensor([500.0] * 2), torch.tensor([sigma] * 2), torch.zeros(2, 77, 32), None)
    expected = adapter(torch.from_numpy(hint).movedim(-1, 1))
    got = out["down_intrablock_additional_residuals"]
    assert len(calls) == 1 and len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape[0] == 2 and torch.allclose(g[1:], e * 0.7, atol=1e-5)


def test_controlnet_apply_gives_the_control_to_the_negative_prompt(tmp_path):
    """ControlNetApply (ComfyUI's older node) marks its controls for the negative prompt too: the sampler
    gives them to negative entries without one (apply_empty_x_to_equal_area); ControlNetApplyAdvanced's stay
    where they were put."""
    from flowrun.diffusion.control import APPLY_TO_UNCOND

    control = AppliedControl(_control_file(3, tmp_path), np.zeros((1, 8, 8, 3), np.float32), 1.0)
    neg = Conditioning([CondEntry(torch.zeros(1, 77, 32))])
    old_style = Conditioning([CondEntry(torch.zeros(1, 77, 32), control=control, extra={APPLY_TO_UNCOND: True})])
    advanced = Conditioning([CondEntry(torch.zeros(1, 77, 32), control=control, extra={APPLY_TO_UNCOND: False})])
    assert controls_to_uncond(old_style, neg)[0].control is control
    assert controls_to_uncond(advanced, neg)[0].control is None


def test_canny_matches_numbers_worked_by_hand():
    """A vertical step 0 -> 1 between columns 7 and 8: after the 5x5 Gaussian (sigma 1) and the unnormalised
    Sobel, the gradient magnitude beside the step is 4 * (0.40262 + 0.24420 + 0.05449 - 0.05449) = 2.5873.
    With column 7 at 0.75 (a partly covered column) the magnitude peaks on one side: non-maximum suppression
    keeps one straight edge of 16 strong pixels, in column 7; thresholds above the magnitude keep nothing."""
    g = [math.exp(-k * k / 2) for k in (-2, -1, 0, 1, 2)]
    g = [v / sum(g) for v in g]
    image = torch.zeros(1, 1, 16, 16)
    image[..., 8:] = 1.0
    from flowrun.diffusion import canny as canny_module

    blurred = canny_module._gaussian_blur(image)
    assert float(blurred[0, 0, 8, 7]) == pytest.approx(g[3] + g[4], abs=1e-6)
    expected = 4 * ((g[2] + g[3] + g[4]) - g[4])
    padded = torch.nn.functional.pad(blurred, (1, 1, 1, 1), mode="replicate")
    gx = float(padded[0, 0, 9, 9] - padded[0, 0, 9, 7]) * 4
    assert gx == pytest.approx(expected, abs=1e-5) and expected == pytest.approx(2.5873, abs=1e-4)
    image[..., 7] = 0.75
    edges = canny(image.expand(1, 3, 16, 16), 0.2, 0.5)[0, 0]
    assert edges.sum() == 16 and bool((edges[:, 7] == 1).all())
    assert float(canny(image.expand(1, 3, 16, 16), 0.95, 0.99).sum()) == 16  # 2.59 > 0.99: still strong
    assert float(canny(image.expand(1, 3, 16, 16) * 0.1, 0.3, 0.5).sum()) == 0  # a faint step: below both


def test_canny_node_edges_of_a_shape():
    """The Canny node's edges of a rendered square lie on its outline: a one-pixel ring of 100 pixels
    around a square of 25.5 pixels a side, none inside or far outside."""
    from flowrun.nodes.controlnet import CannyParams, canny_node

    image = shapes.render(shapes.Scene("square", "red", "white", 32.0, 32.0, 15.0))[None].astype(np.float32) / 255
    edges = canny_node(CannyParams(low_threshold=0.2, high_threshold=0.5), None, image=image)
    assert edges.shape == (1, 64, 64, 3) and set(np.unique(edges)) == {0.0, 1.0}
    ys, xs = np.nonzero(edges[0, :, :, 0])
    assert len(ys) == 100
    assert ys.min() >= 18 and ys.max() <= 45 and xs.min() >= 18 and xs.max() <= 45
    assert edges[0, 24:40, 24:40].sum() == 0


def test_controlnet_for_another_family_is_refused_naming_both(tiny_models, tmp_path, workflow):
    """An SDXL ControlNet applied to the SD1 model: the sampler's node fails naming the conditioning that
    carries it, the file and both families."""
    from flowrun.errors import RunFailed

    _hint_png(tmp_path)
    extra = tmp_path / "extra"
    tiny_model.write_controlnet(extra, "xl-canny", family="sdxl")
    with pytest.raises(RunFailed) as info:
        _render(workflow, tmp_path, [tiny_models, extra], name="xl-canny")
    text = info.value.render()
    assert "node 'sample' (KSampler)" in text
    assert "input 'positive': the ControlNet 'xl-canny.safetensors' is for SDXL models, the model is SD1" in text


def test_unknown_controlnet_name_is_a_missing_file_at_its_line(tiny_models, tmp_path, workflow, cli):
    _hint_png(tmp_path)
    path = workflow(WORKFLOW % {"prompt": PROMPT, "name": "no-such-net", "strength": 1.0, "sampler": KSAMPLER,
                                "samples": "sample"})
    r = cli("validate", path, "--models-dir", tiny_models)
    line = WORKFLOW.lstrip("\n").splitlines().index(
        "  cnet: {type: ControlNetLoader, with: {control_net_name: %(name)s}}") + 1
    assert r.code == 2 and f"wf.yaml:{line}:" in r.err, r.err
    assert "field 'control_net_name'" in r.err and "no-such-net" in r.err and "flowrun-tiny-canny" in r.err, r.err


def test_diff_controlnet_adds_the_models_weights(tiny_models, tmp_path):
    """A diff ControlNet stores weights minus the UNet's; DiffControlNetLoader adds the model's back."""
    from safetensors.torch import load_file, save_file

    from flowrun.diffusion.export import CONFIG_KEY
    from flowrun.diffusion.detect import read_header

    plain = tiny_model.write_controlnet(tmp_path, "plain")
    _, unet, _, _ = tiny_model.build(0)
    base = unet.state_dict()
    state = {k: (v - base[k] if k in base else v).contiguous() for k, v in load_file(str(plain)).items()}
    state["difference"] = torch.tensor([0.0])
    diff = tmp_path / "controlnet" / "diff.safetensors"
    save_file(state, str(diff), metadata={CONFIG_KEY: read_header(plain).metadata[CONFIG_KEY]})
    a = load_control_file(plain, "p").module.state_dict()
    b = load_control_file(diff, "d", unet=unet).module.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(Exception, match="diff ControlNet"):
        load_control_file(diff, "d")
    assert json.loads(read_header(plain).metadata[CONFIG_KEY])["family"] == "sd1"


@pytest.mark.parametrize("form", ["api", "ui"])
def test_comfyui_controlnet_graph_imports_validates_and_runs(form, tiny_models, tmp_path, cli):
    """The hand-written ComfyUI graphs (tests/comfyui/controlnet-*.json: LoadImage -> Canny ->
    ControlNetApplyAdvanced with its optional vae linked -> KSampler) import, validate and run."""
    import shutil

    from conftest import ROOT

    assert cli("import", ROOT / "tests" / "comfyui" / f"controlnet-{form}.json", "--out", tmp_path / "wf.yaml").code == 0
    text = (tmp_path / "wf.yaml").read_text()
    assert "type: ControlNetApplyAdvanced" in text and "end_percent: 0.8" in text and "type: Canny" in text
    (tmp_path / "inputs").mkdir()
    shutil.copy(ROOT / "workflows" / "inputs" / "blue-triangle.png", tmp_path / "inputs")
    r = cli("validate", tmp_path / "wf.yaml", "--models-dir", tiny_models)
    assert r.code == 0, r.err
    r = cli("run", tmp_path / "wf.yaml", "--models-dir", tiny_models, "--out", tmp_path / "o")
    assert r.code == 0, r.err
    assert (tmp_path / "o" / "controlnet.png").is_file()


OLD_STYLE = """
version: 1
name: cn-old
nodes:
  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}
  pos: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: "%(prompt)s"}}
  neg: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: ""}}
  hint: {type: LoadImage, with: {image: hint.png}}
  cnet: {type: DiffControlNetLoader, in: {model: ckpt.model}, with: {control_net_name: diff}}
  apply: {type: ControlNetApply, in: {conditioning: pos, control_net: cnet, image: hint.image}, with: {strength: %(s)s}}
  latent: {type: EmptyLatentImage, with: {width: 64, height: 64}}
  sample:
    type: KSampler
    in: {model: ckpt.model, positive: apply, negative: neg, latent_image: latent}
    with: {seed: %(seed)d, steps: %(steps)d, cfg: %(cfg)s, sampler_name: euler, scheduler: normal}
  decode: {type: VAEDecode, in: {samples: sample, vae: ckpt.vae}}
  save: {type: SaveImage, in: {images: decode}, with: {filename_prefix: old}}
"""


def test_diff_loader_and_old_apply_render_as_the_advanced_node(tiny_models, tmp_path, workflow):
    """DiffControlNetLoader with a diff file + ControlNetApply (whose control also steers the negative
    prompt) renders the image of ControlNetLoader with the plain file + ControlNetApplyAdvanced (0 to 1)."""
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from flowrun import api
    from flowrun.diffusion.detect import read_header
    from flowrun.diffusion.export import CONFIG_KEY
    from flowrun.settings import Settings

    _hint_png(tmp_path)
    extra = tmp_path / "extra"
    plain = tiny_models / "controlnet" / "flowrun-tiny-canny.safetensors"
    _, unet, _, _ = tiny_model.build(0)
    base = unet.state_dict()
    state = {k: (v - base[k] if k in base else v).contiguous() for k, v in load_file(str(plain)).items()}
    (extra / "controlnet").mkdir(parents=True)
    save_file({**state, "difference": torch.tensor([0.0])}, str(extra / "controlnet" / "diff.safetensors"),
              metadata={CONFIG_KEY: read_header(plain).metadata[CONFIG_KEY]})
    path = workflow(OLD_STYLE % {"prompt": PROMPT, "s": STRENGTH, "seed": SEED, "steps": 4, "cfg": CFG}, "old.yaml")
    result = api.run(api.load(path), Settings(out_dir=tmp_path / "o", use_cache=False, device="cpu",
                                              models_dirs=(str(tiny_models), str(extra))))
    old = np.asarray(Image.open(result.files[-1])).astype(int)
    advanced = _render(workflow, tmp_path, [tiny_models], sampler=KSAMPLER.replace(f"steps: {STEPS}", "steps: 4"))
    assert np.abs(old - advanced).max() <= 1


def test_diffusers_folder_loads(tmp_path):
    """A ControlNet saved by diffusers (a folder with config.json) loads by its folder name."""
    _, unet, _, _ = tiny_model.build(0)
    controlnet = tiny_model.build_controlnet(unet)
    controlnet.save_pretrained(tmp_path / "controlnet" / "folder-net")
    loaded = load_control_file(tmp_path / "controlnet" / "folder-net", "f")
    assert (loaded.kind, loaded.family) == ("controlnet", "sd1")
    ours, theirs = loaded.module.state_dict(), controlnet.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_bundled_controlnet_is_small_float16_for_flowrun_tiny():
    """flowrun-tiny-canny: float16, under 5 MB, an SD1 ControlNet whose config rides in its metadata and
    whose UNet-side widths are flowrun-tiny's; the model card says how it was made and what it does."""
    from flowrun.diffusion.detect import read_header
    from flowrun.files import BUNDLED

    path = BUNDLED / "controlnet" / "flowrun-tiny-canny.safetensors"
    assert path.stat().st_size < 5 * 1024 * 1024
    header = read_header(path)
    assert set(header.dtypes.values()) == {"F16"}
    loaded = load_control_file(path, "bundled")
    unet_config = json.loads((BUNDLED / "checkpoints" / "flowrun-tiny.json").read_text())["unet"]
    assert loaded.family == "sd1"
    assert list(loaded.module.config.block_out_channels) == list(unet_config["block_out_channels"])
    card = (BUNDLED / "README.md").read_text()
    assert "tools/train_controlnet.py" in card and "tools/evaluate_controlnet.py" in card


def test_sdxl_controlnet_steers_an_sdxl_model(tmp_path):
    """An SDXL ControlNet (size conditioning through its add_embedding) on a toy SDXL model: sampling runs
    with it, it changes the latent, and strength 0 leaves the latent as without it."""
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.ksampler import ksample
    from flowrun.nodes.controlnet import ApplyAdvancedParams, controlnet_apply_advanced
    from flowrun.values import Latent

    model, clip, _ = load_bundle(tiny_model.write_family(tmp_path, "sdxl"), "xl")
    control = load_control_file(tiny_model.write_controlnet(tmp_path, "xl", family="sdxl"), "xl-cn")
    pos, neg = encode(clip, PROMPT), encode(clip, "")
    hint = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    latent = Latent(torch.zeros(1, 4, 8, 8))

    def sample(strength):
        out = controlnet_apply_advanced(ApplyAdvancedParams(strength=strength), None, positive=pos, negative=neg,
                                        control_net=control, image=hint)
        return ksample(model, seed=1, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                       positive=out["positive"], negative=out["negative"], latent=latent).samples

    plain = ksample(model, seed=1, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal", positive=pos,
                    negative=neg, latent=latent).samples
    assert torch.equal(sample(0.0), plain)
    assert (sample(1.0) - plain).abs().mean() > 1e-3


def test_t2i_adapter_render_matches_diffusers_adapter_pipeline(tiny_models, tmp_path, workflow):
    """A T2I-Adapter (diffusers layout, config read off its weights) through ControlNetLoader +
    ControlNetApplyAdvanced + KSampler equals diffusers' StableDiffusionAdapterPipeline within one level."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionAdapterPipeline, T2IAdapter
    from PIL import Image
    from safetensors.torch import save_file

    from flowrun.diffusion.checkpoint import tokenizer

    hint = _hint_png(tmp_path)
    _, unet, vae, text = tiny_model.build(0)
    torch.manual_seed(5)
    adapter = T2IAdapter(in_channels=3, channels=[32, 64], num_res_blocks=2, downscale_factor=8).eval()
    extra = tmp_path / "extra" / "controlnet"
    extra.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(extra / "t2i.safetensors"))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="linspace", steps_offset=1)
    pipe = StableDiffusionAdapterPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer(), unet=unet,
                                          adapter=adapter, scheduler=sched, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=Image.fromarray(hint), negative_prompt="", height=64, width=64,
                  num_inference_steps=STEPS, guidance_scale=CFG, adapter_conditioning_scale=STRENGTH,
                  generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images[0]
    theirs = np.clip(255 * theirs, 0, 255).astype(np.uint8).astype(int)
    ours = _render(workflow, tmp_path, [tiny_models, tmp_path / "extra"], name="t2i")
    plain = _render(workflow, tmp_path, [tiny_models, tmp_path / "extra"], name="t2i", strength=0.0)
    assert np.abs(ours - theirs).max() <= 1, f"max difference {np.abs(ours - theirs).max()} levels"
    assert np.abs(plain - ours).mean() > 1.0
