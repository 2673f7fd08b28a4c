"""Analytic FLOP counts of a transformer forward pass, training step and cached decoding.

Conventions: a multiply-add is 2 FLOPs; only matrix multiplications are counted:

- attention projections per token: ``2 * (D*N*H + D*K*H + D*K*R + N*R*D)``;
- the attention grid per token: ``2*N*H`` per key for scores Q K^T and ``2*N*R`` per key for
  pattern · V. Non-causal, every query sees all ``T`` keys; causal, query ``t`` sees ``t+1``
  keys, ``(T+1)/2`` on average (about half the grid);
- MLP: ``2 * 2*D*F`` (0 for ``attention_only``, whose F is 0); unembedding (decoders):
  ``2*D*V``.

``causal`` (sequence and training counts): ``None``, the default, means ``config.is_causal``, so
a decoder counts the causal half of the grid and an encoder the full grid; pass ``True`` or
``False`` to override (``causal=False`` for a decoder is what XLA computes, see below).

Not counted: embedding look-ups, norms, softmax, activations, biases, residual adds (O(D+F)
or O(N*S) per token each, a few percent for realistic widths). XLA's ``cost_analysis()`` counts
them, and computes the full grid even when causal (it masks, it does not skip), so it exceeds
the non-causal count by those elementwise terms only: measured on CPU for D=256 test models,
+0.5-0.8% with ReLU or with exact GELU written with erf (jax.nn.gelu's erfc form: +4.0-4.8%);
tests/test_accounting.py and tests/test_accounting_flops.py bound them at +1.5% and +6%.

Training is ``3 x`` forward: the backward pass computes gradients with respect to both the
activations and the weights, each a matmul as large as the forward one (Kaplan et al. 2020).
"""

from __future__ import annotations

from attnjax.functional._checks import as_int
from attnjax.models.config import ModelConfig

__all__ = [
    "attention_grid_flops_per_token",
    "decode_flops_per_token",
    "flops_per_sequence",
    "flops_per_token",
    "matmul_flops_per_token",
    "training_flops_per_sequence",
    "training_flops_per_token",
]

TRAINING_MULTIPLIER = 3


def matmul_flops_per_token(config: ModelConfig) -> int:
    """Forward FLOPs per token that do not depend on the context length: attention
    projections, MLP and unembedding, all layers."""
    d, n, k = config.model_dim, config.num_heads, config.resolved_num_kv_heads
    h, r, f = config.resolved_head_dim, config.resolved_value_dim, config.resolved_mlp_dim
    projections = 2 * (d * n * h + d * k * h + d * k * r + n * r * d)
    mlp = 2 * 2 * d * f
    unembedding = 2 * d * config.vocab_size if config.architecture == "decoder" else 0
    return config.num_layers * (projections + mlp) + unembedding


def attention_grid_flops_per_token(config: ModelConfig, num_keys: int | float) -> int | float:
    """Scores and pattern · V FLOPs, all layers, for one query seeing ``num_keys`` keys."""
    n, h, r = config.num_heads, config.resolved_head_dim, config.resolved_value_dim
    return config.num_layers * 2 * n * (h + r) * num_keys


def _resolve_causal(config: ModelConfig, causal: bool | None) -> bool:
    if causal is None:
        return config.is_causal
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be True, False or None (config.is_causal), got {causal!r}")
    return causal


def flops_per_sequence(config: ModelConfig, seq_len: int, causal: bool | None = None) -> int:
    """Forward FLOPs for one sequence of ``seq_len`` tokens (exact integer).

    ``causal=None`` uses ``config.is_causal`` (decoder: each query sees ``t+1`` keys; encoder:
    all ``seq_len``)."""
    seq_len = as_int("seq_len", seq_len, minimum=1)
    t = seq_len
    pairs = t * (t + 1) // 2 if _resolve_causal(config, causal) else t * t
    n, h, r = config.num_heads, config.resolved_head_dim, config.resolved_value_dim
    grid = config.num_layers * 2 * n * (h + r) * pairs
    return t * matmul_flops_per_token(config) + grid


def flops_per_token(config: ModelConfig, seq_len: int, causal: bool | None = None) -> float:
    """Forward FLOPs per token, averaged over a sequence of ``seq_len`` tokens
    (``causal=None``: ``config.is_causal``)."""
    return flops_per_sequence(config, seq_len, causal) / seq_len


def training_flops_per_sequence(
    config: ModelConfig, seq_len: int, causal: bool | None = None
) -> int:
    """Forward + backward FLOPs for one sequence: 3 x forward (``causal=None``: the config's)."""
    return TRAINING_MULTIPLIER * flops_per_sequence(config, seq_len, causal)


def training_flops_per_token(
    config: ModelConfig, seq_len: int, causal: bool | None = None
) -> float:
    """Forward + backward FLOPs per token: 3 x forward (``causal=None``: the config's)."""
    return TRAINING_MULTIPLIER * flops_per_token(config, seq_len, causal)


def decode_flops_per_token(config: ModelConfig, context_len: int) -> int:
    """FLOPs to produce one new token with a KV cache holding ``context_len`` positions
    (the new one included): projections + MLP + unembedding for one token, and the grid row
    of one query against ``context_len`` keys. Decoders only: an encoder has no cached decoding
    (ValueError)."""
    if config.architecture != "decoder":
        raise ValueError(
            f"decode_flops_per_token needs a decoder; architecture={config.architecture!r} "
            "has no KV-cache decoding"
        )
    context_len = as_int("context_len", context_len, minimum=1)
    return matmul_flops_per_token(config) + int(attention_grid_flops_per_token(config, context_len))
