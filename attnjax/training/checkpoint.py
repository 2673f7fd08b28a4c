"""Orbax checkpoints of the train state: async save, keep the newest N, restore the latest."""

from __future__ import annotations

import logging
import pathlib

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "load_checkpoint", "quiet_orbax"]


class _DropOrbaxInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def quiet_orbax() -> None:
    """Hide orbax's INFO lines (dozens per save); warnings and errors still show."""
    logging.getLogger("orbax").setLevel(logging.WARNING)
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbaxInfo) for f in absl_logger.filters):
        absl_logger.addFilter(_DropOrbaxInfo())


class Checkpointer:
    """Saves every ``every`` steps into ``directory`` (made absolute), keeping ``keep``.

    ``restore_latest(state)`` returns the newest checkpoint laid out like ``state`` (same
    shapes, dtypes and shardings), or ``state`` itself if there is none.
    """

    def __init__(self, directory: str | pathlib.Path, *, every: int, keep: int):
        if every < 1:
            raise ValueError(f"train.checkpoint_every must be positive, got {every}")
        if keep < 1:
            raise ValueError(f"train.keep must be positive, got {keep}")
        quiet_orbax()
        self.every = every
        self.directory = pathlib.Path(directory).expanduser().resolve()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=True, create=True
            ),
        )

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore_latest(self, state):
        step = self.latest_step
        if step is None:
            return state
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def maybe_save(self, step: int, state, *, force: bool = False) -> bool:
        """Start an async save if ``step`` is a multiple of ``every`` (or ``force``)."""
        if not force and step % self.every:
            return False
        if self._manager.latest_step() == step:
            return False
        return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def load_checkpoint(directory: str | pathlib.Path, step: int | None = None) -> dict:
    """The train state saved at ``step`` (default: newest) as nested dicts of NumPy arrays:
    ``{"step", "params", "opt_state"}`` (no template needed, e.g. to inspect or compare runs)."""
    quiet_orbax()
    directory = pathlib.Path(directory).expanduser().resolve()
    if step is None:
        steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {str(directory)!r}")
        step = max(steps)
    restored = ocp.StandardCheckpointer().restore(directory / str(step) / "default")
    return jax.device_get(restored)
