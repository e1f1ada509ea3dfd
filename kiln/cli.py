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

from kiln.recipe import Recipe, RecipeError, load_recipe
from kiln.run import RunDir, RunError
from kiln.stages import ORDER, run_pipeline

HELP = (
    "kiln: turn a raw text corpus into a compact language model.\n\n"
    "Every command takes an optional recipe (a YAML file or a built-in name such as 'demo') followed by dotted "
    "overrides (train.steps=50 model.n_layer=2). Without a recipe, --run-dir reuses the run's saved recipe."
)
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, rich_markup_mode="rich")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Args = Annotated[list[str] | None, typer.Argument(help="[RECIPE] [section.field=value ...]", show_default=False)]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="run directory (default: runs/<recipe name>)")]
ForceOpt = Annotated[list[str] | None, typer.Option("--force", help="rebuild this stage and everything after it")]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(code)


def _split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    args = list(args or [])
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _resolve(args: list[str] | None, run_dir: Path | None, default: str | None = None) -> tuple[Recipe, RunDir]:
    spec, overrides = _split_args(args)
    if spec is None and run_dir is not None and (run_dir / "recipe.yaml").exists():
        spec = str(run_dir / "recipe.yaml")
    if spec is None:
        spec = default
    if spec is None:
        _fail("give a recipe (a YAML file or a built-in name such as 'demo') or --run-dir of an existing run")
    recipe = load_recipe(spec, overrides)
    return recipe, RunDir.for_recipe(recipe, run_dir)


def _guarded(fn, *args, **kwargs):
    """Run a pipeline call, turning kiln's expected errors into one clear line (KILN_DEBUG=1 for tracebacks)."""
    from kiln.train.checkpoint import CheckpointError

    try:
        return fn(*args, **kwargs)
    except (RecipeError, RunError, CheckpointError, OSError, ValueError, FloatingPointError, MemoryError) as exc:
        if os.environ.get("KILN_DEBUG") == "1":
            raise
        _fail(str(exc))


def _pipeline(args, run_dir, until=None, force=None, default=None) -> tuple[Recipe, RunDir, dict]:
    recipe, run = _guarded(_resolve, args, run_dir, default)
    results = _guarded(run_pipeline, recipe, run, until=until, force=tuple(force or ()))
    return recipe, run, results


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
                      f"(unigram byte baseline {m['unigram_bpb']:.3f})")
    report = run.stage("report") / "index.html"
    if report.exists():
        out.print(f"report: {report}")


@app.command()
def demo(args: Args = None, run_dir: RunDirOpt = None, force: ForceOpt = None) -> None:
    """Run the embedded end-to-end demo (Shakespeare, modern spelling) with the built-in `demo` recipe."""
    spec, overrides = _split_args(args)
    _, run, _ = _pipeline([spec or "demo", *overrides], run_dir, force=force)
    _print_summary(run)


@app.command()
def run(args: Args = None, run_dir: RunDirOpt = None, force: ForceOpt = None,
        until: Annotated[str | None, typer.Option(help=f"stop after this stage ({', '.join(ORDER)})")] = None) -> None:
    """Run every stage of a recipe; complete stages with matching fingerprints are skipped."""
    if until is not None and until not in ORDER:
        _fail(f"--until {until}: unknown stage; stages are {', '.join(ORDER)}")
    _, run_, _ = _pipeline(args, run_dir, until=until, force=force)
    _print_summary(run_)


def _stage_command(name: str, doc: str):
    def command(args: Args = None, run_dir: RunDirOpt = None, force: ForceOpt = None) -> None:
        _pipeline(args, run_dir, until=name, force=force)

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
    app.command(name=_name)(_stage_command(_name, _doc))


@app.command("eval")
def eval_(args: Args = None, run_dir: RunDirOpt = None, force: ForceOpt = None,
          probe: Annotated[str | None, typer.Option(
              help="also probe a classification head: edition | genre | pydocs-module | column:NAME")] = None,
          probe_steps: Annotated[int, typer.Option(help="fine-tuning steps of the probe (0 = linear only)")] = 150,
          ) -> None:
    """Validation loss, bits-per-byte and the unigram byte baseline of the final checkpoint (and --probe)."""
    recipe, run_, _ = _pipeline(args, run_dir, until="eval", force=force)
    _print_summary(run_)
    if probe is not None:
        from kiln.eval.probe import ProbeConfig
        from kiln.eval.stage import run_probe

        cfg = ProbeConfig(seq_len=recipe.data.seq_len, seed=recipe.train.seed, finetune_steps=probe_steps)
        res = _guarded(run_probe, recipe, run_, probe, cfg)
        ft = f", fine-tune {res['finetune_acc']:.3f}" if "finetune_acc" in res else ""
        out.print(f"probe {probe}: linear {res['linear_acc']:.3f}{ft}, majority baseline {res['majority_acc']:.3f} "
                  f"({res['n_test']} held-out windows of {res['n_test_docs']} documents; classes "
                  f"{', '.join(res['classes'])})", emoji=False, markup=False, highlight=False)


@app.command()
def generate(args: Args = None, run_dir: RunDirOpt = None,
             prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="prompt (repeatable)")] = None,
             max_new_tokens: Annotated[int | None, typer.Option(help="tokens to generate")] = None,
             temperature: Annotated[float | None, typer.Option(help="0 = greedy")] = None,
             top_k: Annotated[int | None, typer.Option()] = None,
             top_p: Annotated[float | None, typer.Option()] = None) -> None:
    """Sample from the final checkpoint (KV cache; temperature, top-k, top-p)."""
    from kiln.infer.stage import sample
    from kiln.train.trainer import resolve_device

    recipe, run_ = _guarded(_resolve, args, run_dir)
    _guarded(run_pipeline, recipe, run_, until="train")
    updates = {"prompts": prompt, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
               "top_p": top_p}
    cfg = _guarded(recipe.generate.model_validate,
                   {**recipe.generate.model_dump(), **{k: v for k, v in updates.items() if v is not None}})
    for row in _guarded(sample, run_, cfg, resolve_device(recipe.train.device)):
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
    from kiln.train.checkpoint import latest_checkpoint, load_model

    if format_ != "hf":
        _fail(f"--format {format_}: unknown; formats are: hf")
    if dtype not in ("float32", "bfloat16", "float16"):
        _fail(f"--dtype {dtype}: use float32, bfloat16 or float16")
    if not run_.exists() and (Path("runs") / run_).is_dir():
        run_ = Path("runs") / run_
    run_dir = RunDir(run_)
    ckpt = checkpoint or latest_checkpoint(run_dir.stage("train") / "checkpoints")
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


@recipe_app.command("show")
def recipe_show(args: Args = None) -> None:
    """Validate a recipe with overrides and print the resolved YAML."""
    spec, overrides = _split_args(args)
    recipe = _guarded(load_recipe, spec, overrides)
    out.print(recipe.to_yaml(), highlight=False, markup=False)


@recipe_app.command("list")
def recipe_list() -> None:
    """List the built-in recipes."""
    from kiln.recipe import RECIPES_DIR

    table = Table("name", "path")
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        table.add_row(p.stem, str(p))
    out.print(table)


def main() -> None:
    app(prog_name="kiln")


if __name__ == "__main__":
    sys.exit(main())
