"""Run outputs: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard events."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

__all__ = ["MetricsWriter", "read_metrics"]


def _plain(value: Any) -> Any:
    """Python scalar from a NumPy/JAX scalar; non-finite floats become strings JSON can hold."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends ``{"step": s, **scalars}`` lines to ``workdir/metrics.jsonl`` and the same
    scalars to TensorBoard event files in ``workdir/tensorboard``.

    ``resume_step``: the step a run starts from (its checkpoint). Records written after it
    (``step > resume_step``) are dropped from the file and hidden in TensorBoard, so a resumed
    run logs each step once; ``resume_step=0`` (a run starting over) drops every record.
    ``None`` (default) appends to whatever is there.
    """

    def __init__(self, workdir: str | pathlib.Path, *, resume_step: int | None = None):
        from tensorboardX import SummaryWriter

        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            records = read_metrics(self.path) if resume_step > 0 else []
            kept = [r for r in records if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.path.open("a")
        purge_step = None if resume_step is None else (resume_step + 1 if resume_step else 0)
        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"), purge_step=purge_step)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float):
                self._tb.add_scalar(name, value, int(step))

    def write_text(self, tag: str, text: str) -> None:
        self._tb.add_text(tag, f"```\n{text}\n```", 0)

    def close(self) -> None:
        """Close the file and the event writer (again: nothing)."""
        if not self._file.closed:
            self._file.close()
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (or of ``workdir/metrics.jsonl``)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
