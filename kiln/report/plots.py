"""Run-report plots: small PNG charts drawn on an Agg canvas (no pyplot global state)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from kiln import atomic

Series = Sequence[tuple[float, float]]
"""Points as (x, y) pairs, typically (step, value)."""


def _figure(width: float = 7.0, height: float = 3.4) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _save(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic.write_bytes(path, buf.getvalue())


def _xy(points: Series) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def funnel(steps: Sequence[str], removed: Sequence[int], path: Path, removed_bytes: Sequence[int] = ()) -> None:
    """Horizontal bars, first step on top: documents removed by each corpus step and, when given, the bytes
    each removed (removed documents plus text cut out of kept ones)."""
    _save(funnel_figure(steps, removed, removed_bytes), path)


def funnel_figure(steps: Sequence[str], removed: Sequence[int], removed_bytes: Sequence[int] = ()) -> Figure:
    """The figure :func:`funnel` saves; the bytes axis is ticked in the bar labels' units (B, kB, MB, GB)."""
    height = max(1.6, 0.45 * len(steps) + 0.9)
    fig = Figure(figsize=(10.0 if removed_bytes else 7.0, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    panels = [(list(removed), "documents removed", "#c0504d", str)]
    if removed_bytes:
        panels.append((list(removed_bytes), "bytes removed", "#4f81bd", human_bytes))
    y = list(range(len(steps)))
    for i, (values, label, color, fmt) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1, sharey=fig.axes[0] if i else None)
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        bars = ax.barh(y, values, color=color)
        ax.bar_label(bars, labels=[fmt(v) for v in values], padding=3)
        if i == 0:
            ax.set_yticks(y, list(steps))
            ax.invert_yaxis()
        else:
            ax.tick_params(labelleft=False)
        ax.set_xlim(0, max([*values, 1]) * 1.2)  # a sane axis even when nothing was removed
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos, f=fmt: f(int(v)) if v else "0"))
        ax.set_xlabel(label)
    fig.suptitle("Corpus funnel")
    return fig


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def loss(train: Series, val: Series, path: Path) -> None:
    """Training loss (line) and validation loss (markers) against step."""
    fig, ax = _figure()
    if train:
        ax.plot(*_xy(train), lw=1.0, color="#4f81bd", label="train loss")
    if val:
        ax.plot(*_xy(val), "o-", ms=4, lw=1.2, color="#c0504d", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss")
    ax.legend()
    _save(fig, path)


def bpb(val: Series, path: Path, baseline: float | None = None) -> None:
    """Validation bits per byte against step, with the unigram baseline as a dashed line."""
    fig, ax = _figure()
    ax.plot(*_xy(val), "o-", ms=4, lw=1.2, color="#9bbb59", label="val bpb")
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="grey", label=f"unigram baseline ({baseline:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.set_title("Validation bits per byte")
    ax.legend()
    _save(fig, path)


def throughput(tokens_per_s: Series, path: Path, mfu: Series = ()) -> None:
    """Tokens per second against step; model FLOPs utilisation on a second axis when logged."""
    fig, ax = _figure()
    steps, values = _xy(tokens_per_s)
    lines = ax.plot(steps, values, lw=1.0, color="#4f81bd", label="tokens/s")
    ax.set_ylim(0, 1.1 * max(max(values), 1e-9))
    ax.set_xlabel("step")
    ax.set_ylabel("tokens / s")
    ax.set_title("Throughput")
    if mfu:
        ax2 = ax.twinx()
        steps, values = _xy(mfu)
        pct = [100 * v for v in values]
        lines += ax2.plot(steps, pct, lw=1.0, color="#f79646", alpha=0.8, label="MFU")
        ax2.set_ylim(0, 1.1 * max(max(pct), 1e-9))
        ax2.set_ylabel("MFU (%)")
        ax2.spines["top"].set_visible(False)
    ax.legend(handles=lines, loc="lower right")
    _save(fig, path)


def score_histogram(sample: Sequence[float], field: str, path: Path, cuts: Sequence[float] = ()) -> None:
    """Histogram of a scorer's scores (the funnel row's sample), with the cut score(s) of a later ``select``."""
    fig, ax = _figure(6.0, 2.8)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.hist(list(sample), bins=min(50, max(5, len(sample) // 10)), color="#4f81bd")
    for cut in cuts:
        ax.axvline(cut, color="#c0504d", linestyle="--", linewidth=1.2)
    ax.set_xlabel(field + ("  (dashed: select's cut)" if cuts else ""))
    ax.set_ylabel("documents")
    _save(fig, path)
