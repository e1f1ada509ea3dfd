"""Document-masked attention with FlexAttention block masks (Dong et al. 2024, "Flex Attention: A
Programming Model for Generating Optimized Attention Kernels").

A boolean (B, 1, T, T) mask keeps SDPA off its flash kernel and costs O(T^2) memory per row. A
FlexAttention ``BlockMask`` instead records, per 128 x 128 tile, whether the tile is empty, full or
partial; the fused kernel skips empty tiles (most of a packed row's off-diagonal blocks) and evaluates
``mask_mod`` only inside partial ones. The rules are those of :mod:`kiln.model.attention`: query i sees key j
iff both tokens are in the same segment (padding, -1, is a segment of its own, so no row is empty) and
``j <= i`` (causal), always (bidirectional), or ``j <= i`` or j in i's prefix run (prefix-LM).

Backends (``model.attention_backend``, registered in ``backends.py``): ``sdpa`` always uses the boolean mask;
``flex`` uses block masks whenever segments are given; ``auto`` uses flex on CUDA (when importable) and SDPA
elsewhere. FlexAttention has no backward on CPU, so on CPU ``flex`` is for inference and tests only.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

try:  # FlexAttention landed in torch 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

    HAS_FLEX = True
except ImportError:  # pragma: no cover - older torch
    BlockMask = None  # type: ignore[assignment,misc]
    HAS_FLEX = False


def use_flex(backend: str, device: torch.device) -> bool:
    """Whether document masks on ``device`` go through FlexAttention under ``backend`` (see ``backends.py``)."""
    from kiln.model.backends import resolve_backend

    return resolve_backend(backend, device) == "flex"


def is_block_mask(mask: Any) -> bool:
    return HAS_FLEX and isinstance(mask, BlockMask)


def document_block_mask(segments: Tensor, block_size: int = 128, *, mode: str = "causal",
                        prefix_runs: Tensor | None = None) -> BlockMask:
    """Same-segment ``BlockMask`` for per-token segment ids (B, T); one per forward pass.

    ``mode``: ``causal`` (key <= query), ``bidirectional`` (any key of the segment) or ``prefix`` (causal, plus
    the keys of the query's own prefix run: ``prefix_runs`` (B, T), -1 outside a prefix; see
    :func:`kiln.model.attention.prefix_runs`).
    """
    B, T = segments.shape
    if mode == "prefix" and prefix_runs is None:
        raise ValueError("prefix attention needs prefix_runs")

    def causal(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (q_idx >= kv_idx) & (segments[b, q_idx] == segments[b, kv_idx])

    def bidirectional(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return segments[b, q_idx] == segments[b, kv_idx]

    def prefix(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        run_k = prefix_runs[b, kv_idx]
        same_run = (prefix_runs[b, q_idx] == run_k) & (run_k >= 0)
        return ((q_idx >= kv_idx) | same_run) & (segments[b, q_idx] == segments[b, kv_idx])

    mask_mod = {"causal": causal, "bidirectional": bidirectional, "prefix": prefix}[mode]
    # H=None: one mask broadcast over heads. On CUDA the mask is built by a compiled kernel, which
    # avoids materialising B x T x T booleans; on CPU the eager path is fast enough for tests.
    return create_block_mask(mask_mod, B, None, T, T, device=segments.device, BLOCK_SIZE=block_size,
                             _compile=segments.is_cuda and not torch.compiler.is_compiling())


@functools.cache
def _compiled_flex() -> Callable[..., Tensor]:
    """flex_attention compiled once per process (eager flex is a slow reference implementation)."""
    return torch.compile(flex_attention, dynamic=False)


def flex_attend(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask) -> Tensor:
    """Attention (B, H, T, hd) under ``block_mask``; k and v may have fewer heads (GQA, no repeat)."""
    gqa = k.shape[1] != q.shape[1]
    if q.is_cuda:
        return _compiled_flex()(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    with warnings.catch_warnings():  # CPU: the unfused reference path is what we want (tests, inference)
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa)
