"""The attention suite: attnjax's implementations against jax.nn, flax.nnx and torch's SDPA.

Implementations come from the backend registry (``attnjax.functional.backends.REGISTRY``):
by default every backend that runs on this platform, then ``auto`` (``implementation=None``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attnjax.bench import memory, peers, report, timing
from attnjax.functional import dot_product_attention
from attnjax.functional.backends import REGISTRY

__all__ = [
    "AUTO",
    "CASES",
    "DEFAULT_CASES",
    "MODES",
    "PEERS",
    "Case",
    "attention_rows",
    "default_implementations",
    "jax_attention",
]

AUTO = "auto"  # implementation=None: attnjax picks
GRID_FREE = ("blocked", AUTO)  # attnjax implementations that may run without the grid
PEERS = ("jax.nn", "flax.nnx", "torch.sdpa")
MODES = ("fwd", "fwd_bwd")


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
        """Grid matmul FLOPs: ``4·B·N·pairs·H``, pairs = T·S, or T(T+1)/2 when causal; 3x for
        ``fwd_bwd`` (the backward pass's four matmuls)."""
        t = self.length
        pairs = t * (t + 1) / 2 if causal else t * t
        forward = 4 * self.batch * self.heads * pairs * self.head_dim
        return float(forward * (3 if mode == "fwd_bwd" else 1))

    def grid_bytes(self, itemsize: int = 4) -> int:
        """Bytes of one ``[B, N, T, S]`` grid of ``itemsize``-byte numbers."""
        return self.batch * self.heads * self.length**2 * itemsize


CASES = {
    "b4_t1024": Case(4, 1024, 8, 8, 64),
    "b1_t4096": Case(1, 4096, 8, 8, 64),
    "gqa_b4_t1024": Case(4, 1024, 8, 2, 64),
    "long_b1_t32768": Case(1, 32768, 8, 8, 64, causal_only=True, grid_free_only=True),
    "tiny": Case(2, 16, 4, 2, 8),  # for tests
}
DEFAULT_CASES = ("b4_t1024", "b1_t4096", "gqa_b4_t1024", "long_b1_t32768")


def default_implementations(platform: str | None = None) -> list[str]:
    """Every registered attnjax implementation that runs on ``platform`` (default: JAX's
    default backend), in registry order, then ``auto``."""
    platform = platform or jax.default_backend()
    platform = {"gpu": "cuda"}.get(platform, platform)
    runs = [name for name, b in REGISTRY.items() if b.platforms is None or platform in b.platforms]
    return [*runs, AUTO]


def jax_attention(name: str, causal: bool) -> Callable:
    """``(q [B, T, N, H], k [B, S, K, H], v [B, S, K, H]) -> [B, T, N, H]`` for a JAX row:
    ``attnjax[<implementation or auto>]``, ``jax.nn`` or ``flax.nnx``."""
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
    return lambda q, k, v: dot_product_attention(
        q, k, v, is_causal=causal, implementation=implementation
    )


def case_inputs(case: Case, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Seeded normal q [B, T, N, H], k and v [B, T, K, H] in ``dtype`` (drawn by NumPy, so
    nothing compiles)."""
    rng = np.random.default_rng(0)
    heads = (case.heads, case.kv_heads, case.kv_heads)
    shapes = [(case.batch, case.length, n, case.head_dim) for n in heads]
    return tuple(jnp.asarray(rng.standard_normal(s, np.float32), dtype) for s in shapes)


def prepare_jax_row(name, qkv, mode, causal, programs: dict, max_memory_gib=None):
    """Lower and compile one JAX row ahead of time and check its memory.

    ``programs`` maps each program already prepared in this group to its row's name: a row
    whose lowered program is identical (``auto`` picking ``blocked``, ``jax.nn`` and
    ``attnjax[xla]`` without a mask) is timed once and marked ``same_program_as``.
    """
    attention = jax_attention(name, causal)
    fn = timing.fwd_bwd(attention) if mode == "fwd_bwd" else jax.jit(attention)
    try:
        lowered = fn.lower(*qkv)
    except ValueError as error:  # attnjax names what this implementation cannot do
        return timing.Prepared({"skipped": str(error)})
    program = hashlib.sha256(lowered.as_text().encode()).hexdigest()
    if program in programs:
        return timing.Prepared({"same_program_as": programs[program]})
    programs[program] = name
    compiled, compile_s = timing.compile_seconds(lowered)
    peak = memory.compiled_peak_bytes(compiled)
    limit = memory.memory_limit_bytes(max_memory_gib)
    if peak is not None and limit is not None and peak > limit:
        skipped = f"compiled peak {memory.gib(peak)} > memory limit {memory.gib(limit)}"
        return timing.Prepared({"skipped": skipped, "peak_bytes": peak})
    fields = {"peak_bytes": peak, "memory": "xla", "compile_seconds": compile_s}
    call = lambda: jax.block_until_ready(compiled(*qkv))
    return timing.Prepared(fields, timing.Contender(name, call))


def _row_names(implementations: Sequence[str], peer_names: Sequence[str]) -> list[str]:
    return [f"attnjax[{impl}]" for impl in implementations] + [
        p for p in peer_names if p != "torch.sdpa"
    ]


def attention_group(case_name, mode, causal, names, with_torch, dtype, repeats, budget_s,
                    max_memory_gib=None) -> list[dict]:  # fmt: skip
    """The rows of one case × mode × masking: every contender prepared, then all timed
    interleaved (:func:`attnjax.bench.timing.time_prepared`)."""
    case = CASES[case_name]
    qkv = case_inputs(case, dtype)
    prepared, programs = [], {}
    for name in names:
        impl = name.removeprefix("attnjax[").removesuffix("]")
        if case.grid_free_only and impl not in GRID_FREE:
            grid = memory.gib(case.grid_bytes(jnp.dtype(dtype).itemsize))
            row = timing.Prepared({"skipped": f"builds the [B, N, T, S] grid ({grid} per call)"})
        else:
            row = prepare_jax_row(name, qkv, mode, causal, programs, max_memory_gib)
        prepared.append(dataclasses.replace(row, fields={"framework": "jax", **row.fields}))
    if with_torch:
        row = peers.prepare_sdpa_row(case, qkv, mode, causal)
        prepared.append(dataclasses.replace(row, fields={"framework": "torch", **row.fields}))
    results = timing.time_prepared(prepared, repeats, budget_s)
    rows = {}
    for name, result in zip([*names, "torch.sdpa"], results):
        same = result.get("same_program_as")
        if same:  # the row timed for that program (or skipped by the memory check)
            result = {**rows[same], "same_program_as": same}
        rows[name] = {**result, "implementation": name}
    return [{"implementation": name, **row} for name, row in rows.items()]


def attention_rows(case_names, modes, causals, implementations, peer_names, dtype, repeats,
                   budget_s, matmul, max_memory_gib=None) -> list[dict]:  # fmt: skip
    """Every row of the attention suite (one dict per case × mode × masking × contender),
    printed group by group.

    Args:
      case_names: keys of :data:`CASES`; modes: of :data:`MODES`; causals: booleans.
      implementations: attnjax implementations (registry names or ``"auto"``).
      peer_names: of :data:`PEERS` (torch's only when torch imports and JAX is on the CPU).
      dtype: input dtype; repeats, budget_s: at most ``repeats`` timed calls and about
        ``budget_s`` seconds of them per row; matmul: the GFLOP/s ``percent_of_matmul`` is
        relative to; max_memory_gib: skip JAX rows whose compiled peak is larger.
    """
    rows = []
    names = _row_names(implementations, peer_names)
    with_torch = "torch.sdpa" in peer_names and peers.torch_available()
    for case_name, mode, causal in itertools.product(case_names, modes, causals):
        case = CASES[case_name]
        if case.causal_only and not causal:
            continue
        group = dict(case=case_name, **dataclasses.asdict(case), mode=mode, causal=causal)
        group.update(dtype=jnp.dtype(dtype).name, flops=case.flops(mode, causal))
        del group["causal_only"], group["grid_free_only"]
        results = attention_group(
            case_name, mode, causal, names, with_torch, dtype, repeats, budget_s, max_memory_gib
        )
        rows.extend(with_rates(group, results, matmul))
        report.print_attention_group(rows[-len(results) :], case)
    return rows


def with_rates(group: dict, results: list[dict], matmul: float) -> list[dict]:
    """Full rows: ``group``'s fields, every result field (None where not measured), GFLOP/s,
    ``percent_of_matmul`` and ``ratios`` (this row's seconds / each timed peer's)."""
    timed_peers = {
        r["implementation"]: r["seconds"]
        for r in results
        if r["implementation"] in PEERS and r.get("seconds") is not None
    }
    rows = []
    for result in results:
        row = {**group, "seconds": None, "samples": 0, "warmup_sample": False, "gflops": None,
               "percent_of_matmul": None, "peak_bytes": None, "memory": None, "skipped": None,
               "same_program_as": None, "ratios": {}, **result}  # fmt: skip
        if row["seconds"] is not None:
            row["gflops"] = group["flops"] / row["seconds"] / 1e9
            row["percent_of_matmul"] = 100 * row["gflops"] / matmul
            row["ratios"] = {
                p: row["seconds"] / s for p, s in timed_peers.items() if p != row["implementation"]
            }
        rows.append(row)
    return rows
