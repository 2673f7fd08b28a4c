"""Attention masks as functions.

A mask is a boolean array where ``True`` means "this query may look at this key". Every
function returns a mask broadcastable to ``[B, N, T, S]`` (batch, heads, queries, keys), the
convention of ``jax.nn.dot_product_attention``, so masks combine with ``combine_masks`` (a
logical AND) and are passed straight to ``attnjax.dot_product_attention(mask=...)``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from attnjax.functional._checks import as_int, per_example_lengths
from attnjax.functional._types import ArrayT, IntLike
from attnjax.functional.masking import Masking, Window, normalize_window

Offset = IntLike | ArrayT

__all__ = [
    "causal_mask",
    "combine_masks",
    "padding_mask",
    "segment_mask",
    "sliding_window_mask",
]


def _positions(length: int, offset: Offset = 0) -> Array:
    return jnp.arange(length) + offset


def causal_mask(
    query_length: IntLike, key_length: IntLike | None = None, *, offset: Offset = 0
) -> Bool[Array, "1 1 T S"]:
    """Query ``i`` sees keys ``j <= i + offset``.

    ``offset=0`` is the top-left aligned mask of ``jax.nn.dot_product_attention(is_causal=True)``.
    When queries continue a cached prefix of ``offset`` tokens, pass that offset so that query
    ``i`` (absolute position ``offset + i``) sees the whole prefix and itself.
    """
    query_length, key_length = _lengths(query_length, key_length)
    rule = Masking(is_causal=True)
    return rule.in_reach(_positions(query_length, offset)[:, None], _positions(key_length))[
        None, None
    ]


def sliding_window_mask(
    query_length: IntLike,
    key_length: IntLike | None = None,
    window: Window = 0,
    *,
    offset: Offset = 0,
) -> Bool[Array, "1 1 T S"]:
    """Query ``i`` sees keys ``j`` with ``i - left <= j <= i + right``.

    ``window`` is ``(left, right)`` or one int for a symmetric window, as
    ``local_window_size`` in ``jax.nn.dot_product_attention``. Combine with ``causal_mask``
    (or use ``right=0``) for causal local attention.
    """
    query_length, key_length = _lengths(query_length, key_length)
    rule = Masking(window=normalize_window(window))
    return rule.in_reach(_positions(query_length, offset)[:, None], _positions(key_length))[
        None, None
    ]


def padding_mask(
    key_lengths: Int[ArrayT, " B"],
    key_length: IntLike,
    *,
    query_lengths: Int[ArrayT, " B"] | None = None,
    query_length: IntLike | None = None,
) -> Bool[Array, "B 1 T S"]:
    """Keys at positions ``>= key_lengths[b]`` are padding and are never attended to.

    With ``query_lengths`` (and ``query_length``) padded query rows are masked too; their
    attention output is then defined as zeros.
    """
    key_lengths = per_example_lengths("key_lengths", key_lengths)
    key_length = as_int("key_length", key_length, minimum=1)
    key_ok = jnp.arange(key_length)[None, :] < key_lengths[:, None]  # [B, S]
    mask = key_ok[:, None, None, :]
    if query_lengths is None:
        return mask
    if query_length is None:
        raise ValueError("query_length is required when query_lengths is given")
    query_lengths = per_example_lengths("query_lengths", query_lengths, batch=len(key_lengths))
    query_length = as_int("query_length", query_length, minimum=1)
    query_ok = jnp.arange(query_length)[None, :] < query_lengths[:, None]  # [B, T]
    return mask & query_ok[:, None, :, None]


def segment_mask(
    query_segment_ids: Int[ArrayT, "B T"],
    key_segment_ids: Int[ArrayT, "B S"] | None = None,
) -> Bool[Array, "B 1 T S"]:
    """Packed sequences: a query sees only keys of the same segment id.

    Use segment id 0 for padding only if you also mask it out (e.g. with ``padding_mask``);
    equal ids always attend to each other.
    """
    query_segment_ids = jnp.asarray(query_segment_ids)
    key_segment_ids = query_segment_ids if key_segment_ids is None else jnp.asarray(key_segment_ids)
    if query_segment_ids.ndim != 2 or key_segment_ids.ndim != 2:
        raise ValueError(
            "segment ids must have shape [B, T] and [B, S], got "
            f"query_segment_ids {query_segment_ids.shape}, key_segment_ids {key_segment_ids.shape}"
        )
    same = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    return same[:, None]


def combine_masks(*masks: Bool[ArrayT, ...] | None) -> Bool[Array, ...] | None:
    """Logical AND of masks (``None`` entries are ignored; all ``None`` gives ``None``)."""
    present = [jnp.asarray(m, dtype=bool) for m in masks if m is not None]
    if not present:
        return None
    combined = present[0]
    for mask in present[1:]:
        combined = combined & mask
    return combined


def _lengths(query_length, key_length) -> tuple[int, int]:
    query_length = as_int("query_length", query_length, minimum=1)
    key_length = query_length if key_length is None else key_length
    return query_length, as_int("key_length", key_length, minimum=1)
