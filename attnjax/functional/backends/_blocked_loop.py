"""The blocked kernel as ``lax`` loops: any length in O(T) memory.

Queries in blocks of ``block_q`` rows, each walking the key blocks it can see with an online
softmax (running max ``m``, running sum ``l`` of ``exp(score - m)``, running weighted sum of
values: Milakov & Gimelshein 2018, as in FlashAttention). Key blocks that causality or a
window hides entirely are not visited: loop bounds come from ``Masking.key_range``. The
backward pass (``jax.custom_vjp``) recomputes each block's pattern as ``exp(score - lse)``
(FlashAttention-2), one key block at a time.

Layout: q ``[B, K, G, T, H]``, k ``[B, K, S, H]``, v ``[B, K, S, R]``, padded to whole blocks
(the padding is masked by lengths, which are always set here).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from attnjax.functional.backends import _blocked_common as common
from attnjax.functional.masking import Masking, Span

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Blocks:
    """The static tiling of the loop kernel (hashable, for custom_vjp)."""

    scale: float
    num_kv_heads: int
    block_q: int
    block_k: int
    num_q_blocks: int
    num_k_blocks: int


def key_block_range(blocks: Blocks, masking: Masking, i):
    """Key blocks ``[lo, hi)`` that query block ``i`` can see (others are skipped)."""
    bq, bk = blocks.block_q, blocks.block_k
    first, last = i * bq, i * bq + bq - 1
    lo, hi = masking.key_range(first, last, blocks.num_k_blocks * bk)
    lo, hi = lo // bk, -(-hi // bk)
    hi = jnp.minimum(hi, -(-jnp.max(masking.key_lengths) // bk))
    hi = jnp.where(first < jnp.max(masking.query_lengths), hi, lo)  # a block of padding rows
    return lo, jnp.maximum(hi, lo)


def query_block_range(blocks: Blocks, masking: Masking, j):
    """Query blocks ``[lo, hi)`` that can see key block ``j``: the transpose of the above."""
    bq, bk = blocks.block_q, blocks.block_k
    first, last = j * bk, j * bk + bk - 1
    lo, hi = masking.query_range(first, last, blocks.num_q_blocks * bq)
    lo, hi = lo // bq, -(-hi // bq)
    hi = jnp.minimum(hi, -(-jnp.max(masking.query_lengths) // bq))
    hi = jnp.where(first < jnp.max(masking.key_lengths), hi, lo)
    return lo, jnp.maximum(hi, lo)


def _block_scores(blocks: Blocks, masking: Masking, q_block, k_block, i, j):
    """Scaled, biased scores of block (i, j), masked entries ``common.MASKED``; f32."""
    spans = Span(i * blocks.block_q, blocks.block_q), Span(j * blocks.block_k, blocks.block_k)
    return common.tile_scores(masking, blocks.scale, blocks.num_kv_heads, q_block, k_block, *spans)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def attention(blocks: Blocks, q, k, v, masking: Masking):
    """q [B,K,G,T,H], k [B,K,S,H], v [B,K,S,R] (padded) → out [B,K,G,T,R], lse [B,K,G,T]."""
    return _forward(blocks, q, k, v, masking)


def _forward(blocks: Blocks, q, k, v, masking: Masking):
    bq, bk = blocks.block_q, blocks.block_k
    rows = q.shape[:3] + (bq,)

    def query_block(i):
        q_block = lax.dynamic_slice_in_dim(q, i * bq, bq, axis=3)

        def visit_key_block(j, carry):
            acc, row_max, row_sum = carry
            k_block = lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
            v_block = lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)
            scores, allowed = _block_scores(blocks, masking, q_block, k_block, i, j)
            new_max = jnp.maximum(row_max, scores.max(axis=-1))
            probs = common.where(allowed, jnp.exp(scores - new_max[..., None]), 0.0)
            rescale = jnp.exp(row_max - new_max)
            row_sum = row_sum * rescale + probs.sum(axis=-1)
            moved = jnp.einsum(
                "BKGTS,BKSR->BKGTR", probs.astype(v.dtype), v_block, preferred_element_type=F32
            )
            return acc * rescale[..., None] + moved, new_max, row_sum

        init = (
            jnp.zeros(rows + (v.shape[-1],), F32),
            jnp.full(rows, common.MASKED, F32),
            jnp.zeros(rows, F32),
        )
        lo, hi = key_block_range(blocks, masking, i)
        acc, row_max, row_sum = lax.fori_loop(lo, hi, visit_key_block, init)
        out, lse = common.normalized(acc, row_max, row_sum)
        return out.astype(v.dtype), lse

    out, lse = lax.map(query_block, jnp.arange(blocks.num_q_blocks))
    # [nq, B, K, G, bq, ...] → [B, K, G, nq * bq, ...]
    out = jnp.moveaxis(out, 0, 3).reshape(q.shape[:4] + (v.shape[-1],))
    lse = jnp.moveaxis(lse, 0, 3).reshape(q.shape[:4])
    return out, lse


def _attention_fwd(blocks: Blocks, q, k, v, masking: Masking):
    out, lse = _forward(blocks, q, k, v, masking)
    return (out, lse), (q, k, v, masking, out, lse)


def _attention_bwd(blocks: Blocks, residuals, cotangents):
    q, k, v, masking, d_out, delta, lse = common.backward_inputs(residuals, cotangents)
    bq, bk = blocks.block_q, blocks.block_k

    def key_block(carry, j):
        d_q, d_bias = carry
        k_block = lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
        v_block = lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)

        def visit_query_block(i, inner):
            d_q, d_bias, d_k, d_v = inner
            q_block = lax.dynamic_slice_in_dim(q, i * bq, bq, axis=3)
            d_out_block = lax.dynamic_slice_in_dim(d_out, i * bq, bq, axis=3)
            lse_block = lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=3)
            delta_block = lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=3)
            scores, _ = _block_scores(blocks, masking, q_block, k_block, i, j)
            probs = jnp.exp(scores - lse_block[..., None])
            d_v = d_v + jnp.einsum("BKGTS,BKGTR->BKSR", probs, d_out_block)
            d_probs = jnp.einsum("BKGTR,BKSR->BKGTS", d_out_block, v_block)
            d_scores = probs * (d_probs - delta_block[..., None])
            if d_bias is not None:
                d_bias = common.add_window(d_bias, d_scores, i * bq, j * bk)
            d_scores = d_scores * blocks.scale
            d_k = d_k + jnp.einsum("BKGTS,BKGTH->BKSH", d_scores, q_block)
            d_q_block = lax.dynamic_slice_in_dim(d_q, i * bq, bq, axis=3) + jnp.einsum(
                "BKGTS,BKSH->BKGTH", d_scores, k_block
            )
            d_q = lax.dynamic_update_slice_in_dim(d_q, d_q_block, i * bq, axis=3)
            return d_q, d_bias, d_k, d_v

        init = (d_q, d_bias, jnp.zeros(k_block.shape, F32), jnp.zeros(v_block.shape, F32))
        lo, hi = query_block_range(blocks, masking, j)
        d_q, d_bias, d_k, d_v = lax.fori_loop(lo, hi, visit_query_block, init)
        return (d_q, d_bias), (d_k, d_v)

    d_bias0 = common.zero_bias_gradient(masking)
    (d_q, d_bias), (d_k, d_v) = lax.scan(
        key_block, (jnp.zeros(q.shape, F32), d_bias0), jnp.arange(blocks.num_k_blocks)
    )
    # [nk, B, K, bk, ...] → [B, K, nk * bk, ...]
    d_k = jnp.moveaxis(d_k, 0, 2).reshape(k.shape)
    d_v = jnp.moveaxis(d_v, 0, 2).reshape(v.shape)
    return common.gradients(residuals, d_q, d_k, d_v, d_bias)


attention.defvjp(_attention_fwd, _attention_bwd)
