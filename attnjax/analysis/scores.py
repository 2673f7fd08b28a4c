"""Per-head scores [L, N] that say what kind of head each one is.

All scores average over the examples and the real query positions of a batch
(``mask`` [B, T], True = real token; default all real):

- ``head_entropy``: entropy of each query's pattern in nats, summed over real keys only,
  ``-Σ_s p[t,s] log p[t,s]`` (0 when a query attends to one key; ``log n`` when uniform).
- ``previous_token_score``: ``p[t, t-1]``, over queries t >= 1.
- ``first_token_score``: ``p[t, 0]``.
- ``self_score``: ``p[t, t]``.
- ``induction_score_from_patterns``: on a sequence of n random tokens repeated twice, the
  attention from position t of the second half to ``t - n + 1``, the token after the previous
  occurrence of the current token (Olsson et al. 2022). ``induction_scores`` runs a decoder on
  such sequences.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Bool, Float, Int

from attnjax.analysis.patterns import AttentionPatterns
from attnjax.functional._types import ArrayT

__all__ = [
    "HeadScores",
    "first_token_score",
    "head_entropy",
    "head_scores",
    "induction_score_from_patterns",
    "induction_scores",
    "previous_token_score",
    "repeated_random_tokens",
    "self_score",
]


def _check(patterns, mask) -> tuple[jax.Array, jax.Array]:
    patterns = jnp.asarray(patterns, jnp.float32)
    if patterns.ndim != 5:
        raise ValueError(f"patterns must have shape [L, B, N, T, S], got {patterns.shape}")
    _, batch, _, q_len, k_len = patterns.shape
    if mask is None:
        mask = jnp.ones((batch, k_len), bool)
    mask = jnp.asarray(mask, bool)
    if mask.shape != (batch, k_len) or q_len != k_len:
        raise ValueError(
            f"mask must have shape [B={batch}, T={k_len}] for self-attention patterns "
            f"{patterns.shape}, got {mask.shape}"
        )
    return patterns, mask


def _mean_over_queries(
    per_query: Float[ArrayT, "L B N T"], weights: Bool[ArrayT, "B T"]
) -> Float[ArrayT, "L N"]:
    weights = weights.astype(jnp.float32)
    total = jnp.einsum("LBNT,BT->LN", per_query, weights)
    return total / jnp.maximum(weights.sum(), 1.0)


def head_entropy(
    patterns: Float[ArrayT, "L B N T T"], mask: Bool[ArrayT, "B T"] | None = None
) -> Float[ArrayT, "L N"]:
    """Mean entropy (nats) of each head's pattern rows, over real queries and real keys."""
    patterns, mask = _check(patterns, mask)
    real_key = mask[None, :, None, None, :]
    p = jnp.where(real_key & (patterns > 0), patterns, 1.0)  # log(1) = 0 for the rest
    entropy = -jnp.sum(jnp.where(real_key, patterns, 0.0) * jnp.log(p), axis=-1)
    return _mean_over_queries(entropy, mask)


def previous_token_score(
    patterns: Float[ArrayT, "L B N T T"], mask: Bool[ArrayT, "B T"] | None = None
) -> Float[ArrayT, "L N"]:
    """Mean attention from each real query t >= 1 to the token before it, t - 1."""
    patterns, mask = _check(patterns, mask)
    to_previous = jnp.diagonal(patterns, offset=-1, axis1=-2, axis2=-1)  # [L,B,N,T-1]
    return _mean_over_queries(to_previous, mask[:, 1:])


def first_token_score(
    patterns: Float[ArrayT, "L B N T T"], mask: Bool[ArrayT, "B T"] | None = None
) -> Float[ArrayT, "L N"]:
    """Mean attention from each real query to the first token (position 0)."""
    patterns, mask = _check(patterns, mask)
    return _mean_over_queries(patterns[..., 0], mask)


def self_score(
    patterns: Float[ArrayT, "L B N T T"], mask: Bool[ArrayT, "B T"] | None = None
) -> Float[ArrayT, "L N"]:
    """Mean attention from each real query to itself."""
    patterns, mask = _check(patterns, mask)
    return _mean_over_queries(jnp.diagonal(patterns, axis1=-2, axis2=-1), mask)


def induction_score_from_patterns(
    patterns: Float[ArrayT, "L B N T T"], seq_len: int
) -> Float[ArrayT, "L N"]:
    """Induction score of patterns on ``seq_len`` random tokens repeated twice (T = 2 n).

    The mean over the second half ``t in [n, 2n)`` of ``p[t, t - n + 1]``. An exact induction
    head scores 1; a uniform causal head scores ``mean_t 1 / (t + 1)``.
    """
    patterns = jnp.asarray(patterns, jnp.float32)
    if patterns.ndim != 5:
        raise ValueError(f"patterns must have shape [L, B, N, T, T], got {patterns.shape}")
    if seq_len < 1 or patterns.shape[-1] != 2 * seq_len:
        raise ValueError(
            f"seq_len={seq_len} must be positive and half the pattern length T={patterns.shape[-1]}"
        )
    diagonal = jnp.diagonal(patterns, offset=-(seq_len - 1), axis1=-2, axis2=-1)  # t-n+1
    second_half = diagonal[..., 1:]  # queries t = n .. 2n-1
    return second_half.mean(axis=(1, 3))


def repeated_random_tokens(
    vocab_size: int, seq_len: int, batch: int, seed: int = 0
) -> Int[ArrayT, "B T"]:
    """``batch`` sequences of ``seq_len`` uniform random ids in ``[0, vocab_size)``, each
    repeated twice: [B, 2 * seq_len]."""
    for name, value in (("vocab_size", vocab_size), ("seq_len", seq_len), ("batch", batch)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    half = jax.random.randint(jax.random.key(seed), (batch, seq_len), 0, vocab_size)
    return jnp.concatenate([half, half], axis=1)


def induction_scores(
    model: Any, seq_len: int, batch: int = 8, seed: int = 0
) -> Float[ArrayT, "L N"]:
    """Induction score [L, N] of a causal model on ``batch`` repeated random sequences."""
    config = model.config
    if not config.is_causal:
        raise ValueError("induction_scores needs a causal (decoder) model")
    if 2 * seq_len > config.max_seq_len:
        raise ValueError(
            f"2 * seq_len={2 * seq_len} exceeds the model's max_seq_len={config.max_seq_len}"
        )
    tokens = repeated_random_tokens(config.vocab_size, seq_len, batch, seed)
    graphdef, state = nnx.split(model)
    return induction_score_from_patterns(_patterns(graphdef, state, tokens), seq_len)


@jax.jit(static_argnums=0)
def _patterns(graphdef, state, tokens):
    return nnx.merge(graphdef, state)(tokens, return_patterns=True)[1]


@dataclasses.dataclass(frozen=True)
class HeadScores:
    """Per-head scores [L, N] of one batch (see the module docstring for definitions)."""

    entropy: np.ndarray
    previous_token: np.ndarray
    first_token: np.ndarray
    self_token: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def top_heads(self, score: str, k: int = 3) -> list[tuple[int, int, float]]:
        """The ``k`` (layer, head, value) with the highest ``score``."""
        values = self.as_dict().get(score)
        if values is None:
            raise ValueError(f"score={score!r} is unknown; choose one of {list(self.as_dict())}")
        order = np.argsort(values, axis=None)[::-1][:k]
        return [
            (int(i // values.shape[1]), int(i % values.shape[1]), float(values.flat[i]))
            for i in order
        ]


def head_scores(patterns: AttentionPatterns) -> HeadScores:
    """Entropy, previous-, first- and self-attention scores [L, N] of ``patterns``."""
    args = (patterns.patterns, patterns.mask)
    return HeadScores(
        entropy=np.asarray(head_entropy(*args)),
        previous_token=np.asarray(previous_token_score(*args)),
        first_token=np.asarray(first_token_score(*args)),
        self_token=np.asarray(self_score(*args)),
    )
