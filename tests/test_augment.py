"""Augmentation (issue 14 item 8): EDA operations keep label-bearing tokens, follow alpha and are seeded; the
corpus-built synonym list finds a planted pair of interchangeable words; the consistency / confidence filters;
the ``augment`` corpus step; LM-based augmentation with a tiny kiln checkpoint (slow)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from kiln.corpus.augment.eda import (
    EdaConfig,
    SynonymTable,
    build_synonyms,
    eda,
    label_tokens,
    n_changes,
    norm,
    random_delete,
    random_insert,
    random_swap,
    synonym_replace,
)
from kiln.corpus.augment.filters import BowClassifier, filter_augmented
from kiln.corpus.steps.base import StepContext
from kiln.corpus.steps.registry import REGISTRY

ANIMALS = ["cat", "dog", "bird", "horse", "goat"]
PLACES = ["river", "lake", "hill", "field", "road"]
VERBS = ["runs", "sleeps", "eats", "walks", "sings"]


def planted_corpus(n_docs: int = 300, seed: int = 0) -> list[str]:
    """Sentences of several slot types; 'sofa' and 'couch' are interchangeable (same slot, same contexts), and
    'sofa' never co-occurs with 'couch' in one sentence."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sents = []
        for _ in range(8):
            kind = rng.randrange(3)
            if kind == 0:
                sents.append(f"the {rng.choice(ANIMALS)} {rng.choice(VERBS)} by the {rng.choice(PLACES)} .")
            elif kind == 1:
                sents.append(f"she sat on the {rng.choice(['sofa', 'couch'])} and read a book .")
            else:
                sents.append(f"we bought a red {rng.choice(['chair', 'table', 'lamp'])} at the market today .")
        docs.append(" ".join(sents))
    return docs


@pytest.fixture(scope="module")
def synonyms() -> SynonymTable:
    return build_synonyms(planted_corpus(), min_count=3, top_k=3, min_sim=0.3)


def test_synonym_list_finds_the_planted_interchangeable_pair(synonyms: SynonymTable) -> None:
    assert synonyms.get("sofa")[0] == "couch" and synonyms.get("couch")[0] == "sofa"
    assert synonyms.similarity["sofa"][0] > 0.9
    # neighbours are words of the same slot: animals for an animal, never a place or the sofa
    assert set(synonyms.get("cat")) <= set(ANIMALS) - {"cat"}
    assert "sofa" not in synonyms.get("cat") and "river" not in synonyms.get("cat")
    # stopwords and rare words get none; the table is deterministic
    assert synonyms.get("the") == [] and synonyms.get("unseenword") == []
    assert build_synonyms(planted_corpus(), min_count=3, top_k=3).neighbours == synonyms.neighbours


def test_label_tokens_are_the_class_indicative_words() -> None:
    rng = random.Random(1)
    texts, labels = [], []
    for i in range(60):
        lab = "pos" if i % 2 else "neg"
        own = ["great", "lovely"] if lab == "pos" else ["awful", "dull"]
        texts.append(" ".join([rng.choice(own)] + [rng.choice(ANIMALS + PLACES) for _ in range(8)]))
        labels.append(lab)
    words = label_tokens(texts, labels, top_k=2)
    assert set(words["pos"]) == {"great", "lovely"} and set(words["neg"]) == {"awful", "dull"}
    with pytest.raises(ValueError, match="2\\+ labels"):
        label_tokens(texts, ["pos"] * len(texts))


def count_protected(words: list[str], protected: set[str]) -> Counter:
    return Counter(norm(w) for w in words if norm(w) in protected)


@pytest.mark.parametrize("op", ["sr", "ri", "rs", "rd"])
def test_protected_tokens_survive_every_operation(op: str, synonyms: SynonymTable) -> None:
    """Protected words keep their count (and, for swap and replace, their positions); with nothing protected the
    same operation at the same rate does change them, so the check can fail."""
    docs = planted_corpus(40, seed=3)
    protected = {"sofa", "couch", "cat", "river"}

    def run(words, prot, rng):
        prot = frozenset(prot)
        if op == "sr":
            return synonym_replace(words, 0.5, rng, synonyms, prot)
        if op == "ri":
            return random_insert(words, 0.5, rng, synonyms, prot)
        if op == "rs":
            return random_swap(words, 0.5, rng, prot)
        return random_delete(words, 0.5, rng, prot)

    touched_without = 0
    for i, text in enumerate(docs):
        words = text.split()
        before = count_protected(words, protected)
        out = run(words, protected, np.random.default_rng(i))
        assert count_protected(out, protected) == before, (op, i)
        if op in ("sr", "rs"):  # same length: protected words stay where they were
            assert all(out[j] == w for j, w in enumerate(words) if norm(w) in protected)
        free = run(words, set(), np.random.default_rng(i))
        touched_without += count_protected(free, protected) != before or (
            op in ("sr", "rs") and any(free[j] != w for j, w in enumerate(words) if norm(w) in protected))
    assert touched_without > 20  # unprotected, the operation reaches these words in most documents


SENTENCE = "the cat runs by the river . the dog sleeps by the lake . the goat eats by the hill ."


def test_operation_counts_follow_alpha(synonyms: SynonymTable) -> None:
    words = SENTENCE.split()
    eligible_sr = [w for w in words if synonyms.get(w)]  # all have synonyms here: animals, verbs, places
    n_elig = len([w for w in words if norm(w) and norm(w) not in {"the", "by"}])
    assert len(eligible_sr) == n_elig == 9
    for alpha, want in ((0.1, 1), (0.3, 3), (0.5, 4)):
        assert n_changes(alpha, n_elig) == want
        for seed in range(5):
            rng = np.random.default_rng(seed)
            sr = synonym_replace(words, alpha, rng, synonyms)
            assert sum(a != b for a, b in zip(sr, words, strict=True)) == want
            assert len(random_insert(words, alpha, rng, synonyms)) == len(words) + want
            rs = random_swap(words, alpha, rng)  # swaps and deletions reach every unprotected word, stopwords too
            moved = sum(a != b for a, b in zip(rs, words, strict=True))
            assert Counter(rs) == Counter(words) and 0 < moved <= 2 * n_changes(alpha, len(words))
    # deletion: each word with probability alpha (16 words x 400 draws)
    for alpha in (0.1, 0.3):
        kept = [len(random_delete(words, alpha, np.random.default_rng(s))) for s in range(400)]
        assert abs(1 - np.mean(kept) / len(words) - alpha) < 0.02
    assert random_delete(["one"], 1.0, np.random.default_rng(0)) == ["one"]  # never empties a document


def test_eda_is_seeded_per_document(synonyms: SynonymTable) -> None:
    text = planted_corpus(1, seed=5)[0]
    cfg = EdaConfig(n_aug=8)
    a = eda(text, cfg, synonyms, ["sofa"], seed=0, key="doc1")
    assert a == eda(text, cfg, synonyms, ["sofa"], seed=0, key="doc1")
    assert a != eda(text, cfg, synonyms, ["sofa"], seed=1, key="doc1")
    assert a != eda(text, cfg, synonyms, ["sofa"], seed=0, key="doc2")
    assert len(a) == 8 and Counter(op for op, _ in a) == Counter({"sr": 2, "ri": 2, "rs": 2, "rd": 2})
    assert all(t != text for _, t in a)
    only_swap = eda(text, EdaConfig(alpha_sr=0, alpha_ri=0, alpha_rd=0, n_aug=3), synonyms, seed=0, key="x")
    assert [op for op, _ in only_swap] == ["rs"] * 3
    with pytest.raises(ValueError, match="alpha_rd"):
        EdaConfig(alpha_rd=1.5)


def test_eda_copies_keep_their_line_breaks(synonyms: SynonymTable) -> None:
    """Every operation works on the words and leaves the layout: a copy of a text of 8 lines (a blank line
    between two stanzas) has the same line breaks, each line keeps words, and no break is swapped or deleted."""
    lines = planted_corpus(1, seed=3)[0].split(" . ")[:8]
    text = "\n".join(lines[:4]) + "\n\n" + "\n".join(lines[4:]) + "\n"
    copies = eda(text, EdaConfig(alpha_sr=0.3, alpha_ri=0.3, alpha_rs=0.3, alpha_rd=0.3, n_aug=8), synonyms,
                 seed=0, key="verse")
    assert {op for op, _ in copies} == {"sr", "ri", "rs", "rd"}
    for op, copy in copies:
        assert copy != text.rstrip("\n"), op
        assert [len(part.split("\n")) for part in copy.split("\n\n")] == [4, 4], (op, copy)
        assert all(line.strip() for part in copy.split("\n\n") for line in part.split("\n")), (op, copy)
    # a single word per line: RD still never empties the text, the breaks stay
    assert random_delete(["a", "\n", "b"], 1.0, np.random.default_rng(0)) in (["a", "\n"], ["\n", "b"])


def labelled_docs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lab = "pos" if i % 2 else "neg"
        own = ["great", "lovely", "superb"] if lab == "pos" else ["awful", "dull", "poor"]
        body = [rng.choice(ANIMALS + PLACES + VERBS) for _ in range(12)] + [rng.choice(own) for _ in range(2)]
        rng.shuffle(body)
        docs.append({"id": f"d{i}", "text": " ".join(body), "source": "toy", "label": lab})
    return docs


def test_filters_drop_copies_whose_label_words_were_swapped_for_the_other_class() -> None:
    docs = labelled_docs(200, seed=2)
    clf = BowClassifier.fit([d["text"] for d in docs], [d["label"] for d in docs], l2=0.1)
    assert clf.accuracy([d["text"] for d in docs], [d["label"] for d in docs]) == 1.0
    flip = {"great": "awful", "lovely": "dull", "superb": "poor", "awful": "great", "dull": "lovely", "poor": "superb"}
    good = [" ".join(reversed(d["text"].split())) for d in docs[:50]]  # label words kept
    bad = [" ".join(flip.get(w, w) for w in d["text"].split()) for d in docs[:50]]  # label words flipped
    labels = [d["label"] for d in docs[:50]] * 2
    keep, p = filter_augmented(good + bad, labels, clf, "consistency")
    assert keep[:50].all() and not keep[50:].any()
    keep_c, _ = filter_augmented(good + bad, labels, clf, "confidence", threshold=0.9)
    assert keep_c.sum() <= keep.sum() and not keep_c[50:].any() and keep_c[:50].mean() > 0.8
    assert filter_augmented(good, labels[:50], clf, "none")[0].all()
    with pytest.raises(ValueError, match="not among the classifier's classes"):
        filter_augmented(good[:1], ["neutral"], clf, "consistency")


def run_step(docs: list[dict], tmp_path, **params):
    sd = REGISTRY["augment"]
    p = sd.params(**params)
    return sd.run(docs, p, StepContext(step="augment", out_dir=tmp_path, seed=0))


def test_augment_step_adds_copies_that_keep_label_words(tmp_path) -> None:
    docs = labelled_docs(60, seed=4) + [{"id": "u0", "text": "no label here at all", "source": "toy"}]
    out, rep = run_step(docs, tmp_path, label_field="label", n_aug=3, syn_min_count=3, alpha_rd=0.3, alpha_rs=0.3)
    originals = [d for d in out if "augmented_from" not in d]
    copies = [d for d in out if "augmented_from" in d]
    assert originals == docs  # nothing removed or changed, order kept
    assert len(copies) == 3 * 60 and rep.docs_out == len(out) and rep.summary["copies_kept"] == 180
    assert {c["id"] for c in copies} == {f"d{i}#aug{k}" for i in range(60) for k in range(3)}
    assert out[1]["id"] == "d0#aug0" and out[1]["augmented_from"] == "d0"  # copies follow their original
    label_words = {"great", "lovely", "superb", "awful", "dull", "poor"}
    assert label_words <= set(rep.summary["protected"])  # derived by log-odds from the labelled docs
    by_id = {d["id"]: d for d in docs}
    for c in copies:
        orig = by_id[c["augmented_from"]]
        assert c["label"] == orig["label"] and c["augment_op"] in ("sr", "ri", "rs", "rd")
        assert count_protected(c["text"].split(), label_words) == count_protected(orig["text"].split(), label_words)
    assert (tmp_path / "augment-synonyms.json").exists()
    again, _ = run_step(docs, tmp_path, label_field="label", n_aug=3, syn_min_count=3, alpha_rd=0.3, alpha_rs=0.3)
    assert again == out  # deterministic
    # the consistency filter runs, keeps most copies (label words intact) and never adds any
    filt, rep_f = run_step(docs, tmp_path, label_field="label", n_aug=3, syn_min_count=3, filter="consistency")
    assert 0.8 * 180 <= rep_f.summary["copies_kept"] <= 180


def test_augment_params_are_checked() -> None:
    params = REGISTRY["augment"].params
    with pytest.raises(ValidationError, match="needs label_field"):
        params(filter="consistency")
    with pytest.raises(ValidationError, match="needs checkpoint"):
        params(method="lm")
    with pytest.raises(ValidationError):
        params(n_aug=0)
    with pytest.raises(ValidationError, match="every EDA rate"):
        params(alpha_sr=0, alpha_ri=0, alpha_rs=0, alpha_rd=0)


@pytest.mark.slow
def test_lm_augmentation_with_a_tiny_checkpoint(tiny_trained, tmp_path) -> None:
    from kiln.corpus.augment.lm import LmAugmentConfig, lm_augment, split_for_rewrite
    from kiln.corpus.learned.refmodel import ReferenceModel

    ref = ReferenceModel.load(tiny_trained.run.stage("train"))
    texts = ["the quick brown fox jumps over the lazy dog", "one two three four five six seven eight"]
    cfg = LmAugmentConfig(mode="rewrite", n_aug=2, keep_fraction=0.25, max_new_tokens=12, seed=3)
    a = lm_augment(texts, ["a", "b"], ref.model, ref.tokenizer, cfg, protected=["lazy"])
    assert a == lm_augment(texts, ["a", "b"], ref.model, ref.tokenizer, cfg, protected=["lazy"])  # seeded
    assert a[0][0] != a[0][1]  # two copies, two samples
    assert all(c.startswith("the quick brown fox jumps over the lazy") for c in a[0])  # cut after "lazy"
    assert all(c.startswith("one two") for c in a[1])
    assert split_for_rewrite("a b c d", 0.5, frozenset()) == ("a b", "c d")
    cont = lm_augment(texts[:1], ["a"], ref.model, ref.tokenizer, LmAugmentConfig(mode="continue", seed=0))
    assert cont[0][0].startswith(texts[0]) and len(cont[0][0]) > len(texts[0])
    docs = [{"id": "x", "text": texts[0], "source": "s"}]
    out, rep = run_step(docs, tmp_path, method="lm", checkpoint=str(tiny_trained.run.stage("train")), n_aug=2,
                        max_new_tokens=8)
    assert [d["id"] for d in out] == ["x", "x#aug0", "x#aug1"] and out[1]["augment_op"] == "lm"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_step(docs, tmp_path, method="lm", checkpoint=str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_augment_step_through_the_corpus_stage(tmp_path) -> None:
    """The recipe form: the copies and their ``augmented_from`` column land in the corpus Parquet, the synonym list
    in the corpus folder, and the funnel row carries the summary."""
    import json

    import pyarrow.parquet as pq

    from kiln.corpus.files import split_files
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline
    from tests.synthetic import tiny_overrides

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": d["id"], "text": d["text"], "label": d["label"]}) + "\n"
                              for d in labelled_docs(40, seed=6)))
    steps = "corpus.steps=[{step: augment, label_field: label, n_aug: 2, syn_min_count: 3, filter: consistency}]"
    run = RunDir(tmp_path / "run")
    run_pipeline(load_recipe("demo", [*tiny_overrides(corpus), "corpus.val_fraction=0.0", steps]), run, until="corpus")
    out = run.stage("corpus")
    rows = [r for f in split_files(out, "train") for r in pq.read_table(f).to_pylist()]
    copies = [r for r in rows if r.get("augmented_from")]
    assert len(rows) - len(copies) == 40 and 60 <= len(copies) <= 80
    assert all(r["id"].startswith(r["augmented_from"] + "#aug") for r in copies)
    assert (out / "augment-synonyms.json").is_file()


def test_a_failing_document_follows_on_error(tmp_path, monkeypatch) -> None:
    import kiln.corpus.augment.steps as steps
    from kiln.corpus.steps.base import StepError

    real = steps.eda

    def flaky(text, cfg, syn, protected, seed, key):
        if key == "d3":
            raise RuntimeError("boom")
        return real(text, cfg, syn, protected, seed, key)

    monkeypatch.setattr(steps, "eda", flaky)
    docs = labelled_docs(6, seed=1)
    sd = REGISTRY["augment"]
    with pytest.raises(StepError, match="'d3'.*boom"):
        sd.run(docs, sd.params(n_aug=1), StepContext(step="augment", on_error="stop"))
    ctx = StepContext(step="augment", on_error="skip")
    out, _ = sd.run(docs, sd.params(n_aug=1), ctx)
    assert [d["id"] for d in out if "augmented_from" not in d] == [d["id"] for d in docs]  # d3 kept, no copy
    assert "d3#aug0" not in {d["id"] for d in out} and "d2#aug0" in {d["id"] for d in out}
    assert ctx.errors == {"augment": 1} and ctx.removed == []


def test_augment_labelled_adds_filtered_copies_that_keep_label_words() -> None:
    from kiln.corpus.augment.steps import augment_labelled

    docs = labelled_docs(40, seed=8)
    texts, labels = [d["text"] for d in docs], [d["label"] for d in docs]
    out_t, out_l, info = augment_labelled(texts, labels, texts, EdaConfig(n_aug=3), filter="consistency",
                                          syn_min_count=3)
    assert out_t[:40] == texts and out_l[:40] == labels and info["copies_made"] == 120
    assert len(out_t) == 40 + info["copies_kept"] and info["copies_kept"] >= 100
    assert {"great", "lovely", "superb", "awful", "dull", "poor"} <= set(info["protected"])
    assert augment_labelled(texts, labels, texts, EdaConfig(n_aug=3), filter="consistency", syn_min_count=3) == (
        out_t, out_l, info)


def test_augmented_copies_land_in_their_originals_split():
    """The split draws by the original id (kiln.corpus.mix.base_id), so no copy of a train document is validated on."""
    from kiln.corpus.clean import split_docs

    docs = [{"id": f"d{i}", "text": f"document {i}", "source": "s"} for i in range(200)]
    copies = [{**d, "id": f"{d['id']}#aug{k}", "augmented_from": d["id"]} for d in docs for k in range(2)]
    train, val, _ = split_docs(docs + copies, 0.2, 0)
    side = {d["id"]: "train" for d in train} | {d["id"]: "val" for d in val}
    assert 0 < sum(v == "val" for v in side.values()) < len(side)
    assert all(side[c["id"]] == side[c["augmented_from"]] for c in copies)
