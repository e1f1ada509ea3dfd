"""Task builders (kiln/eval/tasks/): item sanity, determinism, the held-out guarantee, few-shot, JSONL, templates."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from kiln.corpus.clean import split_score
from kiln.corpus.files import iter_text_batches
from kiln.eval.tasks import pools
from kiln.eval.tasks.builders import BPB_CHARS, BPB_TASKS, CHOICE_TASKS, build_task
from kiln.eval.tasks.heldout import train_doc_ids
from kiln.eval.tasks.items import TaskSet
from kiln.eval.tasks.jsonl_task import JsonlTaskError
from kiln.eval.tasks.templates import SHOT_SEPARATOR, TEMPLATES_FILE, load_templates
from kiln.recipe import load_recipe
from kiln.run import RunDir

N = 40
SHAKESPEARE_CHOICE = ["shakespeare-speaker", "shakespeare-cloze", "shakespeare-edition"]


@pytest.fixture(scope="module")
def demo():
    return load_recipe("demo", [])


def _digest(task: TaskSet) -> str:
    rows = [(t, it.id, it.context, it.choices, it.gold, it.label, it.doc_ids)
            for t, items in task.templates.items() for it in items] + list(task.docs)  # fmt: skip
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _check_items(task: TaskSet, n_choices: int, val_fraction: float, split_seed: int) -> None:
    assert task.kind == "choice" and len(task.templates) >= 3
    ids = None
    for name, items in task.templates.items():
        assert items, name
        if ids is None:
            ids = [it.id for it in items]
        assert [it.id for it in items] == ids, f"template {name} renders other questions"
        for it in items:
            assert len(it.choices) == n_choices and 0 <= it.gold < n_choices
            assert it.choices[it.gold] not in it.choices[: it.gold] + it.choices[it.gold + 1 :]
            assert it.context and it.label and it.doc_ids
    assert len(set(ids)) == len(ids)
    golds = Counter(it.gold for it in next(iter(task.templates.values())))
    assert len(golds) == n_choices, f"the gold position never varies: {golds}"
    for d in task.doc_ids():  # items only from documents the hash split holds out
        assert split_score(d, split_seed) < val_fraction, d


@pytest.mark.parametrize("name", [*SHAKESPEARE_CHOICE, "pydocs-name", "pydocs-module"])
def test_items_are_sane(demo, name):
    task = build_task(name, demo, max_items=N)
    n_choices = 2 if name == "shakespeare-edition" else 4
    _check_items(task, n_choices, demo.corpus.val_fraction, demo.corpus.split_seed)
    first = next(iter(task.templates.values()))
    assert len(first) == N
    assert task.info["n_items"] == N and task.info["candidate_docs"] >= 1
    if name == "shakespeare-edition":
        assert Counter(it.label for it in first) == {"modern": N // 2, "folio": N // 2}
        cont = task.templates["continue"]
        for it in cont:  # the two continuations differ in spelling, not just in capitals
            assert it.choices[0].lower() != it.choices[1].lower()
    if name == "shakespeare-cloze":
        for it in task.templates["word"]:
            word = it.choices[it.gold].strip()
            assert len(word) >= 4 and word.isalpha() and word not in it.context.split("\n")[-1].split()
    if name == "pydocs-name":
        for it in task.templates["plain"]:  # the documented name's last part is not in its docstring
            last = it.choices[it.gold].strip().rsplit(".", 1)[-1]
            assert f" {last}(" not in it.context and not it.context.startswith(f"{last}(")


def test_bpb_tasks(demo):
    for name in BPB_TASKS:
        task = build_task(name, demo, max_items=10)
        assert task.kind == "bpb" and 0 < len(task.docs) <= 10 and not task.templates
        assert all(0 < len(text) <= BPB_CHARS for _, text in task.docs)
        assert all(split_score(d, demo.corpus.split_seed) < demo.corpus.val_fraction for d, _ in task.docs)
        assert build_task(name, demo, max_items=10).docs == task.docs
    folio = build_task("bpb-shakespeare-folio", demo, max_items=10)
    assert all("/folio/" in d for d, _ in folio.docs)


def test_deterministic_in_process_and_across_processes(demo):
    a = build_task("shakespeare-cloze", demo, max_items=N, shots=1)
    pools._MEMO.clear()  # the second build reads the pool back from its disk cache
    b = build_task("shakespeare-cloze", demo, max_items=N, shots=1)
    assert a == b
    other_seed = build_task("shakespeare-cloze", demo, max_items=N, shots=1, seed=1)
    assert _digest(other_seed) != _digest(a)
    code = ("from kiln.recipe import load_recipe; from kiln.eval.tasks.builders import build_task; "
            "from tests.test_tasks_build import _digest; "
            f"print(_digest(build_task('shakespeare-cloze', load_recipe('demo', []), max_items={N}, shots=1)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent, env=None)  # fmt: skip
    assert out.stdout.strip() == _digest(a)


def test_few_shot_examples_come_from_other_documents(demo):
    zero = build_task("shakespeare-speaker", demo, max_items=20)
    task = build_task("shakespeare-speaker", demo, max_items=20, shots=2)
    assert task.shots == 2
    for tname, items in task.templates.items():
        for it, it0 in zip(items, zero.templates[tname], strict=True):
            assert it.id == it0.id and it.choices == it0.choices and it.gold == it0.gold
            assert len(it.doc_ids) == 3 and it.doc_ids[0] == it0.doc_ids[0]
            assert it0.doc_ids[0] not in it.doc_ids[1:]
            assert it.context.endswith(it0.context) and it.context.count("\n\n") > it0.context.count("\n\n")
    assert task.doc_ids() > zero.doc_ids()


def test_templates_are_data(demo, tmp_path):
    table = yaml.safe_load(TEMPLATES_FILE.read_text())
    table["shakespeare-cloze"]["quoted"] = {"context": "{lead}\"{before}", "choice": "{sp}{word}\""}
    path = tmp_path / "templates.yaml"
    path.write_text(yaml.safe_dump(table, sort_keys=False))
    task = build_task("shakespeare-cloze", demo, max_items=10, templates_file=path)
    assert list(task.templates) == [*(t.name for t in load_templates()["shakespeare-cloze"]), "quoted"]
    assert [it.id for it in task.templates["quoted"]] == [it.id for it in task.templates["word"]]
    assert all(c.endswith('"') for it in task.templates["quoted"] for c in it.choices)

    table["shakespeare-cloze"]["broken"] = {"context": "{excerpt}", "choice": " {word}"}
    path.write_text(yaml.safe_dump(table, sort_keys=False))
    with pytest.raises(ValueError, match=r"shakespeare-cloze\.broken.*unknown field \{excerpt\}"):
        build_task("shakespeare-cloze", demo, max_items=10, templates_file=path)
    table["shakespeare-cloze"]["broken"] = {"context": "x"}
    path.write_text(yaml.safe_dump(table, sort_keys=False))
    with pytest.raises(ValueError, match=r"shakespeare-cloze\.broken: expected the keys 'context' and 'choice'"):
        build_task("shakespeare-cloze", demo, max_items=10, templates_file=path)
    table["shakespeare-cloze"]["broken"] = {"context": "x", "choice": "{word}", "continuation": ""}
    path.write_text(yaml.safe_dump(table, sort_keys=False))
    with pytest.raises(ValueError, match=r"shakespeare-cloze\.broken: 'continuation' is empty"):
        build_task("shakespeare-cloze", demo, max_items=10, templates_file=path)


def test_partially_scored_template(demo, tmp_path):
    """A ``continuation`` template: every choice ends its own context and the one continuation is scored; few-shot
    examples carry their gold choice and continuation."""
    table = yaml.safe_load(TEMPLATES_FILE.read_text())
    table["shakespeare-cloze"] = {"word": table["shakespeare-cloze"]["word"],
                                  "partial": {"context": "{lead}{before}", "choice": "{sp}{word}",
                                              "continuation": "{rest}"}}
    path = tmp_path / "templates.yaml"
    path.write_text(yaml.safe_dump(table, sort_keys=False))
    task = build_task("shakespeare-cloze", demo, max_items=10, templates_file=path, shots=1)
    zero = build_task("shakespeare-cloze", demo, max_items=10, templates_file=path)
    longer = 0
    for word, part, q in zip(task.templates["word"], task.templates["partial"], zero.templates["word"], strict=True):
        assert word.continuation is None and part.continuation is not None and part.choices == word.choices
        assert part.requests() == [(part.context + c, part.continuation) for c in part.choices]
        assert part.norm_lengths() == [float(len(part.context + c)) for c in part.choices]
        assert word.requests() == [(word.context, c) for c in word.choices]
        tail = SHOT_SEPARATOR + q.context  # the question itself, after one solved example
        assert word.context.endswith(tail) and part.context.endswith(tail)
        shot_word, shot_part = word.context[:-len(tail)], part.context[:-len(tail)]
        assert shot_part.startswith(shot_word)  # + the example's continuation (the rest of its line)
        longer += len(shot_part) > len(shot_word)
    assert longer >= 5


def test_unknown_task_is_refused(demo):
    with pytest.raises(ValueError, match="unknown task 'shakespeare-clozet'.*jsonl:PATH"):
        build_task("shakespeare-clozet", demo)


# ----------------------------------------------------------------------------- held-out guarantee


def _shakespeare_run(tmp_path: Path, *overrides: str) -> tuple:
    from kiln.stages import run_pipeline

    recipe = load_recipe("demo", [
        "corpus.sources=[{kind: shakespeare, name: bard, editions: [modern, folio], max_docs: 120}]",
        "corpus.val_fraction=0.05", *overrides])  # fmt: skip
    run = RunDir(tmp_path / "run")
    run_pipeline(recipe, run, until="corpus")
    return recipe, run


def test_items_never_come_from_the_runs_train_split(tmp_path):
    recipe, run = _shakespeare_run(tmp_path)
    train = train_doc_ids(run)
    assert len(train) > 50 and all(i.startswith("bard/") for i in train)
    val = {i for batch in iter_text_batches(run.stage("corpus"), "val", columns=("id",)) for i in batch}
    for name in [*SHAKESPEARE_CHOICE, "bpb-shakespeare-modern", "bpb-shakespeare-folio"]:
        task = build_task(name, recipe, run, max_items=N)
        assert task.doc_ids(), name
        assert all(d.startswith("bard/") for d in task.doc_ids())  # the run's source label names the ids
        assert task.doc_ids() & train == set(), name
        assert task.info["dropped_in_train"] == 0  # the same hash rule: nothing to drop
    speaker = build_task("shakespeare-speaker", recipe, run, max_items=10_000)
    assert speaker.doc_ids() & val, "the run's own validation scenes are among the held-out documents"


def test_pool_documents_in_the_train_split_are_dropped(tmp_path):
    # split: tail puts the run's documents in train by position, hash-held-out scenes included
    recipe, run = _shakespeare_run(tmp_path, "corpus.split=tail")
    train = train_doc_ids(run)
    free = build_task("shakespeare-speaker", recipe, max_items=10_000)
    forced = free.doc_ids() & train
    assert forced, "some held-out pool scenes are in this run's train split"
    task = build_task("shakespeare-speaker", recipe, run, max_items=10_000)
    assert task.doc_ids() & train == set()
    assert task.doc_ids() == free.doc_ids() - forced
    assert task.info["dropped_in_train"] >= len(forced)
    bpb = build_task("bpb-shakespeare-modern", recipe, run, max_items=10_000)
    assert {d for d, _ in bpb.docs} & train == set() and bpb.info["dropped_in_train"] >= 1


# ----------------------------------------------------------------------------- JSONL


def _write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_task(demo, tmp_path):
    rows = [{"context": f"Q{i}:", "choices": [" yes", " no", " maybe"], "gold": i % 3, "id": f"q{i}"}
            for i in range(6)]  # fmt: skip
    path = _write(tmp_path / "mc.jsonl", [*rows[:3], "", *rows[3:]])
    task = build_task(f"jsonl:{path}", demo, max_items=5)
    assert list(task.templates) == ["given"]
    items = task.templates["given"]
    assert [it.id for it in items] == ["q0", "q1", "q2", "q3", "q4"]
    assert items[1].context == "Q1:" and items[1].choices == (" yes", " no", " maybe") and items[1].gold == 1
    assert items[1].label == "no" and task.doc_ids() == set()
    assert "not checked" in task.info["held_out"]
    shot = build_task(f"jsonl:{path}", demo, max_items=5, shots=1).templates["given"]
    assert all(it.context.endswith("\n\n" + it0.context) for it, it0 in zip(shot, items, strict=True))
    assert all(it.context.split("\n\n")[0] != it0.context for it, it0 in zip(shot, items, strict=True))


@pytest.mark.parametrize(("row", "field"), [
    ("{not json", "not JSON"),
    ({"choices": [" a", " b"], "gold": 0}, "'context' is missing"),
    ({"context": "x", "gold": 0}, "'choices' is missing"),
    ({"context": "x", "choices": [" a", " b"]}, "'gold' is missing"),
    ({"context": "x", "choices": [" a", " b"], "gold": 2}, "'gold' must be an integer in \\[0, 1\\]"),
    ({"context": "x", "choices": [" a"], "gold": 0}, "'choices' needs at least 2 choices"),
    ({"context": "x", "choices": [" a", 3], "gold": 0}, "'choices' must be a list of strings"),
    ({"context": 1, "choices": [" a", " b"], "gold": 0}, "'context' must be a string"),
    ({"context": "x", "choices": [" a", " b"], "gold": True}, "'gold' must be an integer"),
])  # fmt: skip
def test_jsonl_errors_name_file_line_and_field(demo, tmp_path, row, field):
    good = {"context": "ok", "choices": [" a", " b"], "gold": 0}
    path = _write(tmp_path / "bad.jsonl", [good, good | {"id": "two"}, row])
    with pytest.raises(JsonlTaskError, match=rf"{path}:3: .*{field}"):
        build_task(f"jsonl:{path}", demo)


def test_jsonl_repeated_id_and_missing_file(demo, tmp_path):
    row = {"context": "x", "choices": [" a", " b"], "gold": 0, "id": "same"}
    path = _write(tmp_path / "dup.jsonl", [row, row])
    with pytest.raises(JsonlTaskError, match=rf"{path}:2: field 'id' 'same' repeats line 1"):
        build_task(f"jsonl:{path}", demo)
    with pytest.raises(JsonlTaskError, match="cannot read the task file"):
        build_task(f"jsonl:{tmp_path / 'missing.jsonl'}", demo)


def test_every_choice_task_has_templates():
    table = load_templates()
    for name in CHOICE_TASKS:
        assert len(table[name]) >= 3, name


def test_pool_is_cached_on_disk(demo, monkeypatch):
    first = pools.load_pool("shakespeare", demo)
    assert pools.cache_path("shakespeare", demo.corpus).exists()
    assert pools.cache_path("shakespeare", demo.corpus, stats=True).exists()
    pools._MEMO.clear()
    monkeypatch.setattr(pools, "_read_all", lambda *a: pytest.fail("the cached pool was read again"))
    again = pools.load_pool("shakespeare", demo)
    assert again.docs == first.docs and again.stats == first.stats
    editions = Counter(d["edition"] for d in again.docs)
    assert editions["modern"] > 10 and editions["folio"] > 5  # both editions, whatever the recipe reads


def test_no_held_out_documents_is_a_clear_error():
    recipe = load_recipe("demo", ["corpus.val_fraction=0.0"])
    with pytest.raises(ValueError, match=r"task shakespeare-cloze: no questions from 0 held-out documents.*"
                                         r"val_fraction=0\.0.*raise corpus\.val_fraction"):
        build_task("shakespeare-cloze", recipe)


def test_strip_name_cuts_a_signature_wrapped_over_lines():
    """A C function's signature may wrap (socket.recv_fds); its continuation must not open the docstring."""
    from kiln.eval.tasks.builders_pydocs import strip_name

    text = ("recv_fds(sock, bufsize, maxfds[, flags]) -> (data, list of file\ndescriptors, msg_flags, address)\n\n"
            "Receive up to maxfds file descriptors; recv_fds returns them.")
    want = "Receive up to maxfds file descriptors; ____ returns them."
    assert strip_name(text, "recv_fds", "socket.recv_fds") == want
    assert strip_name("dumps(obj)\n--\n\nSerialize obj.", "dumps", "json.dumps") == "Serialize obj."
