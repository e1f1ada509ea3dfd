"""Gopher repetition rules (Rae et al. 2021, Appendix A) with the n-gram counts vectorised in numpy.

Same paragraph/line rules and thresholds as datatrove's ``GopherRepetitionFilter`` (whose ``filter`` this
replaces); the word n-gram rules run on 64-bit hashes of word-id tuples instead of joined strings:

- top n-gram: ``np.unique`` counts; ties go to the earliest n-gram, as ``Counter.most_common`` does;
- duplicated n-grams: if no 5-gram repeats, no longer one does and every fraction is 0 (the common case);
  otherwise datatrove's greedy left-to-right scan (skip ``n`` words after a repeat) on the hashes.

One deliberate difference: datatrove joins a duplicated n-gram's words with ``""`` (so ``ab c`` equals
``a bc``); here n-grams are word tuples. Characters counted are the same (sum of word lengths).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MULT = np.uint64(0x100000001B3)


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    m = len(ids) - n + 1
    acc = np.zeros(max(m, 0), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc = acc * MULT + ids[j:j + m]
    return acc


def top_duplicate_chars(h: np.ndarray, char_len: np.ndarray) -> int:
    """``len(top n-gram) * count`` of the most common n-gram (earliest among ties)."""
    _, first, counts = np.unique(h, return_index=True, return_counts=True)
    best = counts.max()
    i = int(first[counts == best].min())
    return int(char_len[i]) * int(best)


def all_duplicate_chars(h: np.ndarray, char_len: np.ndarray, n: int) -> int:
    """datatrove's ``find_all_duplicate``: greedy scan, a repeat counts its characters and skips ``n`` words."""
    seen: set[int] = set()
    total, idx, hs = 0, 0, h.tolist()
    while idx < len(hs):
        if hs[idx] in seen:
            total += int(char_len[idx])
            idx += n
        else:
            seen.add(hs[idx])
            idx += 1
    return total


def make_filter(**kw: Any) -> Any:
    """A ``GopherRepetitionFilter`` whose ``filter`` uses the vectorised n-gram rules."""
    from datatrove.pipeline.filters import GopherRepetitionFilter
    from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
    from datatrove.utils.text import split_into_words

    class FastGopherRepetition(GopherRepetitionFilter):
        def filter(self, doc: Any) -> bool | tuple[bool, str]:
            text = doc.text
            if not text:
                return False, "empty"
            paragraphs = self.paragraph_exp.split(text.strip())
            dups, chars = find_duplicates(paragraphs)
            if self.dup_para_frac and dups / len(paragraphs) > self.dup_para_frac:
                return False, "dup_para_frac"
            if self.dup_para_char_frac and chars / len(text) > self.dup_para_char_frac:
                return False, "dup_para_char_frac"
            lines = self._line_splitter.split(text)
            dups, chars = find_duplicates(lines)
            if self.dup_line_frac and dups / len(lines) > self.dup_line_frac:
                return False, "dup_line_frac"
            if self.dup_line_char_frac and chars / len(text) > self.dup_line_char_frac:
                return False, "dup_line_char_frac"
            words = split_into_words(text, self.language)
            vocab: dict[str, int] = {}
            ids = np.fromiter((vocab.setdefault(w, len(vocab) + 1) for w in words), dtype=np.uint64, count=len(words))
            wlen = np.cumsum([0] + [len(w) for w in words])
            for n, frac in self.top_n_grams:
                if len(words) < n:
                    continue
                char_len = wlen[n:] - wlen[:-n] + (n - 1)  # joined with " "
                if top_duplicate_chars(ngram_hashes(ids, n), char_len) / len(text) > frac:
                    return False, f"top_{n}_gram"
            dup_ns = [n for n, _ in self.dup_n_grams]
            if not dup_ns or len(words) < min(dup_ns):
                return True
            h0 = ngram_hashes(ids, min(dup_ns))
            if len(np.unique(h0)) == len(h0):
                return True  # no repeated shortest n-gram: no repeated longer one either
            for n, frac in self.dup_n_grams:
                if len(words) < n:
                    continue
                char_len = wlen[n:] - wlen[:-n]  # joined with ""
                if all_duplicate_chars(ngram_hashes(ids, n), char_len, n) / len(text) > frac:
                    return False, f"duplicated_{n}_n_grams"
            return True

    return FastGopherRepetition(**kw)
