"""The streaming corpus stage at scale: synthetic corpora of ~0.1 / 0.5 / 1 GB through the default curation
and tokenization (``kiln.stages.run_pipeline(..., until="tokens")``) on ``--workers`` processes.

Per size: peak RSS of the whole process tree (the pipeline runs in a child process; its tree's resident
memory is summed from /proc every 0.1 s), wall seconds and docs/s per core of the corpus stage (from its
manifest; wall time, so other jobs on the machine slow it), docs per CPU second of the corpus stage
(parent + workers, from getrusage: robust to other jobs), the tokenizer and tokens stages' seconds.
The spread reported is over docs per CPU second.
On the smallest size it also checks that the kept documents (ids and texts, train and val) equal the
in-memory reference path (``kiln.corpus.stage.reference_corpus``), and that ``corpus.executor: ray``
writes byte-identical parts on a ``--ray-mb`` slice of it.

Documents: a pool of synthetic paragraphs (benchmarks/corpus_synth.py: English glue words + Zipf
pseudo-words) recombined 3-6 at a time plus a unique serial sentence, so generation runs at disk speed;
planted: 5% exact copies of a recent document, 3% too-short documents, 2% empty ones.

    python benchmarks/corpus_scale.py --sizes 0.1,0.5,1 --out corpus_scale.json
    python benchmarks/corpus_scale.py --sizes 0.5,1 --until corpus --no-reference   # curation only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpus_synth import Vocab, good_doc  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def write_corpus(path: Path, gb: float, seed: int = 0) -> dict:
    """A JSONL corpus of about ``gb`` GB of text (skipped if it already exists with that size)."""
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return json.loads(meta.read_text())
    rng = random.Random(seed)
    vocab = Vocab.build(seed=seed)
    paras = [p for _ in range(3000) for p in good_doc(rng, vocab).split("\n\n")]
    target, size, n = int(gb * 1e9), 0, 0
    recent: list[str] = []
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        while size < target:
            r = rng.random()
            if r < 0.05 and recent:
                text = rng.choice(recent)
            elif r < 0.08:
                text = "Too short to keep."
            elif r < 0.10:
                text = "  \n "
            else:
                text = "\n\n".join(rng.choices(paras, k=rng.randint(3, 6))) + f"\n\nDocument serial {n} ends here."
                recent = (recent + [text])[-64:]
            f.write(json.dumps({"id": f"d{n}", "text": text, "n": n}) + "\n")
            size += len(text.encode())
            n += 1
    tmp.rename(path)
    info = {"docs": n, "text_bytes": size, "file_bytes": path.stat().st_size}
    meta.write_text(json.dumps(info))
    return info


def _tree_rss(root: int) -> tuple[int, int]:
    """Resident bytes of ``root`` and all its descendants (from /proc): summed RSS (pages shared by forked
    workers counted in each) and summed PSS (shared pages split between their processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except (OSError, IndexError, ValueError, StopIteration):
            pass
    return rss, pss


def _overrides(corpus: Path, workers: int, extra: list[str]) -> list[str]:
    return [f"corpus.sources=[{{kind: jsonl, path: '{corpus}', id_field: id}}]", f"corpus.workers={workers}",
            "tokenizer.vocab_size=2048", *extra]


def _cpu_s() -> float:
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _run(corpus: str, run_dir: str, workers: int, until: str, extra: list[str]) -> None:
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline

    recipe = load_recipe("demo", _overrides(Path(corpus), workers, extra))
    start = _cpu_s()
    run_pipeline(recipe, RunDir(run_dir), until="corpus")  # first alone: its own CPU time
    corpus_cpu = _cpu_s() - start
    if until != "corpus":
        run_pipeline(recipe, RunDir(run_dir), until=until)
    (Path(run_dir) / "cpu_seconds.json").write_text(json.dumps({"cpu_s": _cpu_s() - start,
                                                                "corpus_cpu_s": corpus_cpu}))


def measured_run(corpus: Path, run_dir: Path, workers: int, until: str = "tokens",
                 extra: list[str] | None = None) -> dict:
    """Run the pipeline in a child process; its wall time and the peak RSS of its process tree."""
    proc = mp.get_context("spawn").Process(target=_run, args=(str(corpus), str(run_dir), workers, until,
                                                                extra or []))
    start = time.perf_counter()
    proc.start()
    peak = peak_pss = 0
    while proc.is_alive():
        rss, pss = _tree_rss(proc.pid)
        peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        time.sleep(0.1)
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"pipeline failed (exit {proc.exitcode}) in {run_dir}")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_mb": round(peak / 2**20, 1),
            "peak_pss_mb": round(peak_pss / 2**20, 1)}


def _manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


def kept_docs(corpus_dir: Path) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    from kiln.corpus.files import split_files

    return [(r["id"], r["text"]) for split in ("train", "val") for p in split_files(corpus_dir, split)
            for r in pq.read_table(p, columns=["id", "text"]).to_pylist()]


def same_as_in_memory(corpus: Path, run_dir: Path, workers: int) -> bool:
    from kiln.corpus.stage import reference_corpus
    from kiln.recipe import load_recipe

    cfg = load_recipe("demo", _overrides(corpus, workers, [])).corpus
    train, val, _, _ = reference_corpus(cfg)
    return kept_docs(run_dir / "corpus") == [(d["id"], d["text"]) for d in train + val]


def _parts_hash(corpus_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(corpus_dir.glob("*.parquet")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def ray_identical(corpus: Path, base: Path, workers: int, mb: float) -> dict:
    """Corpus stage on the first ``mb`` MB of documents, local vs ray: byte-identical Parquet outputs."""
    n = max(2, int(mb * 1e6 / 1500))
    extra = [f"corpus.sources=[{{kind: jsonl, path: '{corpus}', id_field: id, max_docs: {n}}}]",
             f"corpus.shard_docs={max(1, n // 4)}"]
    hashes = {}
    for ex in ("local", "ray"):
        run_dir = base / f"ray-check-{ex}"
        measured_run(corpus, run_dir, workers, "corpus", [*extra, f"corpus.executor={ex}"])
        hashes[ex] = _parts_hash(run_dir / "corpus")
    return {"docs": n, "identical": hashes["local"] == hashes["ray"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.1,0.5,1", help="corpus sizes in GB of text, comma-separated")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-dir", default="/tmp/kiln-corpus-scale", help="corpora and runs (reused)")
    ap.add_argument("--ray-mb", type=float, default=5.0, help="slice for the ray check (0 = skip)")
    ap.add_argument("--no-reference", action="store_true", help="skip the in-memory comparison")
    ap.add_argument("--until", choices=["corpus", "tokens"], default="tokens",
                    help="last stage to run (corpus: curation only, e.g. where tokenizer training is too slow)")
    args = ap.parse_args()
    os.environ["KILN_STAGE_CACHE"] = "off"  # every run builds its stages (no reuse from kiln's stage store)
    base = Path(args.data_dir)
    base.mkdir(parents=True, exist_ok=True)
    sizes = [float(s) for s in args.sizes.split(",")]
    rows = []
    for k, gb in enumerate(sizes):
        corpus = base / f"corpus-{gb:g}gb.jsonl"
        info = write_corpus(corpus, gb)
        run_dir = base / f"run-{gb:g}gb-{time.strftime('%H%M%S')}"
        m = measured_run(corpus, run_dir, args.workers, args.until)
        cm = _manifest(run_dir, "corpus")
        row = {"size_gb": gb, "until": args.until, **info, **m, "corpus_s": round(cm["seconds"], 1),
               "kept_docs": cm["stats"]["train_docs"] + cm["stats"]["val_docs"]}
        if args.until == "tokens":
            row.update(tokenizer_s=round(_manifest(run_dir, "tokenizer")["seconds"], 1),
                       tokens_s=round(_manifest(run_dir, "tokens")["seconds"], 1))
        row["corpus_docs_per_s_per_core"] = round(info["docs"] / cm["seconds"] / args.workers)
        cpu = json.loads((run_dir / "cpu_seconds.json").read_text())
        row["cpu_s"] = round(cpu["cpu_s"], 1)  # the pipeline's CPU time, parent + workers (imports excluded)
        row["corpus_cpu_s"] = round(cpu["corpus_cpu_s"], 1)
        row["corpus_docs_per_cpu_s"] = round(info["docs"] / cpu["corpus_cpu_s"])  # robust to other jobs
        if k == 0 and not args.no_reference:
            row["same_kept_as_in_memory"] = same_as_in_memory(corpus, run_dir, args.workers)
            if args.ray_mb:
                row["ray"] = ray_identical(corpus, base, args.workers, args.ray_mb)
        print(json.dumps(row), flush=True)
        rows.append(row)
    rates = [r["corpus_docs_per_cpu_s"] for r in rows]
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"python {platform.python_version()}", "workers": args.workers, "rows": rows,
              "docs_per_s_per_core_spread": round(max(rates) / min(rates) - 1, 3) if rates else None}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
