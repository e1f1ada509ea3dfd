"""Run the downstream task suite on a model: accuracies per template, their mean and spread, baselines, intervals.

A choice task is scored as lm-evaluation-harness's ``multiple_choice`` (``score.py``): ``acc`` picks the choice
with the highest summed log-likelihood, ``acc_norm`` the highest log-likelihood per character of the choice.
Every template renders the same questions; the task's accuracy is the mean over templates and its
``*_template_std`` the (population) standard deviation across templates: the prompt sensitivity that
"Pre-train, Prompt, and Predict" (Liu et al. 2021) describes. The 95% interval is a percentile bootstrap over
questions (Efron & Tibshirani 1993) of the template-mean accuracy, 1000 resamples with a fixed seed. Baselines:
``chance`` = mean over questions of 1 / number of choices; ``majority`` = share of questions whose gold label
is the most common gold label (always answering the most common class). A ``bpb`` task reports bits per byte
of held-out documents (:func:`kiln.eval.lm.evaluate_lm`); a ``context_gain`` task the bits per byte of a
document after a related vs an unrelated one (:mod:`kiln.eval.tasks.context_gain`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from kiln import atomic
from kiln.eval.tasks.items import Item, TaskSet
from kiln.eval.tasks.score import Scorer

N_BOOT = 1000


def task_key(name: str) -> str:
    """The name a task's results go under (``tasks/<key>/acc`` metric paths: no ``/``); ``jsonl:PATH`` ->
    ``jsonl-<file stem>``."""
    if name.startswith("jsonl:"):
        return "jsonl-" + Path(name[len("jsonl:"):]).stem
    return name.replace("/", "-").replace(":", "-")


def _aligned(ts: TaskSet) -> tuple[list[str], list[str]]:
    """Template names and the question ids every template renders (same ids, same order), else ValueError."""
    names = list(ts.templates)
    if not names:
        raise ValueError(f"task {ts.name}: no templates (a choice task needs at least one)")
    ids = [it.id for it in ts.templates[names[0]]]
    if not ids:
        raise ValueError(f"task {ts.name}: no items")
    for t in names[1:]:
        other = [it.id for it in ts.templates[t]]
        if other != ids:
            raise ValueError(f"task {ts.name}: template '{t}' renders other questions than '{names[0]}' "
                             "(every template must render the same item ids in the same order)")
    return names, ids


def bootstrap_ci(per_item: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95% interval of the mean of ``per_item`` (resampling items)."""
    rng = np.random.default_rng(seed)
    draws = per_item[rng.integers(0, len(per_item), size=(n_boot, len(per_item)))].mean(axis=1)
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def baselines(items: list[Item]) -> dict:
    """``chance`` (mean 1/len(choices)) and ``majority`` (share of the most common gold label)."""
    counts = Counter(it.label for it in items)
    label, n = counts.most_common(1)[0]
    return {"chance": float(np.mean([1.0 / len(it.choices) for it in items])), "majority": n / len(items),
            "majority_label": label}


def score_choice(scorer: Scorer, ts: TaskSet, seed: int = 0) -> tuple[dict, list[dict]]:
    """Score a choice task: (the result of interfaces' ``tasks/<name>`` format, per-item prediction rows)."""
    names, ids = _aligned(ts)
    requests = [r for t in names for it in ts.templates[t] for r in it.requests()]
    lls = iter(scorer.loglikelihoods(requests))
    rows: list[dict] = []
    correct = {m: np.zeros((len(names), len(ids))) for m in ("acc", "acc_norm")}
    for k, t in enumerate(names):
        for j, it in enumerate(ts.templates[t]):
            if not 0 <= it.gold < len(it.choices):
                raise ValueError(f"task {ts.name}, item {it.id} ({t}): gold {it.gold} outside its "
                                 f"{len(it.choices)} choices")
            ll = np.array([next(lls) for _ in it.choices])
            pred = int(np.argmax(ll))
            pred_norm = int(np.argmax(ll / np.array(it.norm_lengths())))
            correct["acc"][k, j] = pred == it.gold
            correct["acc_norm"][k, j] = pred_norm == it.gold
            rows.append({"id": it.id, "template": t, "lls": ll.tolist(), "pred": pred, "pred_norm": pred_norm,
                         "gold": it.gold})
    res: dict = {"kind": "choice"}
    for m, c in correct.items():
        per_template = c.mean(axis=1)
        res[m] = float(per_template.mean())
        res[f"{m}_ci"] = bootstrap_ci(c.mean(axis=0), seed=seed)
        res[f"{m}_template_std"] = float(per_template.std())
    res.update(baselines(ts.templates[names[0]]))
    res.update({"n_items": len(ids), "shots": ts.shots,
                "templates": {t: {m: float(correct[m][k].mean()) for m in correct} for k, t in enumerate(names)}})
    return res, rows


def score_bpb(scorer: Scorer, ts: TaskSet, token_bytes: np.ndarray) -> dict:
    """Bits per byte of a ``bpb`` task's held-out documents."""
    if not ts.docs:
        raise ValueError(f"task {ts.name}: no documents to measure bits per byte on")
    res = scorer.bpb([text for _, text in ts.docs], token_bytes)
    return {"kind": "bpb", "bpb": res["bpb"], "n_docs": res["n_docs"], "n_bytes": res["n_bytes"]}


def score_task(scorer: Scorer, ts: TaskSet, token_bytes: np.ndarray, out_dir: Path | None = None,
               key: str | None = None, seed: int = 0) -> dict:
    """One task's result. Under ``out_dir``: ``<key>.task.json`` (how the task was built and every corpus
    document it used) and, for a choice task, the per-item predictions ``<key>.jsonl``."""
    from kiln.eval.tasks import context_gain as cg

    if ts.kind not in ("bpb", "choice", cg.KIND):
        raise ValueError(f"task {ts.name}: unknown kind {ts.kind!r} (expected choice, bpb or {cg.KIND})")
    key = key or task_key(ts.name)
    if out_dir is not None:
        atomic.write_json(Path(out_dir) / f"{key}.task.json",
                          {"task": ts.name, "info": ts.info, "doc_ids": sorted(ts.doc_ids())})
    if ts.kind == "bpb":
        return score_bpb(scorer, ts, token_bytes)
    if ts.kind == cg.KIND:
        res, rows = cg.score_context_gain(scorer, ts, token_bytes, seed=seed)  # type: ignore[arg-type]
    else:
        res, rows = score_choice(scorer, ts, seed=seed)
    if out_dir is not None:
        atomic.write_text(Path(out_dir) / f"{key}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return res


def build_tasks(recipe, run, names: list[str], max_items: int | None = None, shots: int | None = None,
                seed: int | None = None) -> list[TaskSet]:
    """Build the named tasks for a run (C's builders; defaults from ``recipe.eval``; seed = ``train.seed``)."""
    from kiln.eval.tasks.builders import build_task

    items = recipe.eval.task_items if max_items is None else max_items
    k = recipe.eval.task_shots if shots is None else shots
    return [build_task(n, recipe, run, max_items=items, shots=k, seed=0 if seed is None else seed) for n in names]


def skip_reason(recipe, model) -> str | None:
    """Why a run's model cannot be scored on tasks (an encoder, or synthetic tokens without a tokenizer)."""
    from kiln.artifacts import synthetic
    from kiln.infer.kind import run_encoder_reason

    if synthetic(recipe):
        return "not scored: tokens.synthetic has no tokenizer to encode task text with"
    reason = run_encoder_reason(recipe, model.config.attention)
    return None if reason is None else f"not scored: encoder ({reason})"


def run_tasks(recipe, run, model, device, names: list[str], out_dir: Path | None = None, *,
              max_items: int | None = None, shots: int | None = None, seed: int = 0) -> dict[str, dict]:
    """Score ``names`` (choice and bpb tasks) on ``model``: ``{task key: result}`` for ``metrics.json["tasks"]``;
    per-item predictions under ``out_dir``. An encoder gets a ``skipped`` note per task instead of scores."""
    from kiln.progress import log
    from kiln.tokenizer.train import load_token_bytes, load_tokenizer

    reason = skip_reason(recipe, model)
    if reason is not None:
        log(f"tasks: {reason}")
        return {task_key(n): {"kind": "skipped", "skipped": reason} for n in names}
    scorer = Scorer(model, load_tokenizer(run.stage("tokenizer")), device)
    token_bytes = load_token_bytes(run.stage("tokenizer"))
    results: dict[str, dict] = {}
    for name, ts in zip(names, build_tasks(recipe, run, names, max_items, shots, seed), strict=True):
        key = task_key(name)
        results[key] = score_task(scorer, ts, token_bytes, out_dir, key, seed=seed)
        r = results[key]
        if r["kind"] == "context_gain":
            from kiln.eval.tasks.context_gain import summary_line

            log(summary_line(key, r))
            continue
        log(f"task {key}: " + (f"bpb {r['bpb']:.3f}" if r["kind"] == "bpb" else
                               f"acc {r['acc']:.3f} acc_norm {r['acc_norm']:.3f} (chance {r['chance']:.3f}, "
                               f"majority {r['majority']:.3f}, {r['n_items']} items)"))
    return results
