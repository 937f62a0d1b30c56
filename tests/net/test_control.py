"""The local control socket: JSON lines, mode 0600, bounded lines, typed errors."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest
import trio

from p2pinfer.services.control import MAX_LINE, ControlError, query_control

from .conftest import node_config, node_runner


def _cfg(tmp_path, name, **kw):
    return node_config(tmp_path, name, control={"enabled": True}, **kw)


async def _raw_exchange(path, data: bytes) -> bytes:
    with trio.fail_after(10):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            await stream.send_all(data)
            out = b""
            while not out.endswith(b"\n"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                out += chunk
            return out


async def test_peers_and_status_answer_with_the_peer_table_and_counters(tmp_path):
    async with node_runner() as runner:
        a = await runner.start(_cfg(tmp_path, "a", net={"dht": False}))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]], net={"dht": False}))
        b.update_advert(model="m", spans=[(0, 2)])
        await a.wait_for_peers(1, timeout=20)
        path = a.config.control_path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with trio.fail_after(10):
            peers = await query_control(path, "peers")
            status = await query_control(path, "status")
        assert [p["peer_id"] for p in peers["peers"]] == [b.peer_id]
        assert peers["peers"][0]["addrs"] and "rtt_ms" in peers["peers"][0]
        assert status["peer_id"] == a.peer_id and status["network_id"] == a.network_id
        assert status["addrs"] == a.addrs
        assert status["counters"]["adverts"]["rejected"]["expired"] == 0
        json.dumps(status)  # JSON-able all the way down


async def test_status_reports_the_advert_mesh_and_the_live_task_count(tmp_path):
    async with node_runner() as runner:
        a = await runner.start(_cfg(tmp_path, "a", net={"dht": False}))
        b = await runner.start(node_config(tmp_path, "b", boot=[a.addrs[0]], net={"dht": False}))
        await a.wait_for_peers(1, timeout=20)
        with trio.fail_after(20):  # the mesh forms at a heartbeat after the subscriptions meet
            while a.status()["counters"]["gossip"]["mesh"] < 1:
                await trio.sleep(0.2)
        assert a.status()["counters"]["gossip"]["topic_peers"] == 1
        assert b.status()["counters"]["gossip"]["mesh"] == 1
        async with trio.open_nursery() as nursery:
            before = a.status()["tasks"]
            for _ in range(3):
                nursery.start_soon(trio.sleep_forever)
            assert a.status()["tasks"] == before + 3  # no checkpoint in between: nothing else ran
            nursery.cancel_scope.cancel()
        status = await query_control(a.config.control_path, "status")
        assert status["tasks"] > 10  # both nodes' services and the runner's tasks


@pytest.mark.parametrize(
    ("request_line", "code"),
    [
        (b"not json\n", "bad-request"),
        (b"[1, 2]\n", "bad-request"),
        (b'{"cmd": 3}\n', "bad-request"),
        (b'{"cmd": "reboot"}\n', "unknown-command"),
        (b'{"cmd": "' + b"x" * (MAX_LINE + 10) + b'"}\n', "too-large"),
    ],
    ids=["not-json", "not-an-object", "cmd-not-a-string", "unknown-command", "line-too-long"],
)
async def test_bad_requests_get_a_typed_error_line(tmp_path, request_line, code):
    async with node_runner() as runner:
        a = await runner.start(_cfg(tmp_path, "a", net={"dht": False}))
        reply = json.loads(await _raw_exchange(a.config.control_path, request_line))
        assert reply["ok"] is False and reply["error"] == code
        # the endpoint keeps answering
        assert (await query_control(a.config.control_path, "status"))["ok"] is True


async def test_query_control_raises_a_typed_error_for_an_unknown_command(tmp_path):
    async with node_runner() as runner:
        a = await runner.start(_cfg(tmp_path, "a", net={"dht": False}))
        with pytest.raises(ControlError) as e:
            await query_control(a.config.control_path, "reboot")
        assert e.value.code == "unknown-command"


async def test_query_control_raises_a_typed_error_when_the_node_dies_while_answering(tmp_path):
    path = tmp_path / "dying.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(1)

    async def die_after_the_request() -> None:
        conn, _ = await sock.accept()
        with conn:
            # closing with the request half read resets the connection, as a killed node's
            # socket does
            await conn.recv(1)

    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(die_after_the_request)
            with pytest.raises(ControlError, match="broke before the node answered"):
                await query_control(path, "status")


async def test_query_control_says_when_no_node_is_running(tmp_path):
    with pytest.raises(ControlError) as e:
        await query_control(tmp_path / "absent.sock", "status")
    assert e.value.code == "not-running"


async def test_the_socket_file_is_removed_when_the_node_stops(tmp_path):
    async with node_runner() as runner:
        a = await runner.start(_cfg(tmp_path, "a", net={"dht": False}))
        path = a.config.control_path
        assert path.is_socket()
        await runner.stop(a)
        assert not path.exists()


async def test_a_stale_socket_from_a_crashed_node_is_replaced(tmp_path):
    import socket

    cfg = _cfg(tmp_path, "a", net={"dht": False})
    cfg.control_path.parent.mkdir(parents=True, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(cfg.control_path))
    stale.close()
    async with node_runner() as runner:
        a = await runner.start(cfg)
        assert (await query_control(a.config.control_path, "status"))["peer_id"] == a.peer_id
