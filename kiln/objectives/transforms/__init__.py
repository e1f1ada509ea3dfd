"""The data side of the pretraining objectives: pure, model-free input/target construction, one file per method.

=================  ===========================================================================================
module             transform
=================  ===========================================================================================
``mlm``            BERT masking of a (B, L) batch: ratio, 80/10/10, no specials or padding (Devlin et al. 2019)
``electra``        generator masking (85/0/15), Gumbel sampling, "replaced only if different" labels (Clark 2020)
``spans``          T5 random-span noise mask and sentinel span corruption with exact inverse
``ul2``            the seven UL2 denoisers, mode tokens, mixture, decoder-only layout, inverse (Tay et al. 2022)
``fim``            FIM PSM/SPM at character or token level, inverse, horizon-length targets (Bavarian 2022, Ding 2024)
``codegen2``       per-document CLM or span corruption with sentinels moved to the end (Nijkamp et al. 2023)
``ngram_lexicon``  t-test n-gram lexicon and maximum matching (Xiao et al. 2021)
``ernie_gram``     n-gram masking to 15%, collapsed masks, coarse and fine targets, slot attention (Xiao 2021)
``mp3``            context subset, position targets, key mask (Zhai et al. 2022)
``schedule``       biphasic CLM -> MLM switch, seeded weighted objective mixture
=================  ===========================================================================================

Document-level transforms take one document's ids and a ``numpy.random.Generator``; batch-level ones (MLM,
ELECTRA, MP3) take tensors and a ``torch.Generator``. Targets use -100 for "ignore".
"""

from kiln.objectives.transforms.codegen2 import CodeGen2Config, CodeGen2Example, codegen2_invert, codegen2_transform
from kiln.objectives.transforms.common import IGNORE, NUM_SPECIAL
from kiln.objectives.transforms.electra import ELECTRA_MASKING, ELECTRAExample, electra_mask, sample_replacements
from kiln.objectives.transforms.ernie_gram import (
    ERNIEGramConfig,
    ERNIEGramExample,
    ernie_gram_invert,
    ernie_gram_mask,
    fine_slot_attention,
)
from kiln.objectives.transforms.fim import (
    FIMConfig,
    FIMExample,
    fim_document,
    fim_invert,
    fim_invert_text,
    fim_text,
    fim_tokens,
)
from kiln.objectives.transforms.mlm import MLMConfig, MLMExample, mlm_mask
from kiln.objectives.transforms.mp3 import MP3Batch, MP3Config, mp3_batch, mp3_context
from kiln.objectives.transforms.ngram_lexicon import LexiconConfig, NgramLexicon, build_lexicon, max_match
from kiln.objectives.transforms.schedule import ObjectiveMixture, biphasic_objective, switch_step
from kiln.objectives.transforms.spans import corrupt_spans, random_spans_noise_mask, uncorrupt_spans
from kiln.objectives.transforms.ul2 import DENOISERS, Denoiser, UL2Config, UL2Example, ul2_invert, ul2_transform

__all__ = [
    "DENOISERS", "ELECTRA_MASKING", "IGNORE", "NUM_SPECIAL", "CodeGen2Config", "CodeGen2Example", "Denoiser",
    "ELECTRAExample", "ERNIEGramConfig", "ERNIEGramExample", "FIMConfig", "FIMExample", "LexiconConfig",
    "MLMConfig", "MLMExample", "MP3Batch", "MP3Config", "NgramLexicon", "ObjectiveMixture", "UL2Config",
    "UL2Example", "biphasic_objective", "build_lexicon", "codegen2_invert", "codegen2_transform",
    "corrupt_spans", "electra_mask", "ernie_gram_invert", "ernie_gram_mask", "fim_document", "fim_invert",
    "fim_invert_text", "fim_text", "fim_tokens", "fine_slot_attention", "max_match", "mlm_mask", "mp3_batch",
    "mp3_context", "random_spans_noise_mask", "sample_replacements", "switch_step", "uncorrupt_spans",
    "ul2_invert", "ul2_transform",
]
