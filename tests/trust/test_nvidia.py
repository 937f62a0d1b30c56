"""NVIDIA H100 CC: the recorded SPDM evidence verifies to the pinned device root; tampering,
wrong nonces, broken chains and mismatching RIMs are refused by name."""

from __future__ import annotations

import datetime as dt

import pytest

from p2pinfer.trust import _x509, nvidia
from p2pinfer.trust.errors import (
    AttestationError,
    BindingMismatch,
    CertificateChainError,
    EvidenceFormatError,
    SignatureInvalid,
    TeeUnavailable,
    ValidityError,
)
from tests.trust.conftest import NVIDIA_NONCE, NVIDIA_NOW, flip

REQ = 37  # GET_MEASUREMENTS request length (SPDM 1.1 with nonce and slot)


def _verify(evidence, certs, *, nonce=NVIDIA_NONCE, now=NVIDIA_NOW, rims=None):
    return nvidia.verify_gpu(evidence, certs, expected_nonce=nonce, now=now, rims=rims)


def _rim(version: str, values: dict[int, str], extra: str = "") -> bytes:
    resources = "".join(
        f'<ns0:Resource type="Measurement" index="{i}" active="True" alternatives="1" ns2:Hash0="{h}" '
        f'name="Measurement_{i}" size="48"/>'
        for i, h in values.items()
    )
    return (
        f'{extra}<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
        'xmlns:ns0="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
        'xmlns:ns2="http://www.w3.org/2001/04/xmlenc#sha384" name="GH100" tagId="t" version="1.0">'
        f'<ns0:Meta colloquialVersion="{version}" product="GH100"/>'
        f"<ns0:Payload>{resources}</ns0:Payload></SoftwareIdentity>"
    ).encode()


def test_recorded_evidence_verifies_to_the_pinned_root(nv):
    claim = _verify(nv.evidence, nv.certs)
    assert claim.driver_version == "550.90.07"
    assert claim.vbios_version == "96.00.9F.00.01"
    assert claim.device_cert_subject.startswith("CN=GH100 A01 GSP FMC LF")
    assert claim.rim_checked is False


def test_chain_without_the_root_is_completed_from_the_pin(nv):
    _verify(nv.evidence, nv.certs[:-1])


def test_evidence_parses_64_measurement_blocks(nv):
    ev = nvidia.SpdmMeasurements.parse(nv.evidence)
    assert sorted(ev.measurements) == list(range(1, 65))
    assert all(len(v) == 48 for v in ev.measurements.values())
    assert ev.requester_nonce == NVIDIA_NONCE


def test_wrong_nonce_is_rejected(nv):
    with pytest.raises(BindingMismatch) as err:
        _verify(nv.evidence, nv.certs, nonce=bytes(32))
    assert err.value.check == "nonce"


@pytest.mark.parametrize(
    ("region", "offset", "error", "check"),
    [
        ("request: version", 0, EvidenceFormatError, "format"),
        ("request: code", 1, EvidenceFormatError, "format"),
        ("request: operation", 3, SignatureInvalid, "signature"),
        ("request: nonce", 4, SignatureInvalid, "signature"),
        ("request: slot", 36, SignatureInvalid, "signature"),
        ("response: code", REQ + 1, EvidenceFormatError, "format"),
        ("response: param2", REQ + 3, SignatureInvalid, "signature"),
        ("response: block count", REQ + 4, EvidenceFormatError, "format"),
        ("response: record length", REQ + 5, EvidenceFormatError, "format"),
        ("response: measurement value", REQ + 8 + 7, SignatureInvalid, "signature"),
        ("response: last measurement", REQ + 8 + 3519, SignatureInvalid, "signature"),
        ("response: responder nonce", REQ + 8 + 3520, SignatureInvalid, "signature"),
        ("response: opaque data", -100, SignatureInvalid, "signature"),
        ("signature: r", -96, SignatureInvalid, "signature"),
        ("signature: s", -1, SignatureInvalid, "signature"),
    ],
)
def test_flipped_byte_is_rejected_by_the_right_check(nv, region, offset, error, check):
    with pytest.raises(error) as err:
        _verify(flip(nv.evidence, offset % len(nv.evidence)), nv.certs)
    assert err.value.check == check, region


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_tampered_device_certificate_is_rejected(nv, index):
    certs = list(nv.certs)
    certs[index] = flip(certs[index], len(certs[index]) - 8)
    with pytest.raises(AttestationError) as err:
        _verify(nv.evidence, certs)
    assert err.value.check in ("certificate", "cert-chain")


def test_chain_missing_an_intermediate_is_rejected(nv):
    with pytest.raises(CertificateChainError):
        _verify(nv.evidence, nv.certs[:1] + nv.certs[2:])


def test_missing_chain_is_rejected(nv):
    with pytest.raises(CertificateChainError):
        _verify(nv.evidence, [])


def test_evidence_signed_by_another_device_key_is_rejected(nv):
    # The ICA certificate as the "leaf": its key did not sign the measurements.
    with pytest.raises(AttestationError):
        _verify(nv.evidence, nv.certs[2:])


def test_garbage_certificates_are_a_typed_error(nv):
    with pytest.raises(EvidenceFormatError) as err:
        _verify(nv.evidence, [b"\x30\x03\x02\x01\x00"])
    assert err.value.check == "certificate"


def test_device_chain_not_yet_valid_is_rejected(nv):
    with pytest.raises(ValidityError):
        _verify(nv.evidence, nv.certs, now=dt.datetime(2019, 1, 1, tzinfo=dt.UTC))


@pytest.mark.parametrize("cut", [0, 3, REQ - 1, REQ + 7, REQ + 100, -97, -1])
def test_truncated_evidence_is_a_format_error(nv, cut):
    with pytest.raises(EvidenceFormatError):
        _verify(nv.evidence[:cut], nv.certs)


def test_oversized_and_garbage_evidence_are_format_errors(nv):
    with pytest.raises(EvidenceFormatError):
        _verify(nv.evidence + bytes(1), nv.certs)
    with pytest.raises(EvidenceFormatError):
        _verify(nv.evidence * 20, nv.certs)
    with pytest.raises(EvidenceFormatError):
        _verify(bytes(range(256)) * 4, nv.certs)


def test_recorded_test_rims_do_not_match_this_gpu(nv):
    with pytest.raises(AttestationError) as err:
        _verify(nv.evidence, nv.certs, rims=[nv.driver_rim])
    assert err.value.check == "rim-version"


def test_recorded_rims_parse(nv):
    driver = nvidia.parse_rim(nv.driver_rim)
    vbios = nvidia.parse_rim(nv.vbios_rim)
    assert driver.version == "545.00" and 7 in driver.values
    assert vbios.version == "96.00.5E.00.01" and len(vbios.values[12]) == 4


def test_matching_rims_are_checked_and_accepted(nv):
    ev = nvidia.SpdmMeasurements.parse(nv.evidence)
    driver = _rim("550.90.07", {i - 1: ev.measurements[i].hex() for i in (8, 22, 30)})
    vbios = _rim("96.00.9F.00.01", {i - 1: ev.measurements[i].hex() for i in (1, 2, 5)})
    assert _verify(nv.evidence, nv.certs, rims=[driver, vbios]).rim_checked is True


def test_rim_measurement_mismatch_is_rejected(nv):
    ev = nvidia.SpdmMeasurements.parse(nv.evidence)
    rim = _rim("550.90.07", {0: ev.measurements[1].hex(), 5: "00" * 48})
    with pytest.raises(AttestationError) as err:
        _verify(nv.evidence, nv.certs, rims=[rim])
    assert err.value.check == "rim-measurement"


@pytest.mark.parametrize(
    "doc",
    [
        _rim("550.90.07", {}, extra='<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'),
        _rim("550.90.07", {}, extra='<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'),
        b"<SoftwareIdentity><unclosed>",
        b"<other/>",
        b"\xff\xfe garbage",
        b"<x>" + b"a" * (2 << 20) + b"</x>",
    ],
)
def test_unsafe_or_malformed_rims_are_refused(nv, doc):
    with pytest.raises(EvidenceFormatError) as err:
        _verify(nv.evidence, nv.certs, rims=[doc])
    assert err.value.check == "rim"


def test_collection_without_nvml_is_a_typed_error():
    try:
        import pynvml  # noqa: F401
    except ImportError:
        with pytest.raises(TeeUnavailable, match="nvidia-cc"):
            nvidia.NvmlGpuEvidenceSource().collect(bytes(32))
    else:
        pytest.skip("NVML bindings are installed here; the absent-library path cannot be shown")


def test_pinned_root_matches_the_recorded_root(shared_dir):
    root = _x509.load_certs(
        [(shared_dir / "testvectors/nvidia-cc/verifier_device_root.pem").read_bytes()]
    )[0]
    assert _x509.fingerprint(root) == nvidia.NVIDIA_DEVICE_ROOT_SHA256


class _FakeNvml:
    """The slice of `pynvml` the collector uses, answering with the recorded evidence."""

    class NVMLError(Exception):
        pass

    def __init__(self, evidence: bytes, chain_pem: bytes, cc: int = 1, devtools: int = 0) -> None:
        self._evidence, self._pem, self._cc, self._devtools = evidence, chain_pem, cc, devtools
        self.nonces: list[bytes] = []
        self.shut = False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlSystemGetConfComputeState(self):
        from types import SimpleNamespace

        return SimpleNamespace(environment=1, ccFeature=self._cc, devToolsMode=self._devtools)

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle, nonce):
        from types import SimpleNamespace

        self.nonces.append(bytes(nonce))
        padded = list(self._evidence) + [0] * 64
        return SimpleNamespace(attestationReport=padded, attestationReportSize=len(self._evidence))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle):
        from types import SimpleNamespace

        padded = list(self._pem) + [0] * 16
        return SimpleNamespace(attestationCertChain=padded, attestationCertChainSize=len(self._pem))


def _chain_pem(nv) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return b"".join(_x509.load_certs([c])[0].public_bytes(Encoding.PEM) for c in nv.certs)


def test_collector_reads_evidence_and_chain_through_nvml(nv, monkeypatch):
    import sys

    fake = _FakeNvml(nv.evidence, _chain_pem(nv))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    (gpu,) = nvidia.NvmlGpuEvidenceSource().collect(NVIDIA_NONCE)
    assert fake.nonces == [NVIDIA_NONCE] and fake.shut
    assert gpu.evidence == nv.evidence and gpu.certs == nv.certs
    assert _verify(gpu.evidence, gpu.certs).driver_version == "550.90.07"


@pytest.mark.parametrize(("cc", "devtools", "match"), [(0, 0, "not enabled"), (1, 1, "devtools")])
def test_collector_refuses_gpus_outside_cc_mode(nv, monkeypatch, cc, devtools, match):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(nv.evidence, _chain_pem(nv), cc, devtools))
    with pytest.raises(TeeUnavailable, match=match):
        nvidia.NvmlGpuEvidenceSource().collect(NVIDIA_NONCE)


def test_cc_attester_binds_gpu_evidence_to_the_cpu_report_data(nv, monkeypatch):
    import sys

    from nacl.signing import SigningKey

    from p2pinfer.trust.binding import gpu_nonce
    from p2pinfer.trust.simulated import SimulatedAttester

    fake = _FakeNvml(nv.evidence, _chain_pem(nv))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    cpu = SimulatedAttester(SigningKey(bytes(32)), code_digest_=bytes(32))
    bundle = nvidia.NvidiaCcAttester(cpu).attest(bytes([3]) * 64)
    assert fake.nonces == [gpu_nonce(bytes([3]) * 64)]
    assert bundle.kind == "simulated" and len(bundle.gpus) == 1
