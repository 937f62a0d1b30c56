"""Errors of the proof system. Every verification failure is a `ProofError` naming its check."""

from __future__ import annotations

from p2pinfer.errors import P2PInferError, WireError


class ZkError(P2PInferError):
    """Base of everything p2pinfer.zk raises on purpose."""


class ProofError(ZkError):
    """A proof does not verify. `check` names the failed check (e.g. "layer0/weight-opening")."""

    def __init__(self, check: str, detail: str = "") -> None:
        super().__init__(f"proof rejected at {check}" + (f": {detail}" if detail else ""))
        self.check = check


class BindingMismatch(ProofError):
    """The proof was made for another task, manifest, input or output."""


class ShapeMismatch(ProofError):
    """The proof's shape does not match the shard it claims to be about."""


class RelationError(ProofError):
    """A batch of linear relations between committed values (sum-check rounds, wiring) fails."""


class OpeningError(ProofError):
    """A zero-knowledge opening of a committed matrix (weights, bias, bits) fails."""


class ProductError(ProofError):
    """A proof that one committed value is the product of two others fails."""


class ProofFormatError(WireError, ZkError):
    """Proof, manifest or cache bytes are malformed, oversized or of an unknown version."""


class FixedPointOverflow(ZkError):
    """A fixed-point value left the range the proof system can represent."""


class CommitmentMismatch(ZkError):
    """A shard's weights do not match the commitment or cache it was paired with."""


class CacheMismatch(ProofError):
    """A decode step does not fit the session's committed KV cache: it was proven against
    another session's cache, at another position, or over rows that were never committed."""
