"""Critical mode across processes: two stage processes, `p2pinfer prove-run` as the requester."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import trio

from p2pinfer.models.mlp import zk_mlp_config
from p2pinfer.testnet import Testnet
from p2pinfer.zk.checkpoint import fixed_layers, write_committed_mlp


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    model = tmp_path_factory.mktemp("llama") / "model"
    model.mkdir()
    write_committed_mlp(model, zk_mlp_config("zk-llama-mp", layers=6, hidden=32,
                                             activation="llama", intermediate=64, kv_heads=2))
    return model


@pytest.mark.parametrize("model", ["mlp_dir", "llama_dir"])
async def test_prove_run_cli_over_a_multiprocess_testnet(tmp_path, request, model):
    """The CLI's critical mode over stage processes: an MLP, and Llama blocks (attention and
    MLP halves)."""
    mlp_dir = request.getfixturevalue(model)
    spans = [[1, 3], [3, 5]]
    x = np.random.default_rng(5).normal(size=(3, 32))
    (tmp_path / "x.json").write_text(json.dumps(x.tolist()))
    async with Testnet(2, base_dir=tmp_path / "net", network_id="critical-mp",
                       config_for=lambda i: {"serve": {"model": str(mlp_dir),
                                                       "layers": spans[i]}}) as net:
        out = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "p2pinfer", "prove-run", "--model", str(mlp_dir),
             "--bootstrap", net.peers[0].addrs[0], "--network-id", "critical-mp",
             "--k-head", "1", "--k-tail", "1", "--input", str(tmp_path / "x.json"), "--json"],
            capture_output=True, text=True, timeout=240, check=False))
        peers = [p.peer_id for p in net.peers]
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    fixed = fixed_layers(mlp_dir, 0, 6)
    assert result["output_fixed"] == fixed.forward_fixed(fixed.quantize(x)).tolist()
    assert [p["peer"] for p in result["proofs"]] == peers
    assert all(p["verify_ms"] > 0 and p["proof_bytes"] > 0 for p in result["proofs"])
