"""EvidenceBundle wire form: round trips, limits checked before allocation, one error type."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinfer.errors import WireError
from p2pinfer.trust import nvidia, sev_snp, simulated, tdx
from p2pinfer.trust.errors import EvidenceFormatError
from p2pinfer.trust.evidence import (
    MAX_BUNDLE_BYTES,
    MAX_CERTS,
    MAX_EVIDENCE_BYTES,
    MAX_GPUS,
    EvidenceBundle,
    GpuEvidence,
)


def _bundle(**kw):
    base = {
        "kind": "amd-sev-snp",
        "evidence": b"r" * 0x4A0,
        "certs": (b"vcek",),
        "collateral": None,
        "gpus": (GpuEvidence(b"spdm", (b"c1", b"c2")),),
    }
    base.update(kw)
    return EvidenceBundle(**base)


def _wire(**overrides):
    obj = _bundle().to_wire()
    obj.update(overrides)
    return msgpack.packb(obj, use_bin_type=True)


def test_bundle_round_trips_through_the_wire_form():
    b = _bundle(collateral=b"{}")
    assert EvidenceBundle.decode(b.encode()) == b


def test_digest_is_sha256_of_the_canonical_encoding():
    import hashlib

    b = _bundle()
    assert b.digest() == hashlib.sha256(b.encode()).digest()
    assert _bundle(certs=(b"other",)).digest() != b.digest()


def test_lists_are_normalised_to_tuples():
    b = EvidenceBundle(kind="simulated", evidence=b"x", certs=[b"a"], gpus=[])
    assert b.certs == (b"a",) and b.gpus == ()


def test_repr_shows_sizes_not_bytes():
    assert "rrrr" not in repr(_bundle())


def test_format_error_is_a_wire_error():
    with pytest.raises(WireError):
        EvidenceBundle.decode(b"\xc1")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2, 3]),
        _wire(v=2),
        _wire(t="other"),
        _wire(kind="sgx"),
        _wire(kind=7),
        _wire(ev="text"),
        _wire(ev=b""),
        _wire(certs=b"notalist"),
        _wire(certs=[b"ok", "str"]),
        _wire(col=5),
        _wire(gpus={}),
        _wire(gpus=[{"ev": b"x", "extra": 1}]),
        _wire(gpus=[{"ev": "x"}]),
        _wire(extra=1),
        _wire(certs=[b"c"] * (MAX_CERTS + 1)),
        _wire(gpus=[{"ev": b"x", "certs": []}] * (MAX_GPUS + 1)),
        _wire(ev=b"e" * (MAX_EVIDENCE_BYTES + 1)),
        _wire(certs=[b"c" * (16 * 1024 + 1)]),
        msgpack.packb({"v": 1, "t": "evidence", "kind": "simulated", "ev": b"x"}, use_bin_type=True)
        + b"junk",
        b"\x81\x01\x02",
    ],
)
def test_malformed_bundles_raise_the_typed_error(data):
    with pytest.raises(EvidenceFormatError):
        EvidenceBundle.decode(data)


def test_oversized_bundle_is_refused_before_unpacking():
    with pytest.raises(EvidenceFormatError, match="exceeds"):
        EvidenceBundle.decode(b"\x00" * (MAX_BUNDLE_BYTES + 1))


def test_huge_announced_bin_length_is_refused_without_allocating():
    # bin32 header announcing 2 GiB followed by nothing
    with pytest.raises(EvidenceFormatError):
        EvidenceBundle.decode(b"\x81\xa2ev\xc6\x80\x00\x00\x00")


def test_constructor_refuses_unknown_kind_and_empty_evidence():
    with pytest.raises(EvidenceFormatError):
        _bundle(kind="nope")
    with pytest.raises(EvidenceFormatError):
        _bundle(evidence=b"")


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(deadline=None, max_examples=2500)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_but_the_typed_error(data):
    try:
        EvidenceBundle.decode(data)
    except EvidenceFormatError:
        pass


@settings(deadline=None, max_examples=800)
@given(_msgpack_values)
def test_random_msgpack_values_never_raise_anything_but_the_typed_error(value):
    try:
        EvidenceBundle.decode(msgpack.packb(value, use_bin_type=True))
    except EvidenceFormatError:
        pass


@settings(deadline=None, max_examples=1500)
@given(
    st.fixed_dictionaries(
        {"v": st.sampled_from([1, 2, "1"]), "t": st.sampled_from(["evidence", "x"])},
        optional={
            "kind": st.sampled_from(["amd-sev-snp", "intel-tdx", "nvidia-cc", "simulated", "x", 1]),
            "ev": st.binary(max_size=40) | st.text(max_size=3),
            "certs": st.lists(st.binary(max_size=8) | st.integers(-5, 5), max_size=10),
            "col": st.none() | st.binary(max_size=8) | st.integers(-5, 5),
            "gpus": st.lists(
                st.dictionaries(st.sampled_from(["ev", "certs", "z"]), st.binary(max_size=4)),
                max_size=3,
            ),
        },
    )
)
def test_near_valid_bundles_never_raise_anything_but_the_typed_error(obj):
    try:
        b = EvidenceBundle.decode(msgpack.packb(obj, use_bin_type=True))
    except EvidenceFormatError:
        return
    assert EvidenceBundle.decode(b.encode()) == b


@settings(deadline=None, max_examples=600)
@given(st.binary(max_size=2048), st.sampled_from(["snp", "tdx", "spdm", "simulated"]))
def test_evidence_parsers_raise_only_the_typed_error(data, which):
    parse = {
        "snp": sev_snp.SnpReport.parse,
        "tdx": tdx.TdxQuote.parse,
        "spdm": nvidia.SpdmMeasurements.parse,
        "simulated": simulated.SimulatedEvidence.parse,
    }[which]
    try:
        parse(data)
    except EvidenceFormatError:
        pass


@settings(deadline=None, max_examples=400)
@given(st.data())
def test_mutated_recorded_evidence_parses_or_raises_the_typed_error(snp, tdx_vec, nv, data):
    which = data.draw(st.sampled_from(["snp", "tdx", "spdm"]))
    raw, parse = {
        "snp": (snp.report, sev_snp.SnpReport.parse),
        "tdx": (tdx_vec.quote, tdx.TdxQuote.parse),
        "spdm": (nv.evidence, nvidia.SpdmMeasurements.parse),
    }[which]
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    try:
        parse(bytes(buf[:cut]))
    except EvidenceFormatError:
        pass
