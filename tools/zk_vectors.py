"""Regenerates the test vectors of protocols/zk-proof.md (manifest, proof, transcript, an
attention manifest and a manifest with a wide lookup table) in place.

Blindings are random, so each run gives new (equally valid) manifest and proof bytes.
Usage: python tools/zk_vectors.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2pinfer.zk import (
    FixedLayer,
    ModelManifest,
    ProofBinding,
    ProvableMlp,
    commit_shard,
    prove,
    verify,
)
from p2pinfer.zk.transcript import Transcript

SPEC = ROOT / "protocols" / "zk-proof.md"


def wrap(data: bytes, width: int = 96) -> str:
    h = data.hex()
    return "\n".join(h[i:i + width] for i in range(0, len(h), width))


def replace_vector(text: str, name: str, data: bytes) -> str:
    pattern = re.compile(r"(<!--\s*vector\s+" + re.escape(name) + r"\s*-->\s*```hex\s*\n)(.*?)(```)",
                         re.DOTALL)
    return pattern.sub(lambda m: m.group(1) + wrap(data) + "\n" + m.group(3), text)


def attention_manifest() -> ModelManifest:
    """One attention layer: d 4, 2 heads, 1 kv head, rope 10000, W = [W_q | W_k | W_v] with
    W_q = 256 I, W_k and W_v the first and last two columns of 256 I, no bias."""
    eye = 256 * np.eye(4, dtype=np.int64)
    w = np.concatenate([eye, eye[:, :2], eye[:, 2:]], axis=1)
    layer = FixedLayer(w, None, "attention", heads=2, kv_heads=1, rope=10000)
    return ModelManifest.from_shards("zk-vector-attention",
                                     [commit_shard(ProvableMlp([layer]), model_id="zk-vector")])


def range_manifest() -> ModelManifest:
    """One SiLU layer of range 8 (real inputs in [-128, 128)): W = [[256]], no bias."""
    layer = FixedLayer(np.array([[256]]), None, "silu", lookup_range=8)
    return ModelManifest.from_shards("zk-vector-range",
                                     [commit_shard(ProvableMlp([layer]), model_id="zk-vector")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", help="regenerate only these vectors")
    args = ap.parse_args()
    wanted = set(args.only or ["transcript-challenge", "manifest", "proof",
                               "manifest-attention", "manifest-range"])
    text = SPEC.read_text()
    if "manifest-range" in wanted:
        wide = range_manifest()
        text = replace_vector(text, "manifest-range", wide.to_bytes())
        text = re.sub(r"\(range digest `[0-9a-f]{64}`\)",
                      f"(range digest `{wide.digest().hex()}`)", text)
    if "manifest-attention" in wanted:
        att = attention_manifest()
        text = replace_vector(text, "manifest-attention", att.to_bytes())
        text = re.sub(r"\(attention digest `[0-9a-f]{64}`\)",
                      f"(attention digest `{att.digest().hex()}`)", text)
    if not wanted & {"transcript-challenge", "manifest", "proof"}:
        SPEC.write_text(text)
        return
    shard = ProvableMlp([FixedLayer(np.array([[300]]), np.array([-5000]), "relu", False)])
    committed = commit_shard(shard, model_id="zk-vector")
    manifest = ModelManifest.from_shards("zk-vector", [committed])
    committed = committed.bind_to(manifest.shard(0, 1))
    x = np.array([[700]])
    y = committed.forward_fixed(x)
    binding = ProofBinding(b"task-vector", manifest.digest(), b"testnet/0")
    proof = prove(committed, x, y, binding)
    verify(manifest.shard(0, 1), x, y, proof, binding)
    t = Transcript(b"p2pinfer/zk-shard-proof/v1")
    t.absorb(b"task", b"abc")
    text = replace_vector(text, "transcript-challenge", t.challenge(b"output/0").to_bytes(32, "little"))
    text = replace_vector(text, "manifest", manifest.to_bytes())
    text = replace_vector(text, "proof", proof.to_bytes())
    text = re.sub(r"\(digest `[0-9a-f]{64}`\)", f"(digest `{manifest.digest().hex()}`)", text)
    SPEC.write_text(text)
    print(f"manifest digest {manifest.digest().hex()}, proof {len(proof.to_bytes())} bytes")


if __name__ == "__main__":
    main()
