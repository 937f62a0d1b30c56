"""Peers and a requester on different hosts (network namespaces), as on a real network: the
requester runs with no config at all and is reached back by its route's last stage; its link goes
down mid-generation for 5 s, and (rate-limited by a token bucket) for 40 s, and the text is the
same as without."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from p2pinfer.testnet import Testnet
from tests.netns.conftest import PEERS_IP

REPO = Path(__file__).resolve().parents[2]
MODEL = "p2pinfer-tiny-llama"
PROMPT = "a network of peers on separate hosts"
TOKENS = 48


def _infer(hosts, ns: str, boot: str, home: Path, tokens: int, *, json_out: bool
           ) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "P2PINFER_HOME": str(home)}
    return subprocess.Popen(
        [*hosts.exec_in(ns), sys.executable, "-m", "p2pinfer", "infer", "--bootstrap", boot,
         "--model", MODEL, "--prompt", PROMPT, "--max-new-tokens", str(tokens), "--wait", "60",
         *(["--json"] if json_out else [])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)  # bytes, unbuffered


@asynccontextmanager
async def _peers_host(hosts, tmp_path: Path, monkeypatch) -> AsyncIterator[tuple[str, str, Path]]:
    """Two peers in the peers' namespace serving the model's middle layers in two spans;
    yields the bootstrap address, the text a request from inside that host gets, and the
    model home."""
    home = tmp_path / "home"
    monkeypatch.setenv("P2PINFER_HOME", str(home))  # the peers inherit it: one model copy

    def serve(i: int) -> dict:
        return {"net": {"listen": [f"/ip4/{PEERS_IP}/tcp/0"]},
                "serve": {"model": MODEL, "layers": [[1, 4], [4, 7]][i % 2]},
                "gossip": {"advert_interval_s": 2.0}}

    async with Testnet(2, base_dir=tmp_path / "net", config_for=serve,
                       wrap=hosts.exec_in(hosts.peers_ns)) as net:
        await net.wait_converged(timeout=90)
        boot = net.peers[0].addrs[0]
        assert boot.startswith(f"/ip4/{PEERS_IP}/")
        # the reference: the same request from inside the peers' host
        ref = _infer(hosts, hosts.peers_ns, boot, home, TOKENS, json_out=True)
        out, err = await trio.to_thread.run_sync(ref.communicate, None, 180)
        assert ref.returncode == 0, err[-2000:]
        yield boot, json.loads(out)["text"], home


async def _through_an_outage(hosts, boot: str, home: Path, expected: str,
                             outage_s: float) -> str:
    """A request from the client's host, with no config; once its first token has arrived
    the client's link goes down for `outage_s`; the text is the same. Returns what the
    requester logged."""
    proc = _infer(hosts, hosts.client_ns, boot, home, TOKENS, json_out=False)
    try:
        first = await trio.to_thread.run_sync(proc.stdout.read, 1)  # one byte: nothing kept
        assert first, proc.stderr.read()[-2000:]
        hosts.client_link_up(False)
        down_at = time.monotonic()
        await trio.sleep(outage_s)
        hosts.client_link_up(True)
        rest, err = await trio.to_thread.run_sync(proc.communicate, None, 180)
    finally:
        hosts.client_link_up(True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert (first + rest).decode().strip() == expected.strip()
    assert time.monotonic() - down_at >= outage_s
    return err.decode(errors="replace")


@pytest.mark.slow
async def test_a_requester_with_no_config_in_its_own_namespace_is_served_across_hosts(
        hosts, tmp_path, monkeypatch):
    async with _peers_host(hosts, tmp_path, monkeypatch) as (boot, expected, home):
        # a 5 s outage: the requester gives the step up (or waits it out) and replays
        await _through_an_outage(hosts, boot, home, expected, 5.0)


@pytest.mark.slow
async def test_a_rate_limited_requester_survives_a_40_s_link_outage(
        hosts, tmp_path, monkeypatch):
    async with _peers_host(hosts, tmp_path, monkeypatch) as (boot, expected, home):
        # the client's link is shaped to 20 Mbit/s (token bucket) and goes down for 40 s
        # mid-generation: the step times out, the route's peers stop answering, the requester
        # waits for the network (outage_wait_s), dials them afresh and replays the history
        hosts.shape_client_link("20mbit")
        try:
            log = await _through_an_outage(hosts, boot, home, expected, 40.0)
        finally:
            hosts.unshape_client_link()
        # the step was given up on and the requester waited for its peers to answer again
        assert "re-planning" in log and "waiting for the network" in log, log[-3000:]
