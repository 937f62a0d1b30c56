"""Hosts of their own: Linux network namespaces joined by a veth pair, made by the tests.

`hosts` gives two namespaces, "peers" (10.77.0.1/24) and "client" (10.77.0.2/24), each with
loopback up, joined by one veth pair whose client end can be shaped (tbf) or taken down. They
are skipped, with the reason, where the machine does not allow creating namespaces (not root,
no `ip`, a kernel without them). Everything made is deleted afterwards, also on failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass

import pytest

PEERS_IP = "10.77.0.1"
CLIENT_IP = "10.77.0.2"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=20)


@dataclass
class Hosts:
    peers_ns: str
    client_ns: str
    client_link: str

    def exec_in(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def client_link_up(self, up: bool) -> None:
        _ip("netns", "exec", self.client_ns, "ip", "link", "set", self.client_link,
            "up" if up else "down")

    def shape_client_link(self, rate: str) -> None:
        """Rate-limit what the client sends (token bucket), e.g. "20mbit"."""
        subprocess.run(["ip", "netns", "exec", self.client_ns, "tc", "qdisc", "replace", "dev",
                        self.client_link, "root", "tbf", "rate", rate, "burst", "64kb",
                        "latency", "100ms"], check=True, capture_output=True, timeout=20)

    def unshape_client_link(self) -> None:
        subprocess.run(["ip", "netns", "exec", self.client_ns, "tc", "qdisc", "del", "dev",
                        self.client_link, "root"], check=False, capture_output=True,
                       timeout=20)


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    tag = secrets.token_hex(3)
    peers_ns, client_ns = f"p2p-{tag}-p", f"p2p-{tag}-c"
    a, b = f"vp{tag}", f"vc{tag}"
    made: list[str] = []
    try:
        for ns in (peers_ns, client_ns):
            r = _ip("netns", "add", ns, check=False)
            if r.returncode != 0:
                pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
            made.append(ns)
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        _ip("link", "add", a, "type", "veth", "peer", "name", b)
        _ip("link", "set", a, "netns", peers_ns)
        _ip("link", "set", b, "netns", client_ns)
        for ns, dev, addr in ((peers_ns, a, PEERS_IP), (client_ns, b, CLIENT_IP)):
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            _ip("netns", "exec", ns, "ip", "link", "set", dev, "up")
        yield Hosts(peers_ns, client_ns, b)
    finally:
        for ns in made:  # deleting a namespace deletes the veth ends inside it
            _ip("netns", "del", ns, check=False)
