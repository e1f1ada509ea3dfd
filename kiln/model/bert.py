"""A BERT encoder, readable top to bottom, to import BERT-architecture checkpoints (e.g. MiniLM).

kiln's own :class:`~kiln.model.transformer.Transformer` is pre-norm RMSNorm + RoPE + SwiGLU without
biases; a BERT checkpoint needs what it lacks, so it gets this small class instead of being bent into it:

    tokens -> word + absolute position + token type embeddings -> LayerNorm -> n_layer x Block -> (B, T, d)

    Block(x) = LayerNorm(x + Attention(x)),  then  LayerNorm(x + W_out gelu(W_in x))     (post-norm)

- LayerNorm with bias (eps from the checkpoint, 1e-12 for BERT), every Linear with a bias;
- bidirectional attention; padding keys are masked out (``attention_mask`` 1 = real token, 0 = padding);
- exact (erf) GELU, learned absolute positions, token-type (segment A/B) embeddings (Devlin et al. 2019).

Sentence embeddings (:func:`embed`) are mean pooling over real tokens then L2 normalisation, as
``sentence-transformers`` computes them for all-MiniLM-L6-v2. Weights load from a ``transformers``
``BertModel`` folder (config.json + model.safetensors) with :func:`load_bert`; the name table is
:data:`HF_TO_KILN`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn


@dataclass
class BertConfig:
    """The shape of a BERT encoder (field names follow kiln's TransformerConfig)."""

    vocab_size: int
    max_seq_len: int = 512
    type_vocab_size: int = 2
    n_layer: int = 6
    n_head: int = 12
    d_model: int = 384
    ffn_hidden: int = 1536
    norm_eps: float = 1e-12
    pad_id: int = 0

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> BertConfig:
        """From a ``transformers`` BERT ``config.json``; refuses options this class does not implement."""
        problems = []
        if hf.get("model_type") != "bert":
            problems.append(f"model_type={hf.get('model_type')!r} (expected 'bert')")
        if hf.get("hidden_act", "gelu") != "gelu":
            problems.append(f"hidden_act={hf['hidden_act']!r} (only exact 'gelu')")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            problems.append(f"position_embedding_type={hf['position_embedding_type']!r} (only 'absolute')")
        if hf.get("is_decoder", False) or hf.get("add_cross_attention", False):
            problems.append("decoder / cross-attention BERT")
        if problems:
            raise ValueError("unsupported BERT checkpoint: " + "; ".join(problems))
        return cls(vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 512),
                   type_vocab_size=hf.get("type_vocab_size", 2), n_layer=hf["num_hidden_layers"],
                   n_head=hf["num_attention_heads"], d_model=hf["hidden_size"], ffn_hidden=hf["intermediate_size"],
                   norm_eps=hf.get("layer_norm_eps", 1e-12), pad_id=hf.get("pad_token_id") or 0)


class Embeddings(nn.Module):
    """word + absolute position + token type, then LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, tokens: Tensor, token_types: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.norm(self.tok_emb(tokens) + self.pos_emb(positions)[None] + self.type_emb(token_types))


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with biases; padding keys are masked."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(cfg.d_model, cfg.d_model) for _ in range(4))

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        B, T, D = x.shape
        q, k, v = (w(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    """One post-norm layer: norm(x + attn(x)), then norm(x + mlp(x))."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp_in = nn.Linear(cfg.d_model, cfg.ffn_hidden)
        self.mlp_out = nn.Linear(cfg.ffn_hidden, cfg.d_model)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        x = self.attn_norm(x + self.attn(x, key_mask))
        return self.mlp_norm(x + self.mlp_out(F.gelu(self.mlp_in(x))))


class BertEncoder(nn.Module):
    """Embeddings + ``n_layer`` post-norm blocks; returns hidden states (B, T, d_model).

    ``pooler`` is BERT's tanh layer on the first ([CLS]) token (:meth:`pooled`); sentence-transformers'
    models do not use it (mean pooling, :func:`embed`).
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.pooler = nn.Linear(config.d_model, config.d_model)

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None,
                token_types: Tensor | None = None) -> Tensor:
        if tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds max_seq_len={self.config.max_seq_len}")
        if token_types is None:
            token_types = torch.zeros_like(tokens)
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        x = self.embeddings(tokens, token_types)
        for block in self.blocks:
            x = block(x, key_mask)
        return x

    def pooled(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.pooler(hidden[:, 0]))


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average of the real tokens' hidden states (B, d)."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embed(model: BertEncoder, tokens: Tensor, attention_mask: Tensor, normalize: bool = True) -> Tensor:
    """Sentence embeddings: mean pooling, then L2 normalisation (sentence-transformers' recipe)."""
    e = mean_pool(model(tokens, attention_mask), attention_mask)
    return F.normalize(e, dim=-1) if normalize else e


# ----------------------------------------------------------------------------- import from transformers

HF_TO_KILN: list[tuple[str, str]] = [  # regex on the transformers name -> kiln name
    (r"embeddings\.word_embeddings\.", "embeddings.tok_emb."),
    (r"embeddings\.position_embeddings\.", "embeddings.pos_emb."),
    (r"embeddings\.token_type_embeddings\.", "embeddings.type_emb."),
    (r"embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.", r"blocks.\1.attn.wq."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.", r"blocks.\1.attn.wk."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.", r"blocks.\1.attn.wv."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.wo."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"blocks.\1.attn_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp_in."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp_out."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"blocks.\1.mlp_norm."),
    (r"pooler\.dense\.", "pooler."),
]
_SKIP = re.compile(r"(^|\.)position_ids$|^cls\.")  # a derived buffer; BertForPreTraining's heads (not an encoder)


def hf_key_to_kiln(key: str) -> str | None:
    key = key.removeprefix("bert.")
    for pattern, repl in HF_TO_KILN:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    return None


def load_bert(folder: str | Path) -> BertEncoder:
    """A :class:`BertEncoder` (fp32, CPU, eval) with the weights of a transformers BERT folder."""
    folder = Path(folder)
    cfg = BertConfig.from_hf(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    state, unknown = {}, []
    for key, tensor in load_file(str(folder / "model.safetensors")).items():
        name = hf_key_to_kiln(key)
        if name is not None:
            state[name] = tensor.float()
        elif not _SKIP.search(key.removeprefix("bert.")):
            unknown.append(key)
    if unknown:
        raise ValueError(f"{folder}: weights this BERT encoder has no place for: {', '.join(unknown[:8])}")
    model = BertEncoder(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]  # sentence-transformers exports may omit it
    if missing or unexpected:
        raise ValueError(f"{folder}: missing weights {missing}, unexpected {unexpected}")
    return model.eval()


def load_bert_tokenizer(folder: str | Path, max_length: int | None = None):
    """The checkpoint's own ``tokenizer.json`` (WordPiece, [CLS] … [SEP]), truncating at ``max_length``
    (default: sentence_bert_config.json's max_seq_length, else the model's) and padding to the longest."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    if max_length is None:
        st = folder / "sentence_bert_config.json"
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        max_length = (json.loads(st.read_text()).get("max_seq_length") if st.exists() else None) or hf.get(
            "max_position_embeddings", 512)
    tok.enable_truncation(max_length=max_length)
    pad = tok.padding or {}
    tok.enable_padding(pad_id=pad.get("pad_id", 0), pad_token=pad.get("pad_token", "[PAD]"))
    return tok


def encode_texts(tok, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens, attention_mask, token_types) tensors for a batch of texts."""
    enc = tok.encode_batch(texts)
    return (torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc]),
            torch.tensor([e.type_ids for e in enc]))
