"""Model merging and CheckpointSave: merges against their closed form weight by weight (the inputs left
as they were), block ratios by ComfyUI's prefix rule, refusals naming both families; a saved checkpoint
loads back with CheckpointLoaderSimple and renders what the patched model rendered."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from flowrun import api
from flowrun.diffusion.checkpoint import load_bundle
from flowrun.diffusion.clip import encode
from flowrun.diffusion.detect import read_header
from flowrun.diffusion.ksampler import ksample
from flowrun.diffusion.lora import patched
from flowrun.diffusion.vae import decode
from flowrun.errors import NodeError
from flowrun.execute.context import NodeFiles, RunContext
from flowrun.files import FileLookup
from flowrun.nodes.registry import default_registry
from flowrun.settings import Settings
from flowrun.values import Latent

REG = default_registry(builtin_only=True)


def _call(type_name, ctx=None, inputs=None, **fields):
    nd = REG.get(type_name)
    return nd(nd.params(**fields), ctx or RunContext(), **(inputs or {}))


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory):
    """A second tiny model of the same shape, other weights."""
    import tiny_model

    root = tmp_path_factory.mktemp("other")
    paths = tiny_model.write(root, "other", seed=5)
    return load_bundle(paths["single"], "other")


def _weights(model):
    return {k: v.detach().clone() for k, v in model.unet.named_parameters()}


def _patched_weights(model):
    with patched(model.unet, model.patches):
        return _weights(model)


def test_merge_simple_is_the_weighted_sum_and_leaves_both_inputs_alone(tiny_bundle, other_bundle):
    model1, model2 = tiny_bundle[0], other_bundle[0]
    w1, w2 = _weights(model1), _weights(model2)
    merged = _call("ModelMergeSimple", inputs={"model1": model1, "model2": model2}, ratio=0.3)
    assert merged.unet is model1.unet and model1.patches == () and model2.patches == ()
    got = _patched_weights(merged)
    assert set(got) == set(w1)
    for k in w1:
        assert torch.allclose(got[k], w1[k] * 0.3 + w2[k] * 0.7, atol=1e-6), k
    assert all(torch.equal(v, w1[k]) for k, v in _weights(model1).items())  # restored after the block
    assert all(torch.equal(v, w2[k]) for k, v in _weights(model2).items())


def test_merge_blocks_takes_the_ratio_of_the_longest_matching_prefix(tiny_bundle, other_bundle):
    model1, model2 = tiny_bundle[0], other_bundle[0]
    w1, w2 = _weights(model1), _weights(model2)
    merged = _call("ModelMergeBlocks", inputs={"model1": model1, "model2": model2}, input=0.2, middle=0.5, out=0.9)
    got = _patched_weights(merged)
    expected = {"conv_in.weight": 0.2,  # input_blocks.0.0
                "time_embedding.linear_1.weight": 0.2,  # no block: the first ratio, as ComfyUI
                "down_blocks.0.attentions.0.proj_in.weight": 0.2, "down_blocks.1.resnets.0.conv1.weight": 0.2,
                "mid_block.resnets.0.conv1.weight": 0.5, "mid_block.attentions.0.proj_out.weight": 0.5,
                "up_blocks.1.resnets.0.conv1.weight": 0.9,
                "conv_norm_out.weight": 0.9, "conv_out.weight": 0.9}  # out.0, out.2
    for k, r in expected.items():
        assert torch.allclose(got[k], w1[k] * r + w2[k] * (1 - r), atol=1e-6), k


def test_a_model_merged_with_its_own_lora_is_half_the_lora(tiny_models, tiny_bundle):
    """Both inputs share one UNet: model2's weights are read as model2 computes them, LoRA applied."""
    model, clip, _ = tiny_bundle
    ctx = _files_ctx(tiny_models, {"lora_name": "night"})
    lora = _call("LoraLoaderModelOnly", ctx, {"model": model}, lora_name="flowrun-tiny-night", strength_model=1.0)
    base, full = _weights(model), _patched_weights(lora)
    merged = _call("ModelMergeSimple", inputs={"model1": model, "model2": lora}, ratio=0.5)
    got = _patched_weights(merged)
    assert sum(not torch.equal(full[k], base[k]) for k in base) == 32
    for k in base:
        assert torch.allclose(got[k], (base[k] + full[k]) / 2, atol=1e-6), k


def test_models_of_other_families_or_shapes_are_refused_naming_both(tiny_bundle):
    from diffusers import UNet2DConditionModel

    import tiny_model

    model = tiny_bundle[0]
    sd2 = replace(model, config=replace(model.config, family="sd2"))
    with pytest.raises(NodeError, match=r"sd1 model \(model1\) with a sd2 model \(model2\)"):
        _call("ModelMergeSimple", inputs={"model1": model, "model2": sd2}, ratio=0.5)
    wider = replace(model, unet=UNet2DConditionModel(**{**tiny_model.TINY_UNET, "block_out_channels": [32, 32]}))
    with pytest.raises(NodeError, match=r"model1 \(sd1\) with model2 \(sd1\): their UNets differ in shape"):
        _call("ModelMergeBlocks", inputs={"model1": model, "model2": wider}, input=0.5, middle=0.5, out=0.5)


def _files_ctx(models_dir, fingerprints):
    return RunContext(files=NodeFiles(FileLookup(models_dir, (str(models_dir),)), fingerprints))


def _render(model, clip, vae):
    latent = ksample(model, seed=3, steps=2, cfg=6.0, sampler_name="euler", scheduler="normal",
                     positive=encode(clip, "a red circle"), negative=encode(clip, ""),
                     latent=Latent(torch.zeros(1, 4, 8, 8))).samples
    return decode(vae, latent)


def _save_and_reload(model, clip, vae, tmp_path):
    ctx = RunContext()
    _call("CheckpointSave", ctx, {"model": model, "clip": clip, "vae": vae}, filename_prefix="checkpoints/merged")
    assert list(ctx.outputs.saved) == ["checkpoints/merged.safetensors"]
    path = tmp_path / "checkpoints" / "merged.safetensors"  # no sidecar: the configs come from the file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ctx.outputs.saved["checkpoints/merged.safetensors"])
    out = _call("CheckpointLoaderSimple", _files_ctx(tmp_path, {"ckpt_name": "saved"}), ckpt_name="merged")
    return path, out["model"], out["clip"], out["vae"]


def test_a_saved_merge_loads_back_and_renders_the_same_image(tiny_models, tiny_bundle, other_bundle, tmp_path):
    model, clip, vae = tiny_bundle
    ctx = _files_ctx(tiny_models, {"lora_name": "night"})
    lora = _call("LoraLoader", ctx, {"model": model, "clip": clip}, lora_name="flowrun-tiny-night",
                 strength_model=0.8, strength_clip=0.6)
    merged = _call("ModelMergeSimple", inputs={"model1": lora["model"], "model2": other_bundle[0]}, ratio=0.6)
    expected = _render(merged, lora["clip"], vae)
    path, model2, clip2, vae2 = _save_and_reload(merged, lora["clip"], vae, tmp_path)
    assert model2.patches == () and clip2.patches == ()
    assert abs(_render(model2, clip2, vae2) - expected).max() < 1e-5
    want, got = _patched_weights(merged), _weights(model2)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.allclose(got["conv_out.weight"], _weights(model)["conv_out.weight"], atol=1e-3)
    meta = read_header(path).metadata
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["modelspec.title"] == "merged"
    assert json.loads(meta["flowrun.config"])["unet"]["block_out_channels"] == [32, 64]


def test_a_saved_lora_equals_the_lora_applied(tiny_models, tiny_bundle, tmp_path):
    model, clip, vae = tiny_bundle
    ctx = _files_ctx(tiny_models, {"lora_name": "night"})
    lora = _call("LoraLoader", ctx, {"model": model, "clip": clip}, lora_name="flowrun-tiny-night",
                 strength_model=1.0, strength_clip=1.0)
    _, model2, clip2, _ = _save_and_reload(lora["model"], lora["clip"], vae, tmp_path)
    want, got = _patched_weights(lora["model"]), _weights(model2)
    assert all(torch.equal(got[k], want[k]) for k in want)
    with patched(lora["clip"].models, lora["clip"].patches):
        want_text = {k: v.clone() for k, v in lora["clip"].models[0].state_dict().items()}
    got_text = clip2.models[0].state_dict()
    assert all(torch.equal(got_text[k], v) for k, v in want_text.items())
    assert torch.allclose(encode(clip2, "a red circle")[0].embedding,
                          encode(lora["clip"], "a red circle")[0].embedding, atol=1e-6)


def test_checkpoint_save_refuses_parts_of_two_families_and_warns_of_hypernetworks(tiny_bundle, tmp_path):
    model, clip, vae = tiny_bundle
    sd2_clip = replace(clip, config=replace(clip.config, family="sd2"))
    with pytest.raises(NodeError, match="the model is sd1 but the clip is sd2"):
        _call("CheckpointSave", RunContext(), {"model": model, "clip": sd2_clip, "vae": vae})
    warnings = []
    _call("CheckpointSave", RunContext(warn=warnings.append),
          {"model": model.with_attention_patch(object()), "clip": clip, "vae": vae})
    assert warnings == ["CheckpointSave: the model's hypernetworks are not weights of the UNet and are not saved"]


@pytest.mark.parametrize("family", ["sd2", "sdxl", "sdxl_refiner"])
def test_other_families_save_and_load_back_weight_for_weight(family, tmp_path):
    import tiny_model

    from flowrun.diffusion.checkpoint_save import saved_checkpoint

    model, clip, vae = load_bundle(tiny_model.write_family(tmp_path, family), family)
    path = tmp_path / "saved.safetensors"
    path.write_bytes(saved_checkpoint(model, clip, vae, {}))
    model2, clip2, vae2 = load_bundle(path, "saved")
    assert (model2.family, model2.sampling.prediction_type) == (family, model.sampling.prediction_type)
    for a, b in [(model.unet, model2.unet), (vae.model, vae2.model), *zip(clip.models, clip2.models)]:
        state = b.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in a.state_dict().items())


def test_checkpoint_save_in_a_workflow_writes_under_the_output_folder(tiny_models, workflow, tmp_path):
    path = workflow("""
        version: 1
        nodes:
          ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}
          lora:
            type: LoraLoader
            in: {model: ckpt.model, clip: ckpt.clip}
            with: {lora_name: flowrun-tiny-night, strength_model: 0.5, strength_clip: 0.5}
          save:
            type: CheckpointSave
            in: {model: lora.model, clip: lora.clip, vae: ckpt.vae}
        """)
    settings = Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", models_dirs=(str(tiny_models),),
                        device="cpu")
    api.run(api.load(path), settings)
    saved = tmp_path / "out" / "checkpoints" / "flowrun.safetensors"
    meta = read_header(saved).metadata
    assert "lora" in meta["flowrun_workflow"] and json.loads(meta["prompt"])["save"]["class_type"] == "CheckpointSave"
    assert not list((tmp_path / "out" / "checkpoints").glob(".*tmp"))


# --- hypernetworks ----------------------------------------------------------------------------------

def _write_hypernetwork(models_dir, name, activation, layer_norm, seed=0, widths=(32,)):
    """An A1111-layout hypernetwork (layer structure 1, 2, 1) for the given widths, as a .pt."""
    g = torch.Generator().manual_seed(seed)
    data = {"activation_func": activation, "is_layer_norm": layer_norm, "use_dropout": True,
            "activate_output": False, "layer_structure": [1, 2, 1], "name": name, "step": 100}
    for width in widths:
        nets = []
        for _ in range(2):
            net, index = {}, 0
            for fan_in, fan_out in ((width, 2 * width), (2 * width, width)):
                net[f"linear.{index}.weight"] = torch.randn(fan_out, fan_in, generator=g) * 0.3
                net[f"linear.{index}.bias"] = torch.randn(fan_out, generator=g) * 0.1
                index += 2 if activation != "linear" and fan_out == 2 * width else 1
                if layer_norm:
                    net[f"linear.{index}.weight"] = 1 + torch.randn(fan_out, generator=g) * 0.1
                    net[f"linear.{index}.bias"] = torch.randn(fan_out, generator=g) * 0.1
                    index += 1
            nets.append(net)
        data[width] = nets
    path = models_dir / "hypernetworks" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def _closed_form(net, x, activation, layer_norm):
    """ComfyUI's stack written out: linear, activation (also after the last linear when there are layer
    norms), layer norm."""
    act = {"relu": torch.relu, "tanh": torch.tanh}[activation]
    weights = sorted((k for k in net if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    h, i = x, 0
    while i < len(weights):
        w, b = net[weights[i]], net[weights[i].replace("weight", "bias")]
        h = h @ w.T + b
        if i < len(weights) - 1:
            h = act(h)
        if layer_norm:
            i += 1
            g, c = net[weights[i]], net[weights[i].replace("weight", "bias")]
            h = torch.nn.functional.layer_norm(h, h.shape[-1:], g, c, eps=1e-5)
        i += 1
    return h


@pytest.mark.parametrize("activation, layer_norm", [("relu", True), ("tanh", False)])
def test_hypernetwork_changes_key_and_value_inputs_by_the_closed_form(tiny_bundle, tmp_path, activation, layer_norm):
    model, clip, _ = tiny_bundle
    data = _write_hypernetwork(tmp_path, "hn", activation, layer_norm)
    ctx = RunContext(files=NodeFiles(FileLookup(tmp_path, (str(tmp_path),), allow_pickle=True), {}))
    hn = _call("HypernetworkLoader", ctx, {"model": model}, hypernetwork_name="hn", strength=0.7)
    assert model.attention_patches == () and hn.unet is model.unet
    seen, handles = [], []
    for name, module in model.unet.named_modules():
        if name.endswith((".attn1", ".attn2")):
            for which, proj in enumerate((module.to_k, module.to_v)):
                raw = {}
                handles.append(proj.register_forward_pre_hook(lambda m, a, raw=raw: raw.__setitem__("x", a[0].clone())))
                handles.append(proj.register_forward_hook(
                    lambda m, a, out, raw=raw, which=which: seen.append((which, raw["x"], a[0].clone()))))
    try:
        g = torch.Generator().manual_seed(0)
        x, context = torch.randn(1, 4, 8, 8, generator=g), encode(clip, "a red circle")[0].embedding
        with torch.no_grad():
            hn(x, torch.tensor([2.0]), context)
    finally:
        for h in handles:
            h.remove()
    widths = sorted({raw.shape[-1] for _, raw, _ in seen})
    assert widths == [32, 64] and len(seen) == 4 * 2 * 2  # 4 transformer blocks (1 down, middle, 2 up) x attn1/2 x k/v
    for which, raw, got in seen:
        if raw.shape[-1] == 32:
            want = raw + _closed_form(data[32][which], raw, activation, layer_norm) * 0.7
            assert torch.allclose(got, want, atol=1e-5)
        else:  # no network for width 64 (the middle block's self-attention)
            assert torch.equal(got, raw)
    assert all(not m._forward_pre_hooks for m in model.unet.modules())  # hooks gone after the call


def test_hypernetwork_renders_and_strength_zero_is_the_plain_model(tiny_bundle, tmp_path):
    model, clip, vae = tiny_bundle
    _write_hypernetwork(tmp_path, "hn", "relu", True)
    ctx = RunContext(files=NodeFiles(FileLookup(tmp_path, (str(tmp_path),), allow_pickle=True), {}))
    full = _call("HypernetworkLoader", ctx, {"model": model}, hypernetwork_name="hn.pt", strength=1.0)
    zero = _call("HypernetworkLoader", ctx, {"model": model}, hypernetwork_name="hn", strength=0.0)
    plain = _render(model, clip, vae)
    assert abs(_render(zero, clip, vae) - plain).max() == 0
    assert abs(_render(full, clip, vae) - plain).max() > 1e-2


def test_hypernetwork_pickles_need_allow_pickle_and_unknown_activations_are_named(tiny_bundle, tmp_path):
    model = tiny_bundle[0]
    _write_hypernetwork(tmp_path, "hn", "relu", False)
    refusing = RunContext(files=NodeFiles(FileLookup(tmp_path, (str(tmp_path),)), {}))
    with pytest.raises(NodeError, match="pass --allow-pickle if you trust its source"):
        _call("HypernetworkLoader", refusing, {"model": model}, hypernetwork_name="hn", strength=1.0)
    data = torch.load(tmp_path / "hypernetworks" / "hn.pt", weights_only=True)
    torch.save({**data, "activation_func": "gelu_new"}, tmp_path / "hypernetworks" / "odd.pt")
    allowing = RunContext(files=NodeFiles(FileLookup(tmp_path, (str(tmp_path),), allow_pickle=True), {}))
    with pytest.raises(NodeError, match="activation 'gelu_new' is not supported; supported: linear, relu"):
        _call("HypernetworkLoader", allowing, {"model": model}, hypernetwork_name="odd", strength=1.0)
