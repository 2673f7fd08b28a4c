"""What the two blocked kernels share: tile scores, the softmax's last step, the backward's
start and end.

Masked scores are the finite ``MASKED`` (float32's lowest), never ``-inf``, so masked calls
run under ``jax.debug_infs(True)``; a row with no allowed key is found from the mask (its sum
of probabilities is 0) and gets output 0 and ``lse = -inf``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from attnjax.functional.attention import grouped
from attnjax.functional.masking import Masking, Span, rectangle

F32 = jnp.float32
MASKED = float(jnp.finfo(F32).min)


def where(allowed, values, fill):
    return values if allowed is None else jnp.where(allowed, values, fill)


def tile_scores(masking: Masking, scale: float, num_kv_heads: int, q_tile, k_tile, rows, cols):
    """Scaled, biased scores of a tile, f32 ``[B, K, G, t, s]``, with masked entries set to
    ``MASKED``; and the allowed pairs (``[b, K|1, G|1, t, s]`` bool, or None: all)."""
    scores = jnp.einsum("BKGTH,BKSH->BKGTS", q_tile, k_tile, preferred_element_type=F32)
    if scale != 1.0:
        scores = scores * scale
    if masking.bias is not None:
        bias = grouped(rectangle(masking.bias, rows, cols), num_kv_heads)
        scores = scores + bias.astype(F32)
    allowed = grouped(masking.allowed(rows, cols), num_kv_heads)
    return where(allowed, scores, MASKED), allowed


def normalized(moved, row_max, row_sum, seen=None):
    """``(out, lse)`` from a row's weighted value sum, score maximum and probability sum;
    ``seen`` (default ``row_sum > 0``): whether the row has an allowed key; rows that have
    none get output 0 and ``lse = -inf``."""
    # Given ``seen``, masked probabilities were not zeroed: an unseen row (max ``MASKED``)
    # moved values weighted by exp(MASKED - MASKED) = 1, so its output is zeroed here.
    zero_unseen = seen is not None
    seen = row_sum > 0 if seen is None else seen
    safe_sum = jnp.where(seen, row_sum, 1.0)
    out = moved / safe_sum[..., None]
    if zero_unseen:
        out = jnp.where(seen[..., None], out, 0.0)
    return out, jnp.where(seen, row_max + jnp.log(safe_sum), -jnp.inf)


def backward_inputs(residuals, cotangents):
    """What both backward passes start from: ``(q, k, v, masking, d_out, delta, lse)``, the
    arrays in float32 (XLA:CPU has no bfloat16 dot with a float32 result for every layout).

    d(score) = p · (d_p - delta), with delta = rowsum(d_out · out) - d_lse. A row with no
    allowed key has lse = -inf; 0 there keeps every recomputed p (of ``MASKED`` scores) zero.
    """
    q, k, v, masking, out, lse = residuals
    d_out, d_lse = cotangents
    q, k, v, d_out = (x.astype(F32) for x in (q, k, v, d_out))
    delta = jnp.einsum("BKGTR,BKGTR->BKGT", d_out, out.astype(F32)) - d_lse
    return q, k, v, masking, d_out, delta, jnp.where(lse == -jnp.inf, 0.0, lse)


def zero_bias_gradient(masking: Masking):
    return None if masking.bias is None else jnp.zeros(masking.bias.shape, F32)


def add_window(total, values, q_start, k_start):
    """Add ``[B, K, G, rows, cols]`` values into a 4-D bias gradient ``[b, n, t, s]`` (axes full
    or 1) at rows ``q_start``, columns ``k_start``; broadcast axes get the sum."""
    values = values.reshape((values.shape[0], -1) + values.shape[3:])
    sum_axes = tuple(a for a in range(4) if total.shape[a] == 1 and values.shape[a] > 1)
    values = values.sum(axis=sum_axes, keepdims=True)
    start = (0, 0, q_start if total.shape[2] > 1 else 0, k_start if total.shape[3] > 1 else 0)
    current = lax.dynamic_slice(total, start, values.shape)
    return lax.dynamic_update_slice(total, current + values, start)


def gradients(residuals, d_q, d_k, d_v, d_bias):
    """The custom_vjp's cotangents for ``(q, k, v, masking)``: only the bias has one."""
    q, k, v, masking = residuals[:4]
    d_masking = jax.tree.map(lambda _: None, masking)
    if d_bias is not None:
        d_masking = dataclasses.replace(d_masking, bias=d_bias.astype(masking.bias.dtype))
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), d_masking


__all__ = [
    "MASKED",
    "Span",
    "add_window",
    "backward_inputs",
    "gradients",
    "normalized",
    "tile_scores",
    "where",
    "zero_bias_gradient",
]
