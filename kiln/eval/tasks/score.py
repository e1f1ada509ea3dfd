"""Log-likelihood scoring of multiple-choice items, exactly as lm-evaluation-harness's ``hf`` model does it.

For a request ``(context, continuation)`` (lm-eval ``api/model.py::loglikelihood`` and ``_encode_pair``,
``models/huggingface.py::_loglikelihood_tokens``, version 0.4.x):

- trailing whitespace of the context moves to the front of the continuation;
- ``whole = encode(context + continuation)``, ``ctx = encode(context)``, continuation tokens =
  ``whole[len(ctx):]`` (so a token that straddles the boundary is scored as part of the continuation);
- an empty context becomes the prefix token (BOS) and the continuation is encoded without special tokens;
- the model sees ``(ctx + cont)[-(max_length + 1):][:-1]`` (left truncation) and the score is the summed
  log-probability of the continuation tokens.

``encode`` is the exported Hugging Face tokenizer's default call, which for a kiln tokenizer prepends
``<|bos|>`` (its post-processor is ``<|bos|> $A``, ``add_bos_token=True``: see ``kiln/tokenizer/hf.py``), and
lm-eval's ``hf`` model leaves ``add_special_tokens`` at that default; a text that already starts with
``<|bos|>`` gets none added (lm-eval's ``has_bos_prefix``). kiln documents start with ``<|bos|>`` in training
too, so this is also the right conditioning. ``max_length`` is the model's ``max_seq_len`` (the export's
``max_position_embeddings``, which lm-eval reads).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from kiln.data.loader import Batch
from kiln.eval.lm import evaluate_lm
from kiln.tokenizer.special import BOS, EOS, PAD, SPECIAL_IDS


@dataclass
class Scorer:
    """A causal kiln model and its tokenizer, scoring ``(context, continuation)`` log-likelihoods in batches."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    device: torch.device
    batch_tokens: int = 8192  # padded tokens per forward pass

    @property
    def max_length(self) -> int:
        return int(self.model.config.max_seq_len)

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids as the exported HF tokenizer gives them (``<|bos|>`` first unless ``special`` is False or
        the text already starts with it)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [SPECIAL_IDS[BOS], *ids] if special and not text.startswith(BOS) else ids

    def request_tokens(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) of one request, split as lm-eval splits them."""
        if context == "":
            cont = self.encode(continuation, special=False)
            bos = SPECIAL_IDS[BOS]
            return ([bos], cont) if not cont or cont[0] != bos else (cont[:1], cont[1:])
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def _windows(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[list[int], int]]:
        """Per request: the model input (left-truncated) and how many continuation tokens it scores."""
        out = []
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ValueError(f"request {i}: the continuation encodes to no tokens (an empty choice?)")
            if len(cont) > self.max_length:
                raise ValueError(f"request {i}: continuation of {len(cont)} tokens is longer than the model's "
                                 f"context ({self.max_length})")
            out.append(((ctx + cont)[-(self.max_length + 1):][:-1], len(cont)))
        return out

    @torch.no_grad()
    def loglikelihoods(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """Summed log-probability of each continuation given its context (fp32)."""
        pairs = [self.request_tokens(c, x) for c, x in requests]
        windows = self._windows(pairs)
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))  # longest first, like lm-eval
        result = [0.0] * len(windows)
        was_training = self.model.training
        self.model.eval()
        for chunk in _chunks(order, [len(windows[i][0]) for i in order], self.batch_tokens):
            width = len(windows[chunk[0]][0])
            tokens = torch.full((len(chunk), width), SPECIAL_IDS[PAD], dtype=torch.long)
            for row, i in enumerate(chunk):
                inp = windows[i][0]
                tokens[row, :len(inp)] = torch.tensor(inp)
            logprobs = F.log_softmax(self.model(tokens.to(self.device)).float(), dim=-1)
            for row, i in enumerate(chunk):
                inp, n_cont = windows[i]
                cont = torch.tensor(pairs[i][1], device=self.device)
                lp = logprobs[row, len(inp) - n_cont:len(inp)]
                result[i] = float(lp.gather(1, cont[:, None]).sum())
        self.model.train(was_training)
        return result

    def bpb(self, docs: Sequence[str], token_bytes: np.ndarray) -> dict:
        """Bits per byte of documents, each ``<|bos|> text <|eos|>`` as in training, cut into windows of
        ``max_length`` tokens overlapping by one (every token after ``<|bos|>`` predicted once); summed over
        the documents by :func:`kiln.eval.lm.evaluate_lm`."""
        rows: list[list[int]] = []
        step = self.max_length - 1
        for text in docs:
            ids = [*self.encode(text), SPECIAL_IDS[EOS]]
            rows += [ids[s:s + self.max_length] for s in range(0, max(len(ids) - 1, 1), step)]
        res = evaluate_lm(self.model, _row_batches(rows, self.max_length, 16), token_bytes, self.device)
        return {"bpb": res["bpb"], "loss": res["loss"], "n_docs": len(docs), "n_bytes": res["n_bytes"],
                "n_tokens": res["n_targets"]}


def _chunks(order: list[int], lengths: list[int], budget: int) -> Iterator[list[int]]:
    """Consecutive groups of ``order`` (sorted longest first) whose padded size stays within ``budget``."""
    chunk: list[int] = []
    width = 0
    for i, n in zip(order, lengths, strict=True):
        if chunk and (len(chunk) + 1) * width > budget:
            yield chunk
            chunk = []
        if not chunk:
            width = n
        chunk.append(i)
    if chunk:
        yield chunk


def _row_batches(rows: list[list[int]], width: int, batch_size: int) -> Iterator[Batch]:
    """Unpacked causal batches: one window per row, right-padded (segment -1 on padding: no targets there)."""
    for s in range(0, len(rows), batch_size):
        part = rows[s:s + batch_size]
        tokens = torch.full((len(part), width), SPECIAL_IDS[PAD], dtype=torch.long)
        segments = torch.full((len(part), width), -1, dtype=torch.long)
        for r, ids in enumerate(part):
            tokens[r, :len(ids)] = torch.tensor(ids)
            segments[r, :len(ids)] = 0
        positions = torch.arange(width).expand(len(part), width).clone()
        yield Batch(tokens=tokens, segments=segments, positions=positions, attention="causal",
                    n_tokens=int((segments >= 0).sum()))
