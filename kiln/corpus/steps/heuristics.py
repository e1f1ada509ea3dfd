"""Kiln's own heuristic filters where datatrove has none (Yi: Young et al. 2024, heuristic stage).

- ``ratios``: symbol-to-word, non-alphanumeric-character, digit and short-line ratios (garbled-text rules
  in the spirit of Gopher, Rae et al. 2021, and Yi).
- ``bad_words``: fraction of words on a word list (kiln's short English list by default, via
  :mod:`kiln.corpus.assets`); ``invert: true`` keeps only the flagged documents — the inverse filter of
  A Pretrainer's Guide (Longpre et al. 2023).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kiln.corpus.report import Doc, StepReport
from kiln.corpus.steps.base import StepContext, StepDef, StepParams
from kiln.corpus.words import words


class RatiosParams(StepParams):
    step: Literal["ratios"] = "ratios"
    max_symbol_word_ratio: float | None = Field(0.5, ge=0)
    max_non_alnum_char_ratio: float | None = Field(0.35, ge=0, le=1)
    max_digit_char_ratio: float | None = Field(0.3, ge=0, le=1)
    max_short_line_ratio: float | None = Field(None, ge=0, le=1)
    short_line_chars: int = Field(10, ge=1)


def ratios_reason(text: str, p: RatiosParams) -> str | None:
    toks = words(text)
    n_words = sum(1 for t in toks if t[0].isalnum() or t[0] == "_")
    chars = sum(1 for c in text if not c.isspace()) or 1
    if p.max_symbol_word_ratio is not None and (r := (len(toks) - n_words) / max(n_words, 1)) > p.max_symbol_word_ratio:
        return f"symbol/word ratio {r:.2f} > {p.max_symbol_word_ratio}"
    non_alnum = sum(1 for c in text if not (c.isalnum() or c.isspace()))
    if p.max_non_alnum_char_ratio is not None and (r := non_alnum / chars) > p.max_non_alnum_char_ratio:
        return f"non-alphanumeric char ratio {r:.2f} > {p.max_non_alnum_char_ratio}"
    if p.max_digit_char_ratio is not None and (r := sum(c.isdigit() for c in text) / chars) > p.max_digit_char_ratio:
        return f"digit char ratio {r:.2f} > {p.max_digit_char_ratio}"
    if p.max_short_line_ratio is not None:
        lines = [ln for ln in text.split("\n") if ln.strip()]
        short = sum(len(ln.strip()) < p.short_line_chars for ln in lines) / max(len(lines), 1)
        if short > p.max_short_line_ratio:
            return f"short-line ratio {short:.2f} > {p.max_short_line_ratio}"
    return None


def run_ratios(docs: list[Doc], params: RatiosParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    return ctx.filter(docs, params, lambda d: ratios_reason(d["text"], params))


class BadWordsParams(StepParams):
    step: Literal["bad_words"] = "bad_words"
    max_ratio: float = Field(0.01, ge=0, le=1, description="remove a document if more of its words are listed")
    words_file: str | None = Field(None, description="one word per line; default: kiln's list (asset badwords_en)")
    invert: bool = Field(False, description="keep only the documents the filter would remove (Longpre et al. 2023)")


def bad_word_ratio(text: str, listed: frozenset[str]) -> float:
    """Share of the words (letter/digit tokens) of ``text`` that are in ``listed`` (lower-cased match)."""
    ws = [w.lower() for w in words(text) if w[0].isalnum()]
    return sum(w in listed for w in ws) / max(len(ws), 1)


def run_bad_words(docs: list[Doc], params: BadWordsParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    from kiln.corpus.assets import read_word_list, resolve

    path = ctx.resolve(params.words_file) if params.words_file else resolve("badwords_en", ctx.cache_dir)
    listed = read_word_list(path)

    def why(doc: Doc) -> str | None:
        ratio = bad_word_ratio(doc["text"], listed)
        flagged = ratio > params.max_ratio
        if flagged and not params.invert:
            return f"bad-word ratio {ratio:.3f} > {params.max_ratio}"
        if params.invert and not flagged:
            return f"inverse filter: bad-word ratio {ratio:.3f} <= {params.max_ratio}"
        return None

    return ctx.filter(docs, params, why)


STEPS = [StepDef(RatiosParams, run_ratios, per_doc=True), StepDef(BadWordsParams, run_bad_words, per_doc=True)]
