"""KilnConfig: the shape of a kiln Transformer exported as Hugging Face remote code.

Written by ``kiln export --format hf`` next to ``modeling_kiln.py``; load with
``AutoConfig.from_pretrained(folder, trust_remote_code=True)``. Imports only ``transformers``.
Field names follow transformers where one exists; the kiln-specific ones are:

- ``attention``: ``causal`` (decoder), ``bidirectional`` (encoder) or ``prefix`` (prefix-LM: bidirectional
  inside the ``prefix`` passed to ``forward``, causal after it; causal when none is passed);
- ``norm`` and ``post_norm_layers``: the first ``post_norm_layers`` blocks are Post-LN, the rest Pre-LN
  (``pre`` = 0, ``post`` = all, ``mix`` = Mix-LN's floor(alpha * n_layer)); ``norm`` is informational;
- ``positions``: ``rope`` (rotate-half RoPE with base ``rope_base``), ``learned`` (absolute embeddings) or
  ``none``;
- ``mlm_layer_norm_eps``: the epsilon of the masked-LM head's LayerNorm.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class KilnConfig(PretrainedConfig):
    """A kiln Transformer: RMSNorm, grouped-query attention, SwiGLU, no biases (see the module docstring)."""

    model_type = "kiln"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 256,
        intermediate_size: int = 704,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        max_position_embeddings: int = 512,
        rope_base: float = 10000.0,
        rms_norm_eps: float = 1e-5,
        attention: str = "bidirectional",
        norm: str = "pre",
        post_norm_layers: int = 0,
        positions: str = "rope",
        mlm_layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        if attention not in ("causal", "bidirectional", "prefix"):
            raise ValueError(f"attention must be causal, bidirectional or prefix, got {attention!r}")
        if positions not in ("rope", "learned", "none"):
            raise ValueError(f"positions must be rope, learned or none, got {positions!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_base = rope_base
        self.rms_norm_eps = rms_norm_eps
        self.attention = attention
        self.norm = norm
        self.post_norm_layers = post_norm_layers
        self.positions = positions
        self.mlm_layer_norm_eps = mlm_layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
