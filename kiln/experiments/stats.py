"""Seed statistics for sweep comparisons: mean and spread over seeds, and 95% intervals of a difference.

A variant's effect is the difference of its metric to the baseline variant's. When the two were run with
the same seeds, seed s of both shares data order and initialisation, so the per-seed differences
``d_s = x_v,s - x_b,s`` are what varies and the interval is Student's paired one (Student 1908,
"The probable error of a mean"): ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)``. Otherwise the two
samples are independent and the interval is Welch's (Welch 1947, "The generalization of 'Student's'
problem when several different population variances are involved"), whose degrees of freedom come from
the Welch-Satterthwaite equation. Seeds pair when both variants ran them; a seed that failed on one side
drops out of the pairs. With fewer than two values on a side there is no interval, only the
difference, and the reason says so.

The Student t quantile is computed here (no scipy at run time): the t CDF through the regularised
incomplete beta function, evaluated by its continued fraction with the modified Lentz method
(Press et al., "Numerical Recipes", 3rd ed., section 6.4), and inverted by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

LOWER_IS_BETTER = ("bpb", "loss", "perplexity", "ppl")
HIGHER_IS_BETTER = ("acc", "acc_norm", "accuracy", "f1", "exact_match", "gain")


# --- Student t -------------------------------------------------------------------------------------


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, not necessarily integer) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"t_cdf: degrees of freedom must be > 0, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``t_quantile(0.975, 4)`` = 2.776)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"t_quantile: degrees of freedom must be > 0, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# --- summaries and intervals ------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1; None below 2 values) of ``n`` values."""

    mean: float | None
    std: float | None
    n: int


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(None, None, 0)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Summary(mean, std, n)


# Every seed gave the same difference (or both sides are constant): a t interval would have width 0 and "exclude
# 0" on the strength of two equal numbers (e.g. an accuracy stuck at one answer), so no interval is claimed.
NO_SPREAD = "no spread across seeds: no interval"
SPREAD_EPS = 1e-9  # relative: a spread this small is float noise in equal values (0.3 - 0.2 != 0.4 - 0.3)


@dataclass(frozen=True)
class Difference:
    """``diff`` = variant mean - baseline mean; ``lo``/``hi`` its 95% interval (None when there is none,
    ``note`` says why); ``method`` is ``paired`` | ``welch`` | ``none``; ``n`` the pairs (paired) or the
    smaller side (welch); ``df`` the t degrees of freedom used."""

    diff: float | None
    lo: float | None
    hi: float | None
    method: str
    n: int
    df: float | None = None
    note: str = ""

    @property
    def excludes_zero(self) -> bool:
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def paired_interval(diffs: Sequence[float], level: float = 0.95) -> Difference:
    """Student's paired interval from per-seed differences."""
    s = summarize(diffs)
    if s.n < 2 or s.std is None or s.mean is None:
        return Difference(s.mean, None, None, "none", s.n, note=f"{s.n} seed" + ("" if s.n == 1 else "s"))
    if s.std <= SPREAD_EPS * max(1.0, abs(s.mean)):
        return Difference(s.mean, None, None, "none", s.n, note=NO_SPREAD)
    half = t_quantile(0.5 + level / 2, s.n - 1) * s.std / math.sqrt(s.n)
    return Difference(s.mean, s.mean - half, s.mean + half, "paired", s.n, float(s.n - 1))


def welch_interval(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> Difference:
    """Welch's unpaired interval for mean(x) - mean(y)."""
    sx, sy = summarize(x), summarize(y)
    if sx.mean is None or sy.mean is None:
        return Difference(None, None, None, "none", 0, note="no values")
    diff = sx.mean - sy.mean
    if sx.std is None or sy.std is None:
        short = min(sx.n, sy.n)
        return Difference(diff, None, None, "none", short, note=f"{short} seed" + ("" if short == 1 else "s"))
    vx, vy = sx.std**2 / sx.n, sy.std**2 / sy.n
    se = math.sqrt(vx + vy)
    if se <= SPREAD_EPS * max(1.0, abs(diff)):
        return Difference(diff, None, None, "none", min(sx.n, sy.n), note=NO_SPREAD)
    df = (vx + vy) ** 2 / (vx**2 / (sx.n - 1) + vy**2 / (sy.n - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    return Difference(diff, diff - half, diff + half, "welch", min(sx.n, sy.n), df)


def difference(variant: Mapping[int, float], baseline: Mapping[int, float], level: float = 0.95) -> Difference:
    """The variant's difference to the baseline from ``{seed: value}`` of each: paired over the seeds both
    ran when they share at least two (a seed that failed on one side drops out of the pairs, and ``note``
    names the pairs used), Welch's unpaired interval over all values otherwise."""
    if not variant or not baseline:
        side = "variant" if not variant else "baseline"
        return Difference(None, None, None, "none", 0, note=f"{side}: no run reports it")
    common = sorted(set(variant) & set(baseline))
    if set(variant) == set(baseline) or len(common) >= 2:
        d = paired_interval([variant[s] - baseline[s] for s in common], level)
        if len(common) < max(len(variant), len(baseline)):
            d = replace(d, note=(d.note + "; " if d.note else "") + f"paired on seeds {', '.join(map(str, common))}")
        return d
    return welch_interval(list(variant.values()), list(baseline.values()), level)


# --- which way is good -----------------------------------------------------------------------------


def direction(metric: str) -> str | None:
    """``lower`` or ``higher`` is better for a metric path (by its last part), None when unknown."""
    last = metric.rsplit("/", 1)[-1].lower()
    if last in LOWER_IS_BETTER or last.endswith(tuple(f"_{w}" for w in LOWER_IS_BETTER)):
        return "lower"
    if last in HIGHER_IS_BETTER or last.endswith(tuple(f"_{w}" for w in HIGHER_IS_BETTER)):
        return "higher"
    return None


def verdict(metric: str, d: Difference) -> str | None:
    """``better`` / ``worse`` when the interval excludes 0 and the metric's direction is known, else None."""
    way = direction(metric)
    if not d.excludes_zero or way is None or d.diff is None:
        return None
    return "better" if (d.diff < 0) == (way == "lower") else "worse"
