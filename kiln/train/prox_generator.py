"""Training the learned ProX program generator (Zhou et al. 2024, "Programming Every Example", arXiv 2409.17115).

Lives under ``kiln.train`` because the corpus layer never trains a model (docs/architecture.md): the tokenizer,
the training pairs and the generator that decodes programs are in :mod:`kiln.corpus.prox.learned` and
:mod:`kiln.corpus.prox.pairs`; this module fits a small kiln causal LM on "chunk -> program" sequences with the
loss on the program tokens only (a prompt-masked loss, which no trainer objective offers, so a short loop with
kiln's optimizer and schedule), and saves it where :class:`~kiln.corpus.prox.learned.LearnedGenerator` loads it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from kiln.corpus.prox.learned import FORMAT, META_FILE, PAD, LearnedConfig, encode_pairs
from kiln.corpus.prox.pairs import Pair


def train_generator(pairs: Sequence[Pair], out_dir: str | Path, cfg: LearnedConfig | None = None,
                    log_every: int = 0) -> list[float]:
    """Train a generator on ``pairs`` and save it to ``out_dir``; returns the loss of every step.

    Deterministic for a given ``cfg.seed`` and pair list (CPU): the model's init, the batch draws and the
    (single-threaded when ``cfg.threads`` = 1) kernels are fixed.
    """
    import torch
    import torch.nn.functional as F

    from kiln.model.config import TransformerConfig
    from kiln.model.io import save_pretrained
    from kiln.recipe import TrainConfig
    from kiln.train.optim import build_optimizer, lr_at, set_lr

    cfg = cfg or LearnedConfig()
    if not pairs:
        raise ValueError("train_generator needs at least one (chunk, program) pair")
    tok = cfg.tokenizer()
    data = encode_pairs(pairs, tok)
    longest = max(len(t) - n for t, n in data)
    if longest > cfg.max_new_tokens:
        raise ValueError(f"a target program takes {longest} tokens, more than max_new_tokens={cfg.max_new_tokens}: "
                         "raise max_new_tokens or use fewer lines per chunk")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model_cfg = TransformerConfig(vocab_size=tok.vocab_size, max_seq_len=tok.max_prompt + cfg.max_new_tokens,
                                  n_layer=cfg.n_layer, n_head=cfg.n_head, d_model=cfg.d_model,
                                  positions=cfg.positions, attention_backend="sdpa")
    model = model_cfg.build()
    model.init_weights()
    model.train()
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed, device="cpu")
    opt = build_optimizer(model, tcfg, torch.device("cpu"))
    rng = random.Random(f"{cfg.seed}:prox-learned:batches")
    order: list[int] = []
    losses = []
    for step in range(cfg.steps):
        batch = []
        for _ in range(min(cfg.batch_size, len(data))):
            if not order:
                order = list(range(len(data)))
                rng.shuffle(order)
            batch.append(data[order.pop()])
        width = max(len(t) for t, _ in batch)
        tokens = torch.full((len(batch), width), PAD, dtype=torch.long)
        targets = torch.full((len(batch), width), -100, dtype=torch.long)
        for r, (seq, n_prompt) in enumerate(batch):
            tokens[r, : len(seq)] = torch.tensor(seq)
            # position j predicts token j + 1: supervise the program tokens (and EOS) only
            targets[r, n_prompt - 1 : len(seq) - 1] = torch.tensor(seq[n_prompt:])
        set_lr(opt, lr_at(step, tcfg))
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            print(f"prox-learned step {step}: loss {losses[-1]:.4f}", flush=True)
    out = Path(out_dir)
    save_pretrained(model, out)
    meta = {"format": FORMAT, **{k: v for k, v in asdict(cfg).items()
                                 if k in ("line_width", "max_chunk_lines", "max_chunk_chars", "max_new_tokens")}}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return losses
