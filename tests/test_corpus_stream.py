"""The streaming corpus stage equals the in-memory reference path, shard by shard, in bounded memory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kiln.corpus import spill
from kiln.corpus.files import split_files
from kiln.corpus.schema import write_parquet
from kiln.corpus.sources import SourceError
from kiln.corpus.stage import build_corpus, reference_corpus
from kiln.recipe import CorpusConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from corpus_synth import make_corpus  # noqa: E402

BOILER = ["Subscribe to our newsletter for the latest news every single week.",
          "All rights reserved by the publisher of this fine and reputable website."]
DEDUP_STEPS = [{"step": "normalize"}, {"step": "empty"}, {"step": "exact_dedup"}, {"step": "minhash"},
               {"step": "subdoc_dedup", "min_doc_chars": 20}, {"step": "length", "min_chars": 100}]


def _write_corpus(path: Path, n: int = 240, seed: int = 7) -> Path:
    """Planted exact/near duplicates spread over the whole file (so over shards), shared boilerplate lines,
    and metadata whose types only settle late (``score``: ints, then a float in the last documents)."""
    docs = make_corpus(n, seed=seed)
    rows = []
    for i, d in enumerate(docs):
        text = d["text"]
        if i % 7 == 0:
            text = f"{text}\n{BOILER[i % 2]}"
        row = {"id": d["id"], "text": text, "kind": d["kind"], "score": i}
        if i >= n - 3:
            row["score"], row["late"] = i + 0.5, True
        rows.append(row)
    rows.append({"id": "empty", "text": "   \n", "kind": "empty", "score": None})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(corpus: Path, **kw) -> CorpusConfig:
    return CorpusConfig.model_validate({"sources": [{"kind": "jsonl", "path": str(corpus), "id_field": "id"}],
                                        "min_chars": 100, **kw})


def _read_split(out: Path, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in split_files(out, split)])


def _without_seconds(funnel: dict) -> dict:
    sources = {k: {f: v for f, v in e.items() if f != "seconds"} for k, e in funnel["sources"].items()}
    return {**funnel, "sources": sources}


def _assert_same_as_reference(cfg: CorpusConfig, tmp_path: Path, min_parts: int = 2) -> dict:
    out = tmp_path / "stream" / "corpus"
    build_corpus(cfg, out)
    train, val, funnel, removed = reference_corpus(cfg)
    ref = tmp_path / "ref"
    ref.mkdir()
    schema = _read_split(out, "train").schema
    for split, docs in (("train", train), ("val", val)):
        write_parquet(ref / f"{split}.parquet", docs, schema)
        got = _read_split(out, split)
        assert got.equals(pq.read_table(ref / f"{split}.parquet")), split
        assert all(pq.read_schema(p) == schema for p in split_files(out, split))
    assert len(split_files(out, "train")) >= min_parts
    got_funnel = json.loads((out / "funnel.json").read_text())
    assert _without_seconds(got_funnel) == _without_seconds(json.loads(json.dumps(funnel)))
    rows = pq.read_table(out / "removed.parquet").to_pylist()
    assert [(r["id"], r["step"], r["reason"]) for r in rows] == [(r.id, r.step, r.reason) for r in removed]
    assert not list(out.parent.glob(".corpus-work-*")), "work folder left behind"
    return got_funnel


def test_default_steps_stream_equals_in_memory(tmp_path: Path) -> None:
    cfg = _cfg(_write_corpus(tmp_path / "c.jsonl"), shard_docs=25, workers=2, val_fraction=0.1)
    funnel = _assert_same_as_reference(cfg, tmp_path)
    assert [s["step"] for s in funnel["steps"]] == ["normalize", "empty", "length", "dedup"]
    assert funnel["steps"][-1]["docs_removed"] > 5  # planted exact copies, across shards
    assert "score: double" in funnel["schema"] and "late: bool" in funnel["schema"]


def test_dedup_pipeline_across_shards_equals_in_memory(tmp_path: Path) -> None:
    cfg = _cfg(_write_corpus(tmp_path / "c.jsonl"), shard_docs=20, workers=2, steps=DEDUP_STEPS, val_fraction=0.1)
    funnel = _assert_same_as_reference(cfg, tmp_path)
    rows = {s["step"]: s for s in funnel["steps"]}
    assert rows["minhash"]["docs_removed"] >= 20 and rows["exact_dedup"]["docs_removed"] >= 1
    assert rows["subdoc_dedup"]["docs_changed"] >= 20


def test_minhash_verify_threshold_and_select(tmp_path: Path) -> None:
    steps = [{"step": "minhash", "verify_threshold": 0.5, "hashes_per_bucket": 3, "buckets": 10},
             {"step": "exact_dedup"}]
    cfg = _cfg(_write_corpus(tmp_path / "c.jsonl", n=150), shard_docs=16, steps=steps,
               select={"kind": ["good", "near", "exact"]})
    funnel = _assert_same_as_reference(cfg, tmp_path)
    assert funnel["steps"][0]["step"] == "select" and funnel["steps"][0]["docs_removed"] > 0


@pytest.mark.parametrize("order_by", [[], ["score"]])
def test_tail_split_equals_in_memory(tmp_path: Path, order_by: list[str]) -> None:
    cfg = _cfg(_write_corpus(tmp_path / "c.jsonl", n=120), shard_bytes=20_000, split="tail", val_fraction=0.15,
               split_order_by=order_by, shard_docs=30)
    funnel = _assert_same_as_reference(cfg, tmp_path, min_parts=1)
    assert funnel["split"]["split_document"] is not None


def test_tiny_corpus_forced_val_and_empty_val(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": f"document number {i} " * 20}) + "\n" for i in range(3)))
    _assert_same_as_reference(_cfg(src, shard_docs=1, val_fraction=0.01), tmp_path / "a", min_parts=1)
    cfg = _cfg(src, shard_docs=1, val_fraction=0.0)
    _assert_same_as_reference(cfg, tmp_path / "b", min_parts=1)
    assert pq.read_table(split_files(tmp_path / "b" / "stream" / "corpus", "val")[0]).num_rows == 0


def test_documents_held_never_exceed_the_shard_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch of documents the stage holds (read buffer, shard loads, step outputs, split runs) is
    reported to ``spill.WATCH``: with 12-document shards none is larger, for a corpus 20x that."""
    sizes: list[int] = []
    monkeypatch.setattr(spill, "WATCH", sizes.append)
    corpus = _write_corpus(tmp_path / "c.jsonl")
    for k, extra in enumerate([{}, {"steps": DEDUP_STEPS}, {"split": "tail", "split_order_by": ["score"]}]):
        build_corpus(_cfg(corpus, shard_docs=12, **extra), tmp_path / f"out{k}" / "corpus")
    assert sizes and max(sizes) <= 12 and sum(sizes) > 20 * 12
    sizes.clear()
    build_corpus(_cfg(corpus, shard_docs=1000), tmp_path / "one" / "corpus")
    assert max(sizes) == 241  # the hook does see a whole corpus held at once


def test_duplicate_ids_across_shards_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"id": i % 9 if i != 30 else 3, "text": f"text {i}"}) + "\n"
                           for i in range(9)) + "".join(json.dumps({"id": f"x{i}", "text": "t"}) + "\n"
                                                        for i in range(20)) + json.dumps({"id": 3, "text": "t"}))
    for workers in (1, 2):  # 2: the first block already runs on the shards read when the error is found
        with pytest.raises(SourceError, match=r"duplicate document id 'a/3' \(sources 'a' and 'a'\)"):
            build_corpus(_cfg(src, shard_docs=4, workers=workers), tmp_path / f"out{workers}" / "corpus")
        assert not list((tmp_path / f"out{workers}").glob(".corpus-work-*"))


def test_the_first_block_overlaps_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With local workers, each shard is handed to the leading per-document block as soon as it is read."""
    from kiln.corpus import stream

    events: list[str] = []
    submit, read = stream.EarlyBlock.__call__, stream.read_shards
    monkeypatch.setattr(stream.EarlyBlock, "__call__", lambda self, path: (events.append("submit"),
                                                                           submit(self, path))[1])

    def reading(plan, on_shard=None):  # noqa: ANN001, ANN202
        events.append("read")
        out = read(plan, on_shard)
        events.append("read done")
        return out

    monkeypatch.setattr(stream, "read_shards", reading)
    cfg = _cfg(_write_corpus(tmp_path / "c.jsonl", n=60), shard_docs=10, workers=2)
    _assert_same_as_reference(cfg, tmp_path)
    assert events == ["read"] + ["submit"] * 7 + ["read done"]  # 61 documents: 7 shards


@pytest.mark.slow
def test_ray_executor_streaming_equals_in_memory(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    steps = [{"step": "normalize"}, {"step": "exact_dedup"}, {"step": "minhash"}, {"step": "subdoc_dedup"}]
    cfg = _cfg(_write_corpus(tmp_path / "c.jsonl", n=120), shard_docs=40, workers=2, executor="ray", steps=steps)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _assert_same_as_reference(cfg, tmp_path)
    finally:
        ray.shutdown()


def test_normalize_text_strips_exactly_what_the_trailing_whitespace_rule_does() -> None:
    from kiln.corpus.clean import _TRAILING_WS, normalize_text

    ws = [chr(c) for c in range(0x3100) if chr(c).isspace() and chr(c) != "\n"] + ["\u200b", "x"]
    texts = [f"a{w}\nb {w}{w}\n{w}\n\n c{w}" for w in ws] + ["\n\n  lead\t\r\nmid \rend  \n\n", ""]
    for t in texts:
        flat = t.replace("\r\n", "\n").replace("\r", "\n")
        assert normalize_text(t, "none") == _TRAILING_WS.sub("", flat).strip("\n"), repr(t)


def test_documents_without_words_are_not_minhash_duplicates_of_each_other() -> None:
    """Issue 12.3: every word-less document used to get the same signature (one shingle 0)."""
    from kiln.corpus.steps.minhash import MinHashParams, near_duplicate_pairs

    docs = [{"id": str(i), "text": t, "source": "s"} for i, t in
            enumerate(["@@@ ### $$$", "%%% ^^^ &&&", "--- +++ ===", "@@@ ### $$$", "real words here and there"])]
    assert near_duplicate_pairs(docs, MinHashParams()) == [(0, 3)]


def test_an_empty_corpus_is_refused_naming_the_source(tmp_path: Path) -> None:
    """Issue 12.13: an empty JSONL used to pass the corpus stage and fail later, in training."""
    src = tmp_path / "empty.jsonl"
    src.write_text("\n")
    with pytest.raises(SourceError, match=r"no documents read from any source \('empty' \(jsonl: .*empty.jsonl\)"):
        build_corpus(_cfg(src), tmp_path / "a" / "corpus")
    src.write_text(json.dumps({"id": 1, "text": "short"}) + "\n")
    with pytest.raises(SourceError, match=r"no document left for training .*step 'length' removed the last ones"):
        build_corpus(_cfg(src), tmp_path / "b" / "corpus")


def test_a_one_document_validation_split_is_warned_about(tmp_path: Path, logs: pytest.CaptureFixture) -> None:
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": f"document number {i} " * 20}) + "\n" for i in range(4)))
    build_corpus(_cfg(src, val_fraction=0.01), tmp_path / "a" / "corpus")  # the tiny-corpus rule: one val doc
    assert "validation split holds a single document" in logs.readouterr().err
    build_corpus(_cfg(src, val_fraction=0.7), tmp_path / "b" / "corpus")
    assert "single document" not in logs.readouterr().err


def test_on_error_skip_skips_and_counts_an_unreadable_txt_file(tmp_path: Path) -> None:
    """Issue 12.14: ``corpus.on_error: skip`` used to stop at an unreadable file of a txt folder."""
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(3):
        (folder / f"ok{i}.txt").write_text(f"readable text number {i} " * 20)
    (folder / "bad.txt").write_bytes(b"caf\xe9 latin-1 bytes " * 20)
    kw = {"sources": [{"kind": "txt", "path": str(folder)}], "min_chars": 10}
    with pytest.raises(SourceError, match=r"bad.txt: not valid UTF-8"):
        build_corpus(CorpusConfig.model_validate(kw), tmp_path / "a" / "corpus")
    summary = build_corpus(CorpusConfig.model_validate({**kw, "on_error": "skip"}), tmp_path / "b" / "corpus")
    entry = json.loads((tmp_path / "b" / "corpus" / "funnel.json").read_text())["sources"]["texts"]
    assert summary["sources"] == {"texts": 3} and entry["files_skipped"] == 1
    assert "bad.txt: not valid UTF-8" in entry["skipped_examples"][0]


def test_a_whole_corpus_step_without_streaming_form_equals_in_memory(tmp_path: Path) -> None:
    """``mix`` (like the learned filters) has no streaming form: it runs over the loaded shards, is re-sharded."""
    steps = [{"step": "normalize"}, {"step": "exact_dedup"},
             {"step": "mix", "by": "kind", "weights": {"good": 1.5, "near": 0.5}}, {"step": "length"}]
    cfg = _cfg(_write_corpus(tmp_path / "c.jsonl", n=120), shard_docs=15, workers=2, steps=steps, val_fraction=0.2)
    funnel = _assert_same_as_reference(cfg, tmp_path)
    assert funnel["steps"][2]["step"] == "mix" and funnel["steps"][2]["docs_out"] != funnel["steps"][2]["docs_in"]


def test_scorer_and_select_stream_like_in_memory_and_reach_the_parquet(tmp_path: Path) -> None:
    """A per-document scorer runs sharded, ``select`` streams as gather -> decide -> apply; the score column is
    in every part's schema (a field a step added), and the funnel rows carry the scores and the cut."""
    words = tmp_path / "words.txt"
    words.write_text("the\nof\nand\na\nto\nin\n")
    steps = [{"step": "normalize"}, {"step": "toxicity_score", "name": "common", "words_file": str(words)},
             {"step": "select", "field": "common", "keep_fraction": 0.6, "per_source": True},
             {"step": "length"}]
    cfg = _cfg(_write_corpus(tmp_path / "c.jsonl", n=120), shard_docs=15, workers=2, steps=steps, val_fraction=0.2)
    funnel = _assert_same_as_reference(cfg, tmp_path)
    rows = {s["step"]: s for s in funnel["steps"]}
    assert "common: double" in funnel["schema"]
    assert rows["common"]["scores"]["n"] == rows["common"]["docs_in"] and rows["common"]["scores"]["sample"]
    assert rows["select"]["docs_removed"] > 20 and rows["select"]["selection"]["field"] == "common"
    table = _read_split(tmp_path / "stream" / "corpus", "train")
    assert table.column("common").null_count == 0
    assert min(table.column("common").to_pylist()) >= rows["select"]["selection"]["cuts"]["c"]
