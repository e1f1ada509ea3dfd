import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kiln.recipe import TokenizerConfig
from kiln.tokenizer.special import BOS, EOS, NUM_SENTINELS, SPECIAL_IDS, SPECIAL_TOKENS, sentinel
from kiln.tokenizer.train import load_token_bytes, load_tokenizer, train_tokenizer

TEXTS = [
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.",
    "naïve café — “quotes” and emoji 🎭 survive byte-level BPE\ttabs  and  spaces",
    "def f(x):\n    return x ** 2  # code, too\n",
] * 30


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    pq.write_table(pa.table({"text": TEXTS}), d / "train.parquet")
    stats = train_tokenizer(TokenizerConfig(vocab_size=600), d, d)
    assert stats["n_special"] == len(SPECIAL_TOKENS)
    return d


def test_special_tokens_have_fixed_ids(tok_dir):
    tok = load_tokenizer(tok_dir)
    for name, idx in SPECIAL_IDS.items():
        assert tok.token_to_id(name) == idx
    assert SPECIAL_TOKENS[-1] == sentinel(NUM_SENTINELS - 1)
    with pytest.raises(ValueError):
        sentinel(NUM_SENTINELS)


@pytest.mark.parametrize("text", [*TEXTS[:3], "", "unseen ÆØÅ 漢字 \x00 bytes"])
def test_round_trip_and_exact_byte_counts(tok_dir, text):
    tok = load_tokenizer(tok_dir)
    token_bytes = load_token_bytes(tok_dir)
    enc = tok.encode(text)
    assert enc.ids[0] == SPECIAL_IDS[BOS] and enc.ids[-1] == SPECIAL_IDS[EOS]
    assert tok.decode(enc.ids) == text
    assert int(token_bytes[enc.ids].sum()) == len(text.encode("utf-8"))


def test_token_bytes_zero_for_specials(tok_dir):
    token_bytes = load_token_bytes(tok_dir)
    assert np.all(token_bytes[: len(SPECIAL_TOKENS)] == 0)
    assert np.all(token_bytes[len(SPECIAL_TOKENS):] >= 1)


def test_tokenizer_file_is_plain_tokenizers_json(tok_dir):
    cfg = json.loads((tok_dir / "tokenizer.json").read_text())
    assert cfg["model"]["type"] == "BPE"


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the tokenizer stage"):
        load_tokenizer(tmp_path)


def test_training_streams_the_corpus_parts(tok_dir, tmp_path):
    """The sharded corpus layout (train-00000.parquet, ...) trains the same tokenizer as one train.parquet."""
    for i, lo in enumerate(range(0, len(TEXTS), 25)):
        pq.write_table(pa.table({"text": TEXTS[lo : lo + 25]}), tmp_path / f"train-{i:05d}.parquet")
    assert len(list(tmp_path.glob("train-*.parquet"))) == 4
    train_tokenizer(TokenizerConfig(vocab_size=600), tmp_path, tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == (tok_dir / "tokenizer.json").read_text()
    assert (tmp_path / "token_bytes.npy").read_bytes() == (tok_dir / "token_bytes.npy").read_bytes()


def test_no_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no 'train' documents"):
        train_tokenizer(TokenizerConfig(vocab_size=600), tmp_path, tmp_path)
