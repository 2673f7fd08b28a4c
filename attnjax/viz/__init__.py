"""Matplotlib figures (headless, Agg): attention grids, parameter breakdowns, sweep plots.

Submodules: ``attnjax.viz.attention`` (patterns), ``attnjax.viz.params`` (parameter counts),
``attnjax.viz.sweep`` (sweep results).
"""

from attnjax.viz import attention, params, sweep

__all__ = ["attention", "params", "sweep"]
