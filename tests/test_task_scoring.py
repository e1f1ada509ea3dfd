"""Task scoring: lm-eval's request encoding, batched log-likelihoods equal one-at-a-time ones, left truncation,
acc / acc_norm / template spread / bootstrap interval / baselines, held-out bits per byte, the eval stage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kiln.eval.stage import final_checkpoint
from kiln.eval.tasks.items import Item, TaskSet
from kiln.eval.tasks.score import Scorer
from kiln.eval.tasks.suite import baselines, bootstrap_ci, score_choice, score_task, task_key
from kiln.model.load import load_model
from kiln.tokenizer.special import BOS, EOS, SPECIAL_IDS
from kiln.tokenizer.train import load_token_bytes, load_tokenizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def scorer(tiny_trained) -> Scorer:
    run = tiny_trained.run
    return Scorer(load_model(final_checkpoint(run), CPU), load_tokenizer(run.stage("tokenizer")), CPU)


def naive_ll(scorer: Scorer, ctx: list[int], cont: list[int]) -> float:
    inp = (ctx + cont)[-(scorer.max_length + 1):][:-1]
    with torch.no_grad():
        lp = torch.log_softmax(scorer.model(torch.tensor([inp])).float(), -1)[0]
    return float(sum(lp[len(inp) - len(cont) + k, t] for k, t in enumerate(cont)))


def test_request_tokens_follow_lm_eval(scorer):
    ctx, cont = scorer.request_tokens("King and ", "queen")  # trailing space moves into the continuation
    assert ctx == scorer.encode("King and")
    assert ctx + cont == scorer.encode("King and queen")
    assert ctx[0] == SPECIAL_IDS[BOS] and cont[0] != SPECIAL_IDS[BOS]
    ctx, cont = scorer.request_tokens("", " queen")  # empty context: the BOS prefix token
    assert ctx == [SPECIAL_IDS[BOS]] and cont == scorer.encode(" queen", special=False)
    ids = scorer.encode(BOS + " x")  # a text starting with <|bos|> gets no second one (lm-eval's has_bos_prefix)
    assert ids[0] == SPECIAL_IDS[BOS] and ids[1] != SPECIAL_IDS[BOS]


def test_batched_loglikelihoods_equal_single(scorer):
    long_ctx = " ".join(["king queen lord lady sword crown"] * 30)  # longer than max_seq_len: left-truncated
    reqs = [("King and", " queen"), ("Sleep", " dream wake"), ("", " fair"), (long_ctx, " night day"),
            ("A\n", "B"), ("lord", " lady")]
    scorer.batch_tokens = 100  # several forward passes of different widths
    got = scorer.loglikelihoods(reqs)
    scorer.batch_tokens = 8192
    assert len(scorer.request_tokens(long_ctx, " night day")[0]) > scorer.max_length
    for (c, x), ll in zip(reqs, got, strict=True):
        assert ll == pytest.approx(naive_ll(scorer, *scorer.request_tokens(c, x)), abs=1e-4)
        assert ll < 0


class FixedScorer:
    """Stands in for a model: log-likelihoods given per (context, choice)."""

    def __init__(self, table: dict[tuple[str, str], float]):
        self.table = table

    def loglikelihoods(self, reqs):
        return [self.table[r] for r in reqs]


def test_score_choice_metrics():
    # 4 questions x 2 templates. Choice lengths differ so acc_norm (per character) disagrees with acc.
    items_a, items_b, table = [], [], {}
    golds = [0, 1, 0, 1]
    for i, g in enumerate(golds):
        choices = (" a", " bbbbbbbb")
        items_a.append(Item(f"q{i}", f"A{i}", choices, g, ["x", "y"][g] if i < 3 else "x", (f"d{i}",)))
        items_b.append(Item(f"q{i}", f"B{i}", choices, g, ["x", "y"][g] if i < 3 else "x", (f"d{i}",)))
        table[(f"A{i}", " a")], table[(f"A{i}", " bbbbbbbb")] = -1.0, -3.0  # acc picks a; norm picks b
        table[(f"B{i}", " a")], table[(f"B{i}", " bbbbbbbb")] = -5.0, -4.0  # both pick b
    ts = TaskSet("toy", templates={"A": items_a, "B": items_b})
    res, rows = score_choice(FixedScorer(table), ts)
    assert res["templates"] == {"A": {"acc": 0.5, "acc_norm": 0.5}, "B": {"acc": 0.5, "acc_norm": 0.5}}
    # template A: acc right on q0, q2; acc_norm (-1/2 vs -3/9) picks b: right on q1, q3
    assert [r["pred"] for r in rows[:4]] == [0, 0, 0, 0] and [r["pred_norm"] for r in rows[:4]] == [1, 1, 1, 1]
    assert res["acc"] == 0.5 and res["acc_template_std"] == 0.0
    assert res["chance"] == 0.5 and res["majority"] == 0.75  # labels x, y, x, x
    lo, hi = res["acc_ci"]
    assert 0.0 <= lo <= res["acc"] <= hi <= 1.0
    assert score_choice(FixedScorer(table), ts)[0] == res  # deterministic (fixed bootstrap seed)
    assert rows[0] == {"id": "q0", "template": "A", "lls": [-1.0, -3.0], "pred": 0, "pred_norm": 1, "gold": 0}


def test_partially_scored_items_compare_the_shared_continuation():
    """With a continuation, the request of choice c is (context + c, continuation), acc_norm divides by the length
    of context + c (lm-eval's multiple-input form)."""
    choices = (" a", " bbbbbbbbbbbb")
    table = {("Q a", " rest"): -2.0, ("Q bbbbbbbbbbbb", " rest"): -2.5}  # acc: a; per character: b (-2.5/14)
    ts = TaskSet("toy", templates={"T": [Item("q0", "Q", choices, 1, "b", ("d0",), continuation=" rest")]})
    res, rows = score_choice(FixedScorer(table), ts)
    assert rows[0]["lls"] == [-2.0, -2.5] and rows[0]["pred"] == 0 and rows[0]["pred_norm"] == 1
    assert res["acc"] == 0.0 and res["acc_norm"] == 1.0


def test_template_spread_and_bootstrap():
    per_item = np.array([1.0] * 30 + [0.0] * 70)
    lo, hi = bootstrap_ci(per_item, seed=0)
    assert lo < 0.3 < hi and hi - lo < 0.25 and (lo, hi) != (0.3, 0.3)
    assert bootstrap_ci(per_item, seed=0) == [lo, hi]
    items = [Item(f"q{i}", "c", (" a", " b", " c"), 0, "x", ()) for i in range(3)]
    table_t = {("c", " a"): 0.0, ("c", " b"): -1.0, ("c", " c"): -2.0}
    ts = TaskSet("t", templates={"good": items, "bad": [Item(i.id, "d", i.choices, 0, "x", ()) for i in items]})
    table_t.update({("d", " a"): -9.0, ("d", " b"): -1.0, ("d", " c"): -2.0})
    res, _ = score_choice(FixedScorer(table_t), ts)
    assert res["templates"]["good"]["acc"] == 1.0 and res["templates"]["bad"]["acc"] == 0.0
    assert res["acc"] == 0.5 and res["acc_template_std"] == 0.5
    assert res["chance"] == pytest.approx(1 / 3)
    assert baselines(items)["majority"] == 1.0


def test_misaligned_templates_refused():
    a = [Item("q0", "c", (" a", " b"), 0, "x", ())]
    b = [Item("q1", "c", (" a", " b"), 0, "x", ())]
    with pytest.raises(ValueError, match="template 'b' renders other questions"):
        score_choice(FixedScorer({}), TaskSet("t", templates={"a": a, "b": b}))


def test_bpb_task_windows_every_token_once(scorer, tiny_trained):
    token_bytes = load_token_bytes(tiny_trained.run.stage("tokenizer"))
    short = "King and queen. Sleep, dream."
    long = " ".join(["The king and the queen sleep and dream of crowns."] * 20)
    ids = scorer.encode(short) + [SPECIAL_IDS[EOS]]
    want = -sum(naive_ll(scorer, ids[:k], [ids[k]]) for k in range(1, len(ids))) / math.log(2)
    res = scorer.bpb([short], token_bytes)
    assert res["n_tokens"] == len(ids) - 1 and res["n_bytes"] == len(short.encode())
    assert res["bpb"] == pytest.approx(want / len(short.encode()), rel=1e-4)
    res2 = score_task(scorer, TaskSet("bpb-x", kind="bpb", docs=[("d0", short), ("d1", long)]), token_bytes)
    n_long = len(scorer.encode(long)) + 1
    assert n_long > scorer.max_length  # several windows
    assert res2["kind"] == "bpb" and res2["n_docs"] == 2 and res2["n_bytes"] == len(short) + len(long)
    assert 0 < res2["bpb"] < 20


def test_task_key():
    assert task_key("shakespeare-cloze") == "shakespeare-cloze"
    assert task_key("jsonl:/data/my tasks/qa.jsonl") == "jsonl-qa"


def test_recipe_validates_task_and_probe_names():
    from kiln.recipe import RecipeError, load_recipe

    r = load_recipe("demo", ["eval.tasks=[shakespeare-cloze, bpb-pydocs, 'jsonl:my.jsonl']", "eval.probes=[genre]"])
    assert r.eval.tasks == ["shakespeare-cloze", "bpb-pydocs", "jsonl:my.jsonl"] and r.eval.task_items == 200
    with pytest.raises(RecipeError, match=r"eval.tasks.*unknown task 'shakespeare-clozee'"):
        load_recipe("demo", ["eval.tasks=[shakespeare-clozee]"])
    with pytest.raises(RecipeError, match=r"eval.probes.*unknown probe task 'genres'"):
        load_recipe("demo", ["eval.probes=[genres]"])


def test_eval_stage_scores_tasks_and_cli_exports(tmp_path, monkeypatch):
    """eval.tasks in the eval stage -> metrics.json["tasks"] + per-item files; `kiln eval --tasks` with
    --export-lm-eval on an existing run; the eval stage reads the corpus and tokenizer (declared inputs)."""
    import json

    from typer.testing import CliRunner

    from kiln.cli import app
    from kiln.eval.tasks.heldout import train_doc_ids
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stage_graph import stage_inputs_of
    from kiln.stages import run_pipeline
    from tests.synthetic import tiny_overrides, write_jsonl_corpus

    corpus = write_jsonl_corpus(tmp_path / "docs.jsonl", n_docs=40)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"context": f"King and{' the' * i}", "choices": [" queen", " sword"],
                                      "gold": i % 2}) + "\n" for i in range(6)))
    over = [*tiny_overrides(corpus, steps=2), "model.n_layer=1", "eval.task_items=8",
            f"eval.tasks=[pydocs-name, bpb-pydocs, 'jsonl:{qa}']"]
    recipe = load_recipe("demo", over)
    assert set(stage_inputs_of("eval", recipe)) == {"train", "tokens", "corpus", "tokenizer"}
    assert set(stage_inputs_of("eval", load_recipe("demo", over[:-1]))) == {"train", "tokens"}
    run = RunDir(tmp_path / "run")
    run_pipeline(recipe, run, until="eval")
    m = json.loads((run.stage("eval") / "metrics.json").read_text())
    assert set(m["tasks"]) == {"pydocs-name", "bpb-pydocs", "jsonl-qa"}
    name, qa_res = m["tasks"]["pydocs-name"], m["tasks"]["jsonl-qa"]
    assert name["kind"] == "choice" and name["n_items"] == 8 and name["chance"] == 0.25
    assert set(name["templates"]) == {"plain", "repl", "sentence"} and 0 <= name["acc"] <= 1
    assert qa_res["n_items"] == 6 and qa_res["majority"] == 0.5 and qa_res["chance"] == 0.5
    assert m["tasks"]["bpb-pydocs"]["kind"] == "bpb" and m["tasks"]["bpb-pydocs"]["bpb"] > 0
    rows = (run.stage("eval") / "tasks" / "pydocs-name.jsonl").read_text().splitlines()
    assert len(rows) == 8 * 3 and set(json.loads(rows[0])) == {"id", "template", "lls", "pred", "pred_norm", "gold"}
    used = json.loads((run.stage("eval") / "tasks" / "pydocs-name.task.json").read_text())
    assert used["task"] == "pydocs-name" and used["doc_ids"] and all(d.startswith("pydocs/") for d in used["doc_ids"])
    assert not set(used["doc_ids"]) & train_doc_ids(run)  # the task says which documents it used: none trained on

    from kiln.report.build import build_report

    build_report(run.root, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    section = md[md.index("Downstream tasks"):]
    assert "pydocs-name" in section and "bpb-pydocs" in section and "jsonl-qa" in section and "majority" in section

    res = CliRunner().invoke(app, ["eval", "--run-dir", str(run.root), "--tasks", f"jsonl:{qa}", "--items", "4",
                                   "--export-lm-eval", str(tmp_path / "lm")])
    assert res.exit_code == 0, res.output
    assert "task jsonl-qa: acc" in res.output and "lm_eval --model hf" in res.output
    assert "--tasks kiln_jsonl-qa" in res.output and (tmp_path / "lm" / "jsonl-qa" / "_group.yaml").is_file()
    assert len((tmp_path / "lm" / "jsonl-qa" / "given.jsonl").read_text().splitlines()) == 4
    assert json.loads((run.stage("eval") / "metrics.json").read_text())["tasks"]["jsonl-qa"]["n_items"] == 4


def test_encoder_run_is_not_scored(tmp_path):
    from kiln.eval.tasks.suite import run_tasks
    from kiln.recipe import load_recipe

    recipe = load_recipe("demo", ["model.attention=bidirectional", "train.objective=mlm"])

    class Enc:
        class config:  # noqa: N801 - stands in for a model's config
            attention = "bidirectional"

    res = run_tasks(recipe, None, Enc(), CPU, ["shakespeare-cloze", "bpb-pydocs"])
    assert res == {k: {"kind": "skipped", "skipped": res[k]["skipped"]} for k in ("shakespeare-cloze", "bpb-pydocs")}
    assert res["shakespeare-cloze"]["skipped"].startswith("not scored: encoder")
