"""ProX (kiln.corpus.prox): the executor's rules (the spec's (d) cases), the rule generator, logging and replay."""

from __future__ import annotations

import json

import pytest

from kiln.corpus.prox.executor import DROP_DOC, DROP_RATIO, DROP_SHORT, ERRORS, REFINED, execute, merge_ranges
from kiln.corpus.prox.generator import Program, RuleBasedGenerator, chunk_lines, render_chunk
from kiln.corpus.prox.program import Normalize, RemoveLines, parse_program, render_program
from kiln.corpus.prox.steps import ProxParams, replay, run
from kiln.corpus.steps.base import StepContext

# 8 lines of 5 words each: line i is "line{i} alpha beta gamma delta"
DOC = "\n".join(f"line{i} alpha beta gamma delta" for i in range(8))


def lines_of(text: str) -> list[str]:
    return [ln.split()[0] for ln in text.split("\n")]


# ----------------------------------------------------------------------------- the spec's (d) cases


def test_remove_a_range():
    res = execute(DOC, "keep_doc()", ["remove_lines(line_start=2, line_end=4)"])
    assert res.outcome == REFINED and lines_of(res.text) == ["line0", "line1", "line5", "line6", "line7"]
    assert res.removed_ranges == [(2, 4)] and res.errors == []


def test_normalize_then_remove():
    # normalize runs first over the whole text (even when written after the removal), then lines go
    prog = 'remove_lines(line_start=0, line_end=0)\nnormalize(source_str="alpha", target_str="ALPHA")'
    res = execute(DOC, "keep_doc()", [prog])
    assert lines_of(res.text) == [f"line{i}" for i in range(1, 8)]
    assert "alpha" not in res.text and res.text.count("ALPHA") == 7
    deleted = execute(DOC, "keep_doc()", ['normalize(source_str=" gamma")'])  # one argument = delete
    assert "gamma" not in deleted.text and deleted.text.count("delta") == 8
    # line indices refer to the normalised text: joining lines 0 and 1 shifts what index 1 means
    joined = execute(DOC, "keep_doc()", ['normalize(source_str="delta\\nline1", target_str="delta line1")',
                                         "remove_lines(line_start=1, line_end=1)"])
    assert lines_of(joined.text) == ["line0", "line3", "line4", "line5", "line6", "line7"]


def test_drop_doc_gives_empty():
    for doc_program in ("drop_doc()", "  drop_doc()  ", "I would drop this one"):
        res = execute(DOC, doc_program, ["skip_chunk()"])
        assert res.text == "" and res.outcome == DROP_DOC and res.dropped


def test_two_malformed_ops_give_the_original():
    prog = "remove_lines(line_start=1, line_end=2)\nremove_lines(line_start=x)\nnormalize(target_str='y')"
    res = execute(DOC, "keep_doc()", [prog])
    assert res.text == DOC and res.outcome == ERRORS and len(res.errors) == 2
    one = execute(DOC, "keep_doc()", ["remove_lines(line_start=1, line_end=2)\nfrobnicate()"])
    assert one.outcome == REFINED and len(one.errors) == 1  # one error: the program still runs
    # out-of-range ranges are errors too: past the end is ignored, overhanging is clipped
    far, over = "remove_lines(line_start=20, line_end=30)", "remove_lines(line_start=6, line_end=9)"
    oob = execute(DOC, "keep_doc()", [far + "\n" + over])
    assert oob.outcome == ERRORS and oob.text == DOC and len(oob.errors) == 2
    clip = execute(DOC, "keep_doc()", ["remove_lines(line_start=6, line_end=9)"])
    assert clip.removed_ranges == [(6, 7)] and lines_of(clip.text) == [f"line{i}" for i in range(6)]


def test_ten_or_fewer_remaining_words_give_empty():
    res = execute(DOC, "keep_doc()", ["remove_lines(line_start=2, line_end=7)"])  # 10 words remain
    assert res.text == "" and res.outcome == DROP_SHORT
    kept = execute(DOC, "keep_doc()", ["remove_lines(line_start=3, line_end=7)"])  # 15 words remain
    assert kept.outcome == REFINED and len(kept.text.split()) == 15


def test_overlapping_ranges_are_merged():
    prog = "\n".join(["remove_lines(line_start=1, line_end=3)", "remove_lines(line_start=2, line_end=4)",
                      "remove_lines(line_start=5, line_end=5)", "remove_lines(0, 0)"])
    res = execute(DOC, "keep_doc()", [prog.replace("remove_lines(0, 0)", "skip_chunk()")])
    assert res.removed_ranges == [(1, 5)] and lines_of(res.text) == ["line0", "line6", "line7"]
    assert merge_ranges([(5, 7), (0, 1), (2, 3), (9, 9), (6, 8)]) == [(0, 3), (5, 9)]


def test_few_words_remaining_ratio_drops():
    long_doc = "\n".join(["intro words here and there more"] + [" ".join(["w"] * 40)] * 10)
    res = execute(long_doc, "keep_doc()", ["remove_lines(line_start=1, line_end=10)"])  # 6/406 words remain
    assert res.outcome in (DROP_RATIO, DROP_SHORT) and res.text == ""
    big = "\n".join([" ".join(["w"] * 12)] + [" ".join(["x"] * 300)])
    ratio = execute(big, "keep_doc()", ["remove_lines(line_start=1, line_end=1)"])  # 12/312 <= 5%
    assert ratio.outcome == DROP_RATIO
    assert execute(DOC, "keep_doc()", ["remove_lines(all=True)"]).text == ""


def test_parse_render_round_trip_and_chunks():
    ops = [RemoveLines(3, 9), Normalize('say "hi"\n', "x"), RemoveLines(all=True)]
    assert parse_program(render_program(ops)).ops == ops
    parsed = parse_program("```python\nremove_lines(2, 3)\n\nkeep_doc(1)\nnormalize()\n```")
    assert parsed.ops == [RemoveLines(2, 3)] and len(parsed.errors) == 2
    text = "\n".join(f"l{i}" for i in range(10))
    assert chunk_lines(text, max_lines=4) == [(0, 3), (4, 7), (8, 9)]
    assert render_chunk(text, 8, 9) == "[008]l8\n[009]l9"


# ----------------------------------------------------------------------------- generator, step, log, replay

BODY = "\n".join(f"HAMLET. To be or not to be, that is the question number {i}," for i in range(30))
GUTENBERG = ("The Project Gutenberg eBook of Hamlet\nThis eBook is for the use of anyone anywhere\n"
             "*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\n" + BODY + "\n\n12\n"
             "Whether 'tis nobler in the mind to suffer      60\n"
             "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nSection 1. General Terms of Use\nlicence text")


def test_rule_generator_strips_gutenberg_boilerplate_and_numbers():
    prog = RuleBasedGenerator(max_chunk_lines=10).generate({"id": "h", "text": GUTENBERG})
    assert prog.doc == "keep_doc()" and len(prog.chunks) == 4
    assert prog.chunks[0].startswith("remove_lines(line_start=0, line_end=2)")
    res = execute(GUTENBERG, prog.doc, list(prog.chunks))
    assert res.text == BODY + "\n\nWhether 'tis nobler in the mind to suffer"
    assert RuleBasedGenerator().generate({"id": "x", "text": "12\n13\n14"}).doc == "drop_doc()"
    stage = RuleBasedGenerator(rules=("stage_directions",)).generate(
        {"id": "s", "text": "Enter HAMLET.\n" + BODY + "\n[Exit.]\nExeunt."})
    out = execute("Enter HAMLET.\n" + BODY + "\n[Exit.]\nExeunt.", stage.doc, list(stage.chunks))
    assert out.text == BODY
    with pytest.raises(ValueError, match="unknown ProX rules"):
        RuleBasedGenerator(rules=("nope",))


def test_step_logs_programs_and_replay_is_identical(tmp_path):
    docs = [{"id": "a", "source": "s", "text": GUTENBERG}, {"id": "b", "source": "s", "text": BODY},
            {"id": "c", "source": "s", "text": "1\n2\n3"}, {"id": "d", "source": "s", "text": "tiny doc"}]
    ctx = StepContext(step="prox")
    ctx.out_dir = tmp_path
    params = ProxParams(max_chunk_lines=16)
    out, rep = run(docs, params, ctx)
    assert [d["id"] for d in out] == ["a", "b"] and out[1] is docs[1]
    assert rep.docs_in == 4 and rep.docs_out == 2 and rep.docs_removed == 2 and rep.docs_changed == 1
    rows = [json.loads(line) for line in (tmp_path / "prox_programs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[2]["doc_program"] == "drop_doc()" and rows[2]["outcome"] == "drop_doc"
    assert rows[3]["outcome"] == DROP_SHORT
    again, _ = replay(docs, tmp_path / "prox_programs.jsonl", params)
    assert again == out
    # a hand-edited program replays too: programs are data, not tied to the generator
    rows[1]["chunk_programs"] = ["remove_lines(line_start=0, line_end=0)"]
    (tmp_path / "edited.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    edited, _ = replay(docs, tmp_path / "edited.jsonl", params)
    assert edited[1]["text"] == BODY.split("\n", 1)[1]
    assert Program.from_json(rows[0]).to_json()["doc_program"] == "keep_doc()"
    with pytest.raises(ValueError):
        ProxParams(rules=["nope"])
