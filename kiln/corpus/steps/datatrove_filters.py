"""Heuristic filters that datatrove implements, run in-process on kiln's documents.

Each step builds the datatrove filter once with the recipe's thresholds and kiln's word splitter
(``word_splitter: regex`` by default, ``spacy`` if installed), adapts each kiln ``Doc`` to a datatrove
``Document`` and calls the filter's ``filter``; a rejection's reason (datatrove's own label, e.g.
``gopher_short_doc``) goes to the funnel and ``removed.parquet``.

- ``gopher_quality`` / ``gopher_repetition``: Gopher rules (Rae et al. 2021, Appendix A).
- ``c4_quality``: C4's page rules (Raffel et al. 2020); ``split_paragraph: false`` keeps lines but checks sentences.
- ``fineweb_quality``: FineWeb's extra line rules (Penedo et al. 2024).
- ``language``: fastText lid.176 (from :mod:`kiln.corpus.assets`; never downloaded), run with fastText itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from kiln.corpus.report import Doc, StepReport
from kiln.corpus.steps.base import StepContext, StepDef, StepParams

Splitter = Literal["regex", "spacy"]


def to_document(doc: Doc) -> Any:
    """A datatrove ``Document`` sharing ``doc``'s text and id; metadata is a copy of the other fields."""
    from datatrove.data import Document

    meta = {k: v for k, v in doc.items() if k not in ("id", "text")}
    return Document(text=doc["text"], id=str(doc["id"]), metadata=meta)


def run_filter(docs: list[Doc], params: StepParams, ctx: StepContext, make: Callable[[], Any],
               keep_meta: tuple[str, ...] = ()) -> tuple[list[Doc], StepReport]:
    """Apply datatrove filter ``make()`` to each document under ``on_error``; copy ``keep_meta`` fields back."""
    from kiln.corpus import assets  # noqa: F401 - sets HF_HUB_OFFLINE before datatrove loads anything

    flt = make()
    rep = StepReport(params.step, docs_in=len(docs))
    out = []
    for doc in docs:
        dt = to_document(doc)
        ok, verdict = ctx.guard(rep, doc, lambda _d, dt=dt: flt.filter(dt))
        if not ok:
            continue
        keep, reason = (verdict, params.step) if isinstance(verdict, bool) else (verdict[0], verdict[1])
        if keep:
            extra = {k: dt.metadata[k] for k in keep_meta if k in dt.metadata}
            out.append({**doc, **extra} if extra else doc)
        else:
            ctx.remove(rep, doc, str(reason))
    rep.docs_out = len(out)
    return out, rep


def _tok(kind: Splitter) -> Any:
    from kiln.corpus.words import splitter

    return splitter(kind, datatrove=True)


class GopherQualityParams(StepParams):
    step: Literal["gopher_quality"] = "gopher_quality"
    min_doc_words: int | None = Field(50, gt=0)
    max_doc_words: int | None = Field(100_000, gt=0)
    min_avg_word_length: float | None = Field(3, ge=0)
    max_avg_word_length: float | None = Field(10, gt=0)
    max_symbol_word_ratio: float | None = Field(0.1, ge=0)
    max_bullet_lines_ratio: float | None = Field(0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float | None = Field(0.3, ge=0, le=1)
    max_non_alpha_words_ratio: float | None = Field(0.8, ge=0, le=1)
    min_stop_words: int | None = Field(2, ge=0)
    word_splitter: Splitter = "regex"


def run_gopher_quality(docs: list[Doc], params: GopherQualityParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    from datatrove.pipeline.filters import GopherQualityFilter

    kw = params.model_dump(exclude={"step", "name", "word_splitter"})
    return run_filter(docs, params, ctx, lambda: GopherQualityFilter(**kw, language=_tok(params.word_splitter)))


class GopherRepetitionParams(StepParams):
    step: Literal["gopher_repetition"] = "gopher_repetition"
    dup_line_frac: float | None = Field(0.3, ge=0, le=1)
    dup_para_frac: float | None = Field(0.3, ge=0, le=1)
    dup_line_char_frac: float | None = Field(0.2, ge=0, le=1)
    dup_para_char_frac: float | None = Field(0.2, ge=0, le=1)
    top_n_grams: list[tuple[int, float]] = [(2, 0.2), (3, 0.18), (4, 0.16)]
    dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    word_splitter: Splitter = "regex"
    implementation: Literal["numpy", "datatrove"] = Field(
        "numpy", description="numpy: n-gram rules vectorised (kiln.corpus.steps.fast_repetition); datatrove: its own")


def run_gopher_repetition(docs: list[Doc], params: GopherRepetitionParams, ctx: StepContext) -> tuple[
        list[Doc], StepReport]:
    from datatrove.pipeline.filters import GopherRepetitionFilter

    from kiln.corpus.steps.fast_repetition import make_filter

    kw = params.model_dump(exclude={"step", "name", "word_splitter", "top_n_grams", "dup_n_grams", "implementation"})
    top, dup = tuple(map(tuple, params.top_n_grams)), tuple(map(tuple, params.dup_n_grams))
    make = GopherRepetitionFilter if params.implementation == "datatrove" else make_filter
    return run_filter(docs, params, ctx, lambda: make(
        **kw, top_n_grams=top, dup_n_grams=dup, language=_tok(params.word_splitter)))


class C4QualityParams(StepParams):
    step: Literal["c4_quality"] = "c4_quality"
    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = Field(5, ge=-1)
    min_words_per_line: int = Field(3, ge=-1)
    max_word_length: int = Field(1000, ge=-1)
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True
    word_splitter: Splitter = "regex"


def run_c4_quality(docs: list[Doc], params: C4QualityParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """C4 rules; C4's line dropping rewrites the text, so kept documents take the filter's text."""
    from datatrove.pipeline.filters import C4QualityFilter

    kw = params.model_dump(exclude={"step", "name", "word_splitter"})
    flt = C4QualityFilter(**kw, language=_tok(params.word_splitter))
    rep = StepReport(params.step, docs_in=len(docs))
    out = []
    for doc in docs:
        dt = to_document(doc)
        ok, verdict = ctx.guard(rep, doc, lambda _d, dt=dt: flt.filter(dt))
        if not ok:
            continue
        keep, reason = (verdict, params.step) if isinstance(verdict, bool) else verdict
        if keep:
            out.append(ctx.change(rep, doc, dt.text, "c4 lines removed"))
        else:
            ctx.remove(rep, doc, str(reason))
    rep.docs_out = len(out)
    return out, rep


class FineWebQualityParams(StepParams):
    step: Literal["fineweb_quality"] = "fineweb_quality"
    line_punct_thr: float = Field(0.12, ge=0, le=1)
    line_punct_exclude_zero: bool = False
    short_line_thr: float = Field(0.67, ge=0, le=1)
    short_line_length: int = Field(30, ge=0)
    char_duplicates_ratio: float = Field(0.01, ge=0, le=1)
    new_line_ratio: float = Field(0.3, ge=0)
    word_splitter: Splitter = "regex"


def run_fineweb_quality(docs: list[Doc], params: FineWebQualityParams, ctx: StepContext) -> tuple[
        list[Doc], StepReport]:
    from datatrove.pipeline.filters import FineWebQualityFilter

    kw = params.model_dump(exclude={"step", "name", "word_splitter"})
    return run_filter(docs, params, ctx, lambda: FineWebQualityFilter(**kw, language=_tok(params.word_splitter)))


class LanguageParams(StepParams):
    step: Literal["language"] = "language"
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    threshold: float = Field(0.65, ge=0, le=1)


def run_language(docs: list[Doc], params: LanguageParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """fastText lid.176 language ID (Joulin et al. 2016); kept documents gain ``language``/``language_score``.

    Same rule as datatrove's ``LanguageFilter`` (top label among ``languages`` with score >= threshold,
    newlines joined), run with fastText directly: datatrove's filter insists on the
    ``fasttext-numpy2-wheel`` distribution, whose training is broken here (NaN), and on downloading
    ``lid.176.bin``.
    """
    import fasttext

    from kiln.corpus.assets import resolve

    model = fasttext.load_model(str(resolve("lid176", ctx.cache_dir)))
    wanted = set(params.languages)
    rep = StepReport(params.step, docs_in=len(docs))
    out = []
    for doc in docs:
        ok, pred = ctx.guard(rep, doc, lambda d: model.predict(d["text"].replace("\n", " "), k=1))
        if not ok:
            continue
        lang, score = pred[0][0].removeprefix("__label__"), float(pred[1][0])
        if lang in wanted and score >= params.threshold:
            out.append({**doc, "language": lang, "language_score": round(score, 4)})
        else:
            ctx.remove(rep, doc, f"language {lang} ({score:.2f}) not in {sorted(wanted)} at >= {params.threshold}")
    rep.docs_out = len(out)
    return out, rep


STEPS = [
    StepDef(GopherQualityParams, run_gopher_quality, per_doc=True),
    StepDef(GopherRepetitionParams, run_gopher_repetition, per_doc=True),
    StepDef(C4QualityParams, run_c4_quality, per_doc=True),
    StepDef(FineWebQualityParams, run_fineweb_quality, per_doc=True),
    StepDef(LanguageParams, run_language, per_doc=True),
]
