"""Scaled dot-product attention, written the way it is explained.

For one example and one head:

    scores  = q · kᵀ · scale                      [T, S]   (the grid)
    pattern = softmax over keys (masked, + bias)  [T, S]   (float32)
    out     = pattern · v                         [T, R]

:func:`vmap_attention` (``implementation="vmap"``, the reference) lifts this with
``jax.vmap`` over the G query heads that share a key/value head, then over the K key/value
heads, then over the batch. Every other implementation (``attnjax/functional/backends/``) is
tested to agree with it. ``attnjax.dot_product_attention`` (``dispatch.py``) checks a call,
chooses an implementation and runs it.

Shape letters: B batch, T queries, S keys, N query heads, K key/value heads, G = N/K,
H query/key width, R value width.

**Fully masked rows.** A query whose keys are all masked (by ``mask``, padding, a window, or a
``-inf`` bias) gets a zero pattern row and a zero output, with zero (finite) gradients, in every
implementation. It is never NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Bool, Float

from attnjax.functional._types import ArrayT, Scalar
from attnjax.functional.call import Call, Result

__all__ = [
    "attend",
    "attention_pattern",
    "attention_scores",
    "masked_logsumexp",
    "masked_softmax",
    "single_head_attention",
    "vmap_attention",
]


# --------------------------------------------------------------------------------------------
# One example, one head.
# --------------------------------------------------------------------------------------------


def attention_scores(
    q: Float[ArrayT, "T H"], k: Float[ArrayT, "S H"], scale: Scalar | None = None
) -> Float[ArrayT, "T S"]:
    """The grid: every query dotted with every key, times ``scale`` (default ``1/sqrt(H)``).

    Accumulated and returned in float32 whatever the input dtype.
    """
    _check_matrices(("q", q, "T H"), ("k", k, "S H"))
    if q.shape[1] != k.shape[1]:
        raise ValueError(
            f"q {q.shape} and k {k.shape} must have the same width H, got {q.shape[1]} vs "
            f"{k.shape[1]}"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return jnp.einsum("TH,SH->TS", q, k, preferred_element_type=jnp.float32) * scale


def masked_softmax(
    scores: Float[ArrayT, "*rows S"], mask: Bool[ArrayT, "*#rows #S"] | None = None
) -> Float[ArrayT, "*rows S"]:
    """Softmax over the last axis, restricted to ``mask`` (True = keep); float32.

    Masked entries are exactly 0. A row with nothing allowed is all zeros (not NaN, not
    uniform), and its gradient is zero.
    """
    scores = scores.astype(jnp.float32)
    allowed = scores > -jnp.inf if mask is None else mask & (scores > -jnp.inf)
    pattern = jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(jnp.float32).min), axis=-1)
    # A row with no allowed key comes out uniform from softmax; define it as zeros.
    return jnp.where(allowed, pattern, 0.0)


def attention_pattern(
    scores: Float[ArrayT, "T S"],
    mask: Bool[ArrayT, "#T #S"] | None = None,
    bias: Float[ArrayT, "#T #S"] | None = None,
) -> Float[ArrayT, "T S"]:
    """The attention pattern: ``softmax(scores + bias)`` over the allowed keys of each row.

    Computed in float32 whatever the input dtype; each row sums to 1, or is all zeros when
    ``mask`` allows no key in that row.
    """
    _check_matrices(("scores", scores, "T S"))
    _check_broadcastable("mask", mask, scores.shape, boolean=True, letters="T, S")
    _check_broadcastable("bias", bias, scores.shape, boolean=False, letters="T, S")
    scores = scores.astype(jnp.float32)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    return masked_softmax(scores, mask)


def attend(pattern: Float[ArrayT, "T S"], v: Float[ArrayT, "S R"]) -> Float[ArrayT, "T R"]:
    """Move values by the pattern: each output row is a weighted mean of value rows."""
    _check_matrices(("pattern", pattern, "T S"), ("v", v, "S R"))
    if pattern.shape[1] != v.shape[0]:
        raise ValueError(
            f"pattern {pattern.shape} has S={pattern.shape[1]} keys but v {v.shape} has "
            f"S={v.shape[0]} rows"
        )
    return jnp.einsum("TS,SR->TR", pattern.astype(v.dtype), v)


def single_head_attention(
    q: Float[ArrayT, "T H"],
    k: Float[ArrayT, "S H"],
    v: Float[ArrayT, "S R"],
    mask: Bool[ArrayT, "#T #S"] | None = None,
    bias: Float[ArrayT, "#T #S"] | None = None,
    scale: Scalar | None = None,
    dropout_keep: Float[ArrayT, "T S"] | None = None,
) -> tuple[Float[ArrayT, "T R"], Float[ArrayT, "T S"]]:
    """Scores → pattern → values for one example and one head. Returns ``(out, pattern)``.

    ``dropout_keep`` (already divided by the keep probability) multiplies the pattern before it
    moves values; the returned pattern is the one before dropout.
    """
    pattern = attention_pattern(attention_scores(q, k, scale), mask, bias)
    moved = pattern if dropout_keep is None else pattern * dropout_keep
    return attend(moved, v), pattern


def _check_matrices(*named) -> None:
    for name, x, letters in named:
        if jnp.ndim(x) != 2:
            raise ValueError(f"{name} must have shape [{letters}], got shape {jnp.shape(x)}")


def _check_broadcastable(name, x, target, *, boolean: bool, letters: str) -> None:
    if x is None:
        return
    if boolean and jnp.asarray(x).dtype != jnp.bool_:
        raise ValueError(f"{name} must be boolean (True = may attend), got dtype {x.dtype}")
    shape = jnp.shape(x)
    if len(shape) > len(target) or any(
        d not in (1, t) for d, t in zip(shape[::-1], target[::-1], strict=False)
    ):
        raise ValueError(
            f"{name} of shape {shape} is not broadcastable to [{letters}] = {list(target)}"
        )


def masked_logsumexp(
    scores: Float[ArrayT, "*rows S"], mask: Bool[ArrayT, "*#rows #S"] | None = None
) -> Float[ArrayT, "*rows"]:
    """``log Σ exp(scores)`` over each row's allowed keys, float32; ``-inf`` (with zero
    gradient) for a row with none."""
    scores = scores.astype(jnp.float32)
    allowed = scores > -jnp.inf if mask is None else mask & (scores > -jnp.inf)
    lse = jax.nn.logsumexp(jnp.where(allowed, scores, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.where(allowed.any(axis=-1), lse, -jnp.inf)


# --------------------------------------------------------------------------------------------
# The reference: the single-head function lifted with vmap.
# --------------------------------------------------------------------------------------------


def grouped(x, num_kv_heads: int):
    """``[b, N or 1, ...]`` → ``[b, K, G, ...]`` (or ``[b, 1, 1, ...]``, which broadcasts)."""
    if x is None:
        return None
    if x.shape[1] == 1:
        return x[:, :, None]
    return x.reshape(x.shape[0], num_kv_heads, -1, *x.shape[2:])


def dropout_keep(call: Call):
    """The call's dropout keep mask ``[B, N, T, S]``, divided by the keep probability."""
    if call.dropout_rate == 0.0:
        return None
    keep = jax.random.bernoulli(call.dropout_rng, 1.0 - call.dropout_rate, call.grid_shape)
    return keep.astype(jnp.float32) / (1.0 - call.dropout_rate)


def vmap_attention(call: Call) -> Result:
    """The reference: the single-head function vmapped over G, then K, then B."""
    batch, q_len, num_heads, _ = call.query.shape
    num_kv_heads, group = call.num_kv_heads, call.num_heads // call.num_kv_heads
    full = call.grid_shape
    masking = call.masking
    mask, bias, keep = (
        None if x is None else grouped(jnp.broadcast_to(x, full), num_kv_heads)
        for x in (masking.full_mask(q_len, call.k_len), masking.bias, dropout_keep(call))
    )
    query = call.query.reshape(batch, q_len, num_kv_heads, group, -1)

    def head(q, k, v, m, b, d):  # q [T,H] k [S,H] v [S,R] m,b,d [T,S]
        scores = attention_scores(q, k, call.scale)
        pattern = attention_pattern(scores, m, b)
        out = attend(pattern if d is None else pattern * d, v)
        biased = scores if b is None else scores + b.astype(jnp.float32)
        return out, pattern, masked_logsumexp(biased, m)

    # q [T,G,H] shares k [S,H], v [S,R]; the group's masks are [G,T,S].
    over_group = jax.vmap(head, in_axes=(1, None, None, 0, 0, 0), out_axes=(1, 0, 0))
    over_kv_heads = jax.vmap(over_group, in_axes=(1, 1, 1, 0, 0, 0), out_axes=(1, 0, 0))
    out, pattern, lse = jax.vmap(over_kv_heads)(query, call.key, call.value, mask, bias, keep)
    return Result(
        out.reshape(batch, q_len, num_heads, -1),
        pattern.reshape(full),
        lse.reshape(full[:3]),
    )
