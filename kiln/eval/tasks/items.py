"""The data of the downstream task suite: rendered multiple-choice items and held-out text sets.

A *task* (``shakespeare-cloze``, ``pydocs-name``, a user's JSONL file, ...) is built deterministically into a
:class:`TaskSet`: for every prompt template, the same questions rendered as :class:`Item` s (a context and its
choices, scored by the log-likelihood of each choice given the context), or, for a held-out bits-per-byte task,
a list of documents. Builders (``kiln/eval/tasks/builders.py``) make these; the scorer
(``kiln/eval/tasks/score.py``) and the lm-eval export (``kiln/eval/tasks/lm_eval_export.py``) read them.

Scoring follows lm-evaluation-harness's ``multiple_choice`` exactly, so the two agree: the scored text is
``context + choice`` (no delimiter is inserted: a choice carries its own leading space), ``acc`` takes the
choice with the highest summed log-likelihood, ``acc_norm`` the highest log-likelihood per *character* of the
choice string.

An item with a ``continuation`` is scored the other way round ("partial scoring", Trinh & Le 2018, "A Simple
Method for Commonsense Reasoning"; lm-eval's *multiple-input* form, as in its Winogrande task): each choice ends
its own context and the log-likelihood of the one shared continuation is compared, so the choices' own prior
probabilities do not enter the score. lm-eval's ``acc_norm`` then divides by the length of the whole
per-choice context (its "choice" string); kiln does the same, so the two agree there too.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    """One multiple-choice question, rendered by one template."""

    id: str  # stable across templates: the same question has the same id under every template
    context: str  # the prompt (few-shot examples included), scored as the condition
    choices: tuple[str, ...]  # continuations; each carries its own leading space or newline
    gold: int  # index of the right choice
    label: str  # the right answer as a class name (speaker, word, edition, function, module): majority baseline
    doc_ids: tuple[str, ...]  # corpus document ids the question (and its few-shot examples) was made from
    continuation: str | None = None  # partial scoring: the text scored after ``context + choice``, for every choice

    def requests(self) -> list[tuple[str, str]]:
        """The ``(context, continuation)`` log-likelihood requests of the choices, in choice order."""
        if self.continuation is None:
            return [(self.context, c) for c in self.choices]
        return [(self.context + c, self.continuation) for c in self.choices]

    def norm_lengths(self) -> list[float]:
        """Per choice, the character count ``acc_norm`` divides by (lm-eval's length of its choice string)."""
        if self.continuation is None:
            return [float(len(c)) for c in self.choices]
        return [float(len(self.context + c)) for c in self.choices]


@dataclass
class TaskSet:
    """A built task: per template, the same questions rendered; or, for ``kind == "bpb"``, held-out documents."""

    name: str
    kind: str = "choice"  # "choice" (multiple choice, scored by log-likelihood) | "bpb" (bits per byte on docs)
    description: str = ""
    templates: dict[str, list[Item]] = field(default_factory=dict)  # template name -> items (same ids, same order)
    docs: list[tuple[str, str]] = field(default_factory=list)  # kind "bpb": (document id, text)
    shots: int = 0
    info: dict = field(default_factory=dict)  # how it was built: pool, split rule, counts, seed

    def doc_ids(self) -> set[str]:
        """Every corpus document the task used (the held-out check reads this)."""
        ids = {d for items in self.templates.values() for it in items for d in it.doc_ids}
        return ids | {d for d, _ in self.docs}
