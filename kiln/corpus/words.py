"""Word and sentence splitting for the heuristic filters and MinHash.

The default is a regex splitter: words are runs of letters/digits joined by inner apostrophes
(``don't``, ``o'er``), every other non-space character is a token of its own (so punctuation counts
as a "symbol word" exactly as with spaCy's tokenizer, which the Gopher rules (Rae et al. 2021) and
C4 rules (Raffel et al. 2020) were written against). Sentences end at ``.``, ``!`` or ``?`` (plus closing
quotes/brackets) followed by whitespace, or at a blank line. On English prose it agrees closely with
spaCy's blank-English tokenizer (token-boundary F1 0.97 Shakespeare, 0.91 pydocs:
``tests/test_corpus_scale.py``) at a fraction of the cost
(datatrove-offline.md: 6.3x for the whole pipeline).

``splitter("regex")`` or ``splitter("spacy")`` return a :class:`datatrove` ``WordTokenizer``-compatible
object (``word_tokenize``, ``sent_tokenize``, ``span_tokenize``); spaCy is optional.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

WORD_RE = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]")
SENT_END_RE = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+|\n\s*\n")

Splitter = Literal["regex", "spacy"]


def words(text: str) -> list[str]:
    """Word and punctuation tokens of ``text``."""
    return WORD_RE.findall(text)


def word_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of :func:`words`."""
    return [m.span() for m in WORD_RE.finditer(text)]


def sentences(text: str) -> list[str]:
    """Non-empty sentences of ``text`` (stripped)."""
    return [s.strip() for s in SENT_END_RE.split(text) if s and s.strip()]


class RegexWordTokenizer:
    """The regex splitter behind datatrove's ``WordTokenizer`` interface (pass it as ``language=``)."""

    language = "en"

    def word_tokenize(self, text: str) -> list[str]:
        return words(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return sentences(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return word_spans(text)


def _as_datatrove(obj: Any) -> Any:
    """Re-class ``obj`` as a datatrove ``WordTokenizer`` subclass so ``load_word_tokenizer`` accepts it."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    cls = type(f"Kiln{type(obj).__name__}", (type(obj), WordTokenizer), {})
    out = cls.__new__(cls)
    out.__dict__.update(obj.__dict__)
    return out


@lru_cache(maxsize=4)
def splitter(kind: Splitter = "regex", datatrove: bool = False) -> Any:
    """The word splitter ``kind``; with ``datatrove=True`` an instance datatrove's filters accept."""
    if kind == "spacy":
        try:
            from datatrove.utils.word_tokenizers import SpaCyTokenizer
        except ImportError as exc:  # pragma: no cover - datatrove is a dependency
            raise RuntimeError("word_splitter 'spacy' needs datatrove") from exc
        try:
            import spacy  # noqa: F401
        except ImportError:
            raise RuntimeError("word_splitter 'spacy' needs spaCy: pip install spacy (no model download: "
                               "blank English is used)") from None
        return SpaCyTokenizer("en")
    tok = RegexWordTokenizer()
    return _as_datatrove(tok) if datatrove else tok
