"""Plan a run before paying for it: compile its train step for a TPU/GPU topology, deviceless.

``compile_check(config, "v5e:4x4")`` builds the model and optimizer state abstractly (nothing
allocated), gives every input a ``ShapeDtypeStruct`` with its sharding on a ``(data, fsdp,
model)`` mesh of the topology's compile-only devices, lowers and compiles the train step, and
returns one row per config (per point for a sweep config) with what XLA made of it:

- per-device bytes (``memory_analysis``: arguments, outputs, temporaries, aliased (donated
  state reused for the new state) and their total), the device's memory, fits and headroom.
  A TPU compile that runs out of memory (``RESOURCE_EXHAUSTED``) is a row with ``fits=False``
  and the compiler's own figures; GPU compilers do not refuse, so there the total is compared
  with the memory table;
- FLOPs per device per step: XLA's ``cost_analysis`` beside attnjax's analytic count
  (``attnjax.accounting``; training = 3 x forward, causal half of the grid). XLA undercounts:
  a loop body (``scan_layers``, the blocked kernel's loops) is counted once, not once per trip,
  and custom calls (Pallas/Mosaic, cuDNN attention) count no FLOPs at all;
- collectives in the compiled program by kind, compile seconds;
- a roofline step time: ``max(FLOPs / peak, bytes / HBM bandwidth)`` per device, with the
  larger of the analytic and XLA FLOPs and the larger of XLA's bytes accessed and the state's
  bytes (arguments + outputs), from ``CHIPS``; and the tokens/s it implies. It is a lower bound
  on the step time: it assumes perfect overlap and ignores collectives' time, launch
  overheads and kernels below peak.

Loading libtpu or the CUDA plugin: only when a topology is asked for, and on shared machines
only in a process without network (see ``attnjax.aot``); ``experiments/compile_check.py``
re-executes itself that way.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from attnjax import accounting
from attnjax.aot import steps
from attnjax.aot.topology import CHIPS, Chip, Topology, parse_topology
from attnjax.functional.dispatch import choose_implementation
from attnjax.functional.masking import Masking
from attnjax.models import ModelConfig
from attnjax.training import run_config, sharding, state
from attnjax.training.sweep import point_run_config, sweep_points

__all__ = [
    "CHIPS",
    "COLLECTIVES",
    "Chip",
    "Topology",
    "collectives",
    "compile_check",
    "format_rows",
    "parse_topology",
    "row_from_compiled",
    "row_from_error",
]

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE = re.compile(r"=\s*\S+\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_COLLECTIVE_TUPLE = re.compile(r"=\s*\([^=]*\)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def collectives(hlo_text: str) -> dict[str, int]:
    """How many of each collective (``COLLECTIVES``; async ``-start``/``-done`` pairs once)
    the compiled HLO text holds; kinds absent are left out."""
    counts: dict[str, int] = {}
    for line in hlo_text.splitlines():
        match = _COLLECTIVE.search(line) or _COLLECTIVE_TUPLE.search(line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def _cost(compiled) -> dict[str, Any]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _roofline(
    chip: Chip | None, flops: float | int, bytes_: float | int, tokens: int
) -> dict[str, Any]:
    if chip is None:
        return dict(step_s=None, tokens_per_s=None, bound=None)
    compute_s, memory_s = flops / chip.peak_flops, bytes_ / chip.bandwidth
    step_s = max(compute_s, memory_s)
    return dict(
        step_s=step_s,
        tokens_per_s=tokens / step_s if step_s > 0 else None,
        bound="compute" if compute_s >= memory_s else "memory",
    )


def row_from_compiled(compiled, *, chip: Chip | None, analytic_flops: float | int, tokens: int):
    """The measured part of a row from a compiled program (``memory_analysis``,
    ``cost_analysis``, ``as_text``): bytes, fit, FLOPs, collectives, roofline. ``chip``: the
    device's figures (None: memory and roofline unknown, e.g. CPU); ``analytic_flops`` per
    device per step; ``tokens`` per step (global)."""
    memory = compiled.memory_analysis()
    arguments = int(memory.argument_size_in_bytes)
    outputs = int(memory.output_size_in_bytes)
    temporaries = int(memory.temp_size_in_bytes)
    aliased = int(memory.alias_size_in_bytes)
    code = int(getattr(memory, "generated_code_size_in_bytes", 0) or 0)
    total = arguments + outputs + temporaries + code - aliased
    cost = _cost(compiled)
    xla_flops = float(cost.get("flops", 0.0))
    xla_bytes = float(cost.get("bytes accessed", 0.0))
    row = dict(
        bytes=dict(
            arguments=arguments,
            outputs=outputs,
            temporaries=temporaries,
            aliased=aliased,
            code=code,
            total=total,
        ),  # fmt: skip
        device_memory=None if chip is None else chip.memory,
        fits=None if chip is None else total <= chip.memory,
        headroom=None if chip is None else chip.memory - total,
        xla_flops=xla_flops,
        xla_bytes_accessed=xla_bytes,
        analytic_flops=analytic_flops,
        collectives=collectives(compiled.as_text()),
    )
    flops = max(xla_flops, analytic_flops)
    row["roofline"] = _roofline(chip, flops, max(xla_bytes, arguments + outputs), tokens)
    return row


_SIZE = r"([\d.]+)\s*([KMGT]?)i?B?"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# "Used 27.50G of 15.75G hbm." or "the total memory required for HLO temporaries (111.77G)
# exceeds available HBM (15.75G)."
_USED = re.compile(r"Used " + _SIZE + r" of " + _SIZE + r" \w+")
_REQUIRED = re.compile(
    r"required for ([\w ]+?) \(" + _SIZE + r"\) exceeds available \w+ \(" + _SIZE + r"\)"
)


def row_from_error(error: BaseException, *, chip: Chip | None) -> dict[str, Any] | None:
    """A "does not fit" row from a compile that ran out of memory (``RESOURCE_EXHAUSTED``),
    with the compiler's figures ("Used 27.1G of 15.75G hbm"); None for any other error."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
        return None
    used = capacity = temporaries = None
    match = _USED.search(text)
    if match:
        used = round(float(match.group(1)) * _UNITS[match.group(2)])
        capacity = round(float(match.group(3)) * _UNITS[match.group(4)])
    match = _REQUIRED.search(text)
    if match:  # only what one kind of buffer needs: a lower bound on the total
        needed = round(float(match.group(2)) * _UNITS[match.group(3)])
        capacity = round(float(match.group(4)) * _UNITS[match.group(5)])
        if "temporar" in match.group(1):
            temporaries = needed
        else:
            used = needed
    memory = capacity if capacity is not None else (None if chip is None else chip.memory)
    first = next((line for line in text.splitlines() if "memory" in line.lower()), text)
    return dict(
        bytes=dict(
            arguments=None,
            outputs=None,
            temporaries=temporaries,
            aliased=None,
            code=None,
            total=used,
        ),  # fmt: skip
        device_memory=memory,
        fits=False,
        headroom=None if used is None or memory is None else memory - used,
        compiler_message=first.strip()[:300],
    )


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One train step to compile: its model, optimizer, batch shapes, mesh section, label."""

    label: str
    model: ModelConfig
    tx: Any
    batch_size: int
    seq_len: int
    mesh: Any
    seed: int


def _plans(config, batch_size: int | None, seq_len: int | None, devices) -> list[_Plan]:
    """What to compile for ``config``: a sweep config's points, a run config, or a counting
    config (``model`` + ``count``, as ``configs/gpt3.py``)."""
    if "sweep" in config:
        return [
            _run_plan(point_run_config(config, point), batch_size, seq_len, devices, point.name)
            for point in sweep_points(config)
        ]
    if "task" in config:
        return [_run_plan(config, batch_size, seq_len, devices, config.get("name", "run"))]
    return [_counting_plan(config, batch_size, seq_len, devices)]


def _run_plan(config, batch_size, seq_len, devices, label) -> _Plan:
    if seq_len is not None or batch_size is not None:
        config = ml_collections.ConfigDict(config.to_dict())
        if seq_len is not None:
            config.task.seq_len = seq_len
            config.model.max_seq_len = max(config.model.max_seq_len, seq_len)
        if batch_size is not None:
            config.train.batch_size = batch_size
    task, model_config = run_config.check_run_config(config, devices=devices)
    return _Plan(
        str(label), model_config, run_config.optimizer_for(config.train),
        config.train.batch_size, task.seq_len, config.mesh, config.train.seed,
    )  # fmt: skip


def _counting_plan(config, batch_size, seq_len, devices) -> _Plan:
    model_config = ModelConfig.from_config(config.model)
    mesh_config = config.get("mesh") or ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    mesh = sharding.mesh_from_config(mesh_config, devices)
    count = config.get("count") or {}
    seq_len = seq_len or count.get("seq_len") or model_config.max_seq_len
    if seq_len > model_config.max_seq_len:
        raise ValueError(
            f"seq_len={seq_len} is longer than model.max_seq_len={model_config.max_seq_len}"
        )
    # One sequence per batch shard unless told: the smallest batch the mesh can split.
    batch_size = batch_size or sharding.batch_shards(mesh) * (count.get("batch_size") or 1)
    tx = state.make_optimizer(
        learning_rate=1e-4, steps=1000, warmup_steps=10, weight_decay=0.1, clip_norm=1.0
    )  # AdamW as configs/train.py builds it; its state's shapes do not depend on the values
    return _Plan(str(config.get("name", "model")), model_config, tx, batch_size, seq_len,
                 mesh_config, 0)  # fmt: skip


def _attention_choice(model: ModelConfig, platform: str, model_shards: int) -> str:
    """What ``implementation=None`` picks for one layer's call on ``platform`` (or the
    config's own choice); the call's per-shard heads, one example."""
    if model.attention_implementation is not None:
        return model.attention_implementation
    n, k = model.num_heads, model.resolved_num_kv_heads
    if n % model_shards == 0 and k % model_shards == 0:
        n, k = n // model_shards, k // model_shards
    t, dtype = 8, model.compute_dtype  # support depends on widths, dtype and masking
    q = jnp.zeros((1, t, n, model.resolved_head_dim), dtype)
    kk = jnp.zeros((1, t, k, model.resolved_head_dim), dtype)
    v = jnp.zeros((1, t, k, model.resolved_value_dim), dtype)
    return choose_implementation(
        q, kk, v, masking=Masking(is_causal=model.is_causal), platform=platform,
        dropout_rate=model.attention_dropout_rate,
    )  # fmt: skip


def _mesh_string(mesh) -> str:
    return ",".join(f"{name}={size}" for name, size in mesh.shape.items())


def compile_check(
    config,
    topology: str,
    *,
    batch_size: int | None = None,
    seq_len: int | None = None,
    compiler_options=None,
    echo=None,
) -> list[dict[str, Any]]:
    """Compile ``config``'s train step for ``topology`` without its devices; one row per
    config (per point of a sweep config). See the module docstring for the fields.

    ``config``: a run config (``configs/train.py``), a sweep config (``configs/sweep.py``) or
    a counting config (``configs/gpt3.py``: ``model`` and ``count``; its global batch defaults
    to one sequence of ``count.seq_len`` per batch shard). Its ``mesh`` section (``data``,
    ``fsdp``, ``model``) lays the step out on the topology's devices. ``batch_size``,
    ``seq_len``: the global batch and sequence length, overriding the config's.
    ``compiler_options(platform)``: XLA options (None: XLA's own). ``echo(row)``: called as
    each row is ready. ``ValueError`` naming the setting for an impossible config or mesh.
    """
    target = parse_topology(topology)
    chip = CHIPS.get(target.chip)
    devices = target.devices()
    plans = _plans(config, batch_size, seq_len, devices)
    rows = []
    for plan in plans:
        row = _check_one(plan, target, chip, devices, compiler_options)
        rows.append(row)
        if echo is not None:
            echo(row)
    return rows


# The CUDA plugin of jax 0.10.2 fails to compile a train step on an fsdp mesh ("INTERNAL:
# Couldn't find output tile sizes that satisfy hlo: %dot ... f32[30,16]", a Triton GEMM
# fusion of a sharded projection's gradient; any width tried): GEMMs go to cuBLAS instead.
_CUDA_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def _check_one(plan: _Plan, target: Topology, chip, devices, compiler_options) -> dict:
    mesh = sharding.mesh_from_config(plan.mesh, devices)
    tokens = plan.batch_size * plan.seq_len
    shards = math.prod(mesh.devices.shape)
    analytic = accounting.training_flops_per_sequence(plan.model, plan.seq_len) * plan.batch_size
    row: dict[str, Any] = dict(
        config=plan.label,
        topology=target.name,
        devices=len(devices),
        mesh=_mesh_string(mesh),
        batch_size=plan.batch_size,
        seq_len=plan.seq_len,
        params=int(accounting.count_params(plan.model).total),
        attention=_attention_choice(plan.model, target.platform, mesh.shape["model"]),
        scan_layers=plan.model.resolved_scan_layers,
        remat=plan.model.remat,
    )
    options = None if compiler_options is None else compiler_options(target.platform)
    if target.platform == "cuda":
        options = {**_CUDA_OPTIONS, **(options or {})}
    start = time.perf_counter()
    inputs = None
    try:
        lowered, inputs = steps.lower_train_step(
            plan.model, plan.tx, steps.token_batch(plan.batch_size, plan.seq_len), mesh,
            seed=plan.seed, compiler_options=options,
        )  # fmt: skip
        compiled = lowered.compile()
    except Exception as error:  # noqa: BLE001 - only out-of-memory becomes a row
        failed = row_from_error(error, chip=chip)
        if failed is None or inputs is None:
            raise
        held = failed["bytes"]
        held["arguments"] = steps.per_device_bytes(inputs)
        if held["total"] is None and held["temporaries"] is not None:  # at least these two
            held["total"] = held["arguments"] + held["temporaries"]
            failed["headroom"] = failed["device_memory"] - held["total"]
        row.update(failed, compile_s=time.perf_counter() - start)
        row.update(analytic_flops=analytic / shards, roofline=None)
        return row
    row["compile_s"] = time.perf_counter() - start
    row.update(row_from_compiled(compiled, chip=chip, analytic_flops=analytic / shards,
                                 tokens=tokens))  # fmt: skip
    if target.platform == "cuda" or chip is None:
        row["fit_source"] = "memory table" if chip is not None else None
    else:
        row["fit_source"] = "compiler"
    return row


def _gb(value) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"


def _flops(value) -> str:
    return "-" if value is None else f"{value / 1e12:.3g}T"


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table (GB = 1e9 bytes, per device)."""
    header = (
        "config", "topology", "mesh", "B x T", "attention", "args GB", "out GB", "temp GB",
        "alias GB", "total GB", "memory GB", "fits", "XLA FLOPs", "model FLOPs",
        "collectives", "compile s", "step s", "tokens/s",
    )  # fmt: skip
    lines = [header]
    for row in rows:
        b = row["bytes"]
        roof = row.get("roofline") or {}
        coll = " ".join(f"{k}:{v}" for k, v in sorted((row.get("collectives") or {}).items()))
        fits = {True: "yes", False: "NO", None: "?"}[row["fits"]]
        lines.append((
            row["config"], row["topology"], row["mesh"], f"{row['batch_size']}x{row['seq_len']}",
            row["attention"], _gb(b["arguments"]), _gb(b["outputs"]), _gb(b["temporaries"]),
            _gb(b["aliased"]), _gb(b["total"]), _gb(row["device_memory"]), fits,
            _flops(row.get("xla_flops")), _flops(row.get("analytic_flops")), coll or "-",
            f"{row['compile_s']:.1f}",
            "-" if roof.get("step_s") is None else f"{roof['step_s']:.3g}",
            "-" if roof.get("tokens_per_s") is None else f"{roof['tokens_per_s']:.3g}",
        ))  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def json_ready(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with NumPy scalars as Python numbers (``json.dumps`` takes them)."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, np.generic):
            return value.item()
        return value

    return [plain(row) for row in rows]
