"""Limits and rekey bounds of a channel. Both ends should use the same rekey bounds only for
tidiness: the sender decides when to rekey and the receiver follows the epoch in the header."""

from __future__ import annotations

from dataclasses import dataclass

from p2pinfer.errors import ConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class ChannelConfig:
    rekey_after_messages: int = 1 << 20  # frames sealed under one key before the ratchet
    rekey_after_bytes: int = 1 << 34  # plaintext bytes sealed under one key before the ratchet
    max_payload: int = 128 * MIB  # largest plaintext of one frame (checked before allocating)
    max_failures: int = 32  # rejected frames after which the channel closes itself
    max_epoch_skip: int = 8  # how many ratchet steps a receiver may take to catch up
    max_evidence: int = 1 * MIB  # largest attestation evidence accepted in the handshake
    handshake_timeout: float = 30.0  # seconds, used by the async driver
    # frames at least this large are sealed/opened in a worker thread (AES-GCM releases the
    # GIL), so a 64 MiB activation does not stall the event loop; 0 never offloads
    offload_bytes: int = 1 * MIB

    def __post_init__(self) -> None:
        for name in (
            "rekey_after_messages",
            "rekey_after_bytes",
            "max_payload",
            "max_failures",
            "max_evidence",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"channel.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_epoch_skip, int) or not 0 <= self.max_epoch_skip <= 64:
            raise ConfigError("channel.max_epoch_skip must be an integer in [0, 64]")
        if not isinstance(self.offload_bytes, int) or self.offload_bytes < 0:
            raise ConfigError("channel.offload_bytes must be a non-negative integer")
        if not self.handshake_timeout > 0:
            raise ConfigError("channel.handshake_timeout must be a positive number of seconds")
