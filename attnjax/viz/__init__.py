"""Matplotlib figures (headless, Agg): attention grids, parameter breakdowns, sweep plots;
and interactive attention views as self-contained HTML pages.

Submodules: ``attnjax.viz.attention`` (patterns), ``attnjax.viz.params`` (parameter counts),
``attnjax.viz.sweep`` (sweep results), ``attnjax.viz.interventions`` (per-head grids),
``attnjax.viz.telemetry`` (head telemetry over training),
``attnjax.viz.html`` (model, head, pattern and word-in-context views for notebooks and files,
no network).
"""

from attnjax.viz import attention, html, interventions, params, sweep, telemetry

__all__ = ["attention", "html", "interventions", "params", "sweep", "telemetry"]
