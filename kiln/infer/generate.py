"""Autoregressive generation with a key/value cache.

The prompt is run through the model once (prefill), filling a preallocated cache with the keys and
values of every layer; each further step feeds only the newest token and attends to the cache.

Context limit: the model cannot see past ``max_seq_len`` tokens. A prompt longer than
``max_seq_len - 1`` is cropped from the left (its last tokens are kept, so one token can still be
generated), and generation stops once prompt + new tokens fill ``max_seq_len``. So ``generate`` may
return fewer than ``max_new_tokens`` tokens, also when it meets ``eos_id``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kiln.model.cache import KVCache
from kiln.model.heads import LanguageModel

__all__ = ["KVCache", "generate", "sample_next"]


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token from logits (V,): greedy at temperature 0, otherwise sample from
    softmax(logits / temperature) restricted to the top-k tokens, then to the nucleus: the smallest
    set of most likely tokens whose probability reaches top_p (Holtzman et al. 2019)."""
    logits = logits.float()
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        drop = before >= top_p  # the most likely token always stays (before == 0)
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens; return only the new ones.

    Stops early at ``eos_id`` (not included in the result) or when the context is full (see module
    doc). Runs in eval mode and restores the model's training flag afterwards.
    """
    if not prompt:
        raise ValueError("generate needs a non-empty prompt")
    max_len = model.config.max_seq_len
    prompt = prompt[-max(max_len - 1, 1) :]
    budget = min(max_new_tokens, max_len - len(prompt))
    if budget <= 0:
        return []

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        cache = KVCache.for_model(model, batch_size=1, max_len=len(prompt) + budget)
        tokens = torch.tensor([prompt], dtype=torch.long, device=device)
        logits = model(tokens, kv_cache=cache)[0, -1]  # prefill: the whole prompt in one forward
        out: list[int] = []
        while True:
            token = sample_next(logits, temperature, top_k, top_p, generator)
            if token == eos_id:
                break
            out.append(token)
            if len(out) == budget:
                break
            step = torch.tensor([[token]], dtype=torch.long, device=device)
            logits = model(step, kv_cache=cache)[0, -1]
        return out
    finally:
        model.train(was_training)
