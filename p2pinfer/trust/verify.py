"""One entry point for verifying a bundle of any kind, plus the operator-facing helpers behind
`p2pinfer attest verify` and `p2pinfer attest show`."""

from __future__ import annotations

import datetime as dt
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from p2pinfer.errors import ConfigError
from p2pinfer.trust import _x509, nvidia, sev_snp, simulated, tdx
from p2pinfer.trust.attester import Attester
from p2pinfer.trust.binding import gpu_nonce
from p2pinfer.trust.claims import TeeLevel, VerifiedClaims
from p2pinfer.trust.errors import EvidenceFormatError, PolicyViolation, TeeUnavailable
from p2pinfer.trust.evidence import (
    KIND_NVIDIA,
    KIND_SEV_SNP,
    KIND_SIMULATED,
    KIND_TDX,
    KINDS,
    MAX_BUNDLE_BYTES,
    EvidenceBundle,
)
from p2pinfer.trust.policy import Policy


def verify_bundle(
    bundle: EvidenceBundle,
    *,
    expected_report_data: bytes | None,
    policy: Policy,
    now: _x509.Timestamp,
    peer_public_key: bytes | None = None,
    extra_certs: list[bytes] | tuple[bytes, ...] = (),
    collateral: bytes | None = None,
    gpu_rims: list[bytes] | None = None,
    gpu_nonce_override: bytes | None = None,
) -> VerifiedClaims:
    """Verify `bundle` and return its claims, or raise an `AttestationError` naming the check.

    `expected_report_data` is `binding.report_data(...)` for the channel being opened; pass
    None only for operator inspection. `peer_public_key` (32-byte Ed25519) pins who signed
    simulated evidence. `extra_certs`/`collateral` complete evidence that came without them
    (an SNP VCEK, TDX collateral). GPU evidence must answer `gpu_nonce(report data)`.
    """
    kind = bundle.kind
    if kind == KIND_SEV_SNP:
        claims = sev_snp.verify(
            bundle.evidence,
            list(bundle.certs) or list(extra_certs),
            expected_report_data=expected_report_data,
            policy=policy,
            now=now,
        )
    elif kind == KIND_TDX:
        claims = tdx.verify(
            bundle.evidence,
            bundle.collateral if bundle.collateral is not None else collateral,
            expected_report_data=expected_report_data,
            policy=policy,
            now=now,
        )
    elif kind == KIND_SIMULATED:
        claims = simulated.verify(
            bundle.evidence,
            expected_report_data=expected_report_data,
            policy=policy,
            now=now,
            expected_public_key=peer_public_key,
        )
    elif kind == KIND_NVIDIA:
        nonce = gpu_nonce_override
        if nonce is None and expected_report_data is not None:
            nonce = gpu_nonce(expected_report_data)
        gpu = nvidia.verify_gpu(
            bundle.evidence,
            list(bundle.certs) or list(extra_certs),
            expected_nonce=nonce,
            now=now,
            rims=gpu_rims,
        )
        _require_rims(policy, gpu_rims)
        ev = nvidia.SpdmMeasurements.parse(bundle.evidence)
        # A GPU alone proves nothing about the CPU side that holds the data: level NONE.
        claims = VerifiedClaims(
            kind=KIND_NVIDIA,
            tee_level=TeeLevel.NONE,
            measurement=gpu.measurements_digest,
            debug=False,
            simulated=False,
            expiry=_x509.as_posix(now) + policy.claims_ttl_s,
            evidence_digest="",
            gpus=(gpu,),
            report_data="",
            details={
                "nonce": ev.requester_nonce.hex(),
                "note": "GPU evidence without a CPU TEE claim",
            },
        )
    else:  # EvidenceBundle refuses unknown kinds; kept for completeness
        raise EvidenceFormatError(f"unknown evidence kind {kind!r}")
    if bundle.gpus:
        nonce = gpu_nonce(bytes.fromhex(claims.report_data))
        gpus = tuple(
            nvidia.verify_gpu(g.evidence, g.certs, expected_nonce=nonce, now=now, rims=gpu_rims)
            for g in bundle.gpus
        )
        _require_rims(policy, gpu_rims)
        level = TeeLevel.GPU_TEE if claims.tee_level == TeeLevel.CPU_TEE else claims.tee_level
        claims = replace(claims, gpus=claims.gpus + gpus, tee_level=level)
    return replace(claims, evidence_digest=bundle.digest().hex())


def _require_rims(policy: Policy, rims: list[bytes] | None) -> None:
    if policy.require_gpu_rims and not rims:
        raise PolicyViolation(
            "policy requires GPU reference manifests (RIMs) and none were given", check="gpu-rim"
        )


# -- operator helpers ---------------------------------------------------------------------------


def detect_kind(data: bytes) -> str:
    """Guess the evidence kind of raw bytes (not a bundle)."""
    if data.startswith(simulated.MAGIC):
        return KIND_SIMULATED
    if len(data) == sev_snp.REPORT_SIZE:
        return KIND_SEV_SNP
    if len(data) >= 8:
        version, _key, tee_type = struct.unpack_from("<HHI", data, 0)
        if version in (4, 5) and tee_type == tdx.TEE_TYPE_TDX:
            return KIND_TDX
    if len(data) >= 2 and data[0] in (0x11, 0x12) and data[1] == nvidia.SPDM_GET_MEASUREMENTS:
        return KIND_NVIDIA
    raise EvidenceFormatError("cannot tell the evidence kind; pass --type")


def _maybe_hex(data: bytes) -> bytes:
    text = data.strip()
    if text and len(text) % 2 == 0 and all(c in b"0123456789abcdefABCDEF" for c in text[:4096]):
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return data
    return data


def load_policy(policy: str | Path | Policy) -> Policy:
    """A preset name, a TOML file (its [attestation] table if present) or a Policy."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str) and policy in ("strict", "relaxed", "testnet"):
        return Policy.preset(policy)
    path = Path(policy)
    if not path.is_file():
        raise ConfigError(f"attestation policy {str(policy)!r} is neither a preset nor a file")
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"attestation policy {path}: {exc}") from None
    return Policy.from_dict(data.get("attestation", data))


def parse_time(now: str | float | dt.datetime | None) -> int:
    """None (current time), POSIX seconds, or ISO 8601 text -> POSIX seconds."""
    if now is None:
        return int(time.time())
    if isinstance(now, (int, float, dt.datetime)) and not isinstance(now, bool):
        return _x509.as_posix(now)
    text = str(now).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--now {text!r} is neither POSIX seconds nor ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


def _read_limited(path: str | Path, what: str) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise EvidenceFormatError(f"{what} {p} is larger than {MAX_BUNDLE_BYTES} bytes")
        return p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror}") from None


def verify_file(
    path: str | Path,
    kind: str | None = None,
    certs: list[str | Path] | tuple[str | Path, ...] = (),
    collateral: str | Path | None = None,
    policy: str | Path | Policy = "strict",
    now: str | float | dt.datetime | None = None,
    report_data: bytes | None = None,
    rims: list[str | Path] | tuple[str | Path, ...] = (),
) -> dict[str, Any]:
    """`p2pinfer attest verify`: verify evidence from a file; return claims as a JSON-able dict.

    The file holds an encoded EvidenceBundle or raw evidence (an SNP report, a TDX quote,
    simulated evidence, or SPDM GPU evidence in binary or hex). `certs` are PEM/DER files: for
    SNP the VCEK (the pinned ASK/ARK of its product are used when not given); for NVIDIA the
    device chain. `collateral` is dcap-qvl JSON for TDX. Without `report_data` the binding is
    not checked and the claims show the report data for the caller to compare. Raises the
    typed `AttestationError` (or `ConfigError` for unreadable inputs).
    """
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"unknown evidence type {kind!r} ({', '.join(KINDS)})")
    pol = load_policy(policy)
    when = parse_time(now)
    data = _read_limited(path, "evidence file")
    cert_blobs = [_read_limited(c, "certificate file") for c in certs]
    col = _read_limited(collateral, "collateral file") if collateral is not None else None
    rim_blobs = [_read_limited(r, "RIM file") for r in rims]
    bundle: EvidenceBundle | None = None
    try:
        bundle = EvidenceBundle.decode(data)
    except EvidenceFormatError:
        bundle = None
    if bundle is None:
        raw = data
        guess_from = _maybe_hex(raw) if kind in (None, KIND_NVIDIA) else raw
        detected = kind or detect_kind(guess_from)
        if detected == KIND_NVIDIA:
            raw = _maybe_hex(raw)
        bundle = EvidenceBundle(kind=detected, evidence=raw)
    elif kind is not None and bundle.kind != kind:
        raise EvidenceFormatError(f"file holds {bundle.kind} evidence, not {kind}")
    extra: list[bytes] = []
    for blob in cert_blobs:
        extra.extend(_x509.der(c) for c in _x509.load_certs([blob], "certificate file"))
    gpu_nonce_override = None
    if bundle.kind == KIND_NVIDIA and report_data is not None and len(report_data) == 32:
        gpu_nonce_override, report_data = report_data, None
    claims = verify_bundle(
        bundle,
        expected_report_data=report_data,
        policy=pol,
        now=when,
        extra_certs=extra,
        collateral=col,
        gpu_rims=rim_blobs or None,
        gpu_nonce_override=gpu_nonce_override,
    )
    out = claims.to_dict()
    out["binding_checked"] = report_data is not None or gpu_nonce_override is not None
    return out


def detect_attester(
    *,
    simulated_key: Any = None,
    model_digest: bytes = bytes(32),
    snp_vcek_path: Path | None = None,
    tdx_collateral_path: Path | None = None,
    gpu: bool = False,
) -> Attester | None:
    """The attester this machine supports: SEV-SNP, then TDX, then simulated (only when a
    key is given). `gpu=True` adds NVIDIA GPU evidence on top of a CPU TEE. None if nothing."""
    attester: Attester | None = None
    if sev_snp.SEV_GUEST_DEVICE.exists():
        attester = sev_snp.SevSnpAttester(vcek_path=snp_vcek_path)
    elif Path("/dev/tdx_guest").exists():
        attester = tdx.TdxAttester(collateral_path=tdx_collateral_path)
    if attester is not None and gpu:
        return nvidia.NvidiaCcAttester(attester)
    if attester is None and simulated_key is not None:
        attester = simulated.SimulatedAttester(simulated_key, model_digest=model_digest)
    return attester


def describe_local(attester: Attester | None, *, try_attest: bool = True) -> dict[str, Any]:
    """`p2pinfer attest show`: what this machine offers and whether evidence can be made now."""
    from p2pinfer.trust import configfs_tsm

    out: dict[str, Any] = {
        "configfs_tsm": configfs_tsm.available(),
        "sev_guest_device": sev_snp.SEV_GUEST_DEVICE.exists(),
        "tdx_guest_device": Path("/dev/tdx_guest").exists(),
        "attester": attester.describe() if attester is not None else None,
    }
    if attester is None:
        out["evidence"] = {
            "ok": False,
            "error": "no attester: no TEE found and simulation not enabled",
        }
        return out
    if try_attest:
        try:
            bundle = attester.attest(bytes(64))
            out["evidence"] = {
                "ok": True,
                "kind": bundle.kind,
                "bytes": len(bundle.evidence),
                "certs": len(bundle.certs),
                "gpus": len(bundle.gpus),
                "digest": bundle.digest().hex(),
            }
        except TeeUnavailable as exc:
            out["evidence"] = {"ok": False, "error": str(exc)}
    return out
