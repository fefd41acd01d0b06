"""Rebuild flowrun/diffusion/clip_tokenizer/{vocab.json,merges.txt} from the CLIP BPE file in open_clip_torch.

The CLIP byte-pair vocabulary (MIT licence, OpenAI) ships inside the open_clip_torch wheel as
open_clip/bpe_simple_vocab_16e6.txt.gz. This script turns it into the two files that transformers'
CLIPTokenizer reads, so that flowrun never fetches a tokenizer from a model hub.

    pip download --no-deps -d /tmp/oc open_clip_torch && unzip -o /tmp/oc/*.whl 'open_clip/*.gz' -d /tmp/oc
    python tools/build_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "flowrun" / "diffusion" / "clip_tokenizer"
N_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes x 2 (with </w>), 48894 merges, 2 special tokens


def byte_symbols() -> list[str]:
    """CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def main(bpe_gz: str) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
