"""Train every objective for a few steps in this process group and write each one's per-step losses.

``python tests/dist_objectives.py RUN_DIR OUT_JSON STRATEGY [OBJECTIVE ...]`` (plain, one process) or under
``torchrun --nproc_per_node=2``: RUN_DIR holds a built ``tokenizer/`` and ``tokens/`` (tests/test_distributed.py
makes them); every objective trains ``STEPS`` steps of two micro-batches each from the same seed, so a 2-rank
run must give the same per-step losses as one process. Rank 0 writes ``{objective: {step: loss}}``.

``mlm_untied`` is MLM with an untied LM head (which it never uses). ``kd_test`` (tests/kd_objective.py, a
teacher loaded from ``$KILN_TEST_TEACHER``) is built in code; its entry also records where the teacher's
parameters are: ``{"losses": ..., "checks": ...}``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from kiln.recipe import load_recipe
from kiln.tokenizer.train import load_token_bytes
from kiln.train import dist
from kiln.train.trainer import Trainer, load_train_data

STEPS = 4  # clm_mlm switches from CLM to MLM after step 2; two micro-batches per step exercise no_sync
ARGS: dict[str, str] = {
    "mixture": "{weights: {clm: 1.0, mlm: 1.0, fim: 1.0}}",
    "ernie_gram": "{lexicon_size: 200, min_count: 2}",
    "reweight": "{warmup_steps: 1}",
    "salt": "{kd_steps: 2}",  # KD for 2 of the 4 steps, then plain CE: both phases on 2 ranks
}
TEACHER_OBJECTIVES = ("kd", "salt", "self_distill", "minilm")  # their teacher: the reference run's model
OVERRIDES = ["data.seq_len=64", "model.n_layer=2", "model.n_head=2", "model.d_model=32", f"train.steps={STEPS}",
             "train.batch_tokens=512", "train.micro_batch_size=4", "train.warmup_steps=1", "train.log_every=1",
             "train.eval_every=100", "train.eval_sequences=4", "train.checkpoint_every=100", "train.threads=1"]


def train_one(run_dir: Path, out: Path, objective: str, strategy: str) -> dict[int, float]:
    untied = objective == "mlm_untied"  # an encoder objective never touching its untied LM head
    overrides = [*OVERRIDES, f"train.objective={'mlm' if untied else objective}", f"parallel.strategy={strategy}"]
    if untied:
        overrides.append("model.tie_embeddings=false")
    if objective in ARGS:
        overrides.append(f"train.objective_args={ARGS[objective]}")
    if objective in TEACHER_OBJECTIVES:
        overrides.append(f"train.teacher={os.environ['KILN_TEST_TEACHER']}")
    if objective == "mp3":
        overrides.append("model.positions=none")  # MP3 permutes positions: the model must not see them
    built = None
    if objective == "kd_test":
        from kd_objective import DistillFromTeacher

        overrides[-2] = "train.objective=clm"
        built = DistillFromTeacher(os.environ["KILN_TEST_TEACHER"])
    recipe = load_recipe("demo", overrides)
    token_bytes = load_token_bytes(run_dir / "tokenizer")
    data = load_train_data(recipe, run_dir / "tokens", token_bytes)
    metrics = out / objective / "metrics.jsonl"
    trainer = Trainer(recipe, data, len(token_bytes), out / objective, metrics, objective=built)
    try:
        trainer.fit()
    finally:
        trainer.close()
    checks = teacher_checks(trainer) if built is not None else None
    if not dist.current().is_main:
        return {}
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}
    return losses if checks is None else {"losses": losses, "checks": checks}


def teacher_checks(trainer: Trainer) -> dict:
    """Where the teacher's parameters are (nowhere they would be trained) and a digest of their values."""
    teacher = trainer.objective.frozen_modules()["teacher"]
    ids = {id(p) for p in teacher.parameters()}
    return {
        "in_optimizer": any(id(p) in ids for g in trainer.optimizer.param_groups for p in g["params"]),
        "in_wrapped_module": any(id(p) in ids for p in trainer.par.root.parameters()),
        "requires_grad": any(p.requires_grad for p in teacher.parameters()),
        "training": teacher.training,
        "digest": float(sum(p.double().abs().sum() for p in teacher.parameters())),
        "device": str(next(teacher.parameters()).device),
        "in_state_dict": any(k.startswith("teacher") or "frozen" in k for k in trainer.model.state_dict()),
        "grad": any(p.grad is not None for p in teacher.parameters()),
    }


def main(argv: list[str]) -> None:
    from kiln.objectives import OBJECTIVES

    run_dir, out_json, strategy = Path(argv[0]), Path(argv[1]), argv[2]
    sys.path.insert(0, str(Path(__file__).parent))  # kd_objective
    names = argv[3:] or [*sorted(OBJECTIVES), "mlm_untied",
                         *(["kd_test"] if "KILN_TEST_TEACHER" in os.environ else [])]
    torch.set_num_threads(1)
    work = out_json.parent / f"{out_json.stem}-runs"
    losses = {name: train_one(run_dir, work, name, strategy) for name in names}
    if dist.current().is_main:
        out_json.write_text(json.dumps(losses))
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
