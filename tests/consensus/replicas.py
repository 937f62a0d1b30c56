"""Claims built from synthetic activations for vote and evidence tests."""

from __future__ import annotations

import torch

from p2pinfer.consensus import FingerprintClaim, FingerprintContext, fingerprint, sign_claim
from tests.consensus.conftest import NETWORK, Peer

CONTEXT = FingerprintContext(NETWORK, b"task-0001", 1, 5)


def activation(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(seed))


def honest_claim(peer: Peer, m: int, jitter: int = 0,
                 context: FingerprintContext = CONTEXT, precision: str = "float32"
                 ) -> FingerprintClaim:
    """Replica output = the true activation plus float noise far below any tolerance."""
    x = activation()
    if jitter:
        x = x + 1e-7 * torch.randn(x.shape, generator=torch.Generator().manual_seed(jitter))
    return sign_claim(peer.key, peer.peer_id, context, m, fingerprint(x, context), precision)


def cheat_claim(peer: Peer, m: int, seed: int = 99,
                context: FingerprintContext = CONTEXT) -> FingerprintClaim:
    return sign_claim(peer.key, peer.peer_id, context, m, fingerprint(activation(seed), context))
