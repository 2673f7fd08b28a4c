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
from attnjax.training.files import atomic_write_text, claim, prepare_workdir
from attnjax.training.loop import train_and_evaluate
from attnjax.training.progress import progress_bar
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
    "default_workdir",
    "point_run_config",
    "recorded_points",
    "run_sweep",
    "sweep_points",
]

COLUMNS = (
    "heads",
    "layers",
    "model_dim",
    "head_dim",
    "params_total",
    "params_attention",
    "params_per_head",
    "final_loss",
    "eval_loss",
    "accuracy",
    "sequence_accuracy",
    "tokens_per_s",
    "compile_s",
    "wall_s",
    "status",
    "reason",
)


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    heads: int
    layers: int

    @property
    def name(self) -> str:
        return f"h{self.heads}_l{self.layers}"


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
    return [SweepPoint(h, n) for n in layers for h in heads]


def point_run_config(config, point: SweepPoint) -> ml_collections.ConfigDict:
    """The run config of one point: ``config`` with its model replaced by
    ``point_config(model, heads, layers, sweep.fixed, sweep.head_dim)``. Only the model fields
    that change are written, so the run config keeps the keys (and the ``config.json``) it had.
    ``ValueError`` naming the field if the point's model cannot be built."""
    base, model = _point_models(config, point)
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked, independent copy
    changed = {k: v for k, v in model.to_dict().items() if v != getattr(base, k)}
    config.model.update(changed)
    config.lock()
    return config


def _point_models(config, point: SweepPoint) -> tuple[ModelConfig, ModelConfig]:
    """The base model of the sweep and the model of ``point``."""
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


def _row(point: SweepPoint, config, result=None, **extra) -> dict[str, Any]:
    try:
        model = _point_models(config, point)[1]
        sizes = dict(model_dim=model.model_dim, head_dim=model.resolved_head_dim)
    except ValueError:  # a point that cannot be built: its failure row says why
        sizes = dict(model_dim=config.model.model_dim)
    row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    row.update(heads=point.heads, layers=point.layers, **sizes)
    if result is not None:
        params = result.params
        row.update(
            params_total=params.get("params/total", ""),
            params_attention=params.get("params/attention", ""),
            params_per_head=params.get("params/per_head", ""),
            final_loss=result.train_loss,
            eval_loss=result.eval_loss,
            accuracy=result.eval_accuracy,
            sequence_accuracy=result.eval_sequence_accuracy,
            tokens_per_s=result.tokens_per_s,
            compile_s=result.compile_s,
            wall_s=result.wall_s,
            status="ok",
        )
    row.update(extra)
    return row


def _check_buildable(config, points: list[SweepPoint]) -> None:
    """Raise ``ValueError`` naming the field for settings that no point can run with: the task,
    ``train``, ``mesh``, or a model config that fails at every point. A point that fails alone
    (e.g. 3 heads of a 16-wide model) is recorded as failed when its turn comes."""
    from attnjax.training import sharding

    task = build_task(config)  # the task is shared by every point: built once
    errors = []
    for point in points:
        try:
            check_run_config(point_run_config(config, point), task)
        except ValueError as error:
            errors.append((point, error))
    if len(errors) == len(points):
        point, error = errors[0]
        raise ValueError(f"{error} (at every point of the sweep, e.g. {point.name})")
    sharding.mesh_from_config(config.mesh)


def run_sweep(
    config, workdir: str | pathlib.Path, *, echo=print, compiler_options=None
) -> list[dict[str, Any]]:
    """Train every point of this shard not yet finished; return the merged rows of all points.

    Settings no point can run with raise ``ValueError`` before anything is written. A point
    that raises (bad shape, NaN loss, out of memory) is recorded and the sweep goes on.
    ``compiler_options`` goes to each point's ``train_and_evaluate`` (e.g.
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
    try:
        run_config = point_run_config(config, point)
        result = train_and_evaluate(run_config, point_dir, compiler_options=compiler_options)
        row = _row(point, config, result)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # noqa: BLE001 - a failing point must not stop the sweep
        if isinstance(error, ValueError | FloatingPointError):  # its settings: one line says it
            logging.warning("%s failed: %s", point.name, _one_line(error))
        else:
            logging.warning("%s failed:\n%s", point.name, traceback.format_exc())
        row = _row(
            point, config, status=_classify(error), reason=_one_line(error),
            wall_s=time.perf_counter() - start,
        )  # fmt: skip
    point_dir.mkdir(parents=True, exist_ok=True)
    row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    atomic_write_text(row_path, json.dumps(row, indent=2, allow_nan=False))
    if row["status"] == "ok":
        wall = "" if row["wall_s"] is None else f", {row['wall_s']:.1f} s"
        echo(
            f"{point.name}: accuracy {row['accuracy']:.3f}, eval loss {row['eval_loss']:.3f}, "
            f"{row['params_total']} params{wall}"
        )
    else:
        echo(f"{point.name}: {row['status']}: {row['reason']}")


def merge_results(
    workdir: str | pathlib.Path, points: list[SweepPoint] | None = None
) -> list[dict[str, Any]]:
    """Gather every ``*/row.json`` under ``workdir`` (all shards) into ``results.csv``.

    Points of ``points`` with no row yet are listed with status ``missing``. ``ValueError``
    naming ``workdir`` if it is not a directory.
    """
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise ValueError(f"workdir={str(workdir)!r} is not a directory (nothing to merge)")
    rows = {}
    for path in sorted(workdir.glob("*/row.json")):
        row = _read_row(path) or _row_from_run(path)
        rows[(row["heads"], row["layers"])] = row
    for point in points or []:
        rows.setdefault(
            (point.heads, point.layers),
            {**dict.fromkeys(COLUMNS, ""), "heads": point.heads, "layers": point.layers,
             "status": "missing", "reason": "not run yet (another shard?)"},
        )  # fmt: skip
    if not rows:
        raise ValueError(f"workdir={str(workdir)!r} holds no sweep (no */row.json)")
    ordered = [rows[k] for k in sorted(rows, key=lambda hl: (hl[1], hl[0]))]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(ordered)
    atomic_write_text(workdir / "results.csv", table.getvalue())  # shards may merge at once
    return ordered


def _read_row(path: pathlib.Path) -> dict[str, Any] | None:
    """The row in ``path``; ``None`` if it cannot be read (truncated, not a row)."""
    try:
        row = json.loads(path.read_text())
        if isinstance(row, dict) and {"heads", "layers", "status"} <= row.keys():
            return row
    except (OSError, ValueError):
        pass
    return None


def _row_from_run(row_path: pathlib.Path) -> dict[str, Any]:
    """A damaged ``row.json`` rebuilt (and rewritten) from its point's ``config.json`` and
    ``result.json``; ``ValueError`` naming it when those cannot rebuild it."""
    from attnjax.training.loop import RunResult

    point_dir = row_path.parent
    try:
        run_config = ml_collections.ConfigDict(json.loads((point_dir / "config.json").read_text()))
        result = RunResult(**json.loads((point_dir / "result.json").read_text()))
        point = SweepPoint(run_config.model.num_heads, run_config.model.num_layers)
        row = _row(point, run_config, result)
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        raise ValueError(
            f"{row_path} is damaged and its point has no readable result.json to rebuild it "
            "from; run the sweep again (without --merge) to rebuild it from its checkpoint"
        ) from None
    logging.warning("%s was damaged; rebuilt it from %s", row_path, point_dir / "result.json")
    atomic_write_text(row_path, json.dumps(row, indent=2, allow_nan=False))
    return row


def _cell(value: Any, column: str) -> str:
    if value in ("", None):
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if column in ("tokens_per_s",):
            return f"{value:.0f}"
        if column in ("compile_s", "wall_s"):
            return f"{value:.1f}"
        return f"{value:.3f}"
    return str(value)


def format_results(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the sweep's rows (one line per point)."""
    columns = (
        "heads", "layers", "params_total", "params_attention", "accuracy",
        "sequence_accuracy", "eval_loss", "tokens_per_s", "compile_s", "wall_s", "status",
    )  # fmt: skip
    titles = {"params_total": "params", "params_attention": "attn params",
              "sequence_accuracy": "seq acc", "tokens_per_s": "tokens/s"}  # fmt: skip
    table = [[titles.get(c, c) for c in columns]]
    table += [[_cell(row.get(c, ""), c) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    reasons = [f"  {r['heads']}x{r['layers']}: {r['reason']}" for r in rows if r.get("reason")]
    return "\n".join(lines + _by_layers(rows) + (["failures:"] + reasons if reasons else []))


def _by_layers(rows: list[dict[str, Any]]) -> list[str]:
    """One line per layer count: the range of accuracies over its head counts."""
    lines = []
    for layers in sorted({r["layers"] for r in rows}):
        ok = [r for r in rows if r["layers"] == layers and r.get("status") == "ok"]
        if ok:
            acc = [float(r["accuracy"]) for r in ok]
            seq = [float(r["sequence_accuracy"]) for r in ok]
            lines.append(
                f"{layers} layer(s): accuracy {min(acc):.2f}-{max(acc):.2f}, "
                f"sequence accuracy {min(seq):.2f}-{max(seq):.2f} over {len(ok)} head counts"
            )
    return ["", *lines] if lines else []


def recorded_points(workdir: str | pathlib.Path) -> list[SweepPoint] | None:
    """The points of the sweep recorded in ``workdir/sweep_config.json``, ``None`` if there is
    no such file; ``ValueError`` naming the workdir if it cannot be read."""
    path = pathlib.Path(workdir) / "sweep_config.json"
    if not path.is_file():
        return None
    try:
        return sweep_points(
            ml_collections.ConfigDict({"sweep": json.loads(path.read_text())["sweep"]})
        )
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
