"""Sweep figures: accuracy over the heads × layers grid, loss/accuracy vs parameter total, and
accuracy vs heads per layer count.

They take the single-seed rows of ``results.csv`` or the cells of
``attnjax.training.sweep_stats.aggregate``: where a row has ``{metric}_ci95`` (the 95% Student-t
half-width over seeds) it is drawn as an error bar and written as ``mean±ci`` in the heat map
(``±?`` with one seed); rows without those columns are drawn as plain points."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from attnjax.viz._figures import new_figure, save_figure

__all__ = ["accuracy_by_heads", "accuracy_heatmap", "metrics_vs_params", "save_sweep_plots"]


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def _ci(row: dict[str, Any], metric: str) -> float:
    """The ``{metric}_ci95`` of ``row``; NaN when absent (old rows) or undefined (one seed)."""
    return _number(row.get(f"{metric}_ci95"))


def _label(row: dict[str, Any], metric: str) -> str:
    text = f"{_number(row[metric]):.2f}"
    if f"{metric}_ci95" not in row:
        return text
    ci = _ci(row, metric)
    return f"{text}\n±{ci:.2f}" if math.isfinite(ci) else f"{text}\n±?"


def accuracy_heatmap(rows: Sequence[dict[str, Any]], metric: str = "accuracy"):
    """Heat map of ``metric`` with heads on x and layers on y; failed points are blank. Each cell
    reads ``mean`` or, for aggregated rows, ``mean ± ci95``."""
    heads = sorted({int(r["heads"]) for r in rows})
    layers = sorted({int(r["layers"]) for r in rows})
    grid = np.full((len(layers), len(heads)), np.nan)
    labels = {}
    for row in rows:
        if row.get("status") == "ok":
            at = layers.index(int(row["layers"])), heads.index(int(row["heads"]))
            grid[at] = _number(row[metric])
            labels[at] = _label(row, metric)
    fig, ax = new_figure(figsize=(1.2 * len(heads) + 2, 0.9 * len(layers) + 1.5))
    image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        text = "fail" if math.isnan(value) else labels[i, j]
        color = "black" if not math.isnan(value) and value > 0.6 else "white"
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(len(heads)), [str(h) for h in heads])
    ax.set_yticks(range(len(layers)), [str(n) for n in layers])
    ax.set_xlabel("heads")
    ax.set_ylabel("layers")
    ax.set_title(f"eval {metric}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def metrics_vs_params(rows: Sequence[dict[str, Any]]):
    """Eval loss and accuracy against the parameter total, one marker per layer count; error bars
    from ``eval_loss_ci95`` / ``accuracy_ci95`` where the rows have them."""
    ok = [r for r in rows if r.get("status") == "ok"]
    fig, axes = new_figure(1, 2, figsize=(10, 4))
    for layers in sorted({int(r["layers"]) for r in ok}):
        points = sorted(
            (r for r in ok if int(r["layers"]) == layers), key=lambda r: _number(r["params_total"])
        )
        x = [_number(r["params_total"]) for r in points]
        for ax, metric in zip(axes, ("eval_loss", "accuracy"), strict=True):
            y = [_number(r[metric]) for r in points]
            yerr = [_ci(r, metric) for r in points]
            if any(math.isfinite(e) for e in yerr):
                ax.errorbar(x, y, yerr=np.nan_to_num(yerr), fmt="o", capsize=3,
                            label=f"{layers} layers")  # fmt: skip
            else:
                ax.plot(x, y, "o", label=f"{layers} layers")
            for r, xi in zip(points, x, strict=True):
                ax.annotate(f"{r['heads']}h", (xi, _number(r[metric])), fontsize=7)
    for ax, metric in zip(axes, ("eval loss", "eval accuracy"), strict=True):
        ax.set_xlabel("parameters (total)")
        ax.set_ylabel(metric)
        if ok and all(_number(r["params_total"]) > 0 for r in ok):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    if ok:
        axes[0].legend()
    fig.tight_layout()
    return fig


def accuracy_by_heads(rows: Sequence[dict[str, Any]], metric: str = "accuracy"):
    """``metric`` against the number of heads, one line per layer count (and variant), error bars
    from ``{metric}_ci95`` where the rows have them (none with one seed)."""
    ok = [r for r in rows if r.get("status") == "ok" and math.isfinite(_number(r.get(metric)))]
    fig, ax = new_figure(figsize=(6, 4))
    groups = sorted({(int(r["layers"]), str(r.get("variant") or "")) for r in ok})
    for layers, variant in groups:
        points = sorted(
            (r for r in ok if (int(r["layers"]), str(r.get("variant") or "")) == (layers, variant)),
            key=lambda r: int(r["heads"]),
        )
        x = [int(r["heads"]) for r in points]
        y = [_number(r[metric]) for r in points]
        yerr = np.nan_to_num([_ci(r, metric) for r in points])  # no bar where undefined
        label = f"{layers} layers" + (f", {variant}" if variant else "")
        ax.errorbar(x, y, yerr=yerr, fmt="o-", capsize=3, label=label)
    heads = sorted({int(r["heads"]) for r in rows})
    ax.set_xticks(heads, [str(h) for h in heads])
    ax.set_xlabel("heads")
    ax.set_ylabel(f"eval {metric}")
    ax.grid(alpha=0.3)
    if ok:
        ax.legend()
        if any(f"{metric}_ci95" in r for r in ok):
            ax.set_title("error bars: 95% Student-t interval over seeds", fontsize=9)
    fig.tight_layout()
    return fig


def save_sweep_plots(rows: Sequence[dict[str, Any]], directory) -> list[pathlib.Path]:
    """Write ``accuracy_heatmap.png``, ``sequence_accuracy_heatmap.png``,
    ``metrics_vs_params.png`` and ``accuracy_by_heads.png`` into ``directory``."""
    directory = pathlib.Path(directory)
    paths = []
    figures = (
        ("accuracy_heatmap", lambda r: accuracy_heatmap(r, "accuracy")),
        ("sequence_accuracy_heatmap", lambda r: accuracy_heatmap(r, "sequence_accuracy")),
        ("metrics_vs_params", metrics_vs_params),
        ("accuracy_by_heads", accuracy_by_heads),
    )
    for name, make in figures:
        path = directory / f"{name}.png"
        save_figure(make(rows), path)
        paths.append(path)
    return paths
