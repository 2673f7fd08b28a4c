"""Attention patterns of every layer and head for a batch of text, with the token strings.

``AttentionPatterns`` bundles ``patterns`` [L, B, N, T, T] (query rows, key columns), the
token strings of each example and the padding ``mask`` [B, T]. Build it from a decoder
(``decoder_patterns``) or an encoder (``encoder_patterns``) on token ids, from text through
``attnjax.pretrained`` (``text_patterns``), or from an encoded batch (``patterns_from_encoded``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Bool, Float, Int

from attnjax.functional._types import ArrayT

__all__ = [
    "AttentionPatterns",
    "decoder_patterns",
    "encoder_patterns",
    "patterns_from_encoded",
    "text_patterns",
]


@dataclasses.dataclass(frozen=True)
class AttentionPatterns:
    """Patterns [L, B, N, T, T] of a batch, the token strings of each example, its mask.

    ``tokens[b]`` lists the real tokens of example ``b`` (``mask[b].sum()`` strings); padding
    sits at the end of each row of ``mask`` [B, T] (True = real token). ``causal`` says whether
    a query could see later keys (False, encoders) or not (True, decoders).
    """

    patterns: Float[ArrayT, "L B N T T"]
    tokens: Sequence[Sequence[str]]
    mask: Bool[ArrayT, "B T"]
    causal: bool

    def __post_init__(self):
        object.__setattr__(self, "tokens", tuple(tuple(str(t) for t in row) for row in self.tokens))
        patterns = np.asarray(self.patterns)
        mask = np.asarray(self.mask)
        if patterns.ndim != 5 or patterns.shape[3] != patterns.shape[4]:
            raise ValueError(f"patterns must have shape [L, B, N, T, T], got {patterns.shape}")
        batch, length = patterns.shape[1], patterns.shape[3]
        if mask.shape != (batch, length):
            raise ValueError(f"mask must have shape [B={batch}, T={length}], got {mask.shape}")
        if len(self.tokens) != batch:
            raise ValueError(f"tokens has {len(self.tokens)} examples, patterns have B={batch}")
        for b, row in enumerate(mask):
            real = int(row.sum())
            if not row[:real].all():
                raise ValueError(f"mask[{b}] must be real tokens then padding, got {row}")
            if len(self.tokens[b]) != real:
                raise ValueError(
                    f"tokens[{b}] has {len(self.tokens[b])} strings but mask[{b}] has {real} "
                    "real tokens"
                )

    @property
    def num_layers(self) -> int:
        return self.patterns.shape[0]

    @property
    def num_heads(self) -> int:
        return self.patterns.shape[2]

    def length(self, example: int) -> int:
        """Number of real tokens of ``example``."""
        return len(self.tokens[example])

    def example(self, example: int) -> np.ndarray:
        """Patterns [L, N, n, n] of one example, trimmed to its n real tokens (NumPy)."""
        n = self.length(example)
        return np.asarray(self.patterns[:, example, :, :n, :n])

    def cell_mask(self, example: int) -> np.ndarray:
        """[n, n] bool: the cells a query may attend to (lower triangle if causal)."""
        n = self.length(example)
        allowed = np.ones((n, n), bool)
        return np.tril(allowed) if self.causal else allowed


def _strings(tokens: Sequence[Sequence[str]], mask: np.ndarray) -> tuple[tuple[str, ...], ...]:
    """Token strings per example, trimmed to the real tokens (given padded or not)."""
    out = []
    for row, real in zip(tokens, mask.sum(axis=1)):
        row = tuple(str(t) for t in row)
        out.append(row[: int(real)] if len(row) == mask.shape[1] else row)
    return tuple(out)


def decoder_patterns(
    model: Any,
    token_ids: Int[ArrayT, "B T"],
    tokens: Sequence[Sequence[str]] | None = None,
    mask: Bool[ArrayT, "B T"] | None = None,
) -> AttentionPatterns:
    """Patterns of a ``DecoderLM`` on ``token_ids`` [B, T].

    ``tokens`` are the token strings (default: the ids as strings); ``mask`` [B, T] marks real
    tokens (padding at the end), and is applied to the keys on top of causal masking.
    """
    token_ids, tokens, mask = _ids_tokens_mask(token_ids, tokens, mask)
    key_mask = jnp.asarray(mask)[:, None, None, :]
    _, patterns = model(token_ids, mask=key_mask, return_patterns=True)
    return AttentionPatterns(patterns, tokens, mask, causal=True)


def _ids_tokens_mask(token_ids, tokens, mask):
    token_ids = jnp.asarray(token_ids)
    if token_ids.ndim != 2:
        raise ValueError(f"token_ids must have shape [B, T], got {token_ids.shape}")
    mask = np.ones(token_ids.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != token_ids.shape:
        raise ValueError(f"mask must have shape {token_ids.shape} like token_ids, got {mask.shape}")
    if tokens is None:
        tokens = [[str(int(t)) for t in row] for row in np.asarray(token_ids)]
    return token_ids, _strings(tokens, mask), mask


def encoder_patterns(
    model: Any,
    token_ids: Int[ArrayT, "B T"],
    tokens: Sequence[Sequence[str]] | None = None,
    mask: Bool[ArrayT, "B T"] | None = None,
) -> AttentionPatterns:
    """Patterns of an ``Encoder`` on ``token_ids`` [B, T] (bidirectional; ``mask`` [B, T]
    marks real tokens, padding at the end). For text use ``text_patterns``."""
    token_ids, tokens, mask = _ids_tokens_mask(token_ids, tokens, mask)
    _, patterns = model(token_ids, attention_mask=jnp.asarray(mask), return_patterns=True)
    return AttentionPatterns(patterns, tokens, mask, causal=False)


def patterns_from_encoded(encoded: Any, causal: bool = False) -> AttentionPatterns:
    """From the result of ``attnjax.pretrained.encode`` (``patterns``, ``tokens``,
    ``attention_mask``)."""
    mask = np.asarray(encoded.attention_mask).astype(bool)
    return AttentionPatterns(encoded.patterns, _strings(encoded.tokens, mask), mask, causal)


def text_patterns(model: Any, tokenizer: Any, sentences: Sequence[str]) -> AttentionPatterns:
    """Patterns of a pretrained model (``attnjax.pretrained.load``) on ``sentences``."""
    from attnjax import pretrained  # a sibling package; imported only when text is given

    encoded = pretrained.encode(model, tokenizer, list(sentences))
    return patterns_from_encoded(encoded, causal=model.config.is_causal)
