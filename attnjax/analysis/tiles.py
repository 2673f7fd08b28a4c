"""Patterns from the fast path: any head's pattern tile, recomputed from the log-sum-exp.

``dot_product_attention(..., implementation="blocked", return_lse=True)`` never builds the
``[T, S]`` pattern, but it returns each row's log-sum-exp ``lse [B, N, T]``. With it, one
head's pattern on any rectangle of queries × keys is exact and cheap to recompute:

    pattern[t, s] = exp(scale · q_t · k_s + bias[t, s] - lse[t])   where (t, s) is allowed

so patterns of long sequences can be inspected a tile at a time.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from attnjax.functional import Masking
from attnjax.functional._checks import as_int
from attnjax.functional._types import ArrayT
from attnjax.functional.masking import rectangle

__all__ = ["pattern_tile"]


def pattern_tile(
    query: Float[ArrayT, "B T N H"],
    key: Float[ArrayT, "B S K H"],
    lse: Float[ArrayT, "B N T"],
    *,
    batch: int = 0,
    head: int = 0,
    queries: slice = slice(None),
    keys: slice = slice(None),
    scale: float | None = None,
    masking: Masking | None = None,
) -> Float[ArrayT, "t s"]:
    """Head ``head`` of example ``batch``: its pattern on ``query[queries]`` × ``key[keys]``.

    Pass the ``scale`` and masking of the attention call that gave ``lse``, e.g.
    ``Masking(is_causal=True)``, or ``Masking.make([B, N, T, S], mask=..., bias=...,
    query_seq_lengths=...)`` with the call's keywords. Returns float32
    ``[len(queries), len(keys)]``; entries the masking hides are 0, and rows sum to 1 when
    ``keys`` covers every key.
    """
    if query.ndim != 4 or key.ndim != 4 or lse.ndim != 3:
        raise ValueError(
            "query [B, T, N, H], key [B, S, K, H] and lse [B, N, T] expected, got "
            f"{query.shape}, {key.shape}, {lse.shape}"
        )
    num_batch, q_len, num_heads, width = query.shape
    if lse.shape != (num_batch, num_heads, q_len):
        raise ValueError(
            f"lse must have shape [B, N, T] = {[num_batch, num_heads, q_len]}, got {lse.shape}"
        )
    batch, head = as_int("batch", batch, minimum=0), as_int("head", head, minimum=0)
    if batch >= num_batch or head >= num_heads:
        raise ValueError(
            f"batch={batch}, head={head} out of range for B={num_batch}, N={num_heads}"
        )
    masking = Masking() if masking is None else masking
    kv_head = head // (num_heads // key.shape[2])
    q_pos = np.arange(q_len)[queries]
    k_pos = np.arange(key.shape[1])[keys]
    scale = 1.0 / math.sqrt(width) if scale is None else scale
    q = query[batch, q_pos, head].astype(jnp.float32)
    k = key[batch, k_pos, kv_head].astype(jnp.float32)
    scores = (q @ k.T) * scale
    if masking.bias is not None:
        scores = scores + _one_head(rectangle(masking.bias, q_pos, k_pos), batch, head)
    allowed = masking.allowed(q_pos, k_pos)
    allowed = True if allowed is None else _one_head(allowed, batch, head)
    row_lse = lse[batch, head, q_pos].astype(jnp.float32)[:, None]
    keep = allowed & (row_lse > -jnp.inf)
    return jnp.where(keep, jnp.exp(jnp.where(keep, scores - row_lse, 0.0)), 0.0)


def _one_head(x, batch: int, head: int):
    """``[b, n, t, s]`` (b, n full or 1) → ``[t, s]`` of one example and head."""
    return x[batch if x.shape[0] > 1 else 0, head if x.shape[1] > 1 else 0]
