"""Per-head grids [L, N] (ablation effects, detector scores) as heatmaps, side by side."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from attnjax.viz._figures import new_figure

__all__ = ["head_grids_plot"]


def head_grids_plot(grids: Mapping[str, np.ndarray], path=None, *, title: str = "") -> Figure:
    """One heatmap per ``[L, N]`` grid (layers down, heads across), values written in the
    cells; saved as a PNG at ``path`` (atomically: a temporary file, then a rename)."""
    if not grids:
        raise ValueError("grids must hold at least one [L, N] array")
    arrays = {name: np.asarray(grid, np.float64) for name, grid in grids.items()}
    for name, grid in arrays.items():
        if grid.ndim != 2:
            raise ValueError(f"grids[{name!r}] must be [L, N], got shape {grid.shape}")
    fig, axes = new_figure(1, len(arrays), figsize=(3.2 * len(arrays), 2.6), squeeze=False)
    for ax, (name, grid) in zip(axes[0], arrays.items(), strict=True):
        bound = max(float(np.abs(grid).max()), 1e-12)
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
        ax.set(title=name, xlabel="head", ylabel="layer")
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
        if grid.size <= 64:
            for (layer, head), value in np.ndenumerate(grid):
                ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    if path is not None:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(temporary, dpi=120, bbox_inches="tight")
        os.replace(temporary, path)
    return fig
