"""A local testnet: N `p2pinfer node` processes on loopback joined through one bootstrap peer.

Used by `p2pinfer testnet`, `p2pinfer demo` and the multi-process tests. Every process is ours:
we start it in its own session, remember its PID, and stop it with SIGINT, then SIGTERM, then
SIGKILL after bounded waits. Nothing else is ever signalled.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import trio

from p2pinfer.config import NodeSection
from p2pinfer.errors import P2PInferError

#: the network id every command and config uses unless told otherwise
DEFAULT_NETWORK_ID = NodeSection.network_id


class TestnetError(P2PInferError):
    """A testnet peer failed to start, died, or the network did not converge in time."""

    __test__ = False  # not a pytest test class


@dataclass
class PeerProcess:
    index: int
    data_dir: Path
    config_path: Path
    ready_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def peer_id(self) -> str:
        return str(self.info.get("peer_id", ""))

    @property
    def addrs(self) -> list[str]:
        return list(self.info.get("addrs", []))

    @property
    def control_path(self) -> str:
        return str(self.info.get("control", ""))

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass(frozen=True)
class ProcessUsage:
    """One reading of a process from /proc (Linux)."""

    pid: int
    rss_bytes: int
    fds: int


def process_usage(pid: int) -> ProcessUsage | None:
    """Resident set size and open file descriptors of `pid`; None if it has gone or /proc
    does not describe it."""
    rss = -1
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return ProcessUsage(pid, rss, fds) if rss >= 0 else None


def serving_plan(layers: dict[str, int], peers: int, redundancy: int = 1, *, k_head: int = 1,
                 k_tail: int = 1) -> list[tuple[str, tuple[int, int]]]:
    """What each of `peers` peers serves so that every model's middle layers
    [k_head, layers - k_tail) are covered by stages of `redundancy` replicas each.

    Peers are shared out over the models in the order given; a model with p peers gets
    p // redundancy stages of near-equal length (at most one per layer), and peers beyond
    stages * redundancy add replicas to the first stages. Entry i is peer i's (model, span)."""
    if redundancy < 1:
        raise TestnetError("--redundancy must be at least 1")
    if not layers:
        raise TestnetError("no model to serve")
    need = len(layers) * redundancy
    if peers < need:
        raise TestnetError(f"{peers} peers cannot serve {len(layers)} model(s) with {redundancy} "
                           f"replicas per stage: pass --peers {need} or more")
    plan: list[tuple[str, tuple[int, int]]] = []
    for i, (model, total) in enumerate(layers.items()):
        share = peers // len(layers) + (1 if i < peers % len(layers) else 0)
        start, end = k_head, total - k_tail
        if end <= start:
            raise TestnetError(f"{model} has {total} layers: nothing is left between the "
                               f"{k_head} local head and {k_tail} local tail layers")
        stages = min(share // redundancy, end - start)
        bounds = [start + (end - start) * s // stages for s in range(stages + 1)]
        spans = list(itertools.pairwise(bounds))
        plan.extend((model, spans[j % stages]) for j in range(share))
    return plan


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # JSON scalars and lists of strings/ints are valid TOML


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")
    path.write_text("\n".join(lines))


class Testnet:
    """Start and stop a local multi-process testnet. Use as an async context manager."""

    __test__ = False

    def __init__(
        self,
        n: int,
        *,
        base_dir: Path | None = None,
        network_id: str = DEFAULT_NETWORK_ID,
        config_for: Callable[[int], dict[str, dict[str, Any]]] | None = None,
        start_timeout: float = 60.0,
        progress: Callable[[str], None] | None = None,
        debug: bool = False,
        wrap: Sequence[str] = (),
    ) -> None:
        """`wrap` is put before every peer's command line, e.g. `("ip", "netns", "exec",
        "ns1")` to run the peers inside a network namespace."""
        if n < 1:
            raise TestnetError("a testnet needs at least one peer")
        self.n = n
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="p2pinfer-testnet-")
            base_dir = Path(self._tmp.name)
        self.base_dir = base_dir
        self.network_id = network_id
        self.config_for = config_for or (lambda i: {})
        self.start_timeout = start_timeout
        self.progress = progress or (lambda s: None)
        self.debug = debug
        self.wrap = list(wrap)
        self.peers: list[PeerProcess] = []

    # -- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, peer: PeerProcess, bootstrap: list[str]) -> None:
        sections: dict[str, dict[str, Any]] = {
            "node": {
                "name": f"peer-{peer.index}",
                "data_dir": str(peer.data_dir),
                "network_id": self.network_id,
                "roles": ["bootstrap", "stage"] if peer.index == 0 else ["stage"],
            },
            "net": {"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": bootstrap, "dht": True},
            "control": {"socket": str(peer.data_dir / "control.sock")},
        }
        for section, values in self.config_for(peer.index).items():
            sections.setdefault(section, {}).update(values)
        write_config(peer.config_path, sections)
        self._launch(peer)

    def _launch(self, peer: PeerProcess) -> None:
        """Start the peer's process from the config already written for it."""
        peer.ready_path.unlink(missing_ok=True)
        cmd = [*self.wrap, sys.executable, "-m", "p2pinfer", "node", "--config",
               str(peer.config_path),
               "--ready-file", str(peer.ready_path)]
        if self.debug:
            cmd.append("--debug")
        with open(peer.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            peer.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop them
            )

    async def _wait_ready(self, peer: PeerProcess, deadline: float) -> None:
        while True:
            if peer.proc is not None and peer.proc.poll() is not None:
                raise TestnetError(
                    f"peer {peer.index} exited with code {peer.proc.returncode} during start-up; "
                    f"its log ends:\n{peer.log_tail()}"
                )
            if peer.ready_path.exists():
                try:
                    peer.info = json.loads(peer.ready_path.read_text())
                    return
                except json.JSONDecodeError:
                    pass  # being written
            if time.monotonic() > deadline:
                raise TestnetError(f"peer {peer.index} did not start within {self.start_timeout}s")
            await trio.sleep(0.05)

    async def start(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        for i in range(self.n):
            d = self.base_dir / f"peer-{i}"
            d.mkdir(parents=True, exist_ok=True)
            self.peers.append(PeerProcess(i, d, d / "node.toml", d / "ready.json", d / "node.log"))
        boot = self.peers[0]
        self._spawn(boot, [])
        await self._wait_ready(boot, deadline)
        self.progress(f"bootstrap peer up: {boot.addrs[0]}")
        for peer in self.peers[1:]:
            self._spawn(peer, [boot.addrs[0]])
        for k, peer in enumerate(self.peers[1:], start=2):
            await self._wait_ready(peer, deadline)
            self.progress(f"{k}/{self.n} peers up")

    def alive(self) -> list[PeerProcess]:
        return [p for p in self.peers if p.proc is not None and p.proc.poll() is None]

    def stop_peer(self, peer: PeerProcess, *, hard: bool = False) -> None:
        """Stop one of our peers: SIGINT (SIGKILL if `hard`), then escalate after bounded waits."""
        proc = peer.proc
        if proc is None or proc.poll() is not None:
            return
        steps = [signal.SIGKILL] if hard else [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
        for sig in steps:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10 if sig != signal.SIGKILL else 5)
                break
            except subprocess.TimeoutExpired:
                continue

    async def restart_peer(self, peer: PeerProcess) -> None:
        """Start a stopped peer again with its same key, data directory and config (it dials
        the bootstrap peer it was first given); waits until it is ready."""
        if peer.proc is not None and peer.proc.poll() is None:
            raise TestnetError(f"peer {peer.index} is still running")
        if not peer.config_path.is_file():
            raise TestnetError(f"peer {peer.index} was never started")
        self._launch(peer)
        await self._wait_ready(peer, time.monotonic() + self.start_timeout)

    def stop(self) -> None:
        for peer in self.peers:  # ask all at once, then wait: shutdown overlaps
            if peer.proc is not None and peer.proc.poll() is None:
                try:
                    os.kill(peer.proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        try:
            for peer in self.peers:
                self.stop_peer(peer)
        except BaseException:
            # a second Ctrl-C while waiting: kill the rest rather than leave them running
            for peer in self.peers:
                if peer.proc is not None and peer.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(peer.proc.pid, signal.SIGKILL)
            raise
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- queries -------------------------------------------------------------------------------
    def usage(self, peer: PeerProcess) -> ProcessUsage | None:
        """The peer process's resident memory and open descriptors; None if it is not running."""
        if peer.proc is None or peer.proc.poll() is not None:
            return None
        return process_usage(peer.proc.pid)

    async def peer_tables(self) -> dict[str, set[str]]:
        """Each live peer's view: peer id -> the peer ids in its table."""
        from p2pinfer.services.control import query_control

        views: dict[str, set[str]] = {}
        for peer in self.alive():
            try:
                reply = await query_control(peer.control_path, "peers")
            except (P2PInferError, OSError):
                views[peer.peer_id] = set()
                continue
            views[peer.peer_id] = {p["peer_id"] for p in reply.get("peers", [])}
        return views

    async def wait_converged(self, timeout: float) -> float:
        """Wait until every live peer's table holds every other live peer. Returns seconds."""
        start = time.monotonic()
        expected = {p.peer_id for p in self.alive()}
        last = -1
        while True:
            views = await self.peer_tables()
            done = sum(1 for pid, seen in views.items() if expected - {pid} <= seen)
            if done != last:
                self.progress(f"{done}/{len(expected)} peers hold every other peer's advert")
                last = done
            if done == len(expected):
                return time.monotonic() - start
            dead = [p.index for p in self.peers if p.proc is not None and p.proc.poll() is not None]
            if dead:
                raise TestnetError(f"peers {dead} exited while waiting for convergence")
            if time.monotonic() - start > timeout:
                raise TestnetError(
                    f"not converged after {timeout:.0f}s: {done}/{len(expected)} peers complete"
                )
            await trio.sleep(0.25)
