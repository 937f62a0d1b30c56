"""The "destroy" step: when a session ends its hop keys, KV caches and activation buffers are
erased on every node; when a node stops, its channel keys are erased."""

from __future__ import annotations

import pytest
import trio

from p2pinfer.channel import record as record_mod
from p2pinfer.inference import secure_hop
from p2pinfer.models import KVCache
from p2pinfer.models.sampling import Sampler, SamplingParams

from .conftest import tee_network


@pytest.fixture
def traces(monkeypatch):
    """Every hop record layer derived, every KV cache tensor erased, every buffer wiped."""
    layers: list = []
    erased: list = []
    wiped: list = []
    derive = record_mod.RecordLayer.derive_hop

    def recording_derive(self, label, salt):
        layer = derive(self, label, salt)
        layers.append(layer)
        return layer

    erase = KVCache.erase

    def recording_erase(self):
        erased.extend([*self._keys, *self._values])
        return erase(self)

    wipe = secure_hop.wipe

    def recording_wipe(buf):
        wiped.append(buf)
        return wipe(buf)

    monkeypatch.setattr(record_mod.RecordLayer, "derive_hop", recording_derive)
    monkeypatch.setattr(KVCache, "erase", recording_erase)
    monkeypatch.setattr(secure_hop, "wipe", recording_wipe)
    return layers, erased, wiped


def _zero(buf) -> bool:
    return not any(bytes(buf))


async def test_ending_a_session_erases_hop_keys_kv_caches_and_activation_buffers(
        tmp_path, llama, traces):
    layers, erased, wiped = traces
    async with tee_network(tmp_path, str(llama), [[0, 3], [3, 6]]) as (client, stages):
        c = client.inference.client(str(llama))
        async for _ in c.generate([5, 17, 42, 3], 4, Sampler(SamplingParams(temperature=0))):
            pass
        nodes = [client, *stages]
        channels = [pc.channel for n in nodes for pc in n.attestation._by_id.values()]
        assert channels and not any(ch.closed for ch in channels)
        # per-session state is gone everywhere (the close travels down the route)
        with trio.fail_after(10):
            while any(n.inference.hop.live_hops for n in nodes) or any(
                    s.inference.stage.sessions for s in stages):
                await trio.sleep(0.05)
        # 3 hops, each derived at both ends, all erased: keys overwritten with zeros
        assert len(layers) == 6
        for layer in layers:
            assert layer.closed and _zero(layer._send.key) and _zero(layer._recv.key)
        # every stage's KV cache tensors were zeroed (the requester's head/tail ones too)
        assert erased and all(not t.any() for t in erased)
        # every activation description opened was overwritten (tensors are sealed from and
        # opened into their own memory: no other plaintext copy exists)
        assert len(wiped) == 3 * 4 and all(_zero(b) for b in wiped)
    # the node stopped: the pair channels and their exporter secrets are erased
    assert all(ch.closed for ch in channels)
    for ch in channels:
        assert ch._record._exporter is None and _zero(ch._record._send.key)
