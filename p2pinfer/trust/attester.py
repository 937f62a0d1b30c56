"""The attester interface: something that turns 64 bytes of report data into evidence."""

from __future__ import annotations

import abc
from typing import Any

from p2pinfer.trust.evidence import EvidenceBundle


class Attester(abc.ABC):
    """Produces evidence of this machine bound to `report_data` (see `binding.report_data`)."""

    kind: str

    @abc.abstractmethod
    def attest(self, report_data: bytes) -> EvidenceBundle:
        """Evidence over `report_data` (64 bytes). Raises `TeeUnavailable` without hardware."""

    def describe(self) -> dict[str, Any]:
        """What this attester is, JSON-able, for `p2pinfer attest show`."""
        return {"kind": self.kind}


def check_report_data(report_data: bytes) -> bytes:
    if not isinstance(report_data, (bytes, bytearray)) or len(report_data) != 64:
        raise ValueError("report data must be exactly 64 bytes")
    return bytes(report_data)
