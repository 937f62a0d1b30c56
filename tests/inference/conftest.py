"""In-process networks of real nodes on loopback serving small random checkpoints."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from p2pinfer.config import config_from_dict
from p2pinfer.node import Node


def save_checkpoint(family: str, directory: Path, seed: int = 0) -> Path:
    """A small random Hugging Face checkpoint (safetensors) of one family, with varied outputs."""
    import transformers as tf

    torch.manual_seed(seed)
    common = {"vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 6, "num_attention_heads": 4,
                  "initializer_range": 0.3}
    if family == "llama":
        cfg = tf.LlamaConfig(intermediate_size=64, num_key_value_heads=2,
                             max_position_embeddings=64, **common)
        model = tf.LlamaForCausalLM(cfg)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(intermediate_size=64, num_key_value_heads=2,
                             max_position_embeddings=64, **common)
        model = tf.Qwen2ForCausalLM(cfg)
    elif family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=97, n_embd=32, n_layer=6, n_head=4, n_positions=64,
                            initializer_range=0.3)
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "bert":
        cfg = tf.BertConfig(intermediate_size=64, max_position_embeddings=64, **common)
        model = tf.BertModel(cfg, add_pooling_layer=False)
    else:
        raise ValueError(family)
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def node_config(tmp: Path, name: str, *, boot: list[str] | None = None,
                serve: dict[str, Any] | None = None, **sections: dict[str, Any]):
    data: dict[str, Any] = {
        "node": {"name": name, "data_dir": str(tmp / name), "network_id": "inference-test"},
        "net": {"bootstrap": boot or [], "dht": False},
        "control": {"enabled": False},
        "gossip": {"advert_interval_s": 1.0},
        "inference": {"step_timeout_s": 10.0},
    }
    if serve:
        data["serve"] = serve
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return config_from_dict(data)


@asynccontextmanager
async def network(tmp: Path, model: str, spans: list[list[int]], *,
                  serve: list[dict[str, Any]] | None = None, **client_inference: Any):
    """Stage nodes serving `spans` of `model` (with `serve[i]`'s extra serve keys), and a
    client node; yields (client, stages)."""
    async with AsyncExitStack() as stack:
        stages: list[Node] = []
        boot: list[str] = []
        for i, span in enumerate(spans):
            node = await stack.enter_async_context(Node(node_config(
                tmp, f"stage{i}", boot=boot,
                serve={"model": model, "layers": span, **(serve[i] if serve else {})})))
            stages.append(node)
            boot = boot or [node.addrs[0]]
        client = await stack.enter_async_context(
            Node(node_config(tmp, "client", boot=boot, inference=client_inference)))
        with trio.fail_after(30):
            while len([p for p in client.peers() if p.spans]) < len(spans):
                await trio.sleep(0.1)
        yield client, stages


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {f: save_checkpoint(f, root / f) for f in ("llama", "gpt2", "bert")}
