"""Export choice tasks as lm-evaluation-harness tasks (local JSONL data + task YAML), and run ``lm_eval`` on them.

Each (task, template) becomes ``DIR/<task>/<template>.jsonl`` (rows: ``context``, ``choices``, ``gold``, ``id``)
and ``DIR/<task>/<template>.yaml``, an lm-eval task named ``kiln_<task>_<template>`` that reads the rows with
the packaged ``json`` dataset builder (offline) and scores them as ``multiple_choice`` with
``target_delimiter: ""`` (a kiln choice carries its own leading space); ``DIR/<task>/_group.yaml`` is the group
``kiln_<task>``, the unweighted mean of its templates (= kiln's template mean).

A partially scored template (items with a ``continuation``) is written in lm-eval's *multiple-input* form (as its
Winogrande task is): rows ``choices`` (the per-choice contexts, ``context + choice``), ``continuation`` and
``gold``, with ``doc_to_text: gold`` (an int, which is what tells lm-eval the choices are inputs),
``doc_to_choice: choices`` and ``doc_to_target: continuation``.

``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` name the row's fields (``context``, ``choices``,
``gold``) rather than Jinja templates: lm-eval then returns the field as it is, where a rendered template whose
text is all digits would be turned into an int, and a list would round-trip through its ``repr``.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from kiln import atomic
from kiln.eval.tasks.items import Item, TaskSet
from kiln.eval.tasks.suite import task_key

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def lm_eval_name(task: str, template: str | None = None) -> str:
    """lm-eval task name: ``kiln_<task>[_<template>]`` with characters outside ``[A-Za-z0-9_-]`` as ``-``."""
    parts = ["kiln", _UNSAFE.sub("-", task_key(task))] + ([_UNSAFE.sub("-", template)] if template else [])
    return "_".join(parts)


def _task_yaml(name: str, data: Path, partial: bool) -> dict:
    metrics = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]
    fields = ({"doc_to_text": "gold", "doc_to_choice": "choices", "doc_to_target": "continuation"} if partial
              else {"doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "gold"})
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "multiple_choice", **fields, "target_delimiter": "",
            "metric_list": metrics, "metadata": {"version": 1.0}}


def _row(it: Item) -> dict:
    if it.continuation is None:
        return {"id": it.id, "context": it.context, "choices": list(it.choices), "gold": it.gold}
    return {"id": it.id, "choices": [ctx for ctx, _ in it.requests()], "continuation": it.continuation,
            "gold": it.gold}


def export_tasks(tasks: list[TaskSet], out_dir: Path, names: list[str] | None = None) -> dict[str, list[str]]:
    """Write every choice task of ``tasks`` under ``out_dir``; ``names`` = the names the tasks were asked by
    (default ``TaskSet.name``). Returns {group name: [task names]}; bpb tasks are not exported (no lm-eval
    multiple-choice equivalent) and are left out."""
    out_dir = Path(out_dir).resolve()
    groups: dict[str, list[str]] = {}
    for ts, asked in zip(tasks, names or [t.name for t in tasks], strict=True):
        if ts.kind != "choice":
            continue
        folder = out_dir / _UNSAFE.sub("-", task_key(asked))
        members = []
        for template, items in ts.templates.items():
            stem = _UNSAFE.sub("-", template)
            data = folder / f"{stem}.jsonl"
            partial = {it.continuation is not None for it in items}
            if len(partial) > 1:
                raise ValueError(f"task {ts.name}, template {template}: some items have a continuation and some "
                                 "not; an lm-eval task scores all its items one way")
            atomic.write_text(data, "".join(json.dumps(_row(it)) + "\n" for it in items))
            name = lm_eval_name(asked, template)
            atomic.write_text(folder / f"{stem}.yaml", yaml.safe_dump(_task_yaml(name, data, partial == {True}),
                                                                      sort_keys=False))
            members.append(name)
        group = lm_eval_name(asked)
        agg = [{"metric": m, "aggregation": "mean", "weight_by_size": False} for m in ("acc", "acc_norm")]
        atomic.write_text(folder / "_group.yaml", yaml.safe_dump(
            {"group": group, "task": members, "aggregate_metric_list": agg, "metadata": {"version": 1.0}},
            sort_keys=False))
        groups[group] = members
    return groups


def lm_eval_command(model_dir: Path | str, include: Path | str, tasks: list[str],
                    output: Path | str | None = None) -> list[str]:
    """The ``lm_eval`` command line scoring ``tasks`` on a ``kiln export`` folder (fp32, offline)."""
    cmd = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--include_path", str(include), "--tasks", ",".join(tasks), "--device", "cpu", "--batch_size", "8"]
    return cmd + (["--output_path", str(output)] if output else [])


def shell_command(cmd: list[str]) -> str:
    return "HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 " + " ".join(shlex.quote(c) for c in cmd)


def read_lm_eval_results(output: Path) -> dict[str, dict[str, float]]:
    """{lm-eval task name: {"acc": .., "acc_norm": ..}} from the newest ``results_*.json`` under ``output``."""
    files = sorted(Path(output).rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"{output}: no lm-eval results_*.json (did lm_eval run with --output_path?)")
    results = json.loads(files[-1].read_text())["results"]
    return {name: {m: float(r[f"{m},none"]) for m in ("acc", "acc_norm") if f"{m},none" in r}
            for name, r in results.items()}
