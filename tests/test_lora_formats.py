"""LoRA files in each layout people have (kohya LoRA/LoCon, LyCORIS LoHa/LoKr, diff, DoRA, diffusers, PEFT),
built here against the tiny SD1 model. Each is checked against its closed form, W + strength * delta with
the delta written out independently below, and the linear layouts against diffusers' own loader
(`load_lora_weights` + `fuse_lora`). Unmatched keys are a warning; a LoRA for another family, an error."""

from __future__ import annotations

import pytest
import torch

from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.lora import patched, read_lora

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # 32 -> 32 linear
CONV = "down_blocks.0.resnets.0.conv1"  # 32 -> 32, 3x3
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"  # 32 -> 32 linear
STRENGTH = 0.7
TOL = dict(rtol=1e-5, atol=1e-5)


def _kohya(name: str) -> str:
    return "lora_unet_" + name.replace(".", "_")


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen) * 0.3


@pytest.fixture
def apply(tiny_bundle, tmp_path):
    """apply(state, strength) -> (unet weights, text weights) while the LoRA is on; checks the model is
    clean again after."""
    from safetensors.torch import save_file

    model, clip, _ = tiny_bundle
    unet, text = model.unet, clip.models[0]

    def run(state, strength=STRENGTH, warnings=None):
        path = tmp_path / "lora.safetensors"
        save_file({k: v.clone().contiguous() for k, v in state.items()}, str(path))
        before = {k: v.clone() for k, v in unet.state_dict().items()}
        unet_p, clip_p = read_lora(path, unet, [text], strength, strength, family="sd1",
                                   warn=None if warnings is None else warnings.append)
        with patched(unet, tuple(unet_p)), patched([text], tuple(clip_p)):
            on = {k: v.clone() for k, v in unet.state_dict().items()}, {k: v.clone() for k, v in text.state_dict().items()}
        assert all(torch.equal(unet.state_dict()[k], before[k]) for k in before)
        return on

    return run


def _weight(tiny_bundle, name, part="weight"):
    model, clip, _ = tiny_bundle
    return model.unet.state_dict()[f"{name}.{part}"].clone()


def _only_change(on, original, name, expected):
    """The named weight is `expected`; every other weight is untouched."""
    torch.testing.assert_close(on[f"{name}.weight"], expected, **TOL)
    assert all(torch.equal(v, original[k]) for k, v in on.items() if not k.startswith(name + "."))


# --- closed forms --------------------------------------------------------------------------------------

def test_kohya_linear(apply, tiny_bundle):
    gen = torch.Generator().manual_seed(0)
    down, up = _rand(gen, 4, 32), _rand(gen, 32, 4)
    w = _weight(tiny_bundle, ATTN)
    on, _ = apply({_kohya(ATTN) + ".lora_down.weight": down, _kohya(ATTN) + ".lora_up.weight": up,
                   _kohya(ATTN) + ".alpha": torch.tensor(2.0)})
    _only_change(on, tiny_bundle[0].unet.state_dict(), ATTN, w + STRENGTH * (2.0 / 4) * (up @ down))


def test_locon_conv_and_original_layout_name(apply, tiny_bundle):
    gen = torch.Generator().manual_seed(1)
    down, up = _rand(gen, 4, 32, 3, 3), _rand(gen, 32, 4, 1, 1)
    w = _weight(tiny_bundle, CONV)
    # the same conv in the original (LDM) layout: input_blocks.1.0.in_layers.2
    on, _ = apply({"lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight": down,
                   "lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight": up})
    delta = torch.zeros_like(w)
    for r in range(4):  # each rank: an outer product of the up column with the down kernel
        delta += up[:, r, 0, 0].view(-1, 1, 1, 1) * down[r].unsqueeze(0)
    _only_change(on, tiny_bundle[0].unet.state_dict(), CONV, w + STRENGTH * delta)


def test_locon_tucker_mid(apply, tiny_bundle):
    gen = torch.Generator().manual_seed(2)
    down, mid, up = _rand(gen, 3, 32, 1, 1), _rand(gen, 3, 3, 3, 3), _rand(gen, 32, 3, 1, 1)
    w = _weight(tiny_bundle, CONV)
    base = _kohya(CONV)
    on, _ = apply({base + ".lora_down.weight": down, base + ".lora_mid.weight": mid, base + ".lora_up.weight": up,
                   base + ".alpha": torch.tensor(1.5)})
    delta = torch.zeros_like(w)
    for h in range(3):
        for x in range(3):  # at each kernel tap: up @ mid[:, :, h, x] @ down
            delta[:, :, h, x] = up[:, :, 0, 0] @ mid[:, :, h, x] @ down[:, :, 0, 0]
    _only_change(on, tiny_bundle[0].unet.state_dict(), CONV, w + STRENGTH * 0.5 * delta)


def test_loha_linear_and_cp(apply, tiny_bundle):
    gen = torch.Generator().manual_seed(3)
    w1a, w1b, w2a, w2b = _rand(gen, 32, 4), _rand(gen, 4, 32), _rand(gen, 32, 4), _rand(gen, 4, 32)
    t1, t2 = _rand(gen, 2, 2, 3, 3), _rand(gen, 2, 2, 3, 3)
    c1a, c1b, c2a, c2b = _rand(gen, 2, 32), _rand(gen, 2, 32), _rand(gen, 2, 32), _rand(gen, 2, 32)
    lin, conv = _kohya(ATTN), _kohya(CONV)
    state = {lin + ".hada_w1_a": w1a, lin + ".hada_w1_b": w1b, lin + ".hada_w2_a": w2a, lin + ".hada_w2_b": w2b,
             lin + ".alpha": torch.tensor(8.0),
             conv + ".hada_w1_a": c1a, conv + ".hada_w1_b": c1b, conv + ".hada_w2_a": c2a, conv + ".hada_w2_b": c2b,
             conv + ".hada_t1": t1, conv + ".hada_t2": t2}
    w, wc = _weight(tiny_bundle, ATTN), _weight(tiny_bundle, CONV)
    on, _ = apply(state)
    torch.testing.assert_close(on[ATTN + ".weight"], w + STRENGTH * 2.0 * (w1a @ w1b) * (w2a @ w2b), **TOL)
    m1, m2 = torch.zeros_like(wc), torch.zeros_like(wc)
    for h in range(3):
        for x in range(3):  # CP form: the factors' transposes around the core's tap
            m1[:, :, h, x] = c1a.T @ t1[:, :, h, x] @ c1b
            m2[:, :, h, x] = c2a.T @ t2[:, :, h, x] @ c2b
    torch.testing.assert_close(on[CONV + ".weight"], wc + STRENGTH * m1 * m2, **TOL)


def _kron(a, b):
    """Kronecker product written out as blocks a[i, j] * b."""
    rows = [torch.cat([a[i, j] * b for j in range(a.shape[1])], dim=1) for i in range(a.shape[0])]
    return torch.cat(rows, dim=0)


def test_lokr_full_factored_and_tucker(apply, tiny_bundle):
    gen = torch.Generator().manual_seed(4)
    w1, w2a, w2b = _rand(gen, 2, 4), _rand(gen, 16, 2), _rand(gen, 2, 8)
    cw1, t2, cw2a, cw2b = _rand(gen, 4, 2), _rand(gen, 2, 2, 3, 3), _rand(gen, 2, 8), _rand(gen, 2, 16)
    te_w1, te_w2 = _rand(gen, 4, 4), _rand(gen, 8, 8)
    lin, conv = _kohya(ATTN), _kohya(CONV)
    te = "lora_te_" + TE_Q.replace(".", "_")
    state = {lin + ".lokr_w1": w1, lin + ".lokr_w2_a": w2a, lin + ".lokr_w2_b": w2b, lin + ".alpha": torch.tensor(1.0),
             conv + ".lokr_w1": cw1, conv + ".lokr_w2_a": cw2a, conv + ".lokr_w2_b": cw2b, conv + ".lokr_t2": t2,
             te + ".lokr_w1": te_w1, te + ".lokr_w2": te_w2, te + ".alpha": torch.tensor(3.0)}  # full: alpha unused
    w, wc = _weight(tiny_bundle, ATTN), _weight(tiny_bundle, CONV)
    wt = tiny_bundle[1].models[0].get_parameter("encoder.layers.0.self_attn.q_proj.weight").detach().clone()
    on, on_text = apply(state)
    torch.testing.assert_close(on[ATTN + ".weight"], w + STRENGTH * 0.5 * _kron(w1, w2a @ w2b), **TOL)
    core = torch.zeros(8, 16, 3, 3)
    for h in range(3):
        for x in range(3):
            core[:, :, h, x] = cw2a.T @ t2[:, :, h, x] @ cw2b
    blocks = torch.stack([_kron(cw1, core[:, :, h, x]) for h in range(3) for x in range(3)], -1).reshape(32, 32, 3, 3)
    torch.testing.assert_close(on[CONV + ".weight"], wc + STRENGTH * blocks, **TOL)  # no alpha: scale 1
    torch.testing.assert_close(on_text["encoder.layers.0.self_attn.q_proj.weight"], wt + STRENGTH * _kron(te_w1, te_w2),
                               **TOL)


def test_diff_weight_and_bias(apply, tiny_bundle):
    gen = torch.Generator().manual_seed(5)
    dw, db = _rand(gen, 32, 32, 3, 3), _rand(gen, 32)
    w, b = _weight(tiny_bundle, CONV), _weight(tiny_bundle, CONV, "bias")
    on, _ = apply({"diffusion_model.input_blocks.1.0.in_layers.2.diff": dw,
                   "diffusion_model.input_blocks.1.0.in_layers.2.diff_b": db})
    torch.testing.assert_close(on[CONV + ".weight"], w + STRENGTH * dw, **TOL)
    torch.testing.assert_close(on[CONV + ".bias"], b + STRENGTH * db, **TOL)


@pytest.mark.parametrize("axis", ["output", "input"])
def test_dora_magnitude(apply, tiny_bundle, axis):
    gen = torch.Generator().manual_seed(6)
    down, up = _rand(gen, 4, 32), _rand(gen, 32, 4)
    magnitude = torch.rand(32, 1, generator=gen) + 0.5 if axis == "output" else torch.rand(1, 32, generator=gen) + 0.5
    w = _weight(tiny_bundle, ATTN)
    base = _kohya(ATTN)
    on, _ = apply({base + ".lora_down.weight": down, base + ".lora_up.weight": up, base + ".alpha": torch.tensor(2.0),
                   base + ".dora_scale": magnitude})
    moved = w + 0.5 * (up @ down)
    # ComfyUI's weight_decompose: per output row, the norm of the unpatched weight; per input column, of the patched
    norm = (w.pow(2).sum(1, keepdim=True).sqrt() if axis == "output" else moved.pow(2).sum(0, keepdim=True).sqrt())
    expected = w + STRENGTH * (moved * magnitude / (norm + torch.finfo(torch.float32).eps) - w)
    torch.testing.assert_close(on[ATTN + ".weight"], expected, **TOL)


# --- diffusers and PEFT layouts, against diffusers' loader ----------------------------------------------

def _layouts(gen):
    """The same rank-4 LoRA on one UNet attention projection in four spellings: (name, state, scale)."""
    down, up, alpha = _rand(gen, 4, 32), _rand(gen, 32, 4), 2.0
    old = "unet." + ATTN.replace(".to_q", ".processor.to_q")
    return down, up, alpha, {
        "kohya": {_kohya(ATTN) + ".lora_down.weight": down, _kohya(ATTN) + ".lora_up.weight": up,
                  _kohya(ATTN) + ".alpha": torch.tensor(alpha)},
        "peft": {f"unet.{ATTN}.lora_A.weight": down, f"unet.{ATTN}.lora_B.weight": up},
        "diffusers": {f"unet.{ATTN}.lora.down.weight": down, f"unet.{ATTN}.lora.up.weight": up},
        "diffusers-old": {old + "_lora.down.weight": down, old + "_lora.up.weight": up,
                          "unet." + ATTN.replace("to_q", "processor.to_out_lora.down.weight"): down,
                          "unet." + ATTN.replace("to_q", "processor.to_out_lora.up.weight"): up},
    }


@pytest.mark.parametrize("layout", ["kohya", "peft", "diffusers", "diffusers-old"])
def test_linear_layouts_match_closed_form(apply, tiny_bundle, layout):
    down, up, alpha, layouts = _layouts(torch.Generator().manual_seed(7))
    w = _weight(tiny_bundle, ATTN)
    on, _ = apply(layouts[layout])
    scale = alpha / 4 if layout == "kohya" else 1.0  # no .alpha key: alpha = rank
    torch.testing.assert_close(on[ATTN + ".weight"], w + STRENGTH * scale * (up @ down), **TOL)
    if layout == "diffusers-old":  # to_out is `processor.to_out` there, to_out.0 in the model
        out = ATTN.replace("to_q", "to_out.0")
        torch.testing.assert_close(on[out + ".weight"], _weight(tiny_bundle, out) + STRENGTH * (up @ down), **TOL)


def test_peft_text_encoder_with_alpha(apply, tiny_bundle):
    gen = torch.Generator().manual_seed(8)
    down, up = _rand(gen, 4, 32), _rand(gen, 32, 4)
    wt = tiny_bundle[1].models[0].get_parameter("encoder.layers.0.self_attn.q_proj.weight").detach().clone()
    _, on_text = apply({f"text_encoder.{TE_Q}.lora_A.weight": down, f"text_encoder.{TE_Q}.lora_B.weight": up,
                        f"text_encoder.{TE_Q}.alpha": torch.tensor(1.0)})
    torch.testing.assert_close(on_text["encoder.layers.0.self_attn.q_proj.weight"], wt + STRENGTH * 0.25 * (up @ down),
                               **TOL)


@pytest.fixture(scope="module")
def diffusers_pipe(tiny_models):
    """A StableDiffusionPipeline of the tiny diffusers folder (no tokenizer needed to fuse a LoRA)."""
    pytest.importorskip("peft", reason="diffusers loads LoRAs through PEFT")
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = tiny_models / "checkpoints" / "tiny-diffusers"

    def build():
        return StableDiffusionPipeline(
            vae=None, text_encoder=CLIPTextModel.from_pretrained(
                folder / "text_encoder"), tokenizer=None, unet=UNet2DConditionModel.from_pretrained(folder / "unet"),
            scheduler=EulerDiscreteScheduler.from_pretrained(folder / "scheduler"), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)

    return build


@pytest.mark.parametrize("layout", ["kohya", "peft", "diffusers", "diffusers-old"])
def test_linear_layouts_match_diffusers(apply, diffusers_pipe, layout):
    _, _, _, layouts = _layouts(torch.Generator().manual_seed(7))
    state = layouts[layout]
    on, _ = apply(state)
    pipe = diffusers_pipe()
    pipe.load_lora_weights({k: v.clone() for k, v in state.items()})
    pipe.fuse_lora(lora_scale=STRENGTH)
    fused = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    for name in (ATTN, ATTN.replace("to_q", "to_out.0")):
        torch.testing.assert_close(on[name + ".weight"], fused[name + ".weight"], **TOL)


def test_peft_text_encoder_matches_diffusers(apply, diffusers_pipe):
    gen = torch.Generator().manual_seed(8)
    state = {f"text_encoder.{TE_Q}.lora_A.weight": _rand(gen, 4, 32),
             f"text_encoder.{TE_Q}.lora_B.weight": _rand(gen, 32, 4)}
    _, on_text = apply(state)
    pipe = diffusers_pipe()
    pipe.load_lora_weights({k: v.clone() for k, v in state.items()})
    pipe.fuse_lora(lora_scale=STRENGTH)
    fused = {k.replace(".base_layer", ""): v for k, v in pipe.text_encoder.state_dict().items() if "lora_" not in k}
    key = "encoder.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(on_text[key], fused[key if key in fused else "text_model." + key], **TOL)


# --- what does not fit ---------------------------------------------------------------------------------

def test_unmatched_keys_are_a_warning(apply, tiny_bundle):
    gen = torch.Generator().manual_seed(9)
    down, up = _rand(gen, 4, 32), _rand(gen, 32, 4)
    warnings: list[str] = []
    on, _ = apply({_kohya(ATTN) + ".lora_down.weight": down, _kohya(ATTN) + ".lora_up.weight": up,
                   "lora_unet_no_such_layer.lora_down.weight": down, "lora_unet_no_such_layer.lora_up.weight": up,
                   "lora_unet_other_missing.hada_w1_a": down, "lora_unet_stray.lora_up.bias": up[:, 0]},
                  warnings=warnings)
    assert len(warnings) == 1
    assert "3 of 4 weights match no layer of this SD1 model and are not applied" in warnings[0]
    assert "lora_unet_no_such_layer" in warnings[0] and "lora_unet_stray.lora_up.bias" in warnings[0]
    torch.testing.assert_close(on[ATTN + ".weight"], _weight(tiny_bundle, ATTN) + STRENGTH * (up @ down), **TOL)


def test_lora_for_another_family_is_an_error(tiny_bundle, tmp_path):
    from safetensors.torch import save_file

    model, clip, _ = tiny_bundle
    sdxl = tmp_path / "sdxl.safetensors"  # SDXL's second text encoder: no SD1 model has one
    save_file({_kohya(ATTN) + ".lora_down.weight": torch.zeros(4, 32), _kohya(ATTN) + ".lora_up.weight": torch.zeros(32, 4),
               "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 32),
               "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 4)}, str(sdxl))
    with pytest.raises(CheckpointError, match="this LoRA was made for SDXL, the model is SD1"):
        read_lora(sdxl, model.unet, clip.models, 1.0, 1.0, family="sd1")
    sd2 = tmp_path / "sd2.safetensors"  # cross-attention reading 1024-wide text: SD2's OpenCLIP-H
    key = _kohya(ATTN.replace("attn1.to_q", "attn2.to_k"))
    save_file({key + ".lora_down.weight": torch.zeros(4, 1024), key + ".lora_up.weight": torch.zeros(32, 4)}, str(sd2))
    with pytest.raises(CheckpointError, match="this LoRA was made for SD2, the model is SD1"):
        read_lora(sd2, model.unet, clip.models, 1.0, 1.0, family="sd1")
    flux = tmp_path / "flux.safetensors"  # diffusers' `transformer.` prefix: a DiT model's LoRA
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4)}, str(flux))
    with pytest.raises(CheckpointError, match="this LoRA was made for Flux, the model is SD1"):
        read_lora(flux, model.unet, clip.models, 1.0, 1.0, family="sd1")
    shapes = tmp_path / "shapes.safetensors"  # family not told by the keys: the shapes cannot fit
    save_file({_kohya(CONV) + ".lokr_w1": torch.zeros(2, 2), _kohya(CONV) + ".lokr_w2": torch.zeros(32, 32, 3, 3)},
              str(shapes))
    with pytest.raises(CheckpointError, match=r"makes a \(64, 64, 3, 3\) change.*made for another model "
                                              r"\(another model family; the model is SD1\)"):
        read_lora(shapes, model.unet, clip.models, 1.0, 1.0, family="sd1")


def test_sdxl_text_encoders_kohya_and_peft(tmp_path):
    """SDXL: `lora_te1_` / `text_encoder.` patch CLIP-L, `lora_te2_` / `text_encoder_2.` OpenCLIP-bigG."""
    import tiny_model
    from safetensors.torch import save_file

    from flowrun.diffusion.checkpoint import load_bundle

    model, clip, _ = load_bundle(tiny_model.write_family(tmp_path, "sdxl"), "tiny-sdxl")
    gen = torch.Generator().manual_seed(10)
    d1, u1, d2, u2 = _rand(gen, 4, 32), _rand(gen, 32, 4), _rand(gen, 4, 48), _rand(gen, 48, 4)
    q = "encoder.layers.1.self_attn.q_proj"
    state = {f"lora_te1_text_model_{q.replace('.', '_')}.lora_down.weight": d1,
             f"lora_te1_text_model_{q.replace('.', '_')}.lora_up.weight": u1,
             f"lora_te1_text_model_{q.replace('.', '_')}.alpha": torch.tensor(2.0),
             f"text_encoder_2.text_model.{q}.lora_A.weight": d2, f"text_encoder_2.text_model.{q}.lora_B.weight": u2}
    path = tmp_path / "sdxl-lora.safetensors"
    save_file(state, str(path))
    # CLIPTextModelWithProjection keeps the `text_model.` level, transformers 5's CLIPTextModel does not
    names = [next(n for n, _ in m.named_parameters() if n.endswith(q + ".weight")) for m in clip.models]
    before = [m.get_parameter(n).detach().clone() for m, n in zip(clip.models, names)]
    warnings: list[str] = []
    unet_p, clip_p = read_lora(path, model.unet, clip.models, 1.0, STRENGTH, family="sdxl", warn=warnings.append)
    assert not unet_p and sorted(i for i, _ in clip_p) == [0, 1] and not warnings
    with patched(clip.models, tuple(clip_p)):
        on = [m.get_parameter(n).detach().clone() for m, n in zip(clip.models, names)]
    torch.testing.assert_close(on[0], before[0] + STRENGTH * 0.5 * (u1 @ d1), **TOL)
    torch.testing.assert_close(on[1], before[1] + STRENGTH * (u2 @ d2), **TOL)
    assert all(torch.equal(m.get_parameter(n), b) for m, n, b in zip(clip.models, names, before))


def test_lora_loader_node_warns_through_the_run_context(tiny_bundle, tmp_path):
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from flowrun.errors import NodeError
    from flowrun.nodes.loaders import lora_loader

    model, clip, _ = tiny_bundle
    path = tmp_path / "half.safetensors"
    save_file({_kohya(ATTN) + ".lora_down.weight": torch.zeros(4, 32), _kohya(ATTN) + ".lora_up.weight": torch.zeros(32, 4),
               "lora_unet_gone.lora_down.weight": torch.zeros(4, 32), "lora_unet_gone.lora_up.weight": torch.zeros(32, 4)},
              str(path))
    warned: list[str] = []
    ctx = SimpleNamespace(files=SimpleNamespace(path=lambda folder, name: path), warn=warned.append)
    out = lora_loader.fn(lora_loader.params(lora_name="half"), ctx, model=model, clip=clip)
    assert len(out["model"].patches) == 1 and model.patches == ()  # the model passed in stays clean
    assert warned == ["LoRA half.safetensors: 1 of 2 weights match no layer of this SD1 model and are not applied "
                      "(e.g. lora_unet_gone)"]
    save_file({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32),
               "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(32, 4)}, str(path))
    with pytest.raises(NodeError, match="this LoRA was made for SDXL, the model is SD1"):
        lora_loader.fn(lora_loader.params(lora_name="half"), ctx, model=model, clip=clip)


@pytest.mark.parametrize("family, name", [("sd3", "SD3"), ("flux", "Flux"), ("auraflow", "AuraFlow"),
                                          ("qwen_image", "Qwen-Image"), ("zimage", "Z-Image")])
def test_a_lora_on_a_dit_model_is_refused_naming_the_family(tiny_bundle, tmp_path, family, name):
    """No DiT family has a LoRA key mapping yet: any LoRA on one is an error, never a silent no-op."""
    from safetensors.torch import save_file

    model, clip, _ = tiny_bundle
    path = tmp_path / "any.safetensors"
    save_file({_kohya(ATTN) + ".lora_down.weight": torch.zeros(4, 32),
               _kohya(ATTN) + ".lora_up.weight": torch.zeros(32, 4)}, str(path))
    with pytest.raises(CheckpointError, match=f"LoRAs for {name} models are not supported yet"):
        read_lora(path, model.unet, clip.models, 1.0, 1.0, family=family)
