"""Train the ``reweight`` objective (kiln/objectives/reweight.py) for a few steps and return its train rows.

``python tests/dist_reweight.py RUN_DIR OUT STRATEGY MICRO`` in one process or under ``torchrun
--nproc_per_node=2``: RUN_DIR holds built ``tokenizer/`` and ``tokens/`` (tests/test_reweight.py makes them).
Every step reads 8 rows of 64 tokens (the global batch) in micro-batches of MICRO rows per rank; step 1 is the
warm-up, steps 2-4 are LinUpper-weighted. Rank 0 writes OUT/rows.json (the train rows of metrics.jsonl).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from kiln.recipe import load_recipe
from kiln.tokenizer.train import load_token_bytes
from kiln.train import dist
from kiln.train.trainer import Trainer, load_train_data

OVERRIDES = ["data.seq_len=64", "model.n_layer=2", "model.n_head=2", "model.d_model=32", "train.steps=4",
             "train.batch_tokens=512", "train.warmup_steps=1", "train.log_every=1", "train.eval_every=100",
             "train.eval_sequences=4", "train.checkpoint_every=100", "train.threads=1",
             "train.callbacks=[{name: 'kiln.train.reweight:ReweightStats'}]"]


def train_reweighted(run_dir: Path, out: Path, strategy: str, micro: int) -> list[dict]:
    from kiln.objectives.reweight import LossReweighted

    recipe = load_recipe("demo", [*OVERRIDES, f"train.micro_batch_size={micro}", f"parallel.strategy={strategy}"])
    token_bytes = load_token_bytes(Path(run_dir) / "tokenizer")
    data = load_train_data(recipe, Path(run_dir) / "tokens", token_bytes)
    metrics = Path(out) / "metrics.jsonl"
    objective = LossReweighted(strategy="linupper", r=0.4, warmup_steps=1)
    trainer = Trainer(recipe, data, len(token_bytes), Path(out), metrics, objective=objective)
    try:
        trainer.fit()
    finally:
        trainer.close()
    if not dist.current().is_main:
        return []
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "train"]


def main(argv: list[str]) -> None:
    run_dir, out, strategy, micro = Path(argv[0]), Path(argv[1]), argv[2], int(argv[3])
    torch.set_num_threads(1)
    rows = train_reweighted(run_dir, out, strategy, micro)
    if dist.current().is_main:
        (out / "rows.json").write_text(json.dumps(rows))
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
