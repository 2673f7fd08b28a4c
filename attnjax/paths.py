"""Where attnjax writes: one rule for outputs and one for caches.

- Outputs (run and sweep workdirs, CSVs, figures) go under ``runs_dir()``: ``$ATTNJAX_RUNS``,
  default ``~/attnjax_runs``. Launchers put each job in a named folder there
  (``count_sweep/``, ``patterns/``, ``sweep_<task>_fixed_<...>_<hash>/``).
- Caches (JAX's persistent compilation cache) go under ``cache_dir()``: ``$ATTNJAX_CACHE``,
  default ``$XDG_CACHE_HOME/attnjax`` (``~/.cache/attnjax``).
- An explicit ``--workdir`` (or ``directory=``) always wins over both.

Only the standard library: any layer may import it.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["cache_dir", "runs_dir"]


def runs_dir(*parts: str) -> pathlib.Path:
    """``$ATTNJAX_RUNS/<parts>`` (default ``~/attnjax_runs/<parts>``), not created."""
    root = os.environ.get("ATTNJAX_RUNS") or "~/attnjax_runs"
    return pathlib.Path(root).expanduser().joinpath(*parts)


def cache_dir(*parts: str) -> pathlib.Path:
    """``$ATTNJAX_CACHE/<parts>`` (default ``$XDG_CACHE_HOME/attnjax/<parts>``), not created."""
    root = os.environ.get("ATTNJAX_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
        root = os.path.join(xdg, "attnjax")
    return pathlib.Path(root).expanduser().joinpath(*parts)
