"""Opt-in performance tuning, kept out of the library core: see ``attnjax.perf.cpu``."""

from attnjax.perf import cpu

__all__ = ["cpu"]
