"""Questions from held-out stdlib docstrings: which name a docstring documents, which module it is from.

- ``pydocs-name``: a class's or function's (or method's) docstring; the choices are its name inside its
  top-level module (``dumps``, ``path.join``, ``JSONEncoder.encode``) and 3 other documented names of the same
  module whose last part differs. So the task is not copying, the signature lines a C function's docstring
  starts with (``dumps(obj, ...)``) are cut and the remaining whole-word uses of the name's last part are
  masked as ``____``.
- ``pydocs-module``: any docstring; the choices are its top-level module and 3 other modules of the pool
  (modules with at least :data:`MIN_MODULE_DOCS` documents). Dotted references to the module
  (``json.dumps``) are masked; a bare mention of the module's name in prose is kept (it is knowledge a
  model may have, not a copy of the answer's context).
Docstrings are cut to whole lines within :data:`DOC_CHARS` characters. ``pydocs-name`` also gives the field
``summary``: the same masked docstring cut to :data:`SUMMARY_CHARS` (whole lines, or whole words of a longer
first line), short enough to be the scored continuation of a partially scored template (the docstring given
each candidate name: a model that relates names to the words documenting them scores it higher after the
right name).
"""

from __future__ import annotations

import re
from typing import Any

from kiln.eval.tasks.pools import Pool, qualified_name
from kiln.eval.tasks.templates import Question, place_gold, question_rng, trim_lines

DOC_CHARS = 600
SUMMARY_CHARS = 120
MIN_DOC_CHARS = 40
MIN_MODULE_DOCS = 5
MASK = "____"


def is_named(doc: dict[str, Any]) -> bool:
    return doc.get("kind") in ("class", "function")


def _trim(text: str) -> str:
    return "\n".join(trim_lines(text.strip("\n").split("\n"), DOC_CHARS, from_end=False)).strip()


def name_words(name: str) -> str:
    """A name as lower-case words (``JSONEncoder.encode`` -> ``json encoder encode``, ``read_text`` -> ``read
    text``): a verbalizer whose tokens are the ones prose uses (with their leading spaces)."""
    parts = re.findall(r"[A-Z]+(?=[A-Z][a-z]|\d|\b|_)|[A-Z]?[a-z]+|[A-Z]+|\d+", name)
    return " ".join(p.lower() for p in parts) or name


def summary(text: str) -> str:
    """The start of ``text`` within :data:`SUMMARY_CHARS`: whole lines, else whole words of the first line."""
    lines = trim_lines(text.split("\n"), SUMMARY_CHARS, from_end=False)
    if lines:
        return "\n".join(lines).strip()
    return text[:SUMMARY_CHARS + 1].rsplit(" ", 1)[0].strip()


def strip_name(text: str, last: str, qualified: str) -> str:
    """Cut leading signature lines (``last(...``/``qualified(...``, and a ``--`` line) and mask ``last``."""
    lines = text.split("\n")
    while lines and (lines[0].startswith((f"{last}(", f"{qualified}(")) or lines[0].strip() in ("", "--")):
        depth = lines[0].count("(") - lines[0].count(")")
        lines.pop(0)
        while depth > 0 and lines:  # a signature wrapped over several lines
            depth += lines[0].count("(") - lines[0].count(")")
            lines.pop(0)
    return re.sub(rf"\b{re.escape(last)}\b", MASK, "\n".join(lines))


def name_questions(docs: list[dict[str, Any]], pool: Pool, seed: int, task: str) -> list[Question]:
    out: list[Question] = []
    names_of: dict[str, list[str]] = pool.stats["names"]
    for doc in docs:
        module = doc["module"]
        name = qualified_name(doc["id"], pool.label, module)
        last = name.rsplit(".", 1)[-1]
        others = [n for n in names_of.get(module, []) if n.rsplit(".", 1)[-1] != last]
        text = _trim(strip_name(doc["text"], last, f"{module}.{name}"))
        if len(others) < 3 or len(text) < MIN_DOC_CHARS:
            continue
        rng = question_rng(seed, task, doc["id"])
        opts, gold = place_gold(rng, _option(name), [_option(n) for n in rng.sample(others, 3)])
        fields = {"doc": text, "summary": summary(text), "module": module,
                  "kind": "class" if doc["kind"] == "class" else "function"}
        out.append(Question(doc["id"], fields, opts, gold, name, doc["id"]))
    return out


def _option(name: str) -> dict[str, str]:
    return {"name": name, "name_words": name_words(name)}


def module_questions(docs: list[dict[str, Any]], pool: Pool, seed: int, task: str) -> list[Question]:
    out: list[Question] = []
    modules = sorted(m for m, n in pool.stats["module_docs"].items() if n >= MIN_MODULE_DOCS)
    for doc in docs:
        module = doc["module"]
        text = _trim(re.sub(rf"\b{re.escape(module)}\.", f"{MASK}.", doc["text"]))
        if len(text) < MIN_DOC_CHARS:
            continue
        rng = question_rng(seed, task, doc["id"])
        opts, gold = place_gold(rng, {"module": module}, [{"module": m} for m in
                                                         rng.sample([m for m in modules if m != module], 3)])
        out.append(Question(doc["id"], {"doc": text}, opts, gold, module, doc["id"]))
    return out
