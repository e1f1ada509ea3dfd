"""Garbled documents of six kinds: the junk a quality filter should remove.

Used by the ``plant`` corpus step (the mixed pool of A Pretrainer's Guide, Longpre et al. 2023) and by the
corpus benchmark's synthetic web corpus (``benchmarks/corpus_synth.py``). The kinds follow the garbled-text
rules of Gopher (Rae et al. 2021) and Yi (Young et al. 2024): what their heuristics are written to catch.

- ``soup``: random runs of letters, digits and punctuation;
- ``repeated_lines``: one to three lines repeated 20-60 times;
- ``symbols``: symbol spam with a few words;
- ``digits``: a table of numbers;
- ``loop``: a short phrase looping 40-120 times;
- ``salad``: 150-400 words of the vocabulary without grammar.

Every generator draws only from the ``random.Random`` it is given, in a fixed order, so a document is a
function of the generator's state, the kind and the vocabulary.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence

GARBLED_KINDS = ("soup", "repeated_lines", "symbols", "digits", "loop", "salad")
SYMBOLS = "#$%&*@~^|<>=+{}[]"


def word_line(rng: random.Random, words: Sequence[str]) -> str:
    """A capitalised line of 6-15 words drawn from ``words``, ending with a full stop."""
    return " ".join(rng.choices(words, k=rng.randint(6, 15))).capitalize() + "."


def garbled(kind: str, rng: random.Random, words: Sequence[str], cum_weights: Sequence[float] | None = None,
            line: Callable[[random.Random], str] | None = None, loop_words: Sequence[str] | None = None) -> str:
    """One garbled document of ``kind`` (see the module docstring).

    ``words``: the vocabulary of ``symbols`` and ``salad`` (with ``cum_weights``, cumulative sampling weights,
    if given); ``line``: makes one line of ``repeated_lines`` (default :func:`word_line` over ``words``);
    ``loop_words``: the vocabulary of ``loop`` (default: the first 200 of ``words``).
    """
    if not words:
        raise ValueError("garbled documents need a non-empty vocabulary")
    if kind == "soup":
        alphabet = string.ascii_letters + string.digits + string.punctuation
        return " ".join("".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(rng.randint(150, 400)))
    if kind == "repeated_lines":
        make = line or (lambda r: word_line(r, words))
        lines = [make(rng) for _ in range(rng.randint(1, 3))]
        return "\n".join(rng.choice(lines) for _ in range(rng.randint(20, 60)))
    if kind == "symbols":
        return " ".join(rng.choice(words) if rng.random() < 0.3
                        else "".join(rng.choices(SYMBOLS, k=rng.randint(1, 5))) for _ in range(rng.randint(200, 500)))
    if kind == "digits":
        return "\n".join(" ".join(str(rng.randint(0, 99999)) for _ in range(rng.randint(4, 10)))
                         for _ in range(rng.randint(20, 60)))
    if kind == "loop":
        phrase = " ".join(rng.choices(list(loop_words if loop_words is not None else words[:200]),
                                      k=rng.randint(3, 6)))
        return (phrase + " ") * rng.randint(40, 120)
    if kind == "salad":
        return " ".join(rng.choices(words, cum_weights=cum_weights, k=rng.randint(150, 400)))
    raise ValueError(f"unknown garbled kind '{kind}' (known: {', '.join(GARBLED_KINDS)})")
