"""The corpus step API: every cleaning / filtering / dedup step is a pure function of this shape.

.. code-block:: python

    def run(docs: list[Doc], params: MyStepParams, ctx: StepContext) -> tuple[list[Doc], StepReport]: ...

- ``docs``: the documents still in the pipeline, in order (``id``, ``text``, ``source``, metadata keys).
  Return the kept (possibly changed) documents in input order; never mutate an input dict in place
  (build ``{**doc, "text": new}``).
- ``params``: the step's own recipe model, a :class:`StepParams` subclass with a ``step: Literal["name"]``
  discriminator, every parameter typed with bounds and defaults (pydantic validates it with the recipe,
  so a bad value is a recipe error naming ``corpus.steps.N.field``).
- ``ctx``: a :class:`StepContext`. Use ``ctx.remove(report, doc, reason)`` for every document a step drops
  (funnel counts, three examples, and one row of ``removed.parquet``), ``ctx.change(report, doc, new_text,
  reason)`` for a rewrite, ``ctx.guard(doc, fn)`` to call per-document work under the recipe's ``on_error``
  policy, ``ctx.rng`` for randomness, ``ctx.resolve(path)`` for run-relative inputs (e.g. a reference
  checkpoint), ``ctx.cache_dir`` for downloads/assets.

Registration: a step module exposes ``STEPS: list[StepDef]`` (``StepDef(params=MyStepParams, run=run)``);
:mod:`kiln.corpus.steps.registry` imports the modules it lists (kiln's own, plus ``kiln.corpus.learned.steps``,
``kiln.corpus.prox.steps``, ``kiln.corpus.mix`` when present) and the params models join the recipe's
discriminated union on ``step``. Step modules are imported while the recipe is built, so they must import
only cheap things at module level (this module, pydantic, the standard library, numpy); import datatrove,
fasttext, torch or kiln.model inside ``run``. Never import :mod:`kiln.recipe` from a step module (import
:class:`kiln.section.Section` or :class:`StepParams` instead): the recipe imports the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import Field

from kiln.corpus.report import Doc, StepReport, nbytes
from kiln.section import Section

__all__ = ["Doc", "StepReport", "StepParams", "StepContext", "StepError", "StepFn", "Removal", "StepDef", "TwoPass",
           "nbytes", "run_two_pass"]

T = TypeVar("T")
OnError = Literal["stop", "skip"]


class StepError(RuntimeError):
    """A step failed on a document under ``on_error: stop``; the message names the step and the document id."""


class StepParams(Section):
    """Base of every step's recipe model. Subclasses add ``step: Literal["name"] = "name"`` and their fields."""

    step: str
    name: str | None = Field(None, description="funnel label (default: the step name); lets a step run twice")

    @property
    def label(self) -> str:
        return self.name or self.step


@dataclass(frozen=True)
class Removal:
    """One row of ``removed.parquet``: which step removed which document, and why."""

    id: str
    step: str
    reason: str


@dataclass
class StepContext:
    """What a step may use besides its documents and params.

    ``run_dir`` anchors relative input paths (``resolve``); ``cache_dir`` holds downloaded/built assets;
    ``seed`` seeds ``rng`` (one generator per step, derived from the corpus seed and the step index);
    ``on_error`` is the recipe's policy for a step raising on one document; ``removed`` collects the
    per-document removal records of the whole pipeline; ``errors`` counts skipped documents per step.
    """

    step: str = ""
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "kiln")
    run_dir: Path | None = None
    out_dir: Path | None = None  # the (staged) corpus folder: where steps write their artifacts
    seed: int = 0
    on_error: OnError = "stop"
    workers: int = 1
    removed: list[Removal] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def for_step(self, name: str, index: int) -> StepContext:
        """A context for step ``index`` named ``name``, sharing the removal log and error counts."""
        ctx = StepContext(step=name, cache_dir=self.cache_dir, run_dir=self.run_dir, out_dir=self.out_dir,
                          seed=self.seed * 1000 + index,
                          on_error=self.on_error, workers=self.workers, removed=self.removed, errors=self.errors)
        return ctx

    def resolve(self, path: str | Path) -> Path:
        """``path`` as is if absolute, else relative to ``run_dir`` (or the working directory)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() or self.run_dir is None else self.run_dir / p

    # ------------------------------------------------------------------ bookkeeping

    def remove(self, report: StepReport, doc: Doc, reason: str, **extra: str) -> None:
        """Count ``doc`` as removed by this step (funnel, example, ``removed.parquet`` row)."""
        report.docs_removed += 1
        report.bytes_removed += nbytes(doc["text"])
        report.example(doc, reason, **extra)
        self.removed.append(Removal(str(doc["id"]), report.step, reason))

    def change(self, report: StepReport, doc: Doc, text: str, reason: str) -> Doc:
        """Return ``doc`` with ``text``; count the change (and the bytes it removed) when it differs."""
        if text == doc["text"]:
            return doc
        report.docs_changed += 1
        report.bytes_removed += nbytes(doc["text"]) - nbytes(text)
        report.example(doc, reason)
        return {**doc, "text": text}

    def guard(self, report: StepReport, doc: Doc, fn: Callable[[Doc], T]) -> tuple[bool, T | None]:
        """Call ``fn(doc)`` under the ``on_error`` policy: ``(True, result)``, or ``(False, None)`` when skipped.

        ``stop`` raises :class:`StepError` naming the step and the document id; ``skip`` removes the
        document with reason ``error: ...`` and counts it in ``errors`` (and the funnel row's ``errors``).
        """
        try:
            return True, fn(doc)
        except Exception as exc:  # noqa: BLE001 - any failure on one document is subject to on_error
            if self.on_error == "stop":
                raise StepError(f"corpus step '{report.step}' failed on document '{doc['id']}': "
                                f"{type(exc).__name__}: {exc} (set corpus.on_error: skip to skip such documents)"
                                ) from exc
            self.errors[report.step] = self.errors.get(report.step, 0) + 1
            text = doc.get("text")
            safe = doc if isinstance(text, str) else {**doc, "text": "" if text is None else repr(text)}
            self.remove(report, safe, f"error: {type(exc).__name__}: {exc}"[:200])
            return False, None

    def filter(self, docs: list[Doc], params: StepParams, why: Callable[[Doc], str | None]) -> tuple[
            list[Doc], StepReport]:
        """Keep documents for which ``why`` returns None, remove the others with its reason (guarded)."""
        rep = StepReport(self.step or params.step, docs_in=len(docs))
        out = []
        for doc in docs:
            ok, reason = self.guard(rep, doc, why)
            if not ok:
                continue
            if reason is None:
                out.append(doc)
            else:
                self.remove(rep, doc, reason)
        rep.docs_out = len(out)
        return out, rep


StepFn = Callable[[list[Doc], Any, StepContext], tuple[list[Doc], StepReport]]


@dataclass(frozen=True)
class TwoPass:
    """A whole-corpus step decided from a few numbers per document, so it streams with bounded memory.

    ``gather(docs, params)`` returns small per-document records of one shard (numpy arrays);
    ``decide(records, params)`` turns every shard's records (in corpus order) into one decision;
    ``apply(docs, params, decision, ctx, offset)`` applies it to one shard whose first document has corpus
    position ``offset`` and returns ``(kept docs, funnel row)``. The in-memory path calls the three on the
    whole corpus as one shard (:func:`run_two_pass`); the streaming stage calls ``gather`` and ``apply`` as one
    task per shard through ``corpus.executor``.
    """

    gather: Callable[[list[Doc], Any], Any]
    decide: Callable[[list[Any], Any], Any]
    apply: Callable[[list[Doc], Any, Any, StepContext, int], tuple[list[Doc], StepReport]]


def run_two_pass(two: TwoPass, docs: list[Doc], params: Any, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """A :class:`TwoPass` step over documents held in memory."""
    return two.apply(docs, params, two.decide([two.gather(docs, params)], params), ctx, 0)


@dataclass(frozen=True)
class StepDef:
    """A registered step: its recipe model (whose ``step`` default is its name) and its function."""

    params: type[StepParams]
    run: StepFn
    per_doc: bool = False  # each document's fate depends on it alone: may run sharded (kiln.corpus.executor)
    two_pass: TwoPass | None = None  # a whole-corpus step that streams as gather -> decide -> apply

    @property
    def name(self) -> str:
        return str(self.params.model_fields["step"].default)
