"""Timing: warm-up, interleaved repeated calls, median and interquartile range.

Every function takes ``clock`` (seconds, monotonic; default :func:`time.perf_counter`) so the
arithmetic can be tested on a fake clock. Compilation is never inside a timed call: JAX
callers compile ahead of time (:func:`compile_seconds`) and time the compiled executable.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "Contender",
    "Prepared",
    "Samples",
    "compile_seconds",
    "fwd_bwd",
    "interleaved_samples",
    "matmul_gflops",
    "median_seconds",
    "seconds",
    "summarize",
    "time_prepared",
]

Clock = Callable[[], float]


def seconds(call: Callable[[], object], clock: Clock = time.perf_counter) -> float:
    """Wall seconds of one ``call()`` (the call must block until its work is done)."""
    start = clock()
    call()
    return clock() - start


def summarize(times: Sequence[float]) -> dict:
    """``{"seconds": median, "iqr_seconds": q3 - q1, "samples": n}`` of ``times`` (seconds).

    Quartiles are ``statistics.quantiles(..., method="inclusive")`` (linear interpolation
    between the samples, as NumPy's default); one sample has an IQR of 0.
    """
    if not times:
        raise ValueError("times is empty: nothing to summarize")
    iqr = 0.0
    if len(times) > 1:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        iqr = q3 - q1
    return {"seconds": statistics.median(times), "iqr_seconds": iqr, "samples": len(times)}


@dataclasses.dataclass(frozen=True)
class Contender:
    """One thing to time: ``call()`` must block until done; ``warmup()`` (default ``call``)
    is the first, untimed-as-a-sample call (e.g. one that also profiles memory)."""

    name: str
    call: Callable[[], object]
    warmup: Callable[[], object] | None = None


@dataclasses.dataclass(frozen=True)
class Samples:
    """A contender's timed calls (seconds). ``warmup_sample``: the warm-up call took longer
    than the budget and is the only sample; ``warmup_seconds``: how long the warm-up took."""

    times: tuple[float, ...]
    warmup_sample: bool
    warmup_seconds: float

    def summary(self) -> dict:
        """:func:`summarize` of the times, plus ``warmup_sample`` and ``warmup_seconds``."""
        return {
            **summarize(self.times),
            "warmup_sample": self.warmup_sample,
            "warmup_seconds": self.warmup_seconds,
        }


def interleaved_samples(
    contenders: Sequence[Contender],
    repeats: int,
    budget_s: float | None = None,
    clock: Clock = time.perf_counter,
) -> list[Samples]:
    """Time several contenders in turn, so a slow drift of the machine falls on all of them.

    Each contender is warmed up once (in order); it then gets ``min(repeats, budget_s //
    warm-up time)`` timed calls (``repeats`` when ``budget_s`` is None), taken round-robin: one
    call of each contender that still needs samples, then the next round. A contender whose
    warm-up alone took longer than ``budget_s`` keeps the warm-up time as its only sample.

    Returns:
      One :class:`Samples` per contender, in order.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    counts, warmups = [], []
    for contender in contenders:
        first = seconds(contender.warmup or contender.call, clock)
        warmups.append(first)
        fits = repeats if budget_s is None or first <= 0 else int(budget_s // first)
        counts.append(min(repeats, fits))
    times: list[list[float]] = [[] for _ in contenders]
    for round_index in range(max(counts, default=0)):
        for contender, count, sampled in zip(contenders, counts, times):
            if round_index < count:
                sampled.append(seconds(contender.call, clock))
    return [
        Samples(tuple(sampled), False, first) if count >= 1 else Samples((first,), True, first)
        for count, sampled, first in zip(counts, times, warmups)
    ]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A benchmark row ready to time: ``fields`` known before timing; ``contender`` what to
    time (None: nothing, e.g. a skipped row); ``after()`` fields known only once it was timed
    (e.g. a peak measured during the warm-up call)."""

    fields: dict
    contender: Contender | None = None
    after: Callable[[], dict] | None = None


def time_prepared(
    rows: Sequence[Prepared],
    repeats: int,
    budget_s: float | None = None,
    clock: Clock = time.perf_counter,
) -> list[dict]:
    """Time every row's contender with :func:`interleaved_samples`; per row, its ``fields``
    updated with :meth:`Samples.summary` (if it had a contender) and ``after()``."""
    contenders = [row.contender for row in rows if row.contender is not None]
    samples = iter(interleaved_samples(contenders, repeats, budget_s, clock))
    results = []
    for row in rows:
        result = dict(row.fields)
        if row.contender is not None:
            result.update(next(samples).summary())
        if row.after is not None:
            result.update(row.after())
        results.append(result)
    return results


def compile_seconds(lowered, clock: Clock = time.perf_counter):
    """Compile a ``jax.stages.Lowered`` ahead of time: ``(compiled, wall seconds of the
    compilation)``, so compile time is reported apart from the timed calls."""
    start = clock()
    compiled = lowered.compile()
    return compiled, clock() - start


def fwd_bwd(attention_fn: Callable) -> Callable:
    """``jax.jit(jax.value_and_grad(sum of attention_fn(q, k, v) in float32))`` over q, k, v.

    For attention ``(q [B, T, N, H], k [B, S, K, H], v [B, S, K, R]) -> [B, T, N, R]``; the
    jitted function returns ``(loss [], (dq, dk, dv))``.
    """

    def loss(q, k, v):
        return attention_fn(q, k, v).astype(jnp.float32).sum()

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def median_seconds(fn: Callable, args: Sequence, repeats: int, clock: Clock = time.perf_counter):
    """Median wall seconds of ``fn(*args)`` (blocked on) over ``repeats`` calls after one
    warm-up call."""
    call = lambda: jax.block_until_ready(fn(*args))
    (samples,) = interleaved_samples([Contender("fn", call)], repeats, clock=clock)
    return statistics.median(samples.times)


def matmul_gflops(size: int, repeats: int = 5) -> float:
    """Rate of a jitted float32 ``[size, size] @ [size, size]`` matmul in JAX, GFLOP/s
    (``2·size³`` FLOPs over the median call)."""
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.random.normal(k, (size, size), jnp.float32) for k in keys)
    return 2 * size**3 / median_seconds(jax.jit(jnp.matmul), (a, b), repeats) / 1e9
