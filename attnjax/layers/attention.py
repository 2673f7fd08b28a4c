"""Multi-head attention as an NNX module with stacked per-head parameters.

Per head ``n`` (the 3Blue1Brown view): query map ``W_Q[n]`` [D, H], key map ``W_K[k]`` [D, H],
value-down ``W_V↓[k]`` [D, R] and value-up ``W_V↑[n]`` [R, D]. Stacked over heads they are the
usual projection tensors ``query`` [D, N, H], ``key`` [D, K, H], ``value_down`` [D, K, R],
``value_up`` [N, R, D] (the value-ups of all heads, concatenated, are the output projection).
With K < N key/value heads (grouped-query attention) each key/value head serves G = N/K query
heads. The math lives in ``attnjax.functional``; this module only holds parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Bool, Float, Int

from attnjax import functional as F
from attnjax.functional._checks import (
    as_int,
    as_positive_float,
    as_rate,
    check_choice,
    check_rope_width,
    head_sizes,
)
from attnjax.functional._types import ArrayT
from attnjax.layers._checks import check_positions, error_if
from attnjax.layers.probe import Interventions, Recorder

__all__ = ["KVCache", "MultiHeadAttention"]


class KVCache(NamedTuple):
    """Keys and values of the tokens seen so far, for autoregressive decoding.

    ``key`` [B, S_max, K, H] and ``value`` [B, S_max, K, R] are sized by the number of
    key/value heads K (not N); ``length`` (int32 scalar) counts the filled positions.
    """

    key: Float[ArrayT, "B S K H"]
    value: Float[ArrayT, "B S K R"]
    length: Int[ArrayT, ""]

    @classmethod
    def empty(cls, batch_size, max_length, num_kv_heads, head_dim, value_dim, dtype=jnp.float32):
        if batch_size < 1 or max_length < 1:
            raise ValueError(
                f"batch_size={batch_size} and max_length={max_length} must be positive"
            )
        return cls(
            key=jnp.zeros((batch_size, max_length, num_kv_heads, head_dim), dtype),
            value=jnp.zeros((batch_size, max_length, num_kv_heads, value_dim), dtype),
            length=jnp.zeros((), jnp.int32),
        )

    @property
    def max_length(self) -> int:
        return self.key.shape[1]

    def check_room(self, new_tokens: int) -> None:
        """Raise ``ValueError("cache overflow: ...")`` unless ``new_tokens`` more fit.

        Under ``jit`` (a traced ``length``) it raises when the program runs.
        """
        max_length = self.max_length
        error_if(
            self.length + new_tokens > max_length,
            lambda filled: (
                f"cache overflow: {np.max(filled)} cached + {new_tokens} new tokens > "
                f"max_length={max_length}"
            ),
            self.length,
        )


class MultiHeadAttention(nnx.Module):
    """Multi-head (grouped-query) self- or cross-attention.

    Self-attention reads queries, keys and values from ``x``. Cross-attention (pass
    ``context=`` when calling) reads queries from ``x`` [B, T, D] and keys and values from a
    ``context`` [B, S, C] of its own length S (an encoder's output), as Flax's and Equinox's
    modules do with separate query and key/value inputs.

    Args:
      model_dim: D, width of the residual stream.
      context_dim: C, width of the context that keys and values are read from in
        cross-attention (default D).
      num_heads: N query heads.
      num_kv_heads: K key/value heads (default N); must divide N.
      head_dim: H, query/key width per head (default D // N, then N must divide D).
      value_dim: R, value-down width per head (default H).
      use_bias: biases on query, key, value-down and output (off by default).
      dropout_rate: dropout on the attention pattern while training.
      is_causal: query ``t`` sees only keys ``<= t``.
      rope: rotate queries and keys by position (RoPE) with base ``rope_base``.
      implementation: passed to ``attnjax.dot_product_attention``.
      dtype: compute dtype (default: the input's); param_dtype: parameter dtype.
    """

    def __init__(
        self,
        model_dim: int,
        num_heads: int,
        *,
        context_dim: int | None = None,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        value_dim: int | None = None,
        use_bias: bool = False,
        dropout_rate: float = 0.0,
        is_causal: bool = False,
        rope: bool = False,
        rope_base: float = 10_000.0,
        implementation: str | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        kernel_init: nnx.Initializer = nnx.initializers.normal(0.02),
        rngs: nnx.Rngs,
    ):
        context_dim = model_dim if context_dim is None else context_dim
        context_dim = as_int("context_dim", context_dim, minimum=1)
        num_kv_heads, head_dim, value_dim = head_sizes(
            model_dim, num_heads, num_kv_heads, head_dim, value_dim
        )
        if rope:
            check_rope_width(head_dim, setting="rope=True")
            rope_base = as_positive_float("rope_base", rope_base)
        dropout_rate = as_rate("dropout_rate", dropout_rate)
        if implementation is not None:
            check_choice("implementation", implementation, F.IMPLEMENTATIONS)
        self.model_dim, self.num_heads, self.num_kv_heads = model_dim, num_heads, num_kv_heads
        self.context_dim = context_dim
        self.head_dim, self.value_dim = head_dim, value_dim
        self.is_causal, self.rope, self.rope_base = is_causal, rope, rope_base
        self.implementation, self.dtype = implementation, dtype
        self.dropout_rate = dropout_rate
        self.deterministic = False

        def param(shape):
            return nnx.Param(kernel_init(rngs.params(), shape, param_dtype))

        def bias(shape):
            return nnx.Param(jnp.zeros(shape, param_dtype)) if use_bias else None

        d, c, n, k = model_dim, context_dim, num_heads, num_kv_heads
        self.query = param((d, n, head_dim))
        self.key = param((c, k, head_dim))
        self.value_down = param((c, k, value_dim))
        self.value_up = param((n, value_dim, d))
        self.query_bias = bias((n, head_dim))
        self.key_bias = bias((k, head_dim))
        self.value_bias = bias((k, value_dim))
        self.output_bias = bias((d,))
        self.dropout_rngs = rngs["dropout"].fork() if dropout_rate > 0 else None

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_length`` tokens."""
        return KVCache.empty(
            batch_size, max_length, self.num_kv_heads, self.head_dim, self.value_dim, dtype
        )

    def project(self, x: Float[ArrayT, "B T D"], positions: Int[ArrayT, "#B T"]):
        """Queries [B,T,N,H], keys [B,T,K,H], values [B,T,K,R] of the input (RoPE applied)."""
        q = self._project(x, "BTD,DNH->BTNH", self.query, self.query_bias)
        k, v = self._keys_values(x)
        if self.rope:
            q = F.apply_rope(q, positions, base=self.rope_base)
            k = F.apply_rope(k, positions, base=self.rope_base)
        return q, k, v

    def encode_context(self, context: Float[ArrayT, "B S C"]) -> KVCache:
        """Cross-attention keys [B,S,K,H] and values [B,S,K,R] of ``context``, computed once.

        Pass the result as ``context=`` to every decoding step instead of the raw context, so
        the keys and values of the encoder output are not recomputed per generated token.
        """
        self._check_context_input(context)
        k, v = self._keys_values(context)
        return KVCache(k, v, jnp.asarray(context.shape[1], jnp.int32))

    def _project(self, x, einsum: str, weight, bias):
        dtype = self.dtype or x.dtype
        out = jnp.einsum(einsum, x.astype(dtype), weight[...].astype(dtype))
        return out if bias is None else out + bias[...].astype(dtype)

    def _keys_values(self, source):
        k = self._project(source, "BSC,CKH->BSKH", self.key, self.key_bias)
        v = self._project(source, "BSC,CKR->BSKR", self.value_down, self.value_bias)
        return k, v

    def _check_context_input(self, context) -> None:
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context must have shape [B, S, C={self.context_dim}], got {context.shape}"
            )

    def __call__(
        self,
        x: Float[ArrayT, "B T D"],
        *,
        context: Float[ArrayT, "_B S C"] | KVCache | None = None,  # batch checked below
        mask: Bool[ArrayT, ...] | None = None,
        bias: Float[ArrayT, ...] | None = None,
        positions: Int[ArrayT, "#B T"] | None = None,
        cache: KVCache | None = None,
        return_pattern: bool = False,
        deterministic: bool | None = None,
        edits: Interventions | None = None,
        record: Recorder | None = None,
    ):
        """Self-attention of ``x`` [B, T, D] → [B, T, D], or cross-attention to ``context``.

        ``context`` [B, S, C] (or its ``encode_context`` result): queries come from ``x``,
        keys and values from the context; every query may see every context position unless
        ``mask`` [B|1, N|1, T|1, S] says otherwise (e.g. the context's padding). A
        cross-attention call takes no ``cache`` (decode by passing the encoded context at each
        step), and the layer must not be ``is_causal`` or use ``rope`` (context positions are
        not the queries' positions).

        ``mask``/``bias`` broadcast to [B, N, T, S] (S = T, or the cache length S_max).
        ``positions`` [B, T] (default ``arange(T)``, after the cached prefix) feed RoPE.

        With ``cache``, the T new tokens (a multi-token prompt or one token) are appended to
        it and attend to everything cached before them (causally among themselves if
        ``is_causal``). Returns:
          ``y``; ``(y, pattern)`` with ``return_pattern`` (pattern [B, N, T, S], float32);
          ``(y, new_cache)`` with ``cache``; ``(y, new_cache, pattern)`` with both.

        ``edits`` (one layer's ``Interventions``) change head outputs or patterns; ``record``
        (a ``Recorder``) receives the activations it names (``attnjax.layers.probe.NAMES``).
        """
        if x.ndim != 3 or x.shape[-1] != self.model_dim:
            raise ValueError(f"x must have shape [B, T, D={self.model_dim}], got {x.shape}")
        length = x.shape[1]
        offset = 0 if cache is None else cache.length
        if positions is None:
            positions = (jnp.arange(length) + offset)[None]
        check_positions(positions, x.shape[0], length)
        is_causal = self.is_causal
        if context is not None:
            q, k, v = self._cross_inputs(x, context, positions, cache)
        else:
            q, k, v = self.project(x, positions)
        if cache is not None:
            cache, k, v, mask = self._append_to_cache(cache, k, v, mask)
            is_causal = False  # folded into the cache mask
        deterministic = self.deterministic if deterministic is None else deterministic
        use_dropout = self.dropout_rate > 0 and not deterministic
        want_lse = record is not None and record.wants("scores", "pattern", "lse")
        result = F.dot_product_attention(
            q,
            k,
            v,
            bias,
            mask,
            is_causal=is_causal,
            implementation=self.implementation,
            return_pattern=return_pattern,
            return_lse=want_lse,
            dropout_rate=self.dropout_rate if use_dropout else 0.0,
            dropout_rng=self.dropout_rngs() if use_dropout else None,
        )
        result = result if isinstance(result, tuple) else (result,)
        out, pattern = result[0], (result[1] if return_pattern else None)
        if edits is not None or record is not None:
            masking = dict(bias=bias, mask=mask, is_causal=is_causal)
            out = self._probe(
                q, k, v, out, result[-1] if want_lse else None, masking, edits, record
            )
        y = jnp.einsum("BTNR,NRD->BTD", out, self.value_up[...].astype(out.dtype))
        if self.output_bias is not None:
            y = y + self.output_bias[...].astype(y.dtype)
        outputs = (
            (y,) + ((cache,) if cache is not None else ()) + ((pattern,) if return_pattern else ())
        )
        return outputs[0] if len(outputs) == 1 else outputs

    def _probe(self, q, k, v, out, lse, masking, edits, record):
        """Record q, k, v, scores/pattern (from ``lse``), moved values and head outputs;
        apply ``edits`` to the moved values ``out`` [B, T, N, R] and return them."""
        if record is not None:
            for name, value in (("q", q), ("k", k), ("v", v), ("lse", lse)):
                record.put(name, value)
        if record is not None and record.wants("scores", "pattern"):
            scores, pattern = F.pattern_from_lse(q, k, lse, **masking)
            record.put("scores", scores)
            record.put("pattern", pattern)
        if edits is not None:
            override = None
            if edits.pattern is not None:
                group = self.num_heads // self.num_kv_heads
                values = jnp.repeat(v, group, axis=2).astype(jnp.float32)
                override = jnp.einsum("BNTS,BSNR->BTNR", edits.pattern, values).astype(out.dtype)
            out = edits.edit_moved(out, override)
        if record is not None:
            record.put("moved", out)
            if record.wants("head_out"):
                up = self.value_up[...].astype(out.dtype)
                record.put("head_out", jnp.einsum("BTNR,NRD->BTND", out, up))
        return out

    def _cross_inputs(self, x, context, positions, cache):
        """Queries of ``x`` and keys/values of ``context`` (projected now, or encoded before)."""
        if cache is not None:
            raise ValueError(
                "cache= and context= were both given: a cross-attention layer has no "
                "self-attention cache; pass encode_context(context) as context= at each step"
            )
        if self.is_causal or self.rope:
            raise ValueError(
                f"context= (cross-attention) needs a layer with is_causal=False and rope=False, "
                f"this one has is_causal={self.is_causal}, rope={self.rope}"
            )
        q = self._project(x, "BTD,DNH->BTNH", self.query, self.query_bias)
        if isinstance(context, KVCache):
            if context.key.shape[2:] != (self.num_kv_heads, self.head_dim):
                raise ValueError(
                    f"context holds keys {context.key.shape}; this layer needs "
                    f"[B, S, K={self.num_kv_heads}, H={self.head_dim}] (use encode_context)"
                )
            k, v = context.key, context.value
        else:
            self._check_context_input(context)
            k, v = self._keys_values(context)
        if k.shape[0] != x.shape[0]:
            raise ValueError(f"context has batch size {k.shape[0]}, x has batch size {x.shape[0]}")
        return q, k.astype(q.dtype), v.astype(q.dtype)

    def _append_to_cache(self, cache: KVCache, k, v, mask):
        new_len = k.shape[1]
        if cache.key.shape[2:] != k.shape[2:] or cache.value.shape[2:] != v.shape[2:]:
            raise ValueError(
                f"cache of key {cache.key.shape}, value {cache.value.shape} does not fit this "
                f"layer (K={self.num_kv_heads}, H={self.head_dim}, R={self.value_dim})"
            )
        if cache.key.shape[0] != k.shape[0]:
            raise ValueError(
                f"cache holds batch_size={cache.key.shape[0]} sequences, the input has "
                f"batch size {k.shape[0]}"
            )
        cache.check_room(new_len)
        start = cache.length
        keys = jax.lax.dynamic_update_slice_in_dim(cache.key, k.astype(cache.key.dtype), start, 1)
        values = jax.lax.dynamic_update_slice_in_dim(
            cache.value, v.astype(cache.value.dtype), start, 1
        )
        max_len = cache.max_length
        filled = jnp.arange(max_len)[None, :] < start + new_len  # [1, S_max]
        cache_mask = filled[None, None]  # [1, 1, 1, S_max]
        if self.is_causal:
            cache_mask = cache_mask & F.causal_mask(new_len, max_len, offset=start)
        new_cache = KVCache(keys, values, start + new_len)
        return new_cache, keys, values, F.combine_masks(mask, cache_mask)
