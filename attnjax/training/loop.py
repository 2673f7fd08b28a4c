"""The training loop: one config in, a trained model and a workdir of results out.

``train_and_evaluate(config, workdir)`` reads a locked ``ConfigDict`` laid out as in
``configs/train.py`` (``model``, ``task``, ``train``, ``mesh``) and writes into ``workdir``:
``config.json``, ``metrics.jsonl``, TensorBoard events (``tensorboard/``), orbax checkpoints
(``checkpoints/``), ``result.json`` and, with head telemetry on (``train.telemetry_every`` > 0,
``attnjax.training.telemetry``), ``telemetry.png``. Started again with the same config and
workdir it resumes from the newest checkpoint, and ends with exactly the parameters of an
uninterrupted run (batches are a pure function of ``(seed, step)``). A workdir that holds a
run of a different config is refused (``ValueError`` naming the differing keys) before anything
in it changes; only ``BOOKKEEPING_KEYS`` (mesh, logging, checkpoint and telemetry settings) may
differ.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from attnjax.models import ModelConfig
from attnjax.training import sharding as sharding_lib
from attnjax.training.checkpoint import Checkpointer
from attnjax.training.files import atomic_write_text, prepare_workdir
from attnjax.training.metrics import MetricsWriter, read_metrics
from attnjax.training.progress import progress_bar
from attnjax.training.run_config import (
    BOOKKEEPING_KEYS,
    EVAL_SEED_OFFSET,
    build_task,
    check_run_config,
    check_same_config,
    model_config_for,
    optimizer_for,
    results_description,
)
from attnjax.training.state import TrainState, init_model, init_train_state
from attnjax.training.step import make_eval_step, make_train_step, pool_metrics
from attnjax.training.telemetry import (
    DEFAULT_PHASE_CHANGE_THRESHOLD,
    make_probe,
    phase_change_step,
    telemetry_scalars,
)

__all__ = [
    "RunResult",
    "BOOKKEEPING_KEYS",
    "build_task",
    "check_run_config",
    "check_same_config",
    "model_config_for",
    "optimizer_for",
    "prepare_workdir",
    "results_description",
    "train_and_evaluate",
]


@dataclasses.dataclass
class RunResult:
    """What a finished run reports (also written to ``workdir/result.json``, strict JSON).

    ``train_loss``, ``tokens_per_s``, ``compile_s`` and ``wall_s`` are ``None`` when unknown:
    a run killed after its last checkpoint but before ``result.json`` is rebuilt from
    ``metrics.jsonl``, which may lack them.

    With head telemetry on: ``phase_change_step``, the first probed step at which the best
    induction score reached ``train.phase_change_threshold`` (``None`` if it never did), and
    ``induction_max``, the best head's induction score at the last step. Both are ``None``
    with telemetry off (and in a ``result.json`` written before they existed).
    """

    workdir: str
    steps: int
    train_loss: float | None
    eval_loss: float
    eval_accuracy: float
    eval_sequence_accuracy: float
    tokens_per_s: float | None
    compile_s: float | None
    wall_s: float | None
    params: dict[str, int]
    phase_change_step: int | None = None
    induction_max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields, with any non-finite number as ``None`` (JSON has no NaN)."""
        finite = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v
        return {k: finite(v) for k, v in dataclasses.asdict(self).items()}


def _param_report(model_config: ModelConfig) -> tuple[dict[str, int], str]:
    from attnjax.accounting import count_params, format_param_table

    report = count_params(model_config)
    return {k: int(v) for k, v in report.scalars().items()}, format_param_table(report)


def _place(tree, shardings):
    """Host arrays → global arrays laid out by ``shardings`` (works on many hosts too)."""

    def put(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def _host_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _evaluate(eval_step, params, eval_task, batch_size, num_batches, mesh) -> dict[str, float]:
    """Metrics over all answers of ``num_batches`` held-out batches (``pool_metrics``)."""
    per_batch = []
    for i in range(num_batches):
        batch = sharding_lib.shard_batch(eval_task.batch(i, batch_size), mesh)
        per_batch.append(eval_step(params, batch))
    return pool_metrics([_host_metrics(m) for m in per_batch])


def train_and_evaluate(
    config,
    workdir: str | pathlib.Path,
    *,
    compiler_options: Callable[[str], Mapping[str, Any] | None] | None = None,
) -> RunResult:
    """Train ``config`` into ``workdir`` (resuming if it holds checkpoints); evaluate at the end.

    ``compiler_options``: XLA options for the train and eval steps as a function of the
    platform of the mesh they run on (``"cpu"``, ``"cuda"``, ``"tpu"``), e.g.
    ``attnjax.perf.cpu.compiler_options``; default: XLA's own.

    A finished run started again returns its ``result.json`` unchanged. Raises
    ``FloatingPointError`` if the loss becomes NaN/inf, ``ValueError`` naming the field for
    impossible settings or a workdir that holds another config.
    """
    start_time = time.perf_counter()
    train = config.train
    task, model_config = check_run_config(config)
    eval_task = build_task(config, seed_offset=EVAL_SEED_OFFSET)
    workdir = prepare_workdir(workdir)
    chief = jax.process_index() == 0  # on many hosts, one writes the files (orbax syncs itself)
    check_same_config(workdir, config.to_dict(), write=chief)
    finished = _finished_result(workdir, train.steps)
    if finished is not None:
        return finished
    mesh = sharding_lib.mesh_from_config(config.mesh)
    options = None if compiler_options is None else compiler_options(mesh.devices.flat[0].platform)

    split = init_model(model_config, train.seed)
    tx = optimizer_for(train)
    state = init_train_state(split.params, tx)
    shardings = sharding_lib.state_shardings(state, mesh)
    state = _place(state, shardings)
    checkpointer = Checkpointer(
        workdir / "checkpoints", every=train.checkpoint_every, keep=train.keep
    )
    state = checkpointer.restore_latest(state)
    start_step = int(state.step)
    param_scalars, param_table = _param_report(model_config)

    dropout = model_config.dropout_rate > 0 or model_config.attention_dropout_rate > 0
    train_step = make_train_step(
        split.graphdef,
        split.rest,
        tx,
        dropout_seed=train.seed if dropout else None,
        state_sharding=shardings,
        compiler_options=options,
    )
    eval_step = make_eval_step(split.eval_graphdef, split.rest, compiler_options=options)
    tokens_per_step = train.batch_size * task.seq_len
    batch_of = lambda step: sharding_lib.shard_batch(task.batch(step, train.batch_size), mesh)
    evaluate = lambda params: _evaluate(
        eval_step, params, eval_task, train.batch_size, train.eval_batches, mesh
    )

    # Records after the checkpoint this run starts from are dropped (all of them at step 0).
    writer = MetricsWriter(workdir, resume_step=start_step) if chief else _NoWriter()
    if start_step == 0:
        logging.info("Parameters of %s:\n%s", workdir.name, param_table)
        writer.write_text("params", param_table)
        writer.write(0, param_scalars)
    else:
        logging.info("Resuming %s from step %d", workdir, start_step)

    try:
        telemetry = _Telemetry.for_run(config, split, model_config, state, writer, workdir, chief)
        if start_step < train.steps:
            compile_start = time.perf_counter()
            compiled = train_step.lower(state, batch_of(start_step)).compile()
            compile_s = time.perf_counter() - compile_start
            logging.info("Compiled the train step in %.2f s", compile_s)
            state, train_loss, tokens_per_s = _run_steps(
                compiled, state, batch_of, start_step, config, writer, checkpointer, evaluate,
                tokens_per_step, telemetry,
            )  # fmt: skip
        else:  # killed after its last checkpoint, before result.json: rebuild from the records
            train_loss, tokens_per_s, compile_s = _recorded_performance(workdir, train.steps)
            telemetry.probe(start_step, state.params)  # if killed before it was logged
            telemetry.flush()
        final = evaluate(state.params)
        if start_step < train.steps:  # a finished run started again adds no records
            summary = {f"eval/{k}": v for k, v in final.items()}
            summary.update({"perf/compile_s": compile_s, "perf/tokens_per_s": tokens_per_s})
            writer.write(int(state.step), summary)
    finally:
        checkpointer.close()
        writer.close()
    if not math.isfinite(final["loss"]):
        raise FloatingPointError(f"eval loss is {final['loss']} after {train.steps} steps")
    phase_change, induction_max = telemetry.summary(int(state.step))
    result = RunResult(
        workdir=str(workdir),
        steps=int(state.step),
        train_loss=train_loss,
        eval_loss=final["loss"],
        eval_accuracy=final["accuracy"],
        eval_sequence_accuracy=final["sequence_accuracy"],
        tokens_per_s=tokens_per_s,
        compile_s=compile_s,
        wall_s=time.perf_counter() - start_time if start_step < train.steps else None,
        params=param_scalars,
        phase_change_step=phase_change,
        induction_max=induction_max,
    )
    if chief:
        text = json.dumps(result.to_dict(), indent=2, allow_nan=False)
        atomic_write_text(workdir / "result.json", text)
    return result


def _finished_result(workdir: pathlib.Path, steps: int) -> RunResult | None:
    """The ``result.json`` of a run of ``steps`` steps already finished here, if any."""
    path = workdir / "result.json"
    try:
        recorded = json.loads(path.read_text())
        result = RunResult(**recorded)
    except (OSError, ValueError, TypeError):  # none yet, or unreadable: run (or rebuild) it
        if path.exists():
            logging.warning("%s is damaged; rebuilding it from the checkpoint", path)
        return None
    if result.steps != steps:
        return None
    logging.info("%s already finished %d steps; its result.json is kept", workdir, steps)
    return result


def _recorded_performance(
    workdir: pathlib.Path, steps: int
) -> tuple[float | None, float | None, float | None]:
    """``(train_loss, tokens_per_s, compile_s)`` of a finished run, from ``metrics.jsonl``:
    the train loss logged at ``steps``, the last throughput logged, the compile time if the
    run logged its summary; ``None`` for what is not there."""
    records = read_metrics(workdir) if (workdir / "metrics.jsonl").exists() else []
    found = lambda key, rows: next((r[key] for r in reversed(rows) if key in r), None)
    finite = lambda v: v if isinstance(v, int | float) and math.isfinite(v) else None
    last = [r for r in records if r.get("step") == steps]
    return (
        finite(found("loss", last)),
        finite(found("perf/tokens_per_s", records) or found("tokens_per_s", records)),
        finite(found("perf/compile_s", records)),
    )


class _NoWriter:
    """Stands in for ``MetricsWriter`` on processes other than the first."""

    def write(self, step, scalars) -> None:
        pass

    def write_text(self, tag, text) -> None:
        pass

    def close(self) -> None:
        pass


class _Telemetry:
    """The head-telemetry probe of one run (``attnjax.training.telemetry``), or nothing when
    ``train.telemetry_every`` is 0.

    ``probe(step, params)`` dispatches the jitted probe at the steps it is due (0, every
    ``telemetry_every``, the last) and keeps its output on the device; ``flush()`` fetches and
    logs it, called one step later like the train metrics. Every process runs the probe (it is
    one program across hosts); the first writes. A step already in ``metrics.jsonl`` (the
    checkpoint a run resumes from) is probed again but not logged twice.
    """

    def __init__(self, probe, every, steps, threshold, writer, workdir, logged):
        self._probe, self.every, self.steps = probe, every, steps
        self.threshold, self._writer, self._workdir = threshold, writer, workdir
        self._logged = logged  # steps whose telemetry metrics.jsonl already holds
        self._pending: tuple[int, Any] | None = None

    @classmethod
    def for_run(cls, config, split, model_config, state, writer, workdir, chief) -> _Telemetry:
        train = config.train
        every = int(train.get("telemetry_every", 0))
        threshold = float(train.get("phase_change_threshold", DEFAULT_PHASE_CHANGE_THRESHOLD))
        if not every:
            return cls(None, 0, train.steps, threshold, writer, workdir, set())
        # Traced here, compiled by XLA in a thread while the train step compiles.
        lowered = jax.jit(make_probe(split.eval_graphdef, split.rest, model_config))
        lowered = lowered.lower(state.params)
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="probe-compile")
        probe = pool.submit(lowered.compile)
        pool.shutdown(wait=False)  # the compile goes on; probe() waits for it at step 0
        records = read_metrics(workdir) if chief and (workdir / "metrics.jsonl").exists() else []
        logged = {r["step"] for r in records if "telemetry/induction_max" in r}
        return cls(probe, every, train.steps, threshold, writer, workdir, logged)

    def due(self, step: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == self.steps)

    def probe(self, step: int, params) -> None:
        if self.due(step):
            self.flush()
            if isinstance(self._probe, concurrent.futures.Future):
                self._probe = self._probe.result()
            self._pending = (step, self._probe(params))

    def flush(self) -> None:
        if self._pending is not None:
            step, out = self._pending
            self._pending = None
            if step not in self._logged:
                self._writer.write(step, telemetry_scalars(out))
                self._logged.add(step)

    def summary(self, step: int) -> tuple[int | None, float | None]:
        """``(phase_change_step, induction_max at step)`` from ``metrics.jsonl`` (all of the
        run's probes, before a resume too) and ``telemetry.png`` written; ``(None, None)``
        with telemetry off or on processes other than the first."""
        path = self._workdir / "metrics.jsonl"
        if not self.every or isinstance(self._writer, _NoWriter) or not path.exists():
            return None, None
        records = [r for r in read_metrics(path) if "telemetry/induction_max" in r]
        last = [r["telemetry/induction_max"] for r in records if r["step"] == step]
        from attnjax.viz.telemetry import save_telemetry_plot

        save_telemetry_plot(
            {self._workdir.name: read_metrics(path)},
            self._workdir / "telemetry.png",
            threshold=self.threshold,
        )
        value = last[-1] if last and isinstance(last[-1], float) else None
        return phase_change_step(records, threshold=self.threshold), value


def _run_steps(
    compiled, state: TrainState, batch_of, start_step, config, writer, checkpointer, evaluate,
    tokens_per_step, telemetry: _Telemetry,
):  # fmt: skip
    """The loop proper: metrics of step s (and the telemetry probed after it) are fetched after
    step s+1 is dispatched. The probe's device time is part of the steady-state throughput."""
    train = config.train
    pending: tuple[int, Any] | None = None
    last_loss = math.nan
    steady_start, steady_steps = None, 0
    paused = 0.0  # seconds spent in evaluation and checkpointing, not in steps

    def flush(entry):
        step, metrics = entry
        values = _host_metrics(metrics)
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(
                f"loss is {values['loss']} at step {step} (train.lr={train.lr} too high?)"
            )
        if steady_start is not None and steady_steps:  # so far, without evals and saves
            seconds = time.perf_counter() - steady_start - paused
            values["tokens_per_s"] = steady_steps * tokens_per_step / max(seconds, 1e-9)
        writer.write(step, values)
        return values["loss"]

    telemetry.probe(start_step, state.params)  # step 0, or a resume point not yet logged
    with progress_bar(train.steps, desc="train", initial=start_step) as bar:
        for step in range(start_step, train.steps):
            state, metrics = compiled(state, batch_of(step))
            done = step + 1
            if pending is not None:
                last_loss = flush(pending)
                pending = None
            telemetry.flush()
            if steady_start is None:  # time steady state from the end of the first step
                jax.block_until_ready(metrics)
                steady_start = time.perf_counter()
            else:
                steady_steps += 1
            if done % train.log_every == 0 or done == train.steps:
                pending = (done, metrics)
            telemetry.probe(done, state.params)
            pause_start = time.perf_counter()
            if done % train.eval_every == 0 and done != train.steps:
                scores = evaluate(state.params)
                writer.write(done, {f"eval/{k}": v for k, v in scores.items()})
            checkpointer.maybe_save(done, state, force=done == train.steps)
            paused += time.perf_counter() - pause_start
            bar.update(1)
        jax.block_until_ready(state)
        end = time.perf_counter()
        if pending is not None:
            last_loss = flush(pending)
        telemetry.flush()
    elapsed = end - steady_start - paused if steady_start else 0.0
    tokens_per_s = steady_steps * tokens_per_step / elapsed if steady_steps and elapsed > 0 else 0.0
    logging.info("Steady state: %.0f tokens/s", tokens_per_s)
    return state, last_loss, tokens_per_s
