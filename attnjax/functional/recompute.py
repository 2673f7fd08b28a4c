"""The full pattern of an attention call, recomputed from the log-sum-exp it saved.

Fast paths (blocked, cuDNN, Pallas) never build the ``[T, S]`` pattern, but they return each
row's log-sum-exp. With it the pattern is exact: ``pattern = exp(scores - lse)`` where allowed.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jaxtyping import Float

from attnjax.functional._types import ArrayT
from attnjax.functional.masking import Masking

__all__ = ["pattern_from_lse"]


def pattern_from_lse(
    query: Float[ArrayT, "B T N H"],
    key: Float[ArrayT, "B S K H"],
    lse: Float[ArrayT, "B N T"],
    *,
    bias=None,
    mask=None,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[Float[ArrayT, "B N T S"], Float[ArrayT, "B N T S"]]:
    """``(scores, pattern)`` [B, N, T, S] (float32) of the call that returned ``lse``.

    ``scores`` are ``scale · q · kᵀ + bias`` with ``-inf`` where the masking hides a key;
    ``pattern = exp(scores - lse)`` (0 where hidden, and for rows with no allowed key). Pass
    the call's own ``bias``, ``mask``, ``is_causal`` and ``scale`` (default ``1/sqrt(H)``).
    """
    batch, q_len, num_heads, width = query.shape
    k_len, num_kv = key.shape[1], key.shape[2]
    masking = Masking.make(
        (batch, num_heads, q_len, k_len), bias=bias, mask=mask, is_causal=is_causal
    )
    scale = 1.0 / math.sqrt(width) if scale is None else scale
    keys = jnp.repeat(key, num_heads // num_kv, axis=2).astype(jnp.float32)
    scores = jnp.einsum("BTNH,BSNH->BNTS", query.astype(jnp.float32), keys) * scale
    if masking.bias is not None:
        scores = scores + masking.bias.astype(jnp.float32)
    allowed = masking.full_mask(q_len, k_len)
    if allowed is not None:
        scores = jnp.where(allowed, scores, -jnp.inf)
    keep = (scores > -jnp.inf) & (lse[..., None] > -jnp.inf)
    pattern = jnp.where(keep, jnp.exp(jnp.where(keep, scores - lse[..., None], 0.0)), 0.0)
    return scores, pattern
