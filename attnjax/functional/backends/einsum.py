"""``"einsum"``: the same maths as the reference, as batched einsums over all heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnjax.functional.attention import dropout_keep, grouped, masked_logsumexp, masked_softmax
from attnjax.functional.backends.base import Backend, grid_too_big
from attnjax.functional.call import Call, Result


def einsum_attention(call: Call) -> Result:
    batch, q_len, num_heads, _ = call.query.shape
    num_kv_heads = call.num_kv_heads
    query = call.query.reshape(batch, q_len, num_kv_heads, num_heads // num_kv_heads, -1)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", query, call.key, preferred_element_type=jnp.float32)
    scores = scores * call.scale
    if call.masking.bias is not None:
        scores = scores + grouped(call.masking.bias, num_kv_heads).astype(jnp.float32)
    mask = grouped(call.masking.full_mask(q_len, call.k_len), num_kv_heads)
    if mask is None:  # -inf biases were turned into masks, so every score is finite here.
        pattern = jax.nn.softmax(scores, axis=-1)
        lse = jax.nn.logsumexp(scores, axis=-1)
    else:
        pattern = masked_softmax(scores, mask)
        lse = masked_logsumexp(scores, mask)
    keep = dropout_keep(call)
    moved = pattern if keep is None else pattern * grouped(keep, num_kv_heads)
    out = jnp.einsum("BKGTS,BSKR->BTKGR", moved.astype(call.value.dtype), call.value)
    return Result(
        out.reshape(batch, q_len, num_heads, -1),
        pattern.reshape(call.grid_shape),
        lse.reshape(call.grid_shape[:3]),
    )


BACKEND = Backend(
    name="einsum",
    run=einsum_attention,
    unsupported=grid_too_big,
    gives_pattern=True,
    gives_lse=True,
    supports_dropout=True,
    instead="'blocked'",
)
