"""The ``kiln`` command: ``demo``, ``run``, one subcommand per stage, and ``recipe``.

Every command takes an optional recipe (a YAML path or a built-in name such as
``demo``) followed by dotted overrides (``train.steps=50 model.n_layer=2``). Without a
recipe, ``--run-dir`` reuses the recipe saved in that run directory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kiln.experiments.cli import ablate
from kiln.grow_cli import grow
from kiln.recipe import Recipe, RecipeError, load_recipe
from kiln.run import RunDir, RunError
from kiln.stages import ORDER, run_pipeline

HELP = (
    "kiln: turn a raw text corpus into a compact language model.\n\n"
    "Every command takes an optional recipe (a YAML file or a built-in name such as 'demo') followed by dotted "
    "overrides (train.steps=50 model.n_layer=2). Without a recipe, --run-dir reuses the run's saved recipe. "
    "'kiln recipe explain train.lr' documents any field."
)
OVERRIDES = (
    "RECIPE is a YAML file or a built-in name (kiln recipe list); with --run-dir and no RECIPE, the run's saved "
    "recipe.yaml. Any field can follow as section.field=value (YAML values): train.steps=50 model.n_layer=2 "
    "'generate.prompts=[Hello]'. kiln recipe explain FIELD documents a field (type, default, allowed values); "
    "kiln recipe show RECIPE KEY=VALUE... prints the resolved recipe."
)
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, rich_markup_mode="rich")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Args = Annotated[list[str] | None, typer.Argument(
    metavar="RECIPE KEY=VALUE...", show_default=False,
    help="optional recipe (YAML file or built-in name), then overrides section.field=value (train.steps=50)")]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="run directory (default: runs/<recipe name>)")]
ForceOpt = Annotated[list[str] | None, typer.Option("--force", help="rebuild this stage and every stage that reads it")]
ForceRunOpt = Annotated[bool, typer.Option(
    "--force-run", help="reuse a run directory that holds a run of a recipe with another name")]


def _version(value: bool) -> None:
    if value:
        from kiln import __version__

        out.print(f"kiln {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print kiln's version and exit")] = False) -> None:
    """kiln: turn a raw text corpus into a compact language model."""


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(code)


def _split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    args = list(args or [])
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _resolve(args: list[str] | None, run_dir: Path | None, default: str | None = None,
             force_run: bool = False) -> tuple[Recipe, RunDir]:
    spec, overrides = _split_args(args)
    if spec is None and run_dir is not None and (run_dir / "recipe.yaml").exists():
        spec = str(run_dir / "recipe.yaml")
    if spec is None:
        spec = default
    if spec is None:
        _fail("give a recipe (a YAML file or a built-in name such as 'demo') or --run-dir of an existing run")
    recipe = load_recipe(spec, overrides)
    return recipe, RunDir.for_recipe(recipe, run_dir, force_run=force_run)


def _warn(recipe: Recipe) -> None:
    """Print the recipe's warnings (valid settings that will not do what they suggest) on stderr."""
    if os.environ.get("RANK", "0") != "0":
        return
    for note in recipe.warnings():
        err.print(f"[bold yellow]warning:[/bold yellow] {note}", highlight=False)


def _guarded(fn, *args, **kwargs):
    """Run a pipeline call, turning kiln's expected errors into one clear line (KILN_DEBUG=1 for tracebacks)."""
    from kiln.model.load import ModelLoadError  # CheckpointError's base: any model that cannot be loaded

    try:
        return fn(*args, **kwargs)
    except (RecipeError, RunError, ModelLoadError, OSError, ValueError, FloatingPointError, MemoryError) as exc:
        if os.environ.get("KILN_DEBUG") == "1":
            raise
        _fail(str(exc))


def _pipeline(args, run_dir, until=None, force=None, default=None, force_run=False) -> tuple[Recipe, RunDir, dict]:
    recipe, run = _guarded(_resolve, args, run_dir, default, force_run)
    _warn(recipe)
    try:
        results = _guarded(run_pipeline, recipe, run, until=until, force=tuple(force or ()))
    except KeyboardInterrupt:
        _interrupted(run)
    return recipe, run, results


def interrupt_message(run: RunDir) -> str:
    """What an interrupted command leaves: the completed stages, the last checkpoint, and how to resume."""
    from kiln.train.checkpoint import latest_checkpoint

    done = []
    for name in ORDER:
        try:
            if (run.manifest(name) or {}).get("complete"):
                done.append(name)
        except RunError:
            pass
    lines = [f"interrupted; {run.root} keeps the completed stages ({', '.join(done) or 'none yet'})."]
    ckpt = latest_checkpoint(run.stage("train") / "checkpoints") if run.stage("train").is_dir() else None
    if ckpt is not None:
        lines.append(f"last checkpoint: {ckpt} (steps after it are not saved; train.checkpoint_every sets how often)")
    elif "train" not in done:
        lines.append("no training checkpoint was written yet.")
    if "train" not in done:
        what = "resume training from it" if ckpt is not None else "continue"
        lines.append(f"to {what}, rerun the same command, or: kiln train --run-dir {run.root} (its saved recipe)")
    else:
        lines.append(f"to continue, rerun the same command, or: kiln run --run-dir {run.root} (its saved recipe)")
    return "\n".join(lines)


def _interrupted(run: RunDir) -> None:
    """Ctrl-C: say what was saved and how to resume, exit 130 (the shell's code for SIGINT)."""
    if os.environ.get("RANK", "0") == "0":
        err.print(interrupt_message(run), highlight=False, markup=False)
    raise typer.Exit(130)


def _print_summary(run: RunDir) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the job
        return
    path = run.stage("eval") / "metrics.json"
    if path.exists():
        m = json.loads(path.read_text())
        if m.get("val_bpb") is None:
            out.print(f"validation: [bold]{m.get('val_objective', 'objective')} loss {m['val_loss']:.4f}[/bold] "
                      "nats/target (an encoder objective: no bits per byte)")
        else:
            out.print(f"validation: loss {m['val_loss']:.4f} nats/token, [bold]{m['val_bpb']:.4f} bits/byte[/bold] "
                      + (f"(unigram byte baseline {m['unigram_bpb']:.3f})" if m.get("unigram_bpb") is not None
                         else "(synthetic tokens: no byte baseline)"))
    report = run.stage("report") / "index.html"
    if report.exists():
        out.print(f"report: {report}")


@app.command(epilog=OVERRIDES)
def demo(args: Args = None, run_dir: RunDirOpt = None, force: ForceOpt = None, force_run: ForceRunOpt = False) -> None:
    """Run the embedded end-to-end demo (Shakespeare, modern spelling) with the built-in `demo` recipe."""
    spec, overrides = _split_args(args)
    _, run, _ = _pipeline([spec or "demo", *overrides], run_dir, force=force, force_run=force_run)
    _print_summary(run)


@app.command(epilog=OVERRIDES)
def run(args: Args = None, run_dir: RunDirOpt = None, force: ForceOpt = None, force_run: ForceRunOpt = False,
        until: Annotated[str | None, typer.Option(help=f"stop after this stage ({', '.join(ORDER)})")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="show what each stage would do, and why; "
                                              "run nothing")] = False) -> None:
    """Run every stage of a recipe; complete stages with matching fingerprints are skipped."""
    if until is not None and until not in ORDER:
        _fail(f"--until {until}: unknown stage; stages are {', '.join(ORDER)}")
    if dry_run:
        from kiln.stages import plan_status

        recipe, run_ = _guarded(_resolve, args, run_dir, None, force_run)
        table = Table("stage", "fingerprint", "action", "why")
        for row in _guarded(plan_status, recipe, run_, until, tuple(force or ())):
            table.add_row(row["stage"], row["fingerprint"], row["action"], row["why"])
        out.print(table)
        return
    _, run_, _ = _pipeline(args, run_dir, until=until, force=force, force_run=force_run)
    _print_summary(run_)


def _stage_command(name: str, doc: str):
    def command(args: Args = None, run_dir: RunDirOpt = None, force: ForceOpt = None,
                force_run: ForceRunOpt = False) -> None:
        _pipeline(args, run_dir, until=name, force=force, force_run=force_run)

    command.__doc__ = doc
    command.__name__ = name
    return command


for _name, _doc in [
    ("corpus", "Read, clean, dedup and split the sources into Parquet documents."),
    ("tokenizer", "Train the byte-level BPE tokenizer (runs earlier stages if needed)."),
    ("tokens", "Encode documents into flat token shards with a document index."),
    ("train", "Train (or resume) the model; logs to metrics.jsonl, checkpoints atomically."),
    ("report", "Write report/index.html and report/report.md for the run."),
]:
    app.command(name=_name, epilog=OVERRIDES)(_stage_command(_name, _doc))


@app.command("eval", epilog=OVERRIDES)
def eval_(args: Args = None, run_dir: RunDirOpt = None, force: ForceOpt = None, force_run: ForceRunOpt = False,
          probe: Annotated[str | None, typer.Option(
              help="also probe a classification head: edition | genre | pydocs-module | column:NAME")] = None,
          probe_steps: Annotated[int, typer.Option(help="fine-tuning steps of the probe (0 = linear only)")] = 150,
          tasks: Annotated[str | None, typer.Option(help="downstream tasks a,b (= eval.tasks): kiln recipe "
                                                    "explain eval.tasks")] = None,
          shots: Annotated[int | None, typer.Option(help="few-shot examples per prompt (= eval.task_shots)")] = None,
          items: Annotated[int | None, typer.Option(help="questions per task (= eval.task_items)")] = None,
          export_lm_eval: Annotated[Path | None, typer.Option(
              help="also write the tasks as lm-evaluation-harness tasks into DIR")] = None,
          ) -> None:
    """Validation loss, bits-per-byte and the unigram byte baseline of the final checkpoint (and --probe, --tasks)."""
    from kiln.eval.tasks.commands import export_for_run, task_lines, task_overrides

    args = [*(args or []), *task_overrides(tasks, shots, items)]
    recipe, run_, _ = _pipeline(args, run_dir, until="eval", force=force, force_run=force_run)
    _print_summary(run_)
    metrics = json.loads((run_.stage("eval") / "metrics.json").read_text())
    for line in task_lines(metrics):
        out.print(line, emoji=False, markup=False, highlight=False)
    if export_lm_eval is not None:
        cmd = _guarded(export_for_run, recipe, run_, export_lm_eval)
        out.print(f"lm-eval tasks written to {export_lm_eval}; score an exported model with:\n  {cmd}",
                  emoji=False, markup=False, highlight=False)
    if probe is not None:
        from kiln.eval.probe import ProbeConfig
        from kiln.eval.stage import run_probe

        cfg = ProbeConfig(seq_len=recipe.data.seq_len, seed=recipe.train.seed, finetune_steps=probe_steps)
        res = _guarded(run_probe, recipe, run_, probe, cfg)
        ft = f", fine-tune {res['finetune_acc']:.3f}" if "finetune_acc" in res else ""
        out.print(f"probe {probe}: linear {res['linear_acc']:.3f}{ft}, majority baseline {res['majority_acc']:.3f} "
                  f"(always '{res['majority_class']}', the test split's most common class; {res['n_test']} "
                  f"held-out windows of {res['n_test_docs']} documents; classes "
                  f"{', '.join(res['classes'])})", emoji=False, markup=False, highlight=False)


@app.command(epilog=OVERRIDES + " generate.* overrides and the options above apply to this sampling only: the run's "
              "recipe.yaml is not changed (so a later kiln report still samples as the recipe says); other overrides "
              "run the stages up to train, as kiln train would.")
def generate(args: Args = None, run_dir: RunDirOpt = None,
             prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="prompt (repeatable)")] = None,
             max_new_tokens: Annotated[int | None, typer.Option(help="tokens to generate")] = None,
             temperature: Annotated[float | None, typer.Option(help="0 = greedy")] = None,
             top_k: Annotated[int | None, typer.Option()] = None,
             top_p: Annotated[float | None, typer.Option()] = None,
             seed: Annotated[int | None, typer.Option(help="sampling seed (default: generate.seed)")] = None,
             checkpoint: Annotated[Path | None, typer.Option(
                 help="checkpoint folder to sample from (default: the run's final checkpoint)")] = None,
             force_run: ForceRunOpt = False) -> None:
    """Sample from the final checkpoint (KV cache; temperature, top-k, top-p); the run's recipe is left as it is."""
    from kiln.infer.stage import sample
    from kiln.recipe import with_overrides
    from kiln.train.trainer import resolve_device

    spec, overrides = _split_args(args)
    one_off = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] == "generate"]
    kept = [o for o in overrides if o not in one_off]
    recipe, run_ = _guarded(_resolve, ([spec] if spec else []) + kept, run_dir, None, force_run)
    from kiln.stage_graph import model_chain

    if getattr(recipe.tokens, "synthetic", None) is not None:
        _fail("generate: a run on synthetic tokens (tokens.synthetic) has no tokenizer to encode prompts with")
    # up to the last model stage (train, or a post stage); recipe.yaml is rewritten only if `kept` changed it
    _guarded(run_pipeline, recipe, run_, until=model_chain(recipe)[-1])
    if checkpoint is not None and not (checkpoint / "model.safetensors").is_file():
        _fail(f"--checkpoint {checkpoint}: not a checkpoint folder (no model.safetensors); checkpoints are "
              f"{run_.stage('train') / 'checkpoints'}/step-N")
    sampling = _guarded(with_overrides, recipe, one_off, "generate overrides").generate
    updates = {"prompts": prompt, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
               "top_p": top_p, "seed": seed}
    cfg = _guarded(sampling.model_validate,
                   {**sampling.model_dump(), **{k: v for k, v in updates.items() if v is not None}})
    for row in _guarded(sample, run_, cfg, resolve_device(recipe.train.device), recipe, checkpoint):
        out.rule(f"[bold]{row['prompt']!r}")
        out.print(row["text"], highlight=False, markup=False)


@app.command()
def export(run_: Annotated[Path, typer.Argument(metavar="RUN", help="run directory (or a name under runs/)")],
           out_dir: Annotated[Path, typer.Option("--out", help="folder to write")],
           format_: Annotated[str, typer.Option("--format", help="hf: Hugging Face transformers + tokenizer")] = "hf",
           checkpoint: Annotated[Path | None, typer.Option(help="checkpoint folder (default: the run's last)")] = None,
           dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
           head: Annotated[str, typer.Option(
               help="auto | lm (causal LM) | mlm (masked LM) | none (hidden states)")] = "auto",
           verify: Annotated[bool, typer.Option(help="compare kiln's and transformers' logits first")] = True) -> None:
    """Export a trained model (and its tokenizer) for another library: --format hf (Hugging Face transformers).

    A causal decoder that Llama matches exactly becomes a LlamaForCausalLM.

    Encoders and other decoders ship kiln's remote-code class: load them with trust_remote_code=True.
    """
    import torch

    from kiln.model.hf import ExportError
    from kiln.model.hf_remote import export_auto
    from kiln.stages import final_checkpoint
    from kiln.train.checkpoint import load_model

    if format_ != "hf":
        _fail(f"--format {format_}: unknown; formats are: hf")
    if dtype not in ("float32", "bfloat16", "float16"):
        _fail(f"--dtype {dtype}: use float32, bfloat16 or float16")
    if not run_.exists() and (Path("runs") / run_).is_dir():
        run_ = Path("runs") / run_
    run_dir = RunDir(run_)
    try:  # the newest checkpoint of the last model stage (train, or a post stage after it)
        ckpt = checkpoint or final_checkpoint(run_dir)
    except (FileNotFoundError, RunError, RecipeError):
        ckpt = None
    if ckpt is None:
        _fail(f"{run_}: no checkpoint; train the run first (or give --checkpoint)")
    model = _guarded(load_model, ckpt)
    try:
        summary = export_auto(model, out_dir, run_dir.stage("tokenizer"), dtype=getattr(torch, dtype), verify=verify,
                              head=head)
    except (ExportError, ImportError, FileNotFoundError) as exc:
        _fail(str(exc))
    arch = summary["architecture"]
    out.print(f"exported {ckpt} -> {summary['out']} ({arch}, {summary['dtype']}"
              + (f", max |logit diff| {summary['max_logit_diff']:.2e}" if "max_logit_diff" in summary else "") + ")")
    load = f"{summary['auto_class']}.from_pretrained({str(summary['out'])!r}"
    if summary["remote_code"]:
        out.print(f"{arch} is kiln's remote code (modeling_kiln.py, shipped in the folder), not a transformers "
                  f"class: load it with {load}, trust_remote_code=True)", highlight=False, markup=False)
    else:
        out.print(f"load it with {load})", highlight=False, markup=False)
    if summary["dropped"]:
        out.print(f"left out (not part of {arch}): {', '.join(summary['dropped'])}")


recipe_app = typer.Typer(help="Inspect recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("show", epilog=OVERRIDES)
def recipe_show(args: Args = None) -> None:
    """Validate a recipe with overrides and print the resolved YAML (each source shows the fields its kind reads)."""
    spec, overrides = _split_args(args)
    recipe = _guarded(load_recipe, spec, overrides)
    out.print(recipe.to_yaml(), highlight=False, markup=False)
    _warn(recipe)


@recipe_app.command("explain")
def recipe_explain(field: Annotated[str | None, typer.Argument(
        help="a field or section path: train.lr, train, corpus.sources.kind, corpus.steps.minhash")] = None) -> None:
    """Document a recipe field (type, default, allowed values, description) or list a section's fields."""
    from kiln.recipe_help import explain

    out.print(_guarded(explain, field or ""), highlight=False, markup=False)


@recipe_app.command("list")
def recipe_list() -> None:
    """List the built-in recipes."""
    from kiln.recipe import RECIPES_DIR

    table = Table("name", "path")
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        table.add_row(p.stem, str(p))
    out.print(table)


@app.command("runs")
def runs_(root: Annotated[Path, typer.Argument(help="folder holding run folders (or one run folder)")] = Path("runs"),
          as_json: Annotated[bool, typer.Option("--json", help="one JSON object per run instead of a table")] = False,
          ) -> None:
    """List the runs under ROOT (default runs/): stages complete, training step/total, headline metrics."""
    from kiln.runs_index import list_runs

    found = _guarded(list_runs, root)
    if as_json:
        for s in found:
            out.print(json.dumps({"run": str(s.path), "recipe": s.recipe, "status": s.status, "stages": s.stages,
                                  "incomplete": s.incomplete, "step": s.step, "total_steps": s.total_steps,
                                  "val_bpb": s.val_bpb, "val_loss": s.val_loss, "val_from": s.val_from,
                                  "probes": s.probes}), highlight=False, soft_wrap=True)
        return
    if not found:
        out.print(f"no runs under {root}", highlight=False)
        return
    table = Table("run", "recipe", "status", "stages complete", "train step", "headline", "updated")
    for s in found:
        table.add_row(str(s.path), s.recipe, s.status, " ".join(s.stages) or "—", s.training, s.headline,
                      s.updated_text)
    out.print(table)


app.command("ablate")(ablate)
app.command("grow")(grow)


def main() -> None:
    app(prog_name="kiln")


if __name__ == "__main__":
    sys.exit(main())
