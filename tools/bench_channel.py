"""Attested channel cost: encrypted vs. plain throughput over libp2p, and handshake latency.

Two libp2p 0.8.1 hosts in one process (TCP + Noise only + yamux) on loopback. For each
activation size the sender pushes a batch of frames on one stream and waits for a one-byte
acknowledgement; "plain" writes the raw bytes with p2pinfer.wire.framing, "channel" seals every
frame with the attested AES-256-GCM channel and the receiver opens it. The handshake is timed
with simulated evidence (p2pinfer.trust's SimulatedAttester, Ed25519-signed; a local Ed25519
stand-in if trust is not importable), split into attest / verify / the rest (X25519, HKDF,
HMAC, msgpack), then end to end over a fresh libp2p stream.

Then the same over the node's own stack: two `p2pinfer.Node`s in one process with simulated
TEEs, one stage-protocol-like stream between them, activations packed by the inference path's
codecs (`PlainHop` vs. `ChannelHop`: tensor to wire, seal under hop keys, frame, unpack, open,
tensor), and the node's attestation (`/p2pinfer/attest/1.0.0`) and channel opening timed.

    python tools/bench_channel.py [--trials 5] [--sizes 1,8,64] [--node-only]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from p2pinfer.channel import (
    AttestationHooks,
    ChannelIdentity,
    ChannelKeyPair,
    InitiatorHandshake,
    RecordLayer,
    ResponderHandshake,
    accept_channel,
    open_channel,
)
from p2pinfer.errors import P2PInferError
from p2pinfer.wire.framing import read_frame, write_frame

MIB = 1 << 20
NETWORK = "bench"
PLAIN = "/p2pinfer/bench-plain/1.0.0"
SEALED = "/p2pinfer/bench-channel/1.0.0"
MAX_FRAME = 80 * MIB
BATCH_BYTES = 64 * MIB  # bytes per timed batch (at least 2 frames)
STREAM_ENDED = (P2PInferError, StreamError, OSError, EOFError, trio.BrokenResourceError)


class Framed:
    """A libp2p stream as `send(bytes)` / `recv() -> bytes`, one frame per call."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def send(self, data: bytes | bytearray) -> None:
        await write_frame(self.stream, data)

    async def recv(self) -> bytearray:
        return await read_frame(self.stream, MAX_FRAME)


# -- attestation for the benchmark --------------------------------------------------------


def _simulated_hooks(signing: Ed25519PrivateKey, peer_keys: dict[bytes, bytes]) -> AttestationHooks:
    """Hooks over p2pinfer.trust's simulated attester and verifier (testnet policy)."""
    from p2pinfer.trust import EvidenceBundle, Policy, SimulatedAttester, report_data, verify_bundle

    attester = SimulatedAttester(signing)
    policy = Policy.preset("testnet")

    def attest(rd: bytes) -> bytes:
        return attester.attest(rd).encode()

    def verify(evidence: bytes, expected: bytes, peer_id: bytes) -> Any:
        return verify_bundle(
            EvidenceBundle.decode(evidence),
            expected_report_data=expected,
            policy=policy,
            now=time.time(),
            peer_public_key=peer_keys[peer_id],
        )

    return AttestationHooks(report_data, attest, verify)


def _standin_hooks(signing: Ed25519PrivateKey, peer_keys: dict[bytes, bytes]) -> AttestationHooks:
    """Ed25519-signed report data: the same cost profile as simulated evidence."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    def report_data(net: str, peer: bytes, key: bytes, nonce: bytes) -> bytes:
        h = hashlib.sha512(b"bench binding")
        for part in (net.encode(), peer, key, nonce):
            h.update(len(part).to_bytes(4, "big") + part)
        return h.digest()

    def attest(rd: bytes) -> bytes:
        return rd + signing.sign(rd)

    def verify(evidence: bytes, expected: bytes, peer_id: bytes) -> Any:
        Ed25519PublicKey.from_public_bytes(peer_keys[peer_id]).verify(evidence[64:], evidence[:64])
        if evidence[:64] != expected:
            raise ValueError("binding")
        return {"kind": "stand-in"}

    return AttestationHooks(report_data, attest, verify)


def make_hooks(
    signing: Ed25519PrivateKey, peer_keys: dict[bytes, bytes]
) -> tuple[AttestationHooks, str]:
    try:
        return _simulated_hooks(signing, peer_keys), "trust simulated"
    except ImportError:
        return _standin_hooks(signing, peer_keys), "Ed25519 stand-in"


class Timed:
    """Wraps hooks so the time spent attesting and verifying is summed."""

    def __init__(self, hooks: AttestationHooks) -> None:
        self.attest_s = 0.0
        self.verify_s = 0.0
        self.hooks = AttestationHooks(
            hooks.report_data,
            self._wrap(hooks.attest, "attest_s"),
            self._wrap(hooks.verify, "verify_s"),
        )

    def _wrap(self, fn: Callable[..., Any], slot: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                setattr(self, slot, getattr(self, slot) + time.perf_counter() - t0)

        return call


# -- libp2p ---------------------------------------------------------------------------------


def make_host() -> tuple[Any, Any]:
    kp = create_new_key_pair()
    noise = NoiseTransport(kp, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(key_pair=kp, sec_opt={NOISE_ID: noise}, muxer_preference="YAMUX"), kp


def peer_of(host: Any) -> tuple[bytes, Ed25519PrivateKey]:
    return host.get_id().to_bytes(), Ed25519PrivateKey.generate()


async def timed_batch(
    send: Callable[[bytes], Any], ack: Callable[[], Any], payload: bytes, count: int
) -> float:
    """MB/s of one batch of `count` frames ending with an acknowledgement."""
    t0 = time.perf_counter()
    for _ in range(count):
        await send(payload)
    await ack()
    return len(payload) * count / (time.perf_counter() - t0) / 1e6


async def bench(sizes: list[int], trials: int) -> None:
    host_a, _ = make_host()
    host_b, _ = make_host()
    id_a, sign_a = peer_of(host_a)
    id_b, sign_b = peer_of(host_b)
    pub = {
        id_a: sign_a.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        id_b: sign_b.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
    }
    hooks_a, attester = make_hooks(sign_a, pub)
    hooks_b, _ = make_hooks(sign_b, pub)
    ident_a = ChannelIdentity(NETWORK, id_a, ChannelKeyPair.generate())
    ident_b = ChannelIdentity(NETWORK, id_b, ChannelKeyPair.generate())

    async def plain_handler(stream: Any) -> None:
        framed = Framed(stream)
        with contextlib.suppress(*STREAM_ENDED):
            while True:
                if len(await framed.recv()) == 0:
                    await framed.send(b"k")

    async def sealed_handler(stream: Any) -> None:
        with contextlib.suppress(*STREAM_ENDED):
            async with await accept_channel(Framed(stream), ident_b, hooks_b) as ch:
                while True:
                    if len((await ch.recv()).payload) == 0:
                        await ch.send(b"k")

    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with host_a.run(listen_addrs=listen), host_b.run(listen_addrs=listen):
        host_b.set_stream_handler(PLAIN, plain_handler)
        host_b.set_stream_handler(SEALED, sealed_handler)
        addr = f"{host_b.get_addrs()[0]}"
        if "/p2p/" not in addr:
            addr += f"/p2p/{host_b.get_id()}"
        await host_a.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))

        plain = Framed(await host_a.new_stream(host_b.get_id(), [PLAIN]))
        sealed_stream = Framed(await host_a.new_stream(host_b.get_id(), [SEALED]))
        channel = await open_channel(sealed_stream, ident_a, hooks_a, remote_peer_id=id_b)

        async def plain_ack() -> None:
            await plain.send(b"")
            await plain.recv()

        async def sealed_ack() -> None:
            await channel.send(b"")
            await channel.recv()

        print(
            f"channel throughput over libp2p 0.8.1 (TCP + Noise + yamux, one process, loopback),"
            f" median of {trials} alternating batches of {BATCH_BYTES // MIB} MiB"
        )
        print(f"{'size':>8} | {'plain MB/s':>11} | {'channel MB/s':>12} | {'ratio':>6}")
        print("-" * 48)
        for size_mib in sizes:
            payload = os.urandom(size_mib * MIB)
            count = max(2, BATCH_BYTES // len(payload))
            await timed_batch(plain.send, plain_ack, payload, count)  # warm-up, discarded
            await timed_batch(channel.send, sealed_ack, payload, count)
            plain_rates, sealed_rates, ratios = [], [], []
            for _ in range(trials):  # alternate so load drift hits both alike
                p = await timed_batch(plain.send, plain_ack, payload, count)
                s = await timed_batch(channel.send, sealed_ack, payload, count)
                plain_rates.append(p)
                sealed_rates.append(s)
                ratios.append(s / p)
            p, s, r = (statistics.median(x) for x in (plain_rates, sealed_rates, ratios))
            print(f"{size_mib:>5} MiB | {p:>11.1f} | {s:>12.1f} | {r:>5.2f}x")
        await channel.aclose()

        # end-to-end handshake over a fresh stream (stream open + 4 messages + crypto)
        e2e = []
        for _ in range(10):
            t0 = time.perf_counter()
            stream = Framed(await host_a.new_stream(host_b.get_id(), [SEALED]))
            ch = await open_channel(stream, ident_a, hooks_a, remote_peer_id=id_b)
            e2e.append(time.perf_counter() - t0)
            await ch.aclose()
            await stream.stream.close()

    # in-process handshake, split into attest / verify / the rest
    total, att, ver = [], [], []
    for _ in range(50):
        ta, tb = Timed(hooks_a), Timed(hooks_b)
        i = InitiatorHandshake(ident_a, ta.hooks)
        r = ResponderHandshake(ident_b, tb.hooks)
        t0 = time.perf_counter()
        i.receive(r.receive(i.receive(r.receive(i.start()))))
        total.append(time.perf_counter() - t0)
        att.append(ta.attest_s + tb.attest_s)
        ver.append(ta.verify_s + tb.verify_s)
    med = statistics.median
    rest = [t - a - v for t, a, v in zip(total, att, ver, strict=True)]
    print()
    print(f"handshake latency ({attester} evidence), median ms")
    print(f"{'step':>34} | {'ms':>7}")
    print("-" * 45)
    print(f"{'attest (both sides)':>34} | {med(att) * 1e3:>7.2f}")
    print(f"{'verify (both sides)':>34} | {med(ver) * 1e3:>7.2f}")
    print(f"{'derive: X25519, HKDF, HMAC, msgpack':>34} | {med(rest) * 1e3:>7.2f}")
    print(f"{'whole handshake, in process':>34} | {med(total) * 1e3:>7.2f}")
    print(f"{'new stream + handshake over libp2p':>34} | {med(e2e) * 1e3:>7.2f}")


def record_layer_alone(sizes: list[int], trials: int) -> None:
    """Seal and open without any network, reusing buffers the way SecureChannel does, against
    a plain copy of the same bytes into a reused buffer."""
    cid, k1, k2 = os.urandom(16), os.urandom(32), os.urandom(32)
    tx = RecordLayer(cid, bytearray(k1), bytearray(k2), send_direction=0)
    rx = RecordLayer(cid, bytearray(k2), bytearray(k1), send_direction=1)
    print()
    print(f"record layer alone (no network, buffers reused), median of {trials + 2}, MB/s")
    print(f"{'size':>8} | {'copy':>8} | {'seal':>8} | {'open':>8}")
    print("-" * 42)
    for size_mib in sizes:
        payload = os.urandom(size_mib * MIB)
        target = bytearray(len(payload))
        send_buffer = bytearray(RecordLayer.frame_size(len(payload)))
        spare: bytearray | None = None
        copy, seal, opened = [], [], []
        for _ in range(trials + 2):
            t0 = time.perf_counter()
            target[:] = payload
            t1 = time.perf_counter()
            tx.seal(payload, out=send_buffer)
            t2 = time.perf_counter()
            received = bytearray(send_buffer)  # what the stream hands over (not timed)
            t3 = time.perf_counter()
            rx.open(received, out=spare)
            t4 = time.perf_counter()
            spare = received
            copy.append(t1 - t0)
            seal.append(t2 - t1)
            opened.append(t4 - t3)
        c, se, op = (statistics.median(x) for x in (copy, seal, opened))
        mb = len(payload) / 1e6
        print(f"{size_mib:>5} MiB | {mb / c:>8.0f} | {mb / se:>8.0f} | {mb / op:>8.0f}")


async def node_bench(sizes: list[int], trials: int) -> None:
    """Activation throughput over the node's stream with and without attested channels, and
    the node's attestation and channel-opening latency."""
    import tempfile

    import torch

    from p2pinfer.config import config_from_dict
    from p2pinfer.inference.hop import HopContext, PlainHop
    from p2pinfer.inference.secure_hop import ChannelHop
    from p2pinfer.node import Node
    from p2pinfer.services.tensor import tensor_wire_view

    hidden = 1024
    tmp = Path(tempfile.mkdtemp(prefix="bench-channel-"))

    def conf(name: str, boot: list[str]) -> Any:
        return config_from_dict({
            "node": {"name": name, "data_dir": str(tmp / name), "network_id": "bench-net"},
            "net": {"bootstrap": boot, "dht": False}, "control": {"enabled": False},
            "trust": {"attester": "simulated", "policy": "testnet"},
        })

    async with Node(conf("a", [])) as a, Node(conf("b", [a.addrs[0]])) as b:
        await b.connect(a.addrs[0])
        class ZeroCopyPlainHop(PlainHop):
            """A stronger reference than PlainHop: the tensor is written from its own memory."""

            async def pack(self, x: Any, ctx: Any) -> dict[str, Any]:
                return {"hidden": tensor_wire_view(x)}

        codecs_b = {"plain": PlainHop(), "zero-copy": PlainHop(),
                    "channel": ChannelHop(b.attestation)}
        codecs_a = {"plain": PlainHop(), "zero-copy": ZeroCopyPlainHop(),
                    "channel": ChannelHop(a.attestation)}
        task = os.urandom(16)

        async def serve(stream: Any, peer: str) -> None:
            stream.timeout_s = 600
            while True:
                msg = await stream.recv()
                if msg.t == "ack":
                    await stream.send("ack")
                    continue
                seq = msg.get("seq", int)
                codec = codecs_b[msg.get("codec", str)]
                await codec.unpack(msg.fields, HopContext(task, 1, seq, peer),
                                   hidden_size=hidden, dtype="float32",
                                   max_bytes=b.config.limits.max_tensor_bytes)

        b.set_handler("bench-hop", serve, streaming=True)
        stream = await a.open_stream(b.peer_id, "bench-hop")
        stream.timeout_s = 600
        seq = 0

        async def batch(name: str, x: Any, count: int) -> float:
            nonlocal seq
            codec = codecs_a[name]
            t0 = time.perf_counter()
            for _ in range(count):
                fields = await codec.pack(x, HopContext(task, 1, seq, b.peer_id))
                await stream.send("step", {"seq": seq, "codec": name, **fields})
                seq += 1
            await stream.send("ack")
            await stream.recv(expect={"ack"})
            return x.numel() * 4 * count / (time.perf_counter() - t0) / 1e6

        print()
        print("activation throughput over the node's stream (two p2pinfer Nodes, one process, "
              f"loopback), float32 [1, T, {hidden}], median of {trials} alternating batches")
        print("plain = PlainHop (the inference path's default: copies the tensor to bytes); "
              "zero-copy = plain written from the tensor's memory")
        print(f"{'size':>8} | {'plain MB/s':>10} | {'zero-copy':>9} | {'channel MB/s':>12} | "
              f"{'vs plain':>8} | {'vs zero-copy':>12}")
        print("-" * 76)
        for size_mib in sizes:
            x = torch.randn(1, size_mib * MIB // (4 * hidden), hidden)
            count = max(2, BATCH_BYTES // (size_mib * MIB))
            for name in codecs_a:  # warm-up (and channel opening), discarded
                await batch(name, x, count)
            rates: dict[str, list[float]] = {name: [] for name in codecs_a}
            r_plain, r_zero = [], []
            for _ in range(trials):  # alternate so load drift hits all alike
                got = {name: await batch(name, x, count) for name in codecs_a}
                for name, v in got.items():
                    rates[name].append(v)
                r_plain.append(got["channel"] / got["plain"])
                r_zero.append(got["channel"] / got["zero-copy"])
            p, z, c = (statistics.median(rates[n]) for n in ("plain", "zero-copy", "channel"))
            rp, rz = statistics.median(r_plain), statistics.median(r_zero)
            print(f"{size_mib:>5} MiB | {p:>10.1f} | {z:>9.1f} | {c:>12.1f} | {rp:>7.2f}x | "
                  f"{rz:>11.2f}x")
        await stream.aclose()

        b.attestation.inbound_per_window = 1 << 30  # the benchmark attests back to back
        attest, opening = [], []
        for _ in range(10):
            t0 = time.perf_counter()
            await a.attestation.attest_peer(b.peer_id)
            attest.append(time.perf_counter() - t0)
            await a.attestation.close_channel(b.peer_id)
            t0 = time.perf_counter()
            await a.attestation.channel_to(b.peer_id)
            opening.append(time.perf_counter() - t0)
        med = statistics.median
        print()
        print("node attestation and channel opening (simulated evidence), median of 10, ms")
        print(f"{'step':>40} | {'ms':>7}")
        print("-" * 51)
        print(f"{'mutual attest: /p2pinfer/attest/1.0.0':>40} | {med(attest) * 1e3:>7.2f}")
        print(f"{'open channel: stream + handshake':>40} | {med(opening) * 1e3:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--sizes", default="1,8,64", help="activation sizes in MiB")
    parser.add_argument("--node-only", action="store_true",
                        help="only the node-level throughput and attestation tables")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    trio.run(node_bench, sizes, args.trials)
    if not args.node_only:
        trio.run(bench, sizes, args.trials)
        record_layer_alone(sizes, args.trials)


if __name__ == "__main__":
    main()
