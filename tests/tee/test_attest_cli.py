"""`p2pinfer attest verify` on recorded hardware evidence and `p2pinfer attest show`."""

from __future__ import annotations

import json

import pytest

from p2pinfer.cli import main
from p2pinfer.identity import NodeIdentity
from p2pinfer.trust import SimulatedAttester, report_data

SNP_NOW = "2024-01-01T00:00:00+00:00"
TDX_NOW = "1750400000"


def run(capsys, *argv):
    code = main(["attest", *argv])
    out = capsys.readouterr()
    return code, json.loads(out.out) if out.out.strip() else None, out.err


def test_snp_report_verifies_under_relaxed_with_claims(shared_dir, capsys):
    snp = shared_dir / "testvectors" / "amd-sev-snp"
    code, out, _ = run(capsys, "verify", str(snp / "attestation.bin"), "--type", "amd-sev-snp",
                       "--certs", str(snp / "vcek.testcer"), "--policy", "relaxed",
                       "--now", SNP_NOW)
    assert code == 0 and out["verified"] and out["tee_level"] == "cpu-tee" and out["debug"]
    assert out["report_data"].startswith("0102030405")


def test_snp_debug_report_fails_strict_naming_the_check(shared_dir, capsys):
    snp = shared_dir / "testvectors" / "amd-sev-snp"
    code, out, err = run(capsys, "verify", str(snp / "attestation.bin"),
                         "--certs", str(snp / "vcek.testcer"), "--now", SNP_NOW)
    assert code == 1 and out == {"verified": False, "check": "debug", "message": out["message"]}
    assert "check 'debug'" in err


def test_snp_report_after_the_vcek_expired_fails_validity(shared_dir, capsys):
    snp = shared_dir / "testvectors" / "amd-sev-snp"
    code, out, _ = run(capsys, "verify", str(snp / "attestation.bin"), "--certs",
                       str(snp / "vcek.testcer"), "--policy", "relaxed", "--now", "2040-01-01")
    assert code == 1 and out["check"] == "validity"


def test_tdx_quote_with_collateral_verifies(shared_dir, capsys):
    tdx = shared_dir / "testvectors" / "intel-tdx"
    code, out, _ = run(capsys, "verify", str(tdx / "dcap-qvl-tdx_quote"), "--collateral",
                       str(tdx / "dcap-qvl-tdx_quote_collateral.json"), "--policy", "relaxed",
                       "--now", TDX_NOW)
    assert code == 0 and out["kind"] == "intel-tdx" and out["tee_level"] == "cpu-tee"


def test_tampered_snp_report_fails_the_signature(shared_dir, tmp_path, capsys):
    snp = shared_dir / "testvectors" / "amd-sev-snp"
    data = bytearray((snp / "attestation.bin").read_bytes())
    data[0x90] ^= 1  # measurement
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    code, out, _ = run(capsys, "verify", str(bad), "--certs", str(snp / "vcek.testcer"),
                       "--policy", "relaxed", "--now", SNP_NOW)
    assert code == 1 and out["check"] == "signature"


def test_simulated_evidence_verifies_under_testnet_and_fails_strict(tmp_path, capsys):
    ident = NodeIdentity.generate()
    bundle = SimulatedAttester(sign=ident.sign, public_key=ident.public_key).attest(
        report_data("p2pinfer-testnet", b"\x00\x24" + bytes(36), bytes(32), bytes(32)))
    path = tmp_path / "sim.bundle"
    path.write_bytes(bundle.encode())
    code, out, _ = run(capsys, "verify", str(path), "--policy", "testnet")
    assert code == 0 and out["simulated"] and out["tee_level"] == "simulated"
    code, out, _ = run(capsys, "verify", str(path), "--type", "simulated")
    assert code == 1 and out["check"] == "simulated"


def test_garbage_evidence_fails_the_format_check(tmp_path, capsys):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\x07" * 100)
    code, out, _ = run(capsys, "verify", str(path))
    assert code == 1 and out["check"] == "format"


def test_attest_show_prints_the_nodes_simulated_evidence_and_claims(tmp_path, capsys):
    conf = tmp_path / "n.toml"
    conf.write_text(f'[node]\ndata_dir = "{tmp_path}"\nnetwork_id = "p2pinfer-testnet"\n'
                    '[trust]\nattester = "simulated"\npolicy = "testnet"\n')
    NodeIdentity.load_or_create(tmp_path / "identity.key")
    code, out, _ = run(capsys, "show", "--config", str(conf))
    assert code == 0 and out["evidence"]["ok"] and out["evidence"]["kind"] == "simulated"
    assert out["claims"]["tee_level"] == "simulated" and out["claims"]["simulated"]
    assert "SIMULATED-NOT-A-TEE" in out["attester"]["warning"]


def test_attest_show_without_an_attester_says_so(tmp_path, capsys):
    code, out, _ = run(capsys, "show")
    assert code == 0 and out["attester"] is None and not out["evidence"]["ok"]


@pytest.mark.parametrize("argv", [["verify"], ["verify", "x", "--type", "sgx"], []])
def test_attest_usage_errors_exit_2(capsys, argv):
    assert main(["attest", *argv]) == 2
