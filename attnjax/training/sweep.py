"""Head × layer sweeps: every grid point trained in turn in one process.

Each point ``h{heads}_l{layers}`` trains in its own sub-workdir with
``train_and_evaluate`` and leaves a ``row.json`` there (status ``ok``, ``failed``, ``nan`` or
``oom`` with a one-line reason), so a re-run skips finished points and shards of one sweep run on
different machines merge by gathering their sub-workdirs: ``results.csv`` is always written from
every ``row.json`` found. Each point's model is ``attnjax.models.point_config`` of the run
config's model (the same rule the count sweep uses; see ``attnjax.models.grid`` for what
``sweep.fixed`` holds constant). Sweeps on one workdir may run at once: each point is claimed
(``files.claim``) before it runs, and a point another process holds is skipped. Grid points
have different shapes, so each compiles once; JAX's persistent compilation cache
(``enable_compilation_cache``) makes re-runs and shards start fast.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import io
import json
import math
import pathlib
import time
import traceback
from typing import Any

import ml_collections
from absl import logging

from attnjax import paths
from attnjax.functional._checks import as_int, as_ints, check_choice
from attnjax.models import FIXED, ModelConfig, point_config
from attnjax.training import sweep_stats
from attnjax.training.files import atomic_write_text, claim, prepare_workdir
from attnjax.training.progress import progress_bar
from attnjax.training.replicas import Replica, replicas_for, train_replicas
from attnjax.training.run_config import (
    build_task,
    check_run_config,
    check_same_config,
    results_description,
)

__all__ = [
    "COLUMNS",
    "SweepPoint",
    "enable_compilation_cache",
    "format_results",
    "merge_results",
    "parse_shard",
    "point_replicas",
    "default_workdir",
    "point_run_config",
    "recorded_points",
    "run_sweep",
    "save_sweep_telemetry",
    "sweep_points",
]

COLUMNS = sweep_stats.CELL_COLUMNS  # results.csv's columns


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """A cell of the grid: ``heads`` x ``layers`` x a variant of ``sweep.variants`` (its label
    and its ``(dotted key, value)`` overrides; ``""`` and none for a plain heads x layers
    sweep)."""

    heads: int
    layers: int
    variant: str = ""
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return f"h{self.heads}_l{self.layers}" + (f"_{self.variant}" if self.variant else "")

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.heads, self.layers, self.variant)


def parse_shard(shard: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``; ``ValueError`` naming ``sweep.shard``."""
    try:
        index, count = (int(part) for part in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"sweep.shard={shard!r} must look like 'i/n', e.g. '0/4'") from None
    if not 0 <= index < count:
        raise ValueError(f"sweep.shard={shard!r} needs 0 <= i < n")
    return index, count


def sweep_points(config) -> list[SweepPoint]:
    """All points of ``config.sweep`` (heads × layers), in order."""
    sweep = config.sweep
    heads = as_ints("sweep.heads", sweep.heads)
    layers = as_ints("sweep.layers", sweep.layers)
    check_choice("sweep.fixed", sweep.fixed, FIXED)
    as_int("sweep.head_dim", sweep.head_dim, minimum=1)  # used at fixed head_dim only
    variants = _variants(config) or [("", ())]
    return [
        SweepPoint(h, n, label, overrides) for label, overrides in variants for n in layers
        for h in heads
    ]  # fmt: skip


def _variants(config) -> list[tuple[str, tuple[tuple[str, Any], ...]]]:
    """``sweep.variants`` (dicts of dotted config keys to values, each with an optional
    ``name``) as ``(label, overrides)``; ``ValueError`` naming ``sweep.variants`` if malformed."""
    found = []
    for i, variant in enumerate(config.sweep.get("variants", ()) or ()):
        variant = variant.to_dict() if hasattr(variant, "to_dict") else variant
        if not isinstance(variant, dict) or not variant:
            raise ValueError(f"sweep.variants[{i}] must be a non-empty dict, got {variant!r}")
        overrides = tuple((k, v) for k, v in variant.items() if k != "name")
        for key, _ in overrides:
            *parents, leaf = key.split(".")
            section = config
            for parent in parents:
                section = section.get(parent) if hasattr(section, "get") else None
            if section is None or not hasattr(section, "get") or leaf not in section:
                raise ValueError(f"sweep.variants[{i}]: {key!r} is not a field of the config")
            if key.startswith("sweep."):
                raise ValueError(f"sweep.variants[{i}]: {key!r} may not change the sweep itself")
        label = str(variant.get("name") or "_".join(f"{k.split('.')[-1]}{v}" for k, v in overrides))
        found.append((label, overrides))
    labels = [label for label, _ in found]
    if len(set(labels)) != len(labels):
        raise ValueError(f"sweep.variants have repeated names: {labels}")
    return found


def point_run_config(config, point: SweepPoint) -> ml_collections.ConfigDict:
    """The run config of one point: ``config`` with its model replaced by
    ``point_config(model, heads, layers, sweep.fixed, sweep.head_dim)``. Only the model fields
    that change are written, so the run config keeps the keys (and the ``config.json``) it had.
    ``ValueError`` naming the field if the point's model cannot be built."""
    config = _with_overrides(config, point)
    base, model = _models_of(config, point)
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked, independent copy
    changed = {k: v for k, v in model.to_dict().items() if v != getattr(base, k)}
    config.model.update(changed)
    config.lock()
    return config


def _with_overrides(config, point: SweepPoint):
    """``config`` with ``point``'s variant overrides applied to a copy that keeps its field
    references (``model.max_seq_len`` follows an overridden ``task.seq_len``)."""
    if not point.overrides:
        return config
    config = copy.deepcopy(config)
    config.unlock()
    for key, value in point.overrides:
        *parents, leaf = key.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    config.lock()
    return config


def _point_models(config, point: SweepPoint) -> tuple[ModelConfig, ModelConfig]:
    """The base model of the sweep (with the point's variant) and the model of ``point``."""
    return _models_of(_with_overrides(config, point), point)


def _models_of(config, point: SweepPoint) -> tuple[ModelConfig, ModelConfig]:
    """``_point_models`` of a config that already holds the point's variant overrides."""
    base = ModelConfig.from_config(config.model)
    sweep = config.sweep
    return base, point_config(base, point.heads, point.layers, sweep.fixed, sweep.head_dim)


def enable_compilation_cache(directory: str | pathlib.Path | None = None) -> pathlib.Path:
    """Turn on JAX's persistent compilation cache (default ``attnjax.paths.cache_dir("jax")``:
    ``$ATTNJAX_CACHE/jax``, else ``~/.cache/attnjax/jax``)."""
    import jax

    directory = pathlib.Path(directory or paths.cache_dir("jax")).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return directory


def _classify(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, FloatingPointError):
        return "nan"
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return "oom"
    return "failed"


def _one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}"[:300]


def _cell_keys(point: SweepPoint, config, params: dict[str, int] | None = None) -> dict:
    """What a point's rows share: its grid keys, sizes and parameter totals."""
    try:
        model = _point_models(config, point)[1]
        sizes = dict(model_dim=model.model_dim, head_dim=model.resolved_head_dim)
    except ValueError:  # a point that cannot be built: its failure row says why
        sizes = dict(model_dim=config.model.model_dim, head_dim="")
    params = params or {}
    return dict(
        heads=point.heads, layers=point.layers, variant=point.variant, **sizes,
        params_total=params.get("params/total", ""),
        params_attention=params.get("params/attention", ""),
        params_per_head=params.get("params/per_head", ""),
    )  # fmt: skip


_RESULT_FIELDS = (
    "seed", "lr", "status", "reason", "steps", "diverged_step", "stopped_step", "final_loss",
    "val_loss", "val_accuracy", "val_sequence_accuracy", "eval_loss", "accuracy",
    "sequence_accuracy", "phase_change_step", "best_induction", "tokens_per_s", "compile_s",
    "wall_s",
)  # fmt: skip


def _point_row(point: SweepPoint, config, results) -> dict[str, Any]:
    """``row.json`` of a trained point: its keys and one row per replica."""
    cell = _cell_keys(point, config, results[0].params)
    replicas = [{**cell, **{f: getattr(r, f) for f in _RESULT_FIELDS}} for r in results]
    ok = [r for r in results if r.status == "ok"]
    status = "ok" if ok else "nan"
    reason = "" if ok else f"every replica diverged ({results[0].reason})"
    return {**cell, "status": status, "reason": reason, "replicas": replicas}


def _failed_row(point: SweepPoint, config, replicas, status: str, reason: str, wall_s) -> dict:
    """``row.json`` of a point that raised: every replica recorded with the point's reason."""
    cell = _cell_keys(point, config)
    rows = [
        {**cell, **dict.fromkeys(_RESULT_FIELDS), "seed": r.seed, "lr": r.lr, "status": status,
         "reason": reason, "wall_s": wall_s}
        for r in replicas
    ]  # fmt: skip
    return {**cell, "status": status, "reason": reason, "replicas": rows}


def point_replicas(config) -> list[Replica]:
    """The replicas every point trains: ``sweep.seeds`` seeds (default 1) for each of
    ``sweep.learning_rates`` (default: ``train.lr``)."""
    sweep = config.sweep
    return replicas_for(sweep.get("seeds", 1), sweep.get("learning_rates", ()), config.train)


def _check_buildable(config, points: list[SweepPoint]) -> None:
    """Raise ``ValueError`` naming the field for settings that no point can run with: the task,
    ``train``, ``mesh``, the replicas, or a model config that fails at every point. A point
    that fails alone (e.g. 3 heads of a 16-wide model) is recorded as failed in its turn."""
    from attnjax.training import replicas as replicas_lib

    replicas = point_replicas(config)
    replicas_lib.check_replicas(config, replicas, config.sweep.get("early_stop_accuracy", 0))
    task = build_task(config)  # the task of every point without task overrides: built once
    errors = []
    for point in points:
        overridden = any(key.startswith("task.") for key, _ in point.overrides)
        try:
            check_run_config(point_run_config(config, point), None if overridden else task)
        except ValueError as error:
            errors.append((point, error))
    if len(errors) == len(points):
        point, error = errors[0]
        raise ValueError(f"{error} (at every point of the sweep, e.g. {point.name})")


def run_sweep(
    config, workdir: str | pathlib.Path, *, echo=print, compiler_options=None
) -> list[dict[str, Any]]:
    """Train every point of this shard not yet finished; return the merged cells of all points
    (``merge_results``).

    Each point trains ``point_replicas(config)`` (seeds x learning rates) as one vmapped
    program (``attnjax.training.replicas``). Settings no point can run with raise
    ``ValueError`` before anything is written. A point that raises (bad shape, out of memory)
    is recorded and the sweep goes on; a diverged replica is recorded and its point goes on.
    ``compiler_options`` goes to each point's ``train_replicas`` (e.g.
    ``attnjax.perf.cpu.compiler_options``, as ``experiments.sweep`` passes unless
    ``--cpu_tune=false``).
    """
    points = sweep_points(config)
    index, count = parse_shard(config.sweep.shard)
    _check_buildable(config, points)
    workdir = prepare_workdir(workdir)
    check_same_config(workdir, config.to_dict(), filename="sweep_config.json", what="sweep")
    mine = points[index::count]
    with progress_bar(len(mine), desc="sweep", unit="point") as bar:
        for point in mine:
            _run_point(config, point, workdir, echo, compiler_options)
            bar.update(1)
    return merge_results(workdir, points)


def _run_point(config, point: SweepPoint, workdir: pathlib.Path, echo, compiler_options) -> None:
    """Run ``point`` unless it is finished or another process is running it (its claim is held
    from before ``row.json`` is read until after it is written)."""
    import jax

    point_dir = workdir / point.name
    one_process = jax.process_count() == 1  # many hosts run each point together: no claims
    with claim(point_dir) if one_process else contextlib.nullcontext(True) as mine:
        if not mine:
            echo(f"{point.name}: being run by another process, skipped")
            return
        _run_claimed_point(config, point, point_dir, echo, compiler_options)


def _run_claimed_point(
    config, point: SweepPoint, point_dir: pathlib.Path, echo, compiler_options
) -> None:
    row_path = point_dir / "row.json"
    previous = _read_row(row_path) if row_path.exists() else None
    if row_path.exists() and previous is None:  # run again: result.json or checkpoint rebuild it
        logging.warning("%s is damaged; rebuilding it by running %s again", row_path, point.name)
    if previous is not None and (previous["status"] == "ok" or not config.sweep.retry_failed):
        echo(f"{point.name}: already finished ({previous['status']}), skipped")
        return
    start = time.perf_counter()
    replicas = point_replicas(config)
    try:
        run_config = point_run_config(config, point)
        results = train_replicas(
            run_config, point_dir, replicas,
            early_stop_accuracy=config.sweep.get("early_stop_accuracy", 0),
            compiler_options=compiler_options,
        )  # fmt: skip
        row = _point_row(point, config, results)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # noqa: BLE001 - a failing point must not stop the sweep
        if isinstance(error, ValueError | FloatingPointError):  # its settings: one line says it
            logging.warning("%s failed: %s", point.name, _one_line(error))
        else:
            logging.warning("%s failed:\n%s", point.name, traceback.format_exc())
        wall_s = time.perf_counter() - start
        row = _failed_row(point, config, replicas, _classify(error), _one_line(error), wall_s)
    point_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(row_path, json.dumps(_finite(row), indent=2, allow_nan=False))
    echo(_said(point, row))


def _said(point: SweepPoint, row: dict[str, Any]) -> str:
    """The line a finished point prints."""
    if row["status"] != "ok":
        return f"{point.name}: {row['status']}: {row['reason']}"
    ok = [r for r in row["replicas"] if r["status"] == "ok"]
    accuracy = [r["accuracy"] for r in ok]
    spread = f" ({min(accuracy):.3f}-{max(accuracy):.3f})" if len(ok) > 1 else ""
    wall = max((r["wall_s"] or 0.0) for r in row["replicas"])
    return (
        f"{point.name}: accuracy {sum(accuracy) / len(ok):.3f}{spread} over {len(ok)} of "
        f"{len(row['replicas'])} replicas, {row['params_total']} params, {wall:.1f} s"
    )


def _finite(tree):
    """``tree`` with every non-finite float as ``None`` (strict JSON)."""
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_finite(v) for v in tree]
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree


def merge_results(
    workdir: str | pathlib.Path, points: list[SweepPoint] | None = None
) -> list[dict[str, Any]]:
    """Gather every ``*/row.json`` under ``workdir`` (all shards) into three tables and return
    the first: ``results.csv`` (one row per cell at its best learning rate: means over seeds,
    with ``_std`` and ``_ci95`` columns; ``attnjax.training.sweep_stats``), ``results_by_lr.csv``
    (one row per cell and learning rate) and ``replicas.csv`` (every replica).

    Points of ``points`` with no row yet are listed with status ``missing``. ``ValueError``
    naming ``workdir`` if it is not a directory or holds no sweep.
    """
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise ValueError(f"workdir={str(workdir)!r} is not a directory (nothing to merge)")
    rows = {}
    for path in sorted(workdir.glob("*/row.json")):
        row = _read_row(path) or _row_from_run(path)
        rows[(row["heads"], row["layers"], row.get("variant", ""))] = row
    replica_rows = [replica for row in rows.values() for replica in row["replicas"]]
    cells, by_lr = sweep_stats.aggregate(replica_rows)
    for point in points or []:
        if point.key not in rows:
            cells.append(
                {**dict.fromkeys(sweep_stats.CELL_COLUMNS, ""), "heads": point.heads,
                 "layers": point.layers, "variant": point.variant, "status": "missing",
                 "reason": "not run yet (another shard?)"}
            )  # fmt: skip
    if not cells:
        raise ValueError(f"workdir={str(workdir)!r} holds no sweep (no */row.json)")
    order = lambda r: (int(r["layers"]), int(r["heads"]), str(r.get("variant", "")))
    cells.sort(key=order)
    tables = (
        ("results.csv", cells, sweep_stats.CELL_COLUMNS),
        ("results_by_lr.csv", sorted(by_lr, key=lambda r: (*order(r), float(r["lr"]))),
         sweep_stats.BY_LR_COLUMNS),
        ("replicas.csv", replica_rows, sweep_stats.REPLICA_COLUMNS),
    )  # fmt: skip
    for name, table_rows, columns in tables:
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table_rows)
        atomic_write_text(workdir / name, table.getvalue())  # shards may merge at once
    return cells


def _read_row(path: pathlib.Path) -> dict[str, Any] | None:
    """The row in ``path``; ``None`` if it cannot be read (truncated, not a row)."""
    try:
        row = json.loads(path.read_text())
        if isinstance(row, dict) and {"heads", "layers", "status", "replicas"} <= row.keys():
            return row
    except (OSError, ValueError):
        pass
    return None


def _row_from_run(row_path: pathlib.Path) -> dict[str, Any]:
    """A damaged ``row.json`` rebuilt (and rewritten) from its point's ``config.json`` and
    ``result.json``; ``ValueError`` naming it when those cannot rebuild it."""
    from attnjax.training.replicas import ReplicaResult

    point_dir = row_path.parent
    try:
        recorded = json.loads((point_dir / "config.json").read_text())
        recorded.pop("replicas"), recorded.pop("early_stop_accuracy")
        run_config = ml_collections.ConfigDict(recorded)
        stored = json.loads((point_dir / "result.json").read_text())["replicas"]
        results = [ReplicaResult(**r) for r in stored]
        heads, layers = run_config.model.num_heads, run_config.model.num_layers
        variant = point_dir.name.removeprefix(f"h{heads}_l{layers}").removeprefix("_")
        point = SweepPoint(heads, layers, variant)
        row = _point_row(point, run_config, results)
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        raise ValueError(
            f"{row_path} is damaged and its point has no readable result.json to rebuild it "
            "from; run the sweep again (without --merge) to rebuild it from its checkpoint"
        ) from None
    logging.warning("%s was damaged; rebuilt it from %s", row_path, point_dir / "result.json")
    atomic_write_text(row_path, json.dumps(_finite(row), indent=2, allow_nan=False))
    return row


def format_results(rows: list[dict[str, Any]]) -> str:
    """The printed table of a sweep's cells (``sweep_stats.format_cells``): means ± 95%
    intervals over seeds at each cell's best learning rate, and failures."""
    reasons = [
        f"  {r['heads']}x{r['layers']}{'_' + r['variant'] if r.get('variant') else ''}: "
        f"{r['reason']}"
        for r in rows
        if r.get("reason")
    ]
    failures = ["failures:", *reasons] if reasons else []
    return "\n".join([sweep_stats.format_cells(rows), *failures])


def save_sweep_telemetry(workdir: str | pathlib.Path, threshold: float | None = None):
    """``telemetry.png`` in ``workdir``: the head telemetry of every replica of every point on
    one figure (a line per ``point/replica``, e.g. a 1-layer and a 2-layer model side by side);
    ``None`` (nothing written) if no replica logged telemetry."""
    from attnjax.training.metrics import read_metrics
    from attnjax.viz.telemetry import save_telemetry_plot

    workdir = pathlib.Path(workdir)
    by_run = {}
    for path in sorted(workdir.glob("*/replicas/*/metrics.jsonl")):
        records = [r for r in read_metrics(path) if "telemetry/induction_max" in r or "loss" in r]
        if any("telemetry/induction_max" in r for r in records):
            by_run[f"{path.parent.parent.parent.name}/{path.parent.name}"] = records
    if not by_run:
        return None
    return save_telemetry_plot(by_run, workdir / "telemetry.png", threshold=threshold)


def recorded_points(workdir: str | pathlib.Path) -> list[SweepPoint] | None:
    """The points of the sweep recorded in ``workdir/sweep_config.json``, ``None`` if there is
    no such file; ``ValueError`` naming the workdir if it cannot be read."""
    path = pathlib.Path(workdir) / "sweep_config.json"
    if not path.is_file():
        return None
    try:
        return sweep_points(ml_collections.ConfigDict(json.loads(path.read_text())))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"workdir={str(workdir)!r} has an unreadable sweep_config.json") from None


def default_workdir(config) -> pathlib.Path:
    """``~/attnjax_runs/sweep_<task>_fixed_<model_dim|head_dim>_<hash>`` (``ATTNJAX_RUNS``
    moves the root; ``--workdir`` overrides it). The hash is of ``results_description``: the same
    sweep (its shards too, whatever their mesh) reuses its workdir, another never collides with
    it."""
    root = paths.runs_dir()
    text = json.dumps(results_description(config), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return root / f"sweep_{config.task.name}_fixed_{config.sweep.fixed}_{digest}"
