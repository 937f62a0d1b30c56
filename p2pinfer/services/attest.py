"""The node's attestation service: its own evidence, its peers' verified claims, and the
attested channels the inference path seals activations with.

Composition layer (it may use `trust`, `channel` and `net`; those libraries never see each
other). At start the node makes its static X25519 channel key pair where its evidence is made,
attests once to publish the evidence digest in its advert (`tee_digest`), and then:

- `/p2pinfer/attest/1.0.0` (protocols/attest.md "Messages"): mutual attestation with fresh
  challenge nonces. Every peer in the table is attested once its advert is known, again when its
  advert's evidence digest changes or its claims expire. The peer table row records the verified
  level (`extra["tee_level"]`) or, for a rejected peer, the check that failed
  (`extra["tee_error"]`); the requester's planner never routes to a rejected peer.
- `/p2pinfer/channel/1.0.0` (protocols/channel.md): one attested channel per pair of peers,
  opened on first use and kept on its stream; each task hop derives its own keys from it
  ("Hop keys"). Channels and hop keys are erased when the stream ends or the node stops.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import base58
import trio

from p2pinfer.channel import (
    AttestationHooks,
    ChannelClosed,
    ChannelConfig,
    ChannelIdentity,
    ChannelKeyPair,
    HandshakeError,
    SecureChannel,
    accept_channel,
    open_channel,
)
from p2pinfer.config import TrustSection
from p2pinfer.errors import ConfigError, P2PInferError, RemoteError, WireError
from p2pinfer.net.boundary import PeerNetwork
from p2pinfer.trust import (
    AttestationError,
    Attester,
    ChannelAttestation,
    EvidenceBundle,
    Policy,
    SevSnpAttester,
    SimulatedAttester,
    TdxAttester,
    TeeLevel,
    TeeUnavailable,
    VerifiedClaims,
    detect_attester,
    report_data,
)
from p2pinfer.trust.verify import load_policy
from p2pinfer.wire import Message

log = logging.getLogger(__name__)

ATTEST_PROTOCOL = "attest"
CHANNEL_PROTOCOL = "channel"
NONCE_BYTES = 32
KEY_BYTES = 32
MAX_PEER_ID = 128
MAX_NET = 64
MAX_BUNDLE = 1 << 20
MAX_ATTEST_FRAME = MAX_BUNDLE + 4096
MESSAGE_TIMEOUT_S = 10.0
#: how long a channel stream may stay silent (the channel is closed by its owner, not by idling)
CHANNEL_IDLE_S = 24 * 3600.0
#: a peer whose attestation failed is tried again after this long (it may have been fixed)
RETRY_REJECTED_S = 60.0
#: a peer that could not be reached for attestation is tried again after this long
RETRY_UNREACHABLE_S = 2.0
#: hop salts remembered per channel (to refuse a replayed hop); beyond, the channel is renewed
MAX_SEEN_SALTS = 65536
CHECK_CONCURRENCY = 4
#: inbound attestations and handshakes make this node attest (sign, or ask its TEE): at most
#: this many per peer per window (channel.md leaves rate limiting to the node)
INBOUND_PER_WINDOW = 16
INBOUND_WINDOW_S = 10.0


class AttestationFailed(P2PInferError):
    """A peer's evidence did not verify, or the policy refused it; `check` names why."""

    code = "attestation-failed"

    def __init__(self, message: str, check: str) -> None:
        super().__init__(message)
        self.check = check


class AttestationUnavailable(P2PInferError):
    """This node cannot produce evidence now."""

    code = "unavailable"


class AttestationRateLimited(P2PInferError):
    """A peer asked for evidence too often."""

    code = "busy"


class PeerNotAttested(P2PInferError):
    """A hop needs an attested channel to a peer that has none (rejected or unreachable)."""

    code = "unattested"


def peer_id_bytes(peer_id: str) -> bytes:
    """The binary libp2p peer id (multihash) of its base58 text form."""
    try:
        raw = base58.b58decode(peer_id.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise WireError(f"peer id {peer_id[:60]!r} is not base58") from None
    if not 0 < len(raw) <= MAX_PEER_ID:
        raise WireError("peer id has a bad length")
    return raw


def make_attester(trust: TrustSection, identity: Any) -> Attester | None:
    """The attester `trust.attester` names; simulated evidence is signed by the node key."""
    kind = trust.attester
    if kind == "none":
        return None
    if kind == "simulated":
        if trust.production:
            raise ConfigError("trust.attester: a production network refuses the simulated "
                              "attester")
        return SimulatedAttester(sign=identity.sign, public_key=identity.public_key)
    if kind == "amd-sev-snp":
        return SevSnpAttester()
    if kind == "intel-tdx":
        return TdxAttester()
    found = detect_attester()  # "auto": the hardware found, never the simulated one
    if found is None:
        raise ConfigError("trust.attester = 'auto' found no TEE (no SEV-SNP or TDX guest "
                          "device); set attester = 'none', or 'simulated' on a testnet")
    return found


def load_trust_policy(trust: TrustSection) -> Policy:
    """The configured policy with the configured claims lifetime; a production network must
    use a production policy."""
    policy = load_policy(trust.policy)
    policy = dataclasses.replace(policy, claims_ttl_s=max(1, int(trust.claims_ttl_s)))
    if trust.production and not policy.production:
        raise ConfigError(f"trust.policy: a production network needs a production policy; "
                          f"{trust.policy!r} is not one")
    return policy


class _StreamFrames:
    """The channel library's one-frame-per-call stream over the node's framed stream."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_bytes(data)

    async def recv(self) -> bytes | bytearray:
        return await self.stream.recv_bytes()


@dataclass
class PeerTrust:
    """What this node knows of one peer's evidence."""

    claims: VerifiedClaims | None = None
    #: the failed check when the peer was rejected
    error: str | None = None
    #: the advert's evidence digest when this was established
    advert_digest: bytes | None = None
    checked_at: float = 0.0


@dataclass(eq=False)
class PairChannel:
    """One attested channel with a peer, on its own long-lived stream."""

    peer_id: str
    channel: SecureChannel
    stream: Any
    initiator: bool
    seen_salts: set[bytes] = field(default_factory=set)

    @property
    def closed(self) -> bool:
        return self.channel.closed

    @property
    def channel_id(self) -> bytes:
        return self.channel.channel_id


class NodeAttestation:
    """Everything attestation on one node. Run with `await nursery.start(att.run)`."""

    def __init__(self, node: PeerNetwork, *,
                 channel_config: ChannelConfig | None = None) -> None:
        trust = node.config.trust
        self.node = node
        self.trust = trust
        self.policy = load_trust_policy(trust)
        self.attester = make_attester(trust, node.identity)
        self.required = trust.channels_required
        self.channel_config = channel_config or ChannelConfig()
        #: made here, where the evidence is made; the private half never leaves this object
        self.keys = ChannelKeyPair.generate()
        self.local_peer = peer_id_bytes(node.peer_id)
        self.identity = ChannelIdentity(node.network_id, self.local_peer, self.keys)
        self.verifier = ChannelAttestation(self.attester, self.policy)
        self.hooks = AttestationHooks(
            ChannelAttestation.report_data, self.verifier.attest, self.verifier.verify
        )
        self.local_bundle: EvidenceBundle | None = None
        self.local_claims: VerifiedClaims | None = None
        self.local_error: str | None = None
        self.peers: dict[str, PeerTrust] = {}
        #: the channel used to send to each peer
        self.channels: dict[str, PairChannel] = {}
        self._by_id: dict[bytes, PairChannel] = {}
        self._dialing: dict[str, trio.Event] = {}
        self._checking: set[str] = set()
        self._slots = trio.Semaphore(CHECK_CONCURRENCY)
        self._nursery: trio.Nursery | None = None
        self._inbound: dict[str, list[float]] = {}
        #: inbound attestations and handshakes allowed per peer per INBOUND_WINDOW_S
        self.inbound_per_window = INBOUND_PER_WINDOW
        self.counters: dict[str, int] = {
            "attested": 0, "rejected": 0, "unreachable": 0, "served": 0,
            "channels_opened": 0, "channels_accepted": 0, "handshake_failures": 0,
            "rate_limited": 0,
        }

    def __repr__(self) -> str:
        kind = self.attester.kind if self.attester is not None else "none"
        return f"NodeAttestation(attester={kind}, channels_required={self.required})"

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        node = self.node
        node.set_handler(ATTEST_PROTOCOL, self._serve_attest, streaming=True)
        node.set_handler(CHANNEL_PROTOCOL, self._serve_channel, streaming=True)
        if self.attester is not None:
            await self._attest_self()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    self._check_peers(nursery)
                    await trio.sleep(0.25)
        finally:
            self._nursery = None
            self.erase()

    async def _attest_self(self) -> None:
        """Evidence over a zero nonce: its digest goes into the advert; its claims (under our
        own policy) are what `p2pinfer attest show` prints."""
        assert self.attester is not None
        rd = report_data(self.node.network_id, self.local_peer, self.keys.public,
                         bytes(NONCE_BYTES))
        try:
            bundle = await trio.to_thread.run_sync(self.attester.attest, rd)
        except TeeUnavailable as e:
            raise ConfigError(f"trust.attester {self.trust.attester!r}: {e}") from None
        self.local_bundle = bundle
        self.node.update_advert(tee_digest=bundle.digest())
        try:
            self.local_claims = await trio.to_thread.run_sync(
                self.verifier.verify, bundle.encode(), rd, self.local_peer)
        except AttestationError as e:
            self.local_error = e.check
            log.warning("this node's own evidence fails its policy (%s): %s", e.check, e)

    def erase(self) -> None:
        """Close every channel and erase its keys (and every hop key derived from it)."""
        for pc in list(self._by_id.values()):
            pc.channel.close()
        self._by_id.clear()
        self.channels.clear()

    # -- what the rest of the node asks --------------------------------------------------------
    def claims_of(self, peer_id: str) -> VerifiedClaims | None:
        entry = self.peers.get(peer_id)
        if entry is None or entry.claims is None:
            return None
        if entry.claims.expiry <= time.time():
            return None
        return entry.claims

    def tee_level(self, peer_id: str) -> str:
        """The verified level of a peer, as the policy counts it (simulated evidence is level
        `none` under a production policy); `none` when nothing is verified."""
        claims = self.claims_of(peer_id)
        if claims is None:
            return TeeLevel.NONE.label
        level = claims.tee_level
        if claims.simulated and (self.policy.production or not self.policy.allow_simulated):
            level = TeeLevel.NONE
        return level.label

    def rejected(self, peer_id: str) -> str | None:
        entry = self.peers.get(peer_id)
        return entry.error if entry is not None else None

    def routable(self, peer_id: str) -> bool:
        """False for a peer whose evidence was rejected, and, when channels are required, for
        a peer with no verified claims yet."""
        if self.rejected(peer_id) is not None:
            return False
        return not self.required or self.claims_of(peer_id) is not None

    def min_level(self, mode: str) -> str:
        return self.policy.min_level.get(mode, TeeLevel.NONE).label

    def status(self) -> dict[str, Any]:
        return {
            "attester": self.attester.kind if self.attester is not None else "none",
            "channels_required": self.required,
            "evidence_digest": self.local_bundle.digest().hex() if self.local_bundle else None,
            "local_level": self.local_claims.tee_level.label if self.local_claims else None,
            "channels": len(self._by_id),
            "counters": dict(self.counters),
        }

    # -- recording verdicts --------------------------------------------------------------------
    def _advert_digest(self, peer_id: str) -> bytes | None:
        info = self.node.peer(peer_id)
        return info.tee_digest if info is not None else None

    def _record_claims(self, peer_id: str, claims: VerifiedClaims) -> None:
        self.peers[peer_id] = PeerTrust(claims, None, self._advert_digest(peer_id), time.time())
        self.counters["attested"] += 1
        self._mark(peer_id)

    def _record_failure(self, peer_id: str, check: str) -> None:
        self.peers[peer_id] = PeerTrust(None, check, self._advert_digest(peer_id), time.time())
        self.counters["rejected"] += 1
        self._mark(peer_id)
        for pc in [c for c in self._by_id.values() if c.peer_id == peer_id]:
            self._drop(pc)

    def _mark(self, peer_id: str) -> None:
        info = self.node.peer(peer_id)
        if info is None:
            return
        entry = self.peers.get(peer_id)
        if entry is not None and entry.error is not None:
            info.extra["tee_error"] = entry.error
            info.extra.pop("tee_level", None)
        elif self.claims_of(peer_id) is not None:
            info.extra["tee_level"] = self.tee_level(peer_id)
            info.extra.pop("tee_error", None)
        else:
            info.extra.pop("tee_level", None)
            info.extra.pop("tee_error", None)

    def _check_peers(self, nursery: trio.Nursery) -> None:
        now = time.time()
        for info in self.node.peers():
            pid = info.peer_id
            self._mark(pid)
            if self.attester is None or pid in self._checking:
                continue
            entry = self.peers.get(pid)
            if info.tee_digest is None:
                continue  # advertises no evidence: level none, nothing to check
            if entry is not None and entry.advert_digest == info.tee_digest:
                if entry.claims is not None and entry.claims.expiry > now:
                    continue
                if entry.error is not None and now - entry.checked_at < RETRY_REJECTED_S:
                    continue
                if (entry.claims is None and entry.error is None
                        and now - entry.checked_at < RETRY_UNREACHABLE_S):
                    continue
            self._checking.add(pid)
            nursery.start_soon(self._check_peer, pid)

    async def _check_peer(self, peer_id: str) -> None:
        try:
            async with self._slots:
                await self.attest_peer(peer_id)
        except AttestationFailed:
            pass  # recorded
        except (P2PInferError, OSError, trio.TooSlowError) as e:
            self.counters["unreachable"] += 1
            log.debug("attesting %s failed: %s", peer_id, e)
            entry = self.peers.get(peer_id)
            if entry is None or (entry.claims is None and entry.error is None):
                self.peers[peer_id] = PeerTrust(None, None, self._advert_digest(peer_id),
                                                time.time())
        finally:
            self._checking.discard(peer_id)

    async def _open(self, peer_id: str, protocol: str) -> Any:
        """A stream to `peer_id`, dialing it first from its advert's addresses if needed."""
        node = self.node
        if peer_id not in node.connected_peers():
            info = node.peer(peer_id)
            for addr in (info.addrs if info is not None else [])[:8]:
                full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"
                try:
                    await node.dial(full)
                    break
                except P2PInferError as e:
                    log.debug("dialing %s at %s failed: %s", peer_id, addr, e)
        return await node.open_stream(peer_id, protocol)

    # -- /p2pinfer/attest/1.0.0 ------------------------------------------------------------------
    def _fields(self, msg: Message, remote: bytes, *, nonce: bool, ev: bool) -> dict[str, Any]:
        net = msg.get("net", str)
        if not 0 < len(net.encode()) <= MAX_NET or net != self.node.network_id:
            raise _WrongNetwork(f"peer is on network {net[:64]!r}")
        peer = msg.get("peer", bytes)
        if not 0 < len(peer) <= MAX_PEER_ID or peer != remote:
            raise WireError("`peer` is not the libp2p id of the stream's remote end")
        key = msg.get("key", bytes)
        if len(key) != KEY_BYTES:
            raise WireError("`key` must be a 32-byte X25519 key")
        out: dict[str, Any] = {"key": key}
        if nonce:
            n = msg.get("nonce", bytes)
            if len(n) != NONCE_BYTES:
                raise WireError("`nonce` must be 32 bytes")
            out["nonce"] = n
        if ev:
            e = msg.get("ev", bytes)
            if not 0 < len(e) <= MAX_BUNDLE:
                raise WireError("`ev` must be 1 byte .. 1 MiB")
            out["ev"] = e
        return out

    async def _verify(self, peer_id: str, evidence: bytes, key: bytes, nonce: bytes
                      ) -> VerifiedClaims:
        remote = peer_id_bytes(peer_id)
        expected = report_data(self.node.network_id, remote, key, nonce)
        try:
            claims = await trio.to_thread.run_sync(
                self.verifier.verify, evidence, expected, remote)
        except AttestationError as e:
            self._record_failure(peer_id, e.check)
            raise AttestationFailed(f"peer evidence rejected ({e.check})", e.check) from None
        self._record_claims(peer_id, claims)
        return claims

    async def _evidence(self, nonce: bytes) -> bytes:
        if self.attester is None:
            raise AttestationUnavailable("this node has no attester")
        rd = report_data(self.node.network_id, self.local_peer, self.keys.public, nonce)
        try:
            bundle = await trio.to_thread.run_sync(self.attester.attest, rd)
        except TeeUnavailable as e:
            raise AttestationUnavailable(f"cannot make evidence now: {e}") from None
        return bundle.encode()

    async def attest_peer(self, peer_id: str) -> VerifiedClaims:
        """Mutual attestation with `peer_id`; returns its verified claims (also recorded) or
        raises `AttestationFailed` naming the failed check."""
        remote = peer_id_bytes(peer_id)
        net = self.node.network_id
        n_a = secrets.token_bytes(NONCE_BYTES)
        async with await self._open(peer_id, ATTEST_PROTOCOL) as s:
            s.timeout_s = MESSAGE_TIMEOUT_S
            s.max_frame = MAX_ATTEST_FRAME
            await s.send("attest-challenge", {
                "net": net, "peer": self.local_peer, "key": self.keys.public, "nonce": n_a})
            try:
                m2 = await s.recv(expect={"attest-evidence"})
            except RemoteError as e:
                if e.code == "attestation-failed":
                    raise AttestationFailed(f"peer refused us: {e.message}", "peer-refused"
                                            ) from None
                raise
            f = self._fields(m2, remote, nonce=True, ev=True)
            try:
                claims = await self._verify(peer_id, f["ev"], f["key"], n_a)
            except AttestationFailed as e:
                await _refuse(s, e.check)
                raise
            ev_a = await self._evidence(f["nonce"])
            await s.send("attest-evidence", {
                "net": net, "peer": self.local_peer, "key": self.keys.public, "ev": ev_a})
            try:
                await s.recv(expect={"attest-result"})
            except RemoteError as e:
                log.debug("peer %s refused our evidence: %s", peer_id, e)
        return claims

    def _admit(self, peer_id: str) -> None:
        """Refuse a peer's inbound attestation or handshake beyond the per-peer rate."""
        now = time.monotonic()
        if len(self._inbound) > 4096:
            self._inbound = {p: t for p, t in self._inbound.items()
                             if t and now - t[-1] < INBOUND_WINDOW_S}
        recent = [t for t in self._inbound.get(peer_id, ()) if now - t < INBOUND_WINDOW_S]
        if len(recent) >= self.inbound_per_window:
            self.counters["rate_limited"] += 1
            self._inbound[peer_id] = recent
            raise AttestationRateLimited(
                f"more than {self.inbound_per_window} attestations in {INBOUND_WINDOW_S:g} s; "
                "try later")
        recent.append(now)
        self._inbound[peer_id] = recent

    async def _serve_attest(self, s: Any, peer_id: str) -> None:
        self._admit(peer_id)
        self.counters["served"] += 1
        s.timeout_s = MESSAGE_TIMEOUT_S
        s.max_frame = MAX_ATTEST_FRAME
        remote = peer_id_bytes(peer_id)
        m1 = await s.recv(expect={"attest-challenge"})
        f1 = self._fields(m1, remote, nonce=True, ev=False)
        n_b = secrets.token_bytes(NONCE_BYTES)
        ev_b = await self._evidence(f1["nonce"])
        await s.send("attest-evidence", {
            "net": self.node.network_id, "peer": self.local_peer, "key": self.keys.public,
            "nonce": n_b, "ev": ev_b})
        m3 = await s.recv(expect={"attest-evidence"})
        f3 = self._fields(m3, remote, nonce=False, ev=True)
        if f3["key"] != f1["key"]:
            raise WireError("the channel key changed within one exchange")
        err: AttestationFailed | None = None
        try:
            await self._verify(peer_id, f3["ev"], f3["key"], n_b)
        except AttestationFailed as e:
            err = e
        if err is not None:
            await _refuse(s, err.check)
            return
        await s.send("attest-result", {"ok": True})

    # -- /p2pinfer/channel/1.0.0 -----------------------------------------------------------------
    def channel_by_id(self, channel_id: bytes) -> PairChannel | None:
        pc = self._by_id.get(bytes(channel_id))
        if pc is not None and pc.closed:
            self._drop(pc)
            return None
        return pc

    def _register(self, pc: PairChannel) -> None:
        self._by_id[pc.channel_id] = pc
        current = self.channels.get(pc.peer_id)
        if current is None or current.closed or pc.initiator:
            self.channels[pc.peer_id] = pc
        claims = pc.channel.peer.claims
        if isinstance(claims, VerifiedClaims):
            self._record_claims(pc.peer_id, claims)

    def _drop(self, pc: PairChannel) -> None:
        pc.channel.close()
        self._by_id.pop(pc.channel_id, None)
        if self.channels.get(pc.peer_id) is pc:
            del self.channels[pc.peer_id]

    def _handshake_failed(self, peer_id: str, err: HandshakeError) -> None:
        self.counters["handshake_failures"] += 1
        if err.check == "evidence":
            self._record_failure(peer_id, err.evidence_check or "evidence")

    async def channel_to(self, peer_id: str) -> PairChannel:
        """The attested channel to `peer_id`, opened (handshake, mutual attestation) on first
        use and reused after. Raises `PeerNotAttested` for a rejected peer."""
        for _ in range(3):
            pc = self.channels.get(peer_id)
            if pc is not None and not pc.closed:
                return pc
            if pc is not None:
                self._drop(pc)
            pending = self._dialing.get(peer_id)
            if pending is None:
                break
            await pending.wait()
        check = self.rejected(peer_id)
        if check is not None:
            raise PeerNotAttested(f"peer {peer_id} failed attestation ({check})")
        if self.attester is None:
            raise PeerNotAttested("this node has no attester, so it opens no channels")
        done = trio.Event()
        self._dialing[peer_id] = done
        try:
            return await self._open_channel(peer_id)
        finally:
            del self._dialing[peer_id]
            done.set()

    async def _open_channel(self, peer_id: str) -> PairChannel:
        stream = await self._open(peer_id, CHANNEL_PROTOCOL)
        stream.max_frame = max(stream.max_frame, MAX_ATTEST_FRAME)
        try:
            sc = await open_channel(
                _StreamFrames(stream), self.identity, self.hooks,
                remote_peer_id=peer_id_bytes(peer_id), config=self.channel_config)
        except HandshakeError as e:
            await stream.aclose()
            self._handshake_failed(peer_id, e)
            raise PeerNotAttested(f"no attested channel to {peer_id}: {e}") from None
        except BaseException:
            await stream.aclose()
            raise
        stream.timeout_s = CHANNEL_IDLE_S
        pc = PairChannel(peer_id, sc, stream, initiator=True)
        self._register(pc)
        self.counters["channels_opened"] += 1
        if self._nursery is not None:
            self._nursery.start_soon(self._hold, pc, True)
        return pc

    async def _serve_channel(self, s: Any, peer_id: str) -> None:
        self._admit(peer_id)
        s.max_frame = max(s.max_frame, MAX_ATTEST_FRAME)
        if self.attester is None:
            raise AttestationUnavailable("this node has no attester")
        try:
            sc = await accept_channel(
                _StreamFrames(s), self.identity, self.hooks,
                remote_peer_id=peer_id_bytes(peer_id), config=self.channel_config)
        except HandshakeError as e:
            self._handshake_failed(peer_id, e)
            return  # the handshake already answered with its error reply
        s.timeout_s = CHANNEL_IDLE_S
        pc = PairChannel(peer_id, sc, s, initiator=False)
        self._register(pc)
        self.counters["channels_accepted"] += 1
        await self._hold(pc, False)

    async def _hold(self, pc: PairChannel, owner: bool) -> None:
        """Keep a channel while its stream lives; the peer's close (or the stream's end)
        erases it. Records are never sent on the channel stream itself: activations travel
        sealed under hop keys inside the stage protocol."""
        try:
            while True:
                await pc.channel.recv()
        except (ChannelClosed, P2PInferError, OSError):
            pass
        finally:
            self._drop(pc)
            if owner:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await pc.stream.aclose()

    async def close_channel(self, peer_id: str) -> None:
        """Close our channel to a peer with an authenticated close (keys erased both ends)."""
        pc = self.channels.get(peer_id)
        if pc is not None:
            await pc.channel.aclose()
            self._drop(pc)


async def _refuse(s: Any, check: str) -> None:
    """The `attestation-failed` error reply with the failed check (attest.md "Error reply")."""
    await s.send("error", {"code": "attestation-failed", "check": check,
                           "message": f"your evidence failed the {check!r} check"})


class _WrongNetwork(WireError):
    code = "wrong-network"
