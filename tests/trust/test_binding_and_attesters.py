"""The channel binding, the attesters on a machine without a TEE, and the channel hooks."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2pinfer.trust import configfs_tsm, sev_snp
from p2pinfer.trust.binding import TAG, check_binding, gpu_nonce, report_data
from p2pinfer.trust.errors import BindingMismatch, PolicyViolation, SignatureInvalid, TeeUnavailable
from p2pinfer.trust.hooks import ChannelAttestation, ed25519_key_from_peer_id
from p2pinfer.trust.policy import Policy
from p2pinfer.trust.simulated import SimulatedAttester
from p2pinfer.trust.tdx import TdxAttester
from p2pinfer.trust.verify import describe_local, detect_attester


def test_report_data_is_sha512_of_tag_and_length_prefixed_fields():
    net, peer, key, nonce = "net", b"peer", bytes(range(32)), bytes([9]) * 32
    expected = hashlib.sha512(
        TAG + b"".join(len(f).to_bytes(4, "big") + f for f in (net.encode(), peer, key, nonce))
    ).digest()
    assert report_data(net, peer, key, nonce) == expected and len(expected) == 64


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet="abcdef", min_size=2, max_size=20), st.data())
def test_moving_bytes_between_fields_changes_the_binding(text, data):
    cut = data.draw(st.integers(1, len(text) - 1))
    other = data.draw(st.integers(1, len(text) - 1).filter(lambda c: c != cut))
    key, nonce = bytes(32), bytes(32)
    one = report_data(text[:cut], text[cut:].encode(), key, nonce)
    two = report_data(text[:other], text[other:].encode(), key, nonce)
    assert one != two


def test_each_field_changes_the_binding():
    base = ("n", b"p", bytes(32), bytes(32))
    variants = [
        ("m", b"p", bytes(32), bytes(32)),
        ("n", b"q", bytes(32), bytes(32)),
        ("n", b"p", bytes([1]) * 32, bytes(32)),
        ("n", b"p", bytes(32), bytes([1]) * 32),
    ]
    assert len({report_data(*base), *(report_data(*v) for v in variants)}) == 5


@pytest.mark.parametrize(
    "args",
    [
        ("", b"p", bytes(32), bytes(32)),
        ("n", b"", bytes(32), bytes(32)),
        ("n", b"p", bytes(31), bytes(32)),
        ("n", b"p", bytes(32), bytes(16)),
        ("n" * 1025, b"p", bytes(32), bytes(32)),
    ],
)
def test_bad_binding_inputs_are_refused(args):
    with pytest.raises(ValueError):
        report_data(*args)


def test_gpu_nonce_is_32_bytes_and_depends_on_report_data():
    assert len(gpu_nonce(bytes(64))) == 32
    assert gpu_nonce(bytes(64)) != gpu_nonce(bytes([1]) * 64)


def test_check_binding_raises_typed_error():
    check_binding(b"a" * 64, b"a" * 64)
    with pytest.raises(BindingMismatch):
        check_binding(b"a" * 64, b"b" * 64)


def test_snp_attester_without_a_guest_device_is_a_typed_error(tmp_path):
    a = sev_snp.SevSnpAttester(tsm_root=tmp_path / "none", device=tmp_path / "sev-guest")
    with pytest.raises(TeeUnavailable, match="no SEV-SNP guest device"):
        a.attest(bytes(64))


def test_snp_attester_on_this_machine_is_unavailable():
    if sev_snp.SEV_GUEST_DEVICE.exists() or configfs_tsm.available():
        pytest.skip("this machine is an SEV-SNP or TSM guest")
    with pytest.raises(TeeUnavailable):
        sev_snp.SevSnpAttester().attest(bytes(64))


def test_tdx_attester_without_configfs_tsm_is_a_typed_error(tmp_path):
    with pytest.raises(TeeUnavailable):
        TdxAttester(tsm_root=tmp_path / "none").attest(bytes(64))


def _fake_tsm(monkeypatch, provider: str, outblob: bytes, auxblob: bytes = b""):
    """Stand in for configfs: mkdir makes the files the kernel would provide."""
    real_mkdir = os.mkdir
    seen = {}

    def mkdir(path, *args):
        real_mkdir(path, *args)
        for name, data in (
            ("provider", provider.encode() + b"\n"),
            ("generation", b"1\n"),
            ("outblob", outblob),
            ("auxblob", auxblob),
        ):
            with open(os.path.join(path, name), "wb") as f:
                f.write(data)
        seen["path"] = path

    monkeypatch.setattr(configfs_tsm.os, "mkdir", mkdir)
    monkeypatch.setattr(configfs_tsm.os, "rmdir", lambda p: None)
    return seen


def test_snp_attester_reads_report_and_certs_through_configfs_tsm(tmp_path, monkeypatch, snp):
    import struct

    aux = sev_snp._GUID_VCEK.bytes_le + struct.pack("<II", 48, len(snp.vcek)) + bytes(24) + snp.vcek
    seen = _fake_tsm(monkeypatch, "sev_guest", snp.report, aux)
    bundle = sev_snp.SevSnpAttester(tsm_root=tmp_path).attest(bytes(64))
    assert bundle.evidence == snp.report and bundle.certs == (snp.vcek,)
    with open(os.path.join(seen["path"], "inblob"), "rb") as f:
        assert f.read() == bytes(64)


def test_configfs_tsm_of_another_provider_is_refused(tmp_path, monkeypatch, tdx_vec):
    _fake_tsm(monkeypatch, "sev_guest", b"x")
    with pytest.raises(TeeUnavailable, match="provider"):
        TdxAttester(tsm_root=tmp_path).attest(bytes(64))
    _fake_tsm(monkeypatch, "tdx_guest", tdx_vec.quote)
    assert TdxAttester(tsm_root=tmp_path).attest(bytes(64)).evidence == tdx_vec.quote


def test_describe_local_reports_simulation_and_absence():
    key = SigningKey(bytes(32))
    shown = describe_local(SimulatedAttester(key, code_digest_=bytes(32)))
    assert shown["evidence"]["ok"] and shown["attester"]["warning"].startswith("SIMULATED")
    assert describe_local(None)["evidence"]["ok"] is False


def test_detect_attester_falls_back_to_simulation_only_with_a_key():
    if sev_snp.SEV_GUEST_DEVICE.exists() or os.path.exists("/dev/tdx_guest"):
        pytest.skip("this machine has a TEE guest device")
    assert detect_attester() is None
    assert detect_attester(simulated_key=SigningKey(bytes(32))).kind == "simulated"


def _peer_id(key: SigningKey) -> bytes:
    return bytes.fromhex("002408011220") + bytes(key.verify_key)


def test_peer_id_yields_its_ed25519_key():
    key = SigningKey(bytes(range(32)))
    assert ed25519_key_from_peer_id(_peer_id(key)) == bytes(key.verify_key)
    assert ed25519_key_from_peer_id(b"\x12\x20" + bytes(32)) is None


def test_channel_hooks_attest_and_verify_between_two_simulated_nodes():
    a_key, b_key = SigningKey(bytes([1]) * 32), SigningKey(bytes([2]) * 32)
    policy = Policy.preset("testnet")
    a = ChannelAttestation(
        SimulatedAttester(a_key, code_digest_=bytes(32)), policy, clock=lambda: 50
    )
    b = ChannelAttestation(
        SimulatedAttester(b_key, code_digest_=bytes(32)), policy, clock=lambda: 50
    )
    nonce = os.urandom(32)
    rd = a.report_data("net", _peer_id(a_key), bytes([5]) * 32, nonce)
    evidence = a.attest(rd)
    claims = b.verify(evidence, rd, _peer_id(a_key))
    assert claims.simulated and len(b.cache) == 1
    with pytest.raises(SignatureInvalid) as err:
        b.verify(evidence, rd, _peer_id(b_key))
    assert err.value.check == "signer"
    with pytest.raises(SignatureInvalid):
        b.verify(evidence, rd, b"\x12\x20" + bytes(32))
    with pytest.raises(BindingMismatch):
        b.verify(evidence, bytes(64), _peer_id(a_key))


def test_channel_hooks_under_strict_policy_refuse_simulation():
    key = SigningKey(bytes([1]) * 32)
    node = ChannelAttestation(
        SimulatedAttester(key, code_digest_=bytes(32)), Policy.preset("strict")
    )
    rd = node.report_data("net", _peer_id(key), bytes(32), bytes(32))
    with pytest.raises(PolicyViolation):
        node.verify(node.attest(rd), rd, _peer_id(key))


def test_channel_hooks_without_attester_cannot_attest():
    with pytest.raises(TeeUnavailable):
        ChannelAttestation(None, Policy.preset("strict")).attest(bytes(64))
