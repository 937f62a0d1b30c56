"""Attested channels: X25519 -> HKDF-SHA256 -> AES-256-GCM sessions between two peers.

`handshake` is the sans-IO four-message handshake that binds each side's attested static
channel key into the session keys; `record` is the frame layer (counter nonces, associated data
for channel/task/stage, strict sequence order, rekey ratchet, drop-and-count); `session` drives
both over a framed stream under trio (`open_channel` / `accept_channel` -> `SecureChannel`).
What attestation means is `p2pinfer.trust`'s business, passed in as `AttestationHooks`.
Spec: protocols/channel.md.
"""

from .config import ChannelConfig as ChannelConfig
from .errors import ChannelClosed as ChannelClosed
from .errors import ChannelError as ChannelError
from .errors import ChannelFailed as ChannelFailed
from .errors import DecryptError as DecryptError
from .errors import HandshakeError as HandshakeError
from .errors import MalformedRecord as MalformedRecord
from .errors import RecordRejected as RecordRejected
from .errors import ReplayError as ReplayError
from .handshake import PROTOCOL_ID as PROTOCOL_ID
from .handshake import AttestationHooks as AttestationHooks
from .handshake import InitiatorHandshake as InitiatorHandshake
from .handshake import PeerAttestation as PeerAttestation
from .handshake import ResponderHandshake as ResponderHandshake
from .keys import ChannelIdentity as ChannelIdentity
from .keys import ChannelKeyPair as ChannelKeyPair
from .record import Record as Record
from .record import RecordKind as RecordKind
from .record import RecordLayer as RecordLayer
from .record import RecordStats as RecordStats
from .session import FramedStream as FramedStream
from .session import SecureChannel as SecureChannel
from .session import accept_channel as accept_channel
from .session import open_channel as open_channel
