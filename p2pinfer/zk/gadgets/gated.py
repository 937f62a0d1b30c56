"""The gated gadget: SwiGLU and GeGLU layers, out = floor(G(floor(z_g / 2**f)) *
floor(z_u / 2**f) / 2**f) (+ a) with [z_u | z_g] = a [W_u | W_g] + b.

Spec: protocols/zk-proof.md, "Gated layers (SwiGLU, GeGLU)": the output rescale by bits
(bits.py), the product of gate and up values by a degree-3 sum-check, the up half as an
identity rescale and the gate half as a lookup (lookup.py), both ending in one matrix product
over the layer's committed [W_u | W_g]. Written once for both sides.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..field import P, eq_eval, eq_table
from ..fixed import GATED_ACTIVATIONS
from ..ledger import Lin, sumcheck
from ..manifest import LayerCommitment
from ..tables import lookup_activation
from .bits import bits_head
from .common import Claim, TripleOracle, Witness, flat, matmul_tail
from .lookup import lookup_head


def gated_layer(led, lc: LayerCommitment, f: int, nt: int, nk: int, ni: int,
                claims: list[Claim], x: np.ndarray | None, wit: Witness | None, name: str,
                rows: list | None, split_residual) -> tuple[list[Claim], list[Claim]]:
    """A gated layer: out = floor(p / 2**f) (+ a) with p = g * u elementwise, where
    u = floor(z_u / 2**f), g = G(floor(z_g / 2**f)) and [z_u | z_g] = a [W_u | W_g] + b.
    Returns (the residual claims, the claims on a from both halves)."""
    prover = wit is not None
    d = lc.d_out
    # 1-3. the output rescale: claims on out become p~(rho)
    rho, p_lin, below = bits_head(led, f, nt, ni, claims, wit.z if prover else None, False,
                                   name, split_residual)
    # 4. p~(rho) = sum_i eq(rho, i) g_i u_i: sum-check of degree 3, then g~ and u~ at rho2
    #    committed, with their product proven
    oracle = None
    if prover:
        q = wit.zw >> f
        gate = lookup_activation(q[:, d:], GATED_ACTIVATIONS[lc.activation], f,
                                 lc.lookup_range)
        oracle = TripleOracle(eq_table(rho), flat(gate), flat(q[:, :d]))
    rho2, final = sumcheck(led, f"{name}/gate-product", p_lin, ni, 3, oracle)
    i_g = led.put(oracle.s[0] if prover else None)
    i_u = led.put(oracle.m[0] if prover else None)
    i_gu = led.put(oracle.s[0] * oracle.m[0] % P if prover else None)
    led.relate(f"{name}/gate-product-final", final - Lin.var(i_gu) * eq_eval(rho, rho2))
    led.product(f"{name}/gate-product-mul", i_g, i_u, i_gu)
    full = 1 << nt
    # 5. the up half, columns [0, d) of the matrix product: an identity rescale
    rho_u, zu_lin, _ = bits_head(led, f, nt, ni, [(rho2, Lin.var(i_u), full)],
                                  wit.zw[:, :d] if prover else None, False, f"{name}/up",
                                  list)
    up = matmul_tail(led, lc, nt, nk, rho_u[:nt] + [0] + rho_u[nt:], zu_lin, [], x, wit,
                      f"{name}/up", rows)
    # 6. the gate half, columns [d, 2d): the lookup of G
    gate_wit = dataclasses.replace(wit, z=wit.zw[:, d:]) if prover else None
    rho_g, zg_lin = lookup_head(led, GATED_ACTIVATIONS[lc.activation], f, nt, ni,
                                 [(rho2, Lin.var(i_g), full)], [], gate_wit, f"{name}/gate",
                                 lc.lookup_range)
    gate_claims = matmul_tail(led, lc, nt, nk, rho_g[:nt] + [1] + rho_g[nt:], zg_lin, [], x,
                               wit, f"{name}/gate", rows)
    return below, [*up, *gate_claims]
