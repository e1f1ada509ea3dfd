"""Biphasic CLM -> MLM switch step and the seeded weighted objective mixture."""

from __future__ import annotations

import pytest

from kiln.objectives.transforms import ObjectiveMixture, biphasic_objective, switch_step


def test_biphasic_switches_at_the_right_step() -> None:
    assert switch_step(1000, 0.25) == 250
    assert [biphasic_objective(s, 1000, 0.25) for s in (0, 249, 250, 999)] == ["clm", "clm", "mlm", "mlm"]
    assert biphasic_objective(0, 10, 0.0) == "mlm" and biphasic_objective(9, 10, 1.0) == "clm"
    with pytest.raises(ValueError):
        switch_step(10, 1.5)


def test_mixture_deterministic_and_weighted() -> None:
    mix = ObjectiveMixture({"clm": 0.5, "mlm": 0.3, "ul2": 0.2}, seed=3)
    picks = [mix.sample(s) for s in range(3000)]
    assert picks == [ObjectiveMixture(dict(mix.weights), seed=3).sample(s) for s in range(3000)]
    for name, w in mix.weights.items():
        assert abs(picks.count(name) / len(picks) - w) < 0.025
    assert mix.sample(5, micro=1) == mix.sample(5, micro=1)
    assert [ObjectiveMixture({"a": 1.0, "b": 0.0}).sample(s) for s in range(20)] == ["a"] * 20
    with pytest.raises(ValueError):
        ObjectiveMixture({"a": -1.0})
