"""The claims a voter holds, and the vote over them.

`ClaimBox` keeps verified `FingerprintClaim`s per (task, stage, step) from hop streams and
`claim` messages, bounded in keys and replicas; `changed(key)` wakes a voter waiting for a
majority. `try_vote` is one majority check: the outcome, or None while no majority exists;
`wait_majority` is the one majority wait every voter uses (a stage checking its input, a replica
watching for an upstream stall, the requester voting over the last stage's answers).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import trio

from p2pinfer.consensus.claims import FingerprintClaim
from p2pinfer.consensus.errors import MalformedVoteMessage, NoMajorityError
from p2pinfer.consensus.fingerprint import distance
from p2pinfer.consensus.vote import VoteOutcome, tally

#: (task, stage, step) keys a box holds before dropping the oldest
MAX_CLAIM_KEYS = 4096


class ClaimBox:
    """Signed claims per (task, stage, step), from hop streams and `claim` messages; bounded.

    Only verified claims are held; `changed(key)` wakes voters waiting for a majority.
    """

    def __init__(self, keys: Any, limit: int = MAX_CLAIM_KEYS) -> None:
        self._keys = keys
        self._limit = limit
        self._claims: OrderedDict[tuple[bytes, int, int], dict[str, FingerprintClaim]] = \
            OrderedDict()
        self._events: dict[tuple[bytes, int, int], trio.Event] = {}

    @property
    def keys(self) -> Any:
        """The key directory claims are verified (and votes tallied) against."""
        return self._keys

    def add(self, claim: FingerprintClaim, sender: str | None = None) -> None:
        """Hold a claim whose signature verified (and that `sender` signed, when given)."""
        if sender is not None and claim.replica != sender:
            raise MalformedVoteMessage(f"claim by {claim.replica} was sent by {sender}")
        claim.verify(self._keys)
        key = (claim.task_id, claim.stage, claim.step)
        held = self._claims.get(key)
        if held is None:
            held = self._claims[key] = {}
            while len(self._claims) > self._limit:
                old, _ = self._claims.popitem(last=False)
                self._events.pop(old, None)
        if len(held) >= 16 and claim.replica not in held:
            return
        held[claim.replica] = claim  # an equivocating replica shows up in the vote
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def claims(self, key: tuple[bytes, int, int], replicas: Iterable[str]) -> list[FingerprintClaim]:
        held = self._claims.get(key, {})
        return [held[r] for r in replicas if r in held]

    async def changed(self, key: tuple[bytes, int, int]) -> None:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = trio.Event()
        await event.wait()

    def forget(self, task_id: bytes) -> None:
        for key in [k for k in self._claims if k[0] == task_id]:
            del self._claims[key]
            self._events.pop(key, None)


def try_vote(claims: Sequence[FingerprintClaim], keys: Any, tolerance: float
             ) -> VoteOutcome | None:
    """The vote over these claims, or None while no majority exists yet."""
    if not claims:
        return None
    try:
        return tally(claims, keys, tolerance)
    except NoMajorityError:
        return None


def largest_group(claims: Sequence[FingerprintClaim], tolerance: float) -> int:
    """The size of the largest group of claims within `tolerance` of one of them."""
    best = 0
    for a in claims:
        best = max(best, sum(1 for b in claims
                             if distance(a.fingerprint, b.fingerprint) <= tolerance))
    return best


async def wait_majority(box: ClaimBox, key: tuple[bytes, int, int], replicas: Sequence[str],
                        tolerance: float, *, timeout: float = math.inf,
                        wake: Callable[[], Awaitable[bool]] | None = None) -> VoteOutcome:
    """Wait until the claims `box` holds for `key` from `replicas` form a majority; its outcome.

    Between checks it awaits `wake()` (by default the box's next claim for `key`), which
    returns False when no further claim can come. Then, or after `timeout` seconds, it raises
    `NoMajorityError` naming the stage, the step, the largest group within `tolerance` and the
    number of replicas. No networking: callers feed the box (or `wake` does).
    """
    async def next_claim() -> bool:
        await box.changed(key)
        return True

    waiting = wake if wake is not None else next_claim
    with trio.move_on_after(timeout):
        while True:
            outcome = try_vote(box.claims(key, replicas), box.keys, tolerance)
            if outcome is not None:
                return outcome
            if not await waiting():
                break
    _task, stage, step = key
    held = box.claims(key, replicas)
    raise NoMajorityError(stage, step, largest_group(held, tolerance), len(replicas))
