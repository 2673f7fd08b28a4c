"""What a run config means and whether it may run: its task, model, optimizer and mesh checked
before anything is trained or written, and the rule for reusing a workdir.

``check_run_config`` validates every setting ``train_and_evaluate`` reads (``ValueError`` naming
the field); ``check_same_config`` refuses a workdir that holds a run of another config, ignoring
only the ``BOOKKEEPING_KEYS``.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from attnjax.data import make_task
from attnjax.functional._checks import as_int
from attnjax.models import ModelConfig
from attnjax.training import sharding as sharding_lib
from attnjax.training.files import atomic_write_text
from attnjax.training.state import make_optimizer
from attnjax.training.telemetry import DEFAULT_PHASE_CHANGE_THRESHOLD, check_probeable

__all__ = [
    "BOOKKEEPING_KEYS",
    "EVAL_SEED_OFFSET",
    "build_task",
    "check_batch_divides",
    "check_run_config",
    "check_same_config",
    "model_config_for",
    "optimizer_for",
    "results_description",
]

EVAL_SEED_OFFSET = 1_000_003  # held-out batches come from another stream
# Config keys that change how a run (or a sweep) is laid out, logged or checkpointed, never
# what it computes: a run resumes, and a sweep shard joins its sweep, with any of them changed.
BOOKKEEPING_KEYS = (
    "mesh",
    "distributed",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep",
    # Telemetry watches training without changing it: a run resumes with another interval or
    # threshold, and workdirs of runs made before these keys existed stay valid.
    "train.telemetry_every",
    "train.phase_change_threshold",
    "sweep.shard",
    "sweep.retry_failed",
)


def build_task(config, *, seed_offset: int = 0):
    """The data stream of ``config.task`` seeded by ``config.train.seed``."""
    params = config.task.to_dict()
    name = params.pop("name")
    return make_task(name, seed=config.train.seed + seed_offset, **params)


def model_config_for(config, task) -> ModelConfig:
    """``ModelConfig.from_config(config.model)``, checked against the task's sizes."""
    model_config = ModelConfig.from_config(config.model)
    if model_config.vocab_size < task.vocab_size:
        vocabulary = f"the task's vocabulary of {task.vocab_size} tokens"
        if config.task.get("vocab_size") == task.vocab_size:
            vocabulary = f"task.vocab_size={task.vocab_size}"
        raise ValueError(f"model.vocab_size={model_config.vocab_size} is smaller than {vocabulary}")
    if model_config.max_seq_len < task.seq_len:
        raise ValueError(
            f"model.max_seq_len={model_config.max_seq_len} is shorter than "
            f"task.seq_len={task.seq_len}"
        )
    return model_config


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _is_under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def results_description(config) -> dict[str, Any]:
    """What a run's (or sweep's) results depend on: ``config`` as JSON-able nested dicts
    without the ``BOOKKEEPING_KEYS``."""
    description = json.loads(json.dumps(config.to_dict(), default=str))
    for key in BOOKKEEPING_KEYS:
        *parents, leaf = key.split(".")
        section = description
        for parent in parents:
            section = section.get(parent, {})
        section.pop(leaf, None)
    return description


def _differing_keys(old: Any, new: Any, ignore: tuple[str, ...]) -> list[str]:
    old_flat, new_flat = _flatten(old), _flatten(new)
    keys = sorted(k for k in old_flat.keys() | new_flat.keys() if not _is_under(k, ignore))
    missing = "(absent)"
    return [
        f"{k}: {old_flat.get(k, missing)!r} there, {new_flat.get(k, missing)!r} now"
        for k in keys
        if old_flat.get(k, missing) != new_flat.get(k, missing)
    ]


def check_same_config(
    workdir: pathlib.Path,
    description: dict[str, Any],
    *,
    filename: str = "config.json",
    ignore: tuple[str, ...] = BOOKKEEPING_KEYS,
    what: str = "run",
    write: bool = True,
) -> None:
    """Refuse to reuse ``workdir`` for another config, then record ``description`` there.

    ``description`` (nested dicts) is compared with ``workdir/filename`` if that exists; keys
    under ``ignore`` (dotted, e.g. ``"sweep.shard"``; default ``BOOKKEEPING_KEYS``) may differ.
    Raises ``ValueError`` naming the workdir and the differing keys, before anything is written.
    """
    path = workdir / filename
    text = json.dumps(description, sort_keys=True, indent=2, default=str)
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ValueError(f"workdir={str(workdir)!r} has an unreadable {filename}") from None
        differing = _differing_keys(recorded, json.loads(text), ignore)
        if differing:
            more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
            raise ValueError(
                f"workdir={str(workdir)!r} holds a {what} of a different config "
                f"({'; '.join(differing[:3])}{more}); pass another --workdir (or delete it)"
            )
    if write:
        atomic_write_text(path, text)


_POSITIVE_TRAIN_INTS = (
    "batch_size", "steps", "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep",
)  # fmt: skip


def optimizer_for(train):
    """The optimizer of a run config's ``train`` section (lr, steps, warmup, decay, clip)."""
    return make_optimizer(
        learning_rate=train.lr,
        steps=train.steps,
        warmup_steps=train.warmup,
        weight_decay=train.weight_decay,
        clip_norm=train.clip,
    )


def _check_train_config(train) -> None:
    for name in _POSITIVE_TRAIN_INTS:
        as_int(f"train.{name}", train[name], minimum=1)
    as_int("train.seed", train.seed, minimum=0)
    as_int("train.warmup", train.warmup, minimum=0)
    optimizer_for(train)  # learning rate, clipping, warmup < steps, weight decay
    as_int("train.telemetry_every", train.get("telemetry_every", 0), minimum=0)
    threshold = train.get("phase_change_threshold", DEFAULT_PHASE_CHANGE_THRESHOLD)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 < threshold <= 1
    ):
        raise ValueError(
            f"train.phase_change_threshold must be a number in (0, 1] (an induction score), "
            f"got {threshold!r}"
        )


def _check_mesh(config, devices=None) -> None:
    mesh = sharding_lib.mesh_from_config(config.mesh, devices)
    check_batch_divides(config, mesh)


def check_batch_divides(config, mesh) -> None:
    """``train.batch_size`` must split over the mesh's batch axes (``data x fsdp``)."""
    shards = sharding_lib.batch_shards(mesh)
    if config.train.batch_size % shards:
        fsdp = config.mesh.get("fsdp", 1)
        axes = f"mesh.data={config.mesh.data}" + (f" x mesh.fsdp={fsdp}" if fsdp != 1 else "")
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must be divisible by the mesh's batch "
            f"axes ({axes}: {shards} devices)"
        )


def check_run_config(config, task=None, *, devices=None) -> tuple[Any, ModelConfig]:
    """The task and ``ModelConfig`` of a run config, after checking ``config.train`` (every
    setting the optimizer, checkpointer, loop and telemetry take; telemetry needs a model the
    probe can run on, ``attnjax.training.telemetry.check_probeable``) and ``config.mesh`` (on
    ``devices``, default this process's); ``ValueError`` naming the field for any impossible setting
    (nothing is trained or written). ``task``: the config's task if already built
    (``build_task(config)``)."""
    _check_train_config(config.train)
    task = build_task(config) if task is None else task
    model_config = model_config_for(config, task)
    if config.train.get("telemetry_every", 0):
        check_probeable(model_config, "train.telemetry_every")
    _check_mesh(config, devices)
    return task, model_config
