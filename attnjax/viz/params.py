"""Parameter pictures (matplotlib, headless): a model's breakdown and a count sweep.

Every function returns a ``matplotlib.figure.Figure`` and, given ``path``, also writes it as a
PNG (parent folders created). Made without pyplot, like ``attnjax.viz.attention``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from attnjax.viz._figures import save_figure

__all__ = ["param_breakdown_plot", "sweep_count_plot"]


def param_breakdown_plot(report, path=None, title: str | None = None) -> Figure:
    """Horizontal bars: parameters per category of a ``ParamReport`` (log scale)."""
    categories = {k: v for k, v in report.categories().items() if v > 0}
    fig = Figure(figsize=(7, 0.45 * len(categories) + 1.2))
    ax = fig.subplots()
    names = list(categories)
    ax.barh(names, [categories[n] for n in names], color="tab:blue")
    ax.set_xscale("log")
    ax.invert_yaxis()
    for i, name in enumerate(names):
        ax.text(categories[name], i, f" {categories[name]:,}", va="center", fontsize=8)
    ax.set_xlabel("parameters")
    ax.set_title(title or f"{report.total:,} parameters ({report.convention})")
    return save_figure(fig, path)


def sweep_count_plot(
    rows: Sequence[dict[str, Any]], path=None, value: str = "total", title: str | None = None
) -> Figure:
    """``value`` (a column of ``count_sweep`` rows) against layers, one line per head count,
    next to the attention share of the total."""
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    for heads in sorted({row["heads"] for row in rows}):
        points = sorted((r for r in rows if r["heads"] == heads), key=lambda r: r["layers"])
        layers = [r["layers"] for r in points]
        left.plot(layers, [r[value] for r in points], marker="o", label=f"{heads} heads")
        right.plot(
            layers, [r["attention"] / r["total"] for r in points], marker="o", label=f"{heads}"
        )
    left.set_xlabel("layers")
    left.set_ylabel(value)
    left.set_yscale("log")
    left.legend(fontsize=8)
    right.set_xlabel("layers")
    right.set_ylabel("attention weights / total")
    right.set_ylim(0, 1)
    fig.suptitle(title or f"{value} parameters over heads x layers")
    return save_figure(fig, path)
