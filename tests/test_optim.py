import math

import pytest

from kiln.recipe import TrainConfig
from kiln.train.optim import effective_warmup, lr_at, schedule_warnings


def test_warmup_then_cosine_to_floor():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="cosine")
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_linearly():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert all(x == 1.0 for x in lrs[10:80])
    assert lrs[80] == pytest.approx(1 - 1 / 20) and lrs[99] == pytest.approx(0.0)
    diffs = {round(lrs[i] - lrs[i + 1], 9) for i in range(80, 99)}
    assert len(diffs) == 1


def test_warmup_is_clamped_for_short_runs():
    cfg = TrainConfig(steps=3, warmup_steps=50, lr=1.0, schedule="constant")
    assert all(math.isfinite(lr_at(s, cfg)) and lr_at(s, cfg) <= 1.0 for s in range(3))
    assert lr_at(2, cfg) == 1.0


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_warmup_longer_than_the_run_still_decays(schedule):
    """Default warm-up (50) against a 30-step run: the run must not end at the peak learning rate."""
    cfg = TrainConfig(steps=30, warmup_steps=50, lr=1.0, min_lr_ratio=0.1, schedule=schedule)
    lrs = [lr_at(s, cfg) for s in range(30)]
    assert max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)  # decayed to the floor (before: 1.0, the peak)
    assert lrs.index(max(lrs)) == effective_warmup(cfg) - 1 == 14
    assert "warm-up shortened to 15 steps" in schedule_warnings(cfg)[0]


def test_no_warning_when_warmup_fits():
    cfg = TrainConfig(steps=100, warmup_steps=50)
    assert effective_warmup(cfg) == 50 and schedule_warnings(cfg) == []
