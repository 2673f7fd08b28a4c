"""Orbax checkpoints of the train state: async save, keep the newest N, restore the latest.

A checkpoint that cannot be read (a truncated data file, a deleted ``default/``, killed in the
middle of a copy) is passed over with a warning naming it, for the newest one that can: the
run resumes a little earlier instead of stopping.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from flax import nnx

from attnjax.models import DecoderLM, Encoder, ModelConfig

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
        """The newest checkpoint that can be read, laid out like ``state``.

        Newer checkpoints that cannot be read are moved to ``<directory>_damaged/`` with a
        warning naming each (so that the run can save those steps again); ``ValueError``
        naming the directory if none can be read (nothing is moved then: more likely ``state``
        does not match the checkpoints than all of them are damaged).
        """
        self._manager.reload()  # what is on disk now
        steps = self._manager.all_steps()
        if not steps:
            return state
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restore = lambda step: _restore_item(self.directory / str(step), abstract)
        step, restored, damaged = _newest_readable(self.directory, steps, restore)
        for bad in damaged:
            self._move_aside(bad, step)
        if damaged:
            self._manager.reload()
        return restored

    def _move_aside(self, bad: int, good: int) -> None:
        target = self.directory.with_name(self.directory.name + "_damaged") / str(bad)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            while target.exists():
                target = target.with_name(target.name + "_")
            (self.directory / str(bad)).rename(target)
        absl_logging.warning(
            "checkpoint %s cannot be read; resuming from step %d instead (it was moved to %s)",
            self.directory / str(bad), good, target,
        )  # fmt: skip

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
    ``{"step", "params", "opt_state"}`` (no template needed, e.g. to inspect or compare runs;
    a checkpoint written on a mesh of many devices loads in a process with one)."""
    quiet_orbax()
    directory = pathlib.Path(directory).expanduser().resolve()
    if step is None:  # the newest that can be read (a warning names any newer one)
        steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {str(directory)!r}")
    else:
        steps = [step]
    restore = lambda s: _restore_item(directory / str(s))
    found, restored, damaged = _newest_readable(directory, steps, restore)
    for bad in damaged:
        absl_logging.warning(
            "checkpoint %s cannot be read; loaded step %d instead", directory / str(bad), found
        )
    return jax.device_get(restored)


def _restore_item(step_dir: pathlib.Path, abstract=None):
    """The state saved in ``step_dir``, laid out like ``abstract`` (default: every array whole on
    this process's first device, whatever mesh wrote it). Read without the manager, which
    remembers a damaged step's layout and then misreads the next one."""
    with ocp.StandardCheckpointer() as checkpointer:
        if abstract is None:  # orbax would rebuild the writer's mesh: "Topology mismatch"
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            saved = checkpointer.metadata(step_dir / "default").item_metadata
            abstract = jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                getattr(saved, "tree", saved),
            )
        return checkpointer.restore(step_dir / "default", abstract)


def _newest_readable(
    directory: pathlib.Path, steps, restore: Callable[[int], Any]
) -> tuple[int, Any, list[int]]:
    """``(step, restore(step), newer steps that failed)`` for the newest step that restores;
    ``ValueError`` naming each checkpoint and its error if none does."""
    errors = []
    for step in sorted(steps, reverse=True):
        try:
            return step, restore(step), [bad for bad, _ in errors]
        except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many kinds
            errors.append((step, error))
    listed = "; ".join(f"{directory / str(s)}: {_one_line(e)}" for s, e in errors)
    raise ValueError(f"no checkpoint in {str(directory)!r} can be read ({listed})")


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def load_trained_model(workdir: str | pathlib.Path, step: int | None = None, *, replica: int = 0):
    """``(model, config)``: the model of a train workdir (its ``config.json`` and newest, or
    ``step``'s, checkpoint) with the trained parameters, in eval mode; ``config`` is the run's
    config as a dict. A sweep point's workdir holds several replicas (seeds x learning rates,
    ``attnjax.training.replicas``): ``replica`` picks one (in the order of ``config["replicas"]``,
    ``[seed, lr]`` pairs; its ``train.seed`` and ``train.lr`` are set in ``config``). Raises
    ``FileNotFoundError`` naming what is missing, ``ValueError`` naming ``replica`` if there
    is no such replica."""
    workdir = pathlib.Path(workdir).expanduser().resolve()
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"workdir={str(workdir)!r} has no config.json (not a train run)")
    config = json.loads(config_path.read_text())
    model_config = ModelConfig.from_config(config["model"])
    module = DecoderLM if model_config.architecture == "decoder" else Encoder
    model = module(model_config, rngs=nnx.Rngs(0))
    saved = load_checkpoint(workdir / "checkpoints", step)
    params = saved["params"] if "params" in saved else _replica_params(saved, config, replica)
    state = nnx.state(model, nnx.Param)
    state.replace_by_pure_dict(_pure(params))
    nnx.update(model, state)
    model.eval()
    return model, config


def _replica_params(saved: dict, config: dict, replica: int):
    """Replica ``replica``'s parameters of a stacked checkpoint (``config`` gets its seed and
    learning rate)."""
    pairs = config.get("replicas", [])
    if isinstance(replica, bool) or not isinstance(replica, int) or not 0 <= replica < len(pairs):
        raise ValueError(f"replica={replica!r} must be an index in [0, {len(pairs)}) of {pairs}")
    config["train"]["seed"], config["train"]["lr"] = pairs[replica]
    return jax.tree.map(lambda leaf: leaf[replica], saved["train"]["params"])


def _pure(tree):
    """A saved ``nnx.State`` (``{"value": array}`` per variable, list indices as strings) as
    the pure dict ``replace_by_pure_dict`` takes."""
    if not isinstance(tree, dict):
        return tree
    if set(tree) == {"value"} and not isinstance(tree["value"], dict):
        return tree["value"]
    return {int(k) if str(k).isdigit() else k: _pure(v) for k, v in tree.items()}
