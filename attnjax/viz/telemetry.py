"""Head telemetry over training: best induction and previous-token scores, the in-context-learning
score and the train loss against the step, one line per run, the phase change marked.

Records are those of ``metrics.jsonl`` (``attnjax.training.read_metrics``), written by a run with
``train.telemetry_every`` > 0 (names in ``attnjax.training.telemetry.telemetry_scalars``).
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from attnjax.viz._figures import new_figure

__all__ = ["TELEMETRY_PANELS", "save_telemetry_plot", "telemetry_figure"]

TELEMETRY_PANELS = (
    ("telemetry/induction_max", "best induction score"),
    ("telemetry/previous_token_max", "best previous-token score"),
    ("telemetry/icl", "in-context-learning score (nats)"),
    ("loss", "train loss"),
)


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = sorted(
        (int(r["step"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    )
    return [s for s, _ in points], [v for _, v in points]


def telemetry_figure(
    records_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    threshold: float | None = None,
):
    """A 2 x 2 figure of ``TELEMETRY_PANELS`` over steps, one line per run (its name in the
    legend), so a 1-layer and a 2-layer run sit side by side. With ``threshold`` (default
    ``attnjax.training.telemetry.DEFAULT_PHASE_CHANGE_THRESHOLD``) a dotted line marks it on
    the induction panel, and each run's phase change (``phase_change_step``) is a dashed
    vertical line in its colour on every panel, its step in the legend."""
    from attnjax.training.telemetry import DEFAULT_PHASE_CHANGE_THRESHOLD, phase_change_step

    threshold = DEFAULT_PHASE_CHANGE_THRESHOLD if threshold is None else float(threshold)
    fig, axes = new_figure(2, 2, figsize=(11, 7), sharex=True)
    axes = axes.ravel()
    for index, (name, records) in enumerate(records_by_run.items()):
        color = f"C{index % 10}"
        change = phase_change_step(records, threshold=threshold)
        label = f"{name} (phase change at {change})" if change is not None else f"{name} (none)"
        for ax, (key, _) in zip(axes, TELEMETRY_PANELS):
            steps, values = _series(records, key)
            ax.plot(steps, values, "-", marker=".", color=color, label=label)
            if change is not None:
                ax.axvline(change, color=color, linestyle="--", alpha=0.7)
    axes[0].axhline(threshold, color="gray", linestyle=":", label=f"threshold {threshold:g}")
    for ax, (_, title) in zip(axes, TELEMETRY_PANELS):
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("step")
    axes[0].set_ylim(0.0, 1.02)
    axes[1].set_ylim(0.0, 1.02)
    if records_by_run:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_telemetry_plot(
    records_by_run: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | pathlib.Path,
    *,
    threshold: float | None = None,
    dpi: int = 120,
) -> pathlib.Path:
    """Write ``telemetry_figure(records_by_run)`` as a PNG at ``path`` atomically (a temporary
    file in the same folder, then ``os.replace``): a reader never sees half a PNG."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = telemetry_figure(records_by_run, threshold=threshold)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            fig.savefig(file, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path
