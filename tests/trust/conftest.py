"""Fixtures for trust tests: recorded vendor evidence from ../shared/testvectors (skipped when
absent) with the frozen verification times their certificates and collateral need."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest

from p2pinfer.trust import _x509

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
VECTORS = SHARED / "testvectors"

# Inside every validity window of the Milan VCEK (2022-09-24 .. 2029-09-24) and its ASK/ARK.
SNP_NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
# The dcap-qvl sample's TCB info and QE identity are issued 2025-06-19 ~10:30Z, valid a month.
TDX_NOW = 1750400000
NVIDIA_NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
NVIDIA_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
SNP_REPORT_DATA = bytes([1, 2, 3, 4, 5]) + bytes(59)


def _vectors(sub: str) -> Path:
    path = VECTORS / sub
    if not path.is_dir():
        pytest.skip(f"{path} is not present (shared test vectors live beside the repository)")
    return path


@dataclass(frozen=True)
class SnpVector:
    report: bytes
    vcek: bytes
    ask_ark: dict[str, bytes]


@dataclass(frozen=True)
class TdxVector:
    quote: bytes
    collateral: bytes
    go_quote: bytes


@dataclass(frozen=True)
class NvidiaVector:
    evidence: bytes
    certs: tuple[bytes, ...]
    driver_rim: bytes
    vbios_rim: bytes


@pytest.fixture(scope="session")
def snp() -> SnpVector:
    d = _vectors("amd-sev-snp")
    return SnpVector(
        report=(d / "attestation.bin").read_bytes(),
        vcek=(d / "vcek.testcer").read_bytes(),
        ask_ark={
            p: (d / f"ask_ark_{f}.pem").read_bytes()
            for p, f in (("Milan", "milan"), ("Genoa", "genoa"), ("Turin", "turin_vcek"))
        },
    )


@pytest.fixture(scope="session")
def tdx_vec() -> TdxVector:
    d = _vectors("intel-tdx")
    return TdxVector(
        quote=(d / "dcap-qvl-tdx_quote").read_bytes(),
        collateral=(d / "dcap-qvl-tdx_quote_collateral.json").read_bytes(),
        go_quote=(d / "tdx_prod_quote_SPR_E4.dat").read_bytes(),
    )


@pytest.fixture(scope="session")
def nv() -> NvidiaVector:
    d = _vectors("nvidia-cc")
    chain = _x509.load_certs([(d / "hopperCertChain.txt").read_bytes()])
    return NvidiaVector(
        evidence=bytes.fromhex((d / "hopperAttestationReport.txt").read_text().strip()),
        certs=tuple(_x509.der(c) for c in chain),
        driver_rim=(d / "driver_rim_test_no_gpu.swidtag").read_bytes(),
        vbios_rim=(d / "vbios_rim_test_no_gpu.swidtag").read_bytes(),
    )


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)
