"""Regenerates the test vectors of protocols/votes.md (fingerprint seed, claim, tally, fault
evidence) in place. Ed25519 signatures are deterministic, so a rerun gives the same bytes.

Peers are NodeIdentity.from_seed(bytes([i]) * 32) for i = 1..4; the context is network
`testnet`, task 000102...0f, stage 3, step 7, m = 3; fingerprints have H = 64, T = 2, r = 4.
Replica 2 disagrees with replicas 1 and 3 (its first value is 1.5, not 1.0), replica 4 votes.

Usage: python tools/votes_vectors.py [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2pinfer.consensus import (
    TOLERANCE_FLOAT32,
    Fingerprint,
    FingerprintContext,
    InlinedPeerKeys,
    build_fault_evidence,
    sign_claim,
    tally,
)
from p2pinfer.consensus.commit import sealed_context, sign_commit
from p2pinfer.identity import NodeIdentity

SPEC = ROOT / "protocols" / "votes.md"
CONTEXT = FingerprintContext("testnet", bytes(range(16)), 3, 7)


def wrap(data: bytes, width: int = 96) -> str:
    h = data.hex()
    return "\n".join(h[i:i + width] for i in range(0, len(h), width))


def replace_vector(text: str, name: str, data: bytes) -> str:
    pattern = re.compile(r"(<!--\s*vector\s+" + re.escape(name) + r"\s*-->\s*```hex\s*\n)(.*?)(```)",
                         re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"vector {name} not found in {SPEC}")
    return pattern.sub(lambda m: m.group(1) + wrap(data) + "\n" + m.group(3), text, count=1)


def vectors() -> dict[str, bytes]:
    ids = [NodeIdentity.from_seed(bytes([i]) * 32) for i in range(1, 5)]
    base = np.array([[1.0, -2.0, 0.5, 3.0], [0.25, 0.0, -1.5, 2.0]], dtype="<f4")
    dissent = base.copy()
    dissent[0, 0] = 1.5
    close = bytearray(base.tobytes())
    close[12] = 0x0D  # replica 3: 3.0 in its last mantissa bits, within the float32 tolerance
    values = [base.tobytes(), dissent.tobytes(), bytes(close)]
    claims = [sign_claim(ident._private, ident.peer_id, CONTEXT, 3,
                         Fingerprint(hidden=64, tokens=2, rank=4, values=v))
              for ident, v in zip(ids, values, strict=False)]
    keys = InlinedPeerKeys()
    outcome = tally(claims, keys, TOLERANCE_FLOAT32)
    reporter = ids[3]
    signed_tally = outcome.sign_tally(reporter._private, reporter.peer_id,
                                      [i.peer_id for i in ids[:3]])
    evidence = build_fault_evidence(outcome, ids[1].peer_id, reporter.peer_id,
                                    reporter._private, keys)
    # commit before the seed: each replica commits to its output (here a [2, 4] float32 tensor
    # of its fingerprint values, standing for the stage output), the seal and the sealed seed
    commits = [sign_commit(ident._private, ident.peer_id, CONTEXT, 3,
                           torch.from_numpy(np.frombuffer(v, dtype="<f4").reshape(2, 4).copy()))
               for ident, v in zip(ids, values, strict=False)]
    sealed = sealed_context(commits, [i.peer_id for i in ids[:3]])
    return {
        "commit": commits[0].encode(),
        "seal": sealed.sealed,
        "sealed-seed": sealed.seed(),
        "fingerprint-seed": CONTEXT.seed(),
        "fingerprint-shake": hashlib.shake_256(CONTEXT.seed()).digest(8),
        "claim": claims[0].encode(),
        "tally": signed_tally.encode(),
        "fault": evidence.encode(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only say whether the spec's vectors are current")
    args = parser.parse_args()
    text = SPEC.read_text()
    updated = text
    for name, data in vectors().items():
        updated = replace_vector(updated, name, data)
    if args.check:
        print("current" if updated == text else "stale")
        raise SystemExit(0 if updated == text else 1)
    SPEC.write_text(updated)
    print(f"wrote {SPEC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
