"""The test vector of protocols/channel.md: the implementation and a from-the-spec
recomputation (hashlib, HKDF, HMAC, AES-GCM only) both give the published bytes."""

from __future__ import annotations

import hashlib
import hmac
import struct

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from p2pinfer.channel import (
    AttestationHooks,
    ChannelIdentity,
    ChannelKeyPair,
    InitiatorHandshake,
    RecordKind,
    ResponderHandshake,
)
from p2pinfer.channel.keys import public_bytes
from p2pinfer.channel.record import _ratchet

NET = "p2pinfer-test-vector"
PEER_I, PEER_R = b"peer-initiator", b"peer-responder"
EV_I, EV_R = b"evidence-i", b"evidence-r"
N_I, N_R = b"\x11" * 32, b"\x22" * 32

STATIC_I_PUB = "006f0062424587e228f2021959891c75f17fcc848bec76bdf1dab7ace2034938"
STATIC_R_PUB = "82441984518dc7070c8c274e90fc728ed00fff9bbaa01d86d8ea75fb7f4eec67"
EPH_I_PUB = "9619980f94384a2baf34641a1ee82ca64a0d4ea2e52766b2aae27fbdeb83d167"
EPH_R_PUB = "eeba1497071c7f708f171dda8b5685f39ae302e228162c2f6406de13ecf53e13"
TRANSCRIPT = "91198e1f4ee7c69368c5d4fef1a6adf7338ddba144dbcabdc3b8a8087692fa28"
K_I2R = "ac2e0ad5204de28673923223f524f0483e46ec3f27bdbbb9e6f7876b8604c9fb"
K_R2I = "a2e2a682a6dedf8466008b27a87086f21b4353109f5f31ea1be8167cb53c4750"
CONF_I = "0257642790de5d1902ee78649522acd06bad543cc0f142dcaaee0415086234b4"
CONF_R = "df15826fd95c9a5a7b38379a31fc8d772ed17154be94c04339747d144eb68405"
FRAME = (
    "01020900000000030000000000000000000000007461736b2d30303031"
    "e09a1078f2ef44412d61a9c3decf158daec467f6135808192f746125"
)
K_I2R_EPOCH1 = "868771b85b78a6c084fe87591e13a50f4e12777127e2d7f8dc46f03014717bca"
EXPORTER = "1b850331237f3b04351cf1f3fb915893e313aa65ad4028a4b155c987276d7407"
HOP_LABEL, HOP_SALT = b"task-0001" + (3).to_bytes(4, "big"), b"\x33" * 16
HOP_ID = "60a6a90c4a200ad9b85163303cb4790a"
HOP_K_IR = "d4ae292af912c6f6d28384d69c569ef6a23c442ba0d794d45826e37ed915a0d2"
HOP_K_RI = "4d4bfee989139bb1f7735546b4e4bdc8bbeae7cce3cbabfae7bbc319791d6af9"


def priv(tag: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(hashlib.sha256(tag).digest())


def _run():
    def rd(net, peer, key, nonce):
        return hashlib.sha512(b"vector" + peer + key + nonce).digest()

    def hooks(evidence):
        return AttestationHooks(rd, lambda _rd: evidence, lambda ev, _rd, _p: {"ev": ev})

    i = InitiatorHandshake(
        ChannelIdentity(NET, PEER_I, ChannelKeyPair(priv(b"static-i"))), hooks(EV_I)
    )
    r = ResponderHandshake(
        ChannelIdentity(NET, PEER_R, ChannelKeyPair(priv(b"static-r"))), hooks(EV_R)
    )
    for hs, tag, nonce in ((i, b"ephemeral-i", N_I), (r, b"ephemeral-r", N_R)):
        hs._eph = priv(tag)
        hs._e = public_bytes(hs._eph.public_key())
        hs._n = nonce
    m3 = i.receive(r.receive(i.start()))
    m4 = r.receive(m3)
    i.receive(m4)
    return i, r, m3, m4


def test_implementation_reproduces_the_published_vector():
    i, r, m3, m4 = _run()
    assert i.transcript.hex() == r.transcript.hex() == TRANSCRIPT
    assert msgpack.unpackb(m3)["conf"].hex() == CONF_I
    assert msgpack.unpackb(m4)["conf"].hex() == CONF_R
    ci, cr = i.channel(), r.channel()
    assert bytes(ci._send.key).hex() == K_I2R and bytes(ci._recv.key).hex() == K_R2I
    frame = ci.seal(b"hello tensor", task_id=b"task-0001", stage=3, kind=RecordKind.TENSOR)
    assert bytes(frame).hex() == FRAME
    assert cr.open(frame).payload == b"hello tensor"
    assert bytes(_ratchet(bytearray(bytes.fromhex(K_I2R)), 1)).hex() == K_I2R_EPOCH1
    assert bytes(ci._exporter).hex() == EXPORTER
    hop = ci.derive_hop(HOP_LABEL, HOP_SALT)
    assert hop.channel_id.hex() == HOP_ID
    assert (bytes(hop._send.key).hex(), bytes(hop._recv.key).hex()) == (HOP_K_IR, HOP_K_RI)


def test_spec_recomputation_matches_the_vector():
    s_i, s_r, e_i, e_r = (
        priv(t) for t in (b"static-i", b"static-r", b"ephemeral-i", b"ephemeral-r")
    )
    pub = {
        k: public_bytes(v.public_key())
        for k, v in {"si": s_i, "sr": s_r, "ei": e_i, "er": e_r}.items()
    }
    assert (pub["si"].hex(), pub["sr"].hex()) == (STATIC_I_PUB, STATIC_R_PUB)
    assert (pub["ei"].hex(), pub["er"].hex()) == (EPH_I_PUB, EPH_R_PUB)

    def x(a, b):
        return a.exchange(X25519PublicKey.from_public_bytes(b))

    ikm = x(e_i, pub["er"]) + x(e_i, pub["sr"]) + x(s_i, pub["er"]) + x(s_i, pub["sr"])
    fields = [
        b"/p2pinfer/channel/1.0.0", NET.encode(), PEER_I, PEER_R, pub["si"], pub["sr"],
        pub["ei"], pub["er"], hashlib.sha256(EV_I).digest(), hashlib.sha256(EV_R).digest(),
        N_I, N_R,
    ]  # fmt: skip
    th = hashlib.sha256(b"".join(struct.pack(">I", len(f)) + f for f in fields)).digest()
    assert th.hex() == TRANSCRIPT
    okm = HKDF(SHA256(), 160, salt=th, info=b"p2pinfer/channel/1 keys").derive(ikm)
    assert okm[:32].hex() == K_I2R and okm[32:64].hex() == K_R2I
    assert okm[128:].hex() == EXPORTER
    tag_i = hmac.new(okm[64:96], b"p2pinfer/channel/1 initiator finished" + th, "sha256")
    tag_r = hmac.new(okm[96:128], b"p2pinfer/channel/1 responder finished" + th, "sha256")
    assert (tag_i.hexdigest(), tag_r.hexdigest()) == (CONF_I, CONF_R)

    task = b"task-0001"
    header = struct.pack(">BBBBIIQ", 1, 2, len(task), 0, 3, 0, 0) + task
    nonce = struct.pack(">IQ", (0 << 31) | 0, 0)
    sealed = AESGCM(okm[:32]).encrypt(nonce, b"hello tensor", th[:16] + header)
    assert (header + sealed).hex() == FRAME
    next_key = HKDFExpand(SHA256(), 32, b"p2pinfer/channel/1 rekey" + struct.pack(">I", 1))
    assert next_key.derive(okm[:32]).hex() == K_I2R_EPOCH1

    info = b"p2pinfer/channel/1 hop" + struct.pack(">I", len(HOP_LABEL)) + HOP_LABEL
    hop = HKDF(SHA256(), 64, salt=HOP_SALT, info=info).derive(okm[128:])
    assert (hop[:32].hex(), hop[32:].hex()) == (HOP_K_IR, HOP_K_RI)
    hop_id = hashlib.sha256(b"p2pinfer/channel/1 hop-id" + th[:16])
    for part in (HOP_SALT, HOP_LABEL):
        hop_id.update(struct.pack(">I", len(part)) + part)
    assert hop_id.digest()[:16].hex() == HOP_ID
