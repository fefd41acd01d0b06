"""Upscale models (UpscaleModelLoader, ImageUpscaleWithModel): spandrel's models, run in ComfyUI's tiles.

On toy models with seeded weights: a whole image in one tile equals spandrel's own call bit for bit; several
tiles equal an independent reimplementation of ComfyUI's tiled_scale (feathered overlaps); the tile is
halved on out-of-memory as ComfyUI does; files spandrel does not know, models that are not image-to-image,
pickles without --allow-pickle and a missing spandrel are refused with messages naming node and field.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from flowrun.nodes import ports

from conftest import ROOT, TESTS


@pytest.fixture(scope="module")
def spandrel():
    return pytest.importorskip("spandrel", reason="needs the upscale extra: pip install 'flowrun[upscale]'")


def _toy_compact(tmp_path, scale=2):
    import tiny_model

    return tiny_model.write_upscale_model(tmp_path, "toy-compact", features=4, convs=1, scale=scale)


def _toy_esrgan(tmp_path, spandrel):
    """A small ESRGAN (RRDBNet: 8 filters, 1 block, x4) with seeded weights, saved as a pickle (.pth)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(5)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    path = tmp_path / "upscale_models" / "toy-esrgan.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": net.state_dict()}, path)  # nested as RealESRGAN's releases store it
    return path


def _context(models_dir, allow_pickle=False, fingerprint="fp"):
    from flowrun.execute.context import DevicePolicy, NodeFiles, RunContext
    from flowrun.files import FileLookup

    lookup = FileLookup(models_dir, (str(models_dir),), allow_pickle=allow_pickle)
    return RunContext(device=DevicePolicy("cpu"), files=NodeFiles(lookup, {"model_name": fingerprint}))


def _load(models_dir, name, allow_pickle=False):
    from flowrun.nodes.upscale_models import UpscaleModelLoaderParams, upscale_model_loader

    return upscale_model_loader(UpscaleModelLoaderParams(model_name=name), _context(models_dir, allow_pickle))


def _upscale(model, image):
    from flowrun.nodes.registry import NoParams
    from flowrun.nodes.upscale_models import image_upscale_with_model

    return image_upscale_with_model(NoParams(), _context("."), upscale_model=model, image=image)


def _image(h, w, seed=0, batch=1):
    return np.random.default_rng(seed).random((batch, h, w, 3), dtype=np.float32)


def test_declarations_match_comfyui():
    from flowrun.nodes.registry import Registry, BUILTIN_MODULES

    reg = Registry()
    reg.add_modules(BUILTIN_MODULES)
    loader, upscale = reg.get("UpscaleModelLoader"), reg.get("ImageUpscaleWithModel")
    assert list(loader.params.model_fields) == ["model_name"] and loader.outputs == {"upscale_model": "UPSCALE_MODEL"}
    assert loader.files == {"model_name": "upscale_models"}
    assert {k: i.type for k, i in upscale.inputs.items()} == {"upscale_model": "UPSCALE_MODEL", "image": "IMAGE"}
    assert ports.UPSCALE_MODEL in ports.MEMORY_ONLY
    from flowrun.cache import codecs

    assert codecs.for_port(ports.UPSCALE_MODEL) is None  # a loaded model never goes to the disk cache


def test_whole_image_equals_spandrel_bit_for_bit(spandrel, tmp_path):
    _toy_compact(tmp_path)
    _toy_esrgan(tmp_path, spandrel)
    for name, scale, allow in (("toy-compact", 2, False), ("toy-esrgan.pth", 4, True)):
        model = _load(tmp_path, name, allow_pickle=allow)
        assert model.scale == scale
        direct = spandrel.ModelLoader().load_from_file(tmp_path / "upscale_models" /
                                                       (name if "." in name else name + ".safetensors"))
        image = _image(24, 40, seed=scale, batch=2)
        ours = _upscale(model, image)
        for b in range(2):
            ref = direct(torch.from_numpy(image[b:b + 1]).movedim(-1, 1)).movedim(1, -1).numpy()
            assert ours.shape == (2, 24 * scale, 40 * scale, 3)
            assert np.array_equal(ours[b:b + 1], ref), name
    assert ours.dtype == np.float32 and 0.0 <= ours.min() and ours.max() <= 1.0


def comfy_tiled_scale(image, fn, tile, overlap, scale):
    """ComfyUI's comfy.utils.tiled_scale for 2-D images, written out independently: tiles start every
    tile - overlap pixels (the last clamped to the edge), each output is weighted by a mask that ramps
    1/f, 2/f, ... f/f over the first and last f = overlap * scale pixels, and the sum is divided by the
    summed masks."""
    b, c, h, w = image.shape
    out = np.zeros((b, 3, h * scale, w * scale), np.float64)
    weight = np.zeros_like(out)
    ys = list(range(0, h - overlap, tile - overlap)) if h > tile else [0]
    xs = list(range(0, w - overlap, tile - overlap)) if w > tile else [0]
    f = overlap * scale
    for y in ys:
        for x in xs:
            y0, x0 = max(0, min(h - overlap, y)), max(0, min(w - overlap, x))
            piece = image[:, :, y0:y0 + tile, x0:x0 + tile]
            result = fn(torch.from_numpy(piece)).double().numpy()
            th, tw = result.shape[2:]
            ramp_y, ramp_x = np.ones(th), np.ones(tw)
            for t in range(f):
                r = (t + 1) / f
                if f < th:
                    ramp_y[t] *= r
                    ramp_y[th - 1 - t] *= r
                if f < tw:
                    ramp_x[t] *= r
                    ramp_x[tw - 1 - t] *= r
            mask = ramp_y[:, None] * ramp_x[None, :]
            out[:, :, y0 * scale:y0 * scale + th, x0 * scale:x0 * scale + tw] += result * mask
            weight[:, :, y0 * scale:y0 * scale + th, x0 * scale:x0 * scale + tw] += mask
    return np.clip(out / weight, 0, 1)


def test_tiles_blend_as_comfyui(spandrel, tmp_path):
    from flowrun.diffusion.upscale import upscale

    _toy_compact(tmp_path)
    model = _load(tmp_path, "toy-compact")
    image = _image(37, 50, seed=7)
    ours = upscale(model, 2, image, tile=16, overlap=4)  # 3 x 4 tiles, the last of each row clamped
    expected = comfy_tiled_scale(image.transpose(0, 3, 1, 2), model, 16, 4, 2).transpose(0, 2, 3, 1)
    assert ours.shape == (1, 74, 100, 3)
    np.testing.assert_allclose(ours, expected, atol=2e-6)
    whole = upscale(model, 2, image, tile=64, overlap=4)
    assert 1e-3 < np.abs(ours - whole).max() < 0.2  # the seams differ from one pass, but only a little
    # the node's tiles: 512 overlapping by 32, here three along a 1000-pixel side
    tall = _image(1000, 12, seed=8)
    calls = []
    counted = lambda x: (calls.append(tuple(x.shape[2:])), model(x))[1]  # noqa: E731
    node_out = _upscale(model, tall)
    expected = comfy_tiled_scale(tall.transpose(0, 3, 1, 2), counted, 512, 32, 2).transpose(0, 2, 3, 1)
    assert calls == [(512, 12), (512, 12), (40, 12)]
    np.testing.assert_allclose(node_out, expected, atol=2e-6)


def test_out_of_memory_halves_the_tile_down_to_128():
    from flowrun.diffusion.upscale import upscale

    seen = []

    def picky(limit):
        def model(x):
            seen.append(max(x.shape[2:]))
            if max(x.shape[2:]) > limit:
                raise torch.OutOfMemoryError("toy device full")
            return x.repeat_interleave(2, -1).repeat_interleave(2, -2)
        return model

    image = _image(300, 300, seed=1)
    out = upscale(picky(128), 2, image)
    assert seen[:2] == [300, 256] and max(seen[2:]) == 128  # 512 (whole image), 256, then 128 tiles
    np.testing.assert_allclose(out, image.repeat(2, 1).repeat(2, 2), atol=1e-6)  # nearest x2, blended
    with pytest.raises(torch.OutOfMemoryError):
        upscale(picky(100), 2, image)  # below 128 ComfyUI gives up


def _run_workflow(cli, tmp_path, models_dir, model_name, extra=()):
    (tmp_path / "wf.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        nodes:
          pixels:
            type: EmptyImage
            with: {{width: 16, height: 16, color: 0x336699}}
          upscaler:
            type: UpscaleModelLoader
            with: {{model_name: {model_name}}}
          large:
            type: ImageUpscaleWithModel
            in: {{upscale_model: upscaler, image: pixels}}
          save:
            type: SaveImage
            in: {{images: large}}
            with: {{filename_prefix: up}}
        """))
    return cli("run", str(tmp_path / "wf.yaml"), "--models-dir", str(models_dir), "--device", "cpu", *extra)


def test_runs_in_a_workflow(spandrel, cli, tmp_path):
    _toy_compact(tmp_path / "models")
    r = _run_workflow(cli, tmp_path, tmp_path / "models", "toy-compact")
    assert r.code == 0, r.err
    from PIL import Image

    assert Image.open(next((tmp_path / "out").rglob("up*.png"))).size == (32, 32)


def test_unknown_file_is_refused_naming_node_field_and_file(spandrel, cli, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "models" / "upscale_models" / "mystery.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"encoder.weight": torch.randn(4, 4), "decoder.bias": torch.randn(4)}, str(path))
    r = _run_workflow(cli, tmp_path, tmp_path / "models", "mystery")
    assert r.code == 1
    assert "upscaler" in r.err and "UpscaleModelLoader" in r.err and "model_name 'mystery'" in r.err
    assert f"{path}: spandrel does not know this model's architecture" in r.err
    assert "Traceback" not in r.err


def test_pickles_need_allow_pickle(spandrel, cli, tmp_path):
    _toy_esrgan(tmp_path / "models", spandrel)
    r = _run_workflow(cli, tmp_path, tmp_path / "models", "toy-esrgan")  # a bare name finds the .pth
    assert r.code == 1 and "pickle upscale models (.pth) can run code when loaded and are refused" in r.err
    assert "--allow-pickle" in r.err
    assert _run_workflow(cli, tmp_path, tmp_path / "models", "toy-esrgan", ("--allow-pickle",)).code == 0


def test_an_inpainting_model_is_refused_by_name(spandrel, tmp_path):
    """LaMa, which spandrel knows, takes an image and a mask: not an upscale model."""
    from safetensors.torch import save_file
    from spandrel.architectures.LaMa import LaMa

    from flowrun.errors import NodeError

    shapes = {k: v.shape for k, v in LaMa(in_nc=4, out_nc=3).state_dict().items()}
    path = tmp_path / "upscale_models" / "lama.safetensors"
    path.parent.mkdir(parents=True)
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path))
    with pytest.raises(NodeError, match=r"model_name 'lama': .*lama.safetensors: LaMa is not an image-to-image "
                                        r"model \(spandrel: MaskedImageModelDescriptor, purpose Inpainting\)"):
        _load(tmp_path, "lama")


BLOCK_SPANDREL = """
import sys
sys.modules['spandrel'] = None  # as if not installed: importlib.util.find_spec answers None
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch':
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
from flowrun.cli import main
main(sys.argv[1:])
"""


def test_without_spandrel_validation_says_how_to_install(tmp_path):
    """Without spandrel, a workflow that loads an upscale model is refused before it runs (exit 2), and
    validating it imports neither torch nor spandrel."""
    workflow = ROOT / "workflows" / "hires-fix-upscale.yaml"
    env = {"PYTHONPATH": f"{TESTS}:{ROOT}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", BLOCK_SPANDREL, "validate", str(workflow)], capture_output=True,
                       text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = workflow.read_text().splitlines()
    line = next(i for i, t in enumerate(lines, 1) if "model_name: flowrun-tiny-x2" in t)
    line = max(i for i, t in enumerate(lines[:line], 1) if "type: UpscaleModelLoader" in t)
    assert (f"hires-fix-upscale.yaml:{line}:" in r.stderr and "error[missing-extra]: node 'upscaler', field 'type': "
            "UpscaleModelLoader needs spandrel, which is not installed" in r.stderr
            and "hint: pip install 'flowrun[upscale]'" in r.stderr), r.stderr
