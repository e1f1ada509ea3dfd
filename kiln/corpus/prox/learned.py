"""A learned ProX program generator: a small kiln causal LM that reads a chunk and writes its program.

ProX (Zhou et al. 2024, "Programming Every Example: Lifting Pre-training Data Quality Like Experts at Scale",
arXiv 2409.17115, sec. 2.3 and App. A.1) fine-tunes a 0.3B LM on chunk programs annotated by a large model and
decodes a program per chunk greedily. kiln's version, at CPU scale:

- **Pairs** come from :mod:`kiln.corpus.prox.pairs` (planted noise, known ground truth).
- **Tokenizer** (:class:`ProgramTokenizer`): bytes for the chunk's text; one token per chunk-relative line
  index; a filler; one token per fixed piece of program syntax (``remove_lines(line_start=``, ``, line_end=``, ``)``,
  ``skip_chunk()``); ``SEP`` ends the prompt, ``EOS`` ends the program. A chunk is shown line by line as
  the line's first ``line_width`` bytes, padded to that width, followed by its index token (the token closes
  the line, so the position that names a line has read it, and every line has the same length, so "my line"
  is a fixed span of positions). With learned absolute position embeddings (the default; kiln's
  ``positions: learned``) a position alone tells which line of the chunk it belongs to, so the model can
  copy a line's index from wherever it sees noise; with RoPE it learned far more slowly in CPU-minute
  budgets (held-out F1 0.31-0.50 against 0.54 at the same 300 steps of 8 chunks of 8 lines).
  Indices are relative to the chunk's first line, so the model never meets an index it was not trained on;
  decoding adds the chunk's offset back, so the program text is ProX's, with global line numbers
  (``remove_lines(line_start=12, line_end=13)``).
- **Model**: a :class:`kiln.model.config.TransformerConfig` model trained by
  :func:`kiln.train.prox_generator.train_generator` (under ``kiln.train``: the corpus layer never trains) with
  kiln's AdamW and schedule (:mod:`kiln.train.optim`) on the cross-entropy of the program tokens only (the
  prompt is masked out of the loss). kiln's :class:`~kiln.train.trainer.Trainer` trains on packed token shards
  with the recipe objectives (``train.objective``), none of which masks a prompt out of the loss, so that module
  has its own short loop; batches are whole (chunk, program) sequences, right-padded.
- **Decoding** (:class:`LearnedGenerator`): greedy (:func:`kiln.infer.generate.generate` at temperature 0),
  at most ``max_new_tokens`` tokens, stopping at ``EOS``. The decoded text goes through the existing parser
  and executor unchanged: a malformed line counts as an error there, as in ProX. The doc-level program is
  always ``keep_doc()`` (this generator is chunk-level only; the executor's word-ratio rule still drops a
  document that is nearly all noise).

A trained generator is a folder: ``config.json`` + ``model.safetensors`` (kiln's model format) and
``prox_generator.json`` (the tokenizer's view: ``line_width``, ``max_chunk_lines``, ``max_chunk_chars``,
``max_new_tokens``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.corpus.prox.generator import Doc, Program, ProgramGenerator, chunk_lines
from kiln.corpus.prox.program import KeepDoc, RemoveLines, SkipChunk, parse_program, render_program

if TYPE_CHECKING:
    from kiln.corpus.prox.pairs import Pair
    from kiln.model.heads import LanguageModel

META_FILE = "prox_generator.json"
FORMAT = "kiln-prox-learned-1"
PAD, EOS, SEP, REMOVE, TO, CLOSE, SKIP, FILL = range(8)
BYTE0 = 8  # token of byte b is BYTE0 + b
LINE0 = BYTE0 + 256  # token of chunk-relative line k is LINE0 + k
_SYNTAX = {REMOVE: "remove_lines(line_start=", TO: ", line_end=", CLOSE: ")\n", SKIP: "skip_chunk()\n"}


@dataclass(frozen=True)
class ProgramTokenizer:
    """Chunk prompts and programs as token ids (module docstring)."""

    line_width: int = 32
    max_chunk_lines: int = 8

    @property
    def vocab_size(self) -> int:
        return LINE0 + self.max_chunk_lines

    @property
    def max_prompt(self) -> int:
        """The longest prompt: every line at full width, its index token, and SEP."""
        return self.max_chunk_lines * (self.line_width + 1) + 1

    def encode_prompt(self, text: str, start: int, end: int) -> list[int]:
        """Lines ``start``..``end`` of ``text``: each line's first ``line_width`` bytes (padded with ``FILL``
        to that width, so every line takes the same number of positions), then its index token."""
        lines = text.split("\n")
        if end - start + 1 > self.max_chunk_lines:
            raise ValueError(f"chunk of {end - start + 1} lines; this tokenizer has {self.max_chunk_lines} line tokens")
        out: list[int] = []
        for k, i in enumerate(range(start, end + 1)):
            view = [BYTE0 + b for b in lines[i].encode("utf-8")[: self.line_width]]
            out += view + [FILL] * (self.line_width - len(view)) + [LINE0 + k]
        out.append(SEP)
        return out

    def encode_program(self, program: str, start: int) -> list[int]:
        """A chunk program of ``remove_lines``/``skip_chunk`` ops (global lines, chunk from ``start``), + EOS."""
        parsed = parse_program(program)
        if parsed.errors:
            raise ValueError(f"cannot encode a malformed program: {parsed.errors[0]}")
        out: list[int] = []
        for op in parsed.ops:
            if isinstance(op, SkipChunk):
                out.append(SKIP)
            elif isinstance(op, RemoveLines) and not op.all:
                a, b = op.start - start, op.end - start
                if not (0 <= a <= b < self.max_chunk_lines):
                    raise ValueError(f"{op.render()} is outside the chunk starting at line {start}")
                out += [REMOVE, LINE0 + a, TO, LINE0 + b, CLOSE]
            else:
                raise ValueError(f"the learned generator's programs hold remove_lines and skip_chunk only, got {op}")
        return out + [EOS]

    def decode_program(self, tokens: Sequence[int], start: int) -> str:
        """Program text of generated ``tokens`` (global line numbers: ``start`` + the relative index)."""
        pieces = []
        for t in tokens:
            if t == EOS:
                break
            if t in _SYNTAX:
                pieces.append(_SYNTAX[t])
            elif LINE0 <= t < self.vocab_size:
                pieces.append(str(start + t - LINE0))
            elif BYTE0 <= t < LINE0:
                pieces.append(chr(t - BYTE0))
            else:  # PAD or SEP where a program belongs: keep it visible so the parser counts the line as an error
                pieces.append(f"<{t}>")
        return "".join(pieces).strip()


@dataclass(frozen=True)
class LearnedConfig:
    """Model shape and training settings for :func:`kiln.train.prox_generator.train_generator` (defaults: a
    ~0.1M-parameter model that
    trains in a minute or two on one CPU core; see the module docstring for why ``positions`` is ``learned``)."""

    line_width: int = 16
    max_chunk_lines: int = 4
    max_chunk_chars: int = 4000
    max_new_tokens: int = 48
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    positions: str = "learned"
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-2
    warmup_steps: int = 20
    seed: int = 0
    threads: int | None = None

    def tokenizer(self) -> ProgramTokenizer:
        return ProgramTokenizer(self.line_width, self.max_chunk_lines)


def encode_pairs(pairs: Sequence[Pair], tok: ProgramTokenizer) -> list[tuple[list[int], int]]:
    """``(tokens, prompt length)`` per pair: the loss covers ``tokens[prompt length:]`` (program + EOS)."""
    out = []
    for p in pairs:
        prompt = tok.encode_prompt(p.text, p.start, p.end)
        out.append((prompt + tok.encode_program(p.program, p.start), len(prompt)))
    return out


def load_generator_model(path: str | Path) -> tuple[LanguageModel, dict]:
    """The model and tokenizer settings of a generator folder; a clear error naming what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"ProX learned generator: no model folder at {folder} (train one with "
                                "kiln.train.prox_generator.train_generator)")
    from kiln.model.io import CONFIG_NAME, WEIGHTS_NAME, load_pretrained

    for name in (META_FILE, CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"ProX learned generator: {folder / name} is missing (a generator folder holds "
                                    f"{META_FILE}, {CONFIG_NAME} and {WEIGHTS_NAME})")
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / META_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}")
    for key in ("line_width", "max_chunk_lines", "max_chunk_chars", "max_new_tokens"):
        if not isinstance(meta.get(key), int) or meta[key] < 1:
            raise ValueError(f"{folder / META_FILE}: field {key!r} must be a positive integer, got {meta.get(key)!r}")
    model = load_pretrained(folder)
    model.eval()
    return model, meta


class LearnedGenerator(ProgramGenerator):
    """Greedy-decodes each chunk's program with a trained generator (module docstring)."""

    name = "learned"

    def __init__(self, model_path: str | Path, max_new_tokens: int | None = None, threads: int | None = None) -> None:
        self.model, meta = load_generator_model(model_path)
        self.tokenizer = ProgramTokenizer(meta["line_width"], meta["max_chunk_lines"])
        self.max_chunk_lines, self.max_chunk_chars = meta["max_chunk_lines"], meta["max_chunk_chars"]
        self.max_new_tokens = max_new_tokens or meta["max_new_tokens"]
        self.threads = threads
        if self.model.config.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"{model_path}: model vocabulary {self.model.config.vocab_size} does not match the "
                             f"tokenizer's {self.tokenizer.vocab_size} ({META_FILE})")

    def chunk_program(self, text: str, start: int, end: int) -> str:
        """The decoded program of lines ``start``..``end`` (global numbers)."""
        import torch

        from kiln.infer.generate import generate

        if self.threads:
            torch.set_num_threads(self.threads)
        prompt = self.tokenizer.encode_prompt(text, start, end)
        with torch.no_grad():
            out = generate(self.model, prompt, self.max_new_tokens, temperature=0.0, eos_id=EOS)
        return self.tokenizer.decode_program(out, start)

    def generate(self, doc: Doc) -> Program:
        text = doc["text"]
        chunks = tuple(self.chunk_program(text, s, e)
                       for s, e in chunk_lines(text, self.max_chunk_lines, self.max_chunk_chars))
        return Program(render_program([KeepDoc()]), chunks)
