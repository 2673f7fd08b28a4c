"""Memory: XLA's compiled peak for JAX rows, torch.profiler's live bytes for torch rows.

Sizes are in bytes. Nothing here allocates beyond what it measures.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import jax

__all__ = ["compiled_peak_bytes", "gib", "memory_limit_bytes", "torch_peak_bytes"]


def gib(size: float) -> str:
    """``size`` bytes as ``"1.5 GiB"``."""
    return f"{size / 2**30:.1f} GiB"


def compiled_peak_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries − aliased bytes of a compiled executable.

    XLA's buffer assignment (``compiled.memory_analysis()``): exact for what XLA allocates, not
    a measurement of the process. None when the backend gives no analysis.
    """
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def memory_limit_bytes(max_memory_gib: float | None = None) -> int | None:
    """``max_memory_gib`` in bytes, else 80% of what the default device (an accelerator's
    ``bytes_limit - bytes_in_use``) or the host (``MemAvailable`` of ``/proc/meminfo``) has
    available now; None when neither is known."""
    if max_memory_gib is not None:
        return int(max_memory_gib * 2**30)
    if jax.default_backend() != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        limit = stats.get("bytes_limit")
        return None if limit is None else int(0.8 * (limit - stats.get("bytes_in_use", 0)))
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(0.8 * int(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        return None


def _profile_memory():
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU], profile_memory=True)


@functools.cache
def start_torch_profiler() -> None:
    """Pay the profiler's first-use cost (seconds of library set-up) once, outside timings."""
    with _profile_memory():
        pass


def torch_peak_bytes(call: Callable[[], object], resident: int) -> int:
    """``resident`` bytes plus the most live bytes ``call()`` allocated at once, from the
    allocation events of ``torch.profiler`` (every CPU tensor goes through them). Needs torch."""
    with _profile_memory() as prof:
        call()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = itertools.accumulate(e.nbytes() for e in events)
    return resident + max(0, max(live, default=0))
