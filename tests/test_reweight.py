"""Loss-based sample reweighting (kiln/objectives/reweight.py; Sow et al., ICLR 2025, arXiv:2502.06733).

Spec (d) checks: weights sum to 1, uniform as r -> inf, the linear-regression toy ranks LinUpper below uniform
in test MSE (and Extremes above it: the toy can make a strategy lose). The objective: warm-up equals plain CLM,
its micro-batch losses backpropagate exactly sum_i w_i l_i over the step's whole batch (however the batch is
cut into micro-batches), and a training run's per-step losses do not depend on ``train.micro_batch_size``.
The 2-rank torchrun check (DDP and FSDP2, gloo) is ``test_two_ranks_match_one_process`` (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kiln.data.loader import Batch
from kiln.model.config import TransformerConfig
from kiln.objectives.clm import IGNORE, CausalLM
from kiln.objectives.reweight import LossReweighted, normalise_losses, sample_weights, strategy_scores
from kiln.objectives.reweight_args import STRATEGIES, check_reweight_args

REPO = Path(__file__).resolve().parents[1]
V, T = 64, 32

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_weights_sum_to_one_and_tend_to_uniform(strategy):
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(37, generator=g, dtype=torch.float64) * 5
    for r in (0.1, 0.4, 1.0, 3.0):
        w = sample_weights(losses, strategy, r)
        assert w.shape == losses.shape and bool((w > 0).all())
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    far = sample_weights(losses, strategy, 1e7)
    assert float((far - 1 / 37).abs().max()) < 1e-8  # uniform as r -> inf
    if strategy != "uniform":  # a small temperature starves the samples where f is smallest
        assert float(sample_weights(losses, strategy, 0.05).min()) < 0.01 / 37


def test_normalisation_and_strategy_shapes():
    x = normalise_losses(torch.tensor([3.0, 1.0, 2.0, 5.0]))
    assert x.tolist() == pytest.approx([0.0, -1.0, -0.5, 1.0])
    assert normalise_losses(torch.tensor([2.0, 2.0])).tolist() == [0.0, 0.0]  # max = min: all equal weights
    grid = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    assert strategy_scores(grid, "linupper").tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]
    assert strategy_scores(grid, "quadratic").tolist() == [0.0, 0.75, 1.0, 0.75, 0.0]
    assert strategy_scores(grid, "mid").tolist() == [0.0, 0.75, 1.0, 0.75, 0.0]
    assert strategy_scores(grid, "extremes").tolist() == [1.0, 0.5, 0.0, 0.5, 1.0]
    assert strategy_scores(grid, "upper").tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # LinUpper: the easiest sample gets the least weight, everything above the middle the same
    w = sample_weights(torch.tensor([1.0, 2.0, 4.0, 5.0]), "linupper", 0.4)
    assert float(w[0]) < float(w[1]) < float(w[2]) and float(w[2]) == pytest.approx(float(w[3]))


def regression_mse(strategy: str | None, seed: int, at=(150, 600), d: int = 32, k_easy: int = 4,
                   easy: float = 0.8, batch: int = 64, lr: float = 0.05, r: float = 0.4) -> dict[int, float]:
    """The spec's toy: y = <w*, x>; 80% of the samples live in an easy k_easy-dim subspace, the rest span all d
    dimensions. SGD on fresh batches of per-sample squared errors, weighted (None: the plain mean); test MSE
    on the full distribution at the steps ``at``."""
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(d, generator=g, dtype=torch.float64)
    test_x = torch.randn(2000, d, generator=g, dtype=torch.float64)
    w = torch.zeros(d, dtype=torch.float64)
    out = {}
    for step in range(1, max(at) + 1):
        x = torch.randn(batch, d, generator=g, dtype=torch.float64)
        x[torch.rand(batch, generator=g) < easy, k_easy:] = 0
        residual = x @ (w - w_star)
        weights = torch.full((batch,), 1 / batch, dtype=torch.float64) if strategy is None else \
            sample_weights(residual**2, strategy, r)
        w = w - lr * (2 * weights * residual) @ x
        if step in at:
            out[step] = float(((test_x @ (w - w_star)) ** 2).mean())
    return out


def test_regression_toy_ranks_linupper_below_uniform():
    def mean_mse(strategy):
        runs = [regression_mse(strategy, seed) for seed in range(3)]
        return {s: sum(r[s] for r in runs) / len(runs) for s in runs[0]}

    uniform, linupper, extremes = mean_mse(None), mean_mse("linupper"), mean_mse("extremes")
    # measured (3 seeds): uniform 0.10 / 1.4e-9, LinUpper 6.6e-11 / 8.4e-21, Extremes 1.03 / 1.8e-5
    for step in (150, 600):
        assert linupper[step] < 1e-3 * uniform[step], (step, linupper, uniform)
        assert extremes[step] > 3 * uniform[step], (step, extremes, uniform)  # the toy can make a strategy lose
    assert mean_mse("uniform") == pytest.approx(uniform, rel=1e-9)  # f = 0 is exactly the plain mean


# ----------------------------------------------------------------------------- the objective


def packed_batch(seed: int, rows: int = 4) -> Batch:
    """Rows of several documents of varied lengths (document attention), some rows ending in padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, V, (rows, T), generator=g)
    segments = torch.full((rows, T), -1, dtype=torch.long)
    positions = torch.zeros((rows, T), dtype=torch.long)
    for b in range(rows):
        end = T - int(torch.randint(0, 12, (1,), generator=g)) * (b % 2)
        i, seg = 0, 0
        while i < end:
            n = min(int(torch.randint(3, 20, (1,), generator=g)), end - i)
            segments[b, i:i + n], positions[b, i:i + n] = seg, torch.arange(n)
            i, seg = i + n, seg + 1
        tokens[b, end:] = 0
    # a learnable pattern in half the rows so losses differ between samples
    tokens[::2, 1::2] = tokens[::2, 0::2] % 7 + 4
    return Batch(tokens, segments, positions, "document", int((segments >= 0).sum()))


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TransformerConfig(vocab_size=V, max_seq_len=T, n_layer=2, n_head=2, d_model=32).build()


def configured(obj, steps: int = 10):
    obj.configure(vocab_size=V, seq_len=T, total_steps=steps, seed=0)
    return obj


def trainer_step(obj, model, batches, step: int):
    """What the trainer does with one step: prepare all, then per micro-batch loss / T backward."""
    model.zero_grad()
    obj.begin_step(step)
    prepared = [obj.prepare(b) for b in batches]
    n_targets = sum(p.n_targets for p in prepared)
    logged = 0.0
    for p in prepared:
        loss_sum, metrics = obj.loss(model, p)
        (loss_sum / n_targets).backward()
        logged += float(loss_sum.detach())
    return logged / n_targets, {n: p.grad.clone() for n, p in model.named_parameters()}, metrics


def reference_weighted(model, batches, strategy, r, unit="sequence"):
    """sum_i w_i l_i over all rows of ``batches`` at once (weights constant), its value and gradients."""
    model.zero_grad()
    means = []
    for b in batches:
        targets = CausalLM().prepare(b).tensors["targets"]
        hidden = model.backbone(b.tokens, positions=b.positions, segments=b.segments, attention="causal")
        token = F.cross_entropy(model.lm_head(hidden).flatten(0, 1), targets.flatten(),
                                ignore_index=IGNORE, reduction="none").view(targets.shape)
        valid = targets != IGNORE
        if unit == "sequence":
            means += [token[i][valid[i]].mean() for i in range(len(token)) if valid[i].any()]
        else:
            for i in range(len(token)):
                for s in b.segments[i].unique().tolist():
                    sel = valid[i] & (b.segments[i] == s)
                    if sel.any():
                        means.append(token[i][sel].mean())
    means = torch.stack(means)
    w = sample_weights(means.detach(), strategy, r)
    loss = (w * means).sum()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}, len(means)


def test_warmup_is_plain_clm_exactly():
    model, batch = tiny_model(), packed_batch(1)
    obj = configured(LossReweighted(strategy="linupper", r=0.4, warmup_steps=3))
    obj.begin_step(2)
    p = obj.prepare(batch)
    with torch.no_grad():
        got, metrics = obj.loss(model, p)
        want, _ = CausalLM().loss(model, CausalLM().prepare(batch))
    assert float(got) == float(want) and float(metrics["ce_sum"]) == float(want)
    assert obj.stats == {"reweight_active": 0.0}


@pytest.mark.parametrize("strategy,unit", [("linupper", "sequence"), ("extremes", "document")])
def test_micro_batches_backpropagate_the_whole_batch_weighted_loss(strategy, unit):
    """Cut into 1, 2 or 4 micro-batches, the step's loss and gradient are sum_i w_i l_i over all 8 rows."""
    model = tiny_model().double()  # float64: the comparison measures the method, not float32 summation order
    rows = [packed_batch(10 + i, rows=2) for i in range(4)]
    whole = Batch(*(torch.cat([getattr(b, k) for b in rows]) for k in ("tokens", "segments", "positions")),
                  "document", sum(b.n_tokens for b in rows))
    want_loss, want_grads, n = reference_weighted(model, rows, strategy, 0.4, unit)
    halves = [Batch(*(torch.cat([getattr(b, k) for b in pair]) for k in ("tokens", "segments", "positions")),
                    "document", sum(b.n_tokens for b in pair)) for pair in (rows[:2], rows[2:])]
    for cut in ([whole], halves, rows):
        obj = configured(LossReweighted(strategy=strategy, r=0.4, warmup_steps=0, unit=unit))
        loss, grads, metrics = trainer_step(obj, model, cut, step=0)
        assert loss == pytest.approx(want_loss, rel=1e-10)
        for name, g in want_grads.items():
            assert float((grads[name] - g).norm()) <= 1e-9 * float(g.norm()), (len(cut), name)
        assert obj.stats["reweight_samples"] == n and obj.stats["reweight_active"] == 1.0
        assert obj.stats["reweight_w_max"] > 1.2 / n > 0.8 / n > obj.stats["reweight_w_min"]
    assert (unit == "document") == (n > 8)


def test_huge_temperature_gives_the_mean_of_per_sample_means():
    model, batches = tiny_model(), [packed_batch(3), packed_batch(4)]
    obj = configured(LossReweighted(strategy="linupper", r=1e9, warmup_steps=0))
    loss, _, _ = trainer_step(obj, model, batches, step=0)
    uniform, _, _ = reference_weighted(model, batches, "uniform", 1.0)
    token_mean = sum(float(CausalLM().loss(model, CausalLM().prepare(b))[0].detach()) for b in batches) / sum(
        CausalLM().prepare(b).n_targets for b in batches)
    assert loss == pytest.approx(uniform, rel=1e-6)
    assert abs(uniform - token_mean) > 1e-4  # rows differ in target counts: a mean of means, not the token mean
    assert obj.stats["reweight_w_entropy_ratio"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("args,field", [
    ({"strategy": "lin_upper"}, "strategy"), ({"r": 0}, "r"), ({"r": float("inf")}, "r"), ({"r": "x"}, "r"),
    ({"warmup_steps": -1}, "warmup_steps"), ({"warmup_steps": 1.5}, "warmup_steps"), ({"unit": "token"}, "unit"),
    ({"temperature": 1.0}, "temperature"),
])
def test_bad_arguments_name_the_field(args, field):
    with pytest.raises(ValueError, match=rf"train\.objective_args\.{field}: "):
        check_reweight_args(args)
    if field != "temperature":
        with pytest.raises(ValueError, match=rf"\.{field}: "):
            LossReweighted(**args)


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(ValueError, match=r"warmup_steps: 1000 >= train\.steps 200"):
        configured(LossReweighted(warmup_steps=1000), steps=200)


def test_stats_callback_refuses_another_objective():
    from kiln.train.callbacks import TrainState, validate_spec
    from kiln.train.reweight import ReweightStats

    validate_spec({"name": "kiln.train.reweight:ReweightStats"}, "train.callbacks.0")
    with pytest.raises(ValueError, match="reweight_stats logs the weights of the 'reweight' objective"):
        ReweightStats().on_train_begin(TrainState(0, None, None, CausalLM()))


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def tokens_run(tmp_path_factory):
    """Corpus, tokenizer and tokens of a tiny synthetic corpus (no training)."""
    from kiln.recipe import load_recipe
    from kiln.run import RunDir
    from kiln.stages import run_pipeline
    from tests.synthetic import tiny_overrides, write_jsonl_corpus

    root = tmp_path_factory.mktemp("reweight")
    corpus = write_jsonl_corpus(root / "docs.jsonl", n_docs=60)
    run = RunDir(root / "run")
    run_pipeline(load_recipe("demo", tiny_overrides(corpus, steps=4)), run, until="tokens")
    return run


def train_rows(run_dir: Path, out: Path, micro: int) -> list[dict]:
    from tests.dist_reweight import train_reweighted

    return train_reweighted(run_dir, out, "single", micro)


def test_per_step_losses_do_not_depend_on_the_micro_batch_size(tokens_run, tmp_path):
    """8 rows a step as 1 or 4 micro-batches: the same weights over the step's batch, the same curve."""
    one = train_rows(tokens_run.root, tmp_path / "m8", micro=8)
    four = train_rows(tokens_run.root, tmp_path / "m2", micro=2)
    assert [r["step"] for r in one] == [1, 2, 3, 4]
    assert [r["reweight_active"] for r in one] == [0.0, 1.0, 1.0, 1.0]  # warm-up: step 1
    for a, b in zip(one, four, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["ce_per_target"] == pytest.approx(b["ce_per_target"], rel=1e-5)
    for row in one[1:]:
        assert row["reweight_samples"] == 8 and abs(sum([row["reweight_w_min"], row["reweight_w_max"]])) > 0
        assert row["reweight_w_max"] > 1.1 / 8 and row["reweight_w_entropy_ratio"] < 1.0
        assert row["loss"] != pytest.approx(row["ce_per_target"], rel=1e-4)  # the weights change the loss
    assert one[0]["loss"] == pytest.approx(one[0]["ce_per_target"], rel=1e-9)  # warm-up: plain token mean


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tokens_run, tmp_path, strategy):
    """torchrun, 2 gloo ranks: per-step losses equal one process at the same global batch (8 rows a step; one
    process cuts them into 4 micro-batches, each rank into 2)."""
    from tests.test_distributed import free_port

    want = train_rows(tokens_run.root, tmp_path / "single", micro=2)
    out = tmp_path / strategy
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(REPO / "tests" / "dist_reweight.py"), str(tokens_run.root), str(out), strategy, "2"]
    env = {**os.environ, "KILN_QUIET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads((out / "rows.json").read_text())
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [r["reweight_active"] for r in got] == [0.0, 1.0, 1.0, 1.0]
    for a, b in zip(got, want, strict=True):
        keys = ("loss", "ce_per_target") + (("reweight_w_max", "reweight_w_min") if b["reweight_active"] else ())
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-5), (key, a, b)
