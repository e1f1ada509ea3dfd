"""Build a downstream task by name: ``build_task("shakespeare-cloze", recipe, run)`` -> :class:`TaskSet`.

Steps, the same for every built-in choice task:
1. the pool's held-out documents (:mod:`kiln.eval.tasks.pools`) the task reads (e.g. modern-spelling plays);
2. with a run, drop every document in the run's train split (:mod:`kiln.eval.tasks.heldout`), counted;
3. every candidate question of those documents (``builders_shakespeare``, ``builders_pydocs``);
4. ``max_items`` of them, ordered by ``sha256(seed:task:question id)`` (per label in equal numbers for a
   balanced task);
5. each template of ``templates.yaml`` renders the same questions, in the same order; with ``shots=k``, each
   question gets ``k`` solved questions from *other* held-out documents (drawn from the unused candidates).
A held-out bits-per-byte task (``bpb-*``) returns up to ``max_items`` held-out documents instead, chosen the
same way and cut at a line end within :data:`BPB_CHARS` characters. A ``context-gain-*`` task returns triples
(target, related, unrelated held-out document; :mod:`kiln.eval.tasks.context_gain`). ``jsonl:PATH`` reads a user's file
(:mod:`kiln.eval.tasks.jsonl_task`): its first ``max_items`` questions in file order, no held-out check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.eval.tasks import builders_pydocs as py
from kiln.eval.tasks import builders_shakespeare as shk
from kiln.eval.tasks import context_gain as cg
from kiln.eval.tasks.heldout import drop_train_docs, train_doc_ids
from kiln.eval.tasks.items import TaskSet
from kiln.eval.tasks.jsonl_task import GIVEN, read_questions
from kiln.eval.tasks.pools import Pool, load_pool
from kiln.eval.tasks.templates import Question, Template, load_templates, render, stable_int, trim_lines
from kiln.recipe import Recipe
from kiln.run import RunDir

BPB_CHARS = 3000
JSONL_PREFIX = "jsonl:"
Maker = Callable[[list[dict[str, Any]], Pool, int, str], list[Question]]


@dataclass(frozen=True)
class ChoiceTask:
    description: str
    pool: str
    accepts: Callable[[dict[str, Any]], bool]
    make: Maker
    balanced: bool = False
    chance_labels: int = 4


@dataclass(frozen=True)
class BpbTask:
    description: str
    pool: str
    accepts: Callable[[dict[str, Any]], bool]


CHOICE_TASKS: dict[str, ChoiceTask] = {
    "shakespeare-speaker": ChoiceTask("which of 4 characters of the play speaks next after a scene excerpt",
                                      "shakespeare", shk.is_modern_play, shk.speaker_questions),
    "shakespeare-cloze": ChoiceTask("a verse line with a content word blanked; 4 words of the same play",
                                    "shakespeare", shk.is_modern_play, shk.cloze_questions),
    "shakespeare-edition": ChoiceTask("is a passage in modern or First Folio spelling (2-way, balanced)",
                                      "shakespeare", shk.is_play, shk.edition_questions, balanced=True,
                                      chance_labels=2),
    "pydocs-name": ChoiceTask("which of 4 names of its module a stdlib docstring documents",
                              "pydocs", py.is_named, py.name_questions),
    "pydocs-module": ChoiceTask("which of 4 stdlib modules a docstring belongs to",
                                "pydocs", lambda d: True, py.module_questions),
}  # fmt: skip
BPB_TASKS: dict[str, BpbTask] = {
    "bpb-shakespeare-modern": BpbTask("bits per byte on held-out modern-spelling Shakespeare scenes",
                                      "shakespeare", lambda d: d.get("edition") == "modern"),
    "bpb-shakespeare-folio": BpbTask("bits per byte on held-out First Folio scenes",
                                     "shakespeare", lambda d: d.get("edition") == "folio"),
    "bpb-pydocs": BpbTask("bits per byte on held-out stdlib docstrings", "pydocs", lambda d: True),
}  # fmt: skip
TASKS: dict[str, str] = {**{k: v.description for k, v in CHOICE_TASKS.items()},
                         **{k: v.description for k, v in BPB_TASKS.items()},
                         **{k: v.description for k, v in cg.TASKS.items()}}  # fmt: skip


def task_names_help() -> str:
    return ", ".join(TASKS) + f", {JSONL_PREFIX}PATH (a multiple-choice JSONL file)"


def build_task(name: str, recipe: Recipe, run: RunDir | None = None, *, max_items: int = 200, shots: int = 0,
               seed: int = 0, templates_file: str | Path | None = None) -> TaskSet:
    """The task ``name`` built from the recipe's held-out documents (never from ``run``'s train split)."""
    if max_items < 1 or shots < 0:
        raise ValueError(f"task {name}: max_items must be >= 1 and shots >= 0, got {max_items} and {shots}")
    if name.startswith(JSONL_PREFIX):
        return _jsonl_task(name, max_items, shots, seed)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {task_names_help()}")
    spec: ChoiceTask | BpbTask | cg.ContextGainSpec = CHOICE_TASKS.get(name) or BPB_TASKS.get(name) or cg.TASKS[name]
    pool = load_pool(spec.pool, recipe)
    candidates = [d for d in pool.docs if spec.accepts(d)]
    docs, dropped = drop_train_docs(candidates, train_doc_ids(run) if run is not None else None)
    info = {**pool.info(), "candidate_docs": len(candidates), "dropped_in_train": dropped,
            "run": str(run.root) if run is not None else None, "seed": seed, "max_items": max_items}  # fmt: skip
    if isinstance(spec, cg.ContextGainSpec):
        return cg.build_context_gain(name, docs, seed=seed, max_items=max_items, info=info)
    if isinstance(spec, BpbTask):
        chosen = sorted(docs, key=lambda d: (stable_int(seed, name, d["id"]), d["id"]))[:max_items]
        if not chosen:
            raise ValueError(f"task {name}: no held-out documents ({_why_empty(pool, dropped)})")
        out = [(d["id"], _cut(d["text"])) for d in chosen]
        return TaskSet(name, "bpb", spec.description, docs=out, info={**info, "n_docs": len(out),
                                                                     "max_chars": BPB_CHARS})
    questions = spec.make(docs, pool, seed, name)
    if not questions:
        raise ValueError(f"task {name}: no questions from {len(docs)} held-out documents ({_why_empty(pool, dropped)})")
    chosen = select(questions, max_items, seed, name, spec.balanced)
    templates = _templates(name, templates_file)
    info.update(n_candidate_questions=len(questions), n_items=len(chosen), chance=1 / spec.chance_labels)
    return _render(name, spec.description, templates, chosen, questions, shots, seed, info)


def _why_empty(pool: Pool, dropped: int) -> str:
    return (f"{len(pool.docs)} of {pool.n_all} {pool.kind} documents held out at val_fraction={pool.val_fraction}, "
            f"{dropped} of them in the run's train split; raise corpus.val_fraction")


def _cut(text: str) -> str:
    if len(text) <= BPB_CHARS:
        return text
    lines = trim_lines(text.split("\n"), BPB_CHARS, from_end=False)
    return "\n".join(lines) if lines else text[:BPB_CHARS]


def _templates(name: str, templates_file: str | Path | None) -> list[Template]:
    table = load_templates(templates_file)
    if not table.get(name):
        raise ValueError(f"task {name}: no templates in {templates_file or 'the packaged templates.yaml'}")
    return table[name]


def select(questions: list[Question], max_items: int, seed: int, task: str, balanced: bool) -> list[Question]:
    """``max_items`` questions in the order of their seeded hash; equal numbers per label if ``balanced``."""
    order = sorted(questions, key=lambda q: (stable_int(seed, task, q.id), q.id))
    if not balanced:
        return order[:max_items]
    by_label: dict[str, list[Question]] = {}
    for q in order:
        by_label.setdefault(q.label, []).append(q)
    if len(by_label) < 2:
        raise ValueError(f"task {task}: the held-out documents give questions of one label only {sorted(by_label)}; "
                         f"a balanced task needs two or more (raise corpus.val_fraction)")
    per = min(max_items // len(by_label), *(len(v) for v in by_label.values()))
    keep = {q.id for group in by_label.values() for q in group[:per]}
    return [q for q in order if q.id in keep]


def pick_shots(q: Question, pool: list[Question], k: int, seed: int, task: str) -> list[Question]:
    """``k`` solved questions for ``q`` from ``pool`` (seeded start, then in order), each from another document
    than ``q``'s and each other's (questions without a document: other questions)."""
    if k == 0 or not pool:
        return []
    start = stable_int(seed, task, "shots", q.id) % len(pool)
    out: list[Question] = []
    docs = {q.doc_id} - {""}
    for j in range(len(pool)):
        s = pool[(start + j) % len(pool)]
        if s.id != q.id and s.doc_id not in docs:
            out.append(s)
            docs |= {s.doc_id} - {""}
            if len(out) == k:
                return out
    raise ValueError(f"task {task}: only {len(out)} questions from other documents for {k}-shot; use fewer shots")


def _render(name: str, description: str, templates: list[Template], chosen: list[Question],
            questions: list[Question], shots: int, seed: int, info: dict[str, Any]) -> TaskSet:
    used = {q.id for q in chosen}
    spare = [q for q in questions if q.id not in used]
    shot_pool = sorted(spare if len(spare) >= shots + 1 else questions,
                       key=lambda q: (stable_int(seed, name, "shot-pool", q.id), q.id))  # fmt: skip
    shots_of = {q.id: pick_shots(q, shot_pool, shots, seed, name) for q in chosen}
    rendered = {t.name: [render(t, q, name, shots_of[q.id]) for q in chosen] for t in templates}
    labels = sorted({q.label for q in chosen})
    info = {**info, "templates": [t.name for t in templates], "n_labels": len(labels)}
    return TaskSet(name, "choice", description, templates=rendered, shots=shots, info=info)


def _jsonl_task(name: str, max_items: int, shots: int, seed: int) -> TaskSet:
    path = name[len(JSONL_PREFIX) :]
    if not path:
        raise ValueError(f"task {name!r}: give a file, jsonl:PATH")
    questions = read_questions(path)
    chosen = questions[:max_items]
    info = {"pool": "jsonl", "file": str(Path(path).resolve()), "seed": seed, "max_items": max_items,
            "n_candidate_questions": len(questions), "n_items": len(chosen),
            "held_out": "not checked: a user's file has no corpus document ids",
            "chance": sum(1 / len(q.options) for q in chosen) / len(chosen)}  # fmt: skip
    return _render(name, f"multiple choice from {path}", [GIVEN], chosen, questions, shots, seed, info)
