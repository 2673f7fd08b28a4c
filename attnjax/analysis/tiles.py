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

from attnjax.functional import masks as masks_lib
from attnjax.functional._checks import as_int
from attnjax.functional._types import ArrayT

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
    bias=None,
    mask=None,
    is_causal: bool = False,
    local_window_size: masks_lib.Window | None = None,
    query_seq_lengths=None,
    key_value_seq_lengths=None,
    query_segment_ids=None,
    key_segment_ids=None,
) -> Float[ArrayT, "t s"]:
    """Head ``head`` of example ``batch``: its pattern on ``query[queries]`` × ``key[keys]``.

    Pass the masking arguments (and ``scale``, ``bias``) of the attention call that gave
    ``lse``; ``bias`` and ``mask`` broadcast to ``[B, N, T, S]``. Returns float32
    ``[len(queries), len(keys)]``; entries a mask hides are 0, and rows sum to 1 when ``keys``
    covers every key.
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
    kv_head = head // (num_heads // key.shape[2])
    q_pos = np.arange(q_len)[queries]
    k_pos = np.arange(key.shape[1])[keys]
    scale = 1.0 / math.sqrt(width) if scale is None else scale
    q = query[batch, q_pos, head].astype(jnp.float32)
    k = key[batch, k_pos, kv_head].astype(jnp.float32)
    scores = (q @ k.T) * scale
    if bias is not None:
        scores = scores + _tile(bias, batch, head, q_pos, k_pos).astype(jnp.float32)
    allowed = _allowed(
        q_pos,
        k_pos,
        batch,
        head,
        mask,
        bias,
        is_causal,
        local_window_size,
        query_seq_lengths,
        key_value_seq_lengths,
        query_segment_ids,
        key_segment_ids,
    )
    row_lse = lse[batch, head, q_pos].astype(jnp.float32)[:, None]
    return jnp.where(allowed & (row_lse > -jnp.inf), jnp.exp(scores - row_lse), 0.0)


def _tile(x, batch, head, q_pos, k_pos):
    """[b, n, t, s] (any axis 1 for broadcasting, fewer dims allowed) → the tile [t, s]."""
    x = jnp.asarray(x)
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    x = x[0 if x.shape[0] == 1 else batch, 0 if x.shape[1] == 1 else head]
    x = x if x.shape[0] == 1 else x[q_pos]
    x = x if x.shape[1] == 1 else x[:, k_pos]
    return jnp.broadcast_to(x, (len(q_pos), len(k_pos)))


def _allowed(
    q_pos, k_pos, batch, head, mask, bias, is_causal, window, q_lengths, kv_lengths, q_ids, kv_ids
):
    t, s = q_pos[:, None], k_pos[None, :]
    allowed = jnp.ones((len(q_pos), len(k_pos)), bool)
    if is_causal:
        allowed &= s <= t
    if window is not None:
        left, right = masks_lib.normalize_window(window)
        allowed &= (s >= t - left) & (s <= t + right)
    if q_lengths is not None:
        allowed &= t < jnp.asarray(q_lengths)[batch]
    if kv_lengths is not None:
        allowed &= s < jnp.asarray(kv_lengths)[batch]
    if q_ids is not None:
        kv_ids = q_ids if kv_ids is None else kv_ids
        allowed &= (
            jnp.asarray(q_ids)[batch][q_pos][:, None] == jnp.asarray(kv_ids)[batch][k_pos][None]
        )
    if mask is not None:
        allowed &= _tile(mask, batch, head, q_pos, k_pos)
    if bias is not None:
        allowed &= _tile(bias, batch, head, q_pos, k_pos) > -jnp.inf
    return allowed
