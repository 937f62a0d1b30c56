"""Benchmark of p2pinfer.zk: shard proofs against EZKL, and prover cost against plain execution.

Prints these tables (same run; medians):
  1. group building blocks: PyNaCl ed25519 vs py_arkworks_bls12381 G1 (why we chose arkworks);
  2. MLP 256 -> 256 -> 256 with ReLU, batch 1: prove, verify, proof size and one-time setup,
     ours vs EZKL (PyPI `ezkl`, local SRS from ezkl.gen_srs; if ezkl or onnx is missing, the
     figures recorded on this machine are printed and labelled as recorded);
  3. a 1024-wide MLP block (1024 -> 1024 ReLU -> 1024 residual) at 128 tokens: prover time over
     the plain fixed-point forward time, and weight-commitment seconds per million weights;
  4. a Llama block (the built-in model format's llama-attn and llama-mlp halves: RMSNorm,
     causal attention with 4 heads, 2 kv heads and rotary positions, output projection and
     residual; RMSNorm, SwiGLU MLP and residual), per half: prove, verify, proof size, prover
     time over the fixed-point forward, and the fixed-point error against the float model.
     With `--ezkl-attention`, ours and EZKL on one small attention half (same weights and
     input, no rotary positions; EZKL's setup and prove take minutes there);
  5. with `--smollm2` (or `--smollm2-only`): all 30 decoder blocks of SmolLM2-135M-Instruct, real
     weights, proven and verified half by half on a 16-token chat prompt, totals beside the
     published GPT-2 figures of zkGPT, Jolt Atlas and NanoZK (quoted, other hardware).
Every proof row also prints where the prover's time went (each ledger method and the witness
trace timed in the same proofs), and the larger ones the proof bytes by part.

Every prove time is printed beside the pure-Python reference kernels' (P2PINFER_ZK_REFERENCE=1,
in a child process of the same run) unless --no-reference is given.

Usage: python tools/bench_zk.py [--no-ezkl] [--no-large] [--no-block] [--no-reference]
                                [--repeat N] [--smollm2 | --smollm2-only [--smollm2-blocks N]]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pinfer.zk import (
    FixedLayer,
    ProofBinding,
    ProvableMlp,
    commit_shard,
    field,
    prove,
    verify,
)
from p2pinfer.zk.group import pedersen_params
from p2pinfer.zk.layout import generator_count_for, params_for

FRAC_BITS = 12
GELU_FRAC_BITS = 8  # GELU and SiLU tables exist up to f = 10
# EZKL 23.0.5 on the same MLP and input, measured here by bench_ezkl earlier (the README's run):
# the same quantities as a measured run (setup = settings + calibration + compile + SRS + keys;
# size = raw halo2 proof bytes, beside its proof.json file), printed as recorded, not measured.
EZKL_RECORDED = {"prove": 12.56, "setup": 30.26, "verify": 0.0624, "size": 3_100,
                 "file_size": 94_100, "logrows": None}


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def fmt_s(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


# -- 1. group building blocks ---------------------------------------------------------------


def bench_groups(repeat: int) -> None:
    import secrets

    import nacl.bindings as nb
    from py_arkworks_bls12381 import G1Point, Scalar

    from p2pinfer.zk.field import P

    pts = [G1Point.hash_to_curve(b"%d" % i, b"bench") for i in range(256)]
    scs = [Scalar.from_le_bytes(secrets.randbelow(P).to_bytes(32, "little")) for _ in range(256)]
    ed = [nb.crypto_scalarmult_ed25519_base_noclamp(nb.crypto_core_ed25519_scalar_reduce(
        secrets.token_bytes(64))) for _ in range(256)]
    eds = [nb.crypto_core_ed25519_scalar_reduce(secrets.token_bytes(64)) for _ in range(256)]

    n = 200
    t_add_a = median_time(lambda: [pts[0] + pts[1] for _ in range(n)], repeat) / n
    t_add_e = median_time(lambda: [nb.crypto_core_ed25519_add(ed[0], ed[1])
                                   for _ in range(n)], repeat) / n
    t_mul_a = median_time(lambda: [pts[0] * scs[0] for _ in range(20)], repeat) / 20
    t_mul_e = median_time(lambda: [nb.crypto_scalarmult_ed25519_noclamp(eds[0], ed[0])
                                   for _ in range(20)], repeat) / 20
    t_msm_a = median_time(lambda: G1Point.multiexp_unchecked(pts, scs), repeat)

    def ed_msm():
        acc = ed[0]
        for s, p in zip(eds, ed):
            acc = nb.crypto_core_ed25519_add(acc, nb.crypto_scalarmult_ed25519_noclamp(s, p))

    t_msm_e = median_time(ed_msm, max(1, repeat // 2))
    rows = [
        ["point add", fmt_us(t_add_e), fmt_us(t_add_a), f"{t_add_e / t_add_a:.1f}x"],
        ["scalar mult", fmt_us(t_mul_e), fmt_us(t_mul_a), f"{t_mul_e / t_mul_a:.1f}x"],
        ["MSM 256 full scalars", fmt_s(t_msm_e), fmt_s(t_msm_a), f"{t_msm_e / t_msm_a:.1f}x"],
    ]
    table("Group operations (PyNaCl ed25519 = reference, arkworks BLS12-381 G1 = ours)",
          ["op", "PyNaCl", "arkworks", "arkworks speed-up"], rows)


def fmt_us(s: float) -> str:
    return f"{s * 1e6:.1f} us"


# -- 2. MLP 256 -> 256 -> 256 vs EZKL -------------------------------------------------------


def float_mlp(rng: np.random.Generator, dims: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(rng.normal(0, 1 / np.sqrt(a), (a, b)), rng.normal(0, 0.05, b))
            for a, b in pairwise(dims)]


def bench_ours_small(layers, x_float, repeat: int, act: str = "relu",
                     frac_bits: int = FRAC_BITS) -> dict:
    lookup = act in ("gelu", "silu", "swiglu")
    shard = ProvableMlp.from_float(layers, activations=[act, "identity"] if lookup else act,
                                   frac_bits=frac_bits)
    x = shard.quantize(x_float)
    t = time.perf_counter()
    pedersen_params(max(64, generator_count_for(shard.layers, x.shape[0])))
    gens = time.perf_counter() - t
    t = time.perf_counter()
    committed = commit_shard(shard)
    setup = time.perf_counter() - t
    y = committed.forward_fixed(x)
    binding = ProofBinding(b"bench-task", b"\0" * 32)
    proofs = []
    t_prove = median_time(lambda: proofs.append(prove(committed, x, y, binding)), repeat)
    proof = proofs[-1]
    t_verify = median_time(lambda: verify(committed.commitment, x, y, proof, binding), repeat)
    spent: dict[str, float] = {}
    _, spent_total = timed_prove(committed, x, y, binding, spent)  # one more, for the breakdown
    ref = x_float
    for k, (w, b, *gate) in enumerate(layers):
        if gate:  # swiglu: silu(x W_g + b_g) * (x W_u + b_u)
            zg = ref @ gate[0] + gate[1]
            ref = zg / (1 + np.exp(-zg)) * (ref @ w + b)
            continue
        ref = ref @ w + b
        if act == "relu":
            ref = np.maximum(ref, 0)
        elif k == 0 and act == "gelu":  # gelu, then identity
            ref = ref * 0.5 * (1 + np.vectorize(math.erf)(ref / math.sqrt(2)))
        elif k == 0:  # silu, then identity
            ref = ref / (1 + np.exp(-ref))
    err = float(np.abs(shard.dequantize(y) - ref).max())
    return {"prove": t_prove, "verify": t_verify, "size": len(proof.to_bytes()),
            "setup": setup, "generators": gens, "max_abs_err": err,
            "spent": spent, "spent_total": spent_total}


def bench_llama_mlp_block(x_float, repeat: int, ff: int = 512, norm: bool = False) -> dict:
    """down(silu(h W_g + b_g) * (h W_u + b_u)) + x with h = x, or h = RMSNorm(x) g: the gated
    layer, then a down projection whose residual reaches back to the block's input."""
    rng = np.random.default_rng(13)
    d = x_float.shape[1]
    ((wu, bu),), ((wg, bg),) = float_mlp(rng, [d, ff]), float_mlp(rng, [d, ff])
    ((wd, bd),) = float_mlp(rng, [ff, d])
    shard = ProvableMlp.from_float([(wu, bu, wg, bg), (wd, bd)], activations=["swiglu",
                                   "identity"], residual=[False, True], skip=[0, 1],
                                   frac_bits=GELU_FRAC_BITS)
    gain = rng.normal(1, 0.1, d)
    if norm:
        g = FixedLayer(np.rint(gain * (1 << GELU_FRAC_BITS)).astype(np.int64)[None], None,
                       "rmsnorm")
        gated, down = shard.layers
        shard = ProvableMlp([g, gated, dataclasses.replace(down, skip=2)], GELU_FRAC_BITS)
    x = shard.quantize(x_float)
    committed = commit_shard(shard)
    y = committed.forward_fixed(x)
    binding = ProofBinding(b"bench-task", b"\0" * 32)
    proofs = []
    t_prove = median_time(lambda: proofs.append(prove(committed, x, y, binding)), repeat)
    t_verify = median_time(lambda: verify(committed.commitment, x, y, proofs[-1], binding),
                           repeat)
    h = x_float
    if norm:
        h = x_float / np.sqrt((x_float ** 2).mean(axis=1, keepdims=True) + 2.0 ** -16) * gain
    zg = h @ wg + bg
    ref = (zg / (1 + np.exp(-zg)) * (h @ wu + bu)) @ wd + bd + x_float
    return {"prove": t_prove, "verify": t_verify, "size": len(proofs[-1].to_bytes()),
            "max_abs_err": float(np.abs(shard.dequantize(y) - ref).max())}


def bench_ezkl(layers, x_float) -> dict | None:
    try:
        import ezkl  # noqa: F401
        import onnx  # noqa: F401
        import torch
    except ImportError:
        return None
    mods = []
    for w, b in layers:
        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w.T, dtype=torch.float32))
            lin.bias.copy_(torch.tensor(b, dtype=torch.float32))
        mods += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods).eval()
    return _ezkl_run(model, torch.tensor(x_float, dtype=torch.float32))


def _ezkl_run(model, x) -> dict:
    """EZKL's whole pipeline on one torch module and input: setup (settings, calibration,
    compile, SRS, keys), prove, verify."""
    import ezkl
    import torch

    d = Path(tempfile.mkdtemp(prefix="bench-ezkl-"))
    torch.onnx.export(model, x, d / "m.onnx", dynamo=False, input_names=["input"],
                      output_names=["output"])
    (d / "input.json").write_text(json.dumps({"input_data": [x.reshape(-1).tolist()]}))
    names = {"model": "m.onnx", "settings": "settings.json", "compiled": "m.compiled",
             "srs": "kzg.srs", "vk": "vk.key", "pk": "pk.key", "witness": "witness.json",
             "proof": "proof.json", "data": "input.json"}
    paths = {k: str(d / v) for k, v in names.items()}
    run_args = ezkl.PyRunArgs()
    run_args.input_visibility = "public"
    run_args.output_visibility = "public"
    run_args.param_visibility = "fixed"
    t0 = time.perf_counter()
    ezkl.gen_settings(paths["model"], paths["settings"], py_run_args=run_args)
    ezkl.calibrate_settings(paths["data"], paths["model"], paths["settings"], "resources")
    ezkl.compile_circuit(paths["model"], paths["compiled"], paths["settings"])
    logrows = json.loads(Path(paths["settings"]).read_text())["run_args"]["logrows"]
    ezkl.gen_srs(paths["srs"], logrows)
    ezkl.gen_witness(paths["data"], paths["compiled"], paths["witness"])
    ezkl.setup(paths["compiled"], paths["vk"], paths["pk"], paths["srs"])
    setup = time.perf_counter() - t0
    t = time.perf_counter()
    ezkl.prove(paths["witness"], paths["compiled"], paths["pk"], paths["proof"], paths["srs"])
    t_prove = time.perf_counter() - t
    t = time.perf_counter()
    assert ezkl.verify(paths["proof"], paths["settings"], paths["vk"], paths["srs"])
    t_verify = time.perf_counter() - t
    proof = json.loads(Path(paths["proof"]).read_text())
    file_size = os.path.getsize(paths["proof"])
    hex_proof = proof.get("hex_proof") or ""
    size = len(bytes.fromhex(hex_proof.removeprefix("0x"))) if hex_proof else file_size
    return {"prove": t_prove, "verify": t_verify, "size": size, "file_size": file_size,
            "setup": setup, "logrows": logrows}


def ezkl_rows(ours: dict, ref: dict, setup: float) -> list[list[str]]:
    """Prove, verify, proof size and one-time setup, ours beside EZKL's, with the ratios."""
    return [
        ["prove", fmt_s(ours["prove"]), fmt_s(ref["prove"]),
         f"{ref['prove'] / ours['prove']:.0f}x faster"],
        ["verify", fmt_s(ours["verify"]), fmt_s(ref["verify"]),
         f"{ours['verify'] / ref['verify']:.2f}x EZKL's time"],
        ["proof size", f"{ours['size'] / 1000:.1f} KB", f"{ref['size'] / 1000:.1f} KB",
         size_ratio(ours["size"], ref["size"])],
        ["one-time setup", fmt_s(setup), fmt_s(ref["setup"]),
         f"{ref['setup'] / setup:.1f}x faster"],
    ]


def size_ratio(ours: int, theirs: int) -> str:
    """Which proof is larger, and by how much."""
    if ours >= theirs:
        return f"ours {ours / theirs:.1f}x larger"
    return f"ours {theirs / ours:.1f}x smaller"


def reference_times(row: str, args) -> list[float] | None:
    """Prove seconds of `row` with the pure-Python reference kernels, measured in this run (a
    child process with P2PINFER_ZK_REFERENCE=1, one proof per case); None when this process
    runs the reference already or --no-reference is given."""
    if field.BACKEND != "native" or args.no_reference:
        return None
    cmd = [sys.executable, str(Path(__file__).resolve()), "--reference-row", row,
           "--block-width", str(args.block_width),
           "--block-tokens", ",".join(str(t) for t in args.block_tokens)]
    env = dict(os.environ, P2PINFER_ZK_REFERENCE="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"(reference run of {row} failed: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_row(row: str, args) -> None:
    """The child side of reference_times: prints the prove times as one JSON line."""
    if row == "small":
        rng = np.random.default_rng(7)
        layers = float_mlp(rng, [256, 256, 256])
        times = [bench_ours_small(layers, rng.normal(0, 1, (1, 256)), 1)["prove"]]
    elif row == "large":
        times = [large_block(1)["prove"]]
    else:
        times = [r["prove"] for r in block_rows(args.block_width, args.block_tokens, 1)]
    print(json.dumps(times))


def report_small(args) -> None:
    rng = np.random.default_rng(7)
    layers = float_mlp(rng, [256, 256, 256])
    x = rng.normal(0, 1, (1, 256))
    ours = bench_ours_small(layers, x, args.repeat)
    ref = None if args.no_ezkl else bench_ezkl(layers, x)
    label = "EZKL (measured)"
    if ref is None:
        ref, label = EZKL_RECORDED, "EZKL (recorded here earlier, not measured)"
    rows = ezkl_rows(ours, ref, ours["setup"])
    ref_times = reference_times("small", args)
    if ref_times:
        rows.insert(1, ["prove, pure-Python reference kernels (one run)", fmt_s(ref_times[0]),
                        "", f"native {ref_times[0] / ours['prove']:.1f}x faster"])
    ezkl_runs = "one EZKL run" if label == "EZKL (measured)" else "EZKL recorded"
    table(f"MLP 256 -> 256 -> 256, ReLU, batch 1 (ours vs {label}; ours: {field.BACKEND} "
          f"kernels, median of {args.repeat}; {ezkl_runs})", ["", "ours", "EZKL", "ratio"], rows)
    print(f"ours, prover time by part (one more proof, {fmt_s(ours['spent_total'])}): "
          f"{breakdown_line(ours['spent_total'], ours['spent'])}")
    print(f"ours: setup = weight commitment (generator derivation, once per process: "
          f"{fmt_s(ours['generators'])}); fixed point f={FRAC_BITS}, max |error| vs float "
          f"{ours['max_abs_err']:.4f}")
    gated = [(*layers[0], *float_mlp(np.random.default_rng(12), [256, 256])[0]), layers[1]]
    for name in ("GELU", "SiLU", "SwiGLU"):
        res = bench_ours_small(gated if name == "SwiGLU" else layers, x, args.repeat,
                               act=name.lower(), frac_bits=GELU_FRAC_BITS)
        print(f"ours with {name} by lookup (256 -> 256 {name} -> 256, f={GELU_FRAC_BITS}): "
              f"prove {fmt_s(res['prove'])}, verify {fmt_s(res['verify'])}, proof "
              f"{res['size'] / 1000:.1f} KB, max |error| vs float {res['max_abs_err']:.4f} "
              "(EZKL not run on this variant)")
    for norm in (False, True):
        block = bench_llama_mlp_block(x, args.repeat, norm=norm)
        what = "RMSNorm, then " if norm else ""
        print(f"ours, a Llama MLP block ({what}256 -> 512 SwiGLU -> 256 + input, "
              f"f={GELU_FRAC_BITS}): prove {fmt_s(block['prove'])}, verify "
              f"{fmt_s(block['verify'])}, proof {block['size'] / 1000:.1f} KB, max |error| vs "
              f"float {block['max_abs_err']:.4f}")
    if "logrows" in ref:
        srs = "" if ref["logrows"] is None else f" (2^{ref['logrows']})"
        print(f"EZKL: setup = settings + calibration + compile + SRS{srs} + keys;"
              f" proof size = raw halo2 proof bytes (its proof.json file: "
              f"{ref['file_size'] / 1000:.1f} KB); params fixed, input/output public")


# -- 3. 1024-wide block at 128 tokens -------------------------------------------------------


def large_block(repeat_fwd: int = 5) -> dict:
    """The 1024-wide block at 128 tokens: one proof and one verification, timed."""
    rng = np.random.default_rng(11)
    d, tokens = 1024, 128
    layers = float_mlp(rng, [d, d, d])
    shard = ProvableMlp.from_float(layers, activations=["relu", "identity"],
                                   residual=[False, True], frac_bits=FRAC_BITS)
    x = shard.quantize(rng.normal(0, 1, (tokens, d)))
    t = time.perf_counter()
    params_for(generator_count_for(shard.layers, tokens), b"p2pinfer-zk-generators-v1")
    gens = time.perf_counter() - t
    t = time.perf_counter()
    committed = commit_shard(shard)
    t_commit = time.perf_counter() - t
    t_fwd = median_time(lambda: shard.forward_fixed(x), repeat_fwd)
    y = shard.forward_fixed(x)
    binding = ProofBinding(b"bench-task", b"\0" * 32)
    spent: dict[str, float] = {}
    proof, t_prove = timed_prove(committed, x, y, binding, spent)
    t = time.perf_counter()
    verify(committed.commitment, x, y, proof, binding)
    t_verify = time.perf_counter() - t
    n_weights = sum(l.weight.size + (0 if l.bias is None else l.bias.size) for l in shard.layers)
    return {"d": d, "tokens": tokens, "generators": gens, "commit": t_commit, "forward": t_fwd,
            "prove": t_prove, "verify": t_verify, "size": len(proof.to_bytes()),
            "weights": n_weights, "parts": proof.size_by_part(), "spent": spent}


def report_large(args) -> None:
    r = large_block()
    d, tokens, t_prove, t_fwd = r["d"], r["tokens"], r["prove"], r["forward"]
    rows = [
        ["prove / fixed-point forward", fmt_s(t_prove), fmt_s(t_fwd),
         f"{t_prove / t_fwd:.0f}x (target <= 100x)"],
    ]
    ref_times = reference_times("large", args)
    if ref_times:
        rows.append(["prove, pure-Python reference kernels", fmt_s(ref_times[0]), fmt_s(t_fwd),
                     f"{ref_times[0] / t_fwd:.0f}x; native {ref_times[0] / t_prove:.1f}x faster"])
    rows += [
        ["verify", fmt_s(r["verify"]), "", ""],
        ["proof size", f"{r['size'] / 1000:.1f} KB", "", ""],
        ["weight commitment", f"{r['commit'] / (r['weights'] / 1e6):.2f} s per million weights",
         fmt_s(r["commit"]), f"{r['weights']} weights"],
    ]
    table(f"MLP block {d} -> {d} (ReLU) -> {d} (residual), {tokens} tokens ({field.BACKEND} "
          "kernels; prove and verify: one run each, forward: median of 5)",
          ["", "ours", "reference", "ratio / note"], rows)
    print(f"generator derivation (once per process): {fmt_s(r['generators'])}")
    print(f"proof bytes by part: {parts_line(r['parts'])}")
    print_breakdown(r["prove"], r["spent"])


def parts_line(parts: dict[str, int]) -> str:
    """Proof bytes by part, largest first."""
    return ", ".join(f"{k} {v / 1000:.1f} KB" for k, v in
                     sorted(parts.items(), key=lambda kv: -kv[1]))


# -- 4. a Llama block -----------------------------------------------------------------------


def block_rows(width: int, token_counts: list[int], repeat: int) -> list[dict]:
    """Both halves of the Llama block at each token count: measure_shard's figures, the row's
    name and the fixed-point error against the float model."""
    import torch

    from p2pinfer.models import LayerSpan
    from p2pinfer.zk import ModelManifest
    from p2pinfer.zk.checkpoint import commit_layers, fixed_layers, load_manifest_bytes

    model = _llama_model(width, "block", 10000)
    manifest = ModelManifest.from_bytes(load_manifest_bytes(model))
    halves = [("attention half", 0, commit_layers(model, 0, 1)),
              ("MLP half", 1, commit_layers(model, 1, 2))]
    rng = np.random.default_rng(17)
    out = []
    for tokens in token_counts:
        x_float = rng.normal(0, 1, (tokens, width))
        x = fixed_layers(model, 0, 1).quantize(x_float)
        h_float = torch.from_numpy(x_float).float()[None]
        for name, layer, committed in halves:
            y = committed.forward_fixed(x)
            got = measure_shard(committed, manifest.block_shard(layer, layer + 1), x, y,
                                ProofBinding(b"bench-task", manifest.digest()), repeat)
            ref = LayerSpan.load(model, layer, layer + 1).forward(h_float)
            got["err"] = float(np.abs(committed.shard.dequantize(y) - ref[0].numpy()).max())
            got["name"] = f"{name}, {tokens} tokens"
            out.append(got)
            x, h_float = y, ref
    return out


def report_block(args) -> None:
    width = args.block_width
    got = block_rows(width, args.block_tokens, args.repeat)
    ref_times = reference_times("block", args) or [None] * len(got)
    rows = [[g["name"], fmt_s(g["prove"]), "-" if t is None else fmt_s(t), fmt_s(g["verify"]),
             f"{g['size'] / 1000:.1f} KB", fmt_s(g["forward"]),
             f"{g['prove'] / g['forward']:.0f}x", f"{g['err']:.3f}"]
            for g, t in zip(got, ref_times)]
    table(f"Llama block, width {width} (4 heads, 2 kv heads, rotary; SwiGLU {width} -> "
          f"{2 * width}), f={GELU_FRAC_BITS}, {field.BACKEND} kernels, median of {args.repeat} "
          "(reference: pure-Python kernels, one run)",
          ["", "prove", "prove (reference)", "verify", "proof", "fixed-point forward",
           "prove / forward", "max |error| vs float"], rows)
    print("proof bytes by part (commitments: claimed values and sum-check rounds; tables: "
          "Hyrax rows of committed tables; openings: dot-product proofs):")
    for g in got:
        print(f"  {g['name']}: {parts_line(g['parts'])}")
    print("prover time by part (one more proof of each; bit rows: range checks and rescaling; "
          "table rows: lookup tables and multiplicities):")
    for g in got:
        print(f"  {g['name']} ({fmt_s(g['spent_total'])}): "
              f"{breakdown_line(g['spent_total'], g['spent'])}")


def _llama_model(width: int, tokens_hint: str, rope: int) -> Path:
    from p2pinfer.models.mlp import zk_mlp_config
    from p2pinfer.zk.checkpoint import write_committed_mlp

    model = Path(tempfile.mkdtemp(prefix=f"bench-llama-{tokens_hint}-")) / "model"
    model.mkdir()
    write_committed_mlp(model, zk_mlp_config(f"bench-llama-{width}-{rope}", layers=3,
                                             hidden=width, activation="llama",
                                             intermediate=2 * width, heads=4, kv_heads=2,
                                             rope_theta=rope))
    return model


def report_attention_vs_ezkl(args) -> None:
    """Ours and EZKL on one attention half (RMSNorm, 4 heads, 2 kv heads, no rotary positions,
    output projection, residual): same weights, same input."""
    import torch
    from safetensors.torch import load_file

    from p2pinfer.zk import ModelManifest
    from p2pinfer.zk.checkpoint import commit_layers, fixed_layers, load_manifest_bytes

    width, tokens = args.ezkl_width, args.ezkl_tokens
    model = _llama_model(width, "ezkl", 0)
    manifest = ModelManifest.from_bytes(load_manifest_bytes(model))
    x_float = np.random.default_rng(19).normal(0, 1, (tokens, width))
    t = time.perf_counter()  # the owner's one-time commitment, not its cache
    commit_shard(fixed_layers(model, 0, 1))
    setup = time.perf_counter() - t
    committed = commit_layers(model, 0, 1)
    x = fixed_layers(model, 0, 1).quantize(x_float)
    y = committed.forward_fixed(x)
    ours = measure_shard(committed, manifest.block_shard(0, 1), x, y,
                         ProofBinding(b"bench-task", manifest.digest()), args.repeat)
    w = {k.removeprefix("layers.0."): v for k, v in
         load_file(str(model / "model.safetensors")).items() if k.startswith("layers.0.")}
    ref = bench_ezkl_attention(width, tokens, w, torch.from_numpy(x_float).float())
    if ref is None:
        print("EZKL on the attention half: ezkl or onnx is not installed")
        return
    rows = ezkl_rows(ours, ref, setup)
    table(f"Attention half, width {width}, {tokens} tokens, 4 heads / 2 kv heads, no rotary "
          f"(ours vs EZKL {_ezkl_version()}, same weights and input; median of {args.repeat} "
          f"for ours, one EZKL run, logrows {ref['logrows']})", ["", "ours", "EZKL", "ratio"],
          rows)


def _ezkl_version() -> str:
    import ezkl

    return str(getattr(ezkl, "__version__", "?"))


def measure_shard(committed, entry, x, y, binding, repeat: int) -> dict:
    """Median prove, verify and fixed-point forward times of one shard, and its proof size."""
    proofs = []
    t_prove = median_time(lambda: proofs.append(prove(committed, x, y, binding)), repeat)
    t_verify = median_time(lambda: verify(entry, x, y, proofs[-1], binding), repeat)
    t_fwd = median_time(lambda: committed.forward_fixed(x), 20)
    spent: dict[str, float] = {}
    _, spent_total = timed_prove(committed, x, y, binding, spent)  # one more, for the breakdown
    return {"prove": t_prove, "verify": t_verify, "forward": t_fwd,
            "size": len(proofs[-1].to_bytes()), "parts": proofs[-1].size_by_part(),
            "spent": spent, "spent_total": spent_total}


def bench_ezkl_attention(width: int, tokens: int, w: dict, x) -> dict | None:
    """EZKL on x + o(causal attention(RMSNorm(x) g)) with 4 heads, 2 kv heads (no rope), the
    weights `w` of a llama-attn layer (norm.weight, weight, bias, o.weight, o.bias)."""
    try:
        import ezkl  # noqa: F401
        import onnx  # noqa: F401
        import torch
    except ImportError:
        return None
    heads, kv, dh = 4, 2, width // 4

    class Half(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name in ("norm.weight", "weight", "bias", "o.weight", "o.bias"):
                self.register_buffer(name.replace(".", "_"), w[name].float())
            # -30 rather than -inf: exp(-30) is 0 at any fixed-point scale EZKL picks, and a
            # larger constant would widen its lookup range (2^26 rows at -1e4)
            self.register_buffer("mask", torch.triu(torch.full((tokens, tokens), -30.0), 1))

        def forward(self, x):
            n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 2.0 ** -16) * self.norm_weight
            q, k, v = torch.nn.functional.linear(n, self.weight, self.bias).split(
                [width, kv * dh, kv * dh], -1)
            q = q.reshape(tokens, heads, dh).transpose(0, 1)
            k = k.reshape(tokens, kv, dh).transpose(0, 1).repeat_interleave(heads // kv, 0)
            v = v.reshape(tokens, kv, dh).transpose(0, 1).repeat_interleave(heads // kv, 0)
            a = torch.softmax(q @ k.transpose(1, 2) / dh ** 0.5 + self.mask, dim=-1)
            o = (a @ v).transpose(0, 1).reshape(tokens, width)
            return x + torch.nn.functional.linear(o, self.o_weight, self.o_bias)

    return _ezkl_run(Half().eval(), x)


# -- 5. all 30 blocks of SmolLM2-135M-Instruct ----------------------------------------------

#: published GPT-2 (124M) proving figures, quoted from each paper's abstract (their hardware,
#: not this machine; not measured here)
PUBLISHED_GPT2 = [
    ("zkGPT (USENIX Security 2025)", "< 25 s", "", "eprint 2025, abstract"),
    ("Jolt Atlas (2026)", "38 s", "", "arXiv 2602.17452"),
    ("NanoZK (2026)", "43 s", "6.9 KB per layer, verify 23 ms", "arXiv 2603.18046, abstract"),
]

#: ProverLedger methods timed for the breakdown (leaves: none calls another of them)
_LEDGER_PARTS = {
    "put": "scalar commitments (sum-check rounds, claimed values)",
    "put_bit_matrix": "bit-row commitments (range checks, rescaling)",
    "put_int_matrix": "small-integer row commitments",
    "put_field_matrix": "field-row commitments (lookup tables, multiplicities)",
    "prove_product": "product proofs",
    "prove_dot": "openings (dot-product proofs)",
    "finish": "relation blinds",
}


class _MethodClock:
    """Adds up the wall time spent in some methods while installed (measurement only: the
    methods are wrapped, their arguments and results untouched)."""

    def __init__(self, targets: list[tuple[type, str]]) -> None:
        self.targets = targets
        self.spent = {name: 0.0 for _, name in targets}
        self._orig: list[tuple[type, str, object]] = []

    def _wrap(self, cls: type, name: str) -> None:
        orig = getattr(cls, name)
        self._orig.append((cls, name, orig))
        spent = self.spent

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t

        setattr(cls, name, timed)

    def __enter__(self):
        for cls, name in self.targets:
            self._wrap(cls, name)
        return self

    def __exit__(self, *exc) -> None:
        for cls, name, orig in reversed(self._orig):
            setattr(cls, name, orig)


def timed_prove(committed, x, y, binding, spent: dict[str, float]):
    """One proof, timed; the time spent in each ledger method and in the witness trace is
    added to `spent` (keys: _LEDGER_PARTS and "trace"). Returns (proof, seconds)."""
    from p2pinfer.zk.ledger import ProverLedger
    clock = _MethodClock([(ProverLedger, name) for name in _LEDGER_PARTS]
                         + [(type(committed.shard), "trace")])
    with clock:
        t = time.perf_counter()
        pr = prove(committed, x, y, binding)
        secs = time.perf_counter() - t
    for name, v in clock.spent.items():
        spent[name] = spent.get(name, 0.0) + v
    return pr, secs


#: VerifierLedger methods timed for the verifier's breakdown
_VERIFY_PARTS = {
    "_check_all": "the one batched multi-exponentiation of every deferred group equation",
    "next_matrix": "decoding committed rows (G1 points)",
    "put": "decoding single commitments (G1 points)",
    "check_dot": "openings: their points decoded, <z, y> products",
    "check_product": "product proofs' points decoded",
}


_SHORT = {"put": "scalar commits", "put_bit_matrix": "bit rows", "put_int_matrix": "int rows",
          "put_field_matrix": "table rows", "prove_product": "products",
          "prove_dot": "openings", "finish": "blinds", "trace": "witness"}


def breakdown_line(total: float, spent: dict[str, float]) -> str:
    """The breakdown of one proof on one line: parts above 1%, largest first, then the rest."""
    big = [(k, v) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= total / 100]
    rest = total - sum(spent.values())
    return ", ".join([f"{_SHORT[k]} {v / total:.0%}" for k, v in big]
                     + [f"sum-checks and glue {rest / total:.0%}"])


def print_breakdown(total: float, spent: dict[str, float], *,
                    header: str | None = None, names: dict[str, str] | None = None,
                    rest: str = "sum-check rounds, lookup arguments and Python between kernels "
                                "(the rest)") -> None:
    """Where `total` seconds went, largest part first, the unaccounted rest last (default: the
    prover's parts as timed by timed_prove)."""
    print(header or f"where the prover's {fmt_s(total)} went (wall time in each ledger method "
                    "and in the witness trace, measured in the same proofs):")
    named = names or dict(_LEDGER_PARTS, trace="witness (the traced fixed-point forward)")
    for name, secs in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {secs / total:6.1%}  {fmt_s(secs):>9s}  {named[name]}")
    left = total - sum(spent.values())
    print(f"  {left / total:6.1%}  {fmt_s(left):>9s}  {rest}")


def _prove_half(path: str, k: int, x: np.ndarray, y: np.ndarray, digest: bytes) -> dict:
    """Load and prove config layer k of an imported model (in a worker process or not)."""
    from p2pinfer.zk.checkpoint import commit_layers

    t = time.perf_counter()
    committed = commit_layers(Path(path), k, k + 1)
    load = time.perf_counter() - t
    spent: dict[str, float] = {}
    pr, secs = timed_prove(committed, x, y, ProofBinding(b"bench-smollm2-%d" % k, digest), spent)
    return {"k": k, "proof": pr.to_bytes(), "prove": secs, "load": load, "spent": spent,
            "parts": pr.size_by_part()}


def _prove_halves(path: str, xs: list, ys: list, digest: bytes, workers: int,
                  env: dict[str, str]) -> list[dict]:
    """_prove_half for every half, `workers` at a time in spawned processes (one kernel thread
    each, plus `env`), or in this process when workers == 1 and env is empty."""
    import concurrent.futures
    import multiprocessing

    n = len(xs)
    if workers == 1 and not env:
        return [_prove_half(path, k, xs[k], ys[k], digest) for k in range(n)]
    changes = {"P2PINFER_ZK_WORKERS": "1", **env}
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)  # spawned workers read them when they import the kernels
    try:
        with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(_prove_half, [path] * n, range(n), xs, ys, [digest] * n))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def report_smollm2(args) -> None:
    """Every decoder block of SmolLM2-135M-Instruct (real weights, the built-in import), both
    halves, on a real chat prompt: the fixed-point forward gives every half's input (the
    previous half's output); the halves are then proven independently, `--smollm2-workers`
    at a time in worker processes (one kernel thread each), and verified one after another."""
    import torch

    from p2pinfer.models import ClientHead, Tokenizer
    from p2pinfer.models.checkpoint import Checkpoint
    from p2pinfer.models.defaults import SMOLLM2_ZK, smollm2_path
    from p2pinfer.zk import ModelManifest
    from p2pinfer.zk.builtins import builtin_model_path
    from p2pinfer.zk.checkpoint import fixed_layers, load_manifest_bytes
    from p2pinfer.zk.proof import ShardProof

    torch.set_grad_enabled(False)
    t = time.perf_counter()
    path = builtin_model_path(SMOLLM2_ZK)
    t_import = time.perf_counter() - t
    manifest = ModelManifest.from_bytes(load_manifest_bytes(path))
    digest = manifest.digest()
    blocks = Checkpoint(path).config.num_layers // 2  # an attention and an MLP half each
    if args.smollm2_blocks:
        blocks = min(blocks, args.smollm2_blocks)
    source = smollm2_path()
    tok = Tokenizer.load(source)
    ids = tok.apply_chat_template([{"role": "user", "content":
                                    "What is the capital of France? Answer in one sentence, "
                                    "and say why it matters to Europe."}])[: args.smollm2_tokens]
    first = fixed_layers(path, 0, 1)
    a = first.quantize(first.pad_features(ClientHead.load(source, 0).embed(ids)[0].double()
                                          .numpy()))
    workers = max(1, args.smollm2_workers)
    print(f"SmolLM2-135M-Instruct, real weights ({SMOLLM2_ZK}): {blocks} blocks, prompt of "
          f"{len(ids)} tokens; import and commitment {fmt_s(t_import)} "
          f"({'done now' if t_import > 5 else 'cached'}, once per machine); halves proven "
          f"{workers} at a time")
    xs, ys, fwd = [], [], []
    for k in range(2 * blocks):
        layer = fixed_layers(path, k, k + 1)
        xs.append(a)
        a = layer.forward_fixed(a)
        ys.append(a)
        fwd.append(median_time(lambda layer=layer, x=xs[-1]: layer.forward_fixed(x), 3))
    t_wall = time.perf_counter()
    done = _prove_halves(str(path), xs, ys, digest, workers, {})
    t_wall = time.perf_counter() - t_wall
    print("block  prove attn  prove MLP  verify  proof KB  fixed fwd  prove/fwd   load")
    tot = {"prove": 0.0, "verify": 0.0, "forward": sum(fwd), "load": 0.0}
    sizes: list[int] = []
    parts: dict[str, int] = {}
    spent: dict[str, float] = {}
    from p2pinfer.zk.ledger import VerifierLedger
    vclock = _MethodClock([(VerifierLedger, name) for name in _VERIFY_PARTS])
    for b in range(blocks):
        verify_s, size = 0.0, 0
        for k in (2 * b, 2 * b + 1):
            got = done[k]
            pr = ShardProof.from_bytes(got["proof"])
            with vclock:
                t = time.perf_counter()
                verify(manifest.block_shard(k, k + 1), xs[k], ys[k], pr,
                       ProofBinding(b"bench-smollm2-%d" % k, digest))
                verify_s += time.perf_counter() - t
            size += len(got["proof"])
            for name, n in got["parts"].items():
                parts[name] = parts.get(name, 0) + n
            for name, v in got["spent"].items():
                spent[name] = spent.get(name, 0.0) + v
        attn, mlp = done[2 * b], done[2 * b + 1]
        proven = attn["prove"] + mlp["prove"]
        tot["prove"] += proven
        tot["verify"] += verify_s
        tot["load"] += attn["load"] + mlp["load"]
        sizes.append(size)
        block_fwd = fwd[2 * b] + fwd[2 * b + 1]
        print(f"{b:5d}  {fmt_s(attn['prove']):>10s} {fmt_s(mlp['prove']):>10s} "
              f"{fmt_s(verify_s):>7s} {size / 1000:9.1f} {fmt_s(block_fwd):>10s} "
              f"{proven / block_fwd:9.0f}x {fmt_s(attn['load'] + mlp['load']):>6s}",
              flush=True)
    mean_kb = sum(sizes) / len(sizes) / 1000
    rows = [
        [f"ours: SmolLM2-135M ({blocks} blocks), {len(ids)} tokens, this machine (2 cores)",
         fmt_s(t_wall), fmt_s(tot["verify"]),
         f"{mean_kb:.1f} KB per block (max {max(sizes) / 1000:.1f})"],
        ["targets", "<= 60 s", "<= 3 s", "<= 100 KB per layer"],
    ]
    rows += [[f"{name} on GPT-2, published ({where}; their hardware)", prove_s, "-", note or "-"]
             for name, prove_s, note, where in PUBLISHED_GPT2]
    table(f"all decoder blocks proven (wall time, {workers} worker process"
          f"{'es' if workers > 1 else ''}) and verified (one process)",
          ["", "prove", "verify", "proof"], rows)
    print(f"sum of the halves' prove times {fmt_s(tot['prove'])}; fixed-point forward of the "
          f"same blocks {fmt_s(tot['forward'])}: prove / forward "
          f"{tot['prove'] / tot['forward']:.0f}x; loading the committed halves "
          f"{fmt_s(tot['load'])} (not in prove)")
    nref = 2 * min(blocks, args.smollm2_reference_blocks)
    if nref and field.BACKEND == "native" and not args.no_reference:
        ref = _prove_halves(str(path), xs[:nref], ys[:nref], digest, workers,
                            {"P2PINFER_ZK_REFERENCE": "1"})
        ref_s = sum(r["prove"] for r in ref)
        nat_s = sum(r["prove"] for r in done[:nref])
        print(f"pure-Python reference kernels, the first {nref // 2} blocks, same workers: "
              f"{fmt_s(ref_s)} against native {fmt_s(nat_s)} ({ref_s / nat_s:.1f}x)")
    print_breakdown(tot["prove"], spent)
    print_breakdown(tot["verify"], vclock.spent, names=_VERIFY_PARTS,
                    header=f"where the verifier's {fmt_s(tot['verify'])} went:",
                    rest="sum-check rounds and lookup arguments replayed, and Python between "
                         "them (the rest)")
    print(f"proof bytes by part, all blocks: {parts_line(parts)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-ezkl", action="store_true", help="print recorded EZKL figures")
    ap.add_argument("--no-large", action="store_true", help="skip the 1024-wide block")
    ap.add_argument("--no-groups", action="store_true", help="skip the group table")
    ap.add_argument("--no-small", action="store_true", help="skip the 256-wide MLP tables")
    ap.add_argument("--no-block", action="store_true", help="skip the Llama block")
    ap.add_argument("--block-width", type=int, default=256)
    ap.add_argument("--block-tokens", type=lambda s: [int(v) for v in s.split(",")],
                    default=[16, 64], help="comma-separated token counts (default 16,64)")
    ap.add_argument("--ezkl-attention", action="store_true",
                    help="also compare with EZKL on an attention half (slow: minutes)")
    ap.add_argument("--ezkl-width", type=int, default=32)
    ap.add_argument("--ezkl-tokens", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the pure-Python reference's prove times (a second process)")
    ap.add_argument("--smollm2", action="store_true",
                    help="prove all 30 blocks of SmolLM2-135M-Instruct (real weights; the "
                         "first run imports and commits them, minutes)")
    ap.add_argument("--smollm2-only", action="store_true",
                    help="only the SmolLM2 table (skips every other table)")
    ap.add_argument("--smollm2-tokens", type=int, default=16)
    ap.add_argument("--smollm2-workers", type=int, default=2,
                    help="worker processes proving halves at once (default 2; 1: in process)")
    ap.add_argument("--smollm2-reference-blocks", type=int, default=2,
                    help="also prove the first N blocks with the pure-Python reference kernels")
    ap.add_argument("--smollm2-blocks", type=int, default=0,
                    help="prove only the first N blocks (default: all)")
    ap.add_argument("--reference-row", choices=["small", "large", "block"],
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_row:
        reference_row(args.reference_row, args)
        return
    print(f"field kernels: {field.BACKEND}")
    if args.smollm2_only:
        report_smollm2(args)
        return
    if not args.no_groups:
        bench_groups(args.repeat)
    if not args.no_small:
        report_small(args)
    if not args.no_large:
        report_large(args)
    if not args.no_block:
        report_block(args)
    if args.ezkl_attention:
        report_attention_vs_ezkl(args)
    if args.smollm2:
        report_smollm2(args)


if __name__ == "__main__":
    main()
