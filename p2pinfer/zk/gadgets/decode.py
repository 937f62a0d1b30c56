"""The decode-step attention gadget: one new token at position T attends over a committed
key/value cache (rows 0..T-1, committed by earlier steps of the same session) and its own new
row T, which this step commits for the steps after it. Spec: protocols/zk-proof.md, "Decode
steps over a committed KV cache"; fixed point: zk/kvcache.py `attention_step`.

Index spaces (most significant variable first), with nk = ceil(log2(T + 1)) key variables:
out, O, r: (h, c); scores, delta, e, softmax bits: (h, j); M, Z: (h); q: (h, c); keys K and
values V: (j, g, c) over 2**nk rows, rows 0..T-1 the cache, row T the new one, zero beyond.

The argument is the one of gadgets/attention.py with a single query row (division, values,
softmax with the mask [j <= T], the exp lookup, scores, rotary positions at row T), except that
the claims on K and V are not reduced through the projections of every token: each is opened
against the row commitments of the cache and of the new row (one Hyrax opening whose row
weights are eq(p_j, j)), and the new rows alone are tied to the step's input by one opening
each at a fresh challenge, which then runs through the k (with rope) and v projections. So a
step proves one row of projections, never the past ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..attention import MAX_ATTENTION_FRAC_BITS, exp_table, rope_tables, score_shift
from ..errors import ShapeMismatch
from ..field import P, dot, eq_eval, eq_table, int_matvec, int_mle_eval, int_vecmat
from ..fixed import BITS, attention_shape, log2_exact
from ..group import encode_point
from ..layout import hyrax_split
from ..ledger import Lin, sumcheck
from ..manifest import LayerCommitment
from .attention import _broadcast, _rotary, causal_mask_mle, exp_lookup
from .bits import BitTable, bits_head
from .common import (
    Claim,
    Committed,
    ProductSum,
    Witness,
    bit_decomposition,
    columns,
    flat,
    matmul_tail,
)

_HALF = 1 << (BITS - 1)
#: public bounds of the committed cache rows: rotated keys |rk| < 2**32, values |v| < 2**31
KEY_BITS = 34
VALUE_BITS = 32


@dataclass
class LayerCache:
    """One attention layer's view of a session's cache for one step.

    Verifier: `key_points`, `value_points` (decoded row commitments of rows 0..T-1). Prover:
    also `keys`, `values` (T x kv_width int64) and their row blindings, and `att` (the step's
    fixed-point trace, kvcache.attention_step). The gadget fills in the new row's commitments
    (`new_key`, `new_value`, 48-byte encodings) and, on the prover, their blindings.
    """

    position: int
    key_points: list = field(default_factory=list)
    value_points: list = field(default_factory=list)
    keys: np.ndarray | None = None
    values: np.ndarray | None = None
    key_blinds: list[int] | None = None
    value_blinds: list[int] | None = None
    att: dict | None = None
    new_key: bytes = b""
    new_value: bytes = b""
    new_key_blind: int = 0
    new_value_blind: int = 0


def _commit_row(led, row: np.ndarray | None, bits: int) -> tuple[object, bytes, int]:
    """Commit one cache row as a one-row Hyrax matrix: (point or None, encoding, blinding)."""
    if row is not None:
        (blind,) = led.put_int_matrix(row.reshape(1, -1), bits)
        return None, led.record.matrices[-1][0], blind
    (pt,) = led.next_matrix(1)
    return pt, encode_point(pt), 0


def _open_rows(led, check: str, row_w: list[int], col: list[int], rows: np.ndarray | None,
               blinds: list[int] | None, points: list | None) -> int:
    """Commit <sum_j row_w[j] row_j, col> and prove it against the row commitments."""
    if rows is not None:
        u = int_vecmat(row_w, rows)
        idx = led.put(dot(u, col))
        led.prove_dot(u, dot(row_w, blinds), [col], [idx])
        return idx
    idx = led.put()
    led.check_dot(check, points, row_w, [col], [idx])
    return idx


def decode_attention_layer(led, lc: LayerCommitment, f: int, claims: list[Claim],
                           x: np.ndarray | None, wit: Witness | None, name: str,
                           rows: dict | None, cache: LayerCache) -> list[Claim]:
    """Reduce the claims on a decode step's attention output (one token) to claims on its
    input row, against `cache` (rows 0..T-1 committed earlier); commits the new row T."""
    prover = wit is not None
    shape = attention_shape(lc)
    if lc.residual or lc.skip or lc.d_in != lc.d_out or shape.check():
        raise ShapeMismatch("shard", "an attention layer maps d to d, without residual")
    if not 1 <= f <= MAX_ATTENTION_FRAC_BITS:
        raise ShapeMismatch("shard", f"an attention layer needs frac_bits <= "
                                     f"{MAX_ATTENTION_FRAC_BITS}")
    big_t = cache.position
    if len(cache.key_points if not prover else cache.key_blinds) != big_t:
        raise ShapeMismatch(f"{name}/kv-cache", "the cache does not hold one row per position")
    nk = big_t.bit_length()  # 2**nk >= T + 1
    keys_n = 1 << nk
    d, heads, dh = shape.d, shape.heads, shape.head_dim
    kvw = shape.kv_width
    nd, nh = log2_exact(d, "d"), log2_exact(heads, "heads")
    ng = log2_exact(shape.kv_heads, "kv_heads")
    n_o, n_th = nd, nh
    n_s = nh + nk
    shift = score_shift(f, shape.rope)
    width = nk + f + 1  # r and 2 Z - 1 - r are below 2 Z <= 2**(nk + f + 1)
    table = exp_table(f)
    ke = log2_exact(len(table), "exp table")
    att = cache.att if prover else None

    # 0. the new cache row, then the step's tables, before any challenge of this layer
    key_pt, cache.new_key, cache.new_key_blind = _commit_row(
        led, att["rk"] if prover else None, KEY_BITS)
    value_pt, cache.new_value, cache.new_value_blind = _commit_row(
        led, att["v"] if prover else None, VALUE_BITS)
    if prover:
        zb = np.repeat(att["zsum"], dh)  # Z over (h, c)
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
        all_keys = np.concatenate([cache.keys, att["rk"]])
        all_values = np.concatenate([cache.values, att["v"]])
        key_blinds = [*cache.key_blinds, cache.new_key_blind]
        value_blinds = [*cache.value_blinds, cache.new_value_blind]
        key_pts = value_pts = None
    else:
        com_div = BitTable(led, n_o + 2)
        com_sm = BitTable(led, n_s)
        com_delta = Committed(led, hyrax_split(n_s))
        com_e = Committed(led, hyrax_split(n_s))
        com_mult = Committed(led, hyrax_split(ke))
        com_mx = Committed(led, hyrax_split(n_th))
        all_keys = all_values = key_blinds = value_blinds = None
        key_pts = [*cache.key_points, key_pt]
        value_pts = [*cache.value_points, value_pt]

    # 1-2. the division, merged with the claims on out
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
        for w, (p, _, _) in zip(alphas, claims):
            e1 = [(u + w * lam * v) % P for u, v in zip(e1, eq_table(p))]
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
    e1_rho = sum(w * lam * eq_eval(p, rho) for w, (p, _, _) in zip(alphas, claims)) % P
    expect = ((Lin.var(i_o) * 2 + Lin.var(i_z) - Lin.var(i_oz) * 2 - Lin.var(i_r))
              * eq_eval(tau, rho) + Lin.var(i_out) * e1_rho)
    led.relate(f"{name}/division-final", final - expect)
    com_div.prove_boolean(f"{name}/division")

    # 3. O(rho) + mu Z(rho) = sum over (h, j) of eq(rho_th, h) e (V(j, g, rho_c) + mu)
    mu = led.challenge(f"{name}/values/mu".encode())
    oracle = None
    if prover:
        vf = int_matvec(att["values"].reshape(keys_n * shape.kv_heads, dh), eq_table(rho_c))
        vh = [(vf[j * shape.kv_heads + (h >> (nh - ng))] + mu) % P for h in range(heads)
              for j in range(keys_n)]  # (h, j)
        tabs = {"eq": _broadcast(eq_table(rho_th), keys_n), "e": flat(att["e"]), "v": vh}
        oracle = ProductSum(tabs, [(1, ["eq", "e", "v"])], 3)
    pi, final = sumcheck(led, f"{name}/values", Lin.var(i_o) + Lin.var(i_z) * mu, n_s, 3,
                         oracle)
    pi_h, pi_j = pi[:n_th], pi[n_th:]
    i_e = com_e.open_at(f"{name}/values-opening", pi)
    i_vm = led.put(oracle.value("v") if prover else None)
    i_ev = led.put(led.values[i_e] * led.values[i_vm] % P if prover else None)
    led.product(f"{name}/values-product", i_e, i_vm, i_ev)
    led.relate(f"{name}/values-final", final - Lin.var(i_ev) * eq_eval(rho_th, pi_h))
    v_point, v_lin = pi_j + pi_h[:ng] + rho_c, Lin.var(i_vm) - mu

    # 4. the softmax relations over (h, j), the mask [j <= T]
    tau1 = [led.challenge(f"{name}/softmax/tau/{k}".encode()) for k in range(n_s)]
    tau2 = [led.challenge(f"{name}/softmax/row/{k}".encode()) for k in range(n_th)]
    mu1, mu2, mu3 = (led.challenge(f"{name}/softmax/mu{k}".encode()) for k in (1, 2, 3))
    t_bits = [(big_t >> (nk - 1 - k)) & 1 for k in range(nk)]
    oracle = None
    if prover:
        mask = np.broadcast_to((np.arange(keys_n) <= big_t)[None, :], att["s"].shape)
        mask = mask.reshape(-1).astype(np.int64)
        rw = (att["delta"].reshape(-1) << shift) + att["rem"].reshape(-1)
        mx = np.repeat(att["mx"].reshape(-1), keys_n)
        tabs = {"eq1": eq_table(tau1), "mask": flat(mask),
                "x": flat(mx - att["s"].reshape(-1) - rw), "nmask": flat(1 - mask),
                "e": flat(att["e"]), "eq2": _broadcast(eq_table(tau2), keys_n),
                "a": flat(att["argmax"]), "y": [(v + mu3) % P for v in flat(rw + 1 - mask)]}
        oracle = ProductSum(tabs, [(1, ["eq1", "mask", "x"]), (mu1, ["eq1", "nmask", "e"]),
                                   (mu2, ["eq2", "a", "y"])], 3)
    pi2, final = sumcheck(led, f"{name}/softmax", Lin(const=mu2 * mu3), n_s, 3, oracle)
    pi2_h, pi2_j = pi2[:n_th], pi2[n_th:]
    m = causal_mask_mle(t_bits, pi2_j)
    i_mx = com_mx.open_at(f"{name}/max-opening", pi2_h)
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
              * (mu2 * eq_eval(tau2, pi2_h) % P))
    led.relate(f"{name}/softmax-final", final - expect)
    com_sm.prove_boolean(f"{name}/softmax")

    # 5. (delta, e) in {(u, E(u))} (logUp)
    exp_lookup(led, name, table, n_s, ke,
               (att["delta"].reshape(-1), att["e"].reshape(-1), mult) if prover else None,
               com_delta, com_e, com_mult)

    # 6. s(pi2) = sum over (h, c) of eq(pi2_h, h) rq(h, c) K(pi2_j, g, c)
    oracle = None
    if prover:
        rq = flat(att["rq"])  # (h, c)
        kf = int_vecmat(eq_table(pi2_j), att["keys"])  # (g, c)
        kh = [kf[(h >> (nh - ng)) * dh + c] for h in range(heads) for c in range(dh)]
        oracle = ProductSum({"eq": _broadcast(eq_table(pi2_h), dh), "q": rq, "k": kh},
                            [(1, ["eq", "q", "k"])], 3)
    sig, final = sumcheck(led, f"{name}/scores", Lin.var(i_s), nd, 3, oracle)
    sig_h, sig_c = sig[:nh], sig[nh:]
    i_rq = led.put(oracle.value("q") if prover else None)
    i_rk = led.put(oracle.value("k") if prover else None)
    i_qk = led.put(vals[i_rq] * vals[i_rk] % P if prover else None)
    led.product(f"{name}/scores-product", i_rq, i_rk, i_qk)
    led.relate(f"{name}/scores-final", final - Lin.var(i_qk) * eq_eval(pi2_h, sig_h))
    q_claims: list[Claim] = [(sig, Lin.var(i_rq), 1)]
    k_point, k_lin = pi2_j + sig_h[:ng] + sig_c, Lin.var(i_rk)

    # 7. the claims on K and V: the committed rows 0..T (cache and new row) at their points
    live_rows = big_t + 1
    for tag, point, lin, mat, blinds, pts in (
            ("keys", k_point, k_lin, all_keys, key_blinds, key_pts),
            ("values", v_point, v_lin, all_values, value_blinds, value_pts)):
        row_w = eq_table(point[:nk])[:live_rows]
        i_open = _open_rows(led, f"{name}/cache-{tag}-opening", row_w,
                            eq_table(point[nk:]), mat, blinds, pts)
        led.relate(f"{name}/cache-{tag}-final", lin - Lin.var(i_open))

    # 8. the new rows at fresh points: claims on this step's rk (then k by rope) and v
    nkv = log2_exact(kvw, "kv width")
    new_claims = []
    for tag, row, blind, pt in (("key", att["rk"] if prover else None, cache.new_key_blind,
                                 key_pt),
                                ("value", att["v"] if prover else None, cache.new_value_blind,
                                 value_pt)):
        zeta = [led.challenge(f"{name}/new-{tag}/{k}".encode()) for k in range(nkv)]
        i_new = _open_rows(led, f"{name}/new-{tag}-opening", [1], eq_table(zeta),
                           row, [blind] if prover else None, None if prover else [pt])
        new_claims.append((zeta, Lin.var(i_new), 1))
    k_claims: list[Claim] = [new_claims[0]]
    v_claims: list[Claim] = [new_claims[1]]

    # 9. rotary positions at row T: claims on rq, rk become claims on q, k
    if shape.rope:
        cos, sin = rope_tables(shape.rope, dh, big_t + 1, f)
        cos, sin = cos[big_t:big_t + 1], sin[big_t:big_t + 1]
        q_claims = _rotary(led, f"{name}/rope-q", 0, nh, q_claims[0], cos, sin,
                           att["q"] if prover else None, heads)
        k_claims = _rotary(led, f"{name}/rope-k", 0, ng, k_claims[0], cos, sin,
                           att["k"] if prover else None, shape.kv_heads)

    # 10. q, k, v = floor(z / 2**f) and z = a W + b for the one new row
    below: list[Claim] = []
    col = 0
    for part, (tag, part_claims) in enumerate((("q", q_claims), ("k", k_claims),
                                               ("v", v_claims))):
        w = shape.parts()[part]
        z_part = att["z"][:, col:col + w] if prover else None
        col += w
        rho_p, z_lin, _ = bits_head(led, f, 0, log2_exact(w, "width"), part_claims,
                                    z_part, False, f"{name}/{tag}", list)
        below += matmul_tail(led, lc, 0, nd, rho_p, z_lin, [], x, wit, f"{name}/{tag}", rows,
                             part)
    return below
