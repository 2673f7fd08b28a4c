"""Which key each query may see: one value, one rule.

A :class:`Masking` holds every way a call restricts attention: causality, a local window,
per-example query and key lengths (padding), segment ids (packed sequences), an explicit
boolean mask and an additive bias. Its one rule, :meth:`Masking.allowed`, says for any
rectangle of query positions × key positions which pairs may attend. The full
``[B, N, T, S]`` mask, the blocked kernel's block and tile masks, the Pallas kernel's segment
ids and ``analysis.pattern_tile`` all derive from it.

Positions are absolute: query ``t`` and key ``s`` of the call (``is_causal`` is top-left
aligned, as in ``jax.nn.dot_product_attention``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attnjax.functional._checks import as_int, per_example_lengths
from attnjax.functional._types import IntLike

__all__ = ["Masking", "Span", "Window", "normalize_window"]

# local_window_size: one int (symmetric) or a (left, right) pair.
Window = IntLike | tuple[IntLike, IntLike]


class Span(NamedTuple):
    """Positions ``start, start + 1, ..., start + size - 1`` (``start`` may be traced)."""

    start: Any
    size: int

    def positions(self):
        if isinstance(self.start, int | np.integer):
            return np.arange(self.start, self.start + self.size)
        return self.start + jnp.arange(self.size)


# Positions of a rectangle's rows or columns: a Span, or any 1-D integer array.
Positions = Span | Any


@dataclasses.dataclass(frozen=True)
class Masking:
    """Which key each query may see, for one attention call (a pytree).

    Attributes:
      is_causal: query ``t`` sees keys ``s <= t``.
      window: ``(left, right)``: query ``t`` sees keys in ``[t - left, t + right]``.
      query_lengths, key_lengths: ``[B]`` ints; positions at or past them are padding.
      query_segment_ids, key_segment_ids: ``[B, T]``, ``[B, S]`` ints; a query sees only keys
        of its own segment.
      mask: bool, 4-D, each axis of ``[B, N, T, S]`` full or 1; True = may attend.
      bias: float, 4-D like ``mask``, finite (added to the scores; not a masking rule).

    Build one with :meth:`Masking.make` (checked) or directly with checked arrays. Fields are
    typed ``Any``: JAX rebuilds this pytree with its own placeholders while differentiating.
    """

    is_causal: bool = False
    window: tuple[int, int] | None = None
    query_lengths: Any = None
    key_lengths: Any = None
    query_segment_ids: Any = None
    key_segment_ids: Any = None
    mask: Any = None
    bias: Any = None

    @classmethod
    def make(
        cls,
        shape: tuple[int, int, int, int],
        *,
        is_causal: bool = False,
        local_window_size: Window | None = None,
        query_seq_lengths=None,
        key_value_seq_lengths=None,
        query_segment_ids=None,
        key_segment_ids=None,
        mask=None,
        bias=None,
    ) -> Masking:
        """The masking of a call with ``[B, N, T, S]`` = ``shape``, from the keywords of
        ``jax.nn.dot_product_attention`` (checked; errors name the argument). ``-inf`` bias
        entries become mask entries; the stored bias is finite."""
        batch, _, q_len, k_len = shape
        mask = _broadcastable("mask", mask, shape, boolean=True)
        bias = _broadcastable("bias", bias, shape, boolean=False)
        if bias is not None:
            finite = bias > -jnp.inf
            mask = finite if mask is None else mask & finite
            bias = jnp.where(finite, bias, 0.0)
        q_ids, k_ids = _segment_ids(query_segment_ids, key_segment_ids, batch, q_len, k_len)
        return cls(
            is_causal=bool(is_causal),
            window=None if local_window_size is None else normalize_window(local_window_size),
            query_lengths=_lengths("query_seq_lengths", query_seq_lengths, batch),
            key_lengths=_lengths("key_value_seq_lengths", key_value_seq_lengths, batch),
            query_segment_ids=q_ids,
            key_segment_ids=k_ids,
            mask=mask,
            bias=bias,
        )

    # ---- the rule ----------------------------------------------------------------------

    def reach(self) -> tuple[int | None, int | None]:
        """``(left, right)``: how far left and right of its own position a query may look by
        causality and the window (None: unbounded)."""
        left = None if self.window is None else self.window[0]
        rights = ([0] if self.is_causal else []) + ([self.window[1]] if self.window else [])
        return left, (min(rights) if rights else None)

    def in_reach(self, q_pos, k_pos):
        """Causality and window on broadcast position arrays (NumPy or JAX): None when
        neither restricts."""
        left, right = self.reach()
        parts = ([] if left is None else [k_pos >= q_pos - left]) + (
            [] if right is None else [k_pos <= q_pos + right]
        )
        return functools.reduce(lambda a, b: a & b, parts) if parts else None

    def allowed(self, queries: Positions, keys: Positions):
        """Which (query, key) pairs of a rectangle may attend: bool ``[B|1, N|1, t, s]``, or
        None when nothing restricts it. ``queries`` and ``keys`` are :class:`Span` s or 1-D
        integer position arrays."""
        q_pos, k_pos = _positions(queries), _positions(keys)
        parts = []
        reach = self.in_reach(q_pos[:, None], k_pos[None, :])
        static = isinstance(reach, np.ndarray)
        if reach is not None and not (static and reach.all()):
            parts.append(jnp.asarray(reach)[None, None])
        if self.query_lengths is not None:
            q_ok = jnp.asarray(q_pos)[None, :] < self.query_lengths[:, None]
            parts.append(q_ok[:, None, :, None])
        if self.key_lengths is not None:
            k_ok = jnp.asarray(k_pos)[None, :] < self.key_lengths[:, None]
            parts.append(k_ok[:, None, None, :])
        if self.query_segment_ids is not None:
            q_ids = _take(self.query_segment_ids, queries, axis=1)
            k_ids = _take(self.key_segment_ids, keys, axis=1)
            parts.append((q_ids[:, :, None] == k_ids[:, None, :])[:, None])
        if self.mask is not None:
            parts.append(rectangle(self.mask, queries, keys))
        return functools.reduce(jnp.logical_and, parts) if parts else None

    def full_mask(self, q_len: int, k_len: int):
        """``allowed`` over the whole grid: bool ``[B|1, N|1, T, S]`` or None."""
        return self.allowed(Span(0, q_len), Span(0, k_len))

    def key_range(self, q_first, q_last, k_len: int):
        """Keys ``[lo, hi)`` that queries ``q_first..q_last`` may see by causality and window
        (ints stay ints; traced positions give traced bounds)."""
        left, right = self.reach()
        lo = 0 if left is None else _max(0, q_first - left)
        hi = k_len if right is None else _min(k_len, q_last + right + 1)
        return lo, _max(lo, hi)

    def query_range(self, k_first, k_last, q_len: int):
        """Queries ``[lo, hi)`` that may see keys ``k_first..k_last``: the transpose."""
        left, right = self.reach()
        hi = q_len if left is None else _min(q_len, k_last + left + 1)  # s >= t - left
        lo = 0 if right is None else _max(0, k_first - right)  # s <= t + right
        return lo, _max(lo, hi)

    # ---- derived forms ------------------------------------------------------------------

    def kernel_segment_ids(self, batch: int, q_len: int, k_len: int):
        """Lengths and segment ids as one pair of int32 id arrays ``[B, T]``, ``[B, S]``:
        real ids shifted to >= 0, padded queries -1 and padded keys -2 (they match nothing).
        For kernels that take only segment ids (Pallas)."""
        q_ids, k_ids = self.query_segment_ids, self.key_segment_ids
        if q_ids is None:
            q_ids = jnp.zeros((batch, q_len), jnp.int32)
            k_ids = jnp.zeros((batch, k_len), jnp.int32)
        lowest = jnp.minimum(q_ids.min(), k_ids.min())
        q_ids, k_ids = q_ids - lowest, k_ids - lowest
        if self.query_lengths is not None:
            q_ids = jnp.where(jnp.arange(q_len)[None] < self.query_lengths[:, None], q_ids, -1)
        if self.key_lengths is not None:
            k_ids = jnp.where(jnp.arange(k_len)[None] < self.key_lengths[:, None], k_ids, -2)
        return q_ids.astype(jnp.int32), k_ids.astype(jnp.int32)

    def per_batch_row(self, repeats: int) -> Masking:
        """Each example's lengths and segment ids repeated ``repeats`` times along the batch
        axis (for kernels that fold heads into the batch); only without mask and bias."""
        if self.mask is not None or self.bias is not None:
            raise ValueError("per_batch_row needs a masking without mask or bias arrays")

        def repeat(x):
            return None if x is None else jnp.repeat(x, repeats, axis=0)

        fields = ("query_lengths", "key_lengths", "query_segment_ids", "key_segment_ids")
        return dataclasses.replace(self, **{f: repeat(getattr(self, f)) for f in fields})

    @property
    def restricts(self) -> bool:
        """Whether any rule restricts which keys a query sees."""
        arrays = (self.query_lengths, self.key_lengths, self.query_segment_ids, self.mask)
        return self.is_causal or self.window is not None or any(a is not None for a in arrays)


jax.tree_util.register_dataclass(
    Masking,
    data_fields=[
        "query_lengths",
        "key_lengths",
        "query_segment_ids",
        "key_segment_ids",
        "mask",
        "bias",
    ],
    meta_fields=["is_causal", "window"],
)


def rectangle(x, queries: Positions, keys: Positions):
    """Rows ``queries`` and columns ``keys`` of a 4-D ``[b, n, t, s]`` mask or bias whose
    ``t`` or ``s`` axis may be 1 (broadcast: kept whole)."""
    if x.shape[2] > 1:
        x = _take(x, queries, axis=2)
    if x.shape[3] > 1:
        x = _take(x, keys, axis=3)
    return x


def normalize_window(window: Window) -> tuple[int, int]:
    """``int`` → symmetric ``(w, w)``; a pair is checked for non-negative ints."""
    pair = window if isinstance(window, tuple | list) else (window, window)
    if len(pair) != 2:
        raise ValueError(
            f"local_window_size must be a non-negative int or a (left, right) pair, got {window!r}"
        )
    return tuple(as_int("local_window_size", w, minimum=0) for w in pair)


def _positions(positions: Positions):
    return positions.positions() if isinstance(positions, Span) else positions


def _take(x, positions: Positions, axis: int):
    if isinstance(positions, Span):
        if isinstance(positions.start, int | np.integer):
            return lax.slice_in_dim(
                x, int(positions.start), positions.start + positions.size, 1, axis
            )
        return lax.dynamic_slice_in_dim(x, positions.start, positions.size, axis)
    return jnp.take(x, jnp.asarray(positions), axis=axis)


def _max(a, b):
    return max(a, b) if isinstance(a, int) and isinstance(b, int) else jnp.maximum(a, b)


def _min(a, b):
    return min(a, b) if isinstance(a, int) and isinstance(b, int) else jnp.minimum(a, b)


def _lengths(name: str, lengths, batch: int):
    return None if lengths is None else per_example_lengths(name, lengths, batch)


def _broadcastable(name: str, x, shape: tuple[int, ...], *, boolean: bool):
    """``x`` (a mask or bias, or None) checked against ``[B, N, T, S]`` and made 4-D."""
    if x is None:
        return None
    x = jnp.asarray(x)
    if boolean and x.dtype != jnp.bool_:
        raise ValueError(
            f"{name} must be boolean (True = may attend), got dtype {x.dtype}; "
            "pass additive masks as bias"
        )
    if x.ndim > 4 or any(d not in (1, t) for d, t in zip(x.shape[::-1], shape[::-1])):
        raise ValueError(
            f"{name} of shape {x.shape} is not broadcastable to [B, N, T, S] = {list(shape)}"
        )
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _segment_ids(query_ids, key_ids, batch: int, q_len: int, k_len: int):
    if query_ids is None and key_ids is None:
        return None, None
    if query_ids is None:
        raise ValueError("key_segment_ids needs query_segment_ids")
    if key_ids is None:
        if q_len != k_len:
            raise ValueError(
                f"key_segment_ids is required when query length T={q_len} differs from key "
                f"length S={k_len}"
            )
        key_ids = query_ids
    checked = []
    for name, ids, length, letter in (
        ("query_segment_ids", query_ids, q_len, "T"),
        ("key_segment_ids", key_ids, k_len, "S"),
    ):
        ids = jnp.asarray(ids)
        if ids.ndim == 1 and batch == 1:
            ids = ids[None]
        if ids.shape != (batch, length):
            raise ValueError(
                f"{name} must have shape [B, {letter}] = {[batch, length]}, got {ids.shape}"
            )
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"{name} must be integers, got dtype {ids.dtype}")
        checked.append(ids.astype(jnp.int32))
    return tuple(checked)
