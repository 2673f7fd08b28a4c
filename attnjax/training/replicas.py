"""Many seeds and learning rates of one model, trained as one compiled program.

``train_replicas(config, workdir, replicas)`` trains R replicas of the model of ``config`` —
each a ``Replica(seed, lr)`` — with ``jax.vmap`` over a leading replica axis on every leaf of
the model, optimizer and train state. Each replica is the run ``train_and_evaluate`` would make
with ``train.seed=seed`` and ``train.lr=lr``: its own initialisation and its own data stream
(both from its seed; replicas sharing a seed share their batches, so learning rates are compared
on the same data), its own learning rate (a vmapped argument of the optimizer's schedule). On a
mesh with several ``data`` devices the replica axis is split over them (R must divide).

A replica whose loss or gradient is not finite is **diverged**: its update is refused from that
step on (its parameters stay the last finite ones), the step is recorded, and the others go on.
With ``early_stop_accuracy`` a replica whose validation accuracy reaches it at an evaluation is
frozen there (Zoology's early stop); the loop ends when every replica is frozen. A frozen
replica still runs through the vmapped step (its update is discarded), so freezing saves
nothing until all are.

Each replica is evaluated on two held-out streams: **validation** (``VALIDATION_SEED_OFFSET``;
every ``train.eval_every`` steps and at the end, for early stopping and for choosing a learning
rate) and **test** (``EVAL_SEED_OFFSET``, the stream a single run evaluates on; at the end,
reported). Choosing on one and reporting the other avoids the optimism of picking the best of
several learning rates by the very numbers one reports.

``workdir`` holds ``config.json`` (the run config and the replica list), ``checkpoints/`` (the
stacked state: a kill resumes to bit-identical parameters), ``replicas/<name>/metrics.jsonl``
and TensorBoard events per replica, and ``result.json`` (one ``ReplicaResult`` per replica).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attnjax.data import Batch
from attnjax.functional._checks import as_int
from attnjax.training import sharding as sharding_lib
from attnjax.training.checkpoint import Checkpointer
from attnjax.training.files import atomic_write_text, prepare_workdir
from attnjax.training.metrics import MetricsWriter, read_metrics
from attnjax.training.progress import progress_bar
from attnjax.training.run_config import (
    EVAL_SEED_OFFSET,
    build_task,
    check_run_config,
    check_same_config,
)
from attnjax.training.state import (
    TrainState,
    adamw_with_schedule,
    init_model,
    make_optimizer,
)
from attnjax.training.step import evaluate_batch, pool_metrics, update

__all__ = [
    "VALIDATION_SEED_OFFSET",
    "Replica",
    "ReplicaResult",
    "ReplicaState",
    "check_replicas",
    "init_replica_state",
    "make_replica_step",
    "replicas_for",
    "train_replicas",
]

VALIDATION_SEED_OFFSET = 2_000_029  # a third stream, apart from training and test
_NONE = -1  # "never" in the per-replica step counters


@dataclasses.dataclass(frozen=True)
class Replica:
    """One seed and one peak learning rate of a model."""

    seed: int
    lr: float

    @property
    def name(self) -> str:
        return f"seed{self.seed}_lr{self.lr:g}"


def replicas_for(seeds: Any, learning_rates: Sequence[Any], train) -> list[Replica]:
    """``seeds`` seeds (``train.seed``, ``train.seed + 1``, ...) for each learning rate of
    ``learning_rates`` (empty: ``train.lr`` alone), learning rate by learning rate. ``ValueError``
    naming ``sweep.seeds`` or ``sweep.learning_rates`` for bad values."""
    seeds = as_int("sweep.seeds", seeds, minimum=1)
    rates = tuple(learning_rates) if learning_rates else (train.lr,)
    field = "sweep.learning_rates" if learning_rates else "train.lr"
    checked = []
    for lr in rates:
        if isinstance(lr, bool) or not isinstance(lr, int | float | np.floating | np.integer):
            raise ValueError(f"{field} must be numbers, got {lr!r}")
        if not 0 < float(lr) < math.inf:
            raise ValueError(f"{field} must be positive and finite, got {lr!r}")
        checked.append(float(lr))
    if len(set(checked)) != len(checked):
        raise ValueError(f"sweep.learning_rates has repeated values: {tuple(rates)}")
    return [Replica(train.seed + i, lr) for lr in checked for i in range(seeds)]


class ReplicaState(NamedTuple):
    """The stacked state of R replicas: ``train`` (every leaf [R, ...]), ``diverged_at`` [R]
    (the step whose update was refused for a non-finite loss or gradient; -1: none) and
    ``stopped_at`` [R] (the step at which the replica was frozen by early stopping; -1: none)."""

    train: TrainState
    diverged_at: jax.Array
    stopped_at: jax.Array


@dataclasses.dataclass
class ReplicaResult:
    """What one replica reports (a list of them is ``workdir/result.json``).

    ``status`` is ``"ok"`` or ``"nan"`` (diverged: ``diverged_step`` says when; its metrics are
    those of its last finite parameters). ``val_*`` are on the validation stream, the rest of
    the metrics on the test stream. ``steps``: the updates this replica took (fewer than
    ``train.steps`` if it stopped early or diverged). ``tokens_per_s`` is the throughput of the
    whole vmapped program (all replicas' tokens); ``compile_s`` and ``wall_s`` are the point's.
    ``phase_change_step`` and ``best_induction`` come from head telemetry (None without it).
    """

    name: str
    seed: int
    lr: float
    status: str
    reason: str
    steps: int
    diverged_step: int | None
    stopped_step: int | None
    final_loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    val_sequence_accuracy: float | None
    eval_loss: float | None
    accuracy: float | None
    sequence_accuracy: float | None
    phase_change_step: int | None
    best_induction: float | None
    tokens_per_s: float | None
    compile_s: float | None
    wall_s: float | None
    params: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        finite = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v
        return {k: finite(v) for k, v in dataclasses.asdict(self).items()}


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _replica_sharding(config, replicas: Sequence[Replica]) -> NamedSharding:
    """The leading replica axis split over the mesh's ``data`` devices."""
    mesh = sharding_lib.mesh_from_config(config.mesh)
    others = {axis: size for axis, size in mesh.shape.items() if axis != "data" and size > 1}
    if others:
        raise ValueError(
            f"replicas are split over mesh.data only; got {others} (set those mesh axes to 1)"
        )
    data = mesh.shape["data"]
    if len(replicas) % data:
        raise ValueError(
            f"{len(replicas)} replicas (sweep.seeds x sweep.learning_rates) must be divisible by "
            f"mesh.data={data}: set --config.mesh.data to a divisor of {len(replicas)}"
        )
    return NamedSharding(mesh, P("data"))


def _place(tree, sharding: NamedSharding):
    """Every leaf (leading axis R) split over the replica sharding. Each process holds the
    same values (a pure function of the config and step), so ``device_put`` needs no
    communication on many hosts either."""
    return jax.device_put(tree, sharding)


class _Streams:
    """The batches of every replica at a step, stacked [R, B, ...] (one stream per seed)."""

    def __init__(self, config, replicas: Sequence[Replica], offset: int, batch_size: int):
        base = config.train.seed
        seeds = sorted({r.seed for r in replicas})
        self._tasks = {s: build_task(config, seed_offset=s - base + offset) for s in seeds}
        self._seeds = [r.seed for r in replicas]
        self._batch_size = batch_size

    def batch(self, step: int) -> Batch:
        per_seed = {s: task.batch(step, self._batch_size) for s, task in self._tasks.items()}
        return Batch(*(np.stack([per_seed[s][i] for s in self._seeds]) for i in range(3)))


def _schedule_settings(train) -> dict[str, Any]:
    return dict(
        steps=train.steps,
        warmup_steps=train.warmup,
        weight_decay=train.weight_decay,
        clip_norm=train.clip,
    )


def init_replica_state(model_config, replicas: Sequence[Replica], train, sharding):
    """``(split, state, rest)``: the model split once (``split.graphdef`` and
    ``split.eval_graphdef`` shared), step 0 of every replica stacked into a ``ReplicaState``
    and the replicas' other variables stacked, both placed on ``sharding``."""
    splits = [init_model(model_config, r.seed) for r in replicas]
    params = _stack([s.params for s in splits])
    tx = make_optimizer(learning_rate=replicas[0].lr, **_schedule_settings(train))
    count = len(replicas)
    state = ReplicaState(
        train=TrainState(
            step=jnp.zeros((count,), jnp.int32), params=params, opt_state=jax.vmap(tx.init)(params)
        ),
        diverged_at=jnp.full((count,), _NONE, jnp.int32),
        stopped_at=jnp.full((count,), _NONE, jnp.int32),
    )
    rest = _stack([s.rest for s in splits])
    return splits[0], _place(state, sharding), _place(rest, sharding)


def make_replica_step(split, train, dropout: bool, sharding, compiler_options=None):
    """The jitted ``(state, rest, batch, lrs, seeds) -> (state, metrics)`` of R replicas
    (``batch`` [R, B, T], ``lrs`` and ``seeds`` [R], metrics [R]); ``state`` is donated. A
    frozen replica's update is discarded; a refused (non-finite) one freezes it."""
    settings = _schedule_settings(train)

    def one(train_state, rest, batch, lr, seed, frozen):
        tx = adamw_with_schedule(lr, **settings)
        new, metrics = update(
            split.graphdef, rest, tx, train_state, batch, seed if dropout else None
        )
        refused = ~(jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]))
        keep = frozen | refused
        kept = jax.tree.map(
            lambda n, o: jnp.where(keep, o, n),
            (new.params, new.opt_state),
            (train_state.params, train_state.opt_state),
        )
        return TrainState(new.step, *kept), metrics, refused

    def step(state: ReplicaState, rest, batch, lrs, seeds):
        frozen = (state.diverged_at != _NONE) | (state.stopped_at != _NONE)
        train_state, metrics, refused = jax.vmap(one)(state.train, rest, batch, lrs, seeds, frozen)
        newly = refused & (state.diverged_at == _NONE) & (state.stopped_at == _NONE)
        diverged_at = jnp.where(newly, state.train.step, state.diverged_at)
        return ReplicaState(train_state, diverged_at, state.stopped_at), metrics

    return jax.jit(
        step,
        donate_argnums=0,
        out_shardings=(sharding, sharding),
        compiler_options=compiler_options,
    )


def _make_eval(split, compiler_options):
    evaluate = lambda params, rest, batch: evaluate_batch(split.eval_graphdef, params, rest, batch)
    return jax.jit(jax.vmap(evaluate), compiler_options=compiler_options)


def _evaluate(eval_fn, params, rest, streams: _Streams, num_batches, sharding) -> list[dict]:
    """Per replica, the metrics pooled over ``num_batches`` batches of ``streams``."""
    per_batch = []
    for i in range(num_batches):
        metrics = eval_fn(params, rest, _place(streams.batch(i), sharding))
        per_batch.append({k: np.asarray(v) for k, v in jax.device_get(metrics).items()})
    count = len(next(iter(per_batch[0].values())))
    return [
        pool_metrics([{k: float(v[r]) for k, v in m.items()} for m in per_batch])
        for r in range(count)
    ]


def _description(config, replicas: Sequence[Replica], early_stop_accuracy) -> dict[str, Any]:
    description = config.to_dict()
    description["replicas"] = [[r.seed, r.lr] for r in replicas]
    description["early_stop_accuracy"] = early_stop_accuracy
    return description


def _finished(workdir: pathlib.Path, replicas: Sequence[Replica]) -> list[ReplicaResult] | None:
    path = workdir / "result.json"
    try:
        results = [ReplicaResult(**r) for r in json.loads(path.read_text())["replicas"]]
    except (OSError, ValueError, TypeError, KeyError):
        if path.exists():
            logging.warning("%s is damaged; rebuilding it from the checkpoint", path)
        return None
    if [(r.seed, r.lr) for r in results] != [(r.seed, r.lr) for r in replicas]:
        return None
    logging.info("%s already finished; its result.json is kept", workdir)
    return results


def _check_early_stop(value) -> float | None:
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"sweep.early_stop_accuracy must be in (0, 1] or 0 (off), got {value!r}")
    return float(value)


def check_replicas(config, replicas: Sequence[Replica], early_stop_accuracy) -> float | None:
    """``ValueError`` naming the setting if ``replicas`` cannot train with ``config`` (none,
    a learning rate the optimizer refuses, a mesh they do not split over, a bad
    ``early_stop_accuracy``); returns the early-stop accuracy (None: off)."""
    if not replicas:
        raise ValueError("replicas must not be empty")
    for replica in replicas:
        make_optimizer(learning_rate=replica.lr, **_schedule_settings(config.train))
    _replica_sharding(config, replicas)
    return _check_early_stop(early_stop_accuracy)


def train_replicas(
    config,
    workdir: str | pathlib.Path,
    replicas: Sequence[Replica],
    *,
    early_stop_accuracy: Any = None,
    compiler_options: Callable[[str], Mapping[str, Any] | None] | None = None,
) -> list[ReplicaResult]:
    """Train ``replicas`` of ``config``'s model into ``workdir`` as one vmapped program
    (resuming from its newest checkpoint); evaluate each on validation and test streams.

    ``early_stop_accuracy``: freeze a replica once its validation accuracy reaches this (None
    or 0: train every replica for ``train.steps``). ``compiler_options`` as in
    ``train_and_evaluate``. Settings that cannot run raise ``ValueError`` naming the field
    before anything is written; a diverged replica is recorded (status ``"nan"``), never
    raised. A finished workdir returns its ``result.json``.
    """
    start_time = time.perf_counter()
    early_stop_accuracy = check_replicas(config, replicas, early_stop_accuracy)
    train = config.train
    _, model_config = check_run_config(config)
    sharding = _replica_sharding(config, replicas)
    workdir = prepare_workdir(workdir)
    check_same_config(workdir, _description(config, replicas, early_stop_accuracy))
    finished = _finished(workdir, replicas)
    if finished is not None:
        return finished
    platform = sharding.mesh.devices.flat[0].platform
    options = None if compiler_options is None else compiler_options(platform)

    split, state, rest = init_replica_state(model_config, replicas, train, sharding)
    count = len(replicas)
    checkpointer = Checkpointer(
        workdir / "checkpoints", every=train.checkpoint_every, keep=train.keep
    )
    state = checkpointer.restore_latest(state)
    start_step = int(state.train.step[0])
    lrs = _place(np.array([r.lr for r in replicas], np.float32), sharding)
    seeds = _place(np.array([r.seed for r in replicas], np.int32), sharding)
    dropout = model_config.dropout_rate > 0 or model_config.attention_dropout_rate > 0
    step_fn = make_replica_step(split, train, dropout, sharding, options)
    eval_fn = _make_eval(split, options)
    training = _Streams(config, replicas, 0, train.batch_size)
    validation = _Streams(config, replicas, VALIDATION_SEED_OFFSET, train.batch_size)
    test = _Streams(config, replicas, EVAL_SEED_OFFSET, train.batch_size)
    evaluate = lambda params, streams: _evaluate(
        eval_fn, params, rest, streams, train.eval_batches, sharding
    )

    from attnjax.training.loop import _param_report

    param_scalars, param_table = _param_report(model_config)
    writers = []
    for replica in replicas:
        (workdir / "replicas" / replica.name).mkdir(parents=True, exist_ok=True)
        writers.append(MetricsWriter(workdir / "replicas" / replica.name, resume_step=start_step))
    telemetry = _ReplicaTelemetry.for_run(config, split, model_config, workdir, replicas, writers)
    loop = _Loop(config, replicas, writers, early_stop_accuracy, telemetry)
    if start_step == 0:
        logging.info(
            "Parameters of %s (each of %d replicas):\n%s", workdir.name, count, param_table
        )
        for writer in writers:
            writer.write_text("params", param_table)
            writer.write(0, param_scalars)
    else:
        logging.info("Resuming %s from step %d", workdir, start_step)
    try:
        compile_s = None
        if start_step < train.steps and not loop.all_frozen(state):
            compile_start = time.perf_counter()
            compiled = step_fn.lower(
                state, rest, _place(training.batch(start_step), sharding), lrs, seeds
            ).compile()
            compile_s = time.perf_counter() - compile_start
            logging.info("Compiled the step of %d replicas in %.2f s", count, compile_s)
            batch_of = lambda step: _place(training.batch(step), sharding)
            telemetry.probe(start_step, state.train.params)  # step 0, or again after a kill
            state = loop.run(compiled, state, rest, lrs, seeds, batch_of, start_step, checkpointer,
                             lambda p: evaluate(p, validation), sharding)  # fmt: skip
        final_validation = evaluate(state.train.params, validation)
        final_test = evaluate(state.train.params, test)
        if compile_s is not None:  # a finished or fully frozen run started again adds none
            done = int(state.train.step[0])
            for writer, val, tst in zip(writers, final_validation, final_test, strict=True):
                summary = {f"val/{k}": v for k, v in val.items()}
                summary.update({f"eval/{k}": v for k, v in tst.items()})
                summary.update(
                    {"perf/compile_s": compile_s, "perf/tokens_per_s": loop.tokens_per_s}
                )
                writer.write(done, summary)
        for writer in writers:  # the records are complete: the summary reads them
            writer.close()
        telemetry_summary = telemetry.summary()
    finally:
        checkpointer.close()
        for writer in writers:
            writer.close()
    wall_s = time.perf_counter() - start_time if compile_s is not None else None
    results = [
        _result(replica, i, state, loop, final_validation[i], final_test[i], param_scalars,
                compile_s, wall_s, telemetry_summary[i])
        for i, replica in enumerate(replicas)
    ]  # fmt: skip
    text = json.dumps({"replicas": [r.to_dict() for r in results]}, indent=2, allow_nan=False)
    atomic_write_text(workdir / "result.json", text)
    return results


def _result(replica, i, state, loop, val, tst, params, compile_s, wall_s, telemetry):
    diverged = int(state.diverged_at[i])
    stopped = int(state.stopped_at[i])
    scores = [val["loss"], tst["loss"]]
    finite = diverged == _NONE and all(math.isfinite(v) for v in scores)
    if diverged != _NONE:
        reason = f"loss or gradient not finite at step {diverged} (lr={replica.lr:g} too high?)"
    elif not finite:
        reason = "evaluation loss not finite"
    else:
        reason = ""
    steps_taken = min(s for s in (diverged, stopped, int(state.train.step[i])) if s != _NONE)
    final_loss = loop.last_loss[i]
    return ReplicaResult(
        name=replica.name,
        seed=replica.seed,
        lr=replica.lr,
        status="ok" if finite else "nan",
        reason=reason,
        steps=steps_taken,
        diverged_step=None if diverged == _NONE else diverged,
        stopped_step=None if stopped == _NONE else stopped,
        final_loss=final_loss,
        val_loss=val["loss"],
        val_accuracy=val["accuracy"],
        val_sequence_accuracy=val["sequence_accuracy"],
        eval_loss=tst["loss"],
        accuracy=tst["accuracy"],
        sequence_accuracy=tst["sequence_accuracy"],
        phase_change_step=telemetry[0],
        best_induction=telemetry[1],
        tokens_per_s=loop.tokens_per_s,
        compile_s=compile_s,
        wall_s=wall_s,
        params=params,
    )


class _Loop:
    """The training loop over the vmapped step: metrics of step s are fetched after step s+1
    is dispatched (the host never stalls the device), evaluation and checkpoints on their
    intervals, early stopping, and the per-replica records."""

    def __init__(self, config, replicas, writers, early_stop_accuracy, telemetry):
        self.config = config
        self.replicas = replicas
        self.writers = writers
        self.early_stop_accuracy = early_stop_accuracy
        self.telemetry = telemetry
        self.last_loss: list[float | None] = [None] * len(replicas)
        self.tokens_per_s: float | None = None

    @staticmethod
    def all_frozen(state: ReplicaState) -> bool:
        frozen = (np.asarray(state.diverged_at) != _NONE) | (np.asarray(state.stopped_at) != _NONE)
        return bool(frozen.all())

    def _write(self, step: int, metrics, extra: dict[str, float] | None = None) -> None:
        host = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
        for i, writer in enumerate(self.writers):
            values = {k: float(v[i]) for k, v in host.items()}
            if extra:
                values.update(extra)
            self.last_loss[i] = values["loss"] if math.isfinite(values["loss"]) else None
            writer.write(step, values)

    def _stop_early(self, state: ReplicaState, scores, step: int, sharding) -> ReplicaState:
        stopped = np.asarray(state.stopped_at).copy()
        diverged = np.asarray(state.diverged_at)
        for i, score in enumerate(scores):
            reached = score["accuracy"] >= self.early_stop_accuracy
            if reached and stopped[i] == _NONE and diverged[i] == _NONE:
                stopped[i] = step
                logging.info("%s stopped early at step %d", self.replicas[i].name, step)
        return state._replace(stopped_at=_place(stopped, sharding))

    def run(self, compiled, state, rest, lrs, seeds, batch_of, start_step, checkpointer,
            validate, sharding):  # fmt: skip
        train = self.config.train
        tokens_per_step = len(self.replicas) * train.batch_size * self.config.task.seq_len
        pending = None
        steady_start, steady_steps, paused = None, 0, 0.0

        def flush(entry):
            step, metrics = entry
            extra = None
            if steady_start is not None and steady_steps:
                seconds = time.perf_counter() - steady_start - paused
                extra = {"tokens_per_s": steady_steps * tokens_per_step / max(seconds, 1e-9)}
            self._write(step, metrics, extra)

        with progress_bar(train.steps, desc="train", initial=start_step) as bar:
            for step in range(start_step, train.steps):
                state, metrics = compiled(state, rest, batch_of(step), lrs, seeds)
                done = step + 1
                if pending is not None:
                    flush(pending)
                    pending = None
                if steady_start is None:
                    jax.block_until_ready(metrics)
                    steady_start = time.perf_counter()
                else:
                    steady_steps += 1
                if done % train.log_every == 0 or done == train.steps:
                    pending = (done, metrics)
                self.telemetry.probe(done, state.train.params)  # fetched at the next one
                pause_start = time.perf_counter()
                if done % train.eval_every == 0 and done != train.steps:
                    scores = validate(state.train.params)
                    for writer, score in zip(self.writers, scores, strict=True):
                        writer.write(done, {f"val/{k}": v for k, v in score.items()})
                    if self.early_stop_accuracy is not None:
                        state = self._stop_early(state, scores, done, sharding)
                stopping = self.all_frozen(state) if done % train.log_every == 0 else False
                if stopping and pending is None:
                    pending = (done, metrics)
                checkpointer.maybe_save(done, state, force=done == train.steps or stopping)
                paused += time.perf_counter() - pause_start
                bar.update(1)
                if stopping:
                    logging.info("every replica is frozen at step %d: training ends", done)
                    self.telemetry.probe(done, state.train.params, force=True)
                    break
            jax.block_until_ready(state)
            end = time.perf_counter()
            if pending is not None:
                flush(pending)
            self.telemetry.flush()
        elapsed = end - steady_start - paused if steady_start else 0.0
        self.tokens_per_s = (
            steady_steps * tokens_per_step / elapsed if steady_steps and elapsed > 0 else None
        )
        return state


class _ReplicaTelemetry:
    """Head telemetry (``attnjax.training.telemetry``) of every replica: one vmapped, jitted
    probe at step 0, every ``train.telemetry_every`` steps and the last, dispatched after the
    step and fetched at the next probe (the host does not wait for it); each replica's scores
    go to its own records. Off (every method a no-op) when ``telemetry_every`` is 0."""

    def __init__(self, probe, every, steps, threshold, replicas, writers, workdir):
        self._probe, self.every, self.steps, self.threshold = probe, every, steps, threshold
        self.replicas, self.writers, self.workdir = replicas, writers, workdir
        self._pending: tuple[int, Any] | None = None
        self._logged = [self._logged_steps(r) for r in replicas] if every else []

    @classmethod
    def for_run(cls, config, split, model_config, workdir, replicas, writers):
        from attnjax.training import telemetry

        train = config.train
        every = int(train.get("telemetry_every", 0))
        threshold = float(
            train.get("phase_change_threshold", telemetry.DEFAULT_PHASE_CHANGE_THRESHOLD)
        )
        probe = None
        if every:
            # eval mode: the other variables (dropout RNG state) are read by no probe
            one = telemetry.make_probe(split.eval_graphdef, split.rest, model_config)
            probe = jax.jit(jax.vmap(one))
        return cls(probe, every, train.steps, threshold, replicas, writers, workdir)

    def _records(self, replica: Replica) -> list[dict]:
        path = self.workdir / "replicas" / replica.name / "metrics.jsonl"
        return read_metrics(path) if path.exists() else []

    def _logged_steps(self, replica: Replica) -> set[int]:
        return {r["step"] for r in self._records(replica) if "telemetry/induction_max" in r}

    def probe(self, step: int, params, *, force: bool = False) -> None:
        due = self.every and (step % self.every == 0 or step == self.steps or force)
        if due and (self._pending is None or self._pending[0] != step):
            self.flush()
            self._pending = (step, self._probe(params))

    def flush(self) -> None:
        if self._pending is None:
            return
        from attnjax.training.telemetry import telemetry_scalars

        step, out = self._pending
        self._pending = None
        host = jax.device_get(out)
        for i, writer in enumerate(self.writers):
            if step not in self._logged[i]:
                writer.write(step, telemetry_scalars({k: v[i] for k, v in host.items()}))
                self._logged[i].add(step)

    def summary(self) -> list[tuple[int | None, float | None]]:
        """Per replica, ``(phase_change_step, the last best induction score)`` from its
        records (before a resume too), and ``telemetry.png`` of all replicas written."""
        if not self.every:
            return [(None, None)] * len(self.replicas)
        from attnjax.training.telemetry import phase_change_step
        from attnjax.viz.telemetry import save_telemetry_plot

        by_run = {r.name: self._records(r) for r in self.replicas}
        save_telemetry_plot(by_run, self.workdir / "telemetry.png", threshold=self.threshold)
        found = []
        for records in by_run.values():
            key = "telemetry/induction_max"
            scores = [r[key] for r in records if key in r]
            last = scores[-1] if scores and isinstance(scores[-1], int | float) else None
            found.append((phase_change_step(records, threshold=self.threshold), last))
        return found
