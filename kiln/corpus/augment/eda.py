"""EDA: the four simple text augmentations, with a synonym list kiln builds from the corpus itself.

Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text Classification Tasks"
(arXiv 1901.11196): synonym replacement (SR), random insertion (RI), random swap (RS) and random deletion (RD).
The "simple augmentation" family of the surveys (Feng et al. 2021, "A Survey of Data Augmentation Approaches for
NLP", arXiv 2105.03075; Chai et al. 2025, "Text Data Augmentation for Large Language Models: A Comprehensive
Survey of Methods, Challenges, and Opportunities", arXiv 2501.18845).

With ``n`` words and rate ``alpha`` an operation changes ``max(1, round(alpha * n_eligible))`` words (EDA's
``alpha * n``): SR replaces that many distinct eligible words by one of their synonyms, RI inserts that many
synonyms of random eligible words at random positions, RS swaps that many pairs of eligible words, RD deletes
each eligible word with probability ``alpha`` (it never empties a document). Every augmented copy applies one
operation; copy ``k`` uses the ``k``-th operation of a seeded cycle over the enabled ones (EDA splits its
``num_aug`` copies evenly over the four).

**Protected tokens.** The words that carry the label (given as a list, or derived by :func:`label_tokens`, a
z-scored log-odds ratio with a Dirichlet prior, Monroe et al. 2008, "Fightin' Words") are never replaced,
deleted or moved, and never inserted: an operation only touches *eligible* words (not protected, not a
stopword for SR/RI). So every protected token of the original keeps its count, and (RI/SR) no new one appears.

**The synonym list** (:func:`build_synonyms`), instead of WordNet: distributional neighbours. Words (lower-cased,
stripped of surrounding punctuation) seen at least ``min_count`` times, the ``max_vocab`` most frequent, get a
context vector of co-occurrence counts with the ``n_context`` most frequent words within ``window`` positions,
weighted by positive PMI; two words are synonyms when their vectors' cosine is among each one's ``top_k`` and at
least ``min_sim``. Limits: distributional similarity finds words used in the same *slots*, which includes
antonyms and co-hyponyms ("good"/"bad", "monday"/"friday") as well as true synonyms; rare words (below
``min_count``) get none; one sense per word form. It is a word list for augmentation noise, not a thesaurus.

Text is handled as whitespace-separated words, with every run of line breaks kept as a token of its own that no
operation touches (:func:`layout_words`, :func:`join_words`): an augmented copy keeps its lines (a verse line,
a docstring's paragraphs); within a line, words are joined by single spaces. Pure numpy; import-cheap.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

OPS = ("sr", "ri", "rs", "rd")

# Function words EDA leaves alone for synonym replacement / insertion (a short English list).
_STOP_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers herself him
himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves
"""
STOPWORDS = frozenset(_STOP_TEXT.split())

_STRIP = re.compile(r"^\W+|\W+$")


def norm(word: str) -> str:
    """The key of a word for synonyms and protection: lower-cased, surrounding punctuation stripped."""
    return _STRIP.sub("", word.lower())


def words_of(text: str) -> list[str]:
    return text.split()


_LAYOUT = re.compile(r"\s*\n\s*|\s+")


def layout_words(text: str) -> list[str]:
    """The words of ``text`` in order, each run of whitespace holding a line break kept as one token: the run's
    newlines (``"\\n"``, ``"\\n\\n"``); such tokens are never eligible for an operation."""
    out: list[str] = []
    pos = 0
    for m in _LAYOUT.finditer(text):
        if m.start() > pos:
            out.append(text[pos : m.start()])
        if "\n" in m.group() and out:
            out.append("\n" * m.group().count("\n"))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    while out and is_break(out[-1]):
        out.pop()
    return out


def is_break(token: str) -> bool:
    return token.startswith("\n")


def join_words(words: Sequence[str]) -> str:
    """Inverse of :func:`layout_words` up to spacing: words joined by one space, line breaks kept."""
    out: list[str] = []
    for i, w in enumerate(words):
        if i and not is_break(w) and not is_break(words[i - 1]):
            out.append(" ")
        out.append(w)
    return "".join(out).strip("\n")


# ----------------------------------------------------------------------------- the synonym list


@dataclass
class SynonymTable:
    """word -> its distributional neighbours (best first), with their cosine similarities."""

    neighbours: dict[str, list[str]] = field(default_factory=dict)
    similarity: dict[str, list[float]] = field(default_factory=dict)

    def get(self, word: str) -> list[str]:
        return self.neighbours.get(norm(word), [])

    def __len__(self) -> int:
        return len(self.neighbours)

    def to_json(self) -> dict:
        return {w: [[n, round(s, 4)] for n, s in zip(ns, self.similarity[w], strict=True)]
                for w, ns in self.neighbours.items()}


def build_synonyms(texts: Iterable[str], *, window: int = 2, min_count: int = 5, max_vocab: int = 5000,
                   n_context: int = 2000, top_k: int = 5, min_sim: float = 0.3, exclude: Iterable[str] = (),
                   block: int = 1024) -> SynonymTable:
    """Distributional synonyms of the corpus (see the module docstring). Deterministic (no randomness)."""
    if window < 1 or min_count < 1 or max_vocab < 2 or n_context < 1 or top_k < 1:
        raise ValueError("build_synonyms: window, min_count, top_k >= 1, max_vocab >= 2, n_context >= 1")
    docs = [[norm(w) for w in words_of(t)] for t in texts]
    docs = [[w for w in d if w] for d in docs]
    counts = Counter(w for d in docs for w in d)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # ties by word: deterministic
    vocab = [w for w, c in ranked if c >= min_count][:max_vocab]
    if len(vocab) < 2:
        return SynonymTable()
    index = {w: i for i, w in enumerate(vocab)}
    ctx_words = [w for w, _ in ranked[:n_context]]
    ctx_index = {w: i for i, w in enumerate(ctx_words)}
    co = np.zeros((len(vocab), len(ctx_words)), dtype=np.float64)
    for d in docs:
        ids = [index.get(w, -1) for w in d]
        cids = [ctx_index.get(w, -1) for w in d]
        n = len(d)
        for off in range(1, window + 1):
            for i in range(n - off):
                a, b = ids[i], ids[i + off]
                if a >= 0 and cids[i + off] >= 0:
                    co[a, cids[i + off]] += 1
                if b >= 0 and cids[i] >= 0:
                    co[b, cids[i]] += 1
    total = co.sum()
    if total == 0:
        return SynonymTable()
    row, col = co.sum(1, keepdims=True), co.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(co * total / (row * col))
    vec = np.where(co > 0, np.maximum(pmi, 0.0), 0.0).astype(np.float32)
    vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    banned = {norm(w) for w in exclude} | STOPWORDS
    ok = np.array([w not in banned for w in vocab])
    table = SynonymTable()
    k = min(top_k, len(vocab) - 1)
    for start in range(0, len(vocab), block):
        sims = vec[start : start + block] @ vec.T
        sims[np.arange(sims.shape[0]), np.arange(start, start + sims.shape[0])] = -np.inf  # not itself
        sims[:, ~ok] = -np.inf
        # stable order: by similarity desc, then by vocabulary rank
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        for r in range(sims.shape[0]):
            w = vocab[start + r]
            if not ok[start + r]:
                continue
            keep = [(vocab[j], float(sims[r, j])) for j in top[r] if sims[r, j] >= min_sim]
            if keep:
                table.neighbours[w] = [n for n, _ in keep]
                table.similarity[w] = [s for _, s in keep]
    return table


# ----------------------------------------------------------------------------- label-bearing tokens


def label_tokens(texts: Sequence[str], labels: Sequence[str], top_k: int = 10, prior: float = 1.0,
                 min_count: int = 2) -> dict[str, list[str]]:
    """The ``top_k`` most label-indicative words of each label: z-scored log-odds ratio of the word in the
    label's documents vs all others, with an informative Dirichlet prior of ``prior`` times the word's count in
    all the texts (Monroe et al. 2008, "Fightin' Words", sec. 3.5).
    Words seen fewer than ``min_count`` times are left out. Returns label -> words (best first)."""
    if len(texts) != len(labels):
        raise ValueError(f"label_tokens: {len(texts)} texts but {len(labels)} labels")
    per: dict[str, Counter] = {}
    for t, lab in zip(texts, labels, strict=True):
        per.setdefault(str(lab), Counter()).update(w for w in (norm(x) for x in words_of(t)) if w)
    if len(per) < 2:
        raise ValueError(f"label_tokens needs 2+ labels, got {sorted(per)}")
    total = Counter()
    for c in per.values():
        total.update(c)
    vocab = sorted(w for w, c in total.items() if c >= min_count)
    if not vocab:
        return {lab: [] for lab in sorted(per)}
    tot = np.array([total[w] for w in vocab], dtype=np.float64)
    alpha = prior * tot  # per-word prior counts: the pooled counts, scaled
    a0 = alpha.sum()
    out = {}
    for lab in sorted(per):
        y = np.array([per[lab][w] for w in vocab], dtype=np.float64)
        o = tot - y
        ny, no = y.sum(), o.sum()
        delta = (np.log((y + alpha) / (ny + a0 - y - alpha)) - np.log((o + alpha) / (no + a0 - o - alpha)))
        z = delta / np.sqrt(1.0 / (y + alpha) + 1.0 / (o + alpha))
        order = np.argsort(-z, kind="stable")[:top_k]
        out[lab] = [vocab[i] for i in order if z[i] > 0]
    return out


# ----------------------------------------------------------------------------- the four operations


def _eligible(words: list[str], protected: frozenset[str], stop: bool) -> list[int]:
    out = []
    for i, w in enumerate(words):
        key = norm(w)
        if is_break(w) or key in protected or (stop and (not key or key in STOPWORDS)):
            continue
        out.append(i)
    return out


def n_changes(alpha: float, n_eligible: int) -> int:
    """How many words one operation changes: ``max(1, round(alpha * n))``, 0 when nothing is eligible."""
    return 0 if n_eligible == 0 or alpha <= 0 else max(1, int(round(alpha * n_eligible)))


def _synonyms(word: str, synonyms: SynonymTable, protected: frozenset[str]) -> list[str]:
    return [s for s in synonyms.get(word) if s not in protected and s != norm(word)]


def synonym_replace(words: list[str], alpha: float, rng: np.random.Generator, synonyms: SynonymTable,
                    protected: frozenset[str] = frozenset()) -> list[str]:
    """SR: replace ``n_changes`` distinct eligible words (with a synonym) by a random one of their synonyms."""
    cand = [i for i in _eligible(words, protected, stop=True) if _synonyms(words[i], synonyms, protected)]
    out = list(words)
    for i in rng.permutation(cand)[: n_changes(alpha, len(_eligible(words, protected, stop=True)))]:
        syn = _synonyms(words[int(i)], synonyms, protected)
        out[int(i)] = syn[int(rng.integers(len(syn)))]
    return out


def random_insert(words: list[str], alpha: float, rng: np.random.Generator, synonyms: SynonymTable,
                  protected: frozenset[str] = frozenset()) -> list[str]:
    """RI: ``n_changes`` times, insert a synonym of a random eligible word at a random position."""
    elig = _eligible(words, protected, stop=True)
    cand = [words[i] for i in elig if _synonyms(words[i], synonyms, protected)]
    out = list(words)
    if not cand:
        return out
    for _ in range(n_changes(alpha, len(elig))):
        syn = _synonyms(cand[int(rng.integers(len(cand)))], synonyms, protected)
        out.insert(int(rng.integers(len(out) + 1)), syn[int(rng.integers(len(syn)))])
    return out


def random_swap(words: list[str], alpha: float, rng: np.random.Generator,
                protected: frozenset[str] = frozenset()) -> list[str]:
    """RS: ``n_changes`` times, swap two random eligible (unprotected) positions; protected words stay put."""
    elig = _eligible(words, protected, stop=False)
    out = list(words)
    if len(elig) < 2:
        return out
    for _ in range(n_changes(alpha, len(elig))):
        a, b = rng.choice(len(elig), size=2, replace=False)
        i, j = elig[int(a)], elig[int(b)]
        out[i], out[j] = out[j], out[i]
    return out


def random_delete(words: list[str], alpha: float, rng: np.random.Generator,
                  protected: frozenset[str] = frozenset()) -> list[str]:
    """RD: delete each eligible (unprotected) word with probability ``alpha``; never deletes every word."""
    elig = set(_eligible(words, protected, stop=False))
    draws = rng.random(len(words))
    out = [w for i, w in enumerate(words) if i not in elig or draws[i] >= alpha]
    if words and all(is_break(w) for w in out):
        keep = int(rng.choice(sorted(elig))) if elig else int(rng.integers(len(words)))
        out = [w for i, w in enumerate(words) if i == keep or (i not in elig and is_break(w))]
    return out


@dataclass(frozen=True)
class EdaConfig:
    """EDA's defaults: alpha 0.1 for each operation, 4 augmented copies per document."""

    alpha_sr: float = 0.1
    alpha_ri: float = 0.1
    alpha_rs: float = 0.1
    alpha_rd: float = 0.1
    n_aug: int = 4

    def __post_init__(self) -> None:
        for name in ("alpha_sr", "alpha_ri", "alpha_rs", "alpha_rd"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"EdaConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.n_aug < 0:
            raise ValueError(f"EdaConfig.n_aug must be >= 0, got {self.n_aug}")

    @property
    def ops(self) -> list[str]:
        return [op for op in OPS if getattr(self, f"alpha_{op}") > 0]


def apply_op(op: str, words: list[str], cfg: EdaConfig, rng: np.random.Generator, synonyms: SynonymTable,
             protected: frozenset[str]) -> list[str]:
    if op == "sr":
        return synonym_replace(words, cfg.alpha_sr, rng, synonyms, protected)
    if op == "ri":
        return random_insert(words, cfg.alpha_ri, rng, synonyms, protected)
    if op == "rs":
        return random_swap(words, cfg.alpha_rs, rng, protected)
    if op == "rd":
        return random_delete(words, cfg.alpha_rd, rng, protected)
    raise ValueError(f"unknown EDA operation {op!r}; operations: {', '.join(OPS)}")


def doc_rng(seed: int, key: str) -> np.random.Generator:
    """A generator for one document: the same ``(seed, key)`` always gives the same draws (order-free)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng([int.from_bytes(digest[i : i + 4], "big") for i in range(0, 32, 4)])


def eda(text: str, cfg: EdaConfig, synonyms: SynonymTable, protected: Iterable[str] = (), seed: int = 0,
        key: str = "") -> list[tuple[str, str]]:
    """``cfg.n_aug`` augmented copies of ``text`` as ``(operation, text)``; seeded per ``(seed, key)``."""
    ops = cfg.ops
    if not ops or cfg.n_aug == 0:
        return []
    prot = frozenset(norm(w) for w in protected)
    rng = doc_rng(seed, key or text)
    words = layout_words(text)
    order = [ops[int(i)] for i in rng.permutation(len(ops))]
    out = []
    for k in range(cfg.n_aug):
        op = order[k % len(order)]
        out.append((op, join_words(apply_op(op, words, cfg, rng, synonyms, prot))))
    return out
