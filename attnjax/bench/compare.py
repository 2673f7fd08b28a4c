"""Before/after ratios from the JSON results of interleaved benchmark runs of two checkouts.

``scripts/before_after.py`` runs ``experiments.benchmark`` in two checkouts in turn (A B, B A,
A B, ...) and hands the results here; each row is matched by what it measured (case, mode,
masking, dtype, implementation; or train setting and framework) and the ratio is taken per
round, so slow drifts of a shared machine hit both sides of a pair alike.
"""

from __future__ import annotations

import statistics

__all__ = ["compare_runs", "format_comparison", "row_seconds"]


def _key(suite: str, row: dict) -> str:
    if suite == "train":
        return f"train {row['setting']} {row['framework']}"
    masking = "causal" if row["causal"] else "full"
    return f"{row['case']} {row['mode']} {masking} {row['dtype']} {row['implementation']}"


def row_seconds(result: dict) -> dict[str, float]:
    """Seconds per timed row of one benchmark JSON result, keyed by what the row measured
    (e.g. ``"b4_t1024 fwd_bwd causal float32 attnjax[blocked]"``, ``"train tiny attnjax"``);
    skipped rows are left out. ``matmul <framework>`` gives seconds per GFLOP of the reference
    matmul (the inverse of its rate), a control for how loaded the machine was."""
    seconds = {}
    for suite in ("attention", "train"):
        for row in result.get(suite, []):
            if row.get("seconds") is not None:
                seconds[_key(suite, row)] = row["seconds"]
    for framework, gflops in result.get("matmul_gflops", {}).items():
        if gflops:
            seconds[f"matmul {framework}"] = 1.0 / gflops
    return seconds


def compare_runs(before: list[dict], after: list[dict]) -> list[dict]:
    """Per row measured in every run: the median seconds of each side and the ratios.

    Args:
      before, after: JSON results of the same benchmark command, ``before[i]`` and ``after[i]``
        run back to back (one round).

    Returns:
      One dict per row (in the order of the first run): ``row``, ``before_s``, ``after_s``
      (medians over rounds, seconds), ``ratio`` (median over rounds of after/before; below 1:
      the after side is faster), ``ratio_min``, ``ratio_max`` and ``rounds``.
    """
    if len(before) != len(after) or not before:
        raise ValueError(
            f"before and after need the same, nonzero number of runs ({len(before)} vs "
            f"{len(after)})"
        )
    runs_a = [row_seconds(r) for r in before]
    runs_b = [row_seconds(r) for r in after]
    keys = [k for k in runs_a[0] if all(k in run for run in runs_a + runs_b)]
    rows = []
    for key in keys:
        ratios = [b[key] / a[key] for a, b in zip(runs_a, runs_b)]
        rows.append(
            {
                "row": key,
                "before_s": statistics.median(a[key] for a in runs_a),
                "after_s": statistics.median(b[key] for b in runs_b),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "rounds": len(ratios),
            }
        )
    return rows


def format_comparison(rows: list[dict]) -> str:
    """A text table of :func:`compare_runs`' rows (milliseconds; ``matmul`` rows: ms/GFLOP)."""
    width = max([len(r["row"]) for r in rows] + [3])
    lines = [
        f"{'row':{width}s} {'before ms':>10s} {'after ms':>10s} {'after/before':>12s} "
        f"{'range':>13s} {'n':>2s}"
    ]
    for r in rows:
        lines.append(
            f"{r['row']:{width}s} {r['before_s'] * 1e3:10.1f} {r['after_s'] * 1e3:10.1f} "
            f"{r['ratio']:11.3f}x {r['ratio_min']:6.3f}-{r['ratio_max']:<6.3f} {r['rounds']:2d}"
        )
    return "\n".join(lines)
