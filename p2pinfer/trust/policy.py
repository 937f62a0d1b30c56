"""Attestation policy: what a verifier accepts, loadable from a dict or a TOML table.

Presets:
- `strict`: production; every check that needs no allowlist (debug refused, VMPL 0, no
  migration agent, TDX TCB status UpToDate, no simulated evidence).
- `relaxed`: as strict but debug guests and out-of-date/config-needed TDX TCB accepted; not
  for production data.
- `testnet`: relaxed plus simulated evidence; never production.

Measurement allowlists are per evidence kind (hex strings); an empty allowlist means "any
measurement" and the claims still carry the measurement so the caller can log or pin it.

TOML form (a node config's [attestation] table, or a file given to `attest verify --policy`):

    [attestation]
    preset = "strict"                 # strict | relaxed | testnet; the keys below override it
    allow_debug = false
    snp_max_vmpl = 0
    tdx_tcb_statuses = ["UpToDate"]
    require_gpu_rims = false
    claims_ttl_s = 3600
    [attestation.min_level]           # none | simulated | cpu-tee | gpu-tee, per task mode
    critical = "cpu-tee"
    [attestation.measurements]        # per evidence kind
    amd-sev-snp = ["<96 hex digits>"]
    intel-tdx = ["<MRTD, 96 hex digits>"]
    [attestation.tdx_rtmrs]
    0 = ["<96 hex digits>"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2pinfer.errors import ConfigError
from p2pinfer.trust.claims import TeeLevel, VerifiedClaims
from p2pinfer.trust.errors import PolicyViolation
from p2pinfer.trust.evidence import KINDS

TASK_MODES = ("general", "critical")
TDX_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)


@dataclass(frozen=True)
class Policy:
    production: bool = True
    allow_debug: bool = False
    allow_simulated: bool = False
    min_level: dict[str, TeeLevel] = field(
        default_factory=lambda: {m: TeeLevel.NONE for m in TASK_MODES}
    )
    measurements: dict[str, frozenset[str]] = field(default_factory=dict)
    tdx_rtmrs: dict[int, frozenset[str]] = field(default_factory=dict)
    snp_max_vmpl: int = 0
    snp_allow_migration_agent: bool = False
    tdx_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    require_gpu_rims: bool = False
    claims_ttl_s: int = 3600

    def __post_init__(self) -> None:
        if self.production and self.allow_simulated:
            raise ConfigError(
                "attestation policy: a production policy cannot allow simulated evidence"
            )
        for mode, level in self.min_level.items():
            if mode not in TASK_MODES or not isinstance(level, TeeLevel):
                raise ConfigError(f"attestation policy: bad min_level entry {mode!r}")
        for kind in self.measurements:
            if kind not in KINDS:
                raise ConfigError(
                    f"attestation policy: unknown evidence kind {kind!r} in measurements"
                )
        for idx in self.tdx_rtmrs:
            if idx not in range(4):
                raise ConfigError("attestation policy: tdx_rtmrs keys must be 0..3")
        if not 0 <= self.snp_max_vmpl <= 3:
            raise ConfigError("attestation policy: snp_max_vmpl must be 0..3")
        unknown = set(self.tdx_tcb_statuses) - set(TDX_STATUSES)
        if unknown:
            raise ConfigError(f"attestation policy: unknown TDX TCB status {min(unknown)!r}")
        if self.claims_ttl_s <= 0:
            raise ConfigError("attestation policy: claims_ttl_s must be positive")

    # -- checks used by the verifiers -------------------------------------------------------

    def check_debug(self, debug: bool) -> None:
        if debug and not self.allow_debug:
            raise PolicyViolation(
                "guest runs with debugging enabled; policy refuses debug guests", check="debug"
            )

    def check_measurement(self, kind: str, measurement_hex: str) -> None:
        allowed = self.measurements.get(kind)
        if allowed and measurement_hex.lower() not in allowed:
            raise PolicyViolation(
                f"{kind} measurement is not in the allowlist", check="measurement"
            )

    def check_level(self, claims: VerifiedClaims, mode: str) -> None:
        """Raise unless `claims` meet the minimum TEE level for task `mode`."""
        if mode not in TASK_MODES:
            raise ValueError(f"unknown task mode {mode!r}")
        need = self.min_level.get(mode, TeeLevel.NONE)
        have = claims.tee_level
        if claims.simulated and (self.production or not self.allow_simulated):
            have = TeeLevel.NONE
        if have < need:
            raise PolicyViolation(
                f"{mode} tasks need TEE level {need.label}, peer has {have.label}",
                check="tee-level",
            )

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str) -> Policy:
        if name == "strict":
            return cls()
        if name == "relaxed":
            return cls(production=False, allow_debug=True, tdx_tcb_statuses=frozenset(TDX_STATUSES))
        if name == "testnet":
            return cls(
                production=False,
                allow_debug=True,
                allow_simulated=True,
                tdx_tcb_statuses=frozenset(TDX_STATUSES),
            )
        raise ConfigError(f"unknown attestation policy preset {name!r} (strict, relaxed, testnet)")

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> Policy:
        """Build from a TOML-style table; `preset = "..."` starts from a preset."""
        if not isinstance(table, dict):
            raise ConfigError("attestation policy must be a table")
        table = dict(table)
        base = cls.preset(str(table.pop("preset", "strict")))
        known = {
            "production",
            "allow_debug",
            "allow_simulated",
            "min_level",
            "measurements",
            "tdx_rtmrs",
            "snp_max_vmpl",
            "snp_allow_migration_agent",
            "tdx_tcb_statuses",
            "require_gpu_rims",
            "claims_ttl_s",
        }
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"attestation policy: unknown key {min(unknown)!r}")
        changes: dict[str, Any] = {}
        for key in (
            "production",
            "allow_debug",
            "allow_simulated",
            "snp_allow_migration_agent",
            "require_gpu_rims",
        ):
            if key in table:
                changes[key] = _bool(table[key], key)
        for key in ("snp_max_vmpl", "claims_ttl_s"):
            if key in table:
                changes[key] = _int(table[key], key)
        if "min_level" in table:
            levels = _table(table["min_level"], "min_level")
            try:
                parsed = {str(m): TeeLevel.parse(str(v)) for m, v in levels.items()}
            except ValueError as exc:
                raise ConfigError(f"attestation policy: min_level: {exc}") from None
            changes["min_level"] = {**base.min_level, **parsed}
        if "measurements" in table:
            m = _table(table["measurements"], "measurements")
            changes["measurements"] = {
                str(k): _hexset(v, f"measurements.{k}") for k, v in m.items()
            }
        if "tdx_rtmrs" in table:
            r = _table(table["tdx_rtmrs"], "tdx_rtmrs")
            try:
                changes["tdx_rtmrs"] = {int(k): _hexset(v, f"tdx_rtmrs.{k}") for k, v in r.items()}
            except ValueError:
                raise ConfigError("attestation policy: tdx_rtmrs keys must be 0..3") from None
        if "tdx_tcb_statuses" in table:
            s = table["tdx_tcb_statuses"]
            if not isinstance(s, list) or not all(isinstance(x, str) for x in s):
                raise ConfigError("attestation policy: tdx_tcb_statuses must be a list of strings")
            changes["tdx_tcb_statuses"] = frozenset(s)
        return replace(base, **changes)

    @classmethod
    def from_toml(cls, text_or_path: str | Path, table: str | None = None) -> Policy:
        """Load from TOML text or a file; `table` picks a sub-table such as "attestation"."""
        try:
            if isinstance(text_or_path, Path) or (
                "\n" not in str(text_or_path) and Path(str(text_or_path)).is_file()
            ):
                data = tomllib.loads(Path(text_or_path).read_text(encoding="utf-8"))
            else:
                data = tomllib.loads(str(text_or_path))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"attestation policy: cannot read TOML: {exc}") from None
        if table is not None:
            data = data.get(table, {})
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "production": self.production,
            "allow_debug": self.allow_debug,
            "allow_simulated": self.allow_simulated,
            "min_level": {m: lv.label for m, lv in self.min_level.items()},
            "measurements": {k: sorted(v) for k, v in self.measurements.items()},
            "tdx_rtmrs": {str(k): sorted(v) for k, v in self.tdx_rtmrs.items()},
            "snp_max_vmpl": self.snp_max_vmpl,
            "snp_allow_migration_agent": self.snp_allow_migration_agent,
            "tdx_tcb_statuses": sorted(self.tdx_tcb_statuses),
            "require_gpu_rims": self.require_gpu_rims,
            "claims_ttl_s": self.claims_ttl_s,
        }


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"attestation policy: {key} must be true or false")
    return v


def _int(v: Any, key: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"attestation policy: {key} must be an integer")
    return v


def _table(v: Any, key: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(f"attestation policy: {key} must be a table")
    return v


def _hexset(v: Any, key: str) -> frozenset[str]:
    if not isinstance(v, list):
        raise ConfigError(f"attestation policy: {key} must be a list of hex strings")
    out = set()
    for item in v:
        if not isinstance(item, str) or not _is_hex(item):
            raise ConfigError(f"attestation policy: {key} holds a value that is not hex")
        out.add(item.lower())
    return frozenset(out)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
