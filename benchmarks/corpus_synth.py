"""A synthetic web-like corpus with planted duplicates and junk, for the corpus benchmark and its fast test.

Good documents are paragraphs of sentences: English function words (so the Gopher stop-word rule of
Rae et al. 2021 sees real English glue) mixed with Zipf-distributed pseudo-words from a syllable
grammar (a large vocabulary, so unrelated documents share almost no 5-word shingles). Planted:

- exact duplicates: verbatim copies of a good document;
- near duplicates: a copy with ~5% of its words replaced (Broder 1997's resemblance ~0.6 at 5-shingles);
- garbled documents of six kinds (:mod:`kiln.corpus.junk`): character soup, repeated lines, symbol spam,
  digit tables, a looping phrase, and word salad without any function word.

Every document carries ``group`` (the id of the good document it copies, or its own id) and ``kind``
(``good | exact | near | garbled:<type>``) so precision/recall can be scored against the plant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import accumulate

from kiln.corpus import junk
from kiln.corpus.junk import GARBLED_KINDS

_FUNCTION = ("the of and to in a is that for it as with was on be by at this have from or an they which "
            "one you were all we her she there would their will when who him been has more if no out so "
            "what up its about into than them can only other time some could these two may first then do "
            "any like my now over such our man me even most made after also did many before must through "
            "back years where much your way well down should because each just those people how too")
FUNCTION = _FUNCTION.split()
_ONSETS = ("b c d f g h j k l m n p r s t v w z br cr dr fr gr pr tr bl cl fl gl pl sl st sp sk ch sh th "
          "wh qu")
ONSETS = _ONSETS.split()
_VOWELS = "a e i o u ai ea ee oo ou ie oa"
VOWELS = _VOWELS.split()
CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "rt", "ck", "ng", "th", "sh")


def _pseudo_words(n: int, rng: random.Random) -> list[str]:
    seen: set[str] = set(FUNCTION)
    out: list[str] = []
    while len(out) < n:
        syllables = rng.choice((1, 2, 2, 3))
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
        if 3 <= len(w) <= 12 and w not in seen:
            seen.add(w)
            out.append(w)
    return out


@dataclass
class Vocab:
    content: list[str]
    cum: list[float]  # cumulative Zipf-Mandelbrot weights of ``content``
    fcum: list[float]  # cumulative Zipf weights of FUNCTION (listed by frequency)

    @classmethod
    def build(cls, n: int = 20_000, seed: int = 0) -> Vocab:
        words = _pseudo_words(n, random.Random(seed))
        return cls(words, list(accumulate(1.0 / (r + 10) for r in range(n))),
                   list(accumulate(1.0 / (r + 1) for r in range(len(FUNCTION)))))


def sentence(rng: random.Random, vocab: Vocab) -> str:
    n = rng.randint(7, 22)
    picks = rng.choices(vocab.content, cum_weights=vocab.cum, k=n)
    glue = rng.choices(FUNCTION, cum_weights=vocab.fcum, k=n)
    ws = [glue[i] if rng.random() < 0.45 else picks[i] for i in range(n)]
    if n > 10 and rng.random() < 0.4:
        ws[rng.randrange(3, n - 3)] += ","
    return " ".join(ws).capitalize() + rng.choice("....!?")


def good_doc(rng: random.Random, vocab: Vocab) -> str:
    paras = [" ".join(sentence(rng, vocab) for _ in range(rng.randint(2, 6))) for _ in range(rng.randint(2, 5))]
    return "\n\n".join(paras)


def near_copy(text: str, rng: random.Random, vocab: Vocab, rate: float = 0.05) -> str:
    """``text`` with ``rate`` of its (whitespace) words replaced by other vocabulary words."""
    ws = text.split(" ")
    for k in rng.sample(range(len(ws)), max(1, round(rate * len(ws)))):
        ws[k] = rng.choice(vocab.content) + ws[k][-1:] * (not ws[k][-1:].isalnum())
    return " ".join(ws)


def garbled(kind: str, rng: random.Random, vocab: Vocab) -> str:
    """A garbled document of ``kind`` (:mod:`kiln.corpus.junk`) over this corpus's vocabulary."""
    return junk.garbled(kind, rng, vocab.content, vocab.cum, line=lambda r: sentence(r, vocab),
                        loop_words=vocab.content[:200] + list(FUNCTION))


def make_corpus(n_docs: int = 10_000, seed: int = 0, exact_frac: float = 0.05, near_frac: float = 0.10,
                garbled_frac: float = 0.10) -> list[dict]:
    """``n_docs`` shuffled documents: good, exact copies, ~5%-edited copies and garbled junk, labelled."""
    rng = random.Random(seed)
    vocab = Vocab.build(seed=seed)
    n_exact, n_near, n_junk = round(n_docs * exact_frac), round(n_docs * near_frac), round(n_docs * garbled_frac)
    n_good = n_docs - n_exact - n_near - n_junk
    goods = [{"id": f"g{i}", "text": good_doc(rng, vocab), "kind": "good"} for i in range(n_good)]
    for d in goods:
        d["group"] = d["id"]
    docs = list(goods)
    for j, src in enumerate(rng.sample(goods, n_exact)):
        docs.append({"id": f"x{j}", "text": src["text"], "kind": "exact", "group": src["id"]})
    for j, src in enumerate(rng.sample(goods, n_near)):
        docs.append({"id": f"n{j}", "text": near_copy(src["text"], rng, vocab), "kind": "near", "group": src["id"]})
    for j in range(n_junk):
        kind = GARBLED_KINDS[j % len(GARBLED_KINDS)]
        docs.append({"id": f"j{j}", "text": garbled(kind, rng, vocab), "kind": f"garbled:{kind}", "group": f"j{j}"})
    rng.shuffle(docs)
    return [{**d, "source": "synthetic"} for d in docs]


def score(docs: list[dict], kept_ids: set[str], dedup_removed: set[str]) -> dict[str, float]:
    """Dedup precision/recall/FPR against the planted groups; garbled removed and good kept fractions.

    A planted group is a good document and its copies; dedup is right to remove all but one member of a
    group. Recall = removed copies / (members - 1) over groups whose members all reached dedup is not
    knowable from ids alone, so it is taken over every group: a filter removing a member lowers recall.
    Near recall: a ~5%-edited copy counts as caught if it or its original was removed by dedup.
    FPR = singletons (good documents without copies) removed by dedup / singletons.
    """
    by_group: dict[str, list[dict]] = {}
    for d in docs:
        if not d["kind"].startswith("garbled"):
            by_group.setdefault(d["group"], []).append(d)
    planted = {d["id"] for g in by_group.values() if len(g) > 1 for d in g}
    singles = {g[0]["id"] for g in by_group.values() if len(g) == 1}
    copies = sum(len(g) - 1 for g in by_group.values())
    near = [(d["id"], d["group"]) for d in docs if d["kind"] == "near"]
    tp = len(dedup_removed & planted)
    junk = [d["id"] for d in docs if d["kind"].startswith("garbled")]
    return {
        "dedup_precision": tp / max(len(dedup_removed), 1),
        "dedup_recall": tp / max(copies, 1),
        "near_recall": sum(i in dedup_removed or g in dedup_removed for i, g in near) / max(len(near), 1),
        "dedup_fpr": len(dedup_removed & singles) / max(len(singles), 1),
        "garbled_removed": sum(i not in kept_ids for i in junk) / max(len(junk), 1),
        "good_kept": sum(any(d["id"] in kept_ids for d in g) for g in by_group.values()) / max(len(by_group), 1),
    }
