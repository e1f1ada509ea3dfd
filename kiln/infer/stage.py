"""Generate stage: sample continuations of the recipe's prompts from the final checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kiln import atomic
from kiln.infer.generate import generate
from kiln.recipe import GenerateConfig, Recipe
from kiln.run import RunDir
from kiln.tokenizer.special import BOS, EOS, SPECIAL_IDS
from kiln.tokenizer.train import load_tokenizer
from kiln.train.checkpoint import latest_checkpoint, load_model
from kiln.train.trainer import resolve_device


def sample(run: RunDir, cfg: GenerateConfig, device: torch.device) -> list[dict]:
    ckpt = latest_checkpoint(run.stage("train") / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{run.stage('train')}: no checkpoint; run the train stage first")
    model = load_model(ckpt, device).eval()
    if model.config.attention == "bidirectional":  # an encoder has no left-to-right decoding: no samples
        return []
    tok = load_tokenizer(run.stage("tokenizer"))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    rows = []
    for prompt in cfg.prompts:
        ids = [SPECIAL_IDS[BOS]] + tok.encode(prompt, add_special_tokens=False).ids
        new = generate(model, ids, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                       top_p=cfg.top_p, eos_id=SPECIAL_IDS[EOS], generator=gen)
        rows.append({"prompt": prompt, "text": prompt + tok.decode(new), "new_tokens": len(new),
                     "checkpoint": str(ckpt)})
    return rows


def run_generate(recipe: Recipe, run: RunDir, out: Path) -> dict:
    device = torch.device(resolve_device(recipe.train.device))
    rows = sample(run, recipe.generate, device)
    atomic.write_text(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return {"samples": len(rows), "new_tokens": sum(r["new_tokens"] for r in rows)}
