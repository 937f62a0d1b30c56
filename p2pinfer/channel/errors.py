"""Errors of the attested channel: one type per failed check, all under `ChannelError`.

A handshake failure names the check that failed in `HandshakeError.check` (see
protocols/channel.md for the list). A rejected record frame raises a `RecordRejected` subclass
(`ReplayError`, `DecryptError`, `MalformedRecord`) and is counted in the channel's stats; the
channel itself keeps working until too many frames were rejected, then `ChannelFailed` is raised
and the keys are erased.
"""

from __future__ import annotations

from p2pinfer.errors import P2PInferError, WireError


class ChannelError(P2PInferError):
    """Base class of every error raised by `p2pinfer.channel`."""


class HandshakeError(ChannelError):
    """The handshake failed; `check` names the failed check (e.g. "evidence", "confirmation").

    `evidence_check` carries the attestation verifier's own check name when the failure came
    from evidence verification (e.g. "binding", "signature"), else None.
    """

    def __init__(self, check: str, detail: str, *, evidence_check: str | None = None) -> None:
        super().__init__(f"channel handshake failed ({check}): {detail}")
        self.check = check
        self.detail = detail
        self.evidence_check = evidence_check


class ChannelClosed(ChannelError):
    """The channel is closed (locally, by an authenticated close from the peer, or by failure)."""


class ChannelFailed(ChannelClosed):
    """Too many frames were rejected; the channel closed itself and erased its keys."""


class RecordRejected(ChannelError):
    """A received frame was dropped and counted; the channel is still usable."""


class ReplayError(RecordRejected):
    """A frame's sequence number is not above the last accepted one (replayed or reordered)."""


class DecryptError(RecordRejected):
    """A frame failed authentication (tampered ciphertext, header, or wrong key)."""


class MalformedRecord(RecordRejected, WireError):
    """A frame is too short, too long, or has a bad version, kind or header field."""
