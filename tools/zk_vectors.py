"""Regenerates the test vectors of protocols/zk-proof.md (manifest, proof, transcript) in place.

Blindings are random, so each run gives new (equally valid) manifest and proof bytes.
Usage: python tools/zk_vectors.py
"""

from __future__ import annotations

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


def main() -> None:
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
    text = SPEC.read_text()
    text = replace_vector(text, "transcript-challenge", t.challenge(b"output/0").to_bytes(32, "little"))
    text = replace_vector(text, "manifest", manifest.to_bytes())
    text = replace_vector(text, "proof", proof.to_bytes())
    text = re.sub(r"\(digest `[0-9a-f]{64}`\)", f"(digest `{manifest.digest().hex()}`)", text)
    SPEC.write_text(text)
    print(f"manifest digest {manifest.digest().hex()}, proof {len(proof.to_bytes())} bytes")


if __name__ == "__main__":
    main()
