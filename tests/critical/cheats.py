"""TEST-ONLY dishonest critical runners: each cheats in one way a verifier must catch."""

from __future__ import annotations

import numpy as np

from p2pinfer.inference.critical import ChainEntry, CriticalRunner
from p2pinfer.zk import ProvableMlp, commit_shard, prove


class WrongWeightsRunner(CriticalRunner):
    """Runs (and honestly proves) layers with one weight changed, under its own commitment."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        honest = self.shard(self.start, self.end).shard
        layers = list(honest.layers)
        w = layers[0].weight.copy()
        w[0, 0] += 3
        layers[0] = type(layers[0])(w, layers[0].bias, layers[0].activation, layers[0].residual)
        self.fake = commit_shard(ProvableMlp(layers, honest.frac_bits), first_layer=self.start)

    def compute(self, shard, x):
        return self.fake.forward_fixed(x)

    def attest(self, shard, x, y, binding):
        return prove(self.fake, x, y, binding).to_bytes()


class PerturbedOutputRunner(CriticalRunner):
    """Proves the honest output, then sends one element off by one."""

    def entry_for(self, entry: ChainEntry, y, session, seq):
        y = y.copy()
        y[0, 0] += 1
        return entry, y


class ReplayingRunner(CriticalRunner):
    """Honest on its first step; afterwards attaches that first proof again."""

    stash: bytes | None = None

    def entry_for(self, entry: ChainEntry, y, session, seq):
        if self.stash is None:
            self.stash = entry.proof
            return entry, y
        entry.proof = self.stash
        return entry, np.asarray(y)


def install(node, runner_cls):
    """Replace a stage node's critical runner with `runner_cls` over the same layers."""
    stage = node.inference.stage
    old = stage.runners["critical"]
    stage.runners["critical"] = runner_cls(node, old.path, old.start, old.end)
    return stage.runners["critical"]
