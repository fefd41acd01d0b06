"""CLIP as a judge: a transformers `CLIPModel` read offline, CLIP's image preprocessing, and the two
measures built on its projected embeddings: CLIPScore (Hessel et al. 2021, w * max(cos, 0) with w = 2.5)
and image-to-image cosine similarity.

A model is a transformers folder (config.json + model.safetensors, optionally preprocessor_config.json
and a tokenizer) or one .safetensors file with a sidecar `<name>.json` holding the CLIPModel config.
Without a tokenizer of its own, the CLIP tokenizer flowrun bundles is used (OpenAI CLIP's vocabulary).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowrun.diffusion import offline  # noqa: F401  (sets the hub libraries offline before they load)
from flowrun.diffusion.detect import CheckpointError

CLIPSCORE_WEIGHT = 2.5  # Hessel et al.'s w: rescales cosines of ViT-B/32 to roughly 0..1
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """CLIP's image preprocessing: resize the shortest side to `size` (bicubic), center-crop to `crop`
    (height, width), scale to 0..1 and normalise per channel."""

    size: int
    crop: tuple[int, int]
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    @classmethod
    def read(cls, folder: Path | None, image_size: int) -> "Preprocess":
        """From a folder's preprocessor_config.json (CLIPImageProcessor's fields), else CLIP's defaults
        at the model's input size."""
        path = folder / "preprocessor_config.json" if folder is not None else None
        if path is None or not path.is_file():
            return cls(image_size, (image_size, image_size))
        cfg = json.loads(path.read_text())
        size = cfg.get("size", image_size)
        size = size.get("shortest_edge", image_size) if isinstance(size, dict) else int(size)
        crop = cfg.get("crop_size", size)
        crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
        return cls(int(size), crop, tuple(cfg.get("image_mean", OPENAI_MEAN)), tuple(cfg.get("image_std", OPENAI_STD)))

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """float [batch, h, w, 3] in 0..1 -> float32 [batch, 3, crop_h, crop_w], normalised."""
        from PIL import Image

        # CLIP was trained on 8-bit images resized by PIL; quantising like SaveImage's PNG makes the
        # in-memory image and the saved file score the same
        pixels = np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
        out = []
        for px in pixels:
            h, w = px.shape[:2]
            short, long = (h, w) if h <= w else (w, h)
            new_short, new_long = self.size, int(self.size * long / short)  # transformers' rounding (down)
            nh, nw = (new_short, new_long) if h <= w else (new_long, new_short)
            img = Image.fromarray(px, "RGB")
            if (nh, nw) != (h, w):
                img = img.resize((nw, nh), Image.Resampling.BICUBIC)
            arr = np.asarray(img, dtype=np.float32)
            ch, cw = self.crop
            top, left = (nh - ch) // 2, (nw - cw) // 2
            if top < 0 or left < 0:
                raise ValueError(f"image of {w}x{h} is smaller than CLIP's crop {cw}x{ch} after resizing")
            arr = arr[top:top + ch, left:left + cw] / 255.0
            out.append((arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


class ClipJudge:
    """A loaded CLIPModel with its preprocessing and tokenizer: the CLIP_SCORE_MODEL port's value."""

    def __init__(self, model, tokenizer, preprocess: Preprocess, fingerprint: str, device: str = "cpu"):
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess
        self.fingerprint, self.device = fingerprint, device

    @torch.no_grad()
    def image_embeds(self, images: np.ndarray) -> torch.Tensor:
        """Unit-length projected image embeddings [batch, dim] (float32, CPU)."""
        pixels = self.preprocess(images).to(self.device)
        emb = self.model.get_image_features(pixel_values=pixels)
        emb = getattr(emb, "pooler_output", emb)  # transformers 5 returns an output object
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """Unit-length projected text embeddings [len(texts), dim], each text cut to the model's context."""
        limit = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=limit, return_tensors="pt")
        emb = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device))
        emb = getattr(emb, "pooler_output", emb)
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

    def clip_score(self, images: np.ndarray, text: str, weight: float = CLIPSCORE_WEIGHT) -> list[float]:
        """CLIPScore of each image against `text`: weight * max(cos(image, text), 0)."""
        cos = self.image_embeds(images) @ self.text_embeds([text])[0]
        return [float(v) for v in weight * cos.clamp(min=0)]

    def similarity(self, images: np.ndarray, references: np.ndarray, mode: str = "mean") -> list[float]:
        """Cosine similarity of each image's embedding to the references: to their mean embedding
        (renormalised) with `mean`, or image i to reference i with `pairwise`."""
        emb, ref = self.image_embeds(images), self.image_embeds(references)
        if mode == "pairwise":
            if len(ref) != len(emb):
                raise ValueError(f"pairwise similarity needs as many reference images as images: "
                                 f"{len(emb)} images, {len(ref)} references")
            return [float(v) for v in (emb * ref).sum(-1)]
        centre = torch.nn.functional.normalize(ref.mean(0), dim=-1)
        return [float(v) for v in emb @ centre]


def _clip_config(raw: dict, path: Path):
    from transformers import CLIPConfig

    kind = raw.get("model_type")
    if kind != "clip":
        what = "a CLIP vision model only" if kind == "clip_vision_model" else f"model_type {kind!r}"
        raise CheckpointError(f"{path}: holds {what}; CLIPScore needs a full CLIPModel (text and vision towers, "
                              "config.json with model_type 'clip')")
    return CLIPConfig.from_dict(raw)


def load(path: Path, fingerprint: str, *, device: str = "cpu") -> ClipJudge:
    """A ClipJudge from a transformers folder or a .safetensors file with its sidecar config, read offline,
    float32, in eval mode on `device`."""
    from transformers import CLIPModel

    from flowrun.diffusion.checkpoint import tokenizer as bundled_tokenizer
    from flowrun.diffusion.detect import read_header

    path = Path(path)
    folder = path if path.is_dir() else None
    config_file = path / "config.json" if folder else path.with_suffix(".json")
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no CLIP config beside it (expected {config_file.name}, a CLIPModel config)")
    try:
        config = _clip_config(json.loads(config_file.read_text()), path)
    except ValueError as exc:
        raise CheckpointError(f"{config_file}: not a readable CLIP config ({exc})") from None
    try:
        if folder:
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
        else:
            from safetensors.torch import load_file

            read_header(path)
            model = CLIPModel(config)
            missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise CheckpointError(f"{path}: weights do not match its config ({len(missing)} missing, e.g. "
                                      f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot load the CLIP model: {exc}") from None
    model = model.float().eval().requires_grad_(False).to(device)
    tok = bundled_tokenizer()
    if folder and (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    preprocess = Preprocess.read(folder, config.vision_config.image_size)
    return ClipJudge(model, tok, preprocess, fingerprint, device)
