"""Critical mode across processes: two stage processes, `p2pinfer prove-run` as the requester."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import trio

from p2pinfer.models.mlp import fixed_layers
from p2pinfer.testnet import Testnet


async def test_prove_run_cli_over_a_multiprocess_testnet(tmp_path, mlp_dir):
    spans = [[1, 3], [3, 5]]
    x = np.random.default_rng(5).normal(size=(2, 32))
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
