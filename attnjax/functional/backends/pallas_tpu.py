"""``"pallas_tpu"``: the Pallas TPU flash kernel (``jax.experimental.pallas.ops.tpu``).

It takes ``[B, N, T, H]`` with equal head counts, causality and segment ids, in blocks of
128. Grouped-query heads are repeated; lengths become segment ids (``Masking``'s
``kernel_segment_ids``); T and S are padded up to multiples of 128 with ids that match
nothing, and the padded query rows dropped. Off TPU it runs only under
``jax.experimental.pallas.tpu.force_tpu_interpret_mode()``; elsewhere Pallas refuses to lower
it ("Only interpret mode is supported on CPU backend"). XLA cannot partition a Mosaic kernel,
so under a mesh it runs per shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnjax.functional.backends.base import Backend
from attnjax.functional.call import Call, Result

_BLOCK = 128


def _unsupported(call: Call) -> str | None:
    masking = call.masking
    if masking.mask is not None or masking.bias is not None:
        return "a mask or bias argument (pass padding as seq lengths, packing as segment ids)"
    if masking.window is not None:
        return "local_window_size"
    value_width, query_width = call.value.shape[-1], call.query.shape[-1]
    if value_width != query_width:
        return f"a value width R={value_width} unlike the query/key width H={query_width}"
    return None


def _padded(x, axis: int, value=0):
    """``x`` padded at the end of ``axis`` up to a multiple of the kernel's block."""
    extra = -x.shape[axis] % _BLOCK
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value) if extra else x


def _run(call: Call) -> Result:
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

    group = call.num_heads // call.num_kv_heads
    # The kernel has no GQA: repeat each key/value head for the G query heads that share it.
    key, value = (jnp.repeat(x, group, axis=2) for x in (call.key, call.value))
    q_ids, kv_ids = call.masking.kernel_segment_ids(call.batch, call.q_len, call.k_len)
    # Padded queries (id -1) and keys (id -2) match nothing; keys at the end stay causal.
    q_ids, kv_ids = _padded(q_ids, 1, -1), _padded(kv_ids, 1, -2)
    heads_first = [jnp.swapaxes(_padded(x, 1), 1, 2) for x in (call.query, key, value)]
    out = pallas_flash.flash_attention(
        *heads_first,
        segment_ids=pallas_flash.SegmentIds(q=q_ids, kv=kv_ids),
        causal=call.masking.is_causal,
        sm_scale=call.scale,
    )
    out = jnp.swapaxes(out, 1, 2)[:, : call.q_len]
    q_ids, kv_ids = q_ids[:, : call.q_len], kv_ids[:, : call.k_len]
    # The kernel averages all values for a row with no allowed key; define it as zeros.
    sees_a_key = _rows_with_a_key(q_ids, kv_ids, call.masking.is_causal)
    return Result(jnp.where(sees_a_key[:, :, None, None], out, 0).astype(call.value.dtype))


def _rows_with_a_key(q_ids, kv_ids, is_causal: bool):
    """[B, T]: whether query t has a key s with the same id (and s <= t if causal).

    Without building [T, S]: keys sorted by (id, position), then each query looks up the
    first key of its id. Negative ids are padding and match nothing.
    """
    k_len = kv_ids.shape[1]
    positions = jnp.broadcast_to(jnp.arange(k_len), kv_ids.shape)

    def one_example(q_ids, kv_ids, positions):
        order = jnp.lexsort((positions, kv_ids))
        sorted_ids, sorted_pos = kv_ids[order], positions[order]
        first = jnp.minimum(jnp.searchsorted(sorted_ids, q_ids), k_len - 1)
        found = (sorted_ids[first] == q_ids) & (q_ids >= 0)
        if is_causal:
            found &= sorted_pos[first] <= jnp.arange(q_ids.shape[0])
        return found

    return jax.vmap(one_example)(q_ids, kv_ids, positions)


BACKEND = Backend(
    name="pallas_tpu",
    run=_run,
    unsupported=_unsupported,
    per_shard=True,
    platforms=("tpu",),
)
