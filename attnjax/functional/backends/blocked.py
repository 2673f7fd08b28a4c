"""``"blocked"``: flash-style attention in plain JAX, O(T) memory, its own gradient.

The grid is never built, forward or backward. Queries are cut into blocks; each block attends
to the key blocks it can see and nothing else (hidden blocks are skipped, not masked). What is
saved for the backward pass is the output and the per-row log-sum-exp ``lse``; the backward
recomputes each block's pattern as ``exp(score - lse)`` (FlashAttention-2), so memory stays
O(T) both ways. Two kernels: ``_blocked_unrolled`` (up to ``MAX_UNROLLED_BLOCKS`` query blocks,
the block loop unrolled at trace time) and ``_blocked_loop`` (``lax`` loops, any length).

Grouped-query attention reads each key/value head once for its G query heads (no repeat).
Lengths need not be block multiples. Scores, the softmax and every accumulator are float32
whatever the input dtype. Kernel layout: q ``[B, K, G, T, H]``, k ``[B, K, S, H]``,
v ``[B, K, S, R]``.

**How the kernels are scheduled on XLA:CPU (every such trick is here).** The same ops run on
any platform; these choices only steer XLA:CPU, and cost accelerators at most a scalar op per
tile. Ratios are fwd+bwd, causal, float32, B=4 T=1024 N=8 H=64, interleaved repeats in one
process, two runs (2-core machine shared with other jobs, load 5 and 12-16; the second as the
median of per-round ratios); "temporaries" are XLA's compiled ``temp_size_in_bytes``.

1. *Unrolled blocks, up to 16 of them.* Block bounds are then Python ints: each query block
   takes one softmax over exactly the keys it can see (``Masking.key_range``; no online
   rescaling, no padding), the causal/window mask is built only for the tiles it cuts, and XLA
   sees top-level ops that it spreads over all cores (ops inside a ``while`` loop run on one
   core). The ``lax``-loop kernel on the same call (blocks 256 x 512) took 1.81x and 1.70x
   the unrolled kernel's time, with 124 instead of 49 MiB of temporaries.
   Longer queries need the loop kernel (the unrolled program grows with the block count).
2. *Heads in chunks sized by a cache budget* (``_TILE_BYTES``, ``_by_head_chunks``): the
   unrolled kernel runs over chunks of the B·K key/value heads (``lax.map``) so that a
   ``[chunk, G, block_q, S]`` float32 score tile stays within 2 MiB. All heads in one pass
   took 1.53x and 1.23x the time, with 166 instead of 49 MiB of temporaries.
3. *A forged data dependency between tiles* (``_blocked_unrolled._after``). The tiles are
   independent, and XLA's CPU scheduler orders for concurrency, not memory (it also drops
   optimization barriers), so left alone it computes every tile's ``[rows, keys]`` arrays
   before using any. Each tile instead reads its rows only once the previous tile's result
   exists, through an added zero computed from that result (always 0, not provably so).
   Without it: 1.11x and 1.05x the time, 52 instead of 49 MiB of temporaries (147 instead
   of 119 MiB at B=1 T=4096).
4. *Transposed gradient accumulators* in the unrolled backward: d_k and d_v are summed as
   ``[.., H, S]`` so XLA's CPU matmul reads the ``[T, S]`` tiles as they lie instead of copying
   each into ``[S, T]`` order (not measured on its own).
5. *Block sizes*: unrolled query blocks of a quarter of T, 128 to 256 rows (``_block_sizes``;
   256 rows measured ~10% faster than 128 at this shape despite the larger masked triangle on
   the diagonal, in an earlier session; below 128 the dots get too small); the loop kernel's
   (256, 512).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from attnjax.functional.backends import _blocked_loop as loop
from attnjax.functional.backends import _blocked_unrolled as unrolled
from attnjax.functional.backends.base import Backend
from attnjax.functional.call import Call, Result
from attnjax.functional.masking import Masking

__all__ = ["BACKEND", "DEFAULT_BLOCK_SIZES", "MAX_UNROLLED_BLOCKS", "blocked_attention"]

# (block_q, block_k) of the lax-loop kernel; see attnjax.bench.
DEFAULT_BLOCK_SIZES = (256, 512)
MAX_UNROLLED_BLOCKS = unrolled.MAX_UNROLLED_BLOCKS
# Default unrolled query blocks: a quarter of T, between 128 and 256 rows, so unrolled by
# default up to T = 16 * 256 = 4096 (trick 5 of the module docstring).
_DEFAULT_UNROLLED_BLOCK_Q = (128, 256)
# Score tiles of the unrolled kernel up to this size (trick 2).
_TILE_BYTES = 2 * 2**20


def blocked_attention(call: Call) -> Result:
    """Blocked attention: ``out [B, T, N, R]`` and ``lse [B, N, T]``, where
    ``pattern[t, s] = exp(scale·q_t·k_s + bias - lse[t])`` over allowed keys (``lse = -inf``
    for a row with none)."""
    batch, q_len, num_heads, _ = call.query.shape
    k_len, num_kv_heads = call.k_len, call.num_kv_heads
    group = num_heads // num_kv_heads
    block_q, block_k = _block_sizes(call.block_sizes, q_len, k_len)
    on_queries, scale = _split_scale(call.scale, call.query.dtype)
    query = call.query
    if on_queries != 1.0:  # differentiated by JAX: d_query gets the factor too
        query = (query * on_queries).astype(query.dtype)
    q = query.reshape(batch, q_len, num_kv_heads, group, -1).transpose(0, 2, 3, 1, 4)
    k = call.key.transpose(0, 2, 1, 3)
    v = call.value.transpose(0, 2, 1, 3)
    if -(-q_len // block_q) <= MAX_UNROLLED_BLOCKS:
        tiles = unrolled.tiling(call.masking, scale, num_kv_heads, q_len, k_len, block_q)
        out, lse = _by_head_chunks(tiles, q, k, v, call.masking, block_q * group * k_len)
    else:
        out, lse = _looped(call.masking, scale, q, k, v, block_q, block_k)
    out = out[:, :, :, :q_len].transpose(0, 3, 1, 2, 4).reshape(batch, q_len, num_heads, -1)
    return Result(out, lse=lse[..., :q_len].reshape(batch, num_heads, q_len))


def _by_head_chunks(tiles, q, k, v, masking: Masking, tile_elements_per_head: int):
    """The unrolled kernel over chunks of the B·K key/value heads, one chunk at a time
    (``lax.map``; trick 2 of the module docstring). Heads are folded into the batch axis: q
    ``[B·K, 1, G, T, H]``. With a mask or bias array, or when every head fits in one chunk,
    all heads go at once."""
    batch, num_kv_heads = k.shape[:2]
    heads = batch * num_kv_heads
    chunk = max(1, _TILE_BYTES // (4 * tile_elements_per_head))
    chunk = max(c for c in range(1, min(chunk, heads) + 1) if heads % c == 0)
    if chunk == heads or masking.mask is not None or masking.bias is not None:
        return unrolled.attention(tiles, q, k, v, masking)
    one_head = dataclasses.replace(tiles, num_kv_heads=1)

    def chunked(x):  # [B·K, ...] → [B·K / chunk, chunk, ...]
        return x.reshape((heads // chunk, chunk) + x.shape[1:])

    folded = [x.reshape((heads, 1) + x.shape[2:]) for x in (q, k, v)]
    per_head = masking.per_batch_row(num_kv_heads)

    def one_chunk(args):
        return unrolled.attention(one_head, *args)

    out, lse = lax.map(one_chunk, jax.tree.map(chunked, (*folded, per_head)))
    out = out.reshape((batch, num_kv_heads) + out.shape[3:])
    return out, lse.reshape((batch, num_kv_heads) + lse.shape[3:])


def _looped(masking: Masking, scale: float, q, k, v, block_q: int, block_k: int):
    """Pad to whole blocks (the padding is masked by lengths) and run the loop kernel."""
    batch, num_kv_heads, q_len, k_len = q.shape[0], k.shape[1], q.shape[3], k.shape[2]
    blocks = loop.Blocks(
        scale=float(scale),
        num_kv_heads=num_kv_heads,
        block_q=block_q,
        block_k=block_k,
        num_q_blocks=-(-q_len // block_q),
        num_k_blocks=-(-k_len // block_k),
    )
    q_pad = blocks.num_q_blocks * block_q - q_len
    k_pad = blocks.num_k_blocks * block_k - k_len
    q = jnp.pad(q, [(0, 0)] * 3 + [(0, q_pad), (0, 0)])
    k, v = (jnp.pad(x, [(0, 0)] * 2 + [(0, k_pad), (0, 0)]) for x in (k, v))
    return loop.attention(blocks, q, k, v, _padded(masking, batch, q_len, k_len, q_pad, k_pad))


def _padded(masking: Masking, batch: int, q_len: int, k_len: int, q_pad: int, k_pad: int):
    """``masking`` over padded positions: lengths always set (they mask the padding), ids,
    mask and bias padded along their full axes."""

    def lengths(x, length):
        full = jnp.full((batch,), length, jnp.int32)
        return full if x is None else jnp.minimum(x, length)

    def ids(x, pad):
        return None if x is None else jnp.pad(x, [(0, 0), (0, pad)], constant_values=-1)

    def grid(x):
        if x is None:
            return None
        pads = [(0, 0), (0, 0), (0, q_pad if x.shape[2] > 1 else 0)]
        return jnp.pad(x, pads + [(0, k_pad if x.shape[3] > 1 else 0)])

    return dataclasses.replace(
        masking,
        query_lengths=lengths(masking.query_lengths, q_len),
        key_lengths=lengths(masking.key_lengths, k_len),
        query_segment_ids=ids(masking.query_segment_ids, q_pad),
        key_segment_ids=ids(masking.key_segment_ids, k_pad),
        mask=grid(masking.mask),
        bias=grid(masking.bias),
    )


def _split_scale(scale: float, dtype) -> tuple[float, float]:
    """How the softmax scale is split: ``(on_queries, on_scores)``, their product the scale.

    Scaling the [T, H] queries once is cheaper than scaling every [T, S] score tile; it is done
    whenever it is exact enough: float32 queries, or a power-of-two scale (exact in any format).
    """
    if math.frexp(scale)[0] == 0.5 or jnp.dtype(dtype) == jnp.float32:
        return scale, 1.0
    return 1.0, scale


def _block_sizes(block_sizes, q_len: int, k_len: int) -> tuple[int, int]:
    if block_sizes is None:
        smallest, largest = _DEFAULT_UNROLLED_BLOCK_Q
        block_q, block_k = DEFAULT_BLOCK_SIZES
        if q_len <= MAX_UNROLLED_BLOCKS * largest:
            block_q = min(largest, max(smallest, -(-q_len // 4)))
    else:
        block_q, block_k = block_sizes
    # A sequence shorter than a block is one block of its own length: no padding.
    return min(int(block_q), q_len), min(int(block_k), k_len)


BACKEND = Backend(
    name="blocked",
    run=blocked_attention,
    gives_lse=True,
    per_shard=True,
    instead="'einsum' or 'vmap'",
)
