"""The blocked kernel unrolled at trace time: few query blocks, each against exactly the keys
it can see.

With at most ``MAX_UNROLLED_BLOCKS`` query blocks the block loop is a Python loop. Block
bounds are then Python ints, so each query block takes one softmax over its visible key range
(``Masking.key_range``: no online rescaling, no padding; the last block may be short), the
causal/window mask is built from iotas only for tiles it cuts, and XLA sees ordinary top-level
ops that it spreads over every core (ops inside a while loop run on one core on CPU).
Why, and the scheduling tricks for XLA:CPU (``_after``, transposed d_k/d_v accumulators, head
chunks), with their measured ratios: the module docstring of ``blocked``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from attnjax.functional.backends import _blocked_common as common
from attnjax.functional.masking import Masking, Span

MAX_UNROLLED_BLOCKS = 16
F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Static tiling: for each query block ``(q0, q1)``, the key range ``(k0, k1)`` it sees."""

    scale: float
    num_kv_heads: int
    tiles: tuple[tuple[int, int, int, int], ...]


def tiling(masking: Masking, scale: float, num_kv_heads: int, q_len, k_len, block_q) -> Tiling:
    tiles = []
    for q0 in range(0, q_len, block_q):
        q1 = min(q0 + block_q, q_len)
        tiles.append((q0, q1, *masking.key_range(q0, q1 - 1, k_len)))
    return Tiling(float(scale), num_kv_heads, tuple(tiles))


def _scores(tiles: Tiling, masking: Masking, q_tile, k, tile):
    q0, q1, k0, k1 = tile
    rows, cols = Span(q0, q1 - q0), Span(k0, k1 - k0)
    k_tile = k[:, :, k0:k1]
    return common.tile_scores(masking, tiles.scale, tiles.num_kv_heads, q_tile, k_tile, rows, cols)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def attention(tiles: Tiling, q, k, v, masking: Masking):
    """q [B,K,G,T,H], k [B,K,S,H], v [B,K,S,R] → out [B,K,G,T,R], lse [B,K,G,T]."""
    return _forward(tiles, q, k, v, masking)


def _forward(tiles: Tiling, q, k, v, masking: Masking):
    outs, lses = [], []
    previous = None
    for tile in tiles.tiles:
        q0, q1, k0, k1 = tile
        rows = q.shape[:3] + (q1 - q0,)
        if k1 <= k0:  # a block that sees no key at all
            outs.append(jnp.zeros(rows + (v.shape[-1],), v.dtype))
            lses.append(jnp.full(rows, -jnp.inf, F32))
            continue
        scores, allowed = _scores(tiles, masking, _after(q, q0, q1, previous), k, tile)
        row_max = scores.max(axis=-1)
        # Masked scores are MASKED, so their exp is 0 but in a row with no allowed key (whose
        # max is MASKED): such rows are found from the max, not by a second where over the
        # tile, whose broadcast fill XLA hoists out of the head-chunk loop (+18% temporaries).
        probs = jnp.exp(scores - row_max[..., None])
        moved = jnp.einsum(
            "BKGTS,BKSR->BKGTR", probs.astype(v.dtype), v[:, :, k0:k1], preferred_element_type=F32
        )
        seen = None if allowed is None else row_max > common.MASKED
        out, lse = common.normalized(moved, row_max, probs.sum(axis=-1), seen)
        previous = lse
        outs.append(out.astype(v.dtype))
        lses.append(lse)
    return jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)


def _after(x, q0: int, q1: int, previous):
    """``x[:, :, :, q0:q1]``, read only once ``previous`` (the last tile's result) exists
    (trick 3 in ``blocked``'s docstring)."""
    rows = x[:, :, :, q0:q1]
    if previous is None:
        return rows
    probe = previous.reshape(-1)[0]
    zero = jnp.minimum((probe != probe).astype(jnp.int32), 0)
    return rows + zero.astype(rows.dtype)


def _attention_fwd(tiles: Tiling, q, k, v, masking: Masking):
    out, lse = _forward(tiles, q, k, v, masking)
    return (out, lse), (q, k, v, masking, out, lse)


def _attention_bwd(tiles: Tiling, residuals, cotangents):
    q, k, v, masking, d_out, delta, lse = common.backward_inputs(residuals, cotangents)
    d_q_tiles = []
    # d_k, d_v accumulated transposed ([.., H, S]): trick 4 in blocked's docstring.
    d_k_t = jnp.zeros(k.shape[:2] + (k.shape[3], k.shape[2]), F32)
    d_v_t = jnp.zeros(v.shape[:2] + (v.shape[3], v.shape[2]), F32)
    d_bias = common.zero_bias_gradient(masking)
    previous = None
    for tile in tiles.tiles:
        q0, q1, k0, k1 = tile
        if k1 <= k0:
            d_q_tiles.append(jnp.zeros(q.shape[:3] + (q1 - q0, q.shape[-1]), F32))
            continue
        q_tile = _after(q, q0, q1, previous)
        d_out_tile = _after(d_out, q0, q1, previous)
        scores, _ = _scores(tiles, masking, q_tile, k, tile)
        probs = jnp.exp(scores - lse[..., q0:q1, None])
        d_v_t = d_v_t.at[..., k0:k1].add(jnp.einsum("BKGTR,BKGTS->BKRS", d_out_tile, probs))
        d_probs = jnp.einsum("BKGTR,BKSR->BKGTS", d_out_tile, v[:, :, k0:k1])
        d_scores = probs * (d_probs - delta[..., q0:q1, None])
        if d_bias is not None:
            d_bias = common.add_window(d_bias, d_scores, q0, k0)
        d_scores = d_scores * tiles.scale
        d_k_t = d_k_t.at[..., k0:k1].add(jnp.einsum("BKGTH,BKGTS->BKHS", q_tile, d_scores))
        d_q_tile = jnp.einsum("BKGTS,BKSH->BKGTH", d_scores, k[:, :, k0:k1])
        previous = d_q_tile
        d_q_tiles.append(d_q_tile)
    d_k, d_v = jnp.swapaxes(d_k_t, 2, 3), jnp.swapaxes(d_v_t, 2, 3)
    return common.gradients(residuals, jnp.concatenate(d_q_tiles, axis=3), d_k, d_v, d_bias)


attention.defvjp(_attention_fwd, _attention_bwd)
