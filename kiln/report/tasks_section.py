"""The run report's "Downstream tasks" section: one row per task of ``eval/metrics.json["tasks"]``."""

from __future__ import annotations

from typing import Any

from kiln.report.render import Block, Table, Text, fmt

HEADER = ["task", "acc", "acc 95% CI", "acc_norm", "chance", "majority", "template spread (acc)", "items"]


def _ci(r: dict[str, Any], key: str) -> str:
    ci = r.get(key)
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else ""


def task_blocks(metrics: Any) -> list[Block]:
    """A table of choice tasks (accuracies, interval, baselines, spread across templates), bpb tasks and the
    tasks not scored (an encoder), from the eval metrics; a note when the run scored none."""
    tasks = metrics.get("tasks") if isinstance(metrics, dict) else None
    if not tasks:
        return [Text("no downstream tasks scored (`kiln eval --tasks a,b` or eval.tasks)", missing=True)]
    rows, bpb, gain, skipped = [], [], [], []
    for name, r in tasks.items():
        if r.get("kind") == "choice":
            rows.append([name, fmt(r["acc"]), _ci(r, "acc_ci"), fmt(r["acc_norm"]), fmt(r["chance"]),
                         fmt(r["majority"]), f"± {fmt(r['acc_template_std'])} over {len(r.get('templates', {}))}",
                         f"{r['n_items']} ({r.get('shots', 0)}-shot)"])
        elif r.get("kind") == "bpb":
            bpb.append([name, fmt(r["bpb"]), fmt(r["n_docs"]), fmt(r["n_bytes"])])
        elif r.get("kind") == "context_gain":
            gain.append([name, fmt(r["gain"]), _ci(r, "gain_ci"), fmt(r["bpb_related"]), fmt(r["bpb_unrelated"]),
                         fmt(r["bpb_none"]), fmt(r["n_triples"])])
        else:
            skipped.append(f"{name}: {r.get('skipped', 'not scored')}")
    blocks: list[Block] = []
    if rows:
        blocks += [Table(HEADER, rows), Text(
            "log-likelihood scoring as lm-evaluation-harness (acc: summed, acc_norm: per character); accuracy is "
            "the mean over prompt templates, the spread their standard deviation; the interval a bootstrap over "
            "items; majority = always the most common answer. Per-item predictions: eval/tasks/<task>.jsonl")]
    if bpb:
        blocks.append(Table(["held-out text", "bits per byte", "documents", "bytes"], bpb))
    if gain:
        blocks += [Table(["context gain", "gain (bpb)", "gain 95% CI", "bpb after related", "bpb after unrelated",
                          "bpb alone", "triples"], gain),
                   Text("gain = bits per byte of a held-out document after an unrelated held-out document minus "
                        "after its most similar one (positive: the model uses related context); per-triple bits: "
                        "eval/tasks/<task>.jsonl")]
    if skipped:
        blocks.append(Text("; ".join(skipped)))
    return blocks
