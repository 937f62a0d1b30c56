"""What `scale_testnet.py` and `soak.py` share: the testnet they start, the reference outputs
they check every answer against, per-peer readings, and the pure helpers that turn outcomes and
readings into per-minute tables and a verdict (tested in tests/tools/test_soaklib.py).

Both tools serve the random-weight built-ins `p2pinfer-tiny-llama` (8 layers) and
`all-minilm-l6-v2` (6 layers) from separate `p2pinfer node` processes on loopback. Greedy
decoding is deterministic, so a generation is right only if its tokens equal the single-process
result computed once here; an embedding is right if it is within 1e-4 of the local one.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pinfer.config import NodeConfig, config_from_dict
from p2pinfer.errors import P2PInferError
from p2pinfer.models import MINILM, TINY_LLAMA, LocalModel, Tokenizer, default_model_path
from p2pinfer.node import Node
from p2pinfer.services.control import query_control
from p2pinfer.testnet import Testnet, process_usage, serving_plan

LAYERS = {TINY_LLAMA: 8, MINILM: 6}
PROMPTS = (
    "the quick brown fox jumps over",
    "peers split a model into layer spans",
    "a small network on one machine",
    "every answer is checked against the reference",
)
TEXTS = ("a cat sits on the mat", "a kitten rests on a rug", "stock prices fell today")
MAX_NEW_TOKENS = 8
EMBED_ATOL = 1e-4

#: a process's RSS may grow by this fraction plus this many bytes over its life and still be flat
RSS_SLACK = (0.10, 24 << 20)
FD_SLACK = (0.25, 16)
TASK_SLACK = (0.25, 24)


# -- pure helpers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One request: which kind, when it finished (seconds since the start), how it ended."""

    kind: str  # "generate" or "embed"
    finished_s: float
    latency_s: float
    ok: bool
    wrong: bool = False
    error: str = ""


@dataclass(frozen=True)
class MinuteStats:
    requests: int
    ok: int
    wrong: int
    failed: int
    p50_ms: float
    p95_ms: float

    @property
    def success(self) -> float:
        return self.ok / self.requests if self.requests else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def minute_stats(outcomes: Sequence[Outcome]) -> MinuteStats:
    """Counts and latency percentiles of the requests that succeeded."""
    lat = [o.latency_s * 1e3 for o in outcomes if o.ok]
    wrong = sum(1 for o in outcomes if o.wrong)
    ok = sum(1 for o in outcomes if o.ok)
    return MinuteStats(len(outcomes), ok, wrong, len(outcomes) - ok - wrong,
                       percentile(lat, 0.5), percentile(lat, 0.95))


def by_minute(outcomes: Sequence[Outcome], minutes: int) -> list[list[Outcome]]:
    """Outcomes bucketed by the minute they finished in (later ones go to the last minute)."""
    buckets: list[list[Outcome]] = [[] for _ in range(max(1, minutes))]
    for o in outcomes:
        buckets[min(len(buckets) - 1, max(0, int(o.finished_s // 60)))].append(o)
    return buckets


def grows(series: Sequence[float], slack: tuple[float, float]) -> bool:
    """Whether a process's readings grow beyond `slack` = (fraction, absolute) over its life.

    The first reading is warm-up and ignored when there are three or more; the baseline is the
    highest of the next two readings and the end the lowest of the last two, so one noisy
    reading neither hides nor fakes a trend."""
    xs = list(series[1:]) if len(series) >= 3 else list(series)
    if len(xs) < 2:
        return False
    base = max(xs[:2])
    end = min(xs[-2:])
    rel, absolute = slack
    return end - base > rel * base + absolute


def fmt_ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.0f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with right-aligned columns sized to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


@dataclass
class Verdict:
    """What must hold for a run to pass; `failures` says each way it did not."""

    failures: list[str] = field(default_factory=list)
    wrong: int = 0

    def require(self, cond: bool, why: str) -> None:
        if not cond:
            self.failures.append(why)

    @property
    def passed(self) -> bool:
        return not self.failures and not self.wrong

    def line(self, what: str) -> str:
        if self.passed:
            return f"VERDICT: PASS ({what})"
        reasons = ([f"{self.wrong} wrong output(s)"] if self.wrong else []) + self.failures
        return f"VERDICT: FAIL ({what}): " + "; ".join(reasons)

    def exit_code(self) -> int:
        """1 on any wrong output, 3 on any other failure, 0 on a pass."""
        return 1 if self.wrong else 3 if self.failures else 0


# -- references --------------------------------------------------------------------------------
@dataclass
class References:
    tokens: dict[str, list[int]]
    embeddings: dict[str, torch.Tensor]


def compute_references() -> References:
    """Greedy generations of PROMPTS and embeddings of TEXTS, computed in this process."""
    llama = default_model_path(TINY_LLAMA)
    tok = Tokenizer.load(llama)
    model = LocalModel.load(llama)
    tokens = {p: model.generate(tok.encode(p), MAX_NEW_TOKENS, stop_ids=tok.eos_ids)
              for p in PROMPTS}
    minilm = default_model_path(MINILM)
    btok = Tokenizer.load(minilm)
    bert = LocalModel.load(minilm)
    with torch.no_grad():
        emb = {t: bert.forward(btok.encode(t)).reshape(-1) for t in TEXTS}
    return References(tokens, emb)


async def run_request(node: Node, kind: str, i: int, refs: References, t0: float,
                      timeout_s: float) -> Outcome:
    """One greedy generation or one embedding through the network, checked against `refs`.
    `t0` and the times recorded are on trio's clock (`trio.current_time()`)."""
    start = trio.current_time()
    try:
        with trio.fail_after(timeout_s):
            if kind == "generate":
                prompt = PROMPTS[i % len(PROMPTS)]
                gen = await node.generate(prompt, model=TINY_LLAMA,
                                          max_new_tokens=MAX_NEW_TOKENS)
                right = gen.token_ids == refs.tokens[prompt]
            else:
                text = TEXTS[i % len(TEXTS)]
                got = await node.embed(text, model=MINILM)
                want = refs.embeddings[text]
                right = got.shape[-1] == want.shape[-1] and bool(
                    torch.allclose(got.reshape(-1), want, atol=EMBED_ATOL, rtol=EMBED_ATOL))
    except trio.TooSlowError:
        return _outcome(kind, t0, start, False, error=f"no answer in {timeout_s:.0f}s")
    except (P2PInferError, OSError) as e:
        return _outcome(kind, t0, start, False, error=f"{type(e).__name__}: {str(e)[:120]}")
    return _outcome(kind, t0, start, right, wrong=not right,
                    error="" if right else "differs from the single-process reference")


def _outcome(kind: str, t0: float, start: float, ok: bool, *, wrong: bool = False,
             error: str = "") -> Outcome:
    now = trio.current_time()
    return Outcome(kind, now - t0, now - start, ok, wrong, error)


# -- the testnet -------------------------------------------------------------------------------
#: gossip settings of many peer processes sharing a few cores: each message reaches a peer about
#: mesh-degree times, so a smaller mesh and rarer adverts keep the CPU the gossip takes within
#: what 50 Python processes on 2 cores have (with the defaults, D=8..24 and adverts every 10 s,
#: such a network did not converge in 5 minutes: every process stayed runnable and adverts
#: arrived expired). Measured idle, 24 peers on 2 cores, after the DHT's lookups were stretched
#: for well-connected nodes: 2.3% CPU per peer with adverts every 30 s and a 1 s heartbeat,
#: 1.4% with these (each peer's CPU time read from /proc over a minute, no requests)
CROWDED_GOSSIP: dict[str, Any] = {"mesh_degree": 6, "mesh_degree_low": 4, "mesh_degree_high": 12,
                                  "heartbeat_s": 3.0, "advert_interval_s": 90.0,
                                  "advert_ttl_s": 360.0}


def peer_configs(peers: int, redundancy: int, *, cheat: str = "",
                 gossip: dict[str, Any] | None = None) -> Any:
    """config_for of a testnet serving both models, `redundancy` replicas per stage. With
    `cheat` (a TEST-ONLY `serve.fault_injection` kind) peer 1 computes its layers dishonestly,
    to show that a wrong answer is caught. `gossip`: [gossip] settings of every peer."""
    plan = serving_plan(LAYERS, peers, redundancy)

    def config_for(i: int) -> dict[str, dict[str, Any]]:
        model, (a, b) = plan[i]
        serve: dict[str, Any] = {"model": model, "layers": [a, b], "threads": 1}
        if cheat and i == 1:
            serve["fault_injection"] = cheat
        return {"serve": serve, **({"gossip": dict(gossip)} if gossip else {})}

    return config_for


def requester_config(net: Testnet, step_timeout_s: float,
                     gossip: dict[str, Any] | None = None) -> NodeConfig:
    return config_from_dict({
        "node": {"name": "requester", "data_dir": str(net.base_dir / "requester"),
                 "network_id": net.network_id, "roles": ["client"]},
        "net": {"bootstrap": [net.peers[0].addrs[0]], "dht": bool(gossip)},
        "control": {"enabled": False},
        "inference": {"step_timeout_s": step_timeout_s},
        **({"gossip": dict(gossip)} if gossip else {}),
    })


@dataclass(frozen=True)
class PeerReading:
    index: int
    pid: int
    alive: bool
    rss_bytes: int = 0
    fds: int = 0
    tasks: int = 0
    mesh: int = -1
    connected: int = 0
    known_peers: int = 0


async def read_peers(net: Testnet) -> list[PeerReading]:
    """Every peer's /proc usage and control-socket status, queried concurrently."""
    out: list[PeerReading | None] = [None] * len(net.peers)

    async def one(k: int) -> None:
        peer = net.peers[k]
        use = net.usage(peer)
        if use is None:
            out[k] = PeerReading(peer.index, 0, False)
            return
        try:
            st = await query_control(peer.control_path, "status")
        except (P2PInferError, OSError):
            st = {}
        gossip = st.get("counters", {}).get("gossip", {})
        out[k] = PeerReading(peer.index, use.pid, True, use.rss_bytes, use.fds,
                             int(st.get("tasks", 0)), int(gossip.get("mesh", -1)),
                             int(st.get("connected", 0)), int(st.get("known_peers", 0)))

    async with trio.open_nursery() as nursery:
        for k in range(len(net.peers)):
            nursery.start_soon(one, k)
    return [r for r in out if r is not None]


def read_self(node: Node) -> PeerReading:
    """The requester's own process (it lives for the whole run)."""
    use = process_usage(os.getpid())
    st = node.status()
    return PeerReading(-1, os.getpid(), True, use.rss_bytes if use else 0,
                       use.fds if use else 0, int(st.get("tasks", 0)),
                       int(st["counters"].get("gossip", {}).get("mesh", -1)),
                       int(st.get("connected", 0)), int(st.get("known_peers", 0)))


def lifetimes(history: Sequence[Sequence[PeerReading]]) -> dict[tuple[int, int], list[PeerReading]]:
    """Readings grouped by (peer index, pid): one series per process lifetime."""
    out: dict[tuple[int, int], list[PeerReading]] = {}
    for readings in history:
        for r in readings:
            if r.alive:
                out.setdefault((r.index, r.pid), []).append(r)
    return out


def growth_rows(history: Sequence[Sequence[PeerReading]]) -> tuple[list[list[Any]], list[str]]:
    """A row per process lifetime (first -> last RSS, fds, tasks) and what grew."""
    rows, grew = [], []
    for (index, pid), series in sorted(lifetimes(history).items()):
        name = "requester" if index < 0 else f"peer {index}"
        rss = [r.rss_bytes for r in series]
        fds = [r.fds for r in series]
        tasks = [r.tasks for r in series]
        flags = [what for what, xs, slack in (("RSS", rss, RSS_SLACK), ("fds", fds, FD_SLACK),
                                               ("tasks", tasks, TASK_SLACK))
                 if grows(xs, slack)]
        grew.extend(f"{name} (pid {pid}) {w}" for w in flags)
        rows.append([name, pid, len(series),
                     f"{rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} (max {max(rss) / 2**20:.0f})",
                     f"{fds[0]} -> {fds[-1]}", f"{tasks[0]} -> {tasks[-1]}",
                     "flat" if not flags else "GROWS: " + ", ".join(flags)])
    return rows, grew


GROWTH_HEADERS = ("process", "pid", "readings", "RSS MiB first -> last", "fds", "trio tasks",
                  "trend")


def median_int(xs: Sequence[int]) -> int:
    return int(statistics.median(xs)) if xs else 0
