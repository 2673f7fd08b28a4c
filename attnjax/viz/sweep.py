"""Sweep figures: accuracy over the heads × layers grid, and loss/accuracy vs parameter total."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from attnjax.viz._figures import new_figure, save_figure

__all__ = ["accuracy_heatmap", "metrics_vs_params", "save_sweep_plots"]


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def accuracy_heatmap(rows: Sequence[dict[str, Any]], metric: str = "accuracy"):
    """Heat map of ``metric`` with heads on x and layers on y; failed points are blank."""
    heads = sorted({int(r["heads"]) for r in rows})
    layers = sorted({int(r["layers"]) for r in rows})
    grid = np.full((len(layers), len(heads)), np.nan)
    for row in rows:
        if row.get("status") == "ok":
            grid[layers.index(int(row["layers"])), heads.index(int(row["heads"]))] = _number(
                row[metric]
            )
    fig, ax = new_figure(figsize=(1.2 * len(heads) + 2, 0.9 * len(layers) + 1.5))
    image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        text = "fail" if math.isnan(value) else f"{value:.2f}"
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
    """Eval loss and accuracy against the parameter total, one marker per layer count."""
    ok = [r for r in rows if r.get("status") == "ok"]
    fig, axes = new_figure(1, 2, figsize=(10, 4))
    for layers in sorted({int(r["layers"]) for r in ok}):
        points = sorted(
            (r for r in ok if int(r["layers"]) == layers), key=lambda r: _number(r["params_total"])
        )
        x = [_number(r["params_total"]) for r in points]
        for ax, metric in zip(axes, ("eval_loss", "accuracy"), strict=True):
            ax.plot(x, [_number(r[metric]) for r in points], "o", label=f"{layers} layers")
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


def save_sweep_plots(rows: Sequence[dict[str, Any]], directory) -> list[pathlib.Path]:
    """Write ``accuracy_heatmap.png``, ``sequence_accuracy_heatmap.png`` and
    ``metrics_vs_params.png`` into ``directory``."""
    directory = pathlib.Path(directory)
    paths = []
    figures = (
        ("accuracy_heatmap", lambda r: accuracy_heatmap(r, "accuracy")),
        ("sequence_accuracy_heatmap", lambda r: accuracy_heatmap(r, "sequence_accuracy")),
        ("metrics_vs_params", metrics_vs_params),
    )
    for name, make in figures:
        path = directory / f"{name}.png"
        save_figure(make(rows), path)
        paths.append(path)
    return paths
