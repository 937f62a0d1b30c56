"""`p2pinfer prove-run`: critical-mode inference of a provable model (a p2pinfer-mlp model:
MLPs and Llama blocks, e.g. the built-in p2pinfer-zk-mlp and p2pinfer-zk-llama) from the
command line.

Input features come from a `.npy` file (loaded without pickle) or a `.json` list of rows, from
a chat prompt embedded by the checkpoint an imported model came from (`--prompt`), or are drawn
at random (`--random-tokens N`, seeded); the output and the per-stage proof report
(stage, peer, layers, proof size, prove and verify times) are printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import trio

from p2pinfer.cli.options import (
    UsageError,
    add_client_args,
    client_config,
    preflight,
    say,
    wait_for_route,
)
from p2pinfer.config import NodeConfig
from p2pinfer.errors import P2PInferError


def prompt_features(args: argparse.Namespace, model_path: Path, hidden: int) -> np.ndarray:
    """The hidden states a requester sends for a chat prompt through an imported model: the
    source checkpoint's chat template and embeddings (split learning: they stay here), padded
    with zero features to the imported width."""
    from p2pinfer.models import ClientHead, Tokenizer
    from p2pinfer.models.defaults import smollm2_path
    from p2pinfer.models.errors import ModelError

    try:
        raw = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        raw = {}
    if not isinstance(raw, dict) or "p2pinfer_import" not in raw:
        raise UsageError(f"--prompt: {args.model} was not imported from a checkpoint (p2pinfer "
                         "zk import); give --input features instead")
    try:
        source = Path(args.source) if args.source else smollm2_path()
        ids = Tokenizer.load(source).apply_chat_template([{"role": "user",
                                                          "content": args.prompt}])
        emb = ClientHead.load(source, 0).embed(ids)[0].double().numpy()
    except ModelError as e:
        raise UsageError(f"--prompt: {e}") from None
    if emb.shape[1] > hidden:
        raise UsageError(f"--prompt: {source} embeds into {emb.shape[1]} features, more than "
                         f"the model's {hidden}: not the checkpoint it was imported from")
    x = np.zeros((emb.shape[0], hidden))
    x[:, :emb.shape[1]] = emb
    return x


def read_features(args: argparse.Namespace, hidden: int) -> np.ndarray:
    if args.input:
        path = Path(args.input)
        try:
            if path.suffix == ".npy":
                x = np.load(path, allow_pickle=False)
            else:
                x = np.asarray(json.loads(path.read_text()), dtype=np.float64)
        except (OSError, ValueError) as e:
            raise P2PInferError(f"{path}: not a .npy array or JSON list of rows: {e}") from None
    else:
        x = np.random.default_rng(args.seed).normal(size=(args.random_tokens, hidden))
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != hidden:
        raise P2PInferError(f"input must be (tokens, {hidden}); got shape {list(x.shape)}")
    return x


def report_lines(result: Any) -> list[str]:
    header = (f"{'stage':>5}  {'peer':<14} {'layers':<9} {'proof KB':>8} {'prove ms':>9} "
              f"{'verify ms':>9} {'hop verify ms':>13}")
    lines = [header]
    for p in result.proofs:
        span = f"[{p.layers[0]},{p.layers[1]})"
        lines.append(f"{p.stage:>5}  ..{p.peer[-12:]:<12} {span:<9} {p.proof_bytes / 1024:>8.1f} "
                     f"{p.prove_ms:>9.1f} {p.verify_ms:>9.1f} {p.hop_verify_ms:>13.1f}")
    return lines


async def _run(args: argparse.Namespace, cfg: NodeConfig, prompt: np.ndarray | None) -> int:
    from p2pinfer.inference.critical import critical_client
    from p2pinfer.node import Node

    async with Node(cfg) as node:
        await wait_for_route(node, args.model, args.wait)
        client = critical_client(node.inference, args.model)
        x = prompt if prompt is not None else read_features(args, client.info.hidden_size)
        result = await client.infer(x)
        if args.json:
            out = result.to_dict()
            out["proofs"] = [dict(vars(p)) for p in result.proofs]
            print(json.dumps(out, default=list))
            return 0
        np.set_printoptions(precision=4, suppress=True, linewidth=100, threshold=24)
        print(result.output)
        for line in report_lines(result):
            say(line)
        k0, k1 = result.local_layers
        say(f"every stage's proof verified under manifest {result.manifest_digest[:16]}; "
            f"local layers [{k0[0]},{k0[1]}) and [{k1[0]},{k1[1]}); {result.seconds:.2f}s, "
            f"{result.replans} re-plans")
        return 0


def run(args: argparse.Namespace) -> int:
    cfg = client_config(args)
    preflight(args, cfg, task="critical")
    prompt = None
    if args.prompt:  # before joining: a prompt that cannot be embedded is a usage error
        from p2pinfer.inference.service import resolve_model
        from p2pinfer.models import load_model_info

        path = resolve_model(args.model)
        prompt = prompt_features(args, path, load_model_info(path).hidden_size)
    return trio.run(_run, args, cfg, prompt)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("prove-run", parents=[common],
                       help="critical mode: a provable model (MLP or Llama blocks: "
                            "p2pinfer-zk-llama) through the network, every stage proven in zero "
                            "knowledge")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", help=".npy or .json features (tokens, hidden)")
    src.add_argument("--random-tokens", type=int, default=4,
                     help="random input of this many rows (default 4)")
    src.add_argument("--prompt", help="a chat prompt, for a model imported from a checkpoint "
                                      "(e.g. smollm2-135m-instruct-zk-block0): embedded here "
                                      "by the source checkpoint (--source)")
    p.add_argument("--source", help="with --prompt: the checkpoint the model was imported from "
                                    "(default: the installed SmolLM2-135M-Instruct GGUF)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_client_args(p, "p2pinfer-zk-mlp")
    p.set_defaults(func=run)

