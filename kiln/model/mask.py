"""Who may see whom: one :class:`AttentionMask` per forward pass, built once and handed to every layer.

Attention modes (``TransformerConfig.attention``, or per call from an objective):

- ``causal``: query i sees key j iff j <= i (a decoder; Radford et al. 2018);
- ``bidirectional``: every key (an encoder; Devlin et al. 2019);
- ``prefix``: bidirectional inside a prefix, causal after it (prefix-LM; Raffel et al. 2020, sec. 3.2.1,
  Tay et al. 2022). The prefix is given per row as a length (B,) or per token as a boolean (B, T); each
  contiguous run of prefix tokens (inside one segment) is one bidirectional block. No prefix = causal.
- ``explicit``: a (B, T, T) boolean ``mask`` given by the caller (True = may attend), e.g. MP3's context-only
  keys; it overrides the mode.

With ``segments`` every mode stays inside its packed document (padding, -1, is a segment of its own, so no
query row is empty). :meth:`AttentionMask.build` keeps the description (kind, segments, prefix, explicit mask,
query/key lengths) and realises it once for the chosen backend (``backends.py``): a boolean (B, 1, T, K)
``dense`` mask or SDPA's ``is_causal`` fast path, or a FlexAttention ``block`` mask for document-masked
batches (``flex.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kiln.model.backends import get_backend
from kiln.model.flex import document_block_mask

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

ATTENTION_MODES = ("causal", "bidirectional", "prefix")


def attention_mask(segments: Tensor | None, q_len: int, k_len: int, device: torch.device) -> tuple[Tensor | None, bool]:
    """The causal (attn_mask, is_causal) pair for SDPA.

    - no segments, square: plain causal via ``is_causal=True`` (the fast, mask-free path);
    - segments (B, T): block-diagonal causal, query i sees key j iff j <= i and both are in the same
      segment; a boolean mask of shape (B, 1, T, T). Padding (-1) forms its own segment, and every
      query sees itself, so no row is empty;
    - queries after a KV cache (k_len > q_len): query i sits at absolute position k_len - q_len + i
      and sees every key up to it; one decoded token needs no mask at all.
    """
    if segments is not None:
        if q_len != k_len:
            raise ValueError("segments cannot be combined with a non-empty KV cache")
        same = segments[:, :, None] == segments[:, None, :]
        causal = torch.ones(q_len, q_len, dtype=torch.bool, device=device).tril()
        return (same & causal).unsqueeze(1), False
    if q_len == k_len:
        return None, True
    if q_len == 1:
        return None, False
    offset = k_len - q_len
    mask = torch.arange(k_len, device=device)[None, :] <= torch.arange(offset, k_len, device=device)[:, None]
    return mask, False


def prefix_runs(prefix: Tensor, T: int, segments: Tensor | None = None) -> Tensor:
    """(B, T) int: the id of the contiguous prefix run each token belongs to, -1 outside any prefix.

    ``prefix`` is a per-row length (B,) or a per-token boolean (B, T); a run also ends at a segment change.
    """
    if prefix.dim() == 1:
        prefix = torch.arange(T, device=prefix.device)[None, :] < prefix[:, None]
    prefix = prefix.bool()
    starts = prefix.clone()
    starts[:, 1:] &= ~prefix[:, :-1] | (segments[:, 1:] != segments[:, :-1] if segments is not None else False)
    runs = torch.cumsum(starts.long(), dim=1)
    return torch.where(prefix, runs, torch.full_like(runs, -1))


def visibility(mode: str, segments: Tensor | None, prefix: Tensor | None, T: int,
               device: torch.device) -> tuple[Tensor | None, bool]:
    """(attn_mask, is_causal) for SDPA under ``mode`` with no KV cache (see the module docstring)."""
    if mode == "causal":
        return attention_mask(segments, T, T, device)
    if mode == "bidirectional":
        if segments is None:
            return None, False
        return (segments[:, :, None] == segments[:, None, :]).unsqueeze(1), False
    if mode != "prefix" or prefix is None:
        raise ValueError(f"attention must be one of {ATTENTION_MODES} (prefix needs `prefix`), got {mode!r}")
    runs = prefix_runs(prefix, T, segments)
    allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None] | (
        (runs[:, :, None] == runs[:, None, :]) & (runs[:, None, :] >= 0))
    if segments is not None:
        allowed &= segments[:, :, None] == segments[:, None, :]
    return allowed.unsqueeze(1), False


@dataclass(frozen=True)
class AttentionMask:
    """One forward pass's visibility, described and realised for one backend.

    Description: ``kind`` (causal | bidirectional | prefix | explicit), ``segments`` (B, T) or None,
    ``prefix`` (B,) lengths / (B, T) flags or None, ``explicit`` (B, T, T) or None, ``q_len`` queries after
    ``start`` cached keys (``k_len = start + q_len``). Realisation for ``backend``: ``dense`` (B, 1, T, K)
    boolean (True = may attend) or None, ``is_causal`` (SDPA's mask-free causal path), ``block`` (a
    FlexAttention ``BlockMask``) or None. Every field is a constructor argument, so wrappers that rebuild
    dataclasses (DDP moving inputs, ``dataclasses.replace``) keep it intact.
    """

    kind: str
    backend: str
    q_len: int
    start: int = 0
    segments: Tensor | None = None
    prefix: Tensor | None = None
    explicit: Tensor | None = None
    dense: Tensor | None = None
    is_causal: bool = False
    block: BlockMask | None = None

    @property
    def k_len(self) -> int:
        return self.start + self.q_len

    @classmethod
    def build(cls, mode: str, backend: str, *, q_len: int, device: torch.device, segments: Tensor | None = None,
              prefix: Tensor | None = None, explicit: Tensor | None = None, start: int = 0,
              cached: bool = False) -> AttentionMask:
        """Describe and realise the mask for ``backend`` (a concrete backend name, see ``backends.py``).

        An empty prefix is causal, so a prefix-LM evaluates and generates as a decoder when no prefix is given.
        Only causal attention decodes with a KV cache (``cached``); ``start`` is the cache length so far.
        """
        block_masks = get_backend(backend).block_masks
        if explicit is not None:  # explicit visibility, e.g. MP3: keys are context tokens only
            if cached:
                raise ValueError("an explicit attention mask cannot be combined with a KV cache")
            return cls("explicit", backend, q_len, start, segments, prefix, explicit, dense=explicit.unsqueeze(1))
        if mode == "prefix" and prefix is None:
            mode = "causal"
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        if mode != "causal" and cached:
            raise ValueError(f"{mode} attention cannot decode with a KV cache")
        if segments is not None and not cached and block_masks:
            runs = prefix_runs(prefix, q_len, segments) if mode == "prefix" else None
            return cls(mode, backend, q_len, start, segments, prefix,
                       block=document_block_mask(segments, mode=mode, prefix_runs=runs))
        if mode == "causal":
            dense, is_causal = attention_mask(segments, q_len, start + q_len, device)
        else:
            dense, is_causal = visibility(mode, segments, prefix, q_len, device)
        return cls(mode, backend, q_len, start, segments, prefix, dense=dense, is_causal=is_causal)

    def materialize(self, device: torch.device) -> Tensor | None:
        """A boolean mask broadcastable to (B, 1, T, K), or None when every key is visible (eager attention)."""
        if self.dense is not None:
            return self.dense
        if self.is_causal:
            q = torch.arange(self.start, self.k_len, device=device)
            return (torch.arange(self.k_len, device=device)[None, :] <= q[:, None])[None, None]
        if self.block is not None:
            raise ValueError("a FlexAttention block mask has no dense form here; build the mask for eager attention")
        return None
