"""Signed inference tasks: what the requester asks every stage of its route to do.

A task names its route (stages, each a layer span and the replica peers that run it), the mode,
a deadline, and the requester, and is signed by the requester's node key. The signed bytes are
the domain tag, then the network id, then the canonical msgpack of every field but the signature
(protocols/stage.md), so a task can never be replayed on another network or with another route.
A stage accepts only a task that names it in its route.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from p2pinfer.errors import P2PInferError, WireError
from p2pinfer.identity import IdentityError, NodeIdentity, verify_peer_signature
from p2pinfer.wire import Message

TASK_DOMAIN = b"p2pinfer/task/v1\x00"
MODES = ("general", "critical")
MAX_STAGES = 64
MAX_REPLICAS = 9


class TaskError(P2PInferError):
    """A task is malformed, expired, badly signed, or does not name the receiving stage."""

    code = "bad-task"


@dataclass(frozen=True)
class StagePlan:
    """One stage of a route: layers [start, end) run by each of `replicas` (m >= 1 peers)."""

    start: int
    end: int
    replicas: tuple[str, ...]

    def to_wire(self) -> list[Any]:
        return [self.start, self.end, list(self.replicas)]

    @classmethod
    def from_wire(cls, obj: Any) -> StagePlan:
        if (not isinstance(obj, list) or len(obj) != 3 or not isinstance(obj[2], list)
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in obj[:2])):
            raise WireError("stage must be [start, end, [peer ids]]")
        start, end, replicas = obj
        if not 0 <= start < end or not 1 <= len(replicas) <= MAX_REPLICAS:
            raise WireError(f"stage [{start}, {end}) with {len(replicas)} replicas is invalid")
        if not all(isinstance(r, str) and 0 < len(r) <= 128 for r in replicas):
            raise WireError("stage replicas must be peer id strings")
        if len(set(replicas)) != len(replicas):
            raise WireError("stage replicas must be distinct peers")
        return cls(start, end, tuple(replicas))


@dataclass(frozen=True)
class Task:
    task_id: bytes
    network_id: str
    model_id: str
    requester: str
    requester_addrs: tuple[str, ...]
    mode: str
    route: tuple[StagePlan, ...]
    deadline: float
    max_length: int
    created: float = field(default_factory=time.time)
    options: dict[str, Any] = field(default_factory=dict)
    signature: bytes = b""

    # -- construction and signing --------------------------------------------------------------
    @classmethod
    def create(
        cls,
        identity: NodeIdentity,
        *,
        network_id: str,
        model_id: str,
        requester_addrs: list[str],
        route: list[StagePlan],
        mode: str = "general",
        ttl_s: float = 600.0,
        max_length: int = 2048,
        options: dict[str, Any] | None = None,
    ) -> Task:
        now = time.time()
        task = cls(
            task_id=os.urandom(16), network_id=network_id, model_id=model_id,
            requester=identity.peer_id, requester_addrs=tuple(requester_addrs), mode=mode,
            route=tuple(route), deadline=now + ttl_s, max_length=max_length, created=now,
            options=dict(options or {}),
        )
        task._check_shape()
        return task.signed(identity)

    def signed(self, identity: NodeIdentity) -> Task:
        unsigned = self._fields()
        sig = identity.sign(self._signing_bytes(unsigned))
        return Task(**{**self.__dict__, "signature": sig})

    def _fields(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id, "network_id": self.network_id, "model_id": self.model_id,
            "requester": self.requester, "requester_addrs": list(self.requester_addrs),
            "mode": self.mode, "route": [s.to_wire() for s in self.route],
            "deadline": float(self.deadline), "max_length": self.max_length,
            "created": float(self.created), "options": self.options,
        }

    def _signing_bytes(self, fields: dict[str, Any]) -> bytes:
        net = self.network_id.encode()
        return TASK_DOMAIN + len(net).to_bytes(2, "big") + net + msgpack.packb(
            fields, use_bin_type=True)

    def to_wire(self) -> dict[str, Any]:
        return {**self._fields(), "signature": self.signature}

    @property
    def short_id(self) -> str:
        return self.task_id.hex()[:12]

    # -- decoding and verification -------------------------------------------------------------
    @classmethod
    def from_wire(cls, obj: Any) -> Task:
        if not isinstance(obj, dict):
            raise WireError("task must be a map")
        m = Message(1, "task", obj)
        route_raw = m.get("route", list)
        if not 1 <= len(route_raw) <= MAX_STAGES:
            raise WireError(f"route must have 1..{MAX_STAGES} stages")
        addrs = m.get("requester_addrs", list)
        if len(addrs) > 16 or not all(isinstance(a, str) and len(a) < 512 for a in addrs):
            raise WireError("requester_addrs must be at most 16 address strings")
        options = m.get("options", dict)
        if len(options) > 32:
            raise WireError("too many task options")
        task = cls(
            task_id=m.get("task_id", bytes), network_id=m.get("network_id", str),
            model_id=m.get("model_id", str), requester=m.get("requester", str),
            requester_addrs=tuple(addrs), mode=m.get("mode", str),
            route=tuple(StagePlan.from_wire(s) for s in route_raw),
            deadline=float(m.get("deadline", (int, float))),
            max_length=m.get("max_length", int), created=float(m.get("created", (int, float))),
            options=options, signature=m.get("signature", bytes),
        )
        task._check_shape()
        return task

    def _check_shape(self) -> None:
        if len(self.task_id) != 16:
            raise WireError("task_id must be 16 bytes")
        if self.mode not in MODES:
            raise WireError(f"unknown task mode {self.mode!r}")
        if not 1 <= self.max_length <= 1 << 20:
            raise WireError("max_length out of range")
        for a, b in zip(self.route, self.route[1:]):
            if a.end != b.start:
                raise WireError("route stages must be contiguous")

    def verify(self, *, network_id: str, now: float | None = None) -> None:
        """Check network, deadline and the requester's signature; raise `TaskError`."""
        if self.network_id != network_id:
            raise TaskError(f"task is for network {self.network_id!r}, not {network_id!r}")
        now = time.time() if now is None else now
        if now > self.deadline:
            raise TaskError("task deadline has passed")
        try:
            verify_peer_signature(self.requester, self._signing_bytes(self._fields()),
                                  self.signature)
        except IdentityError as e:
            raise TaskError(f"task signature does not check out: {e}") from None

    def stage_of(self, peer_id: str, stage: int) -> StagePlan:
        """The stage `stage` if it names `peer_id` as a replica; else `TaskError`."""
        if not 0 <= stage < len(self.route):
            raise TaskError(f"route has no stage {stage}")
        plan = self.route[stage]
        if peer_id not in plan.replicas:
            raise TaskError(f"route does not name this peer for stage {stage}")
        return plan
