"""The claims a voter holds, and the vote over them.

`ClaimBox` keeps verified `FingerprintClaim`s per (task, stage, step) from hop streams and
`claim` messages, and the replicas' `OutputCommit`s (consensus/commit.py), bounded in keys and
replicas; `changed(key)` wakes a voter waiting for a majority (a new claim or commitment).
`counted` is what a vote may count: every claim, or for a sealed step only the claims revealed
under the seal of the m commitments held (a replica that committed late, or revealed unsealed,
is missing from the vote, never part of it). `try_vote` is one majority check: the outcome, or
None while no majority exists; `wait_majority` is the one majority wait every voter uses (a stage
checking its input, a replica watching for an upstream stall, the requester voting over the last
stage's answers).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import trio

from p2pinfer.consensus.claims import FingerprintClaim
from p2pinfer.consensus.commit import OutputCommit, find_seal
from p2pinfer.consensus.errors import ConsensusError, MalformedVoteMessage, NoMajorityError
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
        self._commits: OrderedDict[tuple[bytes, int, int], dict[str, OutputCommit]] = \
            OrderedDict()
        #: sealed steps: a replica's claims under each seal it revealed under (it reveals again
        #: under the full seal when its first seal missed a late commitment)
        self._sealed: dict[tuple[bytes, int, int], dict[tuple[str, bytes], FingerprintClaim]] = {}

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
                self._sealed.pop(old, None)
        if len(held) >= 16 and claim.replica not in held:
            return
        held[claim.replica] = claim  # an equivocating replica shows up in the vote
        if claim.sealed:
            sealed = self._sealed.setdefault(key, {})
            if len(sealed) < 64:
                sealed[(claim.replica, claim.sealed)] = claim
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def claims(self, key: tuple[bytes, int, int], replicas: Iterable[str]) -> list[FingerprintClaim]:
        held = self._claims.get(key, {})
        return [held[r] for r in replicas if r in held]

    def add_commit(self, commit: OutputCommit, sender: str | None = None) -> None:
        """Hold a replica's output commitment whose signature verified (and that `sender`
        signed, when given). A second, different commitment by the same replica for the same
        step is refused: the first one stands."""
        if sender is not None and commit.replica != sender:
            raise MalformedVoteMessage(f"commitment by {commit.replica} was sent by {sender}")
        commit.verify(self._keys)
        key = (commit.task_id, commit.stage, commit.step)
        held = self._commits.get(key)
        if held is None:
            held = self._commits[key] = {}
            while len(self._commits) > self._limit:
                self._commits.popitem(last=False)
        if commit.replica in held or len(held) >= 16:
            return
        held[commit.replica] = commit
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def commits(self, key: tuple[bytes, int, int], replicas: Iterable[str]
                ) -> list[OutputCommit]:
        """The commitments held for `key`, in the order of `replicas`."""
        held = self._commits.get(key, {})
        return [held[r] for r in replicas if r in held]

    def counted(self, key: tuple[bytes, int, int], replicas: Sequence[str], *,
                sealed: bool = False) -> list[FingerprintClaim]:
        """The claims a vote over `key` may count: all of them, or (`sealed`) the largest group
        revealed under one seal this box can reproduce from the commitments it holds (claims
        under different seals have different projections and are never compared; only one
        group can hold a majority)."""
        if not sealed:
            return self.claims(key, replicas)
        commits = self.commits(key, replicas)
        route = set(replicas)
        groups: dict[bytes, list[FingerprintClaim]] = {}
        for (replica, _seal), claim in self._sealed.get(key, {}).items():
            if replica not in route:
                continue
            try:
                find_seal(claim, commits, replicas, self._keys)
            except ConsensusError:
                continue
            groups.setdefault(claim.sealed, []).append(claim)
        return max(groups.values(), key=len, default=[])

    async def changed(self, key: tuple[bytes, int, int]) -> None:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = trio.Event()
        await event.wait()

    def forget(self, task_id: bytes) -> None:
        for key in [k for k in self._claims if k[0] == task_id]:
            del self._claims[key]
            self._events.pop(key, None)
            self._sealed.pop(key, None)
        for key in [k for k in self._commits if k[0] == task_id]:
            del self._commits[key]
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
                        wake: Callable[[], Awaitable[bool]] | None = None,
                        sealed: bool = False) -> VoteOutcome:
    """Wait until the claims `box` counts for `key` from `replicas` (`sealed`: see
    `ClaimBox.counted`) form a majority; its outcome.

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
            outcome = try_vote(box.counted(key, replicas, sealed=sealed), box.keys, tolerance)
            if outcome is not None:
                return outcome
            if not await waiting():
                break
    _task, stage, step = key
    held = box.counted(key, replicas, sealed=sealed)
    raise NoMajorityError(stage, step, largest_group(held, tolerance), len(replicas))
