"""Build the run report: ``index.html``, ``report.md`` and PNG plots from a run directory.

Every input is optional. A stage that has not run yields a section saying "not run"; a malformed
artifact yields a section naming the error, never an exception.

Validation numbers come from two places and say which: the summary card is the eval stage's (its
``sequences`` count, the whole split unless ``eval.max_sequences``), the training section's are the
training-time validations, over the first ``train.eval_sequences`` sequences of the same split.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln import atomic
from kiln.report import plots
from kiln.report.render import (
    Block,
    Cards,
    Code,
    Details,
    Heading,
    Image,
    Sample,
    Section,
    Table,
    Text,
    duration,
    fmt,
    human,
    images,
    render_html,
    render_md,
)

STAGES = ("corpus", "tokenizer", "tokens", "train", "eval", "generate")
MAX_EXAMPLES = 3  # removed-document examples shown per funnel step
MAX_CHARS = 1500  # longest text shown for one example


@dataclass(frozen=True)
class Inputs:
    """What every section reads: the run, where plots go, the metrics rows and the report options."""

    run_dir: Path
    out_dir: Path
    rows: list[dict[str, Any]]
    samples: int = 3  # report.samples: generated samples shown
    eval_sequences: int | None = None  # train.eval_sequences: validation sequences of a training-time validation


# --- reading ------------------------------------------------------------------------------


def _json(path: Path) -> Any:
    """Parsed JSON, or None when the file does not exist (malformed JSON raises)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _jsonl(path: Path) -> list[dict[str, Any]] | None:
    """Rows of a JSON-lines file, skipping blank or malformed lines (a live run may be mid-write)."""
    if not path.is_file():
        return None
    return json_rows(path.read_text(encoding="utf-8", errors="replace").splitlines())


def json_rows(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON objects among ``lines``; blank, malformed (a torn last line) or non-object lines are skipped."""
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _stats(run_dir: Path, stage: str) -> dict[str, Any]:
    manifest = _json(run_dir / stage / "manifest.json")
    stats = manifest.get("stats") if isinstance(manifest, dict) else None
    return stats if isinstance(stats, dict) else {}


def _flat(stats: dict[str, Any], limit: int = 8) -> str:
    """Scalar stats (one nested level flattened as ``a.b``) as ``k=v`` pairs."""
    items: list[str] = []
    for k, v in stats.items():
        inner = v.items() if isinstance(v, dict) else [("", v)]
        for k2, v2 in inner:
            if isinstance(v2, (int, float, str, bool)) or v2 is None:
                items.append(f"{k}.{k2}={fmt(v2)}" if k2 else f"{k}={fmt(v2)}")
    return ", ".join(items[:limit]) + (" …" if len(items) > limit else "")


def _clip(text: Any, limit: int = MAX_CHARS) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"\n… [{len(text) - limit:,} more characters]"


def _not_run(what: str) -> list[Block]:
    return [Text(f"not run (no {what})", missing=True)]


def _plot(draw: Callable[..., None], out_dir: Path, name: str, alt: str, *args: Any, **kw: Any) -> Block:
    try:
        draw(*args, path=out_dir / name, **kw)
    except Exception as e:  # a broken plot must not cost the report
        return Text(f"plot {name} failed: {type(e).__name__}: {e}", missing=True)
    return Image(name, alt)


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    pts = {}
    for r in rows:  # a resumed run may log a step twice: the last row wins
        step, v = r.get("step"), r.get(key)
        if isinstance(step, (int, float)) and isinstance(v, (int, float)) and math.isfinite(v):
            pts[step] = float(v)
    return sorted(pts.items())


def _kind(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("kind") == kind]


# --- sections --------------------------------------------------------------------------------


def _training_val_coverage(inp: Inputs) -> str:
    """Which validation sequences a training-time validation covered, in words."""
    k = inp.eval_sequences
    return "all validation sequences" if k is None else f"first {fmt(k)} validation sequences"


def _eval_coverage(ev: dict[str, Any]) -> str:
    n = ev.get("sequences")
    return f"eval stage, {fmt(n)} validation sequences" if isinstance(n, int) else "eval stage"


def summary(inp: Inputs) -> list[Block]:
    run_dir, rows = inp.run_dir, inp.rows
    ev = _json(run_dir / "eval" / "metrics.json") or {}
    val, train = _kind(rows, "val"), _kind(rows, "train")
    last_val = val[-1] if val else {}
    from_eval = "val_bpb" in ev or "val_loss" in ev
    bpb, loss = ev.get("val_bpb", last_val.get("val_bpb")), ev.get("val_loss", last_val.get("val_loss"))
    where = _eval_coverage(ev) if from_eval else \
        f"last training validation, step {fmt(last_val.get('step'))}, {_training_val_coverage(inp)}"
    uni = ev.get("unigram_bpb")
    stats = _stats(run_dir, "train")
    params = stats.get("n_params")
    tokens = next((stats[k] for k in ("tokens", "tokens_seen", "n_tokens") if k in stats), None)
    if tokens is None and train:
        tokens = train[-1].get("tokens")
    cards = []
    if bpb is not None:
        note = where
        if isinstance(uni, (int, float)) and isinstance(bpb, (int, float)) and uni > 0:
            note += f"; unigram baseline {fmt(uni)} ({100 * (1 - bpb / uni):.1f}% lower)"
        cards.append(("val bits / byte", fmt(bpb), note))
    if loss is not None:
        what = ev.get("val_objective") or last_val.get("val_objective")
        cards.append((f"val {what} loss" if what else "val loss", fmt(loss),
                      ("nats / target (encoder objective)" if what else "nats / token") + f"; {where}"))
    if params is not None:
        cards.append(("parameters", human(params), fmt(params)))
    if tokens is not None:
        cards.append(("tokens trained", human(tokens), fmt(tokens)))
    return [Cards(cards)] if cards else [Text("not run (no training or evaluation results yet)", missing=True)]


def stages(inp: Inputs) -> list[Block]:
    run_dir = inp.run_dir
    rows: list[list[Any]] = []
    for stage in STAGES:
        m = _json(run_dir / stage / "manifest.json")
        if not isinstance(m, dict):
            rows.append([stage, "not run", "—", "—", "—", ""])
            continue
        status = "complete" if m.get("complete") else "incomplete"
        fp = str(m.get("fingerprint", ""))[:12] or "—"
        stats = m.get("stats") if isinstance(m.get("stats"), dict) else {}
        rows.append([stage, status, fp, m.get("finished", "—"), duration(m.get("seconds")), _flat(stats)])
    return [Table(["stage", "status", "fingerprint", "finished", "time", "key stats"], rows)]


def corpus(inp: Inputs) -> list[Block]:
    run_dir, out_dir = inp.run_dir, inp.out_dir
    funnel = _json(run_dir / "corpus" / "funnel.json")
    if not isinstance(funnel, dict):
        return _not_run("corpus/funnel.json")
    steps = [s for s in funnel.get("steps", []) if isinstance(s, dict)]
    rows = []
    for s in steps:
        n_in, removed = s.get("docs_in"), s.get("docs_removed")
        pct = f"{100 * removed / n_in:.1f}%" if isinstance(removed, int) and isinstance(n_in, int) and n_in else "—"
        rows.append([s.get("step", "?"), n_in, s.get("docs_out"), removed, pct, s.get("docs_changed", "—"),
                     s.get("bytes_removed")])
    blocks: list[Block] = [Table(["step", "docs in", "docs out", "removed", "% removed", "changed",
                                  "bytes removed"], rows)]
    if steps:
        names = [str(s.get("step", "?")) for s in steps]
        removed_counts = [int(s.get("docs_removed") or 0) for s in steps]
        removed_bytes = [int(s.get("bytes_removed") or 0) for s in steps]
        blocks.append(_plot(plots.funnel, out_dir, "funnel.png", "documents and bytes removed per step", names,
                            removed_counts, removed_bytes=removed_bytes))
    blocks += _score_histograms(steps, out_dir)
    sources = funnel.get("sources")
    if isinstance(sources, dict) and sources:
        cols = ["kind", "docs_read", "bytes_read", "train_docs", "val_docs", "seconds"]
        source_rows = [[name, *(v.get(c, "—") for c in cols)] if isinstance(v, dict) else [name, v, *["—"] * 5]
                       for name, v in sources.items()]
        blocks += [Heading("Sources"), Table(["source", "kind", "docs read", "bytes read", "train docs", "val docs",
                                              "seconds"], source_rows)]
    split = funnel.get("split")
    if isinstance(split, dict) and split:
        blocks += [Heading("Split"), Text(_flat(split, limit=20))]
    examples = []
    for s in steps:
        ex = [e for e in s.get("examples") or [] if isinstance(e, dict)][:MAX_EXAMPLES]
        inner: list[Block] = []
        for e in ex:
            inner += [Text(f"{e.get('id', '?')} — {e.get('reason', '')}"), Code(_clip(e.get("text", "")))]
        if inner:
            examples.append(Details(f"{s.get('step', '?')}: {len(ex)} example(s) of {_what_it_did(s)}", inner))
    if examples:
        blocks += [Heading("What each step removed or changed"), *examples]
    return blocks


def _score_histograms(steps: list[dict[str, Any]], out_dir: Path) -> list[Block]:
    """One histogram per scorer row (``scores``), with the cut of each ``select`` on that column."""
    blocks: list[Block] = []
    for k, s in enumerate(steps):
        scores = s.get("scores")
        if not isinstance(scores, dict) or not scores.get("sample"):
            continue
        field = str(scores.get("field", s.get("step", "?")))
        cuts = [c for later in steps[k + 1:] if (later.get("selection") or {}).get("field") == field
                for v in (later["selection"].get("cuts") or {}).values() for c in (v if isinstance(v, list) else [v])
                if isinstance(c, (int, float))]
        note = (f"{s.get('step', '?')}: {scores.get('n')} documents scored ({scores.get('n_nan')} without a score), "
                f"min {fmt(scores.get('min'))}, max {fmt(scores.get('max'))}")
        blocks += [Text(note), _plot(plots.score_histogram, out_dir, f"scores-{k}.png", f"{field} histogram",
                                     scores["sample"], field, cuts=cuts)]
    return [Heading("Scores"), *blocks] if blocks else []


def _what_it_did(step: dict[str, Any]) -> str:
    """How a funnel step's examples relate to it: documents it removed, or changed (shown before the change)."""
    removed, changed = step.get("docs_removed") or 0, step.get("docs_changed") or 0
    if changed and not removed:
        return "documents it changed (text before the change)"
    if changed and removed:
        return "documents it removed or changed (text before any change)"
    return "what it removed"


def tokens(inp: Inputs) -> list[Block]:
    stats = _stats(inp.run_dir, "tokens")
    if not stats:
        return _not_run("tokens/manifest.json")
    rows = []
    for split in ("train", "val"):
        s = stats.get(split)
        if isinstance(s, dict):
            n_tok, n_bytes = s.get("n_tokens"), s.get("n_bytes")
            bpt = n_bytes / n_tok if isinstance(n_bytes, (int, float)) and isinstance(n_tok, int) and n_tok else None
            rows.append([split, s.get("n_docs"), n_tok, n_bytes, bpt])
    blocks: list[Block] = [Table(["split", "documents", "tokens", "bytes", "bytes / token"], rows)]
    blocks.append(Text(f"vocabulary size {fmt(stats.get('vocab_size'))}, token dtype {fmt(stats.get('dtype'))}"))
    return blocks


def training(inp: Inputs) -> list[Block]:
    out_dir, rows = inp.out_dir, inp.rows
    train, val = _kind(rows, "train"), _kind(rows, "val")
    if not train and not val:
        return _not_run("training rows in metrics.jsonl")
    blocks: list[Block] = []
    tr_loss, va_loss, va_bpb = _series(train, "loss"), _series(val, "val_loss"), _series(val, "val_bpb")
    tps, mfu = _series(train, "tokens_per_s"), _series(train, "mfu")
    if tr_loss or va_loss:
        blocks.append(_plot(plots.loss, out_dir, "loss.png", "train and val loss", tr_loss, va_loss))
    if va_bpb:
        uni = (_json(inp.run_dir / "eval" / "metrics.json") or {}).get("unigram_bpb")
        uni = uni if isinstance(uni, (int, float)) else None
        blocks.append(_plot(plots.bpb, out_dir, "bpb.png", "val bits per byte", va_bpb, baseline=uni))
    if tps:
        blocks.append(_plot(plots.throughput, out_dir, "throughput.png", "tokens per second", tps, mfu=mfu))
    last = train[-1] if train else {}
    coverage = _training_val_coverage(inp)
    table = [
        ["steps", max((p[0] for p in tr_loss + va_loss), default=None)],
        ["total tokens", last.get("tokens")],
        ["wall time", duration(last.get("elapsed_s"))],
        ["median tokens / s", statistics.median(p[1] for p in tps) if tps else None],
        ["median MFU", f"{100 * statistics.median(p[1] for p in mfu):.1f}%" if mfu else "—"],
        ["final train loss", tr_loss[-1][1] if tr_loss else None],
        [f"best val loss ({coverage})", min(p[1] for p in va_loss) if va_loss else None],
        [f"best val bits / byte ({coverage})", min(p[1] for p in va_bpb) if va_bpb else None],
    ]
    table += [[f"final {k}", v] for k, v in last.items() if k.endswith("_per_target")]  # the objective's metrics
    table += [[f"final {k}", last[k]] for k in ("sparsity", "n_params_bar", "flops_per_token_bar") if k in last]
    note = Text(f"Validation during training covers the {coverage} (train.eval_sequences); the summary's "
                "val numbers are the final checkpoint's, from the eval stage when it has run.")
    return [Table(["throughput and progress", "value"], table), note, *blocks]


def evaluation(inp: Inputs) -> list[Block]:
    ev = _json(inp.run_dir / "eval" / "metrics.json")
    if not isinstance(ev, dict):
        return _not_run("eval/metrics.json")
    return [Table(["metric", "value"], [[k, v] for k, v in ev.items() if not isinstance(v, (dict, list))])]


def downstream(inp: Inputs) -> list[Block]:
    from kiln.report.tasks_section import task_blocks

    return task_blocks(_json(inp.run_dir / "eval" / "metrics.json"))


def probes(inp: Inputs) -> list[Block]:
    """The probe results ``kiln eval --probe TASK`` saved as ``eval/probe-TASK.json``, one row per task."""
    files = sorted((inp.run_dir / "eval").glob("probe-*.json"))
    if not files:
        return [Text("no probe results (`kiln eval --probe TASK` saves eval/probe-TASK.json)", missing=True)]
    rows = []
    for path in files:
        r = _json(path)
        if not isinstance(r, dict):
            rows.append([path.name, "unreadable", "", "", "", ""])
            continue
        base = f"{fmt(r.get('majority_acc'))} ({r.get('majority_class', '?')})"
        rows.append([r.get("task", path.stem), fmt(len(r.get("classes") or [])),
                     f"{fmt(r.get('n_test'))} windows / {fmt(r.get('n_test_docs'))} docs", fmt(r.get("linear_acc")),
                     fmt(r["finetune_acc"]) if "finetune_acc" in r else "not run", base])
    note = Text("accuracy per window on the held-out split; the baseline is the best constant predictor there "
                "(its most common class)")
    return [Table(["task", "classes", "test split", "linear probe", "fine-tuned", "majority baseline"], rows), note]


def samples(inp: Inputs) -> list[Block]:
    rows = _jsonl(inp.run_dir / "generate" / "samples.jsonl")
    if rows is None:
        return _not_run("generate/samples.jsonl")
    if rows and inp.samples == 0:
        return [Text(f"{len(rows)} sample(s) in generate/samples.jsonl, none shown (report.samples = 0)")]
    blocks: list[Block] = []
    for i, r in enumerate(rows[: inp.samples], 1):
        prompt, text = str(r.get("prompt", "")), str(r.get("text", ""))
        if prompt and text.startswith(prompt):
            text = text[len(prompt) :]
        meta = ", ".join(f"{k}={fmt(v)}" for k, v in r.items() if k not in ("prompt", "text"))
        blocks.append(Sample(prompt, _clip(text), f"sample {i}" + (f" · {meta}" if meta else "")))
    if len(rows) > inp.samples:
        blocks.append(Text(f"… {len(rows) - inp.samples} more in generate/samples.jsonl "
                           f"(report.samples = {inp.samples})"))
    return blocks or [Text("no samples in generate/samples.jsonl", missing=True)]


def recipe(inp: Inputs) -> list[Block]:
    path = inp.run_dir / "recipe.yaml"
    if not path.is_file():
        return _not_run("recipe.yaml")
    return [Details("recipe.yaml (resolved)", [Code(path.read_text(encoding="utf-8", errors="replace"), "yaml")])]


SECTIONS: list[tuple[str, Callable[[Inputs], list[Block]]]] = [
    ("Summary", summary),
    ("Stages", stages),
    ("Corpus", corpus),
    ("Tokens", tokens),
    ("Training", training),
    ("Evaluation", evaluation),
    ("Downstream tasks", downstream),
    ("Probes", probes),
    ("Samples", samples),
    ("Recipe", recipe),
]


def build_report(run_dir: Path, out_dir: Path, samples: int = 3, eval_sequences: int | None = None) -> dict:
    """Write ``index.html``, ``report.md`` and plots into ``out_dir``; return ``{"files": [names]}``.

    ``samples`` is ``report.samples`` (generated samples shown), ``eval_sequences`` is ``train.eval_sequences``
    (what a training-time validation covered; None = all). File names are relative to ``out_dir`` (the caller
    renames the folder into place).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    try:
        metrics = _jsonl(run_dir / "metrics.jsonl") or []
    except OSError:
        metrics = []
    inp = Inputs(run_dir, out_dir, metrics, samples, eval_sequences)
    sections = []
    for title, make in SECTIONS:
        try:
            blocks = make(inp)
        except Exception as e:  # one malformed artifact must not cost the whole report
            blocks = [Text(f"could not read this section's artifacts: {type(e).__name__}: {e}", missing=True)]
        sections.append(Section(title, blocks))
    title = f"kiln run report: {run_dir.name}"
    atomic.write_text(out_dir / "index.html", render_html(title, sections))
    atomic.write_text(out_dir / "report.md", render_md(title, sections))
    pngs = [f for s in sections for f in images(s.blocks)]
    return {"files": ["index.html", "report.md", *pngs]}
