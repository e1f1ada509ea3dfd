"""Bad inputs: every reader gives documents or a SourceError naming the file (and line/row), never another error.

Documented handling (docs/reliability.md): blank lines are skipped; NUL bytes are ordinary text (byte-level BPE
round-trips them); empty and whitespace-only documents are removed by the `empty` step and counted in
funnel.json; huge documents are read whole (`corpus.max_chars` drops them, counted by the `length` step).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.corpus.sources import SourceError, read_jsonl, read_parquet, read_txt
from kiln.corpus.stage import build_corpus
from kiln.recipe import CorpusConfig


def test_non_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(SourceError, match=rf"{p}:2: not valid UTF-8"):
        list(read_jsonl(str(p), "a"))
    t = tmp_path / "b.txt"
    t.write_bytes(b"ok \xff\xfe")
    with pytest.raises(SourceError, match=rf"{t}: not valid UTF-8"):
        list(read_txt(str(t), "b"))


def test_nul_bytes_are_text_when_escaped_and_an_error_when_raw_in_json(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"text": "a\x00b"}) + "\n")
    assert [d["text"] for d in read_jsonl(str(p), "a")] == ["a\x00b"]
    p.write_bytes(b'{"text": "a\x00b"}\n')
    with pytest.raises(SourceError, match=rf"{p}:1: invalid JSON"):
        list(read_jsonl(str(p), "a"))
    t = tmp_path / "n.txt"
    t.write_bytes(b"x\x00y")
    assert next(read_txt(str(t), "n"))["text"] == "x\x00y"


@pytest.mark.slow
def test_a_50_mb_document_on_one_json_line_is_read_whole(tmp_path):
    text = "word " * (10 << 20)  # 50 MiB
    p = tmp_path / "big.jsonl"
    p.write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": "small"}) + "\n")
    docs = list(read_jsonl(str(p), "big"))
    assert [len(d["text"]) for d in docs] == [len(text), 5]


def test_empty_files_and_blank_lines(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("")
    assert list(read_jsonl(str(p), "e")) == []
    p.write_text('\n  \n{"text": "x"}\n\n')
    assert [d["id"] for d in read_jsonl(str(p), "e")] == ["e/3"]
    d = tmp_path / "txts"
    d.mkdir()
    with pytest.raises(SourceError, match="no .txt files"):
        list(read_txt(str(d), "t"))
    (d / "empty.txt").write_text("")
    assert next(read_txt(str(d), "t"))["text"] == ""


def test_empty_documents_are_removed_and_counted(tmp_path):
    p = tmp_path / "docs.jsonl"
    rows = [{"text": "x" * 40 + f" doc {i}"} for i in range(20)] + [{"text": ""}, {"text": "  \n "}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CorpusConfig(sources=[{"kind": "jsonl", "path": str(p)}], min_chars=10, val_fraction=0.1)
    out = tmp_path / "out"
    out.mkdir()
    stats = build_corpus(cfg, out)
    assert stats["train_docs"] + stats["val_docs"] == 20
    funnel = json.loads((out / "funnel.json").read_text())
    removed = {s["step"]: s["docs_removed"] for s in funnel["steps"]}
    assert removed["empty"] == 2


@pytest.mark.parametrize("row", [{"txt": "misnamed"}, {"text": None}, {}])
def test_missing_or_misnamed_text_field(tmp_path, row):
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SourceError, match=rf"{p}:2: missing text field 'text'"):
        list(read_jsonl(str(p), "m"))


def test_wrong_json_types(tmp_path):
    p = tmp_path / "w.jsonl"
    p.write_text('[1, 2]\n')
    with pytest.raises(SourceError, match=rf"{p}:1: expected a JSON object"):
        list(read_jsonl(str(p), "w"))
    p.write_text('{"text": 5}\n')
    with pytest.raises(SourceError, match=rf"{p}:1: text field 'text' must be a string"):
        list(read_jsonl(str(p), "w"))


def test_parquet_with_the_wrong_schema(tmp_path):
    p = tmp_path / "w.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), p)
    with pytest.raises(SourceError, match=rf"{p}: missing column 'text' \(available: body\)"):
        list(read_parquet(str(p), "w"))
    pq.write_table(pa.table({"text": [1, 2]}), p)
    with pytest.raises(SourceError, match=rf"{p}: row 0: text field 'text' must be a string"):
        list(read_parquet(str(p), "w"))
    pq.write_table(pa.table({"text": ["a", None]}), p)
    with pytest.raises(SourceError, match=rf"{p}: row 1: missing text field"):
        list(read_parquet(str(p), "w"))
    p.write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        list(read_parquet(str(p), "w"))


def test_unreadable_paths(tmp_path):
    with pytest.raises(SourceError, match="source path not found"):
        list(read_jsonl(str(tmp_path / "nope.jsonl"), "x"))
    with pytest.raises(SourceError, match=rf"{tmp_path}: cannot read"):
        list(read_jsonl(str(tmp_path), "x"))  # a folder where a file is expected
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        list(read_parquet(str(tmp_path), "x"))


# ---------------------------------------------------------------- bounded fuzzing of every reader

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSONISH = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([b'{"text": "a"}', b'{"text": 1}', b"[]", b"{}",
                                                                b'{"text": "\\u0000"}', b"\xff", b"null"])),
             max_size=8).map(b"\n".join),
)


def _drain(docs) -> None:
    for d in docs:
        assert isinstance(d["text"], str) and isinstance(d["id"], str)


@FUZZ
@given(data=JSONISH)
def test_fuzz_jsonl(tmp_path_factory, data: bytes):
    p = tmp_path_factory.mktemp("fz") / "f.jsonl"
    p.write_bytes(data)
    try:
        _drain(read_jsonl(str(p), "f"))
    except SourceError as exc:
        assert str(p) in str(exc)


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_txt(tmp_path_factory, data: bytes):
    p = tmp_path_factory.mktemp("fz") / "f.txt"
    p.write_bytes(data)
    try:
        _drain(read_txt(str(p), "f"))
    except SourceError as exc:
        assert str(p) in str(exc)


def _parquet_bytes(folder: Path) -> bytes:
    p = folder / "seed.parquet"
    pq.write_table(pa.table({"text": ["alpha", "beta", "gamma"] * 5, "n": list(range(15))}), p)
    return p.read_bytes()


def test_invalid_utf8_in_a_parquet_string_names_the_row(tmp_path):
    """A flipped byte inside a string value (found by the fuzz test below): a SourceError naming file and row."""
    seed = _parquet_bytes(tmp_path)
    p = tmp_path / "bad.parquet"
    p.write_bytes(seed.replace(b"gamma", b"g\x80mma", 1))  # the third row's text is no longer UTF-8
    with pytest.raises(SourceError, match=r"bad\.parquet: row 2: unreadable value"):
        _drain(read_parquet(str(p), "f"))


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_fuzz_parquet(tmp_path_factory, flips, cut):
    folder = tmp_path_factory.mktemp("fz")
    data = bytearray(_parquet_bytes(folder))
    for pos, byte in flips:
        data[pos % len(data)] = byte
    if cut is not None:
        data = data[: cut % len(data)]
    p = folder / "f.parquet"
    p.write_bytes(bytes(data))
    try:
        _drain(read_parquet(str(p), "f"))
    except SourceError as exc:
        assert str(p) in str(exc)
