"""Privacy audit of split learning: can a stage read the requester's tokens off the boundary?

In general mode the requester keeps the embeddings and first k layers and sends the layer-k
activation (optionally clipped to row norm C and noised with N(0, sigma^2)) to the first stage.
This tool plays that stage and tries to recover the input tokens, for each k and sigma, on the
real models by default (SmolLM2-135M-Instruct, a 30-layer Llama chat decoder, and MiniLM-L6;
the random-weight tiny Llama decoder only with --models tiny):

* nn      nearest neighbour: compare each row with the embedding-layer output of every
          vocabulary token at that position (cosine). Exact inversion at k = 0.
* ridge   learned linear inversion: fit a ridge regression from layer-k rows to the token's
          embedding on random word sequences pushed through the same head with the same noise
          (the attacker knows the public weights and C, sigma), then nearest neighbour.
* greedy  causal decoders only: left to right, try candidate tokens after the tokens recovered
          so far through the first k layers and keep the one whose activation is nearest
          (L2) to the observed row. Candidates: the `--candidates` best ridge guesses (a full
          vocabulary search can only do better).

Columns: recovery = fraction of non-special input tokens recovered exactly; eps = epsilon of the
Gaussian mechanism per token replaced (sensitivity 2C, delta 1e-5; exact for k = 0, see
p2pinfer/models/noise.py for the sqrt(T) bound after attention layers); utility = for decoders
the share of next-token argmaxes unchanged by the noise, for MiniLM the cosine between the noisy
and clean sentence embeddings.

Read the table soberly. Published inversion attacks recover most tokens from early-layer
activations of real models (e.g. Song & Raghunathan 2020, "Information Leakage in Embedding
Models"; Pasquini et al. 2021, "Unleashing the Tiger"; the "UnSplit" line of work), and so does
this simple audit. Split learning alone is weak privacy: it raises the cost of reading the
input, it does not prevent it. Noise that gives a meaningful epsilon destroys utility. When
the input matters, route it over attested TEE channels (see p2pinfer/trust, p2pinfer/channel).

Usage:  python tools/privacy_audit.py [--models smollm2,minilm] [--ks 0,1,2,4]
                                      [--sigmas 0,0.001,0.003,0.01,0.03,0.1,1,5] [--candidates 1024]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pinfer.models import (
    MINILM,
    SMOLLM2,
    TINY_LLAMA,
    BoundaryNoise,
    ClientHead,
    ClientTail,
    KVCache,
    LayerSpan,
    Tokenizer,
    default_model_path,
    load_model_info,
)

CORPUS = [
    "patient john smith was diagnosed with diabetes last spring",
    "please wire the money to my account before friday",
    "congratulations you have won a free cruise click here",
    "my password for the bank is sunflower and my pin is secret",
    "the quarterly revenue fell sharply after the merger",
    "she is pregnant and has not told her employer yet",
    "meet me at the station near the old church at noon",
    "the lawyer advised him to plead guilty to the charges",
]
DELTA = 1e-5


@dataclass
class Row:
    model: str
    k: int
    sigma_over_c: float
    clip: float
    epsilon: float
    recovery: dict[str, float]
    utility: float


class _PrefixCache:
    """Duck-typed cache for a batch of candidates after a shared, already cached prefix."""

    def __init__(self, prefix: KVCache) -> None:
        self.prefix = prefix

    def write(self, layer, start, keys, values):
        pk, pv = self.prefix.layer(layer)
        b = keys.shape[0]
        return (
            torch.cat([pk.expand(b, -1, -1, -1), keys], dim=2),
            torch.cat([pv.expand(b, -1, -1, -1), values], dim=2),
        )


WORD_MARKS = ("\u0120", "\u2581")  # byte-level BPE's and SentencePiece's leading-space marks


def plain_word(piece: str) -> bool:
    """A vocabulary piece that is a whole lower-case word: WordPiece's "river", byte-level
    BPE's "\u0120river" (the word after a space); word pieces and punctuation are not."""
    for mark in WORD_MARKS:
        if piece.startswith(mark):
            piece = piece[len(mark):]
            break
    return piece.isascii() and piece.isalpha() and piece.islower() and len(piece) > 2


def word_ids(tok: Tokenizer) -> list[int]:
    """Ids of plain lower-case words in the vocabulary (the attacker's training text)."""
    vocab = tok._inner.get_vocab()
    bpe = any(w.startswith(WORD_MARKS) for w in vocab)
    return sorted(i for w, i in vocab.items()
                  if plain_word(w) and (not bpe or w.startswith(WORD_MARKS)))


class Audit:
    def __init__(self, name: str, path: Path, sigmas: list[float], candidates: int, seed: int):
        self.name, self.path = name, path
        self.info = load_model_info(path)
        self.tok = Tokenizer.load(path)
        self.sigmas, self.candidates = sigmas, candidates
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.words = word_ids(self.tok)
        self.sentences = [self.tok.encode(s) for s in CORPUS]
        self.embed_head = ClientHead.load(path, 0)
        self._words_unit: torch.Tensor | None = None
        specials = ("[CLS]", "[SEP]", "[PAD]", "<|im_start|>", "<|im_end|>", "<|endoftext|>")
        self.special = {self.tok.token_to_id(t) for t in specials} - {None}

    # -- the requester's side --------------------------------------------------------------

    def boundary(self, head: ClientHead, ids: list[int], noise: BoundaryNoise) -> torch.Tensor:
        clean = head.forward(ids)
        noisy, _ = noise.apply(clean, self.gen)
        return noisy[0]

    def utility(self, head, rest, tail, ids, noise) -> float:
        clean = head.forward(ids)
        noisy, _ = noise.apply(clean, self.gen)
        outs = []
        for h in (clean, noisy):
            for span in rest:
                h = span.forward(h)
            outs.append(tail.forward(h))
        if self.info.is_decoder:
            return float((outs[0].argmax(-1) == outs[1].argmax(-1)).float().mean())
        return float(F.cosine_similarity(outs[0], outs[1]).mean())

    # -- attacks ---------------------------------------------------------------------------

    def position_map(self, pos: int, cache: dict[int, torch.Tensor]) -> torch.Tensor:
        """Embedding-layer output of every vocabulary token at `pos` (unit rows)."""
        if self.info.family != "bert":
            pos = 0  # no absolute positions in the embedding layer
        if pos not in cache:
            ids = torch.arange(self.info.vocab_size).view(1, -1)
            with torch.no_grad():
                if self.info.family == "bert":
                    emb = self.embed_head.embeddings
                    x = emb.norm(F.embedding(ids, emb.word) + emb.position[pos] + emb.segment)
                else:
                    x = self.embed_head.embeddings(ids, 0)
            cache[pos] = F.normalize(x[0], dim=-1)
        return cache[pos]

    def nn_attack(self, rows: torch.Tensor, maps: dict[int, torch.Tensor]) -> list[int]:
        return [
            int((self.position_map(p, maps) @ F.normalize(r, dim=0)).argmax())
            for p, r in enumerate(rows)
        ]

    def fit_ridge(self, head: ClientHead, noise: BoundaryNoise) -> torch.Tensor:
        xs, ys = [], []
        for _ in range(120):
            ids = self.rng.sample(self.words, 14)
            if self.info.family == "bert":
                ids = [101, *ids, 102]
            xs.append(self.boundary(head, ids, noise))
            ys.append(self.word_matrix()[ids])
        x = torch.cat(xs).double()
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        y = torch.cat(ys).double()
        gram = x.T @ x
        lam = 1e-3 * gram.diagonal().mean()
        w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=x.dtype), x.T @ y)
        return w.float()

    def word_matrix(self) -> torch.Tensor:
        if self._words_unit is None:
            emb = self.embed_head.embeddings
            weight = emb.word if self.info.family == "bert" else emb.weight
            self._words_unit = F.normalize(weight, dim=-1)
        return self._words_unit

    def ridge_scores(self, rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = torch.cat([rows, torch.ones(rows.shape[0], 1)], dim=1)
        return F.normalize(x @ w, dim=-1) @ self.word_matrix().T

    def greedy_attack(
        self, head: ClientHead, rows: torch.Tensor, scores: torch.Tensor, noise: BoundaryNoise
    ) -> list[int]:
        cache = head.new_cache()
        out: list[int] = []
        for pos, row in enumerate(rows):
            cands = scores[pos].topk(min(self.candidates, scores.shape[1])).indices
            with torch.no_grad():
                x = head.embeddings(cands.view(-1, 1), pos)
                prefix = _PrefixCache(cache)
                for slot, block in enumerate(head.blocks):
                    x = block(x, prefix, slot, pos)
            x = noise_free_clip(x[:, 0], noise.clip_norm)
            best = int(cands[int(((x - row) ** 2).sum(-1).argmin())])
            out.append(best)
            head.forward([best], cache, pos)
        return out

    # -- the table -------------------------------------------------------------------------

    def run(self, ks: list[int]) -> list[Row]:
        rows_out: list[Row] = []
        maps: dict[int, torch.Tensor] = {}
        for k in ks:
            if k > self.info.num_layers - 1:
                continue
            head = ClientHead.load(self.path, k)
            rest = [LayerSpan.load(self.path, k, self.info.num_layers)]
            tail = ClientTail.load(self.path, 0)
            norms = torch.cat([head.forward(s)[0].norm(dim=-1) for s in self.sentences])
            clip = float(norms.max())  # no clipping of the corpus itself
            for rel in self.sigmas:
                noise = BoundaryNoise(clip_norm=clip, sigma=rel * clip, delta=DELTA)
                w = self.fit_ridge(head, noise)
                hits = {"nn": 0, "ridge": 0}
                if self.info.is_decoder:
                    hits["greedy"] = 0
                total, util = 0, 0.0
                for ids in self.sentences:
                    obs = self.boundary(head, ids, noise)
                    scores = self.ridge_scores(obs, w)
                    guesses = {"nn": self.nn_attack(obs, maps), "ridge": scores.argmax(-1).tolist()}
                    if self.info.is_decoder:
                        guesses["greedy"] = self.greedy_attack(head, obs, scores, noise)
                    scored = [i for i, t in enumerate(ids) if t not in self.special]
                    total += len(scored)
                    for attack, guess in guesses.items():
                        hits[attack] += sum(guess[i] == ids[i] for i in scored)
                    util += self.utility(head, rest, tail, ids, noise)
                cost = noise.cost(1)
                rows_out.append(
                    Row(
                        self.name,
                        k,
                        rel,
                        clip,
                        cost.epsilon,
                        {a: h / total for a, h in hits.items()},
                        util / len(self.sentences),
                    )
                )
                print(format_row(rows_out[-1]), flush=True)
        return rows_out


def noise_free_clip(x: torch.Tensor, clip: float) -> torch.Tensor:
    norms = x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return x * (clip / norms).clamp(max=1.0)


HEADER = (
    f"{'model':<22} {'k':>2} {'sigma/C':>8} {'C':>7} {'eps/token':>10} "
    f"{'nn':>6} {'ridge':>6} {'greedy':>6} {'utility':>8}"
)


def format_row(r: Row) -> str:
    if r.epsilon == float("inf"):
        eps = "none" if r.sigma_over_c == 0 else ">1e6"
    else:
        eps = f"{r.epsilon:.3g}"
    greedy = f"{r.recovery['greedy']:.0%}" if "greedy" in r.recovery else "-"
    return (
        f"{r.model:<22} {r.k:>2} {r.sigma_over_c:>8g} {r.clip:>7.3g} {eps:>10} "
        f"{r.recovery['nn']:>6.0%} {r.recovery['ridge']:>6.0%} {greedy:>6} {r.utility:>8.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,minilm",
                    help="comma list of smollm2, minilm (real weights) and tiny (random weights)")
    ap.add_argument("--ks", default="0,1,2,4")
    ap.add_argument("--sigmas", default="0,0.001,0.003,0.01,0.03,0.1,1,5")
    ap.add_argument("--candidates", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    names = {"smollm2": SMOLLM2, "minilm": MINILM, "tiny": TINY_LLAMA}
    ks = [int(k) for k in args.ks.split(",")]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    print("Split-learning privacy audit: token recovery from the boundary activation")
    print(f"corpus: {len(CORPUS)} sentences; eps: Gaussian mechanism per token, delta={DELTA}")
    print(HEADER)
    start = time.time()
    keys = args.models.split(",")
    for key in keys:
        if key not in names:
            ap.error(f"unknown model {key!r}: choose from {', '.join(names)}")
    for key in keys:
        name = names[key]
        Audit(name, default_model_path(name), sigmas, args.candidates, args.seed).run(ks)
    print(f"({time.time() - start:.0f} s)")
    if "tiny" in keys:
        print(
            "The tiny decoder has random weights: its logits are nearly flat, so its utility "
            "column overstates the harm of noise."
        )
    print(
        "utility: decoders, share of next-token argmaxes unchanged by the noise; MiniLM, cosine "
        "of the noisy to the clean sentence embedding."
    )
    print(
        "Split learning alone is weak privacy: most tokens are recoverable from early layers "
        "unless the noise also ruins utility. Use TEE channels for sensitive inputs."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
