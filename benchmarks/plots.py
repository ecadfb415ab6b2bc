"""The benchmarks' figures: each benchmark module's ``figures(results)`` describes its comparisons
(:class:`Bars`) and curves (:class:`Curves`) as plain data, and :func:`draw_all` draws them as PNG
files beside RESULTS.md with matplotlib, a dev dependency (``make install``), not a runtime one.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Sequence

__all__ = ["Bars", "Curves", "draw", "draw_all"]


@dataclasses.dataclass(frozen=True)
class Bars:
    """Grouped bars: one group per label, one bar of each series in every group.

    ``name`` is the PNG's file stem; ``series`` maps a series to one value per label.
    """

    name: str
    title: str
    ylabel: str
    labels: Sequence[str]
    series: dict[str, Sequence[float]]
    log: bool = False


@dataclasses.dataclass(frozen=True)
class Curves:
    """Lines of ``series`` (name -> (xs, ys)), each with an optional shaded band (name -> (lows, highs))."""

    name: str
    title: str
    xlabel: str
    ylabel: str
    series: dict[str, tuple[Sequence[float], Sequence[float]]]
    bands: dict[str, tuple[Sequence[float], Sequence[float]]] = dataclasses.field(default_factory=dict)
    logx: bool = False


def draw(figure: Bars | Curves, directory: Path) -> str:
    """Draws ``figure`` to ``directory/<name>.png``; returns the markdown that shows it."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if isinstance(figure, Bars):
        width = 0.8 / len(figure.series)
        for i, (name, values) in enumerate(figure.series.items()):
            xs = [x + (i - (len(figure.series) - 1) / 2) * width for x in range(len(figure.labels))]
            bars = ax.bar(xs, values, width, label=name)
            ax.bar_label(bars, fmt="{:,.3g}", fontsize=7)
        ax.set_xticks(range(len(figure.labels)), [textwrap.fill(label, 22) for label in figure.labels], fontsize=7)
        ax.set(ylabel=figure.ylabel, yscale="log" if figure.log else "linear")
    else:
        for name, (xs, ys) in figure.series.items():
            ax.plot(xs, ys, marker="o", label=name)
            if name in figure.bands:
                ax.fill_between(xs, *figure.bands[name], alpha=0.2)
        ax.set(xlabel=figure.xlabel, ylabel=figure.ylabel, xscale="log" if figure.logx else "linear")
    ax.set_title(figure.title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(figure.series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(directory) / f"{figure.name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![{figure.title}]({path.name})"


def draw_all(figures: Sequence[Bars | Curves], directory: Path) -> str:
    """The markdown showing every figure drawn, or one line saying why none could be."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "Plots not drawn: matplotlib, a dev dependency, is not installed (`make install` installs it)."
    return "\n\n".join(draw(figure, directory) for figure in figures)
