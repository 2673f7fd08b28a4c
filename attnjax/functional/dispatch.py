"""``dot_product_attention``: check the call, choose an implementation, run it.

The choice follows the platform the program is lowered for, not the process's default
backend: with ``implementation=None`` the candidates of each platform (Pallas on TPU, cuDNN on
NVIDIA GPUs, the blocked kernel elsewhere) go into one ``jax.lax.platform_dependent``, so the
same jitted function picks the Pallas kernel when compiled for a TPU topology and the blocked
one on CPU. Backends that XLA cannot partition run per shard under a mesh (``sharded.py``).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jaxtyping import Float, Int, Shaped

from attnjax.functional import sharded
from attnjax.functional._checks import check_choice
from attnjax.functional._types import ArrayT, Scalar
from attnjax.functional.backends import REGISTRY, Backend
from attnjax.functional.call import Call, Result, make_call
from attnjax.functional.masking import Masking, Window

__all__ = ["choose_implementation", "dot_product_attention"]

_log = logging.getLogger("attnjax")
# Lowering platforms with a backend of their own; every other platform gets the default.
_PLATFORMS = ("tpu", "cuda")


def dot_product_attention(
    # query [B,T,N,H], key [B,S,K,H], value [B,S,K,R]: shapes are checked in the body, with
    # errors that name the argument, so the annotations only check the dtype kind.
    query: Float[ArrayT, ...],
    key: Float[ArrayT, ...],
    value: Float[ArrayT, ...],
    bias: Shaped[ArrayT, ...] | None = None,
    mask: Shaped[ArrayT, ...] | None = None,
    *,
    scale: Scalar | None = None,
    is_causal: bool = False,
    query_seq_lengths: Int[ArrayT, " B"] | None = None,
    key_value_seq_lengths: Int[ArrayT, " B"] | None = None,
    local_window_size: Window | None = None,
    query_segment_ids: Int[ArrayT, "B T"] | None = None,
    key_segment_ids: Int[ArrayT, "B S"] | None = None,
    implementation: str | None = None,
    return_pattern: bool = False,
    return_lse: bool = False,
    return_residual: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    block_sizes: tuple[int, int] | None = None,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
):
    """Multi-head scaled dot-product attention; a drop-in for ``jax.nn.dot_product_attention``.

    Args:
      query: ``[B, T, N, H]`` (or ``[T, N, H]``).
      key: ``[B, S, K, H]``; K key/value heads, K must divide N (K < N is grouped-query
        attention, K = 1 multi-query attention).
      value: ``[B, S, K, R]``; the value width R may differ from H.
      bias: added to the scores, broadcastable to ``[B, N, T, S]``. ``-inf`` entries mask.
      mask: boolean, True = may attend, broadcastable to ``[B, N, T, S]``.
      scale: multiplies the scores; default ``1/sqrt(H)``. May be traced (a learned
        temperature): it then multiplies the queries, and its gradient flows.
      is_causal: query ``i`` sees keys ``j <= i`` (top-left aligned, as ``jax.nn``).
      query_seq_lengths, key_value_seq_lengths: ``[B]`` int lengths; positions past them are
        padding.
      local_window_size: ``(left, right)`` or an int: query ``i`` sees keys in
        ``[i - left, i + right]``.
      query_segment_ids, key_segment_ids: ``[B, T]`` and ``[B, S]`` ints for packed sequences:
        a query sees only keys with the same id (``key_segment_ids`` defaults to
        ``query_segment_ids`` when T = S).
      implementation: one of ``IMPLEMENTATIONS``: ``"vmap"`` (the reference: the single-head
        function vmapped over heads and batch), ``"einsum"``, ``"blocked"`` (flash-style, O(T)
        memory, its own backward; no pattern, no dropout), ``"xla"`` or ``"cudnn"`` (through
        ``jax.nn.dot_product_attention``; R == H, one dtype for q, k, v), ``"pallas_tpu"``
        (the Pallas TPU flash kernel). ``None`` (default): per lowering platform, cuDNN on
        NVIDIA GPUs and Pallas on TPU where they support the call, else ``"blocked"``; a
        returned pattern or dropout takes ``"einsum"`` (see :func:`choose_implementation`).
        An implementation that cannot run the call raises ``ValueError`` saying why.
      return_pattern: also return the pattern ``[B, N, T, S]`` (float32, before dropout).
      return_lse: also return the log-sum-exp ``[B, N, T]`` (float32, differentiable) of each
        row's scaled, biased scores over its allowed keys (``-inf`` for a row with none), from
        which any tile of the pattern can be recomputed (``attnjax.analysis.pattern_tile``).
      return_residual: also return ``jax.nn``'s residual: the same log-sum-exp as
        ``[B, T, N]`` in the key dtype, under ``stop_gradient``.
      dropout_rate, dropout_rng: dropout on the pattern (``"vmap"``, ``"einsum"``).
      block_sizes: ``(block_q, block_k)`` for ``"blocked"``.
      mesh: shard kernels XLA cannot partition over this mesh (default: the mesh set with
        ``jax.set_mesh``, or the query's); batch over its ``data``/``fsdp`` axes, heads over
        ``model``.

    Returns:
      ``[B, T, N, R]`` (batch axis dropped for 3-D inputs), in the value dtype; with any of
      ``return_pattern``, ``return_lse``, ``return_residual`` a tuple ``(out, *extras)`` in
      that order.

    A query row whose keys are all masked outputs zeros (finite, zero gradients). Zero-size
    inputs (B, T or S = 0) give zero-size or zero outputs.
    """
    call, unbatched = make_call(
        query,
        key,
        value,
        masking_keywords=dict(
            bias=bias,
            mask=mask,
            is_causal=is_causal,
            local_window_size=local_window_size,
            query_seq_lengths=query_seq_lengths,
            key_value_seq_lengths=key_value_seq_lengths,
            query_segment_ids=query_segment_ids,
            key_segment_ids=key_segment_ids,
        ),
        scale=scale,
        return_pattern=return_pattern,
        return_lse=return_lse or return_residual,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
        block_sizes=block_sizes,
    )
    result = _run(call, implementation, mesh)
    extras = [result.pattern] if return_pattern else []
    extras += [result.lse] if return_lse else []
    if return_residual:
        residual = jnp.swapaxes(jax.lax.stop_gradient(result.lse), 1, 2)
        extras.append(residual.astype(call.key.dtype))
    outputs = [result.out, *extras]
    if unbatched:
        outputs = [x[0] for x in outputs]
    return tuple(outputs) if extras else outputs[0]


def choose_implementation(
    query,
    key,
    value,
    *,
    masking: Masking | None = None,
    return_pattern: bool = False,
    return_lse: bool = False,
    dropout_rate: float = 0.0,
    platform: str | None = None,
) -> str:
    """The implementation ``dot_product_attention(implementation=None)`` runs for this call
    when lowered for ``platform`` (``"cpu"``, ``"cuda"`` (or ``"gpu"``), ``"tpu"``; default:
    the process's default backend).

    - A returned pattern or dropout needs the grid: ``"einsum"``.
    - NVIDIA GPU: ``"cudnn"`` where it supports the call (float16/bfloat16, H a multiple of 8,
      cuDNN present, ...) and T, S are even (its gradient needs it), else ``"blocked"``.
    - TPU: ``"pallas_tpu"`` where it supports the call, else ``"blocked"``.
    - Otherwise (CPU): ``"blocked"``, which measured faster than the alternatives there
      (``attnjax.bench``) and never needs O(T²) memory.
    """
    masking = Masking() if masking is None else masking
    call = Call(
        jnp.asarray(query), jnp.asarray(key), jnp.asarray(value), masking, 1.0,
        return_pattern=return_pattern, return_lse=return_lse, dropout_rate=dropout_rate,
    )  # fmt: skip
    platform = platform or jax.default_backend()
    platform = {"gpu": "cuda"}.get(platform, platform)
    return _candidates(call).get(platform, _candidates(call)["default"]).name


def _candidates(call: Call) -> dict[str, Backend]:
    """The automatic choice per lowering platform (``"default"``: every other one)."""
    if call.return_pattern or call.dropout_rate > 0:
        return {"default": REGISTRY["einsum"]}
    blocked = REGISTRY["blocked"]
    choices = {"default": blocked}
    for backend in REGISTRY.values():
        for platform in backend.platforms or ():
            runs = not backend.why_unsupported(call) and not backend.not_automatic(call)
            if platform not in choices and runs:
                choices[platform] = backend
    return choices


def _run(call: Call, implementation: str | None, mesh) -> Result:
    if 0 in call.query.shape[:3] or 0 in call.key.shape[:2]:
        return _empty(call)
    if implementation is not None:
        return _run_backend(_checked(implementation, call), call, mesh)
    choices = _candidates(call)
    _log_choice(choices)
    if len(set(b.name for b in choices.values())) == 1:
        return _run_backend(_checked(choices["default"].name, call), call, mesh)
    branches = {p: functools.partial(_run_backend, b, mesh=mesh) for p, b in choices.items()}
    default = branches.pop("default")
    return jax.lax.platform_dependent(call, default=default, **branches)


def _run_backend(backend: Backend, call: Call, mesh=None) -> Result:
    mesh = sharded.context_mesh(call, mesh) if backend.per_shard else None
    run = _jitted(backend.name)
    result = run(call) if mesh is None else sharded.run_per_shard(run, call, mesh)
    # Only what the call asked for: the branches of ``lax.platform_dependent`` (and their
    # derivatives) must have one structure, and backends give more or less than asked.
    return Result(
        result.out,
        result.pattern if call.return_pattern else None,
        result.lse if call.return_lse else None,
    )


@functools.cache
def _jitted(name: str):
    return jax.jit(REGISTRY[name].run)


def _checked(implementation: str, call: Call) -> Backend:
    check_choice("implementation", implementation, tuple(REGISTRY))
    backend = REGISTRY[implementation]
    unsupported = backend.why_unsupported(call)
    if unsupported:
        raise ValueError(
            f"implementation={implementation!r} does not support this call: {unsupported}; "
            f"use implementation={backend.instead}"
        )
    return backend


_logged: set[tuple[tuple[str, str], ...]] = set()


def _log_choice(choices: dict[str, Backend]) -> None:
    """Log the automatic choice once per distinct choice of platforms and implementations."""
    named = tuple(sorted((p, b.name) for p, b in choices.items()))
    if named in _logged:
        return
    _logged.add(named)
    default = choices["default"].name
    others = [f"{b.name!r} on {p}" for p, b in choices.items() if p != "default"]
    where = (
        f"{', '.join(others)}, {default!r} elsewhere"
        if others
        else f"{default!r} on every platform"
    )
    _log.info("attnjax.dot_product_attention: implementation=None runs %s", where)


def _empty(call: Call) -> Result:
    """Zero-size calls: outputs of zero size, or zeros (no key to see) with lse -inf."""
    batch, q_len, num_heads = call.query.shape[:3]
    out = jnp.zeros((batch, q_len, num_heads, call.value.shape[-1]), call.value.dtype)
    pattern = jnp.zeros(call.grid_shape, jnp.float32) if call.return_pattern else None
    lse = jnp.full(call.grid_shape[:3], -jnp.inf) if call.return_lse else None
    return Result(out, pattern, lse)
