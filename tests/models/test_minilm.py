"""The real MiniLM-L6 sentence embedder: same vectors as sentence-transformers / transformers."""

from __future__ import annotations

import pytest
import torch

from p2pinfer.models import ClientHead, ClientTail, LayerSpan, LocalModel, Tokenizer, minilm_path

SENTENCES = [
    "Win a FREE cruise now!!! Click here to claim your prize.",
    "The meeting is moved to Thursday at 10am.",
]


@pytest.fixture(scope="module")
def minilm():
    return LocalModel.load(minilm_path())


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.load(minilm_path())


def test_embedding_matches_transformers_mean_pooling(minilm, tokenizer):
    transformers = pytest.importorskip("transformers")
    ref_model = transformers.AutoModel.from_pretrained(minilm_path()).eval()
    for text in SENTENCES:
        ids = tokenizer.encode(text)
        with torch.no_grad():
            states = ref_model(torch.tensor([ids])).last_hidden_state
        ref = torch.nn.functional.normalize(states.mean(dim=1), dim=-1)
        ours = minilm.forward(ids)
        assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
        assert float(ours.norm()) == pytest.approx(1.0, abs=1e-5)


def test_embedding_matches_sentence_transformers(minilm, tokenizer):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    ref = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(
        SENTENCES, convert_to_tensor=True
    )
    ours = torch.cat([minilm.forward(tokenizer.encode(s)) for s in SENTENCES])
    assert torch.allclose(ours, ref.cpu(), atol=1e-5, rtol=0)


def test_split_minilm_equals_the_whole(minilm, tokenizer):
    path = minilm_path()
    ids = tokenizer.encode(SENTENCES[0])
    hidden = ClientHead.load(path, 1).forward(ids)
    hidden = LayerSpan.load(path, 1, 4).forward(hidden)
    out = ClientTail.load(path, 2).forward(hidden)
    assert torch.allclose(out, minilm.forward(ids), atol=1e-5, rtol=0)


def test_tokenizer_adds_cls_and_sep_and_truncates(tokenizer):
    ids = tokenizer.encode("hello world")
    assert ids == [101, 7592, 2088, 102]
    assert len(tokenizer.encode("word " * 1000)) == 256  # sentence-transformers max_seq_length


def test_similar_sentences_are_closer(minilm, tokenizer):
    a, b, c = (
        minilm.forward(tokenizer.encode(s))[0]
        for s in ("A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock prices fell.")
    )
    assert float(a @ b) > float(a @ c) + 0.2
