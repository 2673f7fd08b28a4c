"""Statistics of a sweep trained as several replicas (seed × learning rate) per cell.

A *cell* is one grid point: ``(heads, layers, variant)``. Each of its replicas gives one row
(``REPLICA_COLUMNS``; values may be numbers or, read back from a CSV, strings). This module turns
those rows into

* ``cells``: one row per cell at its best learning rate (``CELL_COLUMNS``), each metric ``M`` as
  its mean over ok seeds (the plain name, so readers of the single-seed ``results.csv`` keep
  working), ``M_std`` (sample standard deviation, ddof=1) and ``M_ci95`` (half-width of the 95%
  Student-t interval of the mean);
* ``by_lr``: the same statistics for every (cell, learning rate) — the long table
  (``BY_LR_COLUMNS``);

and formats them (``format_cells``) and compares two cells (``compare_cells``, Welch's t-test).

The learning rate is chosen on the **validation** stream (``val_*`` metrics) and the table reports
the **test** stream (``accuracy``, ``sequence_accuracy``, ``eval_loss``), so choosing the best of
several learning rates does not inflate the reported numbers (see ``best_learning_rate``).

Undefined statistics (a mean over no values, a spread over one) are ``math.nan`` in ``Summary``
and ``None`` in the row dicts (an empty field in a CSV, valid JSON), never a fake 0.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BY_LR_COLUMNS",
    "CELL_COLUMNS",
    "CELL_KEYS",
    "METRICS",
    "REPLICA_COLUMNS",
    "Comparison",
    "LearningRateChoice",
    "Summary",
    "aggregate",
    "best_learning_rate",
    "best_replicas",
    "compare_cells",
    "format_cells",
    "t_interval",
]

CELL_KEYS = ("heads", "layers", "variant")
SIZE_COLUMNS = (
    "model_dim", "head_dim", "params_total", "params_attention", "params_per_head",
)  # fmt: skip
REPLICA_COLUMNS = (
    *CELL_KEYS, *SIZE_COLUMNS, "seed", "lr",
    "final_loss", "val_loss", "val_accuracy", "val_sequence_accuracy",
    "eval_loss", "accuracy", "sequence_accuracy",
    "phase_change_step", "best_induction", "diverged_step",
    "tokens_per_s", "compile_s", "wall_s", "status", "reason",
)  # fmt: skip
# Aggregated per cell: the test metrics first (what is reported), then validation, then the rest.
# compile_s is kept so that CELL_COLUMNS holds every column of the single-seed results.csv.
METRICS = (
    "accuracy", "sequence_accuracy", "eval_loss", "final_loss",
    "val_accuracy", "val_sequence_accuracy", "val_loss",
    "phase_change_step", "best_induction", "tokens_per_s", "compile_s", "wall_s",
)  # fmt: skip


def _metric_columns() -> tuple[str, ...]:
    columns = []
    for metric in METRICS:
        columns += [metric, f"{metric}_std", f"{metric}_ci95"]
        if metric == "phase_change_step":
            columns.append("phase_change_count")
    return tuple(columns)


CELL_COLUMNS = (
    *CELL_KEYS, *SIZE_COLUMNS, "best_lr", "select_metric", "seeds", "replicas", "failed",
    *_metric_columns(), "status", "reason",
)  # fmt: skip
BY_LR_COLUMNS = (
    *CELL_KEYS, *SIZE_COLUMNS, "lr", "selected", "seeds", "replicas", "failed",
    *_metric_columns(), "status", "reason",
)  # fmt: skip

CellKey = tuple[int, int, str]


class Summary(NamedTuple):
    """Mean, sample standard deviation (ddof=1), confidence half-width and count of the finite
    values; ``excluded`` counts the values left out (NaN, ±inf, None, "")."""

    mean: float
    std: float
    ci95: float
    n: int
    excluded: int = 0


class LearningRateChoice(NamedTuple):
    """The learning rate chosen for one cell: its validation ``score`` (mean over ``seeds`` ok
    seeds with a finite metric; NaN when no lr of the cell has one) and its ``failed`` (non-ok)
    replicas."""

    lr: float | None
    score: float
    seeds: int
    failed: int


class Comparison(NamedTuple):
    """Welch's t-test of two cells: ``difference`` = mean(a) - mean(b), two-sided ``p_value``."""

    difference: float
    p_value: float
    n_a: int
    n_b: int


def _number(value: Any) -> float:
    """A float from a number or a CSV string; NaN for None, "" and anything unreadable."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if math.isfinite(number) else None


def t_interval(values: Iterable[Any], confidence: float = 0.95) -> Summary:
    """Mean and Student-t confidence interval of ``values``.

    With the n finite values x_i: mean x̄, s = sqrt(Σ(x_i - x̄)² / (n - 1)) and
    ``ci95 = t_{(1+c)/2, n-1} · s / sqrt(n)``, so [x̄ - ci95, x̄ + ci95] covers the true mean with
    probability ``confidence`` when the values are independent draws of a normal variable (each
    seed one draw). Non-finite values (NaN, ±inf, None, "" — a diverged metric, an unmeasured one)
    are left out of every statistic and counted in ``excluded``: one inf would otherwise make the
    mean meaningless. With n = 1 ``std`` and ``ci95`` are NaN (one seed says nothing about the
    spread); with n = 0 everything is NaN. Strings are read as numbers.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must lie in (0, 1)")
    numbers = np.array([_number(v) for v in values], dtype=np.float64)
    finite = numbers[np.isfinite(numbers)]
    n, excluded = int(finite.size), int(numbers.size - finite.size)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0, excluded)
    mean = float(math.fsum(finite) / n)
    if n == 1:
        return Summary(mean, math.nan, math.nan, 1, excluded)
    std = float(np.std(finite, ddof=1))
    import scipy.stats  # here, not at the top: it takes seconds to import

    quantile = float(scipy.stats.t.ppf((1.0 + confidence) / 2.0, n - 1))
    return Summary(mean, std, quantile * std / math.sqrt(n), n, excluded)


def _key(row: Mapping[str, Any]) -> CellKey:
    variant = row.get("variant")
    return int(_number(row["heads"])), int(_number(row["layers"])), str(variant or "")


def _ok(row: Mapping[str, Any]) -> bool:
    return row.get("status") == "ok"


def _none_last(value: float | int | None) -> tuple[bool, float]:
    return value is None, 0.0 if value is None else float(value)


def _group(rows: Iterable[Mapping[str, Any]]) -> dict[CellKey, dict[float | None, list]]:
    """rows → {cell: {lr: [rows sorted by seed]}}, cells and learning rates in sorted order."""
    groups: dict[CellKey, dict[float | None, list]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for row in rows:
        lr = _number(row.get("lr"))
        groups[_key(row)][lr if math.isfinite(lr) else None].append(row)
    ordered = {}
    for cell in sorted(groups, key=lambda k: (k[1], k[0], k[2])):
        by_lr = groups[cell]
        ordered[cell] = {
            lr: sorted(by_lr[lr], key=lambda r: _none_last(_integer(r.get("seed"))))
            for lr in sorted(by_lr, key=_none_last)
        }
    return ordered


def _lower_is_better(metric: str) -> bool:
    return metric.endswith("loss") or metric.endswith("_step")


def _choose(
    by_lr: Mapping[float | None, list], metric: str, higher_is_better: bool
) -> LearningRateChoice | None:
    candidates = []
    for lr, rows in by_lr.items():
        ok = [r for r in rows if _ok(r)]
        if not ok:
            continue
        summary = t_interval(r.get(metric) for r in ok)
        score = summary.mean
        rank = -score if higher_is_better else score
        # lrs with a score first, best score first, ties (and unscored lrs) to the smaller lr
        candidates.append(
            ((not math.isfinite(score), rank if math.isfinite(score) else 0.0, _none_last(lr)),
             LearningRateChoice(lr, score, summary.n, len(rows) - len(ok)))
        )  # fmt: skip
    return min(candidates, key=lambda c: c[0])[1] if candidates else None


def best_learning_rate(
    rows: Iterable[Mapping[str, Any]],
    metric: str = "val_accuracy",
    higher_is_better: bool | None = None,
) -> dict[CellKey, LearningRateChoice | None]:
    """Per cell ``(heads, layers, variant)``, the learning rate whose mean ``metric`` over its ok
    seeds is best.

    ``metric`` should be measured on the **validation** stream (``val_accuracy``, ``val_loss``…),
    never on the test stream that the table reports: Zoology (arXiv 2312.04927) reports the best of
    four learning rates per cell, and choosing the best of k and reporting that same number is
    biased upwards (the max of k noisy estimates exceeds the mean of the one chosen). Choosing on
    validation and reporting test keeps the reported number an unbiased estimate.

    ``higher_is_better`` defaults to False for metrics ending in ``loss`` or ``_step``, else True.
    Ties go to the smaller learning rate. An lr with some non-ok replicas is scored on its ok
    seeds only; ``LearningRateChoice.failed`` reports how many were not ok. An lr whose ok seeds
    have no finite ``metric`` ranks below every lr that has one (score NaN). A cell with no ok
    replica at any lr maps to ``None``.
    """
    if higher_is_better is None:
        higher_is_better = not _lower_is_better(metric)
    return {cell: _choose(by_lr, metric, higher_is_better) for cell, by_lr in _group(rows).items()}


def best_replicas(
    rows: Iterable[Mapping[str, Any]],
    heads: int,
    layers: int,
    variant: str = "",
    *,
    select_metric: str = "val_accuracy",
) -> list[Mapping[str, Any]]:
    """The ok replica rows of one cell at its best learning rate (for ``compare_cells``);
    ``ValueError`` naming the cell if the rows have no such cell."""
    groups = _group(rows)
    cell = (int(heads), int(layers), str(variant or ""))
    if cell not in groups:
        raise ValueError(f"cell heads={heads}, layers={layers}, variant={variant!r} has no rows")
    choice = _choose(groups[cell], select_metric, not _lower_is_better(select_metric))
    return [] if choice is None else [r for r in groups[cell][choice.lr] if _ok(r)]


def compare_cells(
    a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]], metric: str = "accuracy"
) -> Comparison:
    """Welch's two-sided t-test (unequal variances) of ``metric`` between the ok replicas ``a``
    and ``b`` of two cells (e.g. ``best_replicas(rows, 2, 2)`` and ``best_replicas(rows, 1, 2)``):
    a small ``p_value`` says the cells differ by more than seed noise explains. NaN p-value with
    fewer than two finite values on a side (or no spread on both)."""
    values = []
    for side in (a, b):
        numbers = np.array([_number(r.get(metric)) for r in side if _ok(r)], dtype=np.float64)
        values.append(numbers[np.isfinite(numbers)])
    x, y = values
    difference = float(x.mean() - y.mean()) if x.size and y.size else math.nan
    if x.size < 2 or y.size < 2:
        return Comparison(difference, math.nan, int(x.size), int(y.size))
    import scipy.stats

    p_value = float(scipy.stats.ttest_ind(x, y, equal_var=False).pvalue)
    return Comparison(difference, p_value, int(x.size), int(y.size))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _sizes(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The cell-level columns: from the first row that has each (failed replicas may lack them)."""
    sizes = {}
    for column in SIZE_COLUMNS:
        value = next((r.get(column) for r in rows if r.get(column) not in (None, "")), None)
        sizes[column] = _integer(value) if value is not None else None
    return sizes


def _statistics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, std and ci95 of every metric over the ok ``rows``."""
    ok = [r for r in rows if _ok(r)]
    out: dict[str, Any] = {}
    for metric in METRICS:
        summary = t_interval(r.get(metric) for r in ok)
        out[metric] = _finite_or_none(summary.mean)
        out[f"{metric}_std"] = _finite_or_none(summary.std)
        out[f"{metric}_ci95"] = _finite_or_none(summary.ci95)
        if metric == "phase_change_step":  # only replicas whose score crossed the threshold
            out["phase_change_count"] = summary.n
    return out


def _status(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """``ok`` if any replica is, else the most common failure; the first failure's reason."""
    failures = [r for r in rows if not _ok(r)]
    if not failures:
        return "ok", ""
    first = failures[0]
    where = []
    if _integer(first.get("seed")) is not None:
        where.append(f"seed {_integer(first.get('seed'))}")
    if math.isfinite(_number(first.get("lr"))):
        where.append(f"lr {_number(first.get('lr')):g}")
    reason = f"{first.get('status') or 'failed'}: {first.get('reason') or ''}".strip()
    if where:
        reason = f"{', '.join(where)}: {reason}"
    if len(failures) > 1:
        reason = f"{len(failures)} of {len(rows)} replicas not ok; first {reason}"
    if len(failures) < len(rows):
        return "ok", reason
    counts = collections.Counter(r.get("status") or "failed" for r in failures)
    return counts.most_common(1)[0][0], reason  # ties: the status seen first


def aggregate(
    rows: Iterable[Mapping[str, Any]],
    *,
    select_metric: str = "val_accuracy",
    higher_is_better: bool | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Replica rows → ``(cells, by_lr)``, both sorted by layers, heads, variant (and lr).

    ``cells`` (``CELL_COLUMNS``): one dict per cell at ``best_lr`` (``best_learning_rate`` on
    ``select_metric``; ``None`` when no replica is ok). ``seeds`` counts the ok replicas at the best
    lr; ``replicas`` and ``failed`` count all replicas of the cell and its non-ok ones, over every
    lr. Each metric ``M`` of ``METRICS`` gives ``M`` (mean over the ok seeds at the best lr),
    ``M_std`` and ``M_ci95`` (``t_interval``; ``None`` where undefined: with one seed, or no
    value). ``phase_change_step`` is averaged over the replicas where the induction score crossed
    its threshold; ``phase_change_count`` says how many. ``status`` is ``ok`` if any replica of the
    cell is (even at another lr), else its most common failure; ``reason`` names the first
    non-ok replica (seed, lr, status, reason), empty when all are ok.

    ``by_lr`` (``BY_LR_COLUMNS``): the same per (cell, lr), with ``selected`` true at the best lr
    and ``seeds`` / ``replicas`` / ``failed`` / ``status`` of that lr alone.
    """
    if higher_is_better is None:
        higher_is_better = not _lower_is_better(select_metric)
    cells, long = [], []
    for (heads, layers, variant), by_lr in _group(rows).items():
        everything = [r for group in by_lr.values() for r in group]
        keys = dict(heads=heads, layers=layers, variant=variant, **_sizes(everything))
        choice = _choose(by_lr, select_metric, higher_is_better)
        for lr, group in by_lr.items():
            status, reason = _status(group)
            long.append({
                **keys, "lr": lr, "selected": choice is not None and lr == choice.lr,
                "seeds": sum(map(_ok, group)), "replicas": len(group),
                "failed": len(group) - sum(map(_ok, group)),
                **_statistics(group), "status": status, "reason": reason,
            })  # fmt: skip
        best = by_lr[choice.lr] if choice is not None else []
        status, reason = _status(everything)
        cells.append({
            **keys, "best_lr": None if choice is None else choice.lr,
            "select_metric": select_metric, "seeds": sum(map(_ok, best)),
            "replicas": len(everything), "failed": len(everything) - sum(map(_ok, everything)),
            **_statistics(best), "status": status, "reason": reason,
        })  # fmt: skip
    return cells, long


# ---- the printed table ----------------------------------------------------------------------


def _decimals(column: str) -> int:
    return 0 if column in ("phase_change_step", "tokens_per_s") else 3


def _plus_minus(cell: Mapping[str, Any], column: str) -> str:
    """``mean ± ci95``; ``mean ± ?`` when the interval is undefined (one seed); ``-`` if no mean."""
    mean = _number(cell.get(column))
    if not math.isfinite(mean):
        return "-"
    digits = _decimals(column)
    ci = _number(cell.get(f"{column}_ci95"))
    return f"{mean:.{digits}f} ± {ci:.{digits}f}" if math.isfinite(ci) else f"{mean:.{digits}f} ± ?"


def _plain(value: Any, kind: str = "") -> str:
    if value in (None, ""):
        return "-"
    number = _number(value)
    if kind == "lr":
        return f"{number:g}" if math.isfinite(number) else str(value)
    if kind == "int":
        return str(int(number)) if math.isfinite(number) else str(value)
    return str(value)


def _phase_change(cell: Mapping[str, Any]) -> str:
    count, seeds = _integer(cell.get("phase_change_count")), _integer(cell.get("seeds"))
    return f"{_plus_minus(cell, 'phase_change_step')} ({count or 0}/{seeds or 0})"


def _cell_status(cell: Mapping[str, Any]) -> str:
    status = str(cell.get("status") or "-")
    failed, replicas = _integer(cell.get("failed")), _integer(cell.get("replicas"))
    if status == "ok" and failed:
        return f"ok, {failed}/{replicas} not ok"
    return status


def format_cells(cells: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of ``aggregate``'s cells (one line per cell; numbers or CSV strings).

    Columns: heads, layers, variant (only when some cell has one), params, attn params, best lr,
    seeds, accuracy, seq acc and eval loss as ``mean ± ci95`` (``± ?`` with one seed), the
    phase-change step (``mean ± ci95 (k/n)``: k of the n seeds crossed the threshold; only when some
    cell has telemetry), status. Then one line per layer count, the failures, and a footnote saying
    what ± means.
    """
    variants = any(c.get("variant") not in (None, "") for c in cells)
    telemetry = any(
        math.isfinite(_number(c.get("best_induction"))) or _integer(c.get("phase_change_count"))
        for c in cells
    )
    columns: list[tuple[str, Any]] = [
        ("heads", lambda c: _plain(c.get("heads"), "int")),
        ("layers", lambda c: _plain(c.get("layers"), "int")),
    ]
    if variants:
        columns.append(("variant", lambda c: _plain(c.get("variant")) if c.get("variant") else "-"))
    columns += [
        ("params", lambda c: _plain(c.get("params_total"), "int")),
        ("attn params", lambda c: _plain(c.get("params_attention"), "int")),
        ("best lr", lambda c: _plain(c.get("best_lr"), "lr")),
        ("seeds", lambda c: _plain(c.get("seeds"), "int")),
        ("accuracy", lambda c: _plus_minus(c, "accuracy")),
        ("seq acc", lambda c: _plus_minus(c, "sequence_accuracy")),
        ("eval loss", lambda c: _plus_minus(c, "eval_loss")),
    ]
    if telemetry:
        columns.append(("phase change", _phase_change))
    columns.append(("status", _cell_status))
    table = [[title for title, _ in columns]]
    table += [[show(cell) for _, show in columns] for cell in cells]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    reasons = [
        f"  {_plain(c.get('heads'), 'int')}x{_plain(c.get('layers'), 'int')}"
        f"{' ' + str(c['variant']) if c.get('variant') else ''}: {c['reason']}"
        for c in cells
        if c.get("reason")
    ]
    return "\n".join(
        lines + _by_layers(cells) + (["failures:", *reasons] if reasons else []) + _footnote(cells)
    )


def _by_layers(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per layer count: the range of mean accuracies and the best head count."""
    lines = []
    for layers in sorted({_integer(c.get("layers")) for c in cells} - {None}):
        ok = [
            c for c in cells
            if _integer(c.get("layers")) == layers and c.get("status") == "ok"
            and math.isfinite(_number(c.get("accuracy")))
        ]  # fmt: skip
        if not ok:
            continue
        acc = [_number(c["accuracy"]) for c in ok]
        best = max(ok, key=lambda c: _number(c["accuracy"]))
        variant = f" {best['variant']}" if best.get("variant") else ""
        lines.append(
            f"{layers} layer(s): mean accuracy {min(acc):.2f}-{max(acc):.2f} over {len(ok)} "
            f"cells; best {_plain(best.get('heads'), 'int')} head(s){variant}: "
            f"{_plus_minus(best, 'accuracy')}"
        )
    return ["", *lines] if lines else []


def _footnote(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    seeds = sorted({_integer(c.get("seeds")) for c in cells} - {None, 0})
    if not seeds:
        return []
    count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    metric = next((c.get("select_metric") for c in cells if c.get("select_metric")), None)
    chosen = f" (chosen on validation {metric}; reported metrics are test)" if metric else ""
    return [
        "",
        f"± : 95% Student-t interval of the mean over {count} seed(s) at the best lr{chosen}; "
        "± ? with one seed.",
    ]
