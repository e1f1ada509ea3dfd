"""The recipe: one typed, validated configuration tree for a whole kiln run.

A recipe is loaded from YAML, patched with dotted command-line overrides
(``train.steps=50 model.n_layer=2``) and validated before anything runs. Every
stage reads only its own section (plus the artifacts of earlier stages), and the
section's canonical JSON is part of the stage fingerprint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from kiln.model.presets import PRESET_NAMES, resolve_preset
from kiln.recipe_data import (  # noqa: F401 - re-exported: the data-side sections
    N_RESERVED_IDS,
    SOURCE_FIELD_KINDS,
    CorpusConfig,
    MarkovSource,
    RecallSource,
    SourceConfig,
    SyntheticSource,
    TokenizerConfig,
    TokensConfig,
)
from kiln.section import INPUT_MODEL, NOT_FINGERPRINTED, Section, fingerprint_of  # noqa: F401 - re-exported: Section, fingerprint_of

RECIPES_DIR = Path(__file__).parent / "recipes"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the field path."""



# ----------------------------------------------------------------------------- batches / model


class DataConfig(Section):
    seq_len: int = Field(256, ge=8)
    packing: Literal["best_fit", "concat"] = "best_fit"
    attention: Literal["document", "causal"] = Field(
        "document",
        description="document: block-diagonal causal mask, positions restart; causal: attend across documents",
    )
    seed: int = 0


class RopeScalingConfig(Section):
    """``model.rope_scaling`` (kiln/model/config.py ``rope_theta``): ``base`` multiplies the RoPE base by
    factor^(d/(d-2)) (NTK-aware; exported to Hugging Face as ``rope_theta``), ``linear`` divides positions by
    the factor (position interpolation; not exportable)."""

    type: Literal["base", "linear"]
    factor: float = Field(gt=0)


class MoEConfig(Section):
    """``model.moe`` (kiln/model/moe.py): top-k routed SwiGLU experts replace the MLP of every ``every``-th layer;
    the ``moe_aux`` train callback adds the balancing and z losses and logs expert utilisation."""

    n_experts: int = Field(4, ge=1)
    top_k: int = Field(2, ge=1, description="experts per token; their softmax weights renormalised to sum 1")
    every: int = Field(1, ge=1, description="layer i is a mixture of experts when (i + 1) % every == 0")
    expert_hidden: int | None = Field(None, ge=1, description="each expert's SwiGLU width; None = ffn_hidden")
    aux_loss_weight: float = Field(0.01, ge=0, description="Switch load-balancing loss weight (1 at balance)")
    z_loss_weight: float = Field(0.001, ge=0, description="ST-MoE router z-loss weight")
    capacity_factor: float | None = Field(
        None, gt=0, description="None: no token is ever dropped; c: in training, at most ceil(c * N * k / E) "
        "assignments per expert per micro-batch, the rest dropped (logged as moe_dropped)")

    @model_validator(mode="after")
    def _k_fits(self) -> MoEConfig:
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= n_experts ({self.n_experts})")
        return self


class ModelConfig(Section):
    preset: Literal[PRESET_NAMES] | None = Field(  # type: ignore[valid-type]
        None, exclude=True, json_schema_extra=NOT_FINGERPRINTED,
        description="a Well-Read Students size (kiln/model/presets.py, Turc et al. 2019): bert-L{L}-H{H}, L in "
        "2,4,...,12 and H in 128,256,512,768 (or bert-tiny/mini/small/medium/base); sets n_layer = L, d_model = H, "
        "n_head = H/64 and ffn_hidden = the SwiGLU width parameter-matched to BERT's 4H GELU MLP (8H/3 rounded up "
        "to 64). A field also given must equal the preset's value (else an error). Resolved at load: saved "
        "recipes and fingerprints carry the four fields, not the name")
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: int | None = Field(None, ge=1, description="grouped-query attention; None = n_head")
    d_model: int = Field(256, ge=8)
    ffn_hidden: int | None = Field(None, ge=1, description="SwiGLU hidden width; None = 8/3 d_model rounded to 64")
    rope_base: float = Field(10000.0, gt=0)
    tie_embeddings: bool = True
    norm_eps: float = Field(1e-5, gt=0)
    init_std: float = Field(0.02, gt=0)
    attention_backend: Literal["auto", "sdpa", "flex", "eager"] = Field(
        "auto", description="attention kernel (kiln/model/backends.py): auto = FlexAttention document masks on "
        "CUDA, boolean-mask SDPA elsewhere; eager = plain softmax (the one that returns attention maps)")
    attention: Literal["causal", "bidirectional", "prefix"] = Field(
        "causal", description="default mask: decoder, encoder, or prefix-LM (objectives may pass their own)")
    norm: Literal["pre", "post", "mix"] = Field(
        "pre", description="norm placement; mix = Mix-LN: the first floor(mix_alpha * n_layer) layers post-norm")
    mix_alpha: float = Field(0.25, ge=0, le=1)
    positions: Literal["rope", "learned", "none"] = Field(
        "rope", description="rope, learned absolute embeddings, or none (MP3)")
    rope_scaling: RopeScalingConfig | None = Field(
        None, description="RoPE scaling: base = NTK-aware base change, linear = position interpolation")
    masked_heads: list[tuple[int, int]] = Field(
        default_factory=list, description="(layer, head) pairs whose attention output is zeroed in every forward")
    moe: MoEConfig | None = Field(None, description="mixture-of-experts MLPs (kiln/model/moe.py); None = dense")

    @model_validator(mode="before")
    @classmethod
    def _preset_applied(cls, data: Any) -> Any:
        """``model.preset`` fills n_layer / d_model / n_head / ffn_hidden (kiln/model/presets.py)."""
        return resolve_preset(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        bad = [p for p in self.masked_heads if not (0 <= p[0] < self.n_layer and 0 <= p[1] < self.n_head)]
        if bad:
            raise ValueError(f"masked_heads {bad}: layer must be < n_layer ({self.n_layer}), head < n_head "
                             f"({self.n_head})")
        if self.rope_scaling is not None and self.positions != "rope":
            raise ValueError(f"rope_scaling needs positions: rope (positions is {self.positions!r})")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({kv})")
        if (self.d_model // self.n_head) % 2 and self.positions == "rope":
            raise ValueError("head dimension d_model/n_head must be even for RoPE")
        if self.moe is not None and self.moe.every > self.n_layer:
            raise ValueError(f"moe.every ({self.moe.every}) must be <= n_layer ({self.n_layer})")
        return self


# ----------------------------------------------------------------------------- training


class TrainConfig(Section):
    objective: Literal["clm", "mlm", "electra", "fim", "ul2", "codegen2", "mp3", "ernie_gram", "clm_mlm",
                       "mixture", "kd", "salt", "self_distill", "minilm", "reweight", "ernie3"] = "clm"
    objective_args: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the objective's class (kiln/objectives/)")
    teacher: str | None = Field(
        None, json_schema_extra=INPUT_MODEL, description="the frozen teacher of a distillation objective (kd, "
        "salt, self_distill, minilm; alone or in a mixture): a kiln checkpoint, run directory or `kiln export` "
        "folder, or minilm (the packaged all-MiniLM-L6-v2); its vocabulary must equal the student's "
        "(kiln/objectives/teacher.py)")
    route_by_domain: bool = Field(
        False, description="enforced routing: every token goes to the expert of its document's domain "
        "(tokens.domain_field; model.moe.n_experts = the number of domains); the router learns to predict the "
        "domain for use without metadata (kiln/train/domain_routing.py)")
    steps: int = Field(1000, ge=1)
    batch_tokens: int = Field(16384, ge=1, description="global batch size in tokens per optimizer step")
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward pass (per rank)")
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(50, ge=0, description="linear warm-up; capped at steps // 2 (with a warning) so a "
                              "short run still decays")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD: final fraction of steps spent decaying")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all cores)")
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(200, ge=1)
    eval_sequences: int | None = Field(64, ge=1, description="validation sequences used during training; None = all")
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    loss_chunk_tokens: int | None = Field(
        None, ge=1, description="LM loss over chunks of this many tokens, never the full logits; None = full")
    stop_at_val_bpb: float | None = Field(
        None, gt=0, description="stop (and checkpoint) at the first validation with val_bpb <= this")
    on_nonfinite: Literal["stop", "skip", "rollback"] = Field(
        "stop", description="a NaN/inf loss or gradient (or a loss spike): stop with an error, skip the batch "
        "without an optimizer step, or roll back to the last checkpoint (kiln/train/guard.py)")
    rollback_lr_factor: float = Field(1.0, gt=0, le=1, description="rollback: multiply the LR by this each time")
    spike_factor: float | None = Field(
        None, gt=1, description="loss > this x the median of the last spike_window accepted losses counts as a "
        "fault (handled as on_nonfinite); None = no spike guard")
    spike_window: int = Field(32, ge=2, description="accepted losses the spike guard's median is taken over")
    max_faults: int = Field(10, ge=0, description="skips + rollbacks allowed in one run before stopping")
    callbacks: list[dict[str, Any]] = Field(
        default_factory=list, description="trainer callbacks, in order: [{name: param_norm}, {name: magnitude_mask, "
        "sparsity: 0.5}]; a registered name or package.module:Class (kiln/train/callbacks.py)")
    init_from: str | None = Field(
        None, description="start the weights from this kiln checkpoint, run directory or export (same "
        "architecture as the model section); None = random init")
    loggers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, json_schema_extra=NOT_FINGERPRINTED, description="metric loggers fed every train "
        "and validation row: tensorboard (<run>/train/tensorboard), wandb (<run>/train/wandb, offline unless "
        "WANDB_MODE says otherwise); pip install 'kiln[loggers]' (kiln/train/loggers.py)")

    @field_validator("objective_args")
    @classmethod
    def _objective_args_fit(cls, args: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from kiln.objectives.spec import check_objective_args  # torch-free

        if "objective" in info.data:  # else the objective itself was invalid and is reported
            check_objective_args(info.data["objective"], args, where="")
        return args

    @field_validator("callbacks")
    @classmethod
    def _callbacks_resolve(cls, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from kiln.train.callbacks import validate_spec  # torch-free

        for i, spec in enumerate(specs):
            validate_spec(spec, where=f".{i}")
        return specs

    @model_validator(mode="after")
    def _teacher_routed(self) -> TrainConfig:
        """``train.teacher`` into the arguments of every distillation objective (kiln/objectives/distill_spec.py)."""
        from kiln.objectives.distill_spec import route_teacher  # torch-free

        route_teacher(self.objective, self.objective_args, self.teacher)
        return self


class ParallelConfig(Section):
    """How training runs, not what it computes (kiln/train/parallel.py); not part of any stage fingerprint,
    so a run may resume with another strategy, world size, compile or checkpointing setting."""

    strategy: Literal["auto", "single", "ddp", "fsdp"] = Field(
        "auto", description="auto: single at world size 1, else ddp below 1e9 parameters, else fsdp (FSDP2)")
    compile: bool = Field(
        False, description="torch.compile each transformer block, and the LM loss (head + cross-entropy)")
    activation_checkpointing: Literal["none", "full", "selective"] = Field(
        "none", description="full: recompute every block in backward; selective: every other block")


# ----------------------------------------------------------------------------- eval / generate / report


class EvalConfig(Section):
    max_sequences: int | None = Field(None, ge=1, description="cap on validation sequences; None = whole split")
    tasks: list[str] = Field(default_factory=list, description="downstream tasks scored by log-likelihood "
                             "(kiln/eval/tasks): built-in names, bpb-* held-out sets, or jsonl:PATH")
    task_items: int = Field(200, ge=1, description="questions per task (documents per bpb task)")
    task_shots: int = Field(0, ge=0, description="few-shot examples in each task prompt")
    probes: list[str] = Field(default_factory=list, description="probe tasks run by the eval stage "
                              "(edition | genre | pydocs-module | column:NAME), as kiln eval --probe")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        from kiln.eval.tasks.builders import JSONL_PREFIX, TASKS, task_names_help

        bad = [n for n in v if n not in TASKS and not (n.startswith(JSONL_PREFIX) and n != JSONL_PREFIX)]
        if bad:
            raise ValueError(f"unknown task {bad[0]!r}; expected one of {task_names_help()}")
        return v

    @field_validator("probes")
    @classmethod
    def _known_probes(cls, v: list[str]) -> list[str]:
        from kiln.eval.probe_tasks import task_labeller

        for name in v:
            task_labeller(name)  # ValueError naming the probe and the known ones
        return v


class GenerateConfig(Section):
    prompts: list[str] = Field(default_factory=list, description="prompts to continue; empty = the opening "
                               "words of the first two validation documents (the run's own held-out text)")
    max_new_tokens: int = Field(120, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_k: int | None = Field(50, ge=1)
    top_p: float | None = Field(0.95, gt=0, le=1)
    seed: int = 0


class ReportConfig(Section):
    samples: int = Field(3, ge=0, description="generated samples shown in the report")


class Recipe(Section):
    name: str = Field("run", pattern=NAME_PATTERN, description="the run folder is runs/<name>; default: the recipe "
                      "file's stem (recipes/curation.yaml -> curation), 'run' without a file")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    tokens: TokensConfig = Field(default_factory=TokensConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    def to_yaml(self) -> str:
        """The resolved recipe as YAML; each source shows only the fields its kind reads (loads back equal)."""
        data = self.model_dump(mode="json")
        data["corpus"]["sources"] = [src.shown() for src in self.corpus.sources]
        return yaml.safe_dump(data, sort_keys=False)

    def warnings(self) -> list[str]:
        """Settings that are valid but will not do what they suggest (printed by the CLI before a run)."""
        from kiln.train.optim import schedule_warnings

        notes = [f"corpus.sources.{i}.{f} is set but a '{src.kind}' source does not read it (used by "
                 f"{', '.join(SOURCE_FIELD_KINDS[f])}); it is ignored"
                 for i, src in enumerate(self.corpus.sources) for f in src.unused_fields() if f in src.shown()]
        return notes + schedule_warnings(self.train)


# ----------------------------------------------------------------------------- loading


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid recipe {origin}:"]
    for e in err.errors():
        loc = list(e["loc"])
        # a discriminated union (corpus.steps) puts the step name after the index: steps.2.length.x -> steps.2.x
        loc = [p for i, p in enumerate(loc) if not (i >= 2 and loc[i - 2] == "steps" and isinstance(loc[i - 1], int))]
        path = ".".join(str(p) for p in loc) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(".") and ": " in msg:  # a validator naming a key inside its field: ".key: message"
            sub, msg = msg.split(": ", 1)
            path += sub
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f", got {got!r}"
        lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def apply_override(tree: dict, dotted: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in dotted:
        raise RecipeError(f"override '{dotted}': expected KEY=VALUE, e.g. train.steps=50")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override '{dotted}': {'.'.join(parts[: i + 1])} is not a valid list index")
            node = node[int(part)]
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise RecipeError(f"override '{dotted}': {'.'.join(parts[: i + 1])} is not a section")
    value = yaml.safe_load(raw) if raw.strip() else ""
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"override '{dotted}': {key} is not a valid list index")
        node[int(last)] = value
    else:
        node[last] = value


def resolve_recipe_path(spec: str | Path) -> Path:
    """A recipe argument is a YAML path or the name of a built-in recipe (``demo``)."""
    p = Path(spec)
    if p.exists():
        return p
    builtin = RECIPES_DIR / f"{spec}.yaml"
    if builtin.exists():
        return builtin
    names = ", ".join(sorted(q.stem for q in RECIPES_DIR.glob("*.yaml")))
    raise RecipeError(f"recipe '{spec}' not found: not a file, and not a built-in recipe ({names})")


def with_overrides(recipe: Recipe, overrides: list[str] | tuple[str, ...], origin: str = "overrides") -> Recipe:
    """A validated copy of ``recipe`` with dotted overrides applied (``recipe`` itself is unchanged)."""
    tree = recipe.model_dump(mode="json")
    return _validated(tree, overrides, origin)


def _validated(tree: dict, overrides: list[str] | tuple[str, ...], origin: str) -> Recipe:
    """``tree`` with dotted ``overrides`` applied, validated; errors name ``origin`` and each field's path."""
    for ov in overrides:
        apply_override(tree, ov)
    try:
        return Recipe.model_validate(tree)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, origin)) from None


def default_name(path: Path) -> str:
    """A recipe without ``name:`` is named after its file (``my-corpus.yaml`` -> ``my-corpus``), so every
    recipe file gets its own run folder ``runs/<name>``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).lstrip("._-")
    return name or "run"


def load_recipe(spec: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a recipe file (or built-in name), apply overrides, validate. Raises RecipeError."""
    tree: dict = {}
    origin = "<defaults>"
    if spec is not None:
        path = resolve_recipe_path(spec)
        origin = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise RecipeError(f"{path}: expected a mapping of sections at the top level")
        tree = loaded or {}
        tree.setdefault("name", default_name(path))
    return _validated(tree, overrides, origin)
