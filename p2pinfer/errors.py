"""Error types shared across p2pinfer.

Every failure a caller can act on has a named type. Libraries (`wire`, `trust`, `channel`,
`zk`, `consensus`, `models`) derive their own errors from `P2PInferError` so a node can catch
"anything p2pinfer raised on purpose" in one place and report it as one line.
"""

from __future__ import annotations


class P2PInferError(Exception):
    """Base class of every error p2pinfer raises on purpose."""


class ConfigError(P2PInferError):
    """A configuration file or value is wrong. The message names the file, key and problem."""


class WireError(P2PInferError):
    """A message, frame or tensor from the wire is malformed, oversized or of unknown version."""

    code = "bad-message"


class FrameTooLarge(WireError):
    """A frame announced a length above the receiver's limit (checked before allocating)."""

    code = "too-large"


class UnsupportedVersion(WireError):
    """A message carries a version this node does not speak."""

    code = "unsupported-version"


class RemoteError(P2PInferError):
    """The remote peer answered with a typed error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
