"""Policy presets and loading, TEE levels, claims' JSON form, and the claims cache."""

from __future__ import annotations

import json

import pytest

from p2pinfer.errors import ConfigError
from p2pinfer.trust.claims import ClaimsCache, GpuClaim, TeeLevel, VerifiedClaims
from p2pinfer.trust.errors import PolicyViolation
from p2pinfer.trust.policy import Policy


def _claims(level=TeeLevel.CPU_TEE, expiry=100, simulated=False, **kw):
    return VerifiedClaims(
        kind="amd-sev-snp",
        tee_level=level,
        measurement="ab",
        debug=False,
        simulated=simulated,
        expiry=expiry,
        evidence_digest="00",
        **kw,
    )


def test_levels_are_ordered_none_simulated_cpu_gpu():
    assert TeeLevel.NONE < TeeLevel.SIMULATED < TeeLevel.CPU_TEE < TeeLevel.GPU_TEE
    assert [lv.label for lv in TeeLevel] == ["none", "simulated", "cpu-tee", "gpu-tee"]
    assert TeeLevel.parse("gpu-tee") is TeeLevel.GPU_TEE
    with pytest.raises(ValueError):
        TeeLevel.parse("tee")


def test_strict_preset_is_production_and_refuses_debug_and_simulation():
    p = Policy.preset("strict")
    assert p.production and not p.allow_debug and not p.allow_simulated
    assert p.tdx_tcb_statuses == {"UpToDate"} and p.snp_max_vmpl == 0
    with pytest.raises(PolicyViolation) as err:
        p.check_debug(True)
    assert err.value.check == "debug"


def test_relaxed_preset_allows_debug_but_not_simulation():
    p = Policy.preset("relaxed")
    p.check_debug(True)
    assert not p.allow_simulated and not p.production


def test_production_policy_cannot_allow_simulation():
    with pytest.raises(ConfigError):
        Policy(production=True, allow_simulated=True)
    with pytest.raises(ConfigError):
        Policy.from_dict({"preset": "testnet", "production": True})


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError):
        Policy.preset("lax")


def test_policy_loads_from_a_toml_table():
    text = """
[attestation]
preset = "relaxed"
allow_debug = false
snp_max_vmpl = 1
tdx_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
[attestation.min_level]
critical = "cpu-tee"
[attestation.measurements]
amd-sev-snp = ["AB"]
[attestation.tdx_rtmrs]
0 = ["cd"]
"""
    p = Policy.from_toml(text, table="attestation")
    assert not p.production and not p.allow_debug and p.snp_max_vmpl == 1
    assert p.min_level == {"general": TeeLevel.NONE, "critical": TeeLevel.CPU_TEE}
    assert p.measurements == {"amd-sev-snp": frozenset({"ab"})}
    assert p.tdx_rtmrs == {0: frozenset({"cd"})}
    assert Policy.from_dict(p.to_dict() | {"preset": "strict"}).to_dict() == p.to_dict()


def test_policy_loads_from_a_toml_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('preset = "testnet"\n')
    assert Policy.from_toml(path).allow_simulated


@pytest.mark.parametrize(
    "table",
    [
        {"allow_debug": "yes"},
        {"snp_max_vmpl": 9},
        {"snp_max_vmpl": True},
        {"min_level": {"general": "tee"}},
        {"min_level": {"batch": "none"}},
        {"measurements": {"sgx": ["ab"]}},
        {"measurements": {"amd-sev-snp": ["xyz"]}},
        {"measurements": {"amd-sev-snp": "ab"}},
        {"tdx_rtmrs": {"7": ["ab"]}},
        {"tdx_rtmrs": {"x": ["ab"]}},
        {"tdx_tcb_statuses": ["Great"]},
        {"tdx_tcb_statuses": "UpToDate"},
        {"claims_ttl_s": 0},
        {"colour": "blue"},
    ],
)
def test_bad_policy_tables_are_config_errors(table):
    with pytest.raises(ConfigError):
        Policy.from_dict(table)


def test_bad_toml_is_a_config_error():
    with pytest.raises(ConfigError):
        Policy.from_toml("preset = = 1\n")


def test_minimum_level_per_task_mode_is_enforced():
    p = Policy.from_dict({"min_level": {"critical": "cpu-tee"}})
    p.check_level(_claims(TeeLevel.NONE), "general")
    p.check_level(_claims(TeeLevel.GPU_TEE), "critical")
    with pytest.raises(PolicyViolation) as err:
        p.check_level(_claims(TeeLevel.NONE), "critical")
    assert err.value.check == "tee-level"


def test_simulated_claims_count_as_none_outside_a_simulating_policy():
    testnet = Policy.from_dict({"preset": "testnet", "min_level": {"general": "simulated"}})
    testnet.check_level(_claims(TeeLevel.SIMULATED, simulated=True), "general")
    strict = Policy.from_dict({"min_level": {"general": "simulated"}})
    with pytest.raises(PolicyViolation):
        strict.check_level(_claims(TeeLevel.SIMULATED, simulated=True), "general")


def test_claims_dict_is_json_able():
    gpu = GpuClaim("CN=GPU", "aa", "550.90.07", None, False)
    d = _claims(TeeLevel.GPU_TEE, gpus=(gpu,), tcb={"bl": 2}, chip_id="cc").to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["tee_level"] == "gpu-tee" and d["gpus"][0]["driver_version"] == "550.90.07"


def test_cache_returns_claims_until_they_expire():
    cache = ClaimsCache()
    c = _claims(expiry=100)
    cache.put(b"peer", b"digest", c, now=10)
    assert cache.get(b"peer", b"digest", now=99) is c
    assert cache.get(b"peer", b"other", now=10) is None
    assert cache.get(b"other", b"digest", now=10) is None
    assert cache.get(b"peer", b"digest", now=100) is None
    assert len(cache) == 0


def test_cache_ignores_already_expired_claims():
    cache = ClaimsCache()
    cache.put(b"p", b"d", _claims(expiry=5), now=5)
    assert len(cache) == 0


def test_cache_is_bounded_and_evicts_the_soonest_expiring():
    cache = ClaimsCache(max_entries=2)
    cache.put(b"a", b"1", _claims(expiry=50), now=0)
    cache.put(b"b", b"1", _claims(expiry=90), now=0)
    cache.put(b"c", b"1", _claims(expiry=70), now=0)
    assert len(cache) == 2
    assert cache.get(b"a", b"1", now=1) is None
    assert cache.get(b"b", b"1", now=1) is not None


def test_cache_forgets_a_peer_and_clears():
    cache = ClaimsCache()
    cache.put(b"a", b"1", _claims(), now=0)
    cache.put(b"a", b"2", _claims(), now=0)
    cache.put(b"b", b"1", _claims(), now=0)
    cache.forget_peer(b"a")
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_the_documented_toml_example_loads():
    import re

    from p2pinfer.trust import policy as policy_mod

    doc = policy_mod.__doc__
    example = "\n".join(line[4:] for line in doc[doc.index("    [attestation]") :].splitlines())
    example = re.sub(r"<[^>]*>", "ab" * 48, example)
    p = Policy.from_toml(example, table="attestation")
    assert p.production and p.min_level["critical"] is TeeLevel.CPU_TEE
    assert p.measurements["intel-tdx"] == frozenset({"ab" * 48})
