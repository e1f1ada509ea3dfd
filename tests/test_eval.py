import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kiln.data.loader import Batch
from kiln.eval.lm import evaluate_lm, unigram_bpb


class Uniform(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, tokens, positions=None, segments=None):
        return torch.zeros(*tokens.shape, self.vocab)


def test_bpb_of_a_uniform_model_is_exact():
    vocab = 10
    token_bytes = np.array([0, 0, 1, 2, 3, 1, 1, 1, 1, 4])
    tokens = torch.tensor([[0, 2, 3, 4, 1, 0, 9, 9], [0, 5, 6, 1, 2, 2, 2, 2]])
    segments = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, -1, -1, -1, -1]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 0, 0, 0]])
    batch = Batch(tokens=tokens, segments=segments, positions=positions, attention="document", n_tokens=12)
    res = evaluate_lm(Uniform(vocab), [batch], token_bytes, torch.device("cpu"))
    # targets: row0 seg0: 2,3,4,1 ; seg1: 9,9 ; row1: 5,6,1  -> 9 targets
    n_bytes = (1 + 2 + 3 + 0) + (4 + 4) + (1 + 1 + 0)
    assert res["n_targets"] == 9 and res["n_bytes"] == n_bytes
    assert res["loss"] == pytest.approx(math.log(vocab))
    assert res["bpb"] == pytest.approx(9 * math.log(vocab) / (math.log(2) * n_bytes))


def test_unigram_baseline(tmp_path):
    pq.write_table(pa.table({"text": ["abab" * 100]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": ["ab"]}), tmp_path / "val.parquet")
    # two equally frequent bytes (200 each) with add-one smoothing over 256 symbols
    bpb = unigram_bpb(tmp_path)  # the legacy single-file layout of the corpus folder
    assert bpb == pytest.approx(-math.log2(201 / (400 + 256)))
