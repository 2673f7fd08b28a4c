"""Head detectors on published definitions, for every query head (MHA, GQA, MQA).

On ``batch`` sequences of ``seq_len`` random tokens repeated twice (T = 2n), with query
positions t of the second half ``[n, 2n)`` (Olsson et al. 2022, "In-context Learning and
Induction Heads", §2 and their head-scoring method; TransformerLens' ``detect_head``):

- ``previous_token``: mean attention ``p[t, t-1]`` over all queries t >= 1 (Olsson et al.'s
  previous-token heads; Elhage et al. 2021, "A Mathematical Framework for Transformer
  Circuits").
- ``duplicate_token``: mean ``p[t, t - n]``, the earlier occurrence of the same token (Wang et
  al. 2022, "Interpretability in the Wild", duplicate token heads).
- ``induction``: mean ``p[t, t - n + 1]``, the token after the earlier occurrence: Olsson et
  al.'s prefix-matching score.
- ``copying``: of the full OV circuit ``W_E W_V↓ W_V↑ W_U`` [V, V] (norms left out), the
  eigenvalue statistic ``Σ Re λ / Σ |λ|`` of Elhage et al. 2021 ("positive eigenvalues
  suggest copying"): 1 when all eigenvalues are positive, -1 when all negative, 0 for a head
  that writes nothing. Computed from the r x r matrix ``W_V↑ W_U W_E W_V↓`` (same nonzero
  eigenvalues) in float64 NumPy.

Grouped-query models need no special case: patterns are per query head, and query head n
reads value-down ``k = n // (N / K)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx
from jaxtyping import Float

from attnjax.analysis.interventions import _unembedding, run_with_cache
from attnjax.analysis.scores import (
    induction_score_from_patterns,
    previous_token_score,
    repeated_random_tokens,
)
from attnjax.functional._checks import as_int
from attnjax.functional._types import ArrayT

__all__ = [
    "DETECTORS",
    "HeadDetectors",
    "copying_score",
    "detect_heads",
    "duplicate_token_score",
]

DETECTORS = ("previous_token", "duplicate_token", "induction", "copying")


def duplicate_token_score(
    patterns: Float[ArrayT, "L B N T T"], seq_len: int
) -> Float[ArrayT, "L N"]:
    """Mean attention from the second half ``t in [n, 2n)`` to ``t - n`` on patterns of
    ``seq_len`` = n tokens repeated twice."""
    if patterns.ndim != 5 or patterns.shape[-1] != 2 * seq_len:
        raise ValueError(
            f"patterns [L, B, N, T, T] with T = 2 * seq_len={2 * seq_len} expected, got "
            f"{patterns.shape}"
        )
    return jax.numpy.diagonal(patterns, offset=-seq_len, axis1=-2, axis2=-1).mean(axis=(1, 3))


def copying_score(model) -> Float[np.ndarray, "L N"]:
    """Elhage et al.'s ``Σ Re λ / Σ |λ|`` of each head's full OV circuit [L, N] (0 where the
    head writes nothing)."""
    embed = np.asarray(model.embeddings.token.embedding[...], np.float64)  # [V, D]
    unembed = np.asarray(_unembedding(model), np.float64)  # [D, V]
    through = unembed @ embed  # [D, D]: out of the residual, back in through the embeddings
    rows = []
    for layer in range(model.config.num_layers):
        attention = model.block(layer).attention
        down = np.asarray(attention.value_down[...], np.float64)  # [D, K, R]
        up = np.asarray(attention.value_up[...], np.float64)  # [N, R, D]
        group = attention.num_heads // attention.num_kv_heads
        down = np.repeat(np.moveaxis(down, 1, 0), group, axis=0)  # [N, D, R]
        small = up @ through @ down  # [N, R, R]
        eig = np.linalg.eigvals(small)
        total = np.abs(eig).sum(axis=-1)
        rows.append(np.where(total > 0, eig.real.sum(axis=-1) / np.maximum(total, 1e-300), 0.0))
    return np.stack(rows)


@dataclasses.dataclass(frozen=True)
class HeadDetectors:
    """Detector scores, each [L, N] (float NumPy); see the module docstring."""

    previous_token: Any
    duplicate_token: Any
    induction: Any
    copying: Any

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name)) for name in DETECTORS}

    def top(self, name: str, k: int = 3) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads on detector ``name``: ``(layer, head, score)``."""
        if name not in DETECTORS:
            raise ValueError(f"name={name!r} is not a detector; choose one of {DETECTORS}")
        scores = self.as_dict()[name]
        order = np.argsort(-scores, axis=None)[: as_int("k", k, minimum=1)]
        return [
            (int(i // scores.shape[1]), int(i % scores.shape[1]), float(scores.flat[i]))
            for i in order
        ]


def detect_heads(model, *, seq_len: int = 8, batch: int = 8, seed: int = 0) -> HeadDetectors:
    """All detectors for every query head of ``model`` (a decoder or an encoder), on ``batch``
    sequences of ``seq_len`` random tokens repeated twice (patterns from one compiled pass)."""
    seq_len = as_int("seq_len", seq_len, minimum=2)
    config = model.config
    if 2 * seq_len > config.max_seq_len:
        raise ValueError(
            f"2 * seq_len={2 * seq_len} exceeds the model's max_seq_len={config.max_seq_len}"
        )
    tokens = repeated_random_tokens(config.vocab_size, seq_len, batch, seed)
    graphdef, state = nnx.split(model)
    patterns = _patterns(graphdef, state, tokens)
    return HeadDetectors(
        previous_token=np.asarray(previous_token_score(patterns)),
        duplicate_token=np.asarray(duplicate_token_score(patterns, seq_len)),
        induction=np.asarray(induction_score_from_patterns(patterns, seq_len)),
        copying=copying_score(model),
    )


@jax.jit(static_argnums=0)
def _patterns(graphdef, state, tokens):
    return run_with_cache(nnx.merge(graphdef, state), tokens, ("pattern",))[1]["pattern"]
