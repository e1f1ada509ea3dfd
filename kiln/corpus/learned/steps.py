"""Registration of the learned filters: ``fasttext_quality`` and ``perplexity`` (see their modules).

The implementations import fastText and torch, so they are imported when a step runs, not when the
recipe is built.
"""

from __future__ import annotations

from kiln.corpus.learned.params import FastTextQualityParams, PerplexityFilterParams
from kiln.corpus.steps.base import Doc, StepContext, StepDef, StepReport


def run_fasttext_quality(docs: list[Doc], params: FastTextQualityParams, ctx: StepContext
                         ) -> tuple[list[Doc], StepReport]:
    from kiln.corpus.learned.fasttext_filter import run

    return run(docs, params, ctx)


def run_perplexity(docs: list[Doc], params: PerplexityFilterParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    from kiln.corpus.learned.perplexity import run

    return run(docs, params, ctx)


STEPS = [StepDef(FastTextQualityParams, run_fasttext_quality), StepDef(PerplexityFilterParams, run_perplexity)]
