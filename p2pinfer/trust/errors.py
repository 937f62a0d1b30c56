"""Typed failures of attestation: every verifier raises one of these, never returns False.

`AttestationError.check` names the check that failed (a short stable string such as
"signature", "cert-chain", "debug", "binding"), so callers and operators can act on it and
tests can assert on it.
"""

from __future__ import annotations

from p2pinfer.errors import P2PInferError, WireError


class AttestationError(P2PInferError):
    """Evidence did not pass a check. `.check` names which one."""

    check: str = "attestation"

    def __init__(self, message: str, *, check: str | None = None) -> None:
        super().__init__(message)
        if check is not None:
            self.check = check


class EvidenceFormatError(AttestationError, WireError):
    """Evidence, a certificate or a bundle is truncated, oversized or not of the claimed kind."""

    check = "format"


class SignatureInvalid(AttestationError):
    """A signature over the evidence does not verify under the key that should have made it."""

    check = "signature"


class CertificateChainError(AttestationError):
    """The signing key does not chain to the pinned vendor root (or the chain is malformed)."""

    check = "cert-chain"


class ValidityError(AttestationError):
    """A certificate or collateral is not valid at the verification time (`now`)."""

    check = "validity"


class TcbMismatch(AttestationError):
    """The reported TCB or chip identity disagrees with what the endorsement key certifies."""

    check = "tcb"


class BindingMismatch(AttestationError):
    """The evidence is not bound to the expected channel key, peer, network and nonce."""

    check = "binding"


class PolicyViolation(AttestationError):
    """The evidence is genuine but the verifier's policy refuses what it shows."""

    check = "policy"


class TeeUnavailable(P2PInferError):
    """This machine cannot produce the requested kind of evidence (no device, no driver)."""
