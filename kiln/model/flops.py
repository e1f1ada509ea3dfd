"""Parameter and FLOP accounting, device peak throughput and model FLOPs utilisation (MFU).

Training FLOPs per token (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, appendix B):

    flops_per_token = 6 * N + 12 * n_layer * d_model * seq_len

- ``N`` counts the weights that take part in a matmul for every token: the attention projections
  (q, k, v, out), the SwiGLU matrices (gate, up, down) and the LM head (vocab x d_model, tied or
  not: the output projection is a matmul even when it shares the embedding's storage). The
  embedding lookup and the norm gains are not matmuls and are left out. Each such weight costs
  2 FLOPs per token forward (multiply + add) and 4 backward (gradient wrt input and weight): 6 N.
- The attention term: QK^T and AV are each 2 * seq_len * d_model FLOPs per token and layer forward
  (n_head * head_dim = d_model), times 3 for forward + backward: 12 * n_layer * d_model * seq_len.
  As in PaLM, the full (unmasked) score matrix is counted, also for causal and document masks, so
  MFU stays comparable across runs and with published numbers.
"""

from __future__ import annotations

import torch

from kiln.model.config import TransformerConfig


def matmul_params(cfg: TransformerConfig) -> int:
    """Weights used in a matmul per token: attention + MLP in every layer, plus the LM head."""
    attn = cfg.d_model * cfg.head_dim * (2 * cfg.n_head + 2 * cfg.n_kv_head)  # q and out; k and v
    mlp = 3 * cfg.d_model * cfg.ffn_hidden
    return cfg.n_layer * (attn + mlp) + cfg.vocab_size * cfg.d_model


def flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token at context length ``seq_len``; see module doc."""
    return float(6 * matmul_params(cfg) + 12 * cfg.n_layer * cfg.d_model * seq_len)


def block_matmul_params(cfg: TransformerConfig) -> int:
    """The transformer blocks' matmul weights (attention projections + MLP): what sparse training masks."""
    return matmul_params(cfg) - cfg.vocab_size * cfg.d_model


def sparse_flops_per_token(cfg: TransformerConfig, seq_len: int, masked: int | float) -> float:
    """Training FLOPs per token when ``masked`` matmul weights are masked (exactly zero) and skipped: each
    costs 6 FLOPs per token less (SPDF's count, Thangarasa et al. 2023: linear layers scale by 1 - sparsity;
    the attention scores, embeddings and norms stay dense)."""
    if not 0 <= masked <= matmul_params(cfg):
        raise ValueError(f"masked weights must be in [0, {matmul_params(cfg)}] (the matmul weights), got {masked}")
    return flops_per_token(cfg, seq_len) - 6.0 * masked


def sparse_flops_ratio(cfg: TransformerConfig, seq_len: int, sparsity: float) -> float:
    """Dense over sparse training FLOPs per token with every block matmul weight at ``sparsity`` (e.g. SPDF's
    ~2.5x for GPT-3 XL at 75%)."""
    return flops_per_token(cfg, seq_len) / sparse_flops_per_token(cfg, seq_len, sparsity * block_matmul_params(cfg))


# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets (SXM parts where
# a card comes in several forms). A device matches the longest key contained in its name, so
# "H100 PCIe" wins over "H100" and "A100" over "A10".
PEAK_BF16_FLOPS: dict[str, float] = {
    "B200": 2250e12,
    "H200": 989e12,
    "GH200": 989e12,
    "H100": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H800": 989e12,
    "H20": 148e12,
    "A100": 312e12,
    "A800": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX 6000 Ada": 365e12,
    "A6000": 155e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,  # fp16: V100 has no bf16 tensor cores
    "T4": 65e12,  # fp16, likewise
    "MI300X": 1307e12,
    "MI250X": 383e12,
}


def peak_flops_for_name(name: str) -> float | None:
    """Peak bf16 FLOP/s for a device name such as ``torch.cuda.get_device_name()``; None if unknown."""
    matches = [key for key in PEAK_BF16_FLOPS if key.lower() in name.lower()]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def peak_flops(device: torch.device | str) -> float | None:
    """Peak bf16 FLOP/s of one accelerator; None on CPU or for a GPU not in the table."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over peak (pass the peak summed over all
    ranks when tokens_per_s is global). None when the peak is unknown."""
    if peak is None or peak <= 0:
        return None
    return tokens_per_s * flops_per_token / peak
