"""Sweep-report plots: variants overlaid (validation curves with their seed range) and per-task accuracy bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from kiln.report.plots import _figure, _save

Band = Sequence[tuple[float, float, float, float]]
"""Points as (x, mean, min, max) over a variant's seeds."""

COLORS = ("#4f81bd", "#c0504d", "#9bbb59", "#8064a2", "#f79646", "#4bacc6", "#7f7f7f", "#d99694", "#2c4d75",
          "#77933c")


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def curves(series: Mapping[str, Band], path: Path, xlabel: str, ylabel: str, title: str, log_x: bool = False) -> None:
    """One line per variant (the mean over seeds at each evaluation) with the seeds' min-max range shaded."""
    fig, ax = _figure(7.0, 3.8)
    ax.xaxis.set_major_locator(MaxNLocator())
    for i, (name, points) in enumerate(series.items()):
        if not points:
            continue
        xs, mean, lo, hi = (list(col) for col in zip(*points, strict=True))
        ax.plot(xs, mean, "o-", ms=3, lw=1.3, color=color(i), label=name)
        ax.fill_between(xs, lo, hi, color=color(i), alpha=0.18, lw=0)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    _save(fig, path)


def task_bars(tasks: Sequence[str], variants: Sequence[str], means: Sequence[Sequence[float | None]],
              stds: Sequence[Sequence[float | None]], chance: Mapping[str, float | None],
              majority: Mapping[str, float | None], path: Path, ylabel: str = "accuracy") -> None:
    """One group per task, one bar per variant (``means[v][t]``, error bars ``stds[v][t]`` = std over seeds);
    each group carries its task's chance (dashed) and majority-class (dotted) accuracy as short lines."""
    width = 0.8 / max(len(variants), 1)
    fig, ax = _figure(max(7.0, 1.1 * len(tasks) * max(len(variants), 2) * 0.45 + 2), 3.8)
    for i, name in enumerate(variants):
        xs = [t + (i - (len(variants) - 1) / 2) * width for t in range(len(tasks))]
        heights = [m if m is not None else 0.0 for m in means[i]]
        errs = [s if s is not None else 0.0 for s in stds[i]]
        ax.bar(xs, heights, width * 0.95, yerr=errs, capsize=3, color=color(i), label=name)
    labelled: set[str] = set()
    for t, task in enumerate(tasks):
        for value, style, label in ((chance.get(task), "--", "chance"), (majority.get(task), ":", "majority")):
            if value is not None:
                ax.hlines(value, t - 0.45, t + 0.45, colors="black", linestyles=style, lw=1.2,
                          label=None if label in labelled else label)
                labelled.add(label)
    ax.set_xticks(range(len(tasks)), list(tasks), rotation=15 if len(tasks) > 3 else 0)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title("Task accuracy (mean over seeds; bars: std)")
    ax.legend(fontsize="small", ncol=2)
    _save(fig, path)
