"""The ``orca_score`` scorer step: ORCA-ICL (Han et al. 2023, "Understanding In-Context Learning via Supportive
Pretraining Data", arXiv 2306.15091).

Each document's score is cos(P g_doc, P g_task) at the weights of a kiln checkpoint: ``g_task`` the gradient of
the in-context loss on the answers of k-shot prompts built from ``task_file``, ``g_doc`` the gradient of the
document's mean token loss, ``P`` a seeded random projection to ``proj_dim`` floats (the method, the projection
and its memory: :mod:`kiln.corpus.selection.orca`). High = the document's gradient step helps the task.

``task_file`` is JSONL, one example per line, either ``{"context": str, "answer": str}`` or kiln's
multiple-choice task format (``{"context", "choices", "gold"}``, :mod:`kiln.eval.tasks.jsonl_task`; the gold
choice is the answer). Prompts are built deterministically from ``seed``: up to ``max_prompts`` query examples
(a seeded permutation), each after ``shots`` other examples drawn at random, every example written as
``context + answer`` and joined by ``separator``; the loss is on the query's answer tokens only. The task
gradient is computed in ``setup``, identically in every shard task (``per_doc``: shards go through
``corpus.executor``).

Recipe use: score, then keep the top 400 documents with ``select``:

.. code-block:: yaml

    corpus:
      steps:
        - step: orca_score
          field: orca
          checkpoint: ../base/run          # theta0: a kiln run dir, checkpoint folder or export
          task_file: tasks/recall.jsonl
          shots: 4
          proj_dim: 1024
        - step: select
          field: orca
          keep_docs: 400

Iterating (re-selecting after a one-pass Adam update on the selection) is :func:`kiln.corpus.selection.orca.
orca_rounds` on token ids; the step scores at one fixed checkpoint (round 1).

This module imports only pydantic, numpy and the scorer interface; torch and kiln.model load when the step runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from kiln.corpus.learned.params import ReferenceModelFields
from kiln.corpus.scoring.base import ScorerParams, scorer_step
from kiln.corpus.steps.base import Doc, StepContext
from kiln.section import INPUT_FILE


class OrcaScoreParams(ScorerParams, ReferenceModelFields):
    step: Literal["orca_score"] = "orca_score"
    task_file: str = Field(description="JSONL of {context, answer} or kiln multiple-choice {context, choices, gold}",
                           json_schema_extra=INPUT_FILE)
    shots: int = Field(4, ge=0, description="demonstrations before each query")
    max_prompts: int = Field(64, ge=1, description="query examples (prompts) in the task gradient")
    separator: str = Field("\n\n", description="text between demonstrations and before the query")
    proj_dim: int = Field(1024, ge=0, description="random projection width; 0 = exact cosines (small models only)")
    projection: Literal["auto", "rademacher", "gaussian", "sparse"] = Field(
        "auto", description="dense +-1 or N(0,1) entries, sparse (CountSketch: O(n) per document, for models too "
                            "big to cache the dense matrix), or auto (rademacher when it fits cache_mb, else sparse)")
    max_tokens: int = Field(1024, ge=2, description="tokens per document whose mean loss is differentiated")
    params_subset: Literal["all", "no_embeddings", "attention_mlp"] | list[str] = Field(
        "all", description="parameters whose gradients are used (or fnmatch patterns over parameter names)")
    seed: int = Field(0, description="seeds the prompts and the projection")
    grad_batch: int = Field(16, ge=1, description="documents whose full gradients are projected together")
    cache_mb: int = Field(512, ge=0, description="keep the projection matrix in memory when it is at most this big")
    prompt_batch: int = Field(16, ge=1, description="prompts per forward pass for the task gradient")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while scoring (None = unchanged)")


# ----------------------------------------------------------------------------- task file -> prompts


def read_task_examples(path: str | Path) -> list[tuple[str, str]]:
    """``(context, answer)`` of every example of a task file (format: the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"orca_score task_file {path}: no such file")
    lines = path.read_text(encoding="utf-8").split("\n")
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise ValueError(f"{path}: no examples (expected one JSON object per line)")
    try:
        head = json.loads(first)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: first example is not JSON ({exc.msg} at column {exc.colno})") from None
    from kiln.eval.tasks.jsonl_task import json_rows, read_questions

    if isinstance(head, dict) and "answer" in head:
        out = []
        for _, where, row in json_rows("\n".join(lines), path):
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object with 'context' and 'answer'")
            for key in ("context", "answer"):
                if not isinstance(row.get(key), str):
                    raise ValueError(f"{where}: field '{key}' must be a string (need context, answer)")
            if not row["answer"]:
                raise ValueError(f"{where}: field 'answer' is empty")
            out.append((row["context"], row["answer"]))
        return out
    return [(q.fields["context"], q.options[q.gold]["choice"]) for q in read_questions(path)]


def build_prompts(examples: list[tuple[str, str]], shots: int, max_prompts: int, seed: int = 0,
                  separator: str = "\n\n") -> list[tuple[str, str]]:
    """k-shot ``(prompt context, answer)`` pairs: seeded queries, each after ``shots`` other examples."""
    if not examples:
        raise ValueError("no task examples to build prompts from")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))[:max_prompts]
    out = []
    for q in order:
        others = np.delete(np.arange(len(examples)), q)
        demos = rng.choice(others, size=min(shots, len(others)), replace=False) if shots and len(others) else []
        prefix = "".join(examples[d][0] + examples[d][1] + separator for d in demos)
        out.append((prefix + examples[q][0], examples[q][1]))
    return out


def encode_prompt(tokenizer: Any, context: str, answer: str) -> tuple[list[int], list[int]]:
    """(context ids with ``<|bos|>`` first, answer ids), split as kiln's task scorer splits a request: trailing
    whitespace of the context moves to the answer, and the answer is what encoding the whole adds."""
    from kiln.tokenizer.special import BOS, SPECIAL_IDS

    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, answer = context[:-n_spaces], context[-n_spaces:] + answer
    bos = [SPECIAL_IDS[BOS]]
    ctx = bos + tokenizer.encode(context, add_special_tokens=False).ids
    whole = bos + tokenizer.encode(context + answer, add_special_tokens=False).ids
    common = next((i for i, (a, b) in enumerate(zip(ctx, whole, strict=False)) if a != b), min(len(ctx), len(whole)))
    return whole[:common], whole[common:]


# ----------------------------------------------------------------------------- the step


@dataclass
class _State:
    ref: Any  # kiln.corpus.learned.refmodel.ReferenceModel
    scorer: Any  # kiln.corpus.selection.orca.OrcaScorer


def orca_setup(params: OrcaScoreParams, ctx: StepContext, docs: list[Doc]) -> _State:
    import torch

    from kiln.corpus.learned.refmodel import ReferenceModel
    from kiln.corpus.selection.orca import OrcaScorer

    task_path = ctx.resolve(params.task_file)
    examples = read_task_examples(task_path)  # before the model: a missing task file fails fast
    ref = ReferenceModel.load(ctx.resolve(params.checkpoint), ctx.resolve(params.tokenizer) if params.tokenizer
                              else None)
    prompts = [encode_prompt(ref.tokenizer, c, a)
               for c, a in build_prompts(examples, params.shots, params.max_prompts, params.seed, params.separator)]
    prompts = [p for p in prompts if p[1]]
    if not prompts:
        raise ValueError(f"{task_path}: every answer encodes to no tokens")
    scorer = OrcaScorer(ref.model, params.params_subset, params.proj_dim, params.seed, params.projection,
                        params.grad_batch, params.cache_mb << 20, params.prompt_batch)
    with _threads(torch, params.threads):
        scorer.fit_task(prompts)
    return _State(ref, scorer)


class _threads:
    def __init__(self, torch: Any, n: int | None) -> None:
        self.torch, self.n, self.before = torch, n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n:
            self.torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        self.torch.set_num_threads(self.before)


def orca_score(state: _State, docs: list[Doc], params: OrcaScoreParams, ctx: StepContext) -> np.ndarray:
    import torch

    ids = [state.ref.tokenizer.encode(d["text"]).ids[: params.max_tokens] for d in docs]
    with _threads(torch, params.threads):
        return state.scorer.score(ids)


STEPS = [scorer_step(OrcaScoreParams, orca_setup, orca_score, per_doc=True)]
