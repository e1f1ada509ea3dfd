"""Eval stage: validation loss, bits-per-byte and the unigram byte baseline for the final checkpoint; the
downstream tasks of ``eval.tasks`` (``tasks/suite.py``: ``metrics["tasks"]``, per-item predictions in
``eval/tasks/<task>.jsonl``), the probes of ``eval.probes`` and of ``kiln eval --probe TASK`` (``probe.py``).

An encoder (:mod:`kiln.infer.kind`: bidirectional attention, or an encoder objective such as MLM, ELECTRA,
ERNIE-Gram, MP3, CLM -> MLM) has no meaningful LM-head bits per byte: its validation loss is the objective's own
(``objective_val.py``), ``val_bpb`` is null and ``val_objective`` names the objective."""

from __future__ import annotations

from pathlib import Path

from kiln import atomic
from kiln.data.domains import load_doc_domains
from kiln.data.loader import iter_eval_batches
from kiln.data.packing import pack
from kiln.data.shards import open_split
from kiln.eval.lm import autocast_for, evaluate_lm, unigram_bpb
from kiln.eval.objective_val import objective_val_loss
from kiln.eval.probe import ProbeConfig, probe_model
from kiln.eval.probe_tasks import run_task
from kiln.infer.kind import run_encoder_reason
from kiln.model.device import resolve_device, resolve_precision
from kiln.model.load import load_model
from kiln.objectives import build_objective
from kiln.recipe import Recipe
from kiln.run import RunDir
from kiln.tokenizer.special import PAD, SPECIAL_IDS
from kiln.tokenizer.train import load_token_bytes


def final_checkpoint(run: RunDir, recipe: Recipe | None = None) -> Path:
    """The newest checkpoint of the run's last model stage (train, or a post stage after it)."""
    from kiln.artifacts import final_checkpoint as newest

    return newest(run, recipe)


def run_eval(recipe: Recipe, run: RunDir, out: Path) -> dict:
    from kiln.artifacts import synthetic, token_bytes_dir

    device = resolve_device(recipe.train.device)
    precision = resolve_precision(recipe.train.precision, device)
    ckpt = final_checkpoint(run, recipe)
    model = load_model(ckpt, device)
    val = open_split(run.stage("tokens"), "val")
    packing = pack(val.doc_lengths(), recipe.data.seq_len, recipe.data.packing)
    n_rows = packing.n_rows if recipe.eval.max_sequences is None else min(packing.n_rows, recipe.eval.max_sequences)
    mb = recipe.train.micro_batch_size
    domains = load_doc_domains(val) if recipe.train.route_by_domain else None
    batches = iter_eval_batches(val, packing, SPECIAL_IDS[PAD], recipe.data.attention, mb, max_rows=n_rows,
                                doc_domains=domains)
    objective = build_objective(recipe.train.objective, **recipe.train.objective_args)
    if run_encoder_reason(recipe, model.config.attention) is None:  # the rule generate uses too
        res = evaluate_lm(model, batches, load_token_bytes(token_bytes_dir(recipe, run)), device, precision,
                          total=-(-n_rows // mb), desc="eval")
        own: dict = {"val_bpb": res["bpb"], "n_tokens": res["n_targets"], "n_bytes": res["n_bytes"]}
    else:
        objective.configure(vocab_size=model.config.vocab_size, seq_len=recipe.data.seq_len,
                            total_steps=recipe.train.steps, seed=recipe.train.seed)
        objective.fit(open_split(run.stage("tokens"), "train"))
        with autocast_for(device, precision):
            res = objective_val_loss(model, objective, batches, device)
        own = {"val_bpb": None, "val_objective": objective.name, "n_targets": res["n_targets"],
               **{k: v for k, v in res.items() if k.endswith("_per_target")}}
    corpus = run.stage("corpus")
    metrics = {
        "val_loss": res["loss"],
        **own,
        "unigram_bpb": unigram_bpb(corpus) if not synthetic(recipe)  # synthetic: the generator's symbol baseline
        else (run.manifest("tokens") or {}).get("stats", {}).get("unigram_bpb"),
        "checkpoint": str(ckpt),
        "sequences": n_rows,
    }
    if recipe.eval.tasks:  # fixed seed 0: every variant and seed of a sweep sees the same questions
        from kiln.eval.tasks.suite import run_tasks

        metrics["tasks"] = run_tasks(recipe, run, model, device, list(recipe.eval.tasks), out / "tasks",
                                     max_items=recipe.eval.task_items, shots=recipe.eval.task_shots, seed=0)
    if recipe.eval.probes:
        keys = ("linear_acc", "finetune_acc", "majority_acc")
        metrics["probes"] = {p: {k: v for k, v in run_probe(recipe, run, p, out=out).items() if k in keys}
                             for p in recipe.eval.probes}
    atomic.write_json(out / "metrics.json", metrics)
    return metrics


def run_probe(recipe: Recipe, run: RunDir, task: str, cfg: ProbeConfig | None = None,
              finetuned: bool = True, out: Path | None = None) -> dict:
    """``kiln eval --probe TASK`` (and ``eval.probes``): probe the final checkpoint on a metadata task; writes
    probe-TASK.json to ``out`` (default: the run's eval folder)."""
    cfg = cfg or ProbeConfig(seq_len=recipe.data.seq_len, seed=recipe.train.seed)
    device = resolve_device(recipe.train.device)
    ckpt = final_checkpoint(run)
    train_docs, test_docs, encode = run_task(run, task, cfg.test_fraction, cfg.seed)
    res = {"task": task, "checkpoint": str(ckpt),
           **probe_model(load_model(ckpt, device), train_docs, test_docs, encode, cfg, device, finetuned)}
    name = task.replace(":", "-").replace("/", "-")
    atomic.write_json((out or run.stage("eval")) / f"probe-{name}.json", res)
    return res
