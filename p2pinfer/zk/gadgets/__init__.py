"""The argument of each kind of layer, written once for prover and verifier.

Every function here takes `led`, a ProverLedger or a VerifierLedger, and prover-only inputs
(witness tables) that are None on the verifier; each turns claims on a layer's output into
claims on its input. Spec: protocols/zk-proof.md, "Per-layer argument" and the sections after.

* `common`: claims and witnesses, sum-check oracles, committed tables (`Committed`), the
  residual split, and `matmul_tail` (z = a W + b, W and b opened against the manifest);
* `bits`: a rescale floor(z / 2**f), with ReLU or without, by the 32-bit decomposition of z
  (`bits_head`), and committed 0/1 tables (`BitTable`);
* `lookup`: GELU and SiLU by a committed logUp lookup (`lookup_head`), and the logUp argument
  the exp table of attention shares (`lookup_inverses`, `lookup_table_side`);
* `gated`: SwiGLU and GeGLU layers (`gated_layer`);
* `rmsnorm`: RMSNorm layers (`norm_layer`);
* `attention`: causal multi-head attention with rotary positions (`attention_layer`);
* `decode`: one token's attention over a committed KV cache (`decode_attention_layer`).

proof.py picks one per layer (its dispatch) and holds the proof's format.
"""
