"""The registry of special tokens every kiln tokenizer reserves.

Special tokens take the first ids of the vocabulary, in this fixed order, so that an
objective can rely on them whatever corpus the tokenizer was trained on:

=====================  =======================================================
token                  used by
=====================  =======================================================
``<|bos|>``            start of every document (all objectives)
``<|eos|>``            end of every document (all objectives)
``<|pad|>``            padding in packed rows (ignored by every loss)
``<|mask|>``           MLM / ELECTRA / ERNIE-Gram masking (Devlin et al. 2019)
``<|cls|>``            pooled classification/embedding token for encoders
``<|sep|>``            segment separator for pair inputs
``<|fim_prefix|>``     FIM prefix marker (Bavarian et al. 2022)
``<|fim_suffix|>``     FIM suffix marker
``<|fim_middle|>``     FIM middle marker
``<|eoi|>``            FIM end-of-infill (horizon-length prediction target 0)
``<|mode_r|>``         UL2 regular-denoising mode token, [NLU] (Tay et al. 2022)
``<|mode_x|>``         UL2 extreme-denoising mode token, [NLG]
``<|mode_s|>``         UL2 sequential (prefix-LM) mode token, [S2S]
``<|sentinel_0|>`` …   UL2 / T5 span-corruption sentinels (100 of them, as in T5)
=====================  =======================================================
"""

from __future__ import annotations

NUM_SENTINELS = 100

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
MASK = "<|mask|>"
CLS = "<|cls|>"
SEP = "<|sep|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
EOI = "<|eoi|>"
MODE_R = "<|mode_r|>"
MODE_X = "<|mode_x|>"
MODE_S = "<|mode_s|>"


def sentinel(i: int) -> str:
    if not 0 <= i < NUM_SENTINELS:
        raise ValueError(f"sentinel index must be in [0, {NUM_SENTINELS}), got {i}")
    return f"<|sentinel_{i}|>"


SPECIAL_TOKENS: list[str] = [
    BOS, EOS, PAD, MASK, CLS, SEP, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, EOI, MODE_R, MODE_X, MODE_S,
] + [sentinel(i) for i in range(NUM_SENTINELS)]

SPECIAL_IDS: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
