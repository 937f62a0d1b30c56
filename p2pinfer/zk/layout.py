"""The Hyrax layout of committed tables: how weights, biases and a proof's tables are cut into
rows, and how many vector generators a shard needs.

Spec: protocols/zk-proof.md, "Tables and Hyrax layout" (Wahby et al. 2018, section 6): a table
of 2**n entries is cut into 2**(n - c) rows of 2**c entries, and each row gets one Pedersen
vector commitment with its own blinding. A weight matrix d_in x d_out is the table of index
k * d_out + o; an attention layer's weight is three such tables (q, k, v), each committed on
its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .attention import EXP_RANGE_BITS
from .fixed import BITS, GATED_ACTIVATIONS, LayerShape, attention_shape, uses_table
from .group import PedersenParams, pedersen_params
from .tables import MAX_LOOKUP_FRAC_BITS


def hyrax_split(num_vars: int, min_col_vars: int = 0) -> tuple[int, int]:
    """(row variables, column variables) of a table with 2**num_vars entries."""
    col = max((num_vars + 1) // 2, min(min_col_vars, num_vars))
    return num_vars - col, col


def weight_width(activation: str, d_out: int) -> int:
    """Columns of a layer's weight matrix: 2 d_out for a gated layer ([W_u | W_g])."""
    return 2 * d_out if activation in GATED_ACTIVATIONS else d_out


def weight_entries(activation: str, d_in: int, d_out: int) -> int:
    """How many weights a layer commits: d (the gain) for an RMSNorm layer."""
    return d_out if activation == "rmsnorm" else d_in * weight_width(activation, d_out)


def weight_parts(layer: LayerShape) -> list[tuple[int, int]]:
    """(first column, width) of each separately committed part of a layer's weight: the q, k
    and v projections of an attention layer, the whole matrix otherwise. Each part is a Hyrax
    table of its own; the layer's row commitments (and its bias's) are the parts' in order."""
    if layer.activation == "attention":
        q, k, _ = attention_shape(layer).parts()
        return [(0, q), (q, k), (q + k, k)]
    if layer.activation == "rmsnorm":
        return [(0, layer.d_out)]
    return [(0, weight_width(layer.activation, layer.d_out))]


def part_rows(layer: LayerShape) -> list[tuple[slice, slice]]:
    """Where each weight part's row commitments (and its bias's) lie in the layer's lists."""
    out, w0, b0 = [], 0, 0
    d_rows = 1 if layer.activation == "rmsnorm" else layer.d_in
    for _, width in weight_parts(layer):
        nw = 1 << hyrax_split((d_rows * width).bit_length() - 1)[0]
        nb = 1 << hyrax_split(width.bit_length() - 1)[0]
        out.append((slice(w0, w0 + nw), slice(b0, b0 + nb)))
        w0, b0 = w0 + nw, b0 + nb
    return out


def part_row_counts(layer: LayerShape) -> tuple[int, int]:
    """How many row commitments a layer's weight and its bias have."""
    w, b = part_rows(layer)[-1]
    return w.stop, b.stop


def generator_count_for(layers: Sequence[LayerShape], tokens: int) -> int:
    """Vector generators needed to commit these layers and prove `tokens` tokens (0: commit)."""
    need = 1
    for layer in layers:
        if layer.activation == "attention":
            for _, width in weight_parts(layer):
                need = max(need, 1 << hyrax_split((layer.d_in * width).bit_length() - 1)[1])
            if tokens:
                need = max(need, *attention_columns(layer, tokens))
            continue
        nw = weight_entries(layer.activation, layer.d_in, layer.d_out).bit_length() - 1
        need = max(need, 1 << hyrax_split(nw)[1])
        if tokens and layer.activation == "rmsnorm":  # the range bits: 256 columns
            need = max(need, 256, 1 << hyrax_split((tokens - 1).bit_length())[1])
        if tokens:
            nb = (tokens * layer.d_out * BITS).bit_length() - 1
            need = max(need, 1 << hyrax_split(nb, 5)[1])
            if uses_table(layer.activation):  # the lookup table's rows
                need = max(need, 1 << hyrax_split(MAX_LOOKUP_FRAC_BITS + layer.lookup_range)[1])
    return need


def attention_columns(layer: LayerShape, tokens: int) -> list[int]:
    """Hyrax row widths of the tables an attention layer's proof commits (gadgets/attention.py):
    the rescale bits of q, k, v; the division bits (4 parts of 32 per output element); the
    softmax bits (32 per score); the scores' tables; the row maxima; the exp table."""
    nt = (tokens - 1).bit_length()
    shape = attention_shape(layer)
    nd, nh = layer.d_out.bit_length() - 1, shape.heads.bit_length() - 1
    n_s = 2 * nt + nh
    sizes = [hyrax_split(nt + (w.bit_length() - 1) + 5, 5) for w in shape.parts()]
    sizes += [hyrax_split(nt + nd + 2 + 5, 5), hyrax_split(n_s + 5, 5), hyrax_split(n_s),
              hyrax_split(nt + nh), hyrax_split(MAX_LOOKUP_FRAC_BITS + EXP_RANGE_BITS)]
    return [1 << c for _, c in sizes]


def params_for(size: int, seed: bytes) -> PedersenParams:
    return pedersen_params(max(64, 1 << (size - 1).bit_length()), seed)


def hyrax_matrix(values: np.ndarray) -> np.ndarray:
    """A flat table as its Hyrax matrix (rows x columns)."""
    n = values.size.bit_length() - 1
    rows, cols = hyrax_split(n)
    return values.reshape(1 << rows, 1 << cols)
