"""``kiln grow``: depth up-scaling of a trained model into a deeper checkpoint to continue pretraining from.

    kiln grow RUN_OR_CHECKPOINT --out DIR --duplicate a:b     # Yi: layers a..b-1 repeated after b-1
    kiln grow RUN_OR_CHECKPOINT --out DIR --solar m           # SOLAR DUS: 2(n - m) layers

Papers: "Yi: Open Foundation Models", 01.AI (Young et al.), 2024, arXiv:2403.04652; "SOLAR 10.7B: Scaling Large
Language Models with Simple yet Effective Depth Up-Scaling", Kim et al., 2023, arXiv:2312.15166. The weight
operation is :mod:`kiln.model.grow`.

DIR becomes a kiln checkpoint folder (``config.json`` + ``model.safetensors``, plus ``grow.json``: the source
checkpoint, the plan and the policy) that ``train.init_from`` reads; the command prints the overrides that
continue pretraining from it (``model.n_layer=<grown depth> train.init_from=DIR``, and ``model.mix_alpha`` for
Mix-LN). Optimizer state is not carried: the continued run starts fresh AdamW moments, step count and
learning-rate schedule (with its warm-up), as Yi and SOLAR do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

OPTIMIZER_POLICY = ("fresh: the grown checkpoint carries no optimizer state; continuing with train.init_from starts "
                    "new AdamW moments, step count and learning-rate schedule (warm-up included), as Yi and SOLAR do")
GROW_HELP = (
    "Depth up-scaling (Yi, arXiv:2403.04652; SOLAR, arXiv:2312.15166): copy a trained model's layers into a deeper "
    "model, written as a checkpoint folder to continue pretraining from with train.init_from. SOURCE is a run "
    "directory (its final checkpoint), a checkpoint step-N folder or a kiln export folder. Exactly one of "
    "--duplicate a:b (layers a..b-1 repeated right after b-1; n + b - a layers) or --solar m (the parent without "
    "its last m layers, then without its first m; 2(n - m) layers). Embeddings, final norm and heads are copied. "
    f"Optimizer state: {OPTIMIZER_POLICY}. Mix-LN keeps each layer's norm placement (a new model.mix_alpha is "
    "printed) or is refused; MoE models grow when every layer is MoE or the plan keeps the moe.every pattern."
)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def resolve_source(source: Path) -> Path:
    """The checkpoint folder to grow: a run directory's final checkpoint (as ``kiln export``), else ``source``
    itself for :func:`kiln.model.load.load_model` (step-N, checkpoints/, train/, an export folder)."""
    from kiln.recipe import RecipeError
    from kiln.run import RunDir, RunError
    from kiln.stages import final_checkpoint

    if not source.exists() and (Path("runs") / source).is_dir():
        source = Path("runs") / source
    if (source / "recipe.yaml").is_file():
        try:
            return final_checkpoint(RunDir(source))
        except (FileNotFoundError, RunError, RecipeError) as exc:
            _fail(f"{source}: no checkpoint to grow ({exc}); train the run first, or give a checkpoint step-N folder")
    return source


def write_grown(model, out_dir: Path, record: dict) -> Path:
    """``config.json`` + ``model.safetensors`` + ``grow.json`` into ``out_dir``, atomically (one rename).

    The weights are laid out as :func:`kiln.model.io.save_state` writes them (a tied LM head once, under the
    embedding's name) but with one metadata key: safetensors writes a metadata map in a per-process random
    order, and growing the same parent twice must give the same bytes (``train.init_from`` fingerprints them).
    """
    from safetensors.torch import save_file

    from kiln import atomic
    from kiln.model.io import TIED_KEY

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not (model.tied and k == TIED_KEY)}
    with atomic.staged_dir(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic.write_json(tmp / "config.json", model.config.to_dict())
        atomic.write_json(tmp / "grow.json", record)
    return out_dir


def grow(source: Annotated[Path, typer.Argument(metavar="SOURCE", help="run directory (or a name under runs/), "
                                                "checkpoint step-N folder or kiln export folder")],
         out_dir: Annotated[Path, typer.Option("--out", help="checkpoint folder to write (train.init_from reads it)")],
         duplicate: Annotated[str | None, typer.Option(
             help="a:b = repeat layers a..b-1 right after layer b-1 (Yi-style middle duplication)")] = None,
         solar: Annotated[int | None, typer.Option(
             help="m = SOLAR depth up-scaling: layers 0..n-m-1, then m..n-1; 2(n - m) layers")] = None,
         force: Annotated[bool, typer.Option("--force", help="replace --out if it exists")] = False) -> None:
    from kiln.model.grow import GrowError, grow_model, parse_duplicate, recipe_overrides, solar_plan
    from kiln.model.load import ModelLoadError, load_model

    if (duplicate is None) == (solar is None):
        _fail("give exactly one of --duplicate a:b or --solar m")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        _fail(f"--out {out_dir} exists and is not empty; choose another folder or pass --force to replace it")
    ckpt = resolve_source(source)
    try:
        parent = load_model(ckpt, "cpu")
    except ModelLoadError as exc:
        _fail(str(exc))
    cfg = parent.config
    try:
        src = parse_duplicate(duplicate, cfg.n_layer) if duplicate is not None else solar_plan(cfg.n_layer, solar)
        grown = grow_model(parent, src)
    except GrowError as exc:
        _fail(f"{ckpt}: {exc}")
    plan = f"--duplicate {duplicate}" if duplicate is not None else f"--solar {solar}"
    record = {"source": str(Path(ckpt).absolute()), "plan": plan, "layers": src, "parent_n_layer": cfg.n_layer,
              "n_layer": grown.config.n_layer, "optimizer": OPTIMIZER_POLICY}
    try:
        write_grown(grown, out_dir, record)
    except OSError as exc:
        _fail(f"--out {out_dir}: cannot write ({exc})")
    gc = grown.config
    out.print(f"grew {ckpt} ({cfg.n_layer} layers, {parent.num_params():,} parameters) -> {out_dir} "
              f"({gc.n_layer} layers, {grown.num_params():,} parameters) with {plan}", highlight=False)
    out.print(f"grown layer <- parent layer: {', '.join(f'{i}<-{s}' for i, s in enumerate(src))}", highlight=False)
    shape = {k: getattr(gc, k) for k in ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "ffn_hidden",
                                         "tie_embeddings", "positions", "norm", "mix_alpha", "moe")}
    out.print("grown config: " + ", ".join(f"{k}={v}" for k, v in shape.items()), highlight=False)
    out.print(f"optimizer state: {OPTIMIZER_POLICY}", highlight=False)
    out.print("continue pretraining with the parent's recipe plus:\n  "
              + " ".join(recipe_overrides(cfg, gc, str(out_dir))), highlight=False, markup=False)


grow.__doc__ = GROW_HELP
