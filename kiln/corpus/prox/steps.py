"""The ``prox`` corpus step: generate a program per document, execute it, log it; and replay a log.

ProX (Zhou et al. 2024, "Programming Every Example") refines documents by executing programs. Here the
generator is chosen in the recipe: ``generator: rules`` (:class:`~kiln.corpus.prox.generator.RuleBasedGenerator`)
or ``generator: learned`` with ``model: <folder>`` (a small kiln LM trained on (chunk, program) pairs,
:class:`~kiln.corpus.prox.learned.LearnedGenerator`; its chunking comes from the model folder, so
``max_chunk_lines`` / ``max_chunk_chars`` apply to the rule generator only). Every program is written to
``prox_programs.jsonl`` in the corpus stage folder (one row per document: ``id``, ``generator``,
``doc_program``, ``chunk_programs``, ``outcome``, ``errors``), and :func:`replay` re-applies a log to the
same input documents with identical output, whatever generated the programs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from kiln.atomic import staged_path
from kiln.corpus.artifacts import stage_dir
from kiln.corpus.prox.executor import ExecConfig, ExecResult, execute
from kiln.corpus.prox.generator import RULES, Program, ProgramGenerator, RuleBasedGenerator
from kiln.corpus.steps.base import Doc, StepContext, StepDef, StepParams, StepReport

PROGRAMS_FILE = "prox_programs.jsonl"
Rule = Literal["gutenberg", "page_numbers", "line_numbers", "stage_directions"]
assert set(Rule.__args__) == set(RULES)  # type: ignore[attr-defined]


class ProxParams(StepParams):
    step: Literal["prox"] = "prox"
    generator: Literal["rules", "learned"] = "rules"
    model: str | None = Field(None, description="learned: the generator folder (kiln.corpus.prox.learned)")
    max_new_tokens: int | None = Field(None, ge=1, description="learned: tokens decoded per chunk (default: "
                                       "the model folder's)")
    rules: list[Rule] = Field(default_factory=lambda: ["gutenberg", "page_numbers", "line_numbers"])
    drop_share: float = Field(0.9, gt=0.0, le=1.0, description="rules: drop_doc() when this share of lines is noise")
    max_chunk_lines: int = Field(64, ge=1)
    max_chunk_chars: int = Field(4000, ge=1)
    max_remaining_ratio: float = Field(0.05, ge=0.0, le=1.0, description="drop if words kept / words <= this")
    min_words: int = Field(10, ge=0, description="drop if at most this many words remain")
    max_errors: int = Field(2, ge=1, description="with this many malformed operations the original is kept")
    log_file: str = PROGRAMS_FILE

    @model_validator(mode="after")
    def _model_for_learned(self) -> ProxParams:
        if self.generator == "learned" and not self.model:
            raise ValueError("prox: generator: learned needs `model:` (a folder made by "
                             "kiln.train.prox_generator.train_generator)")
        return self

    def exec_config(self) -> ExecConfig:
        return ExecConfig(self.max_remaining_ratio, self.min_words, self.max_errors)


def make_generator(params: ProxParams, ctx: StepContext | None = None) -> ProgramGenerator:
    """The recipe's generator; a relative ``model`` path is resolved against the run directory (``ctx.resolve``)."""
    if params.generator == "learned":
        from kiln.corpus.prox.learned import LearnedGenerator

        assert params.model is not None  # the validator guarantees it
        path = ctx.resolve(params.model) if ctx is not None else Path(params.model)
        return LearnedGenerator(path, params.max_new_tokens)
    return RuleBasedGenerator(tuple(params.rules), params.drop_share, params.max_chunk_lines, params.max_chunk_chars)


def apply_programs(docs: list[Doc], programs: dict[str, Program], cfg: ExecConfig, ctx: StepContext,
                   rep: StepReport) -> tuple[list[Doc], dict[str, ExecResult]]:
    """Execute each document's program (documents without one pass unchanged); count drops and changes."""
    results: dict[str, ExecResult] = {}
    out = []
    for doc in docs:
        prog = programs.get(doc["id"])
        if prog is None:
            out.append(doc)
            continue
        ok, res = ctx.guard(rep, doc, lambda d, p=prog: execute(d["text"], p.doc, list(p.chunks), cfg))
        if not ok or res is None:
            continue
        results[doc["id"]] = res
        if res.dropped:
            ctx.remove(rep, doc, f"prox: {res.outcome}")
        else:
            out.append(ctx.change(rep, doc, res.text, f"prox: {res.outcome}"))
    return out, results


def write_log(path: Path, generator: str, programs: dict[str, Program], results: dict[str, ExecResult]) -> None:
    with staged_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for doc_id, prog in programs.items():
            res = results.get(doc_id)
            row = {"id": doc_id, "generator": generator, **prog.to_json(),
                   "outcome": res.outcome if res else None, "errors": res.errors if res else []}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_log(path: Path) -> dict[str, Program]:
    """Programs by document id from a ``prox_programs.jsonl``."""
    with open(path, encoding="utf-8") as f:
        return {row["id"]: Program.from_json(row) for row in map(json.loads, filter(str.strip, f))}


def run(docs: list[Doc], params: ProxParams, ctx: StepContext) -> tuple[list[Doc], StepReport]:
    """Generate, execute and log a program for every document."""
    gen = make_generator(params, ctx)
    rep = StepReport(ctx.step or params.step, docs_in=len(docs))
    programs: dict[str, Program] = {}
    generated = []
    for doc in docs:
        ok, prog = ctx.guard(rep, doc, gen.generate)
        if ok and prog is not None:
            programs[doc["id"]] = prog
            generated.append(doc)
    out, results = apply_programs(generated, programs, params.exec_config(), ctx, rep)
    rep.docs_out = len(out)
    out_dir = stage_dir(ctx)
    if out_dir is not None:
        write_log(out_dir / params.log_file, gen.name, programs, results)
    return out, rep


def replay(docs: list[Doc], log_path: Path, params: ProxParams | None = None,
           ctx: StepContext | None = None) -> tuple[list[Doc], StepReport]:
    """Re-apply logged programs to ``docs``: the same input gives the step's output exactly."""
    params = params or ProxParams()
    ctx = ctx or StepContext(step="prox")
    rep = StepReport("prox_replay", docs_in=len(docs))
    out, _ = apply_programs(docs, read_log(Path(log_path)), params.exec_config(), ctx, rep)
    rep.docs_out = len(out)
    return out, rep


STEPS = [StepDef(ProxParams, run)]
