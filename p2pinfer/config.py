"""Typed node configuration, loaded from TOML with one-line errors.

A config file has the sections below; every key is optional and has a default, unknown keys are
errors (a typo must not silently fall back to a default). Errors read
`FILE: key 'net.listen': expected a list of strings, got int` and are `ConfigError`s.
See node_configs/*.toml for commented examples.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pinfer.errors import ConfigError

NETWORK_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ROLES = ("stage", "client", "bootstrap")


@dataclass
class NodeSection:
    name: str = ""
    #: where the key, caches and the control socket live; `~` is expanded
    data_dir: str = "~/.p2pinfer/node"
    #: identity key file; relative paths are inside data_dir
    key_file: str = "identity.key"
    #: true: use the devnet bootstrap's public key instead of key_file
    #: (p2pinfer.identity.devnet_identity); refused unless every listen address is loopback
    devnet_key: bool = False
    #: enters every topic name, signature and attestation binding
    network_id: str = "p2pinfer-devnet"
    roles: list[str] = field(default_factory=lambda: ["stage", "client"])


@dataclass
class NetSection:
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    #: addresses put in adverts; empty = the bound listen addresses
    announce: list[str] = field(default_factory=list)
    #: multiaddrs with /p2p/<peer id> of peers to join through
    bootstrap: list[str] = field(default_factory=list)
    #: private network: file holding a 32-byte pre-shared key as 64 hex characters
    psk_file: str = ""
    #: announce and find peers on the LAN with mDNS (off by default)
    mdns: bool = False
    #: run a Kademlia DHT in server mode
    dht: bool = True
    dial_timeout_s: float = 10.0
    #: how often to re-dial bootstrap peers that are not connected
    redial_interval_s: float = 5.0


@dataclass
class GossipSection:
    heartbeat_s: float = 1.0
    advert_interval_s: float = 10.0
    advert_ttl_s: float = 60.0
    #: gossip messages accepted per publisher per topic per second
    max_msgs_per_s: float = 50.0
    #: GossipSub mesh degree D and its bounds: wide by default, so a network of up to ~24
    #: peers is never pruned; each message reaches a peer about D times, so a large network
    #: on little CPU wants a smaller mesh (and a longer advert interval)
    mesh_degree: int = 8
    mesh_degree_low: int = 6
    mesh_degree_high: int = 24


@dataclass
class ControlSection:
    enabled: bool = True
    #: Unix socket path for `p2pinfer peers`; empty = <data_dir>/control.sock
    socket: str = ""


@dataclass
class LimitsSection:
    """What one node accepts from the network (protocols/wire.md, "Inbound limits")."""

    max_frame_bytes: int = 80 * 1024 * 1024
    max_tensor_bytes: int = 64 * 1024 * 1024 + 1024
    max_advert_bytes: int = 16 * 1024
    #: longest wait for a frame (or to write one) once a stream is under way
    stream_timeout_s: float = 60.0
    #: inbound streams served at once by the whole node ...
    max_inbound_streams: int = 128
    #: ... by one protocol (one protocol cannot starve the others) ...
    max_inbound_per_protocol: int = 64
    #: ... and for one remote peer (one peer cannot starve the others)
    max_inbound_per_peer: int = 48
    #: inbound streams one peer may hold open in any state (waiting, idle, served)
    max_open_streams_per_peer: int = 128
    #: a new inbound stream must deliver its first frame header within this many seconds
    first_frame_timeout_s: float = 10.0
    #: after that grace, a frame must keep arriving at least this fast (bytes/s): slowloris
    min_frame_rate_bytes_s: int = 64 * 1024
    #: inbound frame bytes being read or decoded, node-wide and per remote peer
    frame_budget_bytes: int = 1024 * 1024 * 1024
    frame_budget_per_peer_bytes: int = 256 * 1024 * 1024
    #: how long a frame may wait for budget before it is refused as busy
    budget_wait_s: float = 2.0
    #: a peer exceeding limits this many times within strike_window_s is disconnected and
    #: refused for ban_s
    strikes_to_ban: int = 8
    strike_window_s: float = 60.0
    ban_s: float = 60.0


@dataclass
class ServeSection:
    #: model directory or built-in name ("" = serve nothing)
    model: str = ""
    #: "auto" or [start, end) layer indices
    layers: Any = "auto"
    #: with layers = "auto": how many layers to take (0 = half the model)
    span_layers: int = 0
    dtype: str = "float32"
    #: a session idle longer than this is erased with its KV cache
    session_ttl_s: float = 300.0
    max_sessions: int = 32
    #: torch threads for this peer's layers (0 = torch's default)
    threads: int = 0
    #: TEST-ONLY: make this peer cheat in one named way (FAULT_INJECTION_KINDS) so adversarial
    #: testnets can check that votes catch it; refused when trust.production is set
    fault_injection: str = ""


TEE_LEVELS = ("none", "simulated", "cpu-tee", "gpu-tee")
#: TEST-ONLY dishonest behaviours (`serve.fault_injection`, p2pinfer.inference.redundancy)
FAULT_INJECTION_KINDS = ("wrong-weights", "int8-weights", "random-output", "skip-layer",
                         "perturb", "copy", "stall", "stall-late")


@dataclass
class RequestSettings:
    """How one request runs: the `[inference]` section gives a node's defaults, and the CLI,
    `p2pinfer.Node` and the HTTP API override them per request (`dataclasses.replace`, then
    `validate()`)."""

    #: layers the requester runs itself before the network (split learning; >= 1 keeps raw
    #: token embeddings off the network) and after it (>= 1 keeps the logits local)
    k_head: int = 1
    k_tail: int = 1
    #: peers per stage (m); > 1 runs every stage redundantly
    redundancy: int = 1
    #: "general" (votes, audits) or "critical" (a zero-knowledge proof per stage)
    mode: str = "general"
    #: the longest a step may take; once a route's one-token steps were measured, a step is
    #: given max(step_timeout_floor_s, step_timeout_factor x its typical step time) instead,
    #: never more than this, so a stage that stops answering is replaced in seconds
    step_timeout_s: float = 30.0
    step_timeout_floor_s: float = 5.0
    step_timeout_factor: float = 10.0
    open_timeout_s: float = 30.0
    #: when no planned route's peers answer (this node's own link down, say), how long a
    #: request waits for them to answer again before it fails
    outage_wait_s: float = 60.0
    max_replans: int = 4
    #: if non-empty, only these peer ids may be routed to
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    min_tee: str = "none"
    #: Gaussian noise on the outgoing activation (0 = off), its per-token L2 clip norm and delta
    noise_sigma: float = 0.0
    noise_clip: float = 0.0
    noise_delta: float = 1e-5
    #: a failing peer is avoided for ban_base_s * 2^(failures-1) seconds, at most ban_max_s
    ban_base_s: float = 10.0
    ban_max_s: float = 600.0
    #: fingerprint tolerance of the votes; 0 = from the route's advertised precisions (the
    #: float32 one when every replica computes in float32, else the bfloat16 one; see
    #: p2pinfer.consensus.fingerprint)
    tolerance: float = 0.0
    #: m = 1: audit a random fraction of stages (p2pinfer.consensus.AuditPolicy)
    audits: bool = True
    #: m > 1: let the planner build stages whose replicas are mostly bfloat16 (by default more
    #: than half of each stage's replicas must compute in float32: inside the bfloat16
    #: tolerance, int8-quantised weights and 1% noise pass for honest rounding)
    bfloat16_majority: bool = False
    #: m > 1: replicas commit to their outputs before the fingerprint seed exists, and reveal
    #: their claims under the seal of those commitments (protocols/votes.md)
    commit_before_seed: bool = True

    def validate(self, where: str = "<request>", prefix: str = "inference") -> RequestSettings:
        """Raise `ConfigError` naming the first bad key; returns self."""
        if self.mode not in ("general", "critical"):
            raise ConfigError(f"{where}: key '{prefix}.mode': {self.mode!r} is not "
                              "'general' or 'critical'")
        if self.min_tee not in TEE_LEVELS:
            raise ConfigError(f"{where}: key '{prefix}.min_tee': {self.min_tee!r} is not one "
                              f"of {', '.join(TEE_LEVELS)}")
        for key in ("k_head", "k_tail", "max_replans"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}: key '{prefix}.{key}': must be >= 0")
        if not 1 <= self.redundancy <= 9:
            raise ConfigError(f"{where}: key '{prefix}.redundancy': must be between 1 and 9 "
                              "peers per stage")
        for key in ("step_timeout_s", "step_timeout_floor_s", "open_timeout_s", "ban_base_s",
                    "ban_max_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{where}: key '{prefix}.{key}': must be positive")
        if not self.outage_wait_s >= 0:
            raise ConfigError(f"{where}: key '{prefix}.outage_wait_s': must be >= 0")
        if not self.step_timeout_factor >= 1:
            raise ConfigError(f"{where}: key '{prefix}.step_timeout_factor': must be >= 1")
        if self.noise_sigma < 0 or self.noise_clip < 0 or self.tolerance < 0:
            raise ConfigError(f"{where}: key '{prefix}.noise_sigma': noise settings and the "
                              "tolerance must be >= 0")
        if self.noise_sigma > 0 and self.noise_clip <= 0:
            raise ConfigError(f"{where}: key '{prefix}.noise_clip': noise needs a positive "
                              "clip norm")
        if not 0 < self.noise_delta < 1:
            raise ConfigError(f"{where}: key '{prefix}.noise_delta': must be in (0, 1)")
        return self


#: the `[inference]` section is the node's default request settings
InferenceSection = RequestSettings


TRUST_ATTESTERS = ("none", "simulated", "amd-sev-snp", "intel-tdx", "auto")
TRUST_PRESETS = ("strict", "relaxed", "testnet")


@dataclass
class TrustSection:
    """Attestation and attested channels (protocols/attest.md, channel.md)."""

    #: what makes this node's evidence: none, simulated (development and testnets only),
    #: amd-sev-snp, intel-tdx, or auto (the hardware found; never simulated)
    attester: str = "none"
    #: how peers' evidence is judged: strict, relaxed, testnet, or a TOML policy file (its
    #: [attestation] table); the minimum TEE level per task mode lives in the policy
    policy: str = "strict"
    #: a production network refuses to start with a simulated attester or a testnet policy
    production: bool = False
    #: every activation hop must be encrypted; unset = true when an attester is set
    require_channels: Any = None
    #: how long verified claims are trusted before the peer is attested again
    claims_ttl_s: float = 3600.0

    @property
    def channels_required(self) -> bool:
        if self.require_channels is None:
            return self.attester != "none"
        return bool(self.require_channels)


@dataclass
class ApiSection:
    """The OpenAI-compatible HTTP API, metrics and status page (p2pinfer.api), off by default."""

    enabled: bool = False
    #: host:port to listen on; anything but loopback needs at least one key
    listen: str = "127.0.0.1:8000"
    #: bearer keys a client must send (`Authorization: Bearer KEY`); empty = no key asked
    keys: list[str] = field(default_factory=list)
    #: the models offered (built-in names or directories); `GET /v1/models` lists those with a
    #: complete route
    models: list[str] = field(default_factory=lambda: ["p2pinfer-tiny-llama", "all-minilm-l6-v2"])
    #: request bodies larger than this are refused before they are parsed
    max_body_bytes: int = 1024 * 1024
    #: requests served at once; more get 429
    max_concurrent: int = 16
    #: serve only /metrics (and the status page): for serving peers that answer no requests
    metrics_only: bool = False
    #: completed requests (with their receipts) the status page keeps
    recent_requests: int = 50


@dataclass
class NodeConfig:
    node: NodeSection = field(default_factory=NodeSection)
    net: NetSection = field(default_factory=NetSection)
    gossip: GossipSection = field(default_factory=GossipSection)
    control: ControlSection = field(default_factory=ControlSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    serve: ServeSection = field(default_factory=ServeSection)
    inference: RequestSettings = field(default_factory=RequestSettings)
    trust: TrustSection = field(default_factory=TrustSection)
    api: ApiSection = field(default_factory=ApiSection)
    #: the file this came from, for error messages ("" when built in code)
    source: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> NodeConfig:
        """Build and validate a config from a TOML-like dict (what `p2pinfer.Node` takes)."""
        return config_from_dict(data, source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> NodeConfig:
        return load_config(path)

    # -- derived paths ---------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return Path(os.path.expanduser(self.node.data_dir))

    @property
    def key_path(self) -> Path:
        p = Path(os.path.expanduser(self.node.key_file))
        return p if p.is_absolute() else self.data_dir / p

    @property
    def control_path(self) -> Path:
        if self.control.socket:
            return Path(os.path.expanduser(self.control.socket))
        return self.data_dir / "control.sock"

    def validate(self) -> None:
        where = self.source or "<config>"
        if not NETWORK_ID_RE.match(self.node.network_id):
            raise ConfigError(
                f"{where}: key 'node.network_id': {self.node.network_id!r} must be 1-63 "
                "characters of a-z, 0-9, '.', '_', '-'"
            )
        for role in self.node.roles:
            if role not in ROLES:
                raise ConfigError(f"{where}: key 'node.roles': unknown role {role!r} ({ROLES})")
        for key in ("listen", "announce", "bootstrap"):
            for addr in getattr(self.net, key):
                if not addr.startswith("/"):
                    raise ConfigError(f"{where}: key 'net.{key}': {addr!r} is not a multiaddr")
        if self.node.devnet_key:
            for addr in self.net.listen + self.net.announce:
                if not addr.startswith("/ip4/127."):
                    raise ConfigError(
                        f"{where}: key 'node.devnet_key': the devnet key is public, so it is "
                        f"refused on {addr!r}: listen and announce on /ip4/127.0.0.1 only, or "
                        "set devnet_key = false (a key of this node's own is then created)")
        for addr in self.net.bootstrap:
            if "/p2p/" not in addr:
                raise ConfigError(
                    f"{where}: key 'net.bootstrap': {addr!r} needs a /p2p/<peer id> part"
                )
        layers = self.serve.layers
        if not (
            layers == "auto"
            or (
                isinstance(layers, list)
                and len(layers) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
                and 0 <= layers[0] < layers[1]
            )
        ):
            raise ConfigError(
                f"{where}: key 'serve.layers': expected \"auto\" or [start, end) with "
                f"0 <= start < end, got {layers!r}"
            )
        inf = self.inference
        inf.validate(where)
        if self.serve.span_layers < 0:
            raise ConfigError(f"{where}: key 'serve.span_layers': must be >= 0")
        self._validate_trust(where)
        self._validate_api(where)
        fault = self.serve.fault_injection
        if fault and fault not in FAULT_INJECTION_KINDS:
            raise ConfigError(f"{where}: key 'serve.fault_injection': {fault!r} is not one of "
                              f"{', '.join(FAULT_INJECTION_KINDS)} (test-only)")
        if fault and self.trust.production:
            raise ConfigError(f"{where}: key 'serve.fault_injection': test-only fault injection "
                              "is refused on a production network")
        if self.serve.threads < 0:
            raise ConfigError(f"{where}: key 'serve.threads': must be >= 0")
        g = self.gossip
        if not 1 <= g.mesh_degree_low <= g.mesh_degree <= g.mesh_degree_high:
            raise ConfigError(f"{where}: key 'gossip.mesh_degree': needs 1 <= mesh_degree_low "
                              f"<= mesh_degree <= mesh_degree_high (got {g.mesh_degree_low}, "
                              f"{g.mesh_degree}, {g.mesh_degree_high})")
        positive = [
            ("trust.claims_ttl_s", self.trust.claims_ttl_s),
            ("serve.session_ttl_s", self.serve.session_ttl_s),
            ("serve.max_sessions", self.serve.max_sessions),
            ("gossip.heartbeat_s", self.gossip.heartbeat_s),
            ("gossip.advert_interval_s", self.gossip.advert_interval_s),
            ("gossip.advert_ttl_s", self.gossip.advert_ttl_s),
            ("gossip.max_msgs_per_s", self.gossip.max_msgs_per_s),
            ("net.dial_timeout_s", self.net.dial_timeout_s),
            ("net.redial_interval_s", self.net.redial_interval_s),
            ("limits.max_frame_bytes", self.limits.max_frame_bytes),
            ("limits.max_tensor_bytes", self.limits.max_tensor_bytes),
            ("limits.max_advert_bytes", self.limits.max_advert_bytes),
            ("limits.stream_timeout_s", self.limits.stream_timeout_s),
            ("limits.max_inbound_streams", self.limits.max_inbound_streams),
        ]
        lim = self.limits
        positive += [(f"limits.{k}", getattr(lim, k)) for k in (
            "max_inbound_per_protocol", "max_inbound_per_peer", "max_open_streams_per_peer",
            "first_frame_timeout_s", "min_frame_rate_bytes_s", "frame_budget_bytes",
            "frame_budget_per_peer_bytes", "strikes_to_ban", "strike_window_s", "ban_s")]
        for key, value in positive:
            if value <= 0:
                raise ConfigError(f"{where}: key '{key}': must be positive, got {value!r}")
        if lim.budget_wait_s < 0:
            raise ConfigError(f"{where}: key 'limits.budget_wait_s': must be >= 0")
        if lim.frame_budget_per_peer_bytes > lim.frame_budget_bytes:
            raise ConfigError(f"{where}: key 'limits.frame_budget_per_peer_bytes': must not "
                              "exceed limits.frame_budget_bytes")
        if lim.frame_budget_per_peer_bytes < lim.max_frame_bytes:
            raise ConfigError(f"{where}: key 'limits.frame_budget_per_peer_bytes': must hold "
                              f"one frame of limits.max_frame_bytes ({lim.max_frame_bytes})")


    def _validate_api(self, where: str) -> None:
        api = self.api
        host, sep, port = api.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{where}: key 'api.listen': expected host:port, got "
                              f"{api.listen!r}")
        if any(not k or k != k.strip() for k in api.keys):
            raise ConfigError(f"{where}: key 'api.keys': keys must be non-empty and carry no "
                              "surrounding spaces")
        if api.enabled and not api.keys and not is_loopback_host(host):
            raise ConfigError(f"{where}: key 'api.listen': refusing to serve the API on "
                              f"{host} without a key; set api.keys or listen on 127.0.0.1")
        for key in ("max_body_bytes", "max_concurrent", "recent_requests"):
            if getattr(api, key) <= 0:
                raise ConfigError(f"{where}: key 'api.{key}': must be positive, got "
                                  f"{getattr(api, key)!r}")

    def _validate_trust(self, where: str) -> None:
        tr = self.trust
        if tr.attester not in TRUST_ATTESTERS:
            raise ConfigError(f"{where}: key 'trust.attester': {tr.attester!r} is not one of "
                              f"{', '.join(TRUST_ATTESTERS)}")
        if tr.require_channels is not None and not isinstance(tr.require_channels, bool):
            raise ConfigError(f"{where}: key 'trust.require_channels': expected a boolean")
        if tr.policy not in TRUST_PRESETS and not Path(os.path.expanduser(tr.policy)).is_file():
            raise ConfigError(f"{where}: key 'trust.policy': {tr.policy!r} is neither "
                              f"{', '.join(TRUST_PRESETS)} nor an existing policy file")
        if tr.production and tr.attester == "simulated":
            raise ConfigError(f"{where}: key 'trust.attester': a production network refuses "
                              "the simulated attester (it is not a TEE); use amd-sev-snp, "
                              "intel-tdx or auto")
        if tr.production and tr.policy in ("relaxed", "testnet"):
            raise ConfigError(f"{where}: key 'trust.policy': a production network needs a "
                              f"production policy, not {tr.policy!r}")
        if tr.channels_required and tr.attester == "none":
            raise ConfigError(f"{where}: key 'trust.require_channels': attested channels need "
                              "an attester (set trust.attester)")
        if tr.attester == "simulated" and tr.policy in ("strict", "relaxed"):
            raise ConfigError(f"{where}: key 'trust.policy': {tr.policy!r} refuses the "
                              "simulated evidence trust.attester = 'simulated' makes; use "
                              "'testnet'")


def is_loopback_host(host: str) -> bool:
    """Whether an API listen host is a loopback name or address."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- loading -----------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}s"
    if tp is Any:
        return "any value"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def _check_value(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(
                f"{where}: key '{key}': expected {_type_name(tp)}, got {type(value).__name__}"
            )
        return [_check_value(v, inner, key, where) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: key '{key}': expected {_type_name(tp)}, got boolean")
    if not isinstance(value, tp):
        raise ConfigError(
            f"{where}: key '{key}': expected {_type_name(tp)}, got {type(value).__name__}"
        )
    return value


def _build(cls: type, data: Any, prefix: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: key '{prefix}': expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(f"{where}: key '{dotted}': unknown key")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, dotted, where)
        else:
            kwargs[key] = _check_value(value, tp, dotted, where)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], source: str = "") -> NodeConfig:
    """Build and validate a config from a parsed TOML-like dict."""
    cfg = _build(NodeConfig, data, "", source or "<config>")
    cfg.source = source
    cfg.validate()
    return cfg


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Load and validate a TOML config file; every problem is one `ConfigError` line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file ({e.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    return config_from_dict(data, source=str(p))


def with_overrides(cfg: NodeConfig, **sections: dict[str, Any]) -> NodeConfig:
    """A copy of `cfg` with some keys replaced, e.g. `with_overrides(c, net={"mdns": True})`."""
    new = dataclasses.replace(cfg)
    for name, values in sections.items():
        section = dataclasses.replace(getattr(cfg, name), **values)
        setattr(new, name, section)
    new.validate()
    return new


