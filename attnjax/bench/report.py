"""Printing the benchmark's tables and writing its JSON results (atomically)."""

from __future__ import annotations

import json
import math
import os
import tempfile

import jax.numpy as jnp

from attnjax.bench.memory import gib

__all__ = [
    "RATIO_NOTE",
    "finite",
    "print_attention_group",
    "print_header",
    "print_train_group",
    "write_json",
]

PEERS = ("jax.nn", "flax.nnx", "torch.sdpa")  # the ratio columns, in this order
RATIO_NOTE = (
    "n: timed calls (w: the warm-up call, longer than --budget_s, is the only sample); "
    "vs X: this row's time / X's (below 1: faster)"
)


def print_header(info: dict, matmul: dict[str, float], matmul_size: int) -> None:
    """Versions, CPU count and the reference matmul rates (GFLOP/s per framework)."""
    torch_text = "not installed"
    if "torch" in info:
        torch_text = f"{info['torch']} ({info['torch_threads']} threads)"
    print(
        f"JAX {info['jax']} on {info['backend']} ({info['cpu_count']} CPUs), "
        f"flax {info['flax']}, torch {torch_text}"
    )
    rates = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in matmul.items())
    print(f"float32 {matmul_size}³ matmul: {rates} (%mm below is relative to JAX's)")


def print_attention_group(rows: list[dict], case) -> None:
    """The table of one case × mode × masking (``case``: its ``attention.Case``)."""
    first = rows[0]
    grid = gib(case.grid_bytes(jnp.dtype(first["dtype"]).itemsize))
    masking = "causal" if first["causal"] else "full"
    print(f"\n{first['case']}  {case.describe()}  {first['mode']}  {masking}  "
          f"{first['dtype']}  ({first['flops'] / 1e9:.1f} GFLOP; grid {grid})")  # fmt: skip
    peers = [p for p in PEERS if any(r["implementation"] == p for r in rows)]
    header = f"  {'implementation':18s} {'ms':>9s} {'n':>2s} {'GFLOP/s':>8s} {'%mm':>5s}"
    header += f" {'peak MiB':>9s}"
    print(header + "".join(f" {'vs ' + p:>13s}" for p in peers))
    for row in rows:
        print(_attention_line(row, peers))


def _attention_line(row: dict, peers: list[str]) -> str:
    name = row["implementation"]
    if row["skipped"]:
        return f"  {name:18s} skipped: {row['skipped']}"
    n = "w" if row["warmup_sample"] else str(row["samples"])
    peak = "n/a" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.0f}"
    line = (f"  {name:18s} {row['seconds'] * 1e3:9.1f} {n:>2s} {row['gflops']:8.1f} "
            f"{row['percent_of_matmul']:5.1f} {peak:>9s}")  # fmt: skip
    for peer in peers:
        ratio = row["ratios"].get(peer)
        line += f" {'':>13s}" if ratio is None else f" {ratio:12.2f}x"
    if row["same_program_as"]:
        line += f"  (same program as {row['same_program_as']})"
    if row.get("backend"):
        line += f"  ({row['backend']} kernel)"
    return line


def print_train_group(rows: list[dict], setting, repeats: int) -> None:
    """The table of one train setting (``setting``: its ``train.TrainSetting``)."""
    print(f"\ntrain step {rows[0]['setting']}  {setting.describe()}  "
          f"({rows[0]['flops_per_step'] / 1e9:.1f} GFLOP/step, {setting.steps} steps x "
          f"{repeats})")  # fmt: skip
    print(f"  {'framework':14s} {'step ms':>9s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'%mm':>5s} "
          f"{'params':>9s} {'vs torch':>9s}")  # fmt: skip
    for row in rows:
        ratio = row["ratios"].get("torch nanoGPT")
        print(f"  {row['framework']:14s} {row['seconds'] * 1e3:9.1f} {row['tokens_per_s']:9.0f} "
              f"{row['gflops']:8.1f} {row['percent_of_matmul']:5.1f} {row['params']:9d} "
              f"{'' if ratio is None else f'{ratio:8.2f}x':>9s}")  # fmt: skip


def finite(value):
    """``value`` with every non-finite float (nan, ±inf), nested in dicts and lists, as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_json(path: str | os.PathLike, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path`` atomically: into a temporary file in the
    same directory, then renamed over ``path``, so a reader never sees half a file and an
    error leaves any previous file untouched. Non-finite floats are written as null."""
    path = os.fspath(path)
    text = json.dumps(finite(result), indent=1, allow_nan=False)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
