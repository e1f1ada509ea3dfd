"""kiln's tokenizer as a ``transformers`` ``PreTrainedTokenizerFast``.

The vocabulary, merges, byte-level pre-tokenizer and decoder are kiln's ``tokenizer.json`` unchanged,
so every string encodes to the same ids. Two choices follow how kiln itself uses the tokenizer:

- kiln's documents are ``<|bos|> text <|eos|>``, but a generation prompt is ``<|bos|> text`` (the model
  must continue, not see an end). The exported post-processor is therefore ``<|bos|> $A``
  (``add_bos_token=True``, ``add_eos_token=False``, as a Llama tokenizer), which is what
  ``pipeline("text-generation")`` needs; append ``eos_token_id`` yourself to build training documents.
- The special-token registry (``kiln/tokenizer/special.py``) keeps its fixed ids: ``<|bos|>``,
  ``<|eos|>``, ``<|pad|>``, ``<|mask|>``, ``<|cls|>``, ``<|sep|>`` are the named special tokens, the rest
  (FIM, UL2 modes, sentinels, ...) are extra special tokens, all skipped by ``decode(...,
  skip_special_tokens=True)`` exactly as kiln's decoder skips them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import processors

from kiln.tokenizer.special import BOS, CLS, EOS, MASK, PAD, SEP, SPECIAL_IDS, SPECIAL_TOKENS
from kiln.tokenizer.train import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

NAMED = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "mask_token": MASK, "cls_token": CLS,
         "sep_token": SEP}


def to_hf_tokenizer(tokenizer_dir: str | Path, model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """kiln's tokenizer (``tokenizer_dir/tokenizer.json``) as a ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    tok = load_tokenizer(Path(tokenizer_dir))
    for name, idx in SPECIAL_IDS.items():
        if tok.token_to_id(name) != idx:
            raise ValueError(f"{tokenizer_dir}: special token {name} has id {tok.token_to_id(name)}, expected {idx}")
    bos = (BOS, SPECIAL_IDS[BOS])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1",
                                                       special_tokens=[bos])
    named = set(NAMED.values())
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **NAMED,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in named],
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        padding_side="left",  # batched generation continues every row from its last real token
        **kwargs,
    )


def export_tokenizer(tokenizer_dir: str | Path, out: str | Path, model_max_length: int | None = None) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``out``."""
    to_hf_tokenizer(tokenizer_dir, model_max_length).save_pretrained(str(out))
    return Path(out)
