"""The [trust] config section: one-line errors, and a production network refuses simulation."""

from __future__ import annotations

import pytest

from p2pinfer.cli import main
from p2pinfer.config import NodeConfig, TrustSection, config_from_dict, load_config
from p2pinfer.errors import ConfigError
from p2pinfer.node import Node


def cfg(tmp_path, **trust):
    return config_from_dict({"node": {"data_dir": str(tmp_path)}, "trust": trust},
                            source="net.toml")


def test_trust_defaults_to_no_attester_and_no_channels():
    t = NodeConfig().trust
    assert t.attester == "none" and not t.channels_required and not t.production


def test_channels_are_required_by_default_once_an_attester_is_set(tmp_path):
    assert cfg(tmp_path, attester="simulated", policy="testnet").trust.channels_required
    assert not cfg(tmp_path, attester="simulated", policy="testnet",
                   require_channels=False).trust.channels_required


@pytest.mark.parametrize("trust, key", [
    ({"attester": "sgx"}, "trust.attester"),
    ({"policy": "lenient"}, "trust.policy"),
    ({"require_channels": "yes", "attester": "simulated", "policy": "testnet"},
     "trust.require_channels"),
    ({"require_channels": True}, "trust.require_channels"),
    ({"claims_ttl_s": 0}, "trust.claims_ttl_s"),
    ({"attester": "simulated", "policy": "strict"}, "trust.policy"),
    ({"production": True, "policy": "testnet"}, "trust.policy"),
    ({"bogus": 1}, "trust.bogus"),
])
def test_bad_trust_settings_are_one_line_errors_naming_the_key(tmp_path, trust, key):
    with pytest.raises(ConfigError) as e:
        cfg(tmp_path, **trust)
    msg = str(e.value)
    assert "\n" not in msg and f"'{key}'" in msg and msg.startswith("net.toml")


def test_production_network_refuses_the_simulated_attester(tmp_path):
    with pytest.raises(ConfigError, match="production network refuses the simulated"):
        cfg(tmp_path, attester="simulated", policy="testnet", production=True)
    bad = NodeConfig(trust=TrustSection(attester="simulated", policy="testnet", production=True))
    with pytest.raises(ConfigError, match="production"):
        Node(bad)


def test_node_command_refuses_to_start_a_production_simulated_node(tmp_path, capsys):
    path = tmp_path / "prod.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path}"\n'
                    '[trust]\nattester = "simulated"\npolicy = "testnet"\nproduction = true\n')
    assert main(["node", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "production network refuses" in err


def test_a_policy_file_is_accepted_and_must_be_production_on_a_production_network(tmp_path):
    pol = tmp_path / "policy.toml"
    pol.write_text('[attestation]\npreset = "relaxed"\n[attestation.min_level]\n'
                   'critical = "cpu-tee"\n')
    c = cfg(tmp_path, attester="amd-sev-snp", policy=str(pol))
    assert c.trust.policy == str(pol)
    from p2pinfer.services.attest import load_trust_policy

    assert load_trust_policy(c.trust).min_level["critical"].label == "cpu-tee"
    prod = cfg(tmp_path, attester="amd-sev-snp", policy=str(pol), production=True)
    with pytest.raises(ConfigError, match="production policy"):
        load_trust_policy(prod.trust)


def test_trust_section_loads_from_toml(tmp_path):
    path = tmp_path / "n.toml"
    path.write_text('[trust]\nattester = "simulated"\npolicy = "testnet"\nclaims_ttl_s = 60\n')
    c = load_config(path)
    assert c.trust.claims_ttl_s == 60.0 and c.trust.channels_required
