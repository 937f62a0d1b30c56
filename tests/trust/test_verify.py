"""verify_bundle across kinds, GPU claims on top of CPU claims, and the operator helpers."""

from __future__ import annotations

import json

import pytest
from nacl.signing import SigningKey

from p2pinfer.errors import ConfigError
from p2pinfer.trust import verify as verify_mod
from p2pinfer.trust.claims import TeeLevel
from p2pinfer.trust.errors import (
    AttestationError,
    BindingMismatch,
    EvidenceFormatError,
    PolicyViolation,
)
from p2pinfer.trust.evidence import EvidenceBundle, GpuEvidence
from p2pinfer.trust.policy import Policy
from p2pinfer.trust.simulated import SimulatedAttester
from p2pinfer.trust.verify import detect_kind, load_policy, parse_time, verify_bundle, verify_file
from tests.trust.conftest import NVIDIA_NONCE, SNP_NOW, SNP_REPORT_DATA, TDX_NOW

RELAXED = Policy.preset("relaxed")


def _snp_bundle(snp, nv=None):
    gpus = (GpuEvidence(nv.evidence, nv.certs),) if nv else ()
    return EvidenceBundle(kind="amd-sev-snp", evidence=snp.report, certs=(snp.vcek,), gpus=gpus)


def test_snp_bundle_verifies_and_names_its_digest(snp):
    bundle = EvidenceBundle.decode(_snp_bundle(snp).encode())
    claims = verify_bundle(
        bundle, expected_report_data=SNP_REPORT_DATA, policy=RELAXED, now=SNP_NOW
    )
    assert claims.tee_level is TeeLevel.CPU_TEE
    assert claims.evidence_digest == bundle.digest().hex()


def test_snp_bundle_without_certs_takes_the_vcek_from_extra_certs(snp):
    bundle = EvidenceBundle(kind="amd-sev-snp", evidence=snp.report)
    claims = verify_bundle(
        bundle,
        expected_report_data=SNP_REPORT_DATA,
        policy=RELAXED,
        now=SNP_NOW,
        extra_certs=[snp.vcek],
    )
    assert claims.kind == "amd-sev-snp"


def test_tdx_bundle_uses_carried_or_supplied_collateral(tdx_vec):
    strict = Policy.preset("strict")
    carried = EvidenceBundle(
        kind="intel-tdx", evidence=tdx_vec.quote, collateral=tdx_vec.collateral
    )
    verify_bundle(carried, expected_report_data=None, policy=strict, now=TDX_NOW)
    bare = EvidenceBundle(kind="intel-tdx", evidence=tdx_vec.quote)
    verify_bundle(
        bare, expected_report_data=None, policy=strict, now=TDX_NOW, collateral=tdx_vec.collateral
    )


def test_gpu_evidence_not_bound_to_the_cpu_evidence_is_rejected(snp, nv):
    with pytest.raises(BindingMismatch) as err:
        verify_bundle(
            _snp_bundle(snp, nv), expected_report_data=SNP_REPORT_DATA, policy=RELAXED, now=SNP_NOW
        )
    assert err.value.check == "nonce"


def test_gpu_claim_raises_the_level_only_over_a_cpu_tee(snp, nv, monkeypatch):
    monkeypatch.setattr(verify_mod, "gpu_nonce", lambda rd: NVIDIA_NONCE)
    claims = verify_bundle(
        _snp_bundle(snp, nv), expected_report_data=SNP_REPORT_DATA, policy=RELAXED, now=SNP_NOW
    )
    assert claims.tee_level is TeeLevel.GPU_TEE and len(claims.gpus) == 1

    key = SigningKey(bytes(32))
    sim = SimulatedAttester(key, code_digest_=bytes(32)).attest(bytes(64))
    with_gpu = EvidenceBundle(
        kind="simulated", evidence=sim.evidence, gpus=(GpuEvidence(nv.evidence, nv.certs),)
    )
    claims = verify_bundle(
        with_gpu, expected_report_data=bytes(64), policy=Policy.preset("testnet"), now=SNP_NOW
    )
    assert claims.tee_level is TeeLevel.SIMULATED and len(claims.gpus) == 1


def test_policy_requiring_rims_refuses_gpu_evidence_without_them(snp, nv, monkeypatch):
    monkeypatch.setattr(verify_mod, "gpu_nonce", lambda rd: NVIDIA_NONCE)
    policy = Policy.from_dict({"preset": "relaxed", "require_gpu_rims": True})
    with pytest.raises(PolicyViolation) as err:
        verify_bundle(
            _snp_bundle(snp, nv), expected_report_data=SNP_REPORT_DATA, policy=policy, now=SNP_NOW
        )
    assert err.value.check == "gpu-rim"


def test_gpu_evidence_alone_gives_no_tee_level(nv):
    bundle = EvidenceBundle(kind="nvidia-cc", evidence=nv.evidence, certs=nv.certs)
    claims = verify_bundle(
        bundle,
        expected_report_data=None,
        policy=RELAXED,
        now=SNP_NOW,
        gpu_nonce_override=NVIDIA_NONCE,
    )
    assert claims.tee_level is TeeLevel.NONE and claims.gpus[0].driver_version == "550.90.07"


def test_verify_file_snp_with_vcek_and_relaxed_policy(snp, shared_dir):
    d = shared_dir / "testvectors" / "amd-sev-snp"
    out = verify_file(
        d / "attestation.bin",
        certs=[d / "vcek.testcer"],
        policy="relaxed",
        now="2024-01-01T00:00:00Z",
    )
    assert out["kind"] == "amd-sev-snp" and out["debug"] is True and out["binding_checked"] is False
    assert json.loads(json.dumps(out)) == out


def test_verify_file_snp_strict_rejects_debug(shared_dir):
    d = shared_dir / "testvectors" / "amd-sev-snp"
    with pytest.raises(PolicyViolation) as err:
        verify_file(
            d / "attestation.bin", kind="amd-sev-snp", certs=[d / "vcek.testcer"], now="2024-01-01"
        )
    assert err.value.check == "debug"


def test_verify_file_checks_binding_when_given(shared_dir):
    d = shared_dir / "testvectors" / "amd-sev-snp"
    with pytest.raises(BindingMismatch):
        verify_file(
            d / "attestation.bin",
            certs=[d / "vcek.testcer"],
            policy="relaxed",
            now="2024-01-01",
            report_data=bytes(64),
        )


def test_verify_file_snp_requires_a_vcek(shared_dir):
    d = shared_dir / "testvectors" / "amd-sev-snp"
    with pytest.raises(AttestationError) as err:
        verify_file(d / "attestation.bin", policy="relaxed", now="2024-01-01")
    assert err.value.check == "cert-chain"


def test_verify_file_tdx_with_collateral(shared_dir):
    d = shared_dir / "testvectors" / "intel-tdx"
    out = verify_file(
        d / "dcap-qvl-tdx_quote", collateral=d / "dcap-qvl-tdx_quote_collateral.json", now=TDX_NOW
    )
    assert out["kind"] == "intel-tdx" and out["tcb"]["status"] == "UpToDate"


def test_verify_file_nvidia_hex_evidence_and_nonce(shared_dir):
    d = shared_dir / "testvectors" / "nvidia-cc"
    out = verify_file(
        d / "hopperAttestationReport.txt",
        certs=[d / "hopperCertChain.txt"],
        now="2025-06-01",
        report_data=NVIDIA_NONCE,
    )
    assert out["kind"] == "nvidia-cc" and out["tee_level"] == "none" and out["binding_checked"]


def test_verify_file_reads_an_encoded_bundle(tmp_path):
    key = SigningKey(bytes(32))
    path = tmp_path / "bundle.bin"
    path.write_bytes(SimulatedAttester(key, code_digest_=bytes(32)).attest(bytes(64)).encode())
    assert verify_file(path, policy="testnet", now=0)["simulated"] is True
    with pytest.raises(PolicyViolation):
        verify_file(path, now=0)
    with pytest.raises(EvidenceFormatError):
        verify_file(path, kind="intel-tdx", now=0)


def test_verify_file_with_policy_file(tmp_path):
    key = SigningKey(bytes(32))
    ev = tmp_path / "ev.bin"
    ev.write_bytes(SimulatedAttester(key, code_digest_=bytes(32)).attest(bytes(64)).evidence)
    pol = tmp_path / "policy.toml"
    pol.write_text('[attestation]\npreset = "testnet"\n')
    assert verify_file(ev, policy=str(pol), now=0)["kind"] == "simulated"


def test_verify_file_bad_inputs_are_typed(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x07" * 100)
    with pytest.raises(EvidenceFormatError):
        verify_file(garbage, now=0)
    with pytest.raises(ConfigError):
        verify_file(tmp_path / "missing.bin", now=0)
    with pytest.raises(ConfigError):
        verify_file(garbage, kind="sgx", now=0)
    with pytest.raises(ConfigError):
        verify_file(garbage, policy="nonexistent-preset", now=0)
    with pytest.raises(ConfigError):
        verify_file(garbage, now="yesterday")
    huge = tmp_path / "huge.bin"
    huge.write_bytes(bytes((1 << 20) + 1))
    with pytest.raises(EvidenceFormatError):
        verify_file(huge, now=0)


def test_detect_kind_recognises_each_format(snp, tdx_vec, nv):
    assert detect_kind(snp.report) == "amd-sev-snp"
    assert detect_kind(tdx_vec.quote) == "intel-tdx"
    assert detect_kind(nv.evidence) == "nvidia-cc"
    with pytest.raises(EvidenceFormatError):
        detect_kind(b"hello")


def test_parse_time_and_load_policy():
    assert parse_time("1700000000") == 1700000000
    assert parse_time("2024-01-01T00:00:00Z") == 1704067200
    assert parse_time("2024-01-01") == 1704067200
    assert isinstance(parse_time(None), int)
    assert load_policy("relaxed").allow_debug
    p = Policy.preset("strict")
    assert load_policy(p) is p
