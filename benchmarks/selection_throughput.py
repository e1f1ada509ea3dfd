"""Selection throughput: each scorer's docs/s per core, ``select``'s passes, and how ICP ordering scales.

    python benchmarks/selection_throughput.py [--docs 2000] [--icp-sizes 10000,100000] [--icp-embed text|synthetic]
                                              [--skip-model-scorers] [--quick] [--out FILE.json]

Everything runs in this process with one thread (``OMP_NUM_THREADS=1``, torch and faiss pinned to 1, each step's
``threads: 1``), so every rate is per core.

1. **Scorers** (issue 14's ``random_score``, ``toxicity_score``, ``perplexity_score``, ``fasttext_score``,
   ``preselect``, ``attention_influence``, ``gotd_score``, ``orca_score``), each through the scorer machinery its
   step runs (:func:`kiln.corpus.scoring.base.run_scorer` over the step module's own ``setup`` and ``score``) on
   ``--docs`` synthetic web-like documents (:func:`corpus_synth.make_corpus`, ~1-2 KB each). ``setup`` (model load,
   classifier training, head detection, task gradient, reference losses, optimal transport) and ``score`` are
   timed apart (per-document scorers after an untimed warm-up on 8 documents: imports, first calls, file cache);
   ``score_docs_per_s`` = documents / scoring seconds; ``total_docs_per_s`` also counts setup. For
   the whole-corpus scorers (``fasttext_score``, ``preselect``, ``gotd_score``: ``per_doc: false``) the work is
   in ``setup`` and ``score`` is a lookup, so their fair rate is ``total_docs_per_s``. The model-based scorers share
   one small kiln checkpoint trained here once on other synthetic documents (its size is recorded under
   ``reference_model``; three checkpoints of the run serve as PreSelect's references, ranked by training step).
2. **select**: ``keep_fraction: 0.5`` on the ``random_score`` column, its gather / decide / apply passes timed.
3. **ICP ordering** (``icp_order``, Shi et al. 2023, arXiv:2310.10638) at each of ``--icp-sizes``: documents with
   planted topics, either text (``--icp-embed text``: topic vocabularies, embedded by the step's hashing embedder)
   or unit Gaussian topic vectors (``synthetic``: no text, ``--icp-dim`` wide, so 100k is quick). Timed: embed,
   kNN (exact ``IndexFlatIP`` up to ``exact_max`` documents, IVF above, as the step decides), traversal and the
   whole step (text: the step's ``run``; synthetic: :func:`kiln.corpus.selection.icp.icp_order`). Growth between
   consecutive sizes is printed as the ratio of times against the ratio of n and as an exponent
   ``log(t2/t1) / log(n2/n1)`` (1 = linear, 2 = quadratic). Baseline, same run, smallest size only: a naive greedy
   nearest-neighbour ordering that scans every unvisited document at each step (O(n^2 d)); its time at the larger
   sizes is the n^2 extrapolation, labelled ``extrapolated``. Quality: the share of consecutive emitted documents
   (within a context) that share a planted topic, for ICP, the naive walk and the input order.

Reading the ICP rows: the traversal's work is counted too (``inspections``: kNN-list entries looked at, at most
k per document; ``heap_pops``: at most n + 2 n k), so its linearity shows without timing noise. The exact kNN
below ``exact_max`` is itself O(n^2 d) by the step's design (a flat index); above it the IVF search costs about
n (nlist + n nprobe / nlist) d.

``--out FILE.json``: machine (CPU model, cores, library versions, load average), settings and every number; a
short table is printed last. ``--quick``: a seconds-long smoke configuration (~30 s with the model training).
The full default run (2000 documents, text ICP at 10k and 100k) takes roughly a quarter of an hour on one core;
``--icp-embed synthetic`` ICP at 10k and 100k takes under a minute.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from corpus_synth import Vocab, good_doc, make_corpus, sentence  # noqa: E402
from selection_icp import (  # noqa: E402,F401  (re-exported for tests/test_selection_benchmark.py)
    _timed,
    bench_icp,
    gaussian_topics,
    growth,
    naive_greedy_order,
    same_topic_rate,
    topic_docs,
)

DEFAULTS = {"docs": 2000, "max_tokens": 512, "n_prompts": 64, "ref_docs": 300, "ref_steps": 30,
            "icp_sizes": "10000,100000"}
# --quick: seconds; exact_max 1000 so that the larger ICP size takes the IVF path too
QUICK = {"docs": 60, "max_tokens": 128, "n_prompts": 8, "ref_docs": 60, "ref_steps": 9, "icp_sizes": "600,2400",
         "icp_exact_max": 1000}
CHEAP_SCORERS = ("random_score", "toxicity_score", "fasttext_score", "gotd_score")
MODEL_SCORERS = ("perplexity_score", "preselect", "attention_influence", "orca_score")


# ----------------------------------------------------------------------------- machine, threads, clocks


def pin_threads() -> None:
    """One thread for torch, faiss and the BLAS numpy uses."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - the env vars set above already apply
        pass


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    versions = {d: _version(d) for d in ("torch", "faiss-cpu", "POT", "numpy", "fasttext", "fasttext-community",
                                         "tokenizers")}
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "load_average": load,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {k: v for k, v in versions.items() if v is not None}}


# ----------------------------------------------------------------------------- the reference checkpoint


@dataclass
class Reference:
    root: Path  # the run folder (its last checkpoint is what a run-dir `checkpoint:` loads)
    checkpoints: list[Path]  # step-N folders, oldest first (PreSelect's references)
    info: dict[str, Any] = field(default_factory=dict)


def train_reference(work: Path, n_docs: int = 300, steps: int = 30, n_layer: int = 2, n_head: int = 4,
                    d_model: int = 64, seq_len: int = 128, seed: int = 1) -> Reference:
    """A small kiln model trained here (untimed) on ``n_docs`` good synthetic documents of another seed."""
    from kiln.corpus.learned.refmodel import ReferenceModel
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline
    from tests.synthetic import tiny_overrides

    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "train.jsonl"
    docs = make_corpus(n_docs, seed=seed, exact_frac=0.0, near_frac=0.0, garbled_frac=0.0)
    corpus.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs))
    every = max(1, steps // 3)
    overrides = [*tiny_overrides(corpus, steps=steps), f"model.n_layer={n_layer}", f"model.n_head={n_head}",
                 f"model.d_model={d_model}", f"data.seq_len={seq_len}", "generate.prompts=[]",
                 f"train.eval_every={steps}", f"train.checkpoint_every={every}", "train.keep_checkpoints=3",
                 "report.samples=0", "eval.max_sequences=8"]
    run = RunDir(work / "ref")
    t0 = time.perf_counter()
    run_pipeline(load_recipe("demo", overrides), run, until="train")
    seconds = time.perf_counter() - t0
    ckpts = sorted((run.root / "train" / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    ref = ReferenceModel.load(run.root)
    cfg = ref.model.config
    info = {"params": int(sum(p.numel() for p in ref.model.parameters())), "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "d_model": cfg.d_model, "max_seq_len": ref.max_seq_len,
            "vocab_size": ref.tokenizer.get_vocab_size(), "train_steps": steps, "train_docs": n_docs,
            "checkpoints": [p.name for p in ckpts], "train_seconds": round(seconds, 1)}
    return Reference(run.root, ckpts, info)


# ----------------------------------------------------------------------------- scorer inputs


def write_task_file(path: Path, n: int = 64, seed: int = 3) -> Path:
    """ORCA's task: {context, answer} rows, the answer the last word of a synthetic sentence."""
    rng, vocab = random.Random(seed), Vocab.build(seed=0)
    rows = []
    while len(rows) < n:
        words = sentence(rng, vocab).split(" ")
        if len(words) >= 4:
            rows.append({"context": " ".join(words[:-1]), "answer": " " + words[-1]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_target_file(path: Path, n: int = 50, seed: int = 4) -> Path:
    """GOT-D's target sample: good synthetic documents of another seed."""
    rng, vocab = random.Random(seed), Vocab.build(seed=0)
    path.write_text("".join(json.dumps({"text": good_doc(rng, vocab)}) + "\n" for _ in range(n)))
    return path


def scorer_table(names: tuple[str, ...], ref: Reference | None, work: Path, max_tokens: int,
                 n_prompts: int) -> dict[str, tuple[Any, Any, Any, bool]]:
    """name -> (setup, score, params, per_doc) for each scorer named (model scorers need ``ref``)."""
    from kiln.corpus.junk import GARBLED_KINDS
    from kiln.corpus.scoring import builtin
    from kiln.corpus.scoring.base import no_setup
    from kiln.corpus.selection import attention_influence_steps as ai
    from kiln.corpus.selection import gotd_steps, orca_steps, preselect_steps

    garbled = ["garbled:" + k for k in GARBLED_KINDS]
    out: dict[str, tuple[Any, Any, Any, bool]] = {}
    for name in names:
        if name == "random_score":
            out[name] = (no_setup, builtin.random_score, builtin.RandomScoreParams(), True)
        elif name == "toxicity_score":
            out[name] = (builtin.toxicity_setup, builtin.toxicity_score, builtin.ToxicityScoreParams(), True)
        elif name == "fasttext_score":
            p = builtin.FastTextScoreParams(positive=[{"where": {"kind": ["good"]}}],
                                            negative=[{"where": {"kind": garbled}}])
            out[name] = (builtin.fasttext_setup, builtin.fasttext_score, p, False)
        elif name == "gotd_score":
            p = gotd_steps.GotdScoreParams(target=[{"path": str(write_target_file(work / "gotd_target.jsonl"))}])
            out[name] = (gotd_steps.gotd_setup, gotd_steps.gotd_score, p, False)
        elif ref is None:
            raise ValueError(f"scorer {name} needs the reference checkpoint")
        elif name == "perplexity_score":
            p = builtin.PerplexityScoreParams(checkpoint=str(ref.root), max_tokens=max_tokens, threads=1)
            out[name] = (builtin.perplexity_setup, builtin.perplexity_score, p, True)
        elif name == "preselect":
            refs = [{"checkpoint": str(c), "score": float(i)} for i, c in enumerate(ref.checkpoints)]
            p = preselect_steps.PreSelectParams(references=refs, max_tokens=max_tokens, threads=1, min_positives=2)
            out[name] = (preselect_steps.preselect_setup, preselect_steps.preselect_score, p, False)
        elif name == "attention_influence":
            p = ai.AttentionInfluenceParams(checkpoint=str(ref.root), detector="induction", n_prompts=n_prompts,
                                            max_tokens=max_tokens, threads=1)
            out[name] = (ai.attention_influence_setup, ai.attention_influence_score, p, True)
        elif name == "orca_score":
            p = orca_steps.OrcaScoreParams(checkpoint=str(ref.root), task_file=str(write_task_file(
                work / "orca_task.jsonl")), shots=4, max_prompts=n_prompts, proj_dim=1024, max_tokens=max_tokens,
                threads=1)
            out[name] = (orca_steps.orca_setup, orca_steps.orca_score, p, True)
        else:
            raise ValueError(f"unknown scorer {name!r}; known: {CHEAP_SCORERS + MODEL_SCORERS}")
    return out


def bench_scorer(name: str, setup: Any, score: Any, params: Any, per_doc: bool, docs: list[dict],
                 work: Path) -> tuple[dict[str, Any], list[dict]]:
    """One scorer over ``docs`` through :func:`run_scorer`: setup and scoring seconds, rates, score summary."""
    from kiln.corpus.scoring.base import run_scorer
    from kiln.corpus.steps.base import StepContext

    out_dir = work / "stage" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    if per_doc:  # untimed warm-up on a few documents: imports, first-call allocations, the file cache
        run_scorer(docs[:8], params, StepContext(step=name, out_dir=work / "stage" / f"{name}-warmup"), setup, score)
    ctx = StepContext(step=name, out_dir=out_dir)
    clock: dict[str, Any] = {}
    t0 = time.perf_counter()
    out, _ = run_scorer(docs, params, ctx, _timed(setup, clock, "setup"), _timed(score, clock, "score"))
    total = time.perf_counter() - t0
    vals = np.array([np.nan if d.get(params.column) is None else d[params.column] for d in out], dtype=np.float64)
    setup_s, score_s = clock.get("setup", 0.0), clock.get("score", 0.0)
    n = len(docs)
    return {"per_doc": per_doc, "docs": n, "scored": int(np.isfinite(vals).sum()),
            "setup_s": round(setup_s, 3), "score_s": round(score_s, 3), "total_s": round(total, 3),
            "score_docs_per_s": round(n / score_s, 1) if score_s > 0 else None,
            "total_docs_per_s": round(n / total, 1) if total > 0 else None,
            "score_mean": float(np.nanmean(vals)) if np.isfinite(vals).any() else None}, out


def bench_select(docs: list[dict], field_name: str) -> dict[str, Any]:
    """``select`` (keep_fraction 0.5 of characters) on an existing score column: its three passes timed."""
    from kiln.corpus.scoring.select import SelectParams, apply, decide, gather
    from kiln.corpus.steps.base import StepContext

    params = SelectParams(field=field_name, keep_fraction=0.5)
    ctx = StepContext(step="select")
    t0 = time.perf_counter()
    rec = gather(docs, params)
    t1 = time.perf_counter()
    dec = decide([rec], params)
    t2 = time.perf_counter()
    kept, _ = apply(docs, params, dec, ctx, 0)
    t3 = time.perf_counter()
    n = len(docs)
    chars = sum(len(d["text"]) for d in kept) / max(1, sum(len(d["text"]) for d in docs))
    secs = {"gather": t1 - t0, "decide": t2 - t1, "apply": t3 - t2, "total": t3 - t0}
    return {"docs": n, "kept": len(kept), "kept_char_share": round(chars, 4),
            **{f"{k}_s": round(v, 4) for k, v in secs.items()},
            **{f"{k}_docs_per_s": round(n / v, 1) if v > 0 else None for k, v in secs.items()}}


# ----------------------------------------------------------------------------- main


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    pin_threads()
    work = Path(tempfile.mkdtemp(prefix="kiln-selection-bench-"))
    scorers = tuple(s for s in args.scorers.split(",") if s)
    needs_model = any(s in MODEL_SCORERS for s in scorers)
    result: dict[str, Any] = {"machine": machine_info(), "settings": {k: v for k, v in vars(args).items()
                                                                         if k != "out"}}
    ref = None
    if needs_model:
        print("training the reference model (untimed) ...", flush=True)
        ref = train_reference(work / "reference", n_docs=args.ref_docs, steps=args.ref_steps,
                              d_model=args.ref_d_model, seq_len=args.ref_seq_len)
        pin_threads()  # the training stage sets its own thread count
        result["reference_model"] = {**ref.info, "max_tokens_scored": args.max_tokens}
    docs = make_corpus(args.docs, seed=args.seed) if scorers else []
    table = scorer_table(scorers, ref, work, args.max_tokens, args.n_prompts)
    if docs:
        result["corpus"] = {"docs": len(docs), "mean_chars": round(float(np.mean([len(d["text"]) for d in docs])), 1)}
        print(f"scorers on {len(docs)} docs, mean {result['corpus']['mean_chars']:.0f} chars", flush=True)
    result["scorers"] = {}
    scored = docs
    for name, (setup, score, params, per_doc) in table.items():
        try:
            row, out = bench_scorer(name, setup, score, params, per_doc, docs, work)
            if name == "random_score":
                scored = out
        except Exception as exc:  # noqa: BLE001 - one failing scorer must not hide the others' numbers
            row = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        pin_threads()  # steps restore thread counts; keep every measurement at one
        result["scorers"][name] = row
        print(f"  {name}: {json.dumps(row)}", flush=True)
    if scored and "random_score" in scored[0]:
        result["select"] = bench_select(scored, "random_score")
        print(f"  select: {json.dumps(result['select'])}", flush=True)
    sizes = sorted(int(s) for s in args.icp_sizes.split(",") if s)
    rows = []
    for i, n in enumerate(sizes):
        print(f"icp_order, {args.icp_embed} embeddings, n={n} ...", flush=True)
        rows.append(bench_icp(n, args.icp_embed, args.icp_dim, args.icp_exact_max, args.seed,
                              naive=i == 0 and not args.no_naive))
        pin_threads()
        print(f"  {json.dumps(rows[-1])}", flush=True)
    if rows and "naive_s" in rows[0]:
        n0, t0 = rows[0]["n"], rows[0]["naive_s"]
        for r in rows[1:]:
            r["naive_s_extrapolated_n2"] = round(t0 * (r["n"] / n0) ** 2, 1)
    result["icp"] = {"rows": rows, "growth": growth(rows, ("embed_s", "knn_s", "traverse_s", "order_s", "step_s"))}
    return result


def print_table(result: dict[str, Any]) -> None:
    if result.get("reference_model"):
        m = result["reference_model"]
        print(f"\nreference model: {m['params']:,} params, {m['n_layer']} layers, d_model {m['d_model']}, "
              f"{m['n_head']} heads, context {m['max_seq_len']}, vocab {m['vocab_size']}; "
              f"{m['max_tokens_scored']} tokens scored per document")
    if result.get("scorers"):
        print(f"\n{'scorer (1 core)':<22}{'setup s':>9}{'score s':>9}{'score docs/s':>14}{'total docs/s':>14}")
    for name, r in result.get("scorers", {}).items():
        if "error" in r:
            print(f"{name:<22}  error: {r['error'][:80]}")
            continue
        tag, rate = ("", f"{r['score_docs_per_s'] or 0:.1f}") if r["per_doc"] else (" *", "lookup")
        print(f"{name + tag:<22}{r['setup_s']:>9.2f}{r['score_s']:>9.2f}{rate:>14}{r['total_docs_per_s'] or 0:>14.1f}")
    if result.get("scorers"):
        print("  * whole-corpus scorer: the work is in setup; compare total docs/s")
    if "select" in result:
        s = result["select"]
        print(f"select keep_fraction 0.5: gather {s['gather_docs_per_s']:.0f}, decide {s['decide_docs_per_s']:.0f}, "
              f"apply {s['apply_docs_per_s']:.0f}, all {s['total_docs_per_s']:.0f} docs/s")
    rows = result.get("icp", {}).get("rows", [])
    if rows:
        print(f"\n{'icp n':>8} {'knn':>5}{'embed s':>9}{'knn s':>9}{'trav s':>9}{'step s':>9}{'trav us/doc':>12}"
              f"{'topic icp':>10}{'input':>7}{'naive s':>10}")
        for r in rows:
            naive = r.get("naive_s", r.get("naive_s_extrapolated_n2"))
            mark = "" if "naive_s" in r else "~" if naive is not None else ""
            print(f"{r['n']:>8} {r['knn_kind']:>5}{r['embed_s']:>9.2f}{r['knn_s']:>9.2f}{r['traverse_s']:>9.2f}"
                  f"{r['step_s']:>9.2f}{r['traverse_us_per_doc']:>12.1f}{r['same_topic_icp']:>10.3f}"
                  f"{r['same_topic_input']:>7.3f}{'' if naive is None else f'{mark}{naive:.1f}':>10}")
        if any("naive_s_extrapolated_n2" in r for r in rows):
            print("  ~ naive greedy time extrapolated as n^2 from the smallest size (not measured)")
        for g in result["icp"]["growth"]:
            parts = [f"{k[:-2]} x{v['ratio']} (n^{v['exponent']})" for k, v in g.items() if isinstance(v, dict)]
            print(f"  n {g['from']} -> {g['to']} (x{g['n_ratio']}): " + ", ".join(parts))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=None, help="synthetic documents per scorer (2000)")
    ap.add_argument("--scorers", default=",".join(CHEAP_SCORERS + MODEL_SCORERS))
    ap.add_argument("--skip-model-scorers", action="store_true", help="no checkpoint: only the cheap scorers")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per document the model scorers read (512)")
    ap.add_argument("--n-prompts", type=int, default=None, help="head-detection / ORCA task prompts (64)")
    ap.add_argument("--ref-docs", type=int, default=None, help="reference model training documents (300)")
    ap.add_argument("--ref-steps", type=int, default=None, help="reference model training steps (30)")
    ap.add_argument("--ref-d-model", type=int, default=64)
    ap.add_argument("--ref-seq-len", type=int, default=128)
    ap.add_argument("--icp-sizes", default=None, help="document counts of the ICP runs (10000,100000)")
    ap.add_argument("--icp-embed", choices=("text", "synthetic"), default="text")
    ap.add_argument("--icp-dim", type=int, default=None, help="embedding width (default: 1024 text, 64 synthetic)")
    ap.add_argument("--icp-exact-max", type=int, default=None, help="default: the step's (20000)")
    ap.add_argument("--no-naive", action="store_true", help="skip the O(n^2) greedy baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke configuration (seconds)")
    ap.add_argument("--out", type=Path, help="write every number here as JSON")
    args = ap.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.skip_model_scorers:
        args.scorers = ",".join(s for s in args.scorers.split(",") if s not in MODEL_SCORERS)
    if args.icp_dim is None:
        args.icp_dim = 1024 if args.icp_embed == "text" else 64
    if args.icp_exact_max is None:
        from kiln.corpus.selection.icp_steps import IcpOrderParams

        args.icp_exact_max = IcpOrderParams().exact_max
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t0 = time.perf_counter()
    result = run_benchmark(args)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    return result


if __name__ == "__main__":
    main()
