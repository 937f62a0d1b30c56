"""TEST-ONLY dishonest critical runners: each cheats in one way a verifier must catch."""

from __future__ import annotations

import dataclasses

import numpy as np

from p2pinfer.inference.critical import ChainEntry, CriticalRunner
from p2pinfer.zk import ProvableMlp, commit_shard, prove


class WrongWeightsRunner(CriticalRunner):
    """Runs (and honestly proves) layers with one weight changed, under its own commitment:
    in the first layer, or the first of kind `target`."""

    target: str | None = None

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        honest = self.shard(self.start, self.end).shard
        layers = list(honest.layers)
        k = next(i for i, la in enumerate(layers) if self.target in (None, la.activation))
        w = layers[k].weight.copy()
        w[0, 0] += 3
        layers[k] = dataclasses.replace(layers[k], weight=w)
        self.fake = commit_shard(ProvableMlp(layers, honest.frac_bits), first_layer=self.start)

    def compute(self, shard, x):
        return self.fake.forward_fixed(x)

    def attest(self, shard, x, y, binding):
        return prove(self.fake, x, y, binding).to_bytes()


class WrongQueryWeightsRunner(WrongWeightsRunner):
    """One query weight of its first attention layer changed."""

    target = "attention"


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
