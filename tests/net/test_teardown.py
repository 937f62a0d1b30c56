"""Leaving `async with Node(...)` stops everything: no tasks left, no tracebacks, no port."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import trio

from .conftest import node_config, node_runner, wait_until

REPO = Path(__file__).resolve().parents[2]


def _all_tasks() -> set[trio.lowlevel.Task]:
    out: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        out.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return out


async def test_stopped_nodes_leave_no_tasks_behind(tmp_path):
    before = _all_tasks()
    async with node_runner() as runner:
        boot = await runner.start(node_config(tmp_path, "boot", control={"enabled": True}))
        others = await runner.start_many(
            [node_config(tmp_path, f"n{i}", boot=[boot.addrs[0]]) for i in range(3)]
        )
        for node in others:
            await node.wait_for_peers(3, timeout=30)
        await others[0].send_tensor(boot.peer_id, __import__("torch").ones(1000))
        await others[1].publish("adverts-test", b"x")
        assert len(_all_tasks()) > len(before) + 20
    # system tasks (libp2p's listeners among them) may need a moment to finish
    await wait_until(lambda: _all_tasks() <= before, 10, "all node tasks gone")


SCRIPT = textwrap.dedent(
    """
    import sys, tempfile, torch, trio
    from p2pinfer.config import config_from_dict
    from p2pinfer.node import Node

    def cfg(tmp, name, boot):
        return config_from_dict({
            "node": {"data_dir": f"{tmp}/{name}", "network_id": "teardown"},
            "net": {"bootstrap": boot},
            "control": {"enabled": name == "boot"},
        })

    async def main(mode):
        tmp = tempfile.mkdtemp()
        async with Node(cfg(tmp, "boot", [])) as boot:
            async with trio.open_nursery() as nursery:
                nodes = []

                async def run(name, task_status=trio.TASK_STATUS_IGNORED):
                    async with Node(cfg(tmp, name, [boot.addrs[0]])) as node:
                        nodes.append(node)
                        task_status.started()
                        await trio.sleep_forever()

                for i in range(4):
                    await nursery.start(run, f"n{i}")
                with trio.fail_after(30):
                    for node in nodes:
                        await node.wait_for_peers(4, timeout=30)
                if mode == "cancel-in-flight":
                    # cancel everything while a 16 MiB transfer is on the wire
                    nursery.start_soon(nodes[0].send_tensor, boot.peer_id, torch.ones(4 << 20))
                    await trio.sleep(0.05)
                else:
                    await nodes[0].send_tensor(boot.peer_id, torch.ones(1000))
                nursery.cancel_scope.cancel()
        print("clean exit")

    trio.run(main, sys.argv[1])
    """
)


def _assert_no_noise(stderr: str) -> None:
    # libp2p may log that a peer went away (other nodes are shutting down in the same process);
    # what must never appear is a traceback, an exception group or a lifecycle error
    for bad in ("Traceback", "ExceptionGroup", "LifecycleError", "Cancel scope stack"):
        assert bad not in stderr, stderr[-3000:]


def _run(mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def test_five_nodes_exit_without_tracebacks_or_exception_groups():
    proc = _run("normal")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "clean exit"
    _assert_no_noise(proc.stderr)


def test_cancelling_during_a_transfer_exits_cleanly():
    proc = _run("cancel-in-flight")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "clean exit"
    _assert_no_noise(proc.stderr)


def test_only_the_libp2p_teardown_race_is_dropped_from_a_node_exit():
    from p2pinfer.node import without_teardown_race

    race = RuntimeError("Nursery is closed to new arrivals")
    assert without_teardown_race(race) is None
    assert without_teardown_race(BaseExceptionGroup("t", [race, ExceptionGroup("u", [race])])) is None
    other = ValueError("a real failure")
    rest = without_teardown_race(ExceptionGroup("t", [race, other]))
    assert rest is not None and rest.exceptions == (other,)
    assert without_teardown_race(other) is other
    assert without_teardown_race(RuntimeError("another runtime error")) is not None


async def test_repeated_node_exits_during_gossip_traffic_are_clean(tmp_path):
    """Six `async with Node(...)` exits while adverts and pings flow: none raises."""
    from p2pinfer.node import Node

    for i in range(6):
        a = Node(node_config(tmp_path, f"a{i}"))
        async with a:
            b = Node(node_config(tmp_path, f"b{i}", boot=[a.addrs[0]],
                                 gossip={"advert_interval_s": 0.2}))
            async with b:
                await b.wait_for_peers(1, timeout=30)
                await a.wait_for_peers(1, timeout=30)
                await b.publish("adverts-test", b"x")
