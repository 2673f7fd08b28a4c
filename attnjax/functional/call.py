"""One attention call, described once: what every backend is given and checks.

Shape letters: B batch, T queries, S keys, N query heads, K key/value heads, G = N/K,
H query/key width, R value width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from attnjax.functional._checks import as_int, as_rate, check_kv_heads
from attnjax.functional.masking import Masking

__all__ = ["Call", "Result"]


@dataclasses.dataclass(frozen=True)
class Call:
    """A checked attention call (a pytree: arrays are leaves, the rest is static).

    query ``[B, T, N, H]``, key ``[B, S, K, H]``, value ``[B, S, K, R]``; ``scale`` a Python
    float (a traced scale has already been applied to the queries, with ``scale = 1``).
    """

    query: Any
    key: Any
    value: Any
    masking: Masking
    scale: float
    return_pattern: bool = False
    return_lse: bool = False
    dropout_rate: float = 0.0
    dropout_rng: Any = None
    block_sizes: tuple[int, int] | None = None

    @property
    def batch(self) -> int:
        return self.query.shape[0]

    @property
    def q_len(self) -> int:
        return self.query.shape[1]

    @property
    def k_len(self) -> int:
        return self.key.shape[1]

    @property
    def num_heads(self) -> int:
        return self.query.shape[2]

    @property
    def num_kv_heads(self) -> int:
        return self.key.shape[2]

    @property
    def grid_shape(self) -> tuple[int, int, int, int]:
        """``[B, N, T, S]``: the shape of the full mask, bias and pattern."""
        return (self.batch, self.num_heads, self.q_len, self.k_len)

    def replace(self, **changes) -> Call:
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    Call,
    data_fields=["query", "key", "value", "masking", "dropout_rng"],
    meta_fields=["scale", "return_pattern", "return_lse", "dropout_rate", "block_sizes"],
)


class Result(NamedTuple):
    """What a backend returns: ``out [B, T, N, R]`` in the value dtype; ``pattern
    [B, N, T, S]`` and ``lse [B, N, T]`` (float32) when the call asked and the backend gives
    them, else None."""

    out: Any
    pattern: Any = None
    lse: Any = None


def make_call(
    query,
    key,
    value,
    *,
    masking_keywords: dict,
    scale,
    return_pattern: bool,
    return_lse: bool,
    dropout_rate: float,
    dropout_rng,
    block_sizes,
) -> tuple[Call, bool]:
    """Check the arguments of ``dot_product_attention`` and describe the call.

    Returns ``(call, unbatched)``; 3-D inputs get a batch axis of 1.
    """
    unbatched = jnp.ndim(query) == 3
    query, key, value = (_batched(x, name) for x, name in _named(query, key, value))
    _check_shapes(query, key, value)
    dropout_rate = as_rate("dropout_rate", dropout_rate)
    if dropout_rate > 0 and dropout_rng is None:
        raise ValueError("dropout_rate > 0 needs dropout_rng (a jax.random key)")
    shape = (query.shape[0], query.shape[2], query.shape[1], key.shape[1])
    masking = Masking.make(shape, **masking_keywords)
    query, scale = _static_scale(query, scale)
    call = Call(
        query=query,
        key=key,
        value=value,
        masking=masking,
        scale=scale,
        return_pattern=bool(return_pattern),
        return_lse=bool(return_lse),
        dropout_rate=float(dropout_rate),
        dropout_rng=dropout_rng if dropout_rate > 0 else None,
        block_sizes=_block_sizes(block_sizes),
    )
    return call, unbatched


def _static_scale(query, scale) -> tuple[Any, float]:
    """``(query, scale)`` with ``scale`` a Python float. A traced scale (a learned temperature)
    multiplies the queries instead (in float32, then back to their dtype), so every backend
    sees a static scale of 1 and JAX differentiates through the product."""
    if scale is None:
        return query, 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] else 1.0
    try:
        return query, float(scale)
    except (TypeError, jax.errors.ConcretizationTypeError):
        scale = jnp.asarray(scale)
        if scale.ndim:
            raise ValueError(f"scale must be a scalar, got shape {scale.shape}") from None
        scaled = query.astype(jnp.float32) * scale.astype(jnp.float32)
        return scaled.astype(query.dtype), 1.0


def _block_sizes(block_sizes):
    if block_sizes is None:
        return None
    if not isinstance(block_sizes, tuple | list) or len(block_sizes) != 2:
        raise ValueError(f"block_sizes must be a (block_q, block_k) pair, got {block_sizes!r}")
    return tuple(as_int(name, b, minimum=1) for name, b in zip(("block_q", "block_k"), block_sizes))


def _named(query, key, value):
    return ((query, "query"), (key, "key"), (value, "value"))


def _batched(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"{name} must have shape [B, T/S, heads, width] (or 3-D), got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x[None] if x.ndim == 3 else x


def _check_shapes(query, key, value) -> None:
    batch, _, num_heads, width = query.shape
    if key.shape[0] != batch or value.shape[0] != batch:
        raise ValueError(
            f"batch sizes differ: query {query.shape}, key {key.shape}, value {value.shape}"
        )
    if key.shape[-1] != width:
        raise ValueError(
            f"query and key head widths differ: query {query.shape} has H={width}, "
            f"key {key.shape} has H={key.shape[-1]}"
        )
    if key.shape[1:3] != value.shape[1:3]:
        raise ValueError(
            "key and value must agree on length S and heads K: "
            f"key {key.shape}, value {value.shape}"
        )
    check_kv_heads(
        key.shape[2], num_heads, key=f" (key {key.shape})", query=f" (query {query.shape})"
    )
