"""The multi-process testnet launcher: restarting a stopped peer, and per-peer /proc readings."""

import os

import pytest
import trio

from p2pinfer.testnet import Testnet, TestnetError, process_usage


def test_process_usage_reads_this_process_and_nothing_for_a_missing_pid():
    use = process_usage(os.getpid())
    assert use is not None and use.pid == os.getpid()
    assert use.rss_bytes > 1 << 20 and use.fds >= 3
    assert process_usage(2**22 + 12345) is None  # above the kernel's pid limit


async def test_a_stopped_peer_restarts_with_its_key_and_rejoins(tmp_path):
    async with Testnet(2, base_dir=tmp_path / "net") as net:
        await net.wait_converged(timeout=60)
        peer = net.peers[1]
        first_pid, peer_id = peer.proc.pid, peer.peer_id
        assert net.usage(peer).rss_bytes > 0
        with pytest.raises(TestnetError, match="still running"):
            await net.restart_peer(peer)
        await trio.to_thread.run_sync(lambda: net.stop_peer(peer, hard=True))
        assert net.usage(peer) is None
        await net.restart_peer(peer)
        assert peer.proc.pid != first_pid and peer.peer_id == peer_id
        await net.wait_converged(timeout=60)
        assert net.usage(peer).fds > 0
