"""Prove and verify real layers of an imported checkpoint offline (default: the first decoder
block of the installed SmolLM2-135M-Instruct GGUF, width 576 padded to 1024, 9/3 heads padded
to 16/4): per provable config layer (the attention half, the MLP half), the prover time, the
verifier time and the proof size on a real prompt of --tokens tokens; then one changed weight
in the MLP half, proven by a peer that claims the manifest's commitments anyway, must be
rejected by the verifier.

    python tools/zk_real_layers.py [--imported DIR] [--source GGUF_OR_DIR] [--tokens 16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.numpy import load_file, save_file

from p2pinfer.models import ClientHead, Tokenizer
from p2pinfer.models.defaults import smollm2_path
from p2pinfer.zk import ModelManifest, ProofBinding, ProofError, prove, verify
from p2pinfer.zk.checkpoint import commit_layers, fixed_layers, load_manifest_bytes
from p2pinfer.zk.commitment import CommittedShard, commit_shard
from p2pinfer.zk.importer import import_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="Llama-family checkpoint (default: SmolLM2 GGUF)")
    ap.add_argument("--imported", help="its provable import with a manifest (default: import "
                                       "its first block now)")
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()
    source = Path(args.source) if args.source else smollm2_path()
    work = Path(tempfile.mkdtemp(prefix="zk-real-"))
    try:
        if args.imported:
            imported = Path(args.imported)
        else:
            t0 = time.perf_counter()
            import_checkpoint(source, work / "model", blocks=1)
            imported = work / "model"
            print(f"imported block 0 with its manifest in {time.perf_counter() - t0:.1f} s")
        tok = Tokenizer.load(source)
        ids = tok.apply_chat_template([{"role": "user", "content":
                                        "What is the capital of France? Answer in one "
                                        "sentence, and say why it matters."}])[: args.tokens]
        x = ClientHead.load(source, 0).embed(ids)[0].double().numpy()
        first = fixed_layers(imported, 0, 1)
        a = first.quantize(first.pad_features(x))
        manifest = ModelManifest.from_bytes(load_manifest_bytes(imported))
        print(f"prompt of {len(ids)} tokens; manifest {manifest.model_id!r}")
        print("layer          commit-load s  prove s  verify s  proof bytes")
        for k, name in ((0, "attention half"), (1, "MLP half")):
            t0 = time.perf_counter()
            shard = commit_layers(imported, k, k + 1)
            t1 = time.perf_counter()
            y = shard.forward_fixed(a)
            binding = ProofBinding(b"real-layer-%d" % k, manifest.digest())
            t2 = time.perf_counter()
            proof = prove(shard, a, y, binding)
            t3 = time.perf_counter()
            verify(manifest.block_shard(k, k + 1), a, y, proof, binding)
            t4 = time.perf_counter()
            print(f"{name:14s} {t1 - t0:12.1f}  {t3 - t2:7.1f}  {t4 - t3:8.2f}  "
                  f"{len(proof.to_bytes()):11d}", flush=True)
            if k == 0:
                mlp_input = y
        # one changed weight in the MLP half: the cheating peer claims the manifest's entry
        bad = work / "bad"
        shutil.copytree(imported, bad, ignore=shutil.ignore_patterns("zk"))
        tensors = load_file(str(bad / "model.safetensors"))
        tensors["layers.1.down.weight"][5, 11] += 0.25
        save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
        entry = manifest.block_shard(1, 2)
        mlp = fixed_layers(bad, 1, 2)
        own = commit_shard(mlp, model_id=manifest.model_id, first_layer=entry.first_layer)
        cheat = CommittedShard(mlp, entry, own.weight_blinds, own.bias_blinds)
        y = cheat.forward_fixed(mlp_input)
        binding = ProofBinding(b"changed-weight", manifest.digest())
        try:
            verify(entry, mlp_input, y, prove(cheat, mlp_input, y, binding), binding)
        except ProofError as exc:
            print(f"changed weight (layers.1.down.weight[5, 11] += 0.25): rejected: "
                  f"{type(exc).__name__}: {exc}")
            return 0
        print("changed weight: ACCEPTED (unsound)")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
