"""A tqdm progress bar with ETA that stays silent when output is not a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["progress_bar"]


def progress_bar(total: int, *, desc: str, initial: int = 0, unit: str = "step") -> tqdm:
    """A bar over ``total`` items starting at ``initial``; disabled unless stdout and stderr
    are both terminals (logs and CI stay clean)."""
    interactive = sys.stdout.isatty() and sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not interactive,
        dynamic_ncols=True,
        leave=False,
    )
