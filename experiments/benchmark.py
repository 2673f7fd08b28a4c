"""Speed and memory of attention and of a training step, against peers measured in the same run.

    uv run python -m experiments.benchmark                      # everything (see below)
    uv run python -m experiments.benchmark --suite=attention --cases=b4_t1024 --modes=fwd_bwd \\
        --causal=true --json=/tmp/bench.json
    uv run python -m experiments.benchmark --suite=train --train_settings=l4_d128_t64_b12

Attention suite: for each case (``--cases``), mode (``fwd``, ``fwd_bwd``) and masking
(``--causal``), times attnjax's implementations (``--implementations``; by default every entry of
``attnjax.functional.IMPLEMENTATIONS`` that runs on this backend, so not ``cudnn`` off GPUs or
``pallas_tpu`` off TPUs, then ``auto``: ``implementation=None``) and the peers (``--peers``):
``jax.nn.dot_product_attention``, ``flax.nnx.dot_product_attention`` (the attention function of
Flax's ``MultiHeadAttention``, given the causal mask from ``nnx.make_causal_mask`` as that module
is; Flax 0.12's function accepts K < N heads itself, so GQA inputs are passed unrepeated) and,
when torch imports and JAX runs on the CPU, ``torch.nn.functional.scaled_dot_product_attention``
(inputs [B, N, T, H], ``is_causal``, ``enable_gqa``; forward under ``torch.no_grad()``; torch's
default threads). JAX functions are jitted; ``fwd_bwd`` is ``jax.value_and_grad`` of
``f(q, k, v).sum()`` with respect to q, k and v (torch: ``.sum().backward()``). Rows whose
lowered programs are identical (``auto`` picking ``blocked``, ``jax.nn`` and ``attnjax[xla]``
without a mask) are timed once and say so.

Timing: after one warm-up call (compilation is done before it, ahead of time), the median of up
to ``--repeats`` calls, fewer when calls are long (at most ``--budget_s`` of timed calls per
row); a warm-up call longer than ``--budget_s`` is the only sample (column ``n`` shows ``w``).

FLOPs (one convention, shared with ``attnjax.accounting``): only the two matmuls of the grid,
a multiply-add being 2 FLOPs: forward ``4·B·N·T·S·H``; causal counts the keys each query sees,
``T(T+1)/2`` of the ``T·S`` pairs; forward+backward is 3x forward (the backward pass's four
matmuls; FlashAttention's papers count 3.5x, adding the recomputed scores). ``%mm`` is that
rate as a percentage of a jitted float32 2048³ matmul in JAX measured at the start of the run.

Memory: JAX rows report the compiled executable's ``memory_analysis()`` (arguments + outputs +
temporaries − aliased; XLA's buffer assignment, exact for what XLA allocates, not a measurement
of the process). A row whose compiled peak exceeds ``--max_memory_gib`` (default 80% of the
memory available when it is compiled) is skipped with its size. Torch rows report the peak of
live tensor bytes during one call (its inputs plus allocations recorded by ``torch.profiler``).
``long_b1_t32768`` runs only what never holds the [B, N, T, S] grid (32 GiB in float32):
``attnjax[blocked]``, ``attnjax[auto]`` (skipped by the memory check if it picks a
grid-building implementation) and torch's CPU flash kernel.

Train suite (``--train_settings``): one full training step (forward, backward, clipped AdamW
update) of ``attnjax.models.DecoderLM`` built as ``experiments.train`` builds it
(``attnjax.training.init_model``, ``make_optimizer``, ``make_train_step``) at nanoGPT's CPU
recipe (4 layers, 4 heads, width 128, T=64, batch 12) and at 6 layers, 6 heads, width 384,
T=256, batch 16; vocabulary 65, no dropout, bias-free, tied embeddings, learned positions, exact
GELU. With torch, the same step of nanoGPT's model (``experiments.torch_nanogpt``) is timed in
the same run. Tokens/s = B·T / median step time (median over ``--train_repeats`` runs of the
setting's step count, after one warm-up step).

Absolute times on a shared machine are noisy: compare the ratio columns (``vs X`` = this row's
time / X's time, in the same run; below 1 is faster).

The default run took 14-15 min (two runs) on a 2-core machine shared with other jobs (load 4-6;
the process got about 11 CPU-minutes; a 2048³ matmul ran at 66-71 of the usual ~190 GFLOP/s);
over half of it is ``long_b1_t32768`` and ``b1_t4096``'s forward+backward. Use ``--cases``,
``--modes``, ``--causal`` and ``--suite`` for short runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

import attnjax
from experiments.common import log_devices, run

AUTO = "auto"  # implementation=None: attnjax picks
GRID_FREE = ("blocked", AUTO)  # attnjax implementations that may run without the grid
PEERS = ("jax.nn", "flax.nnx", "torch.sdpa")
MODES = ("fwd", "fwd_bwd")
SUITES = ("attention", "train", "all")


@dataclasses.dataclass(frozen=True)
class Case:
    """Self-attention shapes: query [B, T, N, H], key/value [B, T, K, H]."""

    batch: int
    length: int
    heads: int
    kv_heads: int
    head_dim: int
    causal_only: bool = False
    grid_free_only: bool = False  # the grid would not fit: run only grid-free implementations

    def describe(self) -> str:
        return (
            f"B={self.batch} T=S={self.length} N={self.heads} K={self.kv_heads} H={self.head_dim}"
        )

    def flops(self, mode: str, causal: bool) -> float:
        """Grid matmul FLOPs (module docstring): 4·B·N·pairs·H, pairs = T·S or T(T+1)/2."""
        t = self.length
        pairs = t * (t + 1) / 2 if causal else t * t
        forward = 4 * self.batch * self.heads * pairs * self.head_dim
        return forward * (3 if mode == "fwd_bwd" else 1)

    def grid_bytes(self, itemsize: int = 4) -> int:
        return self.batch * self.heads * self.length**2 * itemsize


CASES = {
    "b4_t1024": Case(4, 1024, 8, 8, 64),
    "b1_t4096": Case(1, 4096, 8, 8, 64),
    "gqa_b4_t1024": Case(4, 1024, 8, 2, 64),
    "long_b1_t32768": Case(1, 32768, 8, 8, 64, causal_only=True, grid_free_only=True),
    "tiny": Case(2, 16, 4, 2, 8),  # for tests
}
DEFAULT_CASES = ("b4_t1024", "b1_t4096", "gqa_b4_t1024", "long_b1_t32768")


@dataclasses.dataclass(frozen=True)
class TrainSetting:
    """A decoder's shape and batch; ``steps`` per timed repeat."""

    num_layers: int
    num_heads: int
    model_dim: int
    seq_len: int
    batch_size: int
    steps: int
    vocab_size: int = 65

    def describe(self) -> str:
        return (
            f"L={self.num_layers} N={self.num_heads} D={self.model_dim} T={self.seq_len} "
            f"B={self.batch_size} V={self.vocab_size}"
        )


TRAIN_SETTINGS = {
    "l4_d128_t64_b12": TrainSetting(4, 4, 128, 64, 12, steps=20),  # nanoGPT's CPU recipe
    "l6_d384_t256_b16": TrainSetting(6, 6, 384, 256, 16, steps=2),
    "tiny": TrainSetting(1, 2, 16, 8, 2, steps=2),  # for tests
}
DEFAULT_TRAIN_SETTINGS = ("l4_d128_t64_b12", "l6_d384_t256_b16")

_SUITE = flags.DEFINE_enum("suite", "all", SUITES, "Which suite(s) to run.")
_CASES = flags.DEFINE_list("cases", list(DEFAULT_CASES), f"Attention cases: {list(CASES)}.")
_MODES = flags.DEFINE_list("modes", list(MODES), "fwd and/or fwd_bwd.")
_CAUSAL = flags.DEFINE_enum("causal", "both", ["both", "true", "false"], "Masking to time.")
_IMPLS = flags.DEFINE_list(
    "implementations", None, "attnjax implementations (and 'auto'); default: all on this backend."
)
_PEERS = flags.DEFINE_list("peers", list(PEERS), f"Peers to time: any of {list(PEERS)}.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Input dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "At most this many timed calls per row.")
_BUDGET = flags.DEFINE_float("budget_s", 2.0, "At most about this many seconds of timed calls.")
_MAX_MEMORY = flags.DEFINE_float(
    "max_memory_gib", None, "Skip JAX rows whose compiled peak is larger (default: 80% available)."
)
_TRAIN_SETTINGS = flags.DEFINE_list(
    "train_settings", list(DEFAULT_TRAIN_SETTINGS), f"Train settings: {list(TRAIN_SETTINGS)}."
)
_TRAIN_REPEATS = flags.DEFINE_integer("train_repeats", 3, "Timed runs of a setting's steps.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 2048, "Size of the reference matmul.")
_JSON = flags.DEFINE_string("json", None, "Write machine info, matmul rates and every row here.")


# ---- timing ----------------------------------------------------------------------------------


def fwd_bwd(attention_fn: Callable) -> Callable:
    """``jax.jit(jax.value_and_grad(sum of attention_fn(q, k, v) in float32))`` over q, k, v."""

    def loss(q, k, v):
        return attention_fn(q, k, v).astype(jnp.float32).sum()

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def median_seconds(fn, args, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` (blocked on) over ``repeats`` calls after a warm-up."""
    jax.block_until_ready(fn(*args))
    return statistics.median(
        _seconds(lambda: jax.block_until_ready(fn(*args))) for _ in range(repeats)
    )


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def sample_seconds(
    call: Callable[[], object], repeats: int, budget_s: float, warmup: Callable | None = None
) -> tuple[list[float], bool]:
    """Times of ``call()`` after one warm-up call (``warmup`` if given, e.g. a profiled call):
    ``min(repeats, budget_s // warm-up time)`` of them, or, when the warm-up alone took longer
    than ``budget_s``, just the warm-up's time. Returns ``(times, warmup_is_the_sample)``."""
    first = _seconds(warmup or call)
    count = min(repeats, int(budget_s // first))
    if count < 1:
        return [first], True
    return [_seconds(call) for _ in range(count)], False


def _timing(times: list[float], warmup_only: bool) -> dict:
    return {
        "seconds": statistics.median(times),
        "samples": len(times),
        "warmup_sample": warmup_only,
    }


def matmul_gflops(framework: str, size: int, repeats: int = 5) -> float:
    """float32 ``size``³ matmul rate, GFLOP/s (jitted in JAX; ``torch.mm`` in torch)."""
    if framework == "jax":
        a, b = (
            jax.random.normal(k, (size, size), jnp.float32)
            for k in jax.random.split(jax.random.key(0))
        )
        seconds = median_seconds(jax.jit(jnp.matmul), (a, b), repeats)
    else:
        import torch

        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)
        seconds = statistics.median(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / seconds / 1e9


def memory_limit_bytes() -> int | None:
    """``--max_memory_gib``, else 80% of what the device or the host has available now."""
    if _MAX_MEMORY.value is not None:
        return int(_MAX_MEMORY.value * 2**30)
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


def compiled_peak_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries − aliased bytes of a compiled executable (XLA)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


# ---- attention suite -------------------------------------------------------------------------


@functools.cache
def torch_available() -> bool:
    """Whether torch imports (it is optional: never an attnjax dependency)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# attnjax implementations that run on one backend only (others raise ValueError there).
BACKEND_ONLY = {"cudnn": "gpu", "pallas_tpu": "tpu"}


def default_implementations() -> list[str]:
    """Every attnjax implementation that runs on this backend, then ``auto``."""
    backend = jax.default_backend()
    impls = attnjax.functional.IMPLEMENTATIONS
    return [i for i in impls if BACKEND_ONLY.get(i, backend) == backend] + [AUTO]


def jax_attention(name: str, causal: bool) -> Callable:
    """``(q, k, v) -> out`` for a JAX row (``attnjax[impl]``, ``jax.nn`` or ``flax.nnx``)."""
    if name == "jax.nn":
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    if name == "flax.nnx":
        from flax import nnx

        def flax_attention(q, k, v):
            # As MultiHeadAttention gets it from a decoder: a [B, 1, T, T] boolean mask. Flax's
            # function takes K < N heads itself (it hands them to jax.nn), so no repeat.
            mask = nnx.make_causal_mask(jnp.ones(q.shape[:2], jnp.int32)) if causal else None
            return nnx.dot_product_attention(q, k, v, mask=mask)

        return flax_attention
    impl = name.removeprefix("attnjax[").removesuffix("]")
    implementation = None if impl == AUTO else impl
    return lambda q, k, v: attnjax.dot_product_attention(
        q, k, v, is_causal=causal, implementation=implementation
    )


def _qkv(case: Case, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    rng = np.random.default_rng(0)  # NumPy: no compilation for the inputs
    heads = (case.heads, case.kv_heads, case.kv_heads)
    shapes = [(case.batch, case.length, n, case.head_dim) for n in heads]
    return tuple(jnp.asarray(rng.standard_normal(s, np.float32), dtype) for s in shapes)


def time_jax_row(name, qkv, mode, causal, repeats, budget_s, timed: dict) -> dict:
    """One JAX row: lower, compile ahead of time, check memory, time (module docstring).

    ``timed`` maps each program already timed in this group to its row's name and result: a
    row whose lowered program is identical (e.g. ``auto`` picking ``xla``) reuses them.
    """
    attention = jax_attention(name, causal)
    fn = fwd_bwd(attention) if mode == "fwd_bwd" else jax.jit(attention)
    try:
        lowered = fn.lower(*qkv)
    except ValueError as error:  # attnjax names what this implementation cannot do
        return {"skipped": str(error)}
    program = hashlib.sha256(lowered.as_text().encode()).hexdigest()
    if program in timed:
        same, result = timed[program]
        return {**result, "same_program_as": same}
    compiled = lowered.compile()
    peak = compiled_peak_bytes(compiled)
    limit = memory_limit_bytes()
    if peak is not None and limit is not None and peak > limit:
        result = {"skipped": f"compiled peak {_gib(peak)} > memory limit {_gib(limit)}"}
        result["peak_bytes"] = peak
    else:
        times, warmup_only = sample_seconds(
            lambda: jax.block_until_ready(compiled(*qkv)), repeats, budget_s
        )
        result = {**_timing(times, warmup_only), "peak_bytes": peak, "memory": "xla"}
    timed[program] = (name, result)
    return result


def _torch_backend(torch, q, k, v, causal: bool, gqa: bool) -> str:
    """The SDPA kernel torch picks for these inputs (private API; 'unknown' if it moves)."""
    try:
        from torch.nn.attention import SDPBackend

        choice = torch._fused_sdp_choice(q, k, v, is_causal=causal, enable_gqa=gqa)
        names = {int(getattr(SDPBackend, n)): n.lower() for n in dir(SDPBackend) if n.isupper()}
        return names.get(int(choice), str(choice))
    except (AttributeError, ImportError, RuntimeError, TypeError):
        return "unknown"


def _profile_memory():
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU], profile_memory=True)


@functools.cache
def _start_profiler() -> None:
    """The profiler's first use costs seconds (library set-up); pay it outside any timing."""
    with _profile_memory():
        pass


def _torch_peak_bytes(call, resident: int) -> int:
    """``resident`` bytes plus the most live bytes ``call()`` allocated at once, from the
    allocation events of ``torch.profiler`` (every CPU tensor goes through them)."""
    with _profile_memory() as prof:
        call()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = itertools.accumulate(e.nbytes() for e in events)
    return resident + max(0, max(live, default=0))


def time_torch_row(case, qkv, mode, causal, repeats, budget_s) -> dict:
    """One ``torch.nn.functional.scaled_dot_product_attention`` row (CPU, default threads)."""
    import torch
    from torch.nn import functional as F

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[qkv[0].dtype.name]
    q, k, v = (
        torch.from_numpy(np.array(x, np.float32)).transpose(1, 2).contiguous().to(dtype)
        for x in qkv
    )  # [B, N|K, T, H]
    gqa = case.kv_heads != case.heads
    backend = _torch_backend(torch, q, k, v, causal, gqa)
    if case.grid_free_only and backend != "flash_attention":
        return {"skipped": f"torch picks its {backend} kernel here, which builds the grid",
                "backend": backend}  # fmt: skip
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    if mode == "fwd":

        def call():
            with torch.no_grad():
                return sdpa()

    else:
        for x in (q, k, v):
            x.requires_grad_(True)

        def call():
            for x in (q, k, v):
                x.grad = None
            sdpa().sum().backward()

    resident = sum(x.numel() * x.element_size() for x in (q, k, v))
    peak = []
    # The warm-up call is profiled (a few ms more; it is a sample only for calls > budget_s).
    _start_profiler()
    profiled = lambda: peak.append(_torch_peak_bytes(call, resident))
    times, warmup_only = sample_seconds(call, repeats, budget_s, warmup=profiled)
    timing = _timing(times, warmup_only)
    return {**timing, "peak_bytes": peak[0], "memory": "torch.profiler", "backend": backend}


def attention_rows(
    case_names, modes, causals, implementations, peers, dtype, repeats, budget_s, matmul
) -> list[dict]:
    """Every row of the attention suite (one dict per case × mode × masking × contender);
    ``matmul``: the GFLOP/s that ``percent_of_matmul`` is relative to."""
    rows = []
    names = [f"attnjax[{impl}]" for impl in implementations] + [
        p for p in peers if p != "torch.sdpa"
    ]
    with_torch = "torch.sdpa" in peers and torch_available()
    for case_name in case_names:
        case = CASES[case_name]
        qkv = _qkv(case, dtype)
        for mode, causal in itertools.product(modes, causals):
            if case.causal_only and not causal:
                continue
            group = dict(case=case_name, **dataclasses.asdict(case), mode=mode, causal=causal)
            group.update(dtype=jnp.dtype(dtype).name, flops=case.flops(mode, causal))
            del group["causal_only"], group["grid_free_only"]
            results, timed = [], {}
            for name in names:
                impl = name.removeprefix("attnjax[").removesuffix("]")
                if case.grid_free_only and impl not in GRID_FREE:
                    grid = _gib(case.grid_bytes(jnp.dtype(dtype).itemsize))
                    result = {"skipped": f"builds the [B, N, T, S] grid ({grid} per call)"}
                else:
                    result = time_jax_row(name, qkv, mode, causal, repeats, budget_s, timed)
                results.append({"implementation": name, "framework": "jax", **result})
            if with_torch:
                if jax.default_backend() == "cpu":
                    result = time_torch_row(case, qkv, mode, causal, repeats, budget_s)
                else:
                    result = {
                        "skipped": "torch rows run on the CPU only (JAX is on an accelerator)"
                    }
                results.append({"implementation": "torch.sdpa", "framework": "torch", **result})
            rows.extend(_with_rates(group, results, matmul))
            print_attention_group(rows[-len(results) :])
    return rows


def _with_rates(group: dict, results: list[dict], matmul: float) -> list[dict]:
    peers = {
        r["implementation"]: r["seconds"]
        for r in results
        if r["implementation"] in PEERS and "seconds" in r
    }
    rows = []
    for result in results:
        row = {**group, "seconds": None, "samples": 0, "warmup_sample": False, "gflops": None,
               "percent_of_matmul": None, "peak_bytes": None, "memory": None, "skipped": None,
               "same_program_as": None,
               "ratios": {}, **result}  # fmt: skip
        if row["seconds"] is not None:
            row["gflops"] = group["flops"] / row["seconds"] / 1e9
            row["percent_of_matmul"] = 100 * row["gflops"] / matmul
            row["ratios"] = {
                p: row["seconds"] / s for p, s in peers.items() if p != row["implementation"]
            }
        rows.append(row)
    return rows


def print_attention_group(rows: list[dict]) -> None:
    first = rows[0]
    case = CASES[first["case"]]
    grid = _gib(case.grid_bytes(jnp.dtype(first["dtype"]).itemsize))
    masking = "causal" if first["causal"] else "full"
    print(f"\n{first['case']}  {case.describe()}  {first['mode']}  {masking}  "
          f"{first['dtype']}  ({first['flops'] / 1e9:.1f} GFLOP; grid {grid})")  # fmt: skip
    peers = [p for p in PEERS if any(r["implementation"] == p for r in rows)]
    header = f"  {'implementation':18s} {'ms':>9s} {'n':>2s} {'GFLOP/s':>8s} {'%mm':>5s}"
    header += f" {'peak MiB':>9s}"
    print(header + "".join(f" {'vs ' + p:>13s}" for p in peers))
    for row in rows:
        name = row["implementation"]
        if row["skipped"]:
            print(f"  {name:18s} skipped: {row['skipped']}")
            continue
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
        print(line)


# ---- train suite -----------------------------------------------------------------------------


def attnjax_model_config(setting: TrainSetting):
    """attnjax's decoder shaped as nanoGPT with ``bias=False``: no biases in projections or
    norms, tied unembedding, learned positions, exact GELU, pre-LN with a final norm."""
    return attnjax.ModelConfig(
        vocab_size=setting.vocab_size,
        max_seq_len=setting.seq_len,
        model_dim=setting.model_dim,
        num_layers=setting.num_layers,
        num_heads=setting.num_heads,
        attention_bias=False,
        mlp_bias=False,
        norm_bias=False,
        tie_embeddings=True,
        position_embedding="learned",
        activation="gelu",
        dropout_rate=0.0,
    )


def _tokens(setting: TrainSetting) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, setting.vocab_size, (setting.batch_size, setting.seq_len + 1))


def _time_steps(step: Callable[[], None], sync: Callable[[], None], steps: int, repeats: int):
    step()  # warm-up (compiled ahead of time for JAX)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def time_attnjax_train(setting: TrainSetting, repeats: int) -> dict:
    """Median seconds per step of attnjax's jitted train step (state donated, as in training)."""
    from attnjax.data import Batch
    from attnjax.training import init_model, init_train_state, make_optimizer, make_train_step

    config = attnjax_model_config(setting)
    split = init_model(config, seed=0)
    tx = make_optimizer(
        learning_rate=1e-3, steps=2000, warmup_steps=100, weight_decay=0.1, clip_norm=1.0
    )
    state = [init_train_state(split.params, tx)]
    train_step = make_train_step(split.graphdef, split.rest, tx)
    tokens = _tokens(setting).astype(np.int32)
    batch = Batch(
        inputs=jnp.asarray(tokens[:, :-1]),
        targets=jnp.asarray(tokens[:, 1:]),
        loss_mask=jnp.ones(tokens[:, 1:].shape, jnp.float32),
    )
    compiled = train_step.lower(state[0], batch).compile()

    def step():
        state[0], _ = compiled(state[0], batch)

    seconds = _time_steps(step, lambda: jax.block_until_ready(state[0]), setting.steps, repeats)
    params = sum(x.size for x in jax.tree.leaves(split.params))
    return {"seconds": seconds, "params": int(params), "flops_per_step": _train_flops(setting)}


def time_torch_train(setting: TrainSetting, repeats: int) -> dict:
    """Median seconds per step of nanoGPT's training step: forward with loss, backward, clip
    the gradient norm to 1, AdamW step, ``zero_grad(set_to_none=True)`` (its train.py)."""
    import torch

    from experiments import torch_nanogpt

    torch.manual_seed(0)
    config = torch_nanogpt.GPTConfig(
        block_size=setting.seq_len,
        vocab_size=setting.vocab_size,
        n_layer=setting.num_layers,
        n_head=setting.num_heads,
        n_embd=setting.model_dim,
        dropout=0.0,
        bias=False,
    )
    model = torch_nanogpt.GPT(config)
    model.train()
    optimizer = model.configure_optimizers(
        weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.99), device_type="cpu"
    )
    tokens = torch.from_numpy(_tokens(setting))
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step():
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _time_steps(step, lambda: None, setting.steps, repeats)
    params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    return {"seconds": seconds, "params": int(params), "flops_per_step": _train_flops(setting)}


def _train_flops(setting: TrainSetting) -> float:
    from attnjax.accounting.flops import training_flops_per_token

    per_token = training_flops_per_token(attnjax_model_config(setting), setting.seq_len)
    return per_token * setting.batch_size * setting.seq_len


TRAIN_NOTES = (
    "attnjax vs nanoGPT: same shapes, parameters and update (AdamW, decay on rank>=2 weights, "
    "clip 1.0); differences: attnjax's step also computes accuracy and the gradient norm as "
    "metrics, its learning-rate schedule runs inside the step (nanoGPT sets it from Python), "
    "Adam b2 0.999 (nanoGPT's shakespeare_char: 0.99), and init is plain N(0, 0.02) (nanoGPT "
    "scales residual projections); none changes the work. The batch is fixed (no data loading)."
)


def train_rows(setting_names, repeats: int, with_torch: bool, matmul: float) -> list[dict]:
    rows = []
    for name in setting_names:
        setting = TRAIN_SETTINGS[name]
        tokens = setting.batch_size * setting.seq_len
        group = dict(setting=name, **dataclasses.asdict(setting), tokens_per_step=tokens)
        results = [{"framework": "attnjax", **time_attnjax_train(setting, repeats)}]
        if with_torch:
            results.append({"framework": "torch nanoGPT", **time_torch_train(setting, repeats)})
        torch_s = results[-1]["seconds"] if with_torch else None
        for result in results:
            row = {**group, **result, "tokens_per_s": tokens / result["seconds"]}
            row["gflops"] = row["flops_per_step"] / row["seconds"] / 1e9
            row["percent_of_matmul"] = 100 * row["gflops"] / matmul
            row["ratios"] = {} if torch_s is None or result is results[-1] else {
                "torch nanoGPT": row["seconds"] / torch_s}  # fmt: skip
            rows.append(row)
        print_train_group(rows[-len(results) :], setting)
    return rows


def print_train_group(rows: list[dict], setting: TrainSetting) -> None:
    print(f"\ntrain step {rows[0]['setting']}  {setting.describe()}  "
          f"({rows[0]['flops_per_step'] / 1e9:.1f} GFLOP/step, {setting.steps} steps x "
          f"{_TRAIN_REPEATS.value})")  # fmt: skip
    print(f"  {'framework':14s} {'step ms':>9s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'%mm':>5s} "
          f"{'params':>9s} {'vs torch':>9s}")  # fmt: skip
    for row in rows:
        ratio = row["ratios"].get("torch nanoGPT")
        print(f"  {row['framework']:14s} {row['seconds'] * 1e3:9.1f} {row['tokens_per_s']:9.0f} "
              f"{row['gflops']:8.1f} {row['percent_of_matmul']:5.1f} {row['params']:9d} "
              f"{'' if ratio is None else f'{ratio:8.2f}x':>9s}")  # fmt: skip


# ---- the app ---------------------------------------------------------------------------------


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "flax": importlib.import_module("flax").__version__,
    }
    if torch_available():
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def _check_choices(flag: str, values: list[str], choices) -> None:
    for value in values:
        if value not in choices:
            raise ValueError(f"--{flag}: {value!r} is unknown; choose from {list(choices)}")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    implementations = _IMPLS.value if _IMPLS.value is not None else default_implementations()
    _check_choices("implementations", implementations, (*attnjax.functional.IMPLEMENTATIONS, AUTO))
    _check_choices("cases", _CASES.value, CASES)
    _check_choices("modes", _MODES.value, MODES)
    _check_choices("peers", _PEERS.value, PEERS)
    _check_choices("train_settings", _TRAIN_SETTINGS.value, TRAIN_SETTINGS)
    if _REPEATS.value < 1 or _TRAIN_REPEATS.value < 1:
        raise ValueError("--repeats and --train_repeats must be at least 1")
    log_devices()
    start = time.perf_counter()
    info = machine_info()
    with_torch = torch_available() and jax.default_backend() == "cpu"
    matmul = {"jax": matmul_gflops("jax", _MATMUL_SIZE.value)}
    if with_torch:
        matmul["torch"] = matmul_gflops("torch", _MATMUL_SIZE.value)
    torch_text = "not installed"
    if "torch" in info:
        torch_text = f"{info['torch']} ({info['torch_threads']} threads)"
    print(
        f"JAX {info['jax']} on {info['backend']} ({info['cpu_count']} CPUs), "
        f"flax {info['flax']}, torch {torch_text}"
    )
    rates = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in matmul.items())
    print(f"float32 {_MATMUL_SIZE.value}³ matmul: {rates} (%mm below is relative to JAX's)")

    result = {"machine": info, "matmul_size": _MATMUL_SIZE.value, "matmul_gflops": matmul}
    result.update(attention=[], train=[])
    suite = _SUITE.value
    if suite in ("attention", "all"):
        print(
            "n: timed calls (w: the warm-up call, longer than --budget_s, is the only sample); "
            "vs X: this row's time / X's (below 1: faster)"
        )
        causals = {"both": [True, False], "true": [True], "false": [False]}[_CAUSAL.value]
        result["attention"] = attention_rows(
            _CASES.value, _MODES.value, causals, implementations, _PEERS.value,
            jnp.dtype(_DTYPE.value), _REPEATS.value, _BUDGET.value, matmul["jax"],
        )  # fmt: skip
    if suite in ("train", "all"):
        print(f"\n{TRAIN_NOTES}")
        result["train"] = train_rows(
            _TRAIN_SETTINGS.value, _TRAIN_REPEATS.value, with_torch, matmul["jax"]
        )
    result["wall_s"] = time.perf_counter() - start
    print(f"\nwall time {result['wall_s']:.0f} s")
    if _JSON.value:
        with open(_JSON.value, "w") as file:
            json.dump(_finite(result), file, indent=1, allow_nan=False)


if __name__ == "__main__":
    run(main)
