"""Zero-knowledge proofs that a shard's output was computed with committed weights (zkDPS).

What lives where (bytes and math: protocols/zk-proof.md):

* fixed point: `fixed` (fixed-point layers and shards, bit for bit), `tables` (the GELU and
  SiLU tables), `attention` (fixed-point attention and its exp and rotary tables);
* commitments: `layout` (the Hyrax layout of committed tables), `manifest` (layer, shard and
  model commitments, the published manifest), `commitment` (committing a shard's weights);
* proofs: `proof` (the proof's format, its binding, and the walk over the layers) with one
  gadget per kind of layer in `gadgets/` (bits, lookup, gated, rmsnorm, attention), on
  `ledger` (committed linear relations, products, Hyrax openings) over `field`, `group`
  (BLS12-381 Pedersen) and `transcript` (Fiat-Shamir);
* `kvcache`: proven generation, one token's step at a time over a session's committed KV cache
  (`prove_step`, `verify_step`; the decode attention gadget in gadgets/decode.py);
* `checkpoint`: a p2pinfer-mlp checkpoint (p2pinfer.models) as provable layers, its owner's
  manifest and the built-in provable models. It loads torch, so it is not imported here.

In short:

    shard = ProvableMlp.from_float([(w1, b1), (w2, b2)], activations="relu")
    owner = commit_shard(shard, cache_dir)                    # once per set of weights
    manifest = ModelManifest.from_shards("model-id", [owner])  # published; verifiers pin digest
    prover = owner.bind_to(manifest.shard(0, 2))
    y = prover.forward_fixed(x)                               # int64, bit-for-bit
    proof = prove(prover, x, y, ProofBinding(task_id, manifest.digest()))
    verify(manifest.shard(0, 2), x, y, ShardProof.from_bytes(blob, max_size), binding)
"""

from .commitment import CommittedShard as CommittedShard
from .commitment import commit_shard as commit_shard
from .errors import BindingMismatch as BindingMismatch
from .errors import CacheMismatch as CacheMismatch
from .errors import CommitmentMismatch as CommitmentMismatch
from .errors import FixedPointOverflow as FixedPointOverflow
from .errors import OpeningError as OpeningError
from .errors import ProductError as ProductError
from .errors import ProofError as ProofError
from .errors import ProofFormatError as ProofFormatError
from .errors import RelationError as RelationError
from .errors import ShapeMismatch as ShapeMismatch
from .errors import ZkError as ZkError
from .fixed import FixedLayer as FixedLayer
from .fixed import ProvableMlp as ProvableMlp
from .manifest import LayerCommitment as LayerCommitment
from .manifest import ModelManifest as ModelManifest
from .manifest import ShardCommitment as ShardCommitment
from .proof import MalformedProof as MalformedProof
from .proof import ProofBinding as ProofBinding
from .proof import ShardProof as ShardProof
from .proof import prove as prove
from .proof import verify as verify
