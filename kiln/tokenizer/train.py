"""Tokenizer stage: train a byte-level BPE tokenizer with the `tokenizers` library.

Byte-level BPE (Radford et al. 2019, GPT-2) never meets an unknown character, and each
token id stands for a fixed byte string, which is what makes bits-per-byte exact:
``token_bytes.npy`` stores the UTF-8 length of every id (0 for special tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from kiln import atomic
from kiln.corpus.files import iter_text_batches
from kiln.progress import log
from kiln.recipe import TokenizerConfig
from kiln.tokenizer.special import BOS, EOS, SPECIAL_IDS, SPECIAL_TOKENS

TOKENIZER_FILE = "tokenizer.json"
TOKEN_BYTES_FILE = "token_bytes.npy"


def _iter_texts(corpus_dir: Path, split: str = "train", batch_rows: int = 2048) -> Iterator[list[str]]:
    """The split's texts in batches, streamed part after part (the trainer accepts batches of strings)."""
    yield from iter_text_batches(corpus_dir, split, batch_rows=batch_rows)


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 byte length of every token id (0 for special tokens)."""
    byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int32)
    for piece, idx in tok.get_vocab().items():
        if piece in SPECIAL_IDS:
            continue
        lengths[idx] = sum(1 for ch in piece if ch in byte_decoder)
    return lengths


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map, as used by ByteLevel pre-tokenization."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def train_tokenizer(cfg: TokenizerConfig, corpus_dir: Path, out_dir: Path) -> dict:
    """Train on the corpus' train split; write tokenizer.json and token_bytes.npy into out_dir."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    log(f"tokenizer: training byte-level BPE, vocab {cfg.vocab_size}")
    tok.train_from_iterator(_iter_texts(corpus_dir), trainer=trainer)
    for name, idx in SPECIAL_IDS.items():
        if tok.token_to_id(name) != idx:
            raise RuntimeError(f"special token {name} got id {tok.token_to_id(name)}, expected {idx}")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, SPECIAL_IDS[BOS]), (EOS, SPECIAL_IDS[EOS])]
    )
    with atomic.staged_path(out_dir / TOKENIZER_FILE) as tmp:
        tok.save(str(tmp))
    lengths = token_byte_lengths(tok)
    with atomic.staged_path(out_dir / TOKEN_BYTES_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, lengths)
    return {"vocab_size": tok.get_vocab_size(), "n_special": len(SPECIAL_TOKENS)}


def load_tokenizer(tokenizer_dir: Path) -> Tokenizer:
    path = Path(tokenizer_dir) / TOKENIZER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokenizer here; run the tokenizer stage first")
    return Tokenizer.from_file(str(path))


def load_token_bytes(tokenizer_dir: Path) -> np.ndarray:
    return np.load(Path(tokenizer_dir) / TOKEN_BYTES_FILE)
