"""Zero-knowledge proofs that a shard's output was computed with committed weights (zkDPS).

`shard` holds fixed-point shards (MLP layers, RMSNorm, attention), their Hyrax weight
commitments and the model manifest; `attention` is the fixed-point causal attention and its
public tables; `proof` proves and verifies one shard execution GKR-style with committed
sum-checks, layer by layer (`attention_proof` for attention layers, `gadgets` for what layer
arguments share); `ledger` has the committed-value arguments (linear relations, products,
Hyrax openings) they rest on; `field`, `group` and `transcript` are the field, the BLS12-381
Pedersen group and Fiat-Shamir.

    shard = ProvableMlp.from_float([(w1, b1), (w2, b2)], activations="relu")
    owner = commit_shard(shard, cache_dir)                    # once per set of weights
    manifest = ModelManifest.from_shards("model-id", [owner])  # published; verifiers pin digest
    prover = owner.bind_to(manifest.shard(0, 2))
    y = prover.forward_fixed(x)                               # int64, bit-for-bit
    proof = prove(prover, x, y, ProofBinding(task_id, manifest.digest()))
    verify(manifest.shard(0, 2), x, y, ShardProof.from_bytes(blob, max_size), binding)
"""

from .errors import BindingMismatch as BindingMismatch
from .errors import CommitmentMismatch as CommitmentMismatch
from .errors import FixedPointOverflow as FixedPointOverflow
from .errors import OpeningError as OpeningError
from .errors import ProductError as ProductError
from .errors import ProofError as ProofError
from .errors import ProofFormatError as ProofFormatError
from .errors import RelationError as RelationError
from .errors import ShapeMismatch as ShapeMismatch
from .errors import ZkError as ZkError
from .proof import MalformedProof as MalformedProof
from .proof import ProofBinding as ProofBinding
from .proof import ShardProof as ShardProof
from .proof import prove as prove
from .proof import verify as verify
from .shard import CommittedShard as CommittedShard
from .shard import FixedLayer as FixedLayer
from .shard import LayerCommitment as LayerCommitment
from .shard import ModelManifest as ModelManifest
from .shard import ProvableMlp as ProvableMlp
from .shard import ShardCommitment as ShardCommitment
from .shard import commit_shard as commit_shard
