"""Textual inversion: `embedding:NAME` words in prompts read vectors from embeddings/ (safetensors, A1111
.pt with --allow-pickle, SDXL's clip_l/clip_g); an unknown one is an error at validation, at its line;
the files enter the cache key."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from flowrun.diffusion.clip import embedding_vectors, encode, read_embedding
from flowrun.diffusion.prompt_syntax import embedding_names


def _table(clip):
    return clip.models[0].get_input_embeddings().weight.detach()


def _ids(clip, text):
    return clip.tokenizer(text)["input_ids"][1:-1]


@pytest.fixture()
def embeddings(tmp_path, tiny_bundle):
    """models/embeddings/ with `myred` (the token vector of "red") and `redcircle` (two vectors)."""
    clip = tiny_bundle[1]
    table = _table(clip)
    folder = tmp_path / "models" / "embeddings"
    folder.mkdir(parents=True)
    (red,), (circle,) = _ids(clip, "red"), _ids(clip, "circle")
    save_file({"emb_params": table[red].clone()[None]}, str(folder / "myred.safetensors"))
    save_file({"emb_params": table[[red, circle]].clone()}, str(folder / "redcircle.safetensors"))
    torch.save({"string_to_param": {"*": table[red].clone()[None]}, "name": "a1111"}, folder / "a1111.pt")
    save_file({"emb_params": torch.zeros(1, 17)}, str(folder / "other-width.safetensors"))
    return folder


def test_the_prompt_syntax_finds_embedding_names():
    assert embedding_names("a embedding:one, (embedding:two:1.2) embedding:one (embedding:sub/three)") == \
        ["one", "two", "sub/three"]
    assert embedding_names("embedding: alone, no embeddingx:y") == []


def test_an_embedding_of_token_vectors_encodes_as_those_tokens(tiny_bundle, embeddings):
    clip = tiny_bundle[1]

    def lookup(name):
        return read_embedding(embeddings / f"{name}.safetensors", allow_pickle=False)

    plain = encode(clip, "a red circle")[0].embedding
    assert torch.equal(encode(clip, "a embedding:myred circle", embeddings=lookup)[0].embedding, plain)
    assert torch.equal(encode(clip, "a embedding:redcircle", embeddings=lookup)[0].embedding, plain)
    weighted = encode(clip, "a (red:1.3) circle")[0].embedding
    assert torch.equal(encode(clip, "a (embedding:myred:1.3) circle", embeddings=lookup)[0].embedding, weighted)
    # commas after the name are punctuation
    assert torch.equal(encode(clip, "a embedding:myred, circle", embeddings=lookup)[0].embedding,
                       encode(clip, "a red, circle")[0].embedding)
    with pytest.raises(ValueError, match=f"width 17, but this text encoder takes {_table(clip).shape[1]}"):
        encode(clip, "embedding:other-width", embeddings=lookup)


def test_a1111_pickles_need_allow_pickle(tiny_bundle, embeddings):
    from flowrun.diffusion.detect import CheckpointError

    with pytest.raises(CheckpointError, match="pickle embeddings"):
        read_embedding(embeddings / "a1111.pt", allow_pickle=False)
    state = read_embedding(embeddings / "a1111.pt", allow_pickle=True)
    table = _table(tiny_bundle[1])
    assert torch.equal(embedding_vectors(state, "a1111", "clip_l", table.shape[1]), table[_ids(tiny_bundle[1], "red")])
    sdxl = {"clip_l": torch.ones(2, 8), "clip_g": torch.zeros(2, 12)}
    assert embedding_vectors(sdxl, "x", "clip_g", 12).shape == (2, 12)
    assert embedding_vectors(sdxl, "x", "clip_l", 8).shape == (2, 8)


WORKFLOW = """
version: 1
nodes:
  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: tiny}}
  pos: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: "a embedding:myred circle"}}
  neg: {type: CLIPTextEncode, in: {clip: ckpt.clip}, with: {text: "embedding:nowhere, embedding:a1111"}}
  latent: {type: EmptyLatentImage, with: {width: 64, height: 64}}
  sample: {type: KSampler, in: {model: ckpt.model, positive: pos, negative: neg, latent_image: latent},
           with: {steps: 2}}
  decode: {type: VAEDecode, in: {samples: sample, vae: ckpt.vae}}
  save: {type: SaveImage, in: {images: decode}}
"""


def test_unknown_embeddings_are_errors_at_their_line_and_files_enter_the_key(cli, tmp_path, tiny_models, embeddings,
                                                                             tiny_bundle):
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW)
    r = cli("validate", path, "--models-dir", tiny_models)
    assert r.code == 2 and r.err.count("error[") == 1, r.err
    assert f"{path}:6:" in r.err and "node 'neg', field 'text'" in r.err and "no embedding named 'nowhere'" in r.err
    assert "available: " in r.err and "myred" in r.err
    path.write_text(WORKFLOW.replace("embedding:nowhere, ", ""))
    assert cli("validate", path, "--models-dir", tiny_models).code == 0
    r = cli("run", path, "--models-dir", tiny_models, "--out", tmp_path / "o", "--cache-dir", tmp_path / "c")
    assert r.code == 2 or r.code == 1, r.err  # the A1111 pickle is refused without --allow-pickle
    assert "--allow-pickle" in r.err
    r = cli("run", path, "--models-dir", tiny_models, "--allow-pickle", "--out", tmp_path / "o", "--cache-dir",
            tmp_path / "c")
    assert r.code == 0, r.err
    keys = {n["id"]: n["key"] for n in json.loads((tmp_path / "o" / "run.json").read_text())["nodes"]}
    width = _table(tiny_bundle[1]).shape[1]
    save_file({"emb_params": torch.zeros(1, width)}, str(embeddings / "myred.safetensors"))  # the file changes
    r = cli("plan", path, "--models-dir", tiny_models, "--allow-pickle", "--json", "--cache-dir", tmp_path / "c")
    planned = {n["id"]: n for n in json.loads(r.out)["nodes"]}
    assert planned["pos"]["key"] != keys["pos"] and planned["pos"]["action"] == "run"
    assert planned["neg"]["key"] == keys["neg"]
