"""Scaled dot-product attention, written the way it is explained.

For one example and one head:

    scores  = q · kᵀ · scale                      [T, S]   (the grid)
    pattern = softmax over keys (masked, + bias)  [T, S]   (float32)
    out     = pattern · v                         [T, R]

``dot_product_attention`` lifts this with ``jax.vmap`` over the G query heads that share a
key/value head, then over the K key/value heads, then over the batch. Faster paths
(``"einsum"``, ``"blocked"``, ``"xla"``, ``"cudnn"``, ``"pallas_tpu"``) are other
implementations of the same function and are tested to agree with it. ``"blocked"``
(``attnjax/functional/blocked.py``) never builds the ``[T, S]`` grid, forward or backward.
``implementation=None`` takes :func:`choose_implementation`'s pick for the backend and call.

Shape letters: B batch, T queries, S keys, N query heads, K key/value heads, G = N/K,
H query/key width, R value width.

**Fully masked rows.** A query whose keys are all masked (by ``mask``, padding, a window, or a
``-inf`` bias) gets a zero pattern row and a zero output, with zero (finite) gradients, in every
implementation. It is never NaN.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Bool, Float, Int, Shaped

from attnjax.functional import blocked as blocked_lib
from attnjax.functional import masks as masks_lib
from attnjax.functional._checks import as_int, per_example_lengths
from attnjax.functional._types import ArrayT, Scalar

__all__ = [
    "IMPLEMENTATIONS",
    "attend",
    "attention_pattern",
    "attention_scores",
    "choose_implementation",
    "dot_product_attention",
    "masked_softmax",
    "single_head_attention",
]

Implementation = Literal["vmap", "einsum", "blocked", "xla", "cudnn", "pallas_tpu"]
IMPLEMENTATIONS: tuple[str, ...] = ("vmap", "einsum", "blocked", "xla", "cudnn", "pallas_tpu")
_NEEDS_JAX_NN = ("xla", "cudnn")
_GIVES_LSE = ("einsum", "blocked")
_log = logging.getLogger("attnjax")


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


# --------------------------------------------------------------------------------------------
# Batched, multi-head, grouped-query.
# --------------------------------------------------------------------------------------------


def dot_product_attention(
    # query [B,T,N,H], key [B,S,K,H], value [B,S,K,R]: shapes are checked in the body, with
    # errors that name the argument, so the annotations only check the dtype kind.
    query: Float[ArrayT, ...],
    key: Float[ArrayT, ...],
    value: Float[ArrayT, ...],
    bias: Shaped[ArrayT, ...] | None = None,
    mask: Shaped[ArrayT, ...] | None = None,
    *,
    scale: Scalar | None = None,
    is_causal: bool = False,
    query_seq_lengths: Int[ArrayT, " B"] | None = None,
    key_value_seq_lengths: Int[ArrayT, " B"] | None = None,
    local_window_size: masks_lib.Window | None = None,
    query_segment_ids: Int[ArrayT, "B T"] | None = None,
    key_segment_ids: Int[ArrayT, "B S"] | None = None,
    implementation: str | None = None,
    return_pattern: bool = False,
    return_lse: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    block_sizes: tuple[int, int] | None = None,
):
    """Multi-head scaled dot-product attention; a drop-in for ``jax.nn.dot_product_attention``.

    Args:
      query: ``[B, T, N, H]`` (or ``[T, N, H]``).
      key: ``[B, S, K, H]``; K key/value heads, K must divide N (K < N is grouped-query
        attention, K = 1 multi-query attention).
      value: ``[B, S, K, R]``; the value width R may differ from H.
      bias: added to the scores, broadcastable to ``[B, N, T, S]``. ``-inf`` entries mask.
      mask: boolean, True = may attend, broadcastable to ``[B, N, T, S]``.
      scale: multiplies the scores; default ``1/sqrt(H)``.
      is_causal: query ``i`` sees keys ``j <= i`` (top-left aligned, as ``jax.nn``).
      query_seq_lengths, key_value_seq_lengths: ``[B]`` int lengths; positions past them are
        padding.
      local_window_size: ``(left, right)`` or an int: query ``i`` sees keys in
        ``[i - left, i + right]``.
      query_segment_ids, key_segment_ids: ``[B, T]`` and ``[B, S]`` ints for packed sequences:
        a query sees only keys with the same id (``key_segment_ids`` defaults to
        ``query_segment_ids`` when T = S). The blocked path reads them block by block instead
        of building a ``[T, S]`` mask.
      implementation: ``"vmap"`` (the reference: the single-head function vmapped over heads
        and batch), ``"einsum"``, ``"blocked"`` (flash-style: key/value blocks with an online
        softmax and its own backward pass, O(T) memory; no pattern, no dropout), ``"xla"`` or
        ``"cudnn"`` (both through ``jax.nn.dot_product_attention``; they need R == H, one
        dtype for query, key and value, no dropout and no returned pattern), ``"pallas_tpu"``
        (the Pallas TPU flash kernel; see :func:`choose_implementation`). ``None`` (default)
        takes :func:`choose_implementation`'s pick, logged once per distinct choice on the
        ``"attnjax"`` logger. ``"cudnn"`` also needs an NVIDIA GPU, float16 or bfloat16
        inputs, H a multiple of 8 and at most 256 (128 before Hopper), and a window that looks
        only left (``(left, 0)``) unless ``is_causal``; other calls raise ``ValueError``.
      return_pattern: also return the pattern ``[B, N, T, S]`` (float32, before dropout).
      return_lse: also return the log-sum-exp ``[B, N, T]`` (float32) of each row's scaled,
        biased scores over its allowed keys (``-inf`` for a row with none), from which any
        tile of the pattern can be recomputed (``attnjax.analysis.pattern_tile``). Given by
        ``"blocked"`` and ``"einsum"``.
      dropout_rate, dropout_rng: dropout on the pattern (vmap/einsum only).
      block_sizes: ``(block_q, block_k)`` for ``"blocked"`` (default
        ``blocked.DEFAULT_BLOCK_SIZES``).

    Returns:
      ``[B, T, N, R]`` (batch axis dropped for 3-D inputs), in the value dtype; with
      ``return_pattern`` and/or ``return_lse`` a tuple ``(out, pattern)``, ``(out, lse)`` or
      ``(out, pattern, lse)``.

    A query row whose keys are all masked outputs zeros (finite, zero gradients).
    """
    unbatched = jnp.ndim(query) == 3
    query, key, value = (_batched(x, name) for x, name in _named(query, key, value))
    batch, q_len, num_heads, _ = query.shape
    k_len = key.shape[1]
    _check_qkv_shapes(query, key, value)
    if query_seq_lengths is not None:
        query_seq_lengths = per_example_lengths("query_seq_lengths", query_seq_lengths, batch)
    if key_value_seq_lengths is not None:
        key_value_seq_lengths = per_example_lengths(
            "key_value_seq_lengths", key_value_seq_lengths, batch
        )
    query_segment_ids, key_segment_ids = _segment_ids(
        query_segment_ids, key_segment_ids, batch, q_len, k_len, unbatched
    )
    target = (batch, num_heads, q_len, k_len)
    mask = _check_broadcastable("mask", mask, target, boolean=True, letters="B, N, T, S")
    bias = _check_broadcastable("bias", bias, target, boolean=False, letters="B, N, T, S")
    if bias is not None:  # -inf bias entries are masks; keep the rest finite.
        mask = masks_lib.combine_masks(mask, bias > -jnp.inf)
        bias = jnp.where(bias > -jnp.inf, bias, 0.0)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    window = None if local_window_size is None else masks_lib.normalize_window(local_window_size)
    call = _describe_call(
        bias,
        mask,
        is_causal,
        window,
        query_segment_ids is not None,
        return_pattern,
        dropout_rate,
    )
    implementation = _checked_implementation(implementation, (query, key, value), call)
    if return_lse and implementation not in _GIVES_LSE:
        raise ValueError(
            f"return_lse=True needs implementation='blocked' or 'einsum', got {implementation!r}"
        )
    block_sizes = _check_block_sizes(block_sizes)
    lse = None
    if implementation == "blocked":
        pattern = None
        out, lse = blocked_lib.blocked_attention(
            query,
            key,
            value,
            scale=scale,
            is_causal=is_causal,
            window=window,
            query_seq_lengths=query_seq_lengths,
            key_value_seq_lengths=key_value_seq_lengths,
            query_segment_ids=query_segment_ids,
            key_segment_ids=key_segment_ids,
            mask=mask,
            bias=bias,
            block_sizes=block_sizes,
        )
    elif implementation == "pallas_tpu":
        pattern = None
        out = _pallas_tpu_attention(
            query,
            key,
            value,
            scale,
            is_causal,
            query_seq_lengths,
            key_value_seq_lengths,
            query_segment_ids,
            key_segment_ids,
        )
    else:
        combined = _combined_mask(
            mask, is_causal, window, query_seq_lengths, key_value_seq_lengths, q_len, k_len
        )
        if query_segment_ids is not None:
            segments = masks_lib.segment_mask(query_segment_ids, key_segment_ids)
            combined = masks_lib.combine_masks(combined, segments)
        keep = _dropout_keep(dropout_rate, dropout_rng, target)
        if implementation == "vmap":
            out, pattern = _vmap_attention(query, key, value, bias, combined, scale, keep)
        elif implementation == "einsum":
            out, pattern, lse = _einsum_attention(query, key, value, bias, combined, scale, keep)
        else:
            pattern = None
            native = dict(
                mask=mask,
                is_causal=is_causal,
                query_seq_lengths=query_seq_lengths,
                key_value_seq_lengths=key_value_seq_lengths,
                local_window_size=window,
            )
            if query_segment_ids is not None:  # jax.nn takes no segment ids: pass them as a mask
                native["mask"] = masks_lib.combine_masks(mask, segments)
            out = _jax_nn_attention(
                query, key, value, bias, combined, scale, implementation, native
            )
    if unbatched:
        out = out[0]
        pattern = None if pattern is None else pattern[0]
        lse = None if lse is None else lse[0]
    extras = ((pattern,) if return_pattern else ()) + ((lse,) if return_lse else ())
    return (out, *extras) if extras else out


def _segment_ids(query_ids, key_ids, batch, q_len, k_len, unbatched):
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
    named = (("query_segment_ids", query_ids, q_len, "T"), ("key_segment_ids", key_ids, k_len, "S"))
    checked = []
    for name, ids, length, letter in named:
        ids = jnp.asarray(ids)
        if unbatched and ids.ndim == 1:
            ids = ids[None]
        if ids.shape != (batch, length):
            raise ValueError(
                f"{name} must have shape [B, {letter}] = {[batch, length]}, got {ids.shape}"
            )
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"{name} must be integers, got dtype {ids.dtype}")
        checked.append(ids)
    return tuple(checked)


def _check_block_sizes(block_sizes):
    if block_sizes is None:
        return None
    if not isinstance(block_sizes, tuple | list) or len(block_sizes) != 2:
        raise ValueError(f"block_sizes must be a (block_q, block_k) pair, got {block_sizes!r}")
    return tuple(
        as_int(name, b, minimum=1)
        for name, b in zip(("block_q", "block_k"), block_sizes, strict=True)
    )


def _named(query, key, value):
    return ((query, "query"), (key, "key"), (value, "value"))


def _batched(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim == 3:
        return x[None]
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape [B, T/S, heads, width] (or 3-D), got {x.shape}")
    return x


def _check_qkv_shapes(query, key, value) -> None:
    batch, _, num_heads, width = query.shape
    if key.shape[0] != batch or value.shape[0] != batch:
        raise ValueError(
            f"batch sizes differ: query {query.shape}, key {key.shape}, value {value.shape}"
        )
    if key.shape[-1] != width:
        raise ValueError(
            f"query and key head widths differ: query {query.shape} has H={width}, "
            f"key {key.shape} has H={key.shape[-1]}"
        )
    if key.shape[1:3] != value.shape[1:3]:
        raise ValueError(
            "key and value must agree on length S and heads K: "
            f"key {key.shape}, value {value.shape}"
        )
    num_kv_heads = key.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_kv_heads={num_kv_heads} (key {key.shape}) must divide "
            f"num_heads={num_heads} (query {query.shape})"
        )


def _check_broadcastable(name, x, target, *, boolean: bool, letters: str):
    """``x`` (a mask or bias, or None) checked against ``target`` and given its rank."""
    if x is None:
        return None
    x = jnp.asarray(x)
    if boolean and x.dtype != jnp.bool_:
        raise ValueError(
            f"{name} must be boolean (True = may attend), got dtype {x.dtype}; "
            "pass additive masks as bias"
        )
    rank = len(target)
    if x.ndim > rank or any(
        d not in (1, t) for d, t in zip(x.shape[::-1], target[::-1], strict=False)
    ):
        raise ValueError(
            f"{name} of shape {x.shape} is not broadcastable to [{letters}] = {list(target)}"
        )
    return x.reshape((1,) * (rank - x.ndim) + x.shape)


def choose_implementation(
    query,
    key,
    value,
    *,
    bias=None,
    mask=None,
    is_causal: bool = False,
    local_window_size: masks_lib.Window | None = None,
    segment_ids: bool = False,
    return_pattern: bool = False,
    dropout_rate: float = 0.0,
    backend: str | None = None,
) -> str:
    """The implementation ``dot_product_attention(implementation=None)`` runs for this call.

    Arguments are those of the call (shapes ``[B, T, N, H]`` etc.; ``segment_ids`` says
    whether segment ids are given); ``backend`` defaults to ``jax.default_backend()``.

    - A returned pattern or dropout needs the grid: ``"einsum"``.
    - NVIDIA GPU: ``"cudnn"`` (through ``jax.nn.dot_product_attention``) where it supports the
      call (float16/bfloat16, H a multiple of 8, ...), else ``"blocked"``.
    - TPU: ``"pallas_tpu"`` (Pallas flash kernel) where it supports the call, else ``"blocked"``.
    - Otherwise (CPU): ``"blocked"``, which measured faster than the alternatives there
      (``experiments/benchmark.py``) and never needs O(T²) memory.
    """
    window = None if local_window_size is None else masks_lib.normalize_window(local_window_size)
    call = _describe_call(bias, mask, is_causal, window, segment_ids, return_pattern, dropout_rate)
    return _choose((query, key, value), call, backend or jax.default_backend())


def _describe_call(bias, mask, is_causal, window, segment_ids, return_pattern, dropout_rate):
    """What the implementation checks look at: the call's arguments (window normalized)."""
    return dict(
        bias=bias,
        mask=mask,
        is_causal=is_causal,
        local_window_size=window,
        segment_ids=segment_ids,
        return_pattern=return_pattern,
        dropout_rate=dropout_rate,
    )


def _choose(qkv, call, backend: str) -> str:
    if call["return_pattern"] or call["dropout_rate"] > 0:
        return "einsum"
    if backend == "gpu" and not (
        _unsupported("cudnn", qkv, call) or _cudnn_device_unsupported(qkv[0], backend)
    ):
        return "cudnn"
    if backend == "tpu" and not _unsupported("pallas_tpu", qkv, call):
        return "pallas_tpu"
    return "blocked"


_logged_choices: set[tuple[str, str]] = set()


def _checked_implementation(implementation, qkv, call) -> str:
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation={implementation!r} is unknown; choose one of {IMPLEMENTATIONS}"
        )
    if not 0.0 <= call["dropout_rate"] < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {call['dropout_rate']}")
    if implementation is None:
        chosen = _choose(qkv, call, jax.default_backend())
        if (jax.default_backend(), chosen) not in _logged_choices:
            _logged_choices.add((jax.default_backend(), chosen))
            _log.info(
                "attnjax.dot_product_attention: implementation=None runs %r on %s",
                chosen,
                jax.default_backend(),
            )
        return chosen
    unsupported = _unsupported(implementation, qkv, call)
    if unsupported:
        others = {
            "cudnn": "'xla', 'blocked' or 'einsum'",
            "xla": "'blocked' or 'einsum'",
            "pallas_tpu": "'blocked' or 'einsum'",
        }.get(implementation, "'einsum' or 'vmap'")
        raise ValueError(
            f"implementation={implementation!r} does not support this call: {unsupported}; "
            f"use implementation={others}"
        )
    if implementation == "cudnn":
        _check_cudnn_device(qkv[0])
    if implementation == "pallas_tpu":
        _check_pallas_tpu_device()
    return implementation


def _unsupported(implementation: str, qkv, call) -> str:
    """Why ``implementation`` cannot run this call ('' when it can)."""
    query, key, value = qkv
    if implementation in ("vmap", "einsum"):
        return ""
    if call["return_pattern"]:
        return f"return_pattern=True ({implementation!r} never builds the pattern)"
    if call["dropout_rate"] > 0:
        return "dropout_rate > 0"
    if implementation == "blocked":
        return ""
    unsupported = _jax_nn_unsupported(query, key, value)
    if unsupported or implementation == "xla":
        return unsupported
    if implementation == "cudnn":
        return _cudnn_unsupported(query, call["local_window_size"], call["is_causal"])
    return _pallas_tpu_unsupported(query, key, call)


def _jax_nn_unsupported(query, key, value) -> str:
    if value.shape[-1] != query.shape[-1]:
        return f"value width R={value.shape[-1]} differs from query/key width H={query.shape[-1]}"
    if not query.dtype == key.dtype == value.dtype:
        return f"query, key and value dtypes differ ({query.dtype}, {key.dtype}, {value.dtype})"
    return ""


# The restrictions of jax.nn.dot_product_attention(implementation="cudnn") (jax/_src/nn/
# functions.py, jax/_src/cudnn/fused_attention_stablehlo.py), checked before jax sees the call.
_CUDNN_DTYPES = (jnp.float16, jnp.bfloat16)
_CUDNN_MAX_HEAD_WIDTH = 256  # 128 before Hopper (compute capability 9.0)


def _cudnn_unsupported(query, window, is_causal) -> str:
    width = query.shape[-1]
    if query.dtype not in _CUDNN_DTYPES:
        return f"query dtype {query.dtype} (cudnn supports float16 and bfloat16)"
    if width % 8 or width > _CUDNN_MAX_HEAD_WIDTH:
        return (
            f"head width H={width} (query {query.shape}); cudnn needs a multiple of 8, "
            f"at most {_CUDNN_MAX_HEAD_WIDTH} (128 before Hopper)"
        )
    if window is not None and window[1] > 0 and not is_causal:
        return (
            f"local_window_size={window} with is_causal=False (cudnn supports left windows "
            "(left, 0), or any window together with is_causal=True)"
        )
    return ""


def _cudnn_device_unsupported(query, backend: str | None = None) -> str:
    backend = jax.default_backend() if backend is None else backend
    if backend != "gpu":
        return f"it needs an NVIDIA GPU, but the default backend is {backend!r}"
    if jax.default_backend() != "gpu":  # asked about a GPU from elsewhere: assume Hopper
        return ""
    capability = getattr(jax.devices()[0], "compute_capability", "9.0")
    before_hopper = tuple(int(x) for x in str(capability).split(".")[:2]) < (9, 0)
    if before_hopper and query.shape[-1] > 128:
        return (
            f"head width H={query.shape[-1]} on a GPU of compute capability {capability} "
            "(at most 128 before Hopper)"
        )
    return ""


def _check_cudnn_device(query) -> None:
    unsupported = _cudnn_device_unsupported(query)
    if unsupported:
        raise ValueError(
            f"implementation='cudnn' does not support this call: {unsupported}; "
            "use implementation='xla' or 'blocked'"
        )


# The Pallas TPU flash kernel (jax.experimental.pallas.ops.tpu.flash_attention) takes
# [B, N, T, H] with equal head counts, causal masks and segment ids, and blocks of 128.
_PALLAS_BLOCK = 128


def _pallas_tpu_unsupported(query, key, call) -> str:
    if call["mask"] is not None or call["bias"] is not None:
        return "a mask or bias argument (pass padding as seq lengths, packing as segment ids)"
    if call["local_window_size"] is not None:
        return "local_window_size"
    q_len, k_len = query.shape[1], key.shape[1]
    if q_len % _PALLAS_BLOCK or k_len % _PALLAS_BLOCK:
        return f"T={q_len}, S={k_len} (both must be multiples of {_PALLAS_BLOCK})"
    return ""


def _check_pallas_tpu_device() -> None:
    if jax.default_backend() != "tpu" and not _pallas_interpreting():
        raise ValueError(
            "implementation='pallas_tpu' does not support this call: it needs a TPU, but the "
            f"default backend is {jax.default_backend()!r} (to test it elsewhere, call under "
            "jax.experimental.pallas.tpu.force_tpu_interpret_mode()); use implementation="
            "'blocked' or 'einsum'"
        )


def _pallas_interpreting() -> bool:
    """Whether Pallas TPU kernels are being traced in interpret mode (on any backend)."""
    from jax._src import config  # the state behind pltpu.force_tpu_interpret_mode (private)

    setting = getattr(config, "pallas_tpu_interpret_mode_context_manager", None)
    return setting is not None and setting.value is not None


def _pallas_tpu_attention(
    query, key, value, scale, is_causal, q_lengths, kv_lengths, q_ids, kv_ids
):
    """The Pallas TPU flash kernel (off TPU: under ``pltpu.force_tpu_interpret_mode()``)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

    batch, q_len, num_heads, _ = query.shape
    k_len = key.shape[1]
    group = num_heads // key.shape[2]
    # The kernel has no GQA: repeat each key/value head for the G query heads that share it.
    key, value = (jnp.repeat(x, group, axis=2) for x in (key, value))
    q_ok = (
        jnp.ones((batch, q_len), bool)
        if q_lengths is None
        else (jnp.arange(q_len)[None] < q_lengths[:, None])
    )
    kv_ok = (
        jnp.ones((batch, k_len), bool)
        if kv_lengths is None
        else (jnp.arange(k_len)[None] < kv_lengths[:, None])
    )
    if q_ids is None:
        q_ids, kv_ids = jnp.zeros((batch, q_len), jnp.int32), jnp.zeros((batch, k_len), jnp.int32)
    # Real ids shifted to >= 0 (both by the same amount); padding gets ids -1 and -2, which
    # match nothing.
    lowest = jnp.minimum(q_ids.min(), kv_ids.min())
    segment_ids = pallas_flash.SegmentIds(
        q=jnp.where(q_ok, q_ids - lowest, -1).astype(jnp.int32),
        kv=jnp.where(kv_ok, kv_ids - lowest, -2).astype(jnp.int32),
    )
    heads_first = [jnp.swapaxes(x, 1, 2) for x in (query, key, value)]
    out = pallas_flash.flash_attention(
        *heads_first, segment_ids=segment_ids, causal=is_causal, sm_scale=float(scale)
    )
    out = jnp.swapaxes(out, 1, 2)
    # The kernel averages all values for a row with no allowed key; define it as zeros.
    sees_a_key = _rows_with_a_key(segment_ids.q, segment_ids.kv, is_causal)
    return jnp.where(sees_a_key[:, :, None, None], out, 0).astype(value.dtype)


def _rows_with_a_key(q_ids, kv_ids, is_causal):
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


def _combined_mask(mask, is_causal, window, q_lengths, kv_lengths, q_len, k_len):
    """One boolean mask broadcastable to [B, N, T, S] from every masking argument (or None)."""
    parts = [mask]
    if is_causal:
        parts.append(masks_lib.causal_mask(q_len, k_len))
    if window is not None:
        parts.append(masks_lib.sliding_window_mask(q_len, k_len, window))
    if kv_lengths is not None:
        parts.append(masks_lib.padding_mask(kv_lengths, k_len))
    if q_lengths is not None:
        q_ok = jnp.arange(q_len)[None, :] < jnp.asarray(q_lengths)[:, None]
        parts.append(q_ok[:, None, :, None])
    return masks_lib.combine_masks(*parts)


def _dropout_keep(rate, rng, target):
    if rate == 0.0:
        return None
    if rng is None:
        raise ValueError("dropout_rate > 0 needs dropout_rng (a jax.random key)")
    keep = jax.random.bernoulli(rng, 1.0 - rate, target)
    return keep.astype(jnp.float32) / (1.0 - rate)


def _grouped(x, num_kv_heads):
    """[b, N or 1, T, S] → [b, K, G, T, S] (or [b, 1, 1, T, S], which broadcasts)."""
    if x is None:
        return None
    if x.shape[1] == 1:
        return x[:, :, None]
    return x.reshape(x.shape[0], num_kv_heads, -1, *x.shape[2:])


@jax.jit
def _vmap_attention(query, key, value, bias, mask, scale, keep):
    """The reference: the single-head function vmapped over G, then K, then B."""
    batch, q_len, num_heads, _ = query.shape
    num_kv_heads = key.shape[2]
    group = num_heads // num_kv_heads
    k_len = key.shape[1]
    full = (batch, num_heads, q_len, k_len)
    mask, bias, keep = (
        None if x is None else _grouped(jnp.broadcast_to(x, full), num_kv_heads)
        for x in (mask, bias, keep)
    )
    query = query.reshape(batch, q_len, num_kv_heads, group, -1)

    def head(q, k, v, m, b, d):  # q [T,H] k [S,H] v [S,R] m,b,d [T,S]
        return single_head_attention(q, k, v, m, b, scale, d)

    # q [T,G,H] shares k [S,H], v [S,R]; the group's masks are [G,T,S].
    over_group = jax.vmap(head, in_axes=(1, None, None, 0, 0, 0), out_axes=(1, 0))
    over_kv_heads = jax.vmap(over_group, in_axes=(1, 1, 1, 0, 0, 0), out_axes=(1, 0))
    over_batch = jax.vmap(over_kv_heads)
    out, pattern = over_batch(query, key, value, mask, bias, keep)
    return out.reshape(batch, q_len, num_heads, -1), pattern.reshape(full)


@jax.jit
def _einsum_attention(query, key, value, bias, mask, scale, keep):
    batch, q_len, num_heads, _ = query.shape
    num_kv_heads = key.shape[2]
    query = query.reshape(batch, q_len, num_kv_heads, num_heads // num_kv_heads, -1)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", query, key, preferred_element_type=jnp.float32)
    scores = scores * scale
    if bias is not None:
        scores = scores + _grouped(bias, num_kv_heads).astype(jnp.float32)
    if mask is None:  # -inf biases were turned into masks, so every score is finite here.
        pattern = jax.nn.softmax(scores, axis=-1)
        lse = jax.nn.logsumexp(scores, axis=-1)
    else:
        mask = _grouped(mask, num_kv_heads)
        pattern = masked_softmax(scores, mask)
        lse = _masked_logsumexp(scores, mask)
    moved = pattern if keep is None else pattern * _grouped(keep, num_kv_heads)
    out = jnp.einsum("BKGTS,BSKR->BTKGR", moved.astype(value.dtype), value)
    out = out.reshape(batch, q_len, num_heads, -1)
    return out, pattern.reshape(batch, num_heads, q_len, -1), lse.reshape(batch, num_heads, q_len)


def _masked_logsumexp(scores, mask):
    """log Σ exp(scores) over allowed keys; -inf (with zero gradient) for a row with none."""
    allowed = mask & (scores > -jnp.inf)
    finite = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    lse = jax.nn.logsumexp(finite, axis=-1)
    return jnp.where(allowed.any(axis=-1), lse, -jnp.inf)


def _jax_nn_attention(query, key, value, bias, combined, scale, implementation, native):
    if implementation == "xla":
        out = jax.nn.dot_product_attention(
            query, key, value, bias, mask=combined, scale=scale, implementation="xla"
        )
    else:
        out = _cudnn_attention(query, key, value, bias, scale, **native)
    if combined is None:
        return out
    # jax.nn averages all values for a row with no allowed key; define it as zeros.
    row_has_keys = jnp.any(combined, axis=-1)  # [b, n, T]
    return jnp.where(jnp.swapaxes(row_has_keys, 1, 2)[..., None], out, 0).astype(out.dtype)


def _cudnn_attention(
    query, key, value, bias, scale, *, mask, is_causal, local_window_size, **lengths
):
    """cudnn builds causal/padding/window masks itself, without a [T, S] tensor."""
    if local_window_size is not None:
        # cudnn takes left windows only; with is_causal any right part is masked anyway, and
        # a (left, 0) window already implies causal, so pass both as causal + (left, 0).
        is_causal, local_window_size = True, (local_window_size[0], 0)
    full = (query.shape[1], key.shape[1])  # cudnn needs mask and bias with full [T, S] axes
    bias = None if bias is None else bias.astype(query.dtype)
    mask, bias = (
        None if x is None else jnp.broadcast_to(x, x.shape[:2] + full) for x in (mask, bias)
    )
    try:
        return jax.nn.dot_product_attention(
            query,
            key,
            value,
            bias,
            mask,
            scale=scale,
            is_causal=is_causal,
            local_window_size=local_window_size,
            implementation="cudnn",
            **lengths,
        )
    except NotImplementedError as error:  # checks that need the GPU (e.g. odd T, S with bias)
        raise ValueError(
            f"implementation='cudnn' does not support this call: {error}; use implementation='xla'"
        ) from error
