"""The attested handshake, driven message by message (sans-IO)."""

from __future__ import annotations

import msgpack
import pytest

from p2pinfer.channel import ChannelConfig, HandshakeError, RecordKind

from .conftest import FakePeer, handshakes, run_handshake


def _edit(msg: bytes, **changes) -> bytes:
    body = msgpack.unpackb(msg, raw=False)
    body.update(changes)
    return msgpack.packb(body, use_bin_type=True)


def _flip(b: bytes, at: int = -1) -> bytes:
    out = bytearray(b)
    out[at] ^= 0x01
    return bytes(out)


def test_handshake_derives_equal_keys_both_ways():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b)
    run_handshake(i, r)
    assert i.complete and r.complete
    assert i.transcript == r.transcript
    ci, cr = i.channel(), r.channel()
    assert ci.channel_id == cr.channel_id
    assert ci._send.key == cr._recv.key and ci._recv.key == cr._send.key
    assert ci._send.key != ci._recv.key
    assert cr.open(ci.seal(b"to responder")).payload == b"to responder"
    assert ci.open(cr.seal(b"to initiator")).payload == b"to initiator"


def test_handshake_reports_the_verified_peer_to_each_side():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b)
    run_handshake(i, r)
    assert i.peer.peer_id == b.peer_id and i.peer.static_key == b.keys.public
    assert r.peer.peer_id == a.peer_id and r.peer.static_key == a.keys.public
    assert i.peer.claims == {"kind": "fake", "peer": b.peer_id.hex()}
    assert len(i.peer.evidence_digest) == 32


def test_roles_swapped_give_a_fresh_channel():
    a, b = FakePeer(), FakePeer()
    i1, r1 = handshakes(a, b)
    run_handshake(i1, r1)
    i2, r2 = handshakes(b, a)
    run_handshake(i2, r2)
    c1, c2 = i1.channel(), i2.channel()
    assert c1.channel_id != c2.channel_id
    assert c1._send.key != c2._send.key


def test_responder_evidence_with_bad_signature_is_rejected():
    a, b = FakePeer(), FakePeer(tamper=_flip)
    i, r = handshakes(a, b)
    with pytest.raises(HandshakeError) as e:
        run_handshake(i, r)
    assert e.value.check == "evidence" and e.value.evidence_check == "signature"


def test_initiator_evidence_with_bad_signature_is_rejected_by_responder():
    a, b = FakePeer(tamper=_flip), FakePeer()
    i, r = handshakes(a, b)
    m3 = i.receive(r.receive(i.start()))
    with pytest.raises(HandshakeError) as e:
        r.receive(m3)
    assert e.value.check == "evidence" and e.value.evidence_check == "signature"


def test_evidence_binding_another_channel_key_is_rejected():
    a, b = FakePeer(), FakePeer()
    other = FakePeer().keys.public
    hooks = b.hooks

    def lying_report_data(net, peer, key, nonce):
        return hooks.report_data(net, peer, other, nonce)

    from p2pinfer.channel import AttestationHooks, InitiatorHandshake, ResponderHandshake

    i = InitiatorHandshake(a.identity, a.hooks)
    r = ResponderHandshake(b.identity, AttestationHooks(lying_report_data, b.attest, hooks.verify))
    with pytest.raises(HandshakeError) as e:
        run_handshake(i, r)
    assert e.value.check == "evidence" and e.value.evidence_check == "binding"


def test_evidence_replayed_from_an_earlier_session_is_rejected():
    a, b = FakePeer(), FakePeer()
    run_handshake(*handshakes(a, b))
    old = b.attested[-1]
    b.tamper = lambda _fresh: old
    with pytest.raises(HandshakeError) as e:
        run_handshake(*handshakes(a, b))
    assert e.value.evidence_check == "binding"


def test_evidence_signed_by_another_peer_is_rejected():
    a, b, mallory = FakePeer(), FakePeer(), FakePeer()
    b.tamper = lambda ev: mallory.attest(ev[32:96])
    with pytest.raises(HandshakeError) as e:
        run_handshake(*handshakes(a, b))
    assert e.value.evidence_check == "signer"


def test_tampered_ephemeral_key_breaks_the_transcript_and_fails_confirmation():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b)
    fake_e = FakePeer().keys.public

    def tap(index, msg):
        return _edit(msg, e=fake_e) if index == 1 else msg

    with pytest.raises(HandshakeError) as e:
        run_handshake(i, r, tap)
    assert e.value.check == "confirmation"


def test_bad_initiator_confirmation_tag_is_rejected():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b)
    m3 = i.receive(r.receive(i.start()))
    body = msgpack.unpackb(m3, raw=False)
    with pytest.raises(HandshakeError) as e:
        r.receive(_edit(m3, conf=_flip(body["conf"], 0)))
    assert e.value.check == "confirmation"


def test_bad_responder_confirmation_tag_is_rejected():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b)
    m4 = r.receive(i.receive(r.receive(i.start())))
    body = msgpack.unpackb(m4, raw=False)
    with pytest.raises(HandshakeError) as e:
        i.receive(_edit(m4, conf=_flip(body["conf"], 5)))
    assert e.value.check == "confirmation"
    assert not i.complete


def test_other_network_is_rejected():
    a, b = FakePeer(network="mainnet"), FakePeer()
    with pytest.raises(HandshakeError) as e:
        run_handshake(*handshakes(a, b))
    assert e.value.check == "network"


def test_unexpected_peer_id_is_rejected():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b, remote_peer_id=FakePeer().peer_id)
    with pytest.raises(HandshakeError) as e:
        run_handshake(i, r)
    assert e.value.check == "peer-id"


def test_unexpected_static_key_is_rejected():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b, remote_static_key=FakePeer().keys.public)
    with pytest.raises(HandshakeError) as e:
        run_handshake(i, r)
    assert e.value.check == "static-key"


def test_expected_peer_and_static_key_are_accepted():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b, remote_peer_id=b.peer_id, remote_static_key=b.keys.public)
    run_handshake(i, r)
    assert i.complete


def test_other_protocol_id_is_rejected():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b)
    with pytest.raises(HandshakeError) as e:
        r.receive(_edit(i.start(), proto="/p2pinfer/channel/2.0.0"))
    assert e.value.check == "version"


def test_other_envelope_version_is_rejected():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b)
    with pytest.raises(HandshakeError) as e:
        r.receive(_edit(i.start(), v=2))
    assert e.value.check == "version"


def test_low_order_ephemeral_key_is_rejected():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b)
    with pytest.raises(HandshakeError) as e:
        run_handshake(i, r, lambda idx, m: _edit(m, e=bytes(32)) if idx == 1 else m)
    assert e.value.check == "key"


def test_reflected_hello_is_rejected():
    a = FakePeer()
    i = handshakes(a, a)[0]
    hello = i.start()
    _, r = handshakes(FakePeer(), a)
    r._e = msgpack.unpackb(hello, raw=False)["e"]
    with pytest.raises(HandshakeError) as e:
        r.receive(hello)
    assert e.value.check == "key"


def test_wrong_key_size_is_a_message_error():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b)
    with pytest.raises(HandshakeError) as e:
        r.receive(_edit(i.start(), s=b"short"))
    assert e.value.check == "message"


def test_message_out_of_order_is_rejected():
    i, _ = handshakes(FakePeer(), FakePeer())
    i.start()
    with pytest.raises(HandshakeError) as e:
        i.receive(msgpack.packb({"v": 1, "t": "ch-confirm", "conf": bytes(32)}))
    assert e.value.check == "message"


def test_error_reply_from_peer_raises_rejected():
    a, b = FakePeer(network="mainnet"), FakePeer()
    i, r = handshakes(a, b)
    hello = i.start()
    with pytest.raises(HandshakeError) as err:
        r.receive(hello)
    with pytest.raises(HandshakeError) as e:
        i.receive(r.error_reply(err.value))
    assert e.value.check == "rejected" and "handshake:network" in str(e.value)


def test_evidence_over_the_limit_is_rejected_before_verifying():
    a, b = FakePeer(), FakePeer()
    b.tamper = lambda ev: ev + bytes(4096)
    i, r = handshakes(a, b, config=ChannelConfig(max_evidence=1024))
    r.config = ChannelConfig(max_evidence=1 << 20)
    with pytest.raises(HandshakeError) as e:
        run_handshake(i, r)
    assert e.value.check == "message"


def test_failed_handshake_erases_its_secrets():
    a, b = FakePeer(), FakePeer()
    i, r = handshakes(a, b)
    m3 = i.receive(r.receive(i.start()))
    keys = list(i._keys)
    assert keys and all(any(k) for k in keys)
    with pytest.raises(HandshakeError):
        i.receive(_edit(r.receive(m3), conf=bytes(32)))
    assert all(k == bytes(32) for k in keys)
    assert i._eph is None and i._keys == []


def test_channel_can_be_taken_once():
    i, r = handshakes(FakePeer(), FakePeer())
    run_handshake(i, r)
    i.channel()
    with pytest.raises(HandshakeError) as e:
        i.channel()
    assert e.value.check == "state"


def test_no_message_is_accepted_after_completion():
    i, r = handshakes(FakePeer(), FakePeer())
    run_handshake(i, r)
    with pytest.raises(HandshakeError) as e:
        r.receive(b"\x80")
    assert e.value.check == "state"


def test_handshake_keys_seal_tensor_records():
    i, r = handshakes(FakePeer(), FakePeer())
    run_handshake(i, r)
    ci, cr = i.channel(), r.channel()
    rec = cr.open_tensor(ci.seal_tensor(b"\x00\x01" * 8, b"task-7", 3))
    assert (rec.kind, rec.task_id, rec.stage) == (RecordKind.TENSOR, b"task-7", 3)
