"""Interleaved before/after run of ``experiments.benchmark`` in two checkouts, ratio per row.

Runs the same benchmark command in checkout A (before) and B (after) in turn, alternating
which goes first (A B, B A, A B, ...) so drift on a shared machine falls on both sides, then
prints, per row, the median time of each side and the median over rounds of B's time / A's
(below 1: B is faster), with its range. Each checkout runs its own launcher with its own
environment (``<checkout>/.venv/bin/python``), so the two can be any commits whose launcher
takes the same flags.

    git worktree add /tmp/before ca1e002 && (cd /tmp/before && uv sync --locked)
    uv run python scripts/before_after.py /tmp/before . --rounds=3 --out=/tmp/ba -- \\
        --suite=attention --cases=b4_t1024,b1_t4096,gqa_b4_t1024 --modes=fwd_bwd \\
        --causal=true --implementations=blocked --peers=jax.nn --repeats=3
    git worktree remove --force /tmp/before

Everything after ``--`` goes to ``experiments.benchmark`` (``--json`` is added). Results: one
JSON file per run and ``comparison.json`` in ``--out``. Include a row that did not change
(``--peers=jax.nn``, or the ``matmul jax`` row every run has) as a control: its ratio shows how
far the machine's noise alone moves a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from attnjax.bench.compare import compare_runs, format_comparison
from attnjax.bench.report import write_json


def run_benchmark(checkout: pathlib.Path, python: str, args: list[str], path: pathlib.Path):
    """One ``experiments.benchmark`` process in ``checkout``; its JSON result."""
    command = [str(checkout / python), "-m", "experiments.benchmark", *args, f"--json={path}"]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    process = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    path.with_suffix(".log").write_text(process.stdout + process.stderr)
    if process.returncode != 0:
        sys.exit(f"error: {' '.join(command)} (in {checkout}) failed:\n{process.stderr[-3000:]}")
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=pathlib.Path, help="checkout A (e.g. a git worktree)")
    parser.add_argument("after", type=pathlib.Path, help="checkout B")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each checkout")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="folder for the results")
    parser.add_argument("--python", default=".venv/bin/python", help="interpreter, per checkout")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    options = parser.parse_args(argv[:split])
    benchmark_args = argv[split + 1 :]
    if options.rounds < 1:
        parser.error(f"--rounds={options.rounds} must be at least 1")
    out = options.out or pathlib.Path(tempfile.mkdtemp(prefix="before_after-"))
    out.mkdir(parents=True, exist_ok=True)
    sides = {"before": options.before.resolve(), "after": options.after.resolve()}
    results = {"before": [], "after": []}
    for index in range(options.rounds):
        order = ("before", "after") if index % 2 == 0 else ("after", "before")
        for side in order:
            path = out / f"{side}_{index}.json"
            results[side].append(run_benchmark(sides[side], options.python, benchmark_args, path))
            print(f"round {index + 1}/{options.rounds}: {side} done", flush=True)
    rows = compare_runs(results["before"], results["after"])
    command = [sys.argv[0], *sys.argv[1:]]
    write_json(out / "comparison.json", {"command": command, **sides_text(sides), "rows": rows})
    described = sides_text(sides)
    print(f"\nbefore = {described['before']}\nafter = {described['after']}\nresults in {out}")
    print(format_comparison(rows))


def sides_text(sides: dict[str, pathlib.Path]) -> dict[str, str]:
    """Each side's path and, when it is a git checkout, its commit."""
    text = {}
    for side, path in sides.items():
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        text[side] = f"{path} @ {commit}" if commit else str(path)
    return text


if __name__ == "__main__":
    main()
