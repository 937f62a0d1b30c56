"""TEST-ONLY dishonest behaviour for adversarial testnets.

A stage peer whose config sets `serve.fault_injection` (refused on a production network,
p2pinfer.config) cheats in that one way: `corrupt_weights` swaps its weights ("another
checkpoint") and `int8_weights` re-quantises them to int8 (a cheaper model under the same id);
`FaultyRunner` wraps its float layers and returns random output, skips a layer, perturbs its
output, copies a fellow replica, or stalls (from its first step, or from step `STALL_LATE_STEP`
of each session on, after its step times were measured). The multi-process consensus tests use
them; no production code path reaches this module without that knob.
"""

from __future__ import annotations

from typing import Any

import torch
import trio

from p2pinfer.config import FAULT_INJECTION_KINDS
from p2pinfer.errors import P2PInferError
from p2pinfer.inference.redundancy import ConsensusService
from p2pinfer.inference.stage import StepRunner
from p2pinfer.inference.task import Task

FAULT_KINDS = FAULT_INJECTION_KINDS
#: "stall-late" answers steps 0 .. STALL_LATE_STEP - 1 of a session, then stops answering
STALL_LATE_STEP = 5
#: the fault kinds that alter a span's weights at load time (the runner itself is honest)
WEIGHT_FAULTS = ("wrong-weights", "int8-weights")


def corrupt_weights(span: Any, seed: int = 1234) -> None:
    """TEST-ONLY: replace a span's weights with random ones of the same scale ("another
    checkpoint")."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(span.blocks.parameters()) + list(span.blocks.buffers()):
            if p.is_floating_point() and p.numel() > 1:
                noise = torch.randn(p.shape, generator=gen).to(p.dtype)
                p.copy_(noise * p.float().std().clamp_min(1e-3).to(p.dtype))


def int8_weights(span: Any) -> None:
    """TEST-ONLY: re-quantise every weight matrix of a span to int8, symmetric, one scale per
    output channel, and compute with the dequantized values (what a peer serving a cheaper
    int8 model under the same model id returns)."""
    with torch.no_grad():
        for p in list(span.blocks.parameters()) + list(span.blocks.buffers()):
            if p.is_floating_point() and p.dim() == 2:
                w = p.float()
                scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
                p.copy_(((w / scale).round().clamp(-127, 127) * scale).to(p.dtype))


def alter_weights(span: Any, kind: str) -> None:
    """TEST-ONLY: apply a weight fault (WEIGHT_FAULTS) to a freshly loaded span."""
    if kind == "wrong-weights":
        corrupt_weights(span)
    elif kind == "int8-weights":
        int8_weights(span)
    else:
        raise ValueError(f"{kind!r} is not a weight fault")


class FaultyRunner:
    """TEST-ONLY: a general-mode step runner that cheats in one named way (FAULT_KINDS)."""

    def __init__(self, inner: StepRunner, kind: str, consensus: ConsensusService) -> None:
        if kind not in FAULT_KINDS or kind in WEIGHT_FAULTS:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.inner, self.kind, self.consensus = inner, kind, consensus
        self.wire_dtype = inner.wire_dtype
        self.refused_copies = 0

    @property
    def busy(self) -> bool:
        return self.inner.busy

    def admit(self, task: Task, start: int, end: int) -> None:
        self.inner.admit(task, start, end)

    async def run(self, session: Any, view: Any, hidden: torch.Tensor, pos: int,
                  fields: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        kind = self.kind
        if kind == "stall" or (kind == "stall-late"
                               and int(fields.get("seq", 0)) >= STALL_LATE_STEP):
            await trio.sleep_forever()
        if kind == "copy":
            # try to take a fellow replica's answer; the fetch protocol refuses peers that are
            # not downstream, so the copier falls back to passing its upstream's answer on
            seq = int(fields.get("seq", 0))
            for peer in session.task.route[session.stage].replicas:
                if peer == self.consensus.node.peer_id:
                    continue
                try:
                    with trio.fail_after(1.0):
                        got = await self.consensus.fetch(peer, session.task, session.stage,
                                                         seq)
                    return got.hidden, {}
                except (P2PInferError, trio.TooSlowError):
                    self.refused_copies += 1
            return hidden.clone(), {}
        if kind == "skip-layer":
            if view.num_layers == 1:
                return hidden.clone(), {}
            part = view.slice(view.start, view.end - 1)
            cache = session.fault_cache
            if cache is None and part.info.is_decoder:
                cache = part.new_cache()
                session.fault_cache = cache
            out = await trio.to_thread.run_sync(part.forward, hidden, cache, pos)
            return out, {}
        out, extra = await self.inner.run(session, view, hidden, pos, fields)
        if kind == "random-output":
            out = torch.randn_like(out) * out.float().std().to(out.dtype)
        elif kind == "perturb":
            # 20% RMS noise: small next to the activation, above every calibrated tolerance
            rms = out.float().pow(2).mean().sqrt()
            out = out + (0.2 * rms * torch.randn(out.shape)).to(out.dtype)
        return out, extra
