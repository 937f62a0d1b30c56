import os

import pytest

from p2pinfer.config import NodeConfig, config_from_dict, load_config, with_overrides
from p2pinfer.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid():
    cfg = NodeConfig()
    cfg.validate()
    assert cfg.node.network_id == "p2pinfer-devnet"


def test_file_values_are_typed_and_nested(tmp_path):
    cfg = load_config(write(tmp_path, """
[node]
network_id = "testnet-7"
data_dir = "/tmp/x"
[net]
listen = ["/ip4/127.0.0.1/tcp/4001"]
dial_timeout_s = 3
[serve]
layers = [2, 6]
"""))
    assert cfg.node.network_id == "testnet-7"
    assert cfg.net.dial_timeout_s == 3.0 and isinstance(cfg.net.dial_timeout_s, float)
    assert cfg.serve.layers == [2, 6]
    assert str(cfg.key_path) == "/tmp/x/identity.key"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[net]\nlisten = 4001\n", "key 'net.listen': expected a list of strings, got int"),
        ("[net]\nlisen = []\n", "key 'net.lisen': unknown key"),
        ("[nett]\n", "key 'nett': unknown key"),
        ("[net]\nmdns = \"yes\"\n", "key 'net.mdns': expected boolean, got str"),
        ("[limits]\nmax_frame_bytes = true\n", "key 'limits.max_frame_bytes': expected integer"),
        ("[limits]\nmax_frame_bytes = -5\n", "key 'limits.max_frame_bytes': must be positive"),
        ("[node]\nnetwork_id = \"Bad Net!\"\n", "key 'node.network_id'"),
        ("[node]\nroles = [\"king\"]\n", "key 'node.roles': unknown role"),
        ("[net]\nbootstrap = [\"/ip4/1.2.3.4/tcp/1\"]\n", "needs a /p2p/"),
        ("[serve]\nlayers = [5, 2]\n", "key 'serve.layers'"),
        ("net = 3\n", "key 'net': expected a table"),
        ("[net\n", "not valid TOML"),
        ("[gossip]\nmesh_degree = 30\n", "key 'gossip.mesh_degree': needs 1 <= mesh_degree_low"),
        ("[gossip]\nmesh_degree_low = 0\nmesh_degree = 0\n", "key 'gossip.mesh_degree'"),
    ],
)
def test_malformed_config_is_one_line_naming_file_and_key(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    message = str(info.value)
    assert str(p) in message and needle in message
    assert "\n" not in message


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_non_utf8_file_is_a_config_error(tmp_path):
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p)


def test_overrides_are_validated():
    cfg = config_from_dict({})
    assert with_overrides(cfg, net={"mdns": True}).net.mdns is True
    with pytest.raises(ConfigError):
        with_overrides(cfg, node={"network_id": "UPPER"})


def test_example_configs_in_the_repository_load(tmp_path):
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "node_configs"
    files = sorted(folder.glob("*.toml"))
    assert len(files) >= 4
    from p2pinfer.identity import devnet_bootstrap_addr

    for f in files:
        cfg = load_config(f)
        # one network everywhere, and every bootstrap named is the devnet's, which the
        # bootstrap config's public key really is
        assert cfg.node.network_id == "p2pinfer-devnet", f
        assert all(a == devnet_bootstrap_addr() for a in cfg.net.bootstrap), f


def test_the_devnet_key_is_refused_off_loopback():
    from p2pinfer.errors import ConfigError

    ok = config_from_dict({"node": {"devnet_key": True},
                           "net": {"listen": ["/ip4/127.0.0.1/tcp/4001"]}})
    assert ok.node.devnet_key
    for key, addr in (("listen", "/ip4/0.0.0.0/tcp/4001"), ("announce", "/ip4/10.0.0.5/tcp/1")):
        with pytest.raises(ConfigError, match="devnet key is public"):
            config_from_dict({"node": {"devnet_key": True}, "net": {key: [addr]}})


# -- [api] -----------------------------------------------------------------------------------------
def test_api_section_defaults_to_off_on_loopback():
    cfg = config_from_dict({})
    assert cfg.api.enabled is False and cfg.api.listen == "127.0.0.1:8000"


def test_api_on_a_public_address_without_a_key_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="without a key"):
        config_from_dict({"api": {"enabled": True, "listen": "0.0.0.0:8000"}})
    cfg = config_from_dict({"api": {"enabled": True, "listen": "0.0.0.0:8000", "keys": ["k1"]}})
    assert cfg.api.keys == ["k1"]
    config_from_dict({"api": {"enabled": True, "listen": "[::1]:8000"}})  # loopback v6


@pytest.mark.parametrize("api, message", [
    ({"listen": "8000"}, "expected host:port"),
    ({"listen": "localhost:http"}, "expected host:port"),
    ({"keys": [" padded "]}, "surrounding spaces"),
    ({"max_body_bytes": 0}, "must be positive"),
    ({"max_concurrent": -1}, "must be positive"),
    ({"keys": "secret"}, "expected a list of strings"),
])
def test_bad_api_settings_name_the_key(api, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"api": api})


def test_the_api_example_config_loads():
    cfg = load_config(
        os.path.join(os.path.dirname(__file__), "..", "node_configs", "api-gateway.toml"))
    assert cfg.api.enabled and cfg.api.models
