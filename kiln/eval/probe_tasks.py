"""Downstream probe tasks built from corpus metadata: each document gets a label and a split group.

A task maps a corpus row (its metadata columns) to ``(label, group)`` or ``None`` (left out). Documents are
split into probe-train / probe-test by a hash of the *group*, so related documents never straddle the split:
for the Shakespeare tasks the group is the play (both editions of a play, and all its scenes, fall on one
side), so a probe cannot win by recognising a play's character names.

=================  ==================================================================================
``edition``        Shakespeare modern spelling vs First Folio (needs a corpus with both editions)
``genre``          play genre (comedy / tragedy / history) from :data:`PLAY_GENRE`; poems left out
``pydocs-module``  top-level module of a pydocs document, the ``top_modules`` most frequent kept
``column:NAME``    any metadata column as the label, grouped by document id (tests, custom corpora)
=================  ==================================================================================
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.run import RunDir

Row = dict

# The First Folio's (1623) three categories, by kiln's play key (kiln.corpus.shakespeare). The late romances
# follow the Folio's placement (The Tempest and The Winter's Tale among the comedies, Cymbeline and Troilus
# and Cressida among the tragedies); Pericles, absent from the Folio, is counted a comedy as its romance kin.
PLAY_GENRE: dict[str, str] = {
    **dict.fromkeys([
        "alls_well_that_ends_well", "as_you_like_it", "comedy_of_errors", "loves_labours_lost",
        "measure_for_measure", "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream",
        "much_ado_about_nothing", "taming_of_the_shrew", "tempest", "twelfth_night", "two_gentlemen_of_verona",
        "winters_tale", "pericles",
    ], "comedy"),
    **dict.fromkeys([
        "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1", "henry_vi_part_2", "henry_vi_part_3",
        "henry_viii", "john", "richard_ii", "richard_iii",
    ], "history"),
    **dict.fromkeys([
        "antony_and_cleopatra", "coriolanus", "cymbeline", "hamlet", "julius_caesar", "lear", "macbeth", "othello",
        "romeo_and_juliet", "timon_of_athens", "titus_andronicus", "troilus_and_cressida",
    ], "tragedy"),
}


@dataclass(frozen=True)
class LabelledDoc:
    text: str
    label: str
    group: str


def _edition(row: Row) -> tuple[str, str] | None:
    if row.get("edition") is None or row.get("form") not in (None, "play") or row.get("play") is None:
        return None
    return row["edition"], row["play"]


def _genre(row: Row) -> tuple[str, str] | None:
    play = row.get("play")
    return (PLAY_GENRE[play], play) if play in PLAY_GENRE else None


def _group(row: Row) -> str:
    """The probe split's group of a row: an augmented copy stays on its original's side."""
    return str(row.get("augmented_from") or row["id"])


def _module(row: Row) -> tuple[str, str] | None:
    mod = row.get("module")
    return (mod, _group(row)) if mod else None


def _column(name: str) -> Callable[[Row], tuple[str, str] | None]:
    def label(row: Row) -> tuple[str, str] | None:
        value = row.get(name)
        return None if value is None else (str(value), _group(row))

    return label


TASKS: dict[str, Callable[[Row], tuple[str, str] | None]] = {
    "edition": _edition, "genre": _genre, "pydocs-module": _module,
}


def task_labeller(task: str) -> Callable[[Row], tuple[str, str] | None]:
    if task.startswith("column:") and len(task) > len("column:"):
        return _column(task.removeprefix("column:"))
    if task not in TASKS:
        raise ValueError(f"unknown probe task {task!r}; tasks: {', '.join(TASKS)}, column:NAME")
    return TASKS[task]


def in_test(group: str, test_fraction: float, seed: int = 0) -> bool:
    """Deterministic split of a group key: its hash, as a fraction of 2^64, below ``test_fraction``."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{group}".encode()).digest()[:8], "big")
    return h / 2**64 < test_fraction


def build_task(rows: list[Row], task: str, test_fraction: float = 0.25, seed: int = 0,
               top_modules: int = 8) -> tuple[list[LabelledDoc], list[LabelledDoc]]:
    """(train, test) labelled documents of ``task`` from corpus rows; refuses a task the corpus cannot pose."""
    labeller = task_labeller(task)
    docs = [LabelledDoc(r["text"], *lab) for r in rows if r.get("text") and (lab := labeller(r)) is not None]
    if task == "pydocs-module":
        keep = {m for m, _ in Counter(d.label for d in docs).most_common(top_modules)}
        docs = [d for d in docs if d.label in keep]
    labels = Counter(d.label for d in docs)
    if len(labels) < 2:
        hint = " (the edition task needs a corpus with both editions: editions: [modern, folio])" \
            if task == "edition" else ""
        raise ValueError(f"probe task {task!r}: the corpus gives {len(labels)} label(s) {sorted(labels)}{hint}")
    train = [d for d in docs if not in_test(d.group, test_fraction, seed)]
    test = [d for d in docs if in_test(d.group, test_fraction, seed)]
    if not train or not test or len({d.label for d in train}) < 2:
        raise ValueError(f"probe task {task!r}: the split left {len(train)} train / {len(test)} test documents "
                         f"over {len({d.label for d in train})} train labels; change test_fraction or seed")
    return train, test


def run_task(run: RunDir, task: str, test_fraction: float, seed: int
             ) -> tuple[list[LabelledDoc], list[LabelledDoc], Callable[[list[str]], list[list[int]]]]:
    """Probe task ``task`` of a kiln run: (train docs, test docs, encode) from its corpus rows (both splits: the
    probe splits by its own groups) and its tokenizer (no special tokens, no padding or truncation)."""
    import pyarrow.parquet as pq

    from kiln.corpus.files import split_files
    from kiln.tokenizer.train import load_tokenizer

    rows = [r for split in ("train", "val") for path in split_files(run.stage("corpus"), split)
            for r in pq.read_table(path).to_pylist()]
    train_docs, test_docs = build_task(rows, task, test_fraction, seed)
    tok = load_tokenizer(run.stage("tokenizer"))
    tok.no_padding()
    tok.no_truncation()

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    return train_docs, test_docs, encode
