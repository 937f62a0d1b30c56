"""The attention gadget: the argument of an attention layer (fixed point: zk/attention.py),
claims on its output become claims on its input. Spec: protocols/zk-proof.md, "Attention
layers".

Index spaces (most significant variable first): out, O, r: (t, h, c) over tokens x d; scores,
delta, e, softmax bits: (t, h, j) over tokens x heads x tokens; M, Z: (t, h); q: (t, h, c);
k, v: (j, g, c) with g = h // G the kv head, i.e. the first log2(kv_heads) variables of h.

Committed before any challenge of the layer: the division bits (per output element four
32-bit parts: r, 2Z - 1 - r, out + 2**31, zeros), the softmax bits (per score the remainder of
(M - s) / 2**F in bits [0, F) and the argmax indicator a at bit F), delta, e, the exp
multiplicities and M. Then, from the output back:

1. division: out = floor((2 O + Z) / (2 Z)) as the zero-check 2 O + Z - 2 out Z - r = 0 with
   0 <= r, 2 Z - 1 - r < 2**(nt + f + 1), merged with the claims on out, whose value comes from
   its bits (so out is pinned to 32-bit integers: a rational out could pass a next linear
   layer); its end point gives claims on O and Z;
2. values: O + mu Z = sum_j e (v + mu) by one sum-check over (t, h, j) -> claims on e and v;
3. softmax: the zero-check of mask (M - s - 2**F delta - rem) + mu1 (1 - mask) e, plus, per
   row (t, h), sum_j a (2**F delta + rem + 1 - mask) = 0 and sum_j a = 1 (a bits, every term
   non-negative: the selected score is the row's maximum and below the diagonal) -> claims on
   s; delta in [0, 2**(f+7)) and e = E(delta) by a logUp lookup (Haboeck 2022) into the exp
   table;
4. scores: s(t, h, j) = sum_c rq(t, h, c) rk(j, g, c) by a sum-check over (h, c);
5. rotary positions: rq = C q + S rot(q) by a sum-check over (t, pair) with C, S public;
6. q, k, v: identity rescales (bits_head) and the three projections (matmul_tail, one weight
   part each) -> claims on the layer's input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..attention import (
    MAX_ATTENTION_FRAC_BITS,
    attention_fixed,
    causal_mask,
    exp_table,
    rope_tables,
    score_shift,
)
from ..errors import ShapeMismatch
from ..field import P, eq_eval, eq_table, int_matvec, int_mle_eval, int_vecmat
from ..fixed import BITS, attention_shape, log2_exact
from ..layout import hyrax_split
from ..ledger import Lin, sumcheck
from ..manifest import LayerCommitment
from .bits import BitTable, bits_head
from .common import (
    Claim,
    Committed,
    ProductSum,
    Witness,
    bit_decomposition,
    columns,
    flat,
    masked_eq,
    masked_eq_eval,
    matmul_tail,
)
from .lookup import lookup_inverses, lookup_table_side

_HALF = 1 << (BITS - 1)


def causal_mask_mle(t: list[int], j: list[int], live: int | None = None) -> int:
    """The multilinear extension of the mask at (t, j): [j <= t] is [j = t] + sum over the
    first differing bit k of [equal before k] t_k (1 - j_k); padding rows (t >= live) keep
    only j = t, which takes off sum over those rows of eq(t, row) sum_(j' < row) eq(j, j')."""
    prefix, below = 1, 0
    for a, b in zip(t, j, strict=True):
        below = (below + prefix * a % P * (1 - b)) % P
        prefix = prefix * ((2 * a * b - a - b + 1) % P) % P
    value = (below + prefix) % P
    tokens = 1 << len(t)
    if live is None or live >= tokens:
        return value
    e_t, e_j = eq_table(t), eq_table(j)
    before = sum(e_j[:live]) % P  # sum over j' < row of eq(j, j'), for row = live
    for row in range(live, tokens):
        value = (value - e_t[row] * before) % P
        before = (before + e_j[row]) % P
    return value


def _broadcast(values: list[int], inner: int) -> list[int]:
    """Each entry repeated `inner` times (a table that ignores the last variables)."""
    return [v for v in values for _ in range(inner)]


def attention_layer(led, lc: LayerCommitment, f: int, nt: int, claims: list[Claim],
                    x: np.ndarray | None, wit: Witness | None, name: str,
                    rows: dict | None, live: int) -> list[Claim]:
    """Reduce the claims on an attention layer's output to claims on its input (returned;
    none when the input is the public x, which the verifier evaluates itself). Token rows from
    `live` on are the shard's padding (attention.py)."""
    prover = wit is not None
    shape = attention_shape(lc)
    if lc.residual or lc.skip or lc.d_in != lc.d_out or shape.check():
        raise ShapeMismatch("shard", "an attention layer maps d to d, without residual")
    if not 1 <= f <= MAX_ATTENTION_FRAC_BITS:
        raise ShapeMismatch("shard", f"an attention layer needs frac_bits <= "
                                     f"{MAX_ATTENTION_FRAC_BITS}")
    tokens, d, heads, dh = 1 << nt, shape.d, shape.heads, shape.head_dim
    nd, nh = log2_exact(d, "d"), log2_exact(heads, "heads")
    ng = log2_exact(shape.kv_heads, "kv_heads")
    n_o, n_th = nt + nd, nt + nh
    n_s = n_th + nt
    shift = score_shift(f, shape.rope)
    width = nt + f + 1  # r and 2 Z - 1 - r are below 2 Z <= 2**(nt + f + 1)
    table = exp_table(f)
    ke = log2_exact(len(table), "exp table")

    # 0. commitments, before any challenge of this layer
    if prover:
        att = attention_fixed(wit.a, wit.weight, wit.bias, shape, f, live)
        zb = np.repeat(att["zsum"], dh, axis=1).reshape(-1)  # Z over (t, h, c)
        r = att["r"].reshape(-1)
        parts = [r, 2 * zb - 1 - r, att["out"].reshape(-1) + _HALF, np.zeros_like(r)]
        div = np.concatenate([bit_decomposition(p - _HALF) for p in parts])
        sm = bit_decomposition(att["rem"].reshape(-1) - _HALF)
        sm[:, shift] = att["argmax"].reshape(-1)
        com_div = BitTable(led, n_o + 2, div)
        com_sm = BitTable(led, n_s, sm)
        mult = np.bincount(att["delta"].reshape(-1), minlength=len(table)).astype(np.int64)
        com_delta = Committed(led, hyrax_split(n_s), ints=att["delta"], bits=ke)
        com_e = Committed(led, hyrax_split(n_s), ints=att["e"], bits=f + 1)
        com_mult = Committed(led, hyrax_split(ke), ints=mult, bits=n_s + 1)
        com_mx = Committed(led, hyrax_split(n_th), ints=att["mx"], bits=62)
    else:
        com_div = BitTable(led, n_o + 2)
        com_sm = BitTable(led, n_s)
        com_delta = Committed(led, hyrax_split(n_s))
        com_e = Committed(led, hyrax_split(n_s))
        com_mult = Committed(led, hyrax_split(ke))
        com_mx = Committed(led, hyrax_split(n_th))

    # 1-2. the division, merged with the claims on out (weights lam alpha^k)
    alphas = [1]
    if len(claims) > 1:
        alpha = led.challenge(f"{name}/merge".encode())
        for _ in claims[1:]:
            alphas.append(alphas[-1] * alpha % P)
    tau = [led.challenge(f"{name}/division/tau/{k}".encode()) for k in range(n_o)]
    lam = led.challenge(f"{name}/lambda".encode())
    total = Lin()
    for w, (_, lin, _) in zip(alphas, claims):
        total = total + lin * (w * lam % P)
    oracle = None
    if prover:
        e1 = [0] * (1 << n_o)
        for w, (p, _, rows_live) in zip(alphas, claims):
            e1 = [(u + w * lam * v) % P for u, v in zip(e1, masked_eq(p, rows_live, nt))]
        tabs = {"eq": eq_table(tau), "x1": flat(2 * att["o"].reshape(-1) + zb - r),
                "out": flat(att["out"]), "z": flat(zb), "e1": e1}
        oracle = ProductSum(tabs, [(1, ["eq", "x1"]), (P - 2, ["eq", "out", "z"]),
                                   (1, ["e1", "out"])], 3)
    rho, final = sumcheck(led, f"{name}/division", total, n_o, 3, oracle)
    rho_th, rho_c = rho[:n_th], rho[n_th:]
    i_o = led.put(int_mle_eval(att["o"], rho) if prover else None)
    i_z = led.put(int_mle_eval(att["zsum"], rho_th) if prover else None)
    pow_w = columns(0, width)
    (i_r,) = com_div.open(f"{name}/division-opening", [0, 0, *rho], [pow_w])
    (i_w,) = com_div.open(f"{name}/division-opening", [0, 1, *rho], [pow_w])
    (i_ob,) = com_div.open(f"{name}/division-opening", [1, 0, *rho], [columns(0, BITS)])
    i_out = led.put((led.values[i_ob] - _HALF) % P if prover else None)
    i_oz = led.put(led.values[i_out] * led.values[i_z] % P if prover else None)
    led.product(f"{name}/division-product", i_out, i_z, i_oz)
    led.relate(f"{name}/division-range", Lin.var(i_out) - Lin.var(i_ob) + _HALF)
    led.relate(f"{name}/division-range", Lin.var(i_w) - Lin.var(i_z) * 2 + Lin.var(i_r) + 1)
    e1_rho = sum(w * lam * masked_eq_eval(p, rho, rows_live, nt)
                 for w, (p, _, rows_live) in zip(alphas, claims)) % P
    expect = ((Lin.var(i_o) * 2 + Lin.var(i_z) - Lin.var(i_oz) * 2 - Lin.var(i_r))
              * eq_eval(tau, rho) + Lin.var(i_out) * e1_rho)
    led.relate(f"{name}/division-final", final - expect)
    com_div.prove_boolean(f"{name}/division")

    # 3. O(rho) + mu Z(rho) = sum over (t, h, j) of eq(rho_th, (t, h)) e (v(j, g, rho_c) + mu)
    mu = led.challenge(f"{name}/values/mu".encode())
    oracle = None
    if prover:
        vf = int_matvec(att["v"].reshape(tokens * shape.kv_heads, dh), eq_table(rho_c))
        vh = [vf[j * shape.kv_heads + (h >> (nh - ng))] for h in range(heads)
              for j in range(tokens)]  # (h, j)
        tabs = {"eq": _broadcast(eq_table(rho_th), tokens), "e": flat(att["e"]),
                "v": [(v + mu) % P for _ in range(tokens) for v in vh]}
        oracle = ProductSum(tabs, [(1, ["eq", "e", "v"])], 3)
    pi, final = sumcheck(led, f"{name}/values", Lin.var(i_o) + Lin.var(i_z) * mu, n_s, 3,
                         oracle)
    pi_h, pi_j = pi[nt:n_th], pi[n_th:]
    i_e = com_e.open_at(f"{name}/values-opening", pi)
    i_vm = led.put(oracle.value("v") if prover else None)
    i_ev = led.put(led.values[i_e] * led.values[i_vm] % P if prover else None)
    led.product(f"{name}/values-product", i_e, i_vm, i_ev)
    led.relate(f"{name}/values-final", final - Lin.var(i_ev) * eq_eval(rho_th, pi[:n_th]))
    v_claims: list[Claim] = [(pi_j + pi_h[:ng] + rho_c, Lin.var(i_vm) - mu, tokens)]

    # 4. the softmax relations, one zero-check over (t, h, j)
    tau1 = [led.challenge(f"{name}/softmax/tau/{k}".encode()) for k in range(n_s)]
    tau2 = [led.challenge(f"{name}/softmax/row/{k}".encode()) for k in range(n_th)]
    mu1, mu2, mu3 = (led.challenge(f"{name}/softmax/mu{k}".encode()) for k in (1, 2, 3))
    oracle = None
    if prover:
        mask = np.broadcast_to(causal_mask(tokens, live)[:, None, :], att["s"].shape)
        mask = mask.reshape(-1)
        rw = (att["delta"].reshape(-1) << shift) + att["rem"].reshape(-1)
        mx = np.repeat(att["mx"].reshape(-1), tokens)
        tabs = {"eq1": eq_table(tau1), "mask": flat(mask.astype(np.int64)),
                "x": flat(mx - att["s"].reshape(-1) - rw), "nmask": flat(1 - mask),
                "e": flat(att["e"]), "eq2": _broadcast(eq_table(tau2), tokens),
                "a": flat(att["argmax"]), "y": [(v + mu3) % P for v in flat(rw + 1 - mask)]}
        oracle = ProductSum(tabs, [(1, ["eq1", "mask", "x"]), (mu1, ["eq1", "nmask", "e"]),
                                   (mu2, ["eq2", "a", "y"])], 3)
    pi2, final = sumcheck(led, f"{name}/softmax", Lin(const=mu2 * mu3), n_s, 3, oracle)
    pi2_t, pi2_h, pi2_j = pi2[:nt], pi2[nt:n_th], pi2[n_th:]
    m = causal_mask_mle(pi2_t, pi2_j, live)
    i_mx = com_mx.open_at(f"{name}/max-opening", pi2[:n_th])
    i_s = led.put(int_mle_eval(att["s"], pi2) if prover else None)
    i_d = com_delta.open_at(f"{name}/delta-opening", pi2)
    i_rem, i_a = com_sm.open(f"{name}/softmax-opening", pi2, [columns(0, shift), columns(shift, 1)])
    i_e2 = com_e.open_at(f"{name}/values-opening", pi2)
    vals = led.values if prover else None
    i_rw = led.put((vals[i_d] * (1 << shift) + vals[i_rem]) % P if prover else None)
    led.relate(f"{name}/softmax-range", Lin.var(i_rw) - Lin.var(i_d) * (1 << shift)
               - Lin.var(i_rem))
    i_arw = led.put(vals[i_a] * vals[i_rw] % P if prover else None)
    led.product(f"{name}/softmax-product", i_a, i_rw, i_arw)
    e_1 = eq_eval(tau1, pi2)
    expect = ((Lin.var(i_mx) - Lin.var(i_s) - Lin.var(i_rw)) * (e_1 * m % P)
              + Lin.var(i_e2) * (e_1 * mu1 % P * (1 - m) % P)
              + (Lin.var(i_arw) + Lin.var(i_a) * ((1 - m + mu3) % P))
              * (mu2 * eq_eval(tau2, pi2[:n_th]) % P))
    led.relate(f"{name}/softmax-final", final - expect)
    com_sm.prove_boolean(f"{name}/softmax")

    # 5. (delta, e) in {(u, E(u))}: logUp with inverses h per score and g per table entry
    exp_lookup(led, name, table, n_s, ke,
               (att["delta"].reshape(-1), att["e"].reshape(-1), mult) if prover else None,
               com_delta, com_e, com_mult)

    # 6. s(pi2) = sum over (h, c) of eq(pi2_h, h) rq(pi2_t, h, c) rk(pi2_j, g, c)
    oracle = None
    if prover:
        rq = int_vecmat(eq_table(pi2_t), att["rq"])  # (h, c)
        rkf = int_vecmat(eq_table(pi2_j), att["rk"])  # (g, c)
        rk = [rkf[(h >> (nh - ng)) * dh + c] for h in range(heads) for c in range(dh)]
        oracle = ProductSum({"eq": _broadcast(eq_table(pi2_h), dh), "q": rq, "k": rk},
                            [(1, ["eq", "q", "k"])], 3)
    sig, final = sumcheck(led, f"{name}/scores", Lin.var(i_s), nd, 3, oracle)
    sig_h, sig_c = sig[:nh], sig[nh:]
    i_rq = led.put(oracle.value("q") if prover else None)
    i_rk = led.put(oracle.value("k") if prover else None)
    i_qk = led.put(vals[i_rq] * vals[i_rk] % P if prover else None)
    led.product(f"{name}/scores-product", i_rq, i_rk, i_qk)
    led.relate(f"{name}/scores-final", final - Lin.var(i_qk) * eq_eval(pi2_h, sig_h))
    q_claims: list[Claim] = [(pi2_t + sig, Lin.var(i_rq), tokens)]
    k_claims: list[Claim] = [(pi2_j + sig_h[:ng] + sig_c, Lin.var(i_rk), tokens)]

    # 7. rotary positions: claims on rq, rk become claims on q, k
    if shape.rope:
        cos, sin = rope_tables(shape.rope, dh, tokens, f)
        q_claims = _rotary(led, f"{name}/rope-q", nt, nh, q_claims[0], cos, sin,
                           att["q"] if prover else None, heads)
        k_claims = _rotary(led, f"{name}/rope-k", nt, ng, k_claims[0], cos, sin,
                           att["k"] if prover else None, shape.kv_heads)

    # 8. q, k, v = floor(z / 2**f) and z = a W + b, one weight part each
    below: list[Claim] = []
    col = 0
    for part, (tag, part_claims) in enumerate((("q", q_claims), ("k", k_claims),
                                               ("v", v_claims))):
        w = shape.parts()[part]
        z_part = att["z"][:, col:col + w] if prover else None
        col += w
        rho_p, z_lin, _ = bits_head(led, f, nt, nt + log2_exact(w, "width"), part_claims,
                                    z_part, False, f"{name}/{tag}", list)
        below += matmul_tail(led, lc, nt, nd, rho_p, z_lin, [], x, wit, f"{name}/{tag}", rows,
                             part)
    return below


def _rotary(led, name: str, nt: int, nh: int, claim: Claim, cos: np.ndarray, sin: np.ndarray,
            q: np.ndarray | None, heads: int) -> list[Claim]:
    """rq~(p) = sum over (t, i) of eq((p_t, p_i), (t, i)) [C(t, i) ((1 - p_c) Q0 + p_c Q1)
    + S(t, i) (p_c Q0 - (1 - p_c) Q1)], Q_b(t, i) = q~(t, p_h, b, i): two claims on q."""
    point, lin, _ = claim
    p_t, p_h, p_c, p_i = point[:nt], point[nt:nt + nh], point[nt + nh], point[nt + nh + 1:]
    half = cos.shape[1]
    oracle = None
    if q is not None:
        folded = int_vecmat(eq_table(p_h), np.ascontiguousarray(
            q.reshape(q.shape[0], heads, 2 * half).transpose(1, 0, 2)).reshape(heads, -1))
        q0 = [folded[t * 2 * half + i] for t in range(q.shape[0]) for i in range(half)]
        q1 = [folded[t * 2 * half + half + i] for t in range(q.shape[0]) for i in range(half)]
        qa = [((1 - p_c) * a + p_c * b) % P for a, b in zip(q0, q1)]
        qb = [(p_c * a - (1 - p_c) * b) % P for a, b in zip(q0, q1)]
        oracle = ProductSum({"eq": eq_table(p_t + p_i), "cos": flat(cos), "sin": flat(sin),
                             "qa": qa, "qb": qb, "q0": q0, "q1": q1},
                            [(1, ["eq", "cos", "qa"]), (1, ["eq", "sin", "qb"])], 3)
    pt, final = sumcheck(led, name, lin, nt + (half.bit_length() - 1), 3, oracle)
    i_0 = led.put(oracle.value("q0") if q is not None else None)
    i_1 = led.put(oracle.value("q1") if q is not None else None)
    c_v, s_v = int_mle_eval(cos, pt), int_mle_eval(sin, pt)
    qa_lin = Lin.var(i_0) * ((1 - p_c) % P) + Lin.var(i_1) * p_c
    qb_lin = Lin.var(i_0) * p_c - Lin.var(i_1) * ((1 - p_c) % P)
    led.relate(f"{name}-final",
               final - (qa_lin * c_v + qb_lin * s_v) * eq_eval(p_t + p_i, pt))
    full = 1 << nt
    t_pt, i_pt = pt[:nt], pt[nt:]
    return [(t_pt + p_h + [0] + i_pt, Lin.var(i_0), full),
            (t_pt + p_h + [1] + i_pt, Lin.var(i_1), full)]


def exp_lookup(led: Any, name: str, table: Any, n_s: int, ke: int, witness: Any,
               com_delta: Any, com_e: Any, com_mult: Any) -> None:
    """(delta, e) in {(u, E(u))}: the logUp argument that every score gap delta and its exp e
    are a row of the exp table, with inverses h per score and g per table entry (shared by the
    whole-sequence and the decode-step attention gadgets). `witness` is the prover's
    (delta, e, table multiplicities), None on the verifier."""
    prover = witness is not None
    mult = witness[2] if prover else None
    lookup = lookup_inverses(led, name, range(len(table)), table, hyrax_split(n_s),
                             hyrax_split(ke), witness)
    beta, gamma = lookup.beta, lookup.gamma
    r_h = [led.challenge(f"{name}/lookup/rh/{k}".encode()) for k in range(n_s)]
    oracle = None
    if prover:
        oracle = ProductSum({"eq": eq_table(r_h), "h": lookup.h_tab, "l": lookup.l_tab},
                            [(1, ["eq", "h", "l"])], 3)
    pi3, final = sumcheck(led, f"{name}/lookup", Lin(const=1), n_s, 3, oracle)
    i_h = lookup.com_h.open_at(f"{name}/lookup-opening", pi3)
    i_d3 = com_delta.open_at(f"{name}/delta-opening", pi3)
    i_e3 = com_e.open_at(f"{name}/values-opening", pi3)
    l_lin = (Lin.var(i_d3) + Lin.var(i_e3) * gamma) * (P - 1) + beta
    i_l = led.put(led.value(l_lin) if prover else None)
    led.relate(f"{name}/lookup-final", Lin.var(i_l) - l_lin)
    i_hl = led.put(led.values[i_h] * led.values[i_l] % P if prover else None)
    led.product(f"{name}/lookup-product", i_h, i_l, i_hl)
    led.relate(f"{name}/lookup-final", final - Lin.var(i_hl) * eq_eval(r_h, pi3))
    lookup_table_side(led, name, lookup, com_mult, mult)
