"""What every command shares: the user-error type, the stderr voice, and how command-line
options become a node config (a command's own `--config`, or the short-lived client node that
`infer`, `embed` and `prove-run` start)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from p2pinfer.config import NodeConfig, load_config, with_overrides
from p2pinfer.errors import ConfigError, P2PInferError
from p2pinfer.identity import devnet_bootstrap_addr

EXIT_USER = 2
#: a client stops waiting for a route once the serving peers it knows have not changed for this
#: many seconds and still cover none
SETTLED_S = 10.0


class UsageError(P2PInferError):
    """A command was used wrongly; printed as one line, exit code 2."""


def say(msg: str) -> None:
    """A progress or summary line for the person at the terminal (stderr, so stdout stays
    the command's result)."""
    print(msg, file=sys.stderr, flush=True)


def node_config(args: argparse.Namespace) -> NodeConfig:
    if getattr(args, "config", None):
        return load_config(args.config)
    return NodeConfig()


#: request settings a client command may override: (option dest, help)
CLIENT_SETTINGS = (
    ("k_head", "layers run locally before the network (split learning)"),
    ("k_tail", "layers run locally after the network"),
    ("redundancy", "peers per stage (general mode); replicas vote on fingerprints"),
    ("noise_sigma", "Gaussian noise on the outgoing activation (sigma relative to the clip)"),
    ("noise_clip", "per-token L2 clip norm applied before the noise"),
    ("step_timeout_s", ("re-plan when a step takes longer than this many seconds (measured "
                        "steps: a multiple of their time, at most this)")),
)


def add_client_args(p: argparse.ArgumentParser, default_model: str) -> None:
    p.add_argument("--model", default=default_model,
                   help=f"model directory or built-in name (default {default_model})")
    p.add_argument("--config", help="client node config TOML")
    p.add_argument("--bootstrap", action="append", help="a peer to join through, as "
                   "/ip4/.../tcp/.../p2p/<id> (repeatable)")
    p.add_argument("--network-id", help="network to join (default: the config's)")
    p.add_argument("--k-head", type=int, help=CLIENT_SETTINGS[0][1])
    p.add_argument("--k-tail", type=int, help=CLIENT_SETTINGS[1][1])
    p.add_argument("--redundancy", type=int, help=CLIENT_SETTINGS[2][1])
    p.add_argument("--mode", choices=["general", "critical"],
                   help="general: replicas and votes; critical: every stage proven")
    p.add_argument("--noise-sigma", type=float, help=CLIENT_SETTINGS[3][1])
    p.add_argument("--noise-clip", type=float, help=CLIENT_SETTINGS[4][1])
    p.add_argument("--step-timeout-s", type=float, help=CLIENT_SETTINGS[5][1])
    p.add_argument("--wait", type=float, default=30.0,
                   help="seconds to wait for peers covering a route (default 30)")


def client_config(args: argparse.Namespace) -> NodeConfig:
    """The config of the short-lived client node `infer`, `embed` and `prove-run` start."""
    cfg = node_config(args)
    overrides: dict[str, dict[str, Any]] = {}
    if not getattr(args, "config", None):
        overrides["node"] = {"data_dir": tempfile.mkdtemp(prefix="p2pinfer-client-"),
                             "roles": ["client"]}
        overrides["control"] = {"enabled": False}
        # the last stage of a route dials the requester back: listen where it can reach us
        # (every interface, announced one address per interface), not on loopback only
        overrides["net"] = {"dht": False, "listen": ["/ip4/0.0.0.0/tcp/0"],
                            "redial_interval_s": 1.0}
    if args.network_id:
        overrides.setdefault("node", {})["network_id"] = args.network_id
    if args.bootstrap:
        overrides.setdefault("net", {})["bootstrap"] = list(args.bootstrap)
    inf: dict[str, Any] = {}
    for key in [k for k, _ in CLIENT_SETTINGS] + ["mode"]:
        value = getattr(args, key, None)
        if value is not None:
            inf[key] = value
    if inf:
        overrides["inference"] = inf
    try:
        cfg = with_overrides(cfg, **overrides) if overrides else cfg
    except ConfigError as e:
        # a value given on the command line is named as the option the user typed
        msg = str(e)
        for key in inf:
            msg = msg.replace(f"<config>: key 'inference.{key}'",
                              "--" + key.replace("_", "-"))
        raise UsageError(msg) from None
    if not cfg.net.bootstrap:
        # no peer named anywhere: the local devnet (`p2pinfer testnet`, or a node with
        # node_configs/testnet-bootstrap.toml) at its fixed address
        cfg = with_overrides(cfg, net={"bootstrap": [devnet_bootstrap_addr()]})
    return cfg


def preflight(args: argparse.Namespace, cfg: NodeConfig, *, task: str) -> None:
    """Every user error that can be known before joining the network, as a `UsageError`:
    an unknown model, a model of the wrong kind for the command, local layers the model does
    not have, sampling values out of range, a prompt over the context. `task` is
    "generation", "chat" (a decoder with a chat template), "embedding" or "critical"."""
    from p2pinfer.models import Tokenizer, default_models, load_model_info
    from p2pinfer.models.byte_vocab import ByteVocabulary
    from p2pinfer.models.errors import ModelError
    from p2pinfer.zk.builtins import builtin_model_path

    name = args.model
    try:
        path = Path(name) if Path(name).exists() else builtin_model_path(name)
        info = load_model_info(path)
    except ModelError as e:
        known = ", ".join(m.name for m in default_models())
        raise UsageError(f"--model {name}: {e} (built-in models: {known}; or a model "
                         "directory)") from None
    provable = info.model_type == "p2pinfer-mlp"
    # a proven generation: a provable model generating (chatting) token by token, its byte
    # vocabulary on this machine, every step proven over the stages' committed KV caches
    proven = provable and task in ("chat", "generation") and cfg.inference.mode == "critical"
    if task == "critical" and not provable:
        raise UsageError(f"--model {name} is not a provable model: critical mode needs a "
                         "p2pinfer-mlp model (e.g. p2pinfer-zk-mlp, p2pinfer-zk-llama)")
    if task != "critical" and provable and not proven:
        raise UsageError(f"--model {name} is a provable model: run it with `p2pinfer prove-run`"
                         " or chat with it in `--mode critical`")
    if proven:
        task = "proven"
    if task == "chat":
        if not info.is_decoder:
            raise UsageError(f"--model {name} is an embedding model: it cannot chat")
        if Tokenizer.load(path).chat_template is None:
            raise UsageError(f"--model {name} has no chat template: use `p2pinfer infer "
                             "--prompt`")
        task = "generation"
    if task == "generation" and not info.is_decoder:
        raise UsageError(f"--model {name} is an embedding model: use `p2pinfer embed`")
    if task == "embedding" and info.is_decoder:
        raise UsageError(f"--model {name} generates text: use `p2pinfer infer`")
    if task not in ("critical", "proven") and cfg.inference.mode == "critical":
        raise UsageError(f"--mode critical needs a provable model and `p2pinfer prove-run`; "
                         f"{name} runs in general mode")
    inf = cfg.inference
    if inf.k_head < 0 or inf.k_tail < 0 or inf.k_head + inf.k_tail >= info.num_layers:
        raise UsageError(f"--k-head {inf.k_head} and --k-tail {inf.k_tail} leave no layer of "
                         f"{name}'s {info.num_layers} for the network: their sum must be below "
                         f"{info.num_layers}")
    if inf.redundancy < 1:
        raise UsageError("--redundancy must be at least 1")
    if task not in ("generation", "proven"):
        return
    if args.temperature < 0:
        raise UsageError(f"--temperature {args.temperature}: must be 0 (greedy) or more")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p {args.top_p}: must be in (0, 1]")
    if args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    text, option = getattr(args, "prompt", None), "--prompt"
    if getattr(args, "chat", None) is not None:
        text, option = args.chat, "--chat"
    if text is None:  # an interactive chat: its turns are checked as they come
        return
    tok = (ByteVocabulary(info.model_id, info.hidden_size) if task == "proven"
           else Tokenizer.load(path))
    if not text.strip():
        raise UsageError(f"{option} is empty")
    if option == "--chat":
        if tok.chat_template is None:
            raise UsageError(f"--model {name} has no chat template: use --prompt")
        tokens = len(tok.apply_chat_template([{"role": "user", "content": text}]))
    else:
        tokens = len(tok.encode(text))
    if tokens + args.max_new_tokens > info.max_positions:
        raise UsageError(f"{option} of {tokens} tokens plus --max-new-tokens "
                         f"{args.max_new_tokens} exceeds {name}'s context of "
                         f"{info.max_positions} tokens: shorten one of them")


def _model_id(model: str) -> str:
    """The id adverts carry for `model` (a built-in name or a directory)."""
    from p2pinfer.inference.service import resolve_model
    from p2pinfer.models import load_model_info

    return load_model_info(resolve_model(model)).model_id


async def _wait_for_bootstrap(node: Any, boot_ids: dict[str, str], timeout: float) -> None:
    """Wait (redialling) until some bootstrap peer is connected: a peer still starting is
    waited for, up to `timeout`; a peer that answers with another identity is reported at once."""
    if not boot_ids:
        return
    devnet = list(boot_ids.values()) == [devnet_bootstrap_addr()]
    deadline = trio.current_time() + timeout
    while not set(boot_ids) & set(node.connected_peers()):
        errors = node.bootstrap.errors if node.bootstrap is not None else {}
        wrong = [a for a, e in errors.items() if e.kind == "identity"]
        if trio.current_time() >= deadline or (wrong and len(wrong) == len(boot_ids)):
            if devnet and not wrong:
                raise UsageError("no local devnet answers at 127.0.0.1:4001 (nothing was "
                                 "named to join): start one with `p2pinfer testnet --model "
                                 "NAME`, or pass --bootstrap /ip4/.../p2p/<id>")
            why = "; ".join(f"{a}: {e}" for a, e in errors.items()) or "no answer"
            raise UsageError(f"cannot reach any bootstrap peer ({why[:400]}); is it running, "
                             "and is the /p2p/ id the one it prints at start-up?")
        await trio.sleep(0.2)


async def wait_for_route(node: Any, model: str, timeout: float) -> None:
    """Wait for peers covering a route for `model`. A `UsageError` naming the cause when no
    bootstrap peer answered, when a bootstrap peer is on another network, or when the wait
    ends without a route (what is missing)."""
    from p2pinfer.inference import NoRouteError

    boot_ids = {a.rsplit("/p2p/", 1)[-1]: a for a in node.config.net.bootstrap}
    await _wait_for_bootstrap(node, boot_ids, timeout)
    say(f"waiting for peers serving {model} ...")

    def foreign() -> str | None:
        seen = node.status()["counters"]["adverts"].get("foreign_networks", {})
        for pid in boot_ids:
            if pid in seen:
                return (f"peer {pid} is on network {seen[pid]!r}, you asked for "
                        f"{node.network_id!r}: pass --network-id {seen[pid]}")
        return None

    # the serving peers in the table and since when they have been the same: once they have
    # settled and still cover no route (too few replicas for --redundancy, a layer nobody
    # serves), waiting out the rest of --wait would change nothing
    settled = {"key": frozenset(), "since": trio.current_time()}
    model_id = _model_id(model)

    def gave_up() -> bool:
        key = frozenset((p.peer_id, tuple(map(tuple, p.spans))) for p in node.peers()
                        if p.spans and p.model == model_id)
        now = trio.current_time()
        if key != settled["key"]:
            settled.update(key=key, since=now)
        return bool(key) and now - settled["since"] >= SETTLED_S

    with trio.move_on_after(timeout):
        while (wrong := foreign()) is None:
            try:
                with trio.move_on_after(0.5):
                    await node.wait_for_route(model, timeout=timeout)
                    return
            except NoRouteError:
                pass
            if gave_up():
                break
        else:
            raise UsageError(wrong)
    try:
        await node.wait_for_route(model, timeout=0)
    except NoRouteError as e:
        waited = trio.current_time() - settled["since"]
        raise UsageError(f"{e}; the serving peers have not changed for {waited:.0f}s: are "
                         "peers serving it reachable, and are there enough of them?"
                         ) from None
