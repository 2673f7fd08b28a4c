"""Opt-in CPU tuning: the knobs that make JAX train steps faster on a CPU host.

Nothing here runs on import, and no part of attnjax calls it: importing the library or
building a step leaves the process as it was. Launchers opt in (``experiments/`` do it unless
run with ``--cpu_tune=false``)::

    from attnjax.perf import cpu

    cpu.tune()  # process-wide, once, at start-up
    step = make_train_step(..., compiler_options=cpu.compiler_options(platform))

Each knob is kept only while a side-by-side run shows it pays; its docstring gives the ratio
measured (interleaved A/B in one session on a 2-core machine shared with other jobs; the
commands are in the docstrings).
"""

from __future__ import annotations

import ctypes
import functools
import platform as platform_lib
import sys
from typing import Any

__all__ = ["compiler_options", "tune"]

# name: (glibc's mallopt parameter number in malloc.h, value): no mmap'ed blocks, and the heap
# top it may keep instead of trimming.
_MALLOC_SETTINGS = {"M_MMAP_MAX": (-4, 0), "M_TRIM_THRESHOLD": (-1, 2**31 - 1)}

# XLA:CPU (jaxlib 0.10) hands dots, reductions and elementwise ops to YNNPACK by default; its
# own emitters and Eigen dots are faster for train steps (see compiler_options).
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def tune() -> dict[str, int]:
    """Make glibc's ``malloc`` keep freed memory for reuse instead of handing it back to the OS.

    XLA:CPU allocates a compiled step's scratch (all its temporaries: 38 MiB for nanoGPT's CPU
    recipe, 4 layers x 128 wide, T=64, batch 12) as one block per call. glibc serves blocks over
    32 MiB with fresh ``mmap`` pages and unmaps them when freed, so every step page-faults its
    whole scratch in again. Served from the heap (``M_MMAP_MAX=0``) and not trimmed below 2 GiB
    (``M_TRIM_THRESHOLD``), the next step reuses the same, already mapped pages.

    Measured: nanoGPT's CPU recipe (above; AdamW train step), three pairs of processes run
    alternately with and without ``tune()`` (15 rounds of 5 steps each): untuned steps took
    1.04x, 1.12x and 1.34x the tuned ones' CPU time (median 1.12x; pooled medians 119 vs 97 ms);
    wall times (740 vs 431 ms pooled) were too noisy to read at a load of 13-17 on 2 cores.

    Process-wide and permanent: memory freed later stays with the process (and is reused by
    it). Host-side only (it does not touch JAX), so it may run before
    ``jax.distributed.initialize``. Idempotent: calling it again sets the same values.

    Returns the settings applied, ``{"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**31 - 1}``, or
    ``{}`` where there is nothing to set (not glibc on Linux).
    """
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return {}
    applied = {}
    for name, (parameter, value) in _MALLOC_SETTINGS.items():
        if mallopt(parameter, value):  # mallopt returns 1 on success
            applied[name] = value
    return applied


def _glibc_mallopt():
    if not sys.platform.startswith("linux") or platform_lib.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def compiler_options(platform: str) -> dict[str, Any] | None:
    """XLA options for ``jax.jit(..., compiler_options=...)`` of a step compiled for
    ``platform`` (``"cpu"``, ``"cuda"``, ``"tpu"``; e.g. ``mesh.devices.flat[0].platform``).

    Pure: it sets nothing. On ``"cpu"``, turn YNNPACK fusions off, if this jaxlib knows that
    option; on every other platform ``None`` (XLA's defaults).

    Measured (AdamW train step, the default compile and this one in one process, interleaved
    rounds; medians of per-round ratios, 2 cores at a load of 13-17): at 6 layers x 384 wide,
    T=256, batch 16 the default took 1.12x the wall time and 1.17x the CPU time (10 rounds);
    at nanoGPT's CPU recipe (4 x 128, T=64, batch 12) 1.05x the wall time and 0.97x the CPU
    time (30 rounds), i.e. about equal. The loss changes at the 1e-6 level (summation order).

    Ask with the platform the step is compiled for, not ``jax.default_backend()``: a
    deviceless TPU or GPU compile runs in a process whose default backend is the CPU, and
    these options would break it.
    """
    if platform != "cpu" or not _cpu_options_known():
        return None
    return dict(_CPU_COMPILER_OPTIONS)


@functools.cache
def _cpu_options_known() -> bool:
    """Whether this jaxlib accepts ``_CPU_COMPILER_OPTIONS`` (an experimental XLA flag)."""
    import jax
    import jax.numpy as jnp

    try:
        on_cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        x = jax.ShapeDtypeStruct((2, 2), jnp.float32, sharding=on_cpu)
        jax.jit(jnp.dot).lower(x, x).compile(_CPU_COMPILER_OPTIONS)
    except jax.errors.JaxRuntimeError:  # "No such compile option" or "not a valid enum value"
        return False
    return True
