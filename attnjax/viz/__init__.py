"""Matplotlib figures (headless, Agg): attention grids, parameter breakdowns, sweep plots.

Submodules: ``attnjax.viz.attention`` (patterns), ``attnjax.viz.params`` (parameter counts),
``attnjax.viz.sweep`` (sweep results), ``attnjax.viz.interventions`` (per-head grids).
"""

from attnjax.viz import attention, interventions, params, sweep

__all__ = ["attention", "interventions", "params", "sweep"]
