"""Activation fingerprints: a compact, task-seeded summary of a stage output that tolerates
honest floating-point noise and exposes substitution.

Paper, section "Consensus-based verification" (CBV, sharded form): the m replicas of a stage
must agree on its output. Honest peers on different hardware, thread counts or batch shapes do
not produce bit-identical floats, so they agree on a fingerprint instead.

Scheme "rp-v1" (specified byte for byte in protocols/votes.md):
- seed = SHA-256("p2pinfer/fingerprint/rp-v1" || 0x00 || msgpack([network_id, task_id, stage,
  step])); the projection changes at every step of every task.
- R is a rank x hidden matrix of signs: bit i of SHAKE-256(seed) (little-endian bit order within
  each byte, row-major) gives R[i // hidden, i % hidden] = -1 if set, else +1.
- For an activation x of shape [1, T, hidden] (or [T, hidden]) the fingerprint is the float32
  matrix P = x R^T / sqrt(hidden) of shape [T, rank]: a Johnson-Lindenstrauss sketch of each
  token, so ||P_t|| estimates ||x_t|| and ||P_t - P'_t|| estimates ||x_t - x'_t||.
- distance(a, b) = max over tokens t of ||a_t - b_t|| / max(||a_t||, ||b_t||, floor), where
  floor = FLOOR_FRACTION * the mean token norm of both; two fingerprints match when the distance
  is at most the tolerance.

The default tolerances come from tools/calibrate_fingerprints.py (see TOLERANCE_FLOAT32):
honest variation stays well below them, substitution well above.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection
from dataclasses import dataclass

import msgpack
import numpy as np
import torch

from p2pinfer.consensus.errors import FingerprintError, FingerprintMismatch

SCHEME = "rp-v1"
DEFAULT_RANK = 32
MAX_RANK = 256
MAX_HIDDEN = 65536
MAX_TOKENS = 32768
# Token norms below this fraction of the mean token norm are compared against the mean instead,
# so a near-zero token cannot turn float noise into a large relative error.
FLOOR_FRACTION = 1e-3

# Calibrated with tools/calibrate_fingerprints.py, 300 trials per variation, on random Llama
# checkpoints (hidden 384, 6 layers, 24 tokens) and on the real all-MiniLM-L6-v2 weights.
# float32 replicas with other thread counts, batch shapes or KV-cache decode: at most 1.1e-6.
# bfloat16 against float32: at most 2.2e-2 (Llama) and 4.4e-2 (MiniLM, median 2.2e-2). Across
# stages the error compounds: a replica forwards its own output, so a bfloat16 chain of three
# stages (the honest testnet's checkpoint, 18,000 decode and prefill steps) reached 8.0e-2 at the
# last stage, 1.3e-3 of its steps above 5e-2. A false reject there is fault evidence that bans
# an honest peer, so the bfloat16 tolerance is 1e-1. Smallest distances of substitutions over
# both models: other weights 1.10, one layer skipped 0.44, half the layers 0.67, one input
# token changed 0.15. int8 weights (1.7e-2 to 0.1), noise of 1% and 10% RMS, and noise of 10%
# RMS on a single token are caught at the float32 tolerance but not reliably at the bfloat16
# one: next to bfloat16 rounding they are noise. A stage that must exclude them runs float32.
# On the real SmolLM2-135M-Instruct (30 layers, tools/calibrate_fingerprints.py side by side
# with TOPLOC): float32 pairs at most 5e-6; bfloat16 pairs (batch shape, KV decode, a route
# of six bfloat16 stages, against float32) up to 9.95e-2; every float32 cheat at least 1.1e-2.
TOLERANCE_FLOAT32 = 1e-3
TOLERANCE_BFLOAT16 = 1e-1

# Fault evidence bans network-wide at once, so it is judged at EVIDENCE_MARGIN times each pair's
# class tolerance (at most EVIDENCE_TOLERANCE). The worst honest distances measured by
# tools/calibrate_fingerprints.py: float32 pairs (threads, batch shape, KV decode, SmolLM2 and
# MiniLM) below 5e-6, 1/200 of the float32 tolerance; bfloat16 pairs 9.95e-2 (SmolLM2,
# bfloat16 against float32) and 9.8e-2 (the testnet's random checkpoint as a chain of three
# bfloat16 stages), so the margin stays 1.5 and a dissent honest rounding could explain bans
# nobody.
EVIDENCE_MARGIN = 1.5
EVIDENCE_TOLERANCE = EVIDENCE_MARGIN * TOLERANCE_BFLOAT16

# float16 and TF32 (10-bit mantissas) are not calibrated separately: they take the bfloat16
# tolerance, which bounds their rounding noise from above.
_TOLERANCES = {"float32": TOLERANCE_FLOAT32, "bfloat16": TOLERANCE_BFLOAT16,
               "float16": TOLERANCE_BFLOAT16, "tfloat32": TOLERANCE_BFLOAT16}


#: Precision classes a claim states (protocols/votes.md, "Precision classes"). A comparison
#: between two claims uses the tolerance of the pair: float32 against float32 stays at the
#: float32 tolerance even on a route where some other replica computes in bfloat16, so an
#: int8-weight substitute (SmolLM2: at least 2.7e-2 from float32 on every token) cannot hide
#: behind a bfloat16 replica elsewhere. Any pair with a bfloat16-class claim takes the bfloat16
#: tolerance: next to bfloat16 rounding (SmolLM2, 30 layers: up to 6.6e-2 per token) int8
#: weights are noise, so a stage that must exclude them keeps a float32 majority.
PRECISION_CLASSES = ("float32", "bfloat16")
_CLASS_OF = {"float32": "float32", "bfloat16": "bfloat16", "float16": "bfloat16",
             "tfloat32": "bfloat16"}
_CLASS_TOLERANCE = {"float32": TOLERANCE_FLOAT32, "bfloat16": TOLERANCE_BFLOAT16}


def precision_class(precision: str) -> str:
    """The class a compute precision votes in: `float32`, or `bfloat16` for bfloat16, float16
    and TF32. Raises FingerprintError for an unknown name."""
    if precision not in _CLASS_OF:
        raise FingerprintError(f"unknown compute precision {precision!r}")
    return _CLASS_OF[precision]


def pair_tolerance(a: str, b: str, cap: float = math.inf) -> float:
    """Tolerance for comparing a claim of class `a` with one of class `b`: the looser of the two
    classes' tolerances, at most `cap` (a task's signed tolerance). Raises FingerprintError
    for an unknown class."""
    return min(cap, max(_CLASS_TOLERANCE[precision_class(a)],
                        _CLASS_TOLERANCE[precision_class(b)]))


def stricter(a: str, b: str) -> bool:
    """Whether class `a` is held to a tighter tolerance than class `b`."""
    return _CLASS_TOLERANCE[precision_class(a)] < _CLASS_TOLERANCE[precision_class(b)]


def tolerance_for(precisions: Collection[str]) -> float:
    """Tolerance for a vote among replicas that advertise these compute precisions (the loosest).

    Raises FingerprintError for an unknown precision name.
    """
    if not precisions:
        raise FingerprintError("no compute precision given")
    tolerances = []
    for name in precisions:
        if name not in _TOLERANCES:
            raise FingerprintError(f"unknown compute precision {name!r}")
        tolerances.append(_TOLERANCES[name])
    return max(tolerances)


@dataclass(frozen=True)
class FingerprintContext:
    """Where a fingerprint belongs; it seeds the projection.

    `sealed` is empty, or the 32-byte digest of the stage's output commitments for this step
    (consensus/commit.py): then the seed depends on outputs every replica fixed before anyone
    could know it (protocols/votes.md, "Commit before the seed").
    """

    network_id: str
    task_id: bytes
    stage: int
    step: int
    sealed: bytes = b""

    def seed(self) -> bytes:
        if self.sealed:
            material = msgpack.packb([self.network_id, self.task_id, self.stage, self.step,
                                      self.sealed], use_bin_type=True)
            return hashlib.sha256(b"p2pinfer/fingerprint/rp-v1/sealed\x00" + material).digest()
        material = msgpack.packb(
            [self.network_id, self.task_id, self.stage, self.step], use_bin_type=True
        )
        return hashlib.sha256(b"p2pinfer/fingerprint/rp-v1\x00" + material).digest()

    def unsealed(self) -> FingerprintContext:
        """The same (task, stage, step) without a seal."""
        return FingerprintContext(self.network_id, self.task_id, self.stage, self.step)


@dataclass(frozen=True)
class Fingerprint:
    """Per-token projection of one activation: `tokens` x `rank` float32, little-endian."""

    hidden: int
    tokens: int
    rank: int
    values: bytes

    def __post_init__(self) -> None:
        if not (1 <= self.rank <= MAX_RANK):
            raise FingerprintError(f"rank {self.rank} outside 1..{MAX_RANK}")
        if not (1 <= self.hidden <= MAX_HIDDEN):
            raise FingerprintError(f"hidden size {self.hidden} outside 1..{MAX_HIDDEN}")
        if not (1 <= self.tokens <= MAX_TOKENS):
            raise FingerprintError(f"token count {self.tokens} outside 1..{MAX_TOKENS}")
        if len(self.values) != 4 * self.tokens * self.rank:
            expected = 4 * self.tokens * self.rank
            raise FingerprintError(
                f"fingerprint holds {len(self.values)} bytes, expected {expected}"
            )
        if not np.isfinite(np.frombuffer(self.values, dtype="<f4")).all():
            raise FingerprintError("fingerprint holds non-finite values")

    def array(self) -> np.ndarray:
        """The projections as a float64 array of shape [tokens, rank] (a copy)."""
        raw = np.frombuffer(self.values, dtype="<f4").reshape(self.tokens, self.rank)
        return raw.astype(np.float64)

    def __repr__(self) -> str:
        return f"Fingerprint(hidden={self.hidden}, tokens={self.tokens}, rank={self.rank})"


def projection_matrix(seed: bytes, rank: int, hidden: int) -> torch.Tensor:
    """The rank x hidden sign matrix R of scheme rp-v1 as float32."""
    if not (1 <= rank <= MAX_RANK) or not (1 <= hidden <= MAX_HIDDEN):
        raise FingerprintError(f"projection {rank}x{hidden} outside the limits")
    count = rank * hidden
    stream = hashlib.shake_256(seed).digest((count + 7) // 8)
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8), bitorder="little")[:count]
    signs = 1.0 - 2.0 * bits.astype(np.float32)
    return torch.from_numpy(signs.reshape(rank, hidden))


def fingerprint(
    activation: torch.Tensor, context: FingerprintContext, rank: int = DEFAULT_RANK
) -> Fingerprint:
    """Fingerprint an activation of shape [1, T, H] or [T, H] for `context`.

    Raises FingerprintError for another shape, sizes over the limits or non-finite values.
    """
    if activation.dim() == 3:
        if activation.shape[0] != 1:
            raise FingerprintError(f"batch size {activation.shape[0]}, expected 1")
        activation = activation[0]
    if activation.dim() != 2:
        raise FingerprintError(f"activation shape {tuple(activation.shape)}, expected [1, T, H]")
    tokens, hidden = activation.shape
    if not (1 <= tokens <= MAX_TOKENS) or not (1 <= hidden <= MAX_HIDDEN):
        raise FingerprintError(f"activation of {tokens} tokens x {hidden} outside the limits")
    if not activation.is_floating_point():
        raise FingerprintError(f"activation dtype {activation.dtype} is not floating point")
    matrix = projection_matrix(context.seed(), rank, hidden).to(activation.device)
    with torch.no_grad():
        x = activation.detach().to(torch.float32)
        projected = (x @ matrix.T) / math.sqrt(hidden)
    values = projected.cpu().numpy().astype("<f4", copy=False)
    if not np.isfinite(values).all():
        raise FingerprintError("activation holds non-finite values")
    return Fingerprint(hidden=hidden, tokens=tokens, rank=rank, values=values.tobytes())


def distance(a: Fingerprint, b: Fingerprint) -> float:
    """Largest per-token relative distance between two fingerprints; inf when incomparable."""
    if (a.hidden, a.tokens, a.rank) != (b.hidden, b.tokens, b.rank):
        return math.inf
    pa, pb = a.array(), b.array()
    norm_a = np.linalg.norm(pa, axis=1)
    norm_b = np.linalg.norm(pb, axis=1)
    floor = FLOOR_FRACTION * 0.5 * (norm_a.mean() + norm_b.mean())
    scale = np.maximum(np.maximum(norm_a, norm_b), floor)
    diff = np.linalg.norm(pa - pb, axis=1)
    if floor == 0.0:
        # Both fingerprints are all zeros; they are equal.
        return 0.0
    return float((diff / scale).max())


def match(a: Fingerprint, b: Fingerprint, tolerance: float) -> bool:
    """Whether two fingerprints of one context agree within `tolerance` (see `distance`)."""
    return distance(a, b) <= tolerance


def check_tensor(
    activation: torch.Tensor,
    expected: Fingerprint,
    context: FingerprintContext,
    tolerance: float,
) -> float:
    """Check a local activation against an expected (majority) fingerprint.

    Returns the measured distance; raises FingerprintMismatch when it exceeds the tolerance and
    FingerprintError when the activation cannot be fingerprinted.
    """
    own = fingerprint(activation, context, rank=expected.rank)
    measured = distance(own, expected)
    if measured > tolerance:
        raise FingerprintMismatch("activation does not match the majority fingerprint",
                                  measured, tolerance)
    return measured
