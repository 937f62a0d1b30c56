"""Attestation: evidence of what hardware and code a peer runs, and offline verification.

`binding` derives the 64 bytes every piece of evidence must carry (channel key, peer, network,
nonce); attesters (`sev_snp`, `tdx`, `nvidia`, `simulated`) make an `EvidenceBundle`; one
`verify_bundle` checks a bundle against pinned vendor roots and a `Policy` and returns
`VerifiedClaims` or raises an `AttestationError` whose `.check` names what failed. No
networking here: `protocols/attest.md` specifies how nodes exchange bundles.
"""

from p2pinfer.trust.attester import Attester as Attester
from p2pinfer.trust.binding import gpu_nonce as gpu_nonce
from p2pinfer.trust.binding import report_data as report_data
from p2pinfer.trust.claims import ClaimsCache as ClaimsCache
from p2pinfer.trust.claims import GpuClaim as GpuClaim
from p2pinfer.trust.claims import TeeLevel as TeeLevel
from p2pinfer.trust.claims import VerifiedClaims as VerifiedClaims
from p2pinfer.trust.errors import AttestationError as AttestationError
from p2pinfer.trust.errors import BindingMismatch as BindingMismatch
from p2pinfer.trust.errors import CertificateChainError as CertificateChainError
from p2pinfer.trust.errors import EvidenceFormatError as EvidenceFormatError
from p2pinfer.trust.errors import PolicyViolation as PolicyViolation
from p2pinfer.trust.errors import SignatureInvalid as SignatureInvalid
from p2pinfer.trust.errors import TcbMismatch as TcbMismatch
from p2pinfer.trust.errors import TeeUnavailable as TeeUnavailable
from p2pinfer.trust.errors import ValidityError as ValidityError
from p2pinfer.trust.evidence import KINDS as KINDS
from p2pinfer.trust.evidence import EvidenceBundle as EvidenceBundle
from p2pinfer.trust.evidence import GpuEvidence as GpuEvidence
from p2pinfer.trust.hooks import ChannelAttestation as ChannelAttestation
from p2pinfer.trust.hooks import ed25519_key_from_peer_id as ed25519_key_from_peer_id
from p2pinfer.trust.nvidia import NvidiaCcAttester as NvidiaCcAttester
from p2pinfer.trust.policy import Policy as Policy
from p2pinfer.trust.sev_snp import SevSnpAttester as SevSnpAttester
from p2pinfer.trust.simulated import SimulatedAttester as SimulatedAttester
from p2pinfer.trust.tdx import TdxAttester as TdxAttester
from p2pinfer.trust.verify import describe_local as describe_local
from p2pinfer.trust.verify import detect_attester as detect_attester
from p2pinfer.trust.verify import verify_bundle as verify_bundle
from p2pinfer.trust.verify import verify_file as verify_file
