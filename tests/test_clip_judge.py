"""CLIP as a judge: preprocessing against transformers' CLIPImageProcessor, CLIPScore and image similarity
against a direct transformers computation, scores in run.json, on the contact sheet and in `flowrun rank`,
and the errors (missing model at its line, a vision-only model, mismatched batches, an unknown score)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowrun import api
from flowrun.diffusion import clip_judge
from flowrun.errors import NodeError
from flowrun.execute.context import RunContext
from flowrun.nodes import clip_judge as nodes
from flowrun.settings import Settings

TEXTS = ["a red circle on a white background", "a blue square on a black background"]


def _config():
    from transformers import CLIPConfig

    return CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=77, eos_token_id=49407,
                                       bos_token_id=49406, pad_token_id=49407),
                      vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2),
                      projection_dim=8)


@pytest.fixture(scope="module")
def clip_models(tmp_path_factory):
    """A models folder with a seeded random CLIPModel as a transformers folder (`rand-clip`, with a
    preprocessor config) and as one file with a sidecar config (`rand-single`), and a vision-only model."""
    from safetensors.torch import save_file
    from transformers import CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("clip-models")
    torch.manual_seed(0)
    model = CLIPModel(_config()).eval()
    folder = root / "clip_score" / "rand-clip"
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
         "image_mean": list(clip_judge.OPENAI_MEAN), "image_std": list(clip_judge.OPENAI_STD)}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "clip_score" / "rand-single.safetensors"))
    (root / "clip_score" / "rand-single.json").write_text(json.dumps(model.config.to_dict()))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=16,
                                                            intermediate_size=32, num_hidden_layers=1,
                                                            num_attention_heads=2))
    vision.save_pretrained(root / "clip_vision" / "vision-only", safe_serialization=True)
    return root, model


def _images(n=3, h=40, w=52, seed=0):
    return np.random.default_rng(seed).random((n, h, w, 3), dtype=np.float32)


def _processor(size=32):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@pytest.mark.parametrize("shape", [(40, 52), (64, 48), (32, 32), (17, 90)])
def test_preprocessing_matches_transformers_clip_image_processor(shape):
    images = _images(2, *shape)
    mine = clip_judge.Preprocess(32, (32, 32))(images)
    uint8 = [np.rint(im * 255).astype(np.uint8) for im in images]
    theirs = _processor()(images=uint8, return_tensors="pt")["pixel_values"]
    assert mine.shape == theirs.shape == (2, 3, 32, 32)
    assert torch.allclose(mine, theirs, atol=1e-5)


def _direct_transformers(model, images, text):
    """CLIPScore and image embeddings computed with transformers alone: its processor, tokenizer, forward."""
    from flowrun.diffusion.checkpoint import tokenizer

    pixels = _processor()(images=[np.rint(im * 255).astype(np.uint8) for im in images], return_tensors="pt")
    tok = tokenizer()([text], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=pixels["pixel_values"])
    cos = (out.image_embeds @ out.text_embeds.T)[:, 0]  # CLIPModel normalises both embeddings
    return 2.5 * cos.clamp(min=0), cos, out.image_embeds


@pytest.mark.parametrize("name", ["rand-clip", "rand-single"])
def test_clip_score_equals_direct_transformers_computation(clip_models, name):
    root, model = clip_models
    judge = clip_judge.load(root / "clip_score" / (name if name == "rand-clip" else name + ".safetensors"), "fp")
    images = _images()
    for text in TEXTS:
        expected, cos, _ = _direct_transformers(model, images, text)
        out = nodes.clip_score(nodes.ClipScoreParams(text=text), RunContext(), clip_score_model=judge, images=images)
        assert np.allclose(json.loads(out["scores"]), expected.numpy(), atol=1e-5)
        assert out["score"] == pytest.approx(float(expected.mean()), abs=1e-5)
        raw = judge.image_embeds(images) @ judge.text_embeds([text])[0]
        assert torch.allclose(raw, cos, atol=1e-5)  # before the clamp too, so a zero score proves nothing alone


def test_image_similarity_mean_and_pairwise(clip_models):
    root, model = clip_models
    judge = clip_judge.load(root / "clip_score" / "rand-clip", "fp")
    images, refs = _images(3, seed=1), _images(3, seed=2)
    _, _, emb = _direct_transformers(model, images, "x")
    _, _, ref = _direct_transformers(model, refs, "x")
    mean = nodes.clip_image_similarity(nodes.ClipSimilarityParams(), RunContext(), clip_score_model=judge,
                                       images=images, reference=refs)
    centre = torch.nn.functional.normalize(ref.mean(0), dim=-1)
    assert np.allclose(json.loads(mean["scores"]), (emb @ centre).numpy(), atol=1e-5)
    pairwise = nodes.clip_image_similarity(nodes.ClipSimilarityParams(mode="pairwise"), RunContext(),
                                           clip_score_model=judge, images=images, reference=refs)
    assert np.allclose(json.loads(pairwise["scores"]), (emb * ref).sum(-1).numpy(), atol=1e-5)
    same = nodes.clip_image_similarity(nodes.ClipSimilarityParams(mode="pairwise"), RunContext(),
                                       clip_score_model=judge, images=images, reference=images)
    assert same["score"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(NodeError, match="'images' has a batch of 3, 'reference' has 2"):
        nodes.clip_image_similarity(nodes.ClipSimilarityParams(mode="pairwise"), RunContext(),
                                    clip_score_model=judge, images=images, reference=refs[:2])


SWEEP = """\
version: 1
name: judged
params: {color: 0xFF0000}
sweep:
  grid: {color: [0xFF0000, 0x00FF00, 0x0000FF, 0xFFFF00]}
nodes:
  image: {type: EmptyImage, with: {width: 32, height: 32, color: "{{ color }}"}}
  judge: {type: CLIPScoreModelLoader, with: {clip_name: %s}}
  score: {type: CLIPScore, in: {clip_score_model: judge, images: image}, with: {text: "a red square"}}
  save: {type: SaveImage, in: {images: image}, with: {filename_prefix: "c{{ cell.index }}"}}
"""


def test_sweep_records_scores_shows_them_and_ranks_cells(clip_models, workflow, tmp_path, cli):
    root, model = clip_models
    path = workflow(SWEEP % "rand-clip")
    settings = Settings(out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", models_dirs=(str(root),))
    manifest = api.run(api.load(path), settings).manifest
    again = api.run(api.load(path), settings).manifest  # scores come back from the cache too
    assert {n["status"] for n in again["nodes"] if n["id"] == "score"} == {"cached"}
    assert [c["scores"] for c in again["cells"]] == [c["scores"] for c in manifest["cells"]]
    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0)]
    expected = [float(_direct_transformers(model, np.ones((1, 32, 32, 3), np.float32) * np.asarray(c, np.float32),
                                           "a red square")[0][0]) for c in colours]
    scores = [c["scores"]["score"] for c in manifest["cells"]]
    assert np.allclose(scores, expected, atol=1e-5)
    assert [n for n in manifest["nodes"] if n["id"] == "score"][0]["metric"] == "clip_score"
    page = (tmp_path / "out" / "index.html").read_text()
    assert f"clip_score {scores[0]:.3f}" in page and "<th>scores</th>" in page
    sheet_height = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "out" / "contact-save.png")).shape[0]
    assert sheet_height == 16 + 16 + (32 + 16 + 4) + 4  # a caption line under each thumbnail

    order = sorted(range(4), key=lambda i: (-scores[i], i))
    listed = cli("rank", tmp_path / "out", "--by", "clip_score", "--json")
    assert listed.code == 0, listed.err
    ranked = json.loads(listed.out)
    assert [r["cell"] for r in ranked] == [manifest["cells"][i]["label"] for i in order]
    assert [r["score"] for r in ranked] == sorted(scores, reverse=True)
    top = cli("rank", tmp_path / "out", "--by", "score", "--top", "2", "--copy", tmp_path / "best")
    assert top.code == 0 and len(top.out.splitlines()) == 3
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [f"1-c{order[0]}.png", f"2-c{order[1]}.png"]
    assert (tmp_path / "best" / f"1-c{order[0]}.png").read_bytes() == (tmp_path / "out" / f"c{order[0]}.png").read_bytes()
    unknown = cli("rank", tmp_path / "out", "--by", "aesthetic")
    assert unknown.code == 2 and "records no score 'aesthetic'; it has: clip_score, score" in unknown.err


def test_missing_model_is_reported_at_its_line(clip_models, workflow, cli):
    root, _ = clip_models
    path = workflow(SWEEP % "no-such-clip")
    res = cli("validate", path, "--models-dir", root)
    assert res.code == 2
    assert "wf.yaml:8:" in res.err and "no-such-clip" in res.err and "rand-clip" in res.err  # lists what is there


def test_vision_only_model_is_refused(clip_models, workflow, cli):
    root, _ = clip_models
    res = cli("run", workflow(SWEEP % "vision-only"), "--models-dir", root, "--no-cache", "-q")
    assert res.code == 1
    assert "node 'judge' (CLIPScoreModelLoader)" in res.err
    assert "holds a CLIP vision model only; CLIPScore needs a full CLIPModel" in res.err


def test_bundled_clip_tells_the_captions_apart():
    import itertools

    from flowrun.diffusion import shapes
    from flowrun.files import BUNDLED

    folder = BUNDLED / "clip_score" / "flowrun-tiny-clip"
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5 * 1024 * 1024
    judge = clip_judge.load(folder, "bundled")
    rng = np.random.default_rng(2024)  # scenes the training never drew (its bank used seed 1)
    keys = list(itertools.product(shapes.BACKGROUNDS, shapes.COLOURS, shapes.SHAPES))
    captions = [shapes.caption(c, s, b) for b, c, s in keys]
    scenes = [shapes.Scene(s, c, b, *rng.uniform(24, 40, 2), rng.uniform(11, 20)) for b, c, s in keys]
    images = np.stack([shapes.render(s) for s in scenes]).astype(np.float32) / 255.0
    picked = (judge.image_embeds(images) @ judge.text_embeds(captions).T).argmax(-1)
    assert picked.tolist() == list(range(len(keys)))


def test_training_script_runs_on_tiny_settings(tmp_path, monkeypatch):
    import sys

    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import train_tiny_clip

    out = tmp_path / "clip"
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["train_tiny_clip.py", "--steps", "2", "--bank", "16", "--batch", "8",
                                      "--out", str(out)])
    try:
        train_tiny_clip.main()  # in this process: a subprocess would spend most of its time importing
    finally:
        torch.set_num_threads(threads)
    judge = clip_judge.load(out, "quick")
    assert judge.preprocess == clip_judge.Preprocess(64, (64, 64))
    assert len(judge.clip_score(_images(2, 64, 64), "a red circle on a white background")) == 2
