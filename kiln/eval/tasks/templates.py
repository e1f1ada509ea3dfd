"""Prompt templates as data, and rendering questions into items.

A builder makes :class:`Question` s: named *fields* of the context (``excerpt``, ``doc``, ...) and, per
choice, the fields of that choice (``name``, ``word``, ...). A template (``templates.yaml``) is a context
pattern and a choice pattern (the verbalizer) over those fields, in ``str.format`` syntax. Several templates
render the same questions, so the spread of accuracy across them measures prompt sensitivity (Liu et al.
2021, "Pre-train, Prompt, and Predict", §3-4: prompt shape and answer verbalizer both move zero-shot scores).

A template with a ``continuation`` pattern scores that text after ``context + choice`` instead of the choice
(partial scoring; see :mod:`kiln.eval.tasks.items`).

Few-shot (Brown et al. 2020): ``k`` solved questions, rendered with the same template and their gold choice
appended, go before the question, separated by a blank line.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from kiln.eval.tasks.items import Item

TEMPLATES_FILE = Path(__file__).with_name("templates.yaml")
SHOT_SEPARATOR = "\n\n"
TEMPLATE_KEYS = frozenset({"context", "choice", "continuation"})


@dataclass(frozen=True)
class Template:
    name: str
    context: str
    choice: str
    continuation: str | None = None  # partial scoring: a text after the choice, scored the same for every choice


@dataclass(frozen=True)
class Question:
    """A question before rendering: the same under every template."""

    id: str
    fields: dict[str, str]  # context fields
    options: tuple[dict[str, str], ...]  # per choice, its fields (merged over the context fields)
    gold: int
    label: str
    doc_id: str


def stable_int(*parts: object) -> int:
    """A 64-bit integer from sha256 of the parts: stable across processes (unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def question_rng(seed: int, task: str, qid: str) -> random.Random:
    """The random generator of one question (distractors, gold position): depends on nothing else."""
    return random.Random(stable_int(seed, task, qid))


def place_gold(rng: random.Random, gold: dict[str, str], others: list[dict[str, str]]) -> tuple[tuple, int]:
    """``(options, gold index)``: the distractors in drawn order with the gold inserted at a drawn position."""
    at = rng.randrange(len(others) + 1)
    return tuple([*others[:at], gold, *others[at:]]), at


def trim_lines(lines: list[str], max_chars: int, from_end: bool = True) -> list[str]:
    """The most lines (whole lines) from the end (or start) whose joined length stays within ``max_chars``."""
    out: list[str] = []
    total = -1
    for line in reversed(lines) if from_end else lines:
        if total + 1 + len(line) > max_chars:
            break
        out.append(line)
        total += 1 + len(line)
    return out[::-1] if from_end else out


def load_templates(path: str | Path | None = None) -> dict[str, list[Template]]:
    """``{task: [Template, ...]}`` from a templates YAML (default: the packaged ``templates.yaml``)."""
    path = Path(path) if path else TEMPLATES_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read task templates ({exc})") from exc
    return _parse(str(path), text)


@cache
def _parse(path: str, text: str) -> dict[str, list[Template]]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: cannot read task templates ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping task -> {{template name: {{context, choice}}}}")
    out: dict[str, list[Template]] = {}
    for task, templates in raw.items():
        if not isinstance(templates, dict) or not templates:
            raise ValueError(f"{path}: {task}: expected a non-empty mapping of templates")
        out[str(task)] = []
        for name, spec in templates.items():
            where = f"{path}: {task}.{name}"
            if not isinstance(spec, dict) or not {"context", "choice"} <= set(spec) <= TEMPLATE_KEYS:
                got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
                raise ValueError(f"{where}: expected the keys 'context' and 'choice' (and optionally "
                                 f"'continuation'), got {got}")
            if not all(isinstance(spec[k], str) for k in spec):
                raise ValueError(f"{where}: {', '.join(map(repr, spec))} must be strings")
            if spec.get("continuation") == "":
                raise ValueError(f"{where}: 'continuation' is empty (leave it out to score the choices)")
            out[str(task)].append(Template(str(name), spec["context"], spec["choice"], spec.get("continuation")))
    return out


def _format(pattern: str, fields: dict[str, str], where: str) -> str:
    try:
        return pattern.format(**fields)
    except KeyError as exc:
        raise ValueError(f"{where}: unknown field {{{exc.args[0]}}}; fields: {', '.join(sorted(fields))}") from None
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{where}: bad pattern {pattern!r} ({exc})") from None


def render_parts(t: Template, q: Question, task: str) -> tuple[str, tuple[str, ...], str | None]:
    """``(context, choices, continuation)`` of one question under one template."""
    where = f"template {task}.{t.name}"
    context = _format(t.context, q.fields, where)
    choices = tuple(_format(t.choice, {**q.fields, **opt}, where) for opt in q.options)
    continuation = None if t.continuation is None else _format(t.continuation, q.fields, where)
    return context, choices, continuation


def render(t: Template, q: Question, task: str, shots: list[Question]) -> Item:
    """The item of ``q`` under ``t``, with the solved ``shots`` in front."""
    context, choices, continuation = render_parts(t, q, task)
    if shots:
        solved = []
        for s in shots:
            s_context, s_choices, s_continuation = render_parts(t, s, task)
            solved.append(s_context + s_choices[s.gold] + (s_continuation or ""))
        context = SHOT_SEPARATOR.join(solved) + SHOT_SEPARATOR + context
    if len(set(choices)) != len(choices):
        raise ValueError(f"template {task}.{t.name}: question {q.id} renders two equal choices {choices}")
    doc_ids = tuple(dict.fromkeys(d for d in (q.doc_id, *(s.doc_id for s in shots)) if d))
    return Item(id=q.id, context=context, choices=choices, gold=q.gold, label=q.label, doc_ids=doc_ids,
                continuation=continuation)

