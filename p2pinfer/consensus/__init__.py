"""Integrity by agreement for general-mode tasks (no networking, no global state).

`fingerprint` summarises a stage output so honest replicas agree despite float noise;
`claims` signs fingerprints and vote tallies; `vote` takes the majority of m claims;
`evidence` turns a dissent into signed fault evidence any peer can verify; `reputation` scores
and bans peers; `cdv` checks output distributions even with one replica; `audit` decides random
audits; `claimbox` holds a voter's claims and runs one majority check; `report` is what one
request's verification found; `watch` is the requester's per-stage distribution watch. The
votes/fetch/audit protocol that runs them between peers is `p2pinfer.inference.redundancy`.
Wire formats: protocols/votes.md.
"""

from p2pinfer.consensus.audit import AuditPolicy as AuditPolicy
from p2pinfer.consensus.audit import detection_probability as detection_probability
from p2pinfer.consensus.audit import simulate_detection as simulate_detection
from p2pinfer.consensus.cdv import DriftMonitor as DriftMonitor
from p2pinfer.consensus.cdv import DriftReport as DriftReport
from p2pinfer.consensus.cdv import ProfileBuilder as ProfileBuilder
from p2pinfer.consensus.cdv import ReferenceProfile as ReferenceProfile
from p2pinfer.consensus.cdv import RunningMoments as RunningMoments
from p2pinfer.consensus.cdv import jensen_shannon as jensen_shannon
from p2pinfer.consensus.claims import FingerprintClaim as FingerprintClaim
from p2pinfer.consensus.claims import VoteTally as VoteTally
from p2pinfer.consensus.claims import decode_claim as decode_claim
from p2pinfer.consensus.claims import decode_tally as decode_tally
from p2pinfer.consensus.claims import sign_claim as sign_claim
from p2pinfer.consensus.claims import sign_tally as sign_tally
from p2pinfer.consensus.codec import InlinedPeerKeys as InlinedPeerKeys
from p2pinfer.consensus.codec import PeerKeys as PeerKeys
from p2pinfer.consensus.errors import ConsensusError as ConsensusError
from p2pinfer.consensus.errors import DissentNotProven as DissentNotProven
from p2pinfer.consensus.errors import DistributionDrift as DistributionDrift
from p2pinfer.consensus.errors import Equivocation as Equivocation
from p2pinfer.consensus.errors import EvidenceContextMismatch as EvidenceContextMismatch
from p2pinfer.consensus.errors import EvidenceError as EvidenceError
from p2pinfer.consensus.errors import EvidenceNotMajority as EvidenceNotMajority
from p2pinfer.consensus.errors import FingerprintError as FingerprintError
from p2pinfer.consensus.errors import FingerprintMismatch as FingerprintMismatch
from p2pinfer.consensus.errors import MalformedVoteMessage as MalformedVoteMessage
from p2pinfer.consensus.errors import MixedClaims as MixedClaims
from p2pinfer.consensus.errors import NoMajorityError as NoMajorityError
from p2pinfer.consensus.errors import SignatureInvalid as SignatureInvalid
from p2pinfer.consensus.errors import UnknownPeer as UnknownPeer
from p2pinfer.consensus.evidence import FaultEvidence as FaultEvidence
from p2pinfer.consensus.evidence import build_fault_evidence as build_fault_evidence
from p2pinfer.consensus.evidence import decode_fault_evidence as decode_fault_evidence
from p2pinfer.consensus.evidence import verify_fault_evidence as verify_fault_evidence
from p2pinfer.consensus.fingerprint import EVIDENCE_MARGIN as EVIDENCE_MARGIN
from p2pinfer.consensus.fingerprint import EVIDENCE_TOLERANCE as EVIDENCE_TOLERANCE
from p2pinfer.consensus.fingerprint import PRECISION_CLASSES as PRECISION_CLASSES
from p2pinfer.consensus.fingerprint import TOLERANCE_BFLOAT16 as TOLERANCE_BFLOAT16
from p2pinfer.consensus.fingerprint import TOLERANCE_FLOAT32 as TOLERANCE_FLOAT32
from p2pinfer.consensus.fingerprint import Fingerprint as Fingerprint
from p2pinfer.consensus.fingerprint import FingerprintContext as FingerprintContext
from p2pinfer.consensus.fingerprint import check_tensor as check_tensor
from p2pinfer.consensus.fingerprint import distance as distance
from p2pinfer.consensus.fingerprint import fingerprint as fingerprint
from p2pinfer.consensus.fingerprint import match as match
from p2pinfer.consensus.fingerprint import pair_tolerance as pair_tolerance
from p2pinfer.consensus.fingerprint import precision_class as precision_class
from p2pinfer.consensus.fingerprint import stricter as stricter
from p2pinfer.consensus.fingerprint import tolerance_for as tolerance_for
from p2pinfer.consensus.reputation import ReputationBook as ReputationBook
from p2pinfer.consensus.reputation import ReputationParams as ReputationParams
from p2pinfer.consensus.vote import VoteOutcome as VoteOutcome
from p2pinfer.consensus.vote import tally as tally
