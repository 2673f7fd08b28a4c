"""Figures without pyplot: no global state, no backend switch (safe headless and in notebooks)."""

from __future__ import annotations

import pathlib

from matplotlib.figure import Figure


def new_figure(*grid, figsize, **subplot_kwargs):
    """``(figure, axes)`` like ``plt.subplots``, but not registered with pyplot."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **subplot_kwargs)


def save_figure(fig: Figure, path, dpi: int = 120) -> Figure:
    """Write ``fig`` as a PNG at ``path`` (parent folders created) when ``path`` is given."""
    if path is not None:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig
