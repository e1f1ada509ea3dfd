"""Generate stage: sample continuations of prompts from the final checkpoint.

Prompts are ``generate.prompts``; when that is empty (the default), they come from the run's own held-out
data: the opening words (at most :data:`PROMPT_CHARS` characters, cut at a space) of the first line of the
first :data:`DEFAULT_PROMPTS` validation documents with text, so a custom corpus is prompted with its own
kind of text. An encoder (:mod:`kiln.infer.kind`) gets no samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kiln import atomic
from kiln.infer.generate import generate
from kiln.infer.kind import run_encoder_reason
from kiln.model.device import resolve_device
from kiln.model.load import load_model
from kiln.progress import log
from kiln.recipe import GenerateConfig, Recipe
from kiln.run import RunDir
from kiln.tokenizer.special import BOS, EOS, SPECIAL_IDS
from kiln.tokenizer.train import load_tokenizer

DEFAULT_PROMPTS = 2
PROMPT_CHARS = 40


def opening(text: str, max_chars: int = PROMPT_CHARS) -> str:
    """The first non-blank line of ``text``, cut to at most ``max_chars`` at a space (a longer word whole)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(line) <= max_chars:
        return line
    cut = line.rfind(" ", 0, max_chars + 1)
    return line[:cut].rstrip() if cut > 0 else line.split()[0]


def held_out_prompts(corpus_dir: Path, n: int = DEFAULT_PROMPTS) -> list[tuple[str, str]]:
    """``(prompt, document id)`` from the first ``n`` validation documents with text (the shared reader)."""
    from kiln.corpus.files import iter_text_batches

    found: list[tuple[str, str]] = []
    for batch in iter_text_batches(corpus_dir, "val", batch_rows=256, columns=("id", "text")):
        for doc_id, text in zip(batch["id"], batch["text"], strict=True):  # type: ignore[index]
            if text and (prompt := opening(text)):
                found.append((prompt, str(doc_id)))
                if len(found) == n:
                    return found
    if not found:
        raise ValueError(f"{corpus_dir}: generate.prompts is empty and the validation split has no text to take "
                         "default prompts from; set generate.prompts")
    return found


def resolve_prompts(run: RunDir, cfg: GenerateConfig) -> list[tuple[str, str | None]]:
    """``(prompt, source document id or None)``: the recipe's prompts, else prompts from held-out data."""
    if cfg.prompts:
        return [(p, None) for p in cfg.prompts]
    return list(held_out_prompts(run.stage("corpus")))


def sample(run: RunDir, cfg: GenerateConfig, device: torch.device, recipe: Recipe,
           checkpoint: Path | None = None) -> list[dict]:
    """Samples for each prompt; none for an encoder (judged by ``recipe``'s objective and the checkpoint).
    ``checkpoint``: a checkpoint folder to sample from (default: the run's final one)."""
    from kiln.artifacts import final_checkpoint

    ckpt = checkpoint or final_checkpoint(run)  # the last model stage's newest (train, or a post stage)
    model = load_model(ckpt, device).eval()
    reason = run_encoder_reason(recipe, model.config.attention)
    if reason is not None:  # an encoder has no left-to-right decoding: no samples
        log(f"generate: no samples, {reason}")
        return []
    tok = load_tokenizer(run.stage("tokenizer"))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    rows = []
    for prompt, source in resolve_prompts(run, cfg):
        ids = [SPECIAL_IDS[BOS]] + tok.encode(prompt, add_special_tokens=False).ids
        new = generate(model, ids, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                       top_p=cfg.top_p, eos_id=SPECIAL_IDS[EOS], generator=gen)
        rows.append({"prompt": prompt, "text": prompt + tok.decode(new), "new_tokens": len(new),
                     "checkpoint": str(ckpt), **({"prompt_from": f"val document {source}"} if source else {})})
    return rows


def run_generate(recipe: Recipe, run: RunDir, out: Path) -> dict:
    device = torch.device(resolve_device(recipe.train.device))
    rows = sample(run, recipe.generate, device, recipe)
    atomic.write_text(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return {"samples": len(rows), "new_tokens": sum(r["new_tokens"] for r in rows)}
