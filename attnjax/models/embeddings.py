"""The embedding layer every model starts with: tokens, positions and token types into the
residual stream ``[B, T, D]``; and the norm the configs choose."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Float, Int

from attnjax import functional as F
from attnjax.functional._types import ArrayT
from attnjax.layers import make_norm
from attnjax.layers._checks import check_in_range, check_positions
from attnjax.models.config import ModelConfig

__all__ = ["Embeddings", "norm_for"]


def norm_for(config: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    return make_norm(
        config.norm,
        config.model_dim,
        eps=config.norm_eps,
        use_bias=config.norm_bias,
        dtype=config.compute_dtype,
        param_dtype=config.parameter_dtype,
        rngs=rngs,
    )


class Embeddings(nnx.Module):
    """Token embedding [V, D] + position embedding + token-type embedding (encoders)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(config.init_std)
        embed = dict(
            dtype=config.compute_dtype,
            param_dtype=config.parameter_dtype,
            embedding_init=init,
            rngs=rngs,
        )
        self.position_kind = config.position_embedding
        self.model_dim = config.model_dim
        self.max_seq_len = config.max_seq_len
        self.token = nnx.Embed(config.vocab_size, config.model_dim, **embed)
        self.position = (
            nnx.Embed(config.max_seq_len, config.model_dim, **embed)
            if config.position_embedding == "learned"
            else None
        )
        self.token_type = (
            nnx.Embed(config.type_vocab_size, config.model_dim, **embed)
            if config.type_vocab_size
            else None
        )
        self.norm = norm_for(config, rngs) if config.embedding_norm else None
        self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs)

    def __call__(
        self,
        tokens: Int[ArrayT, "B T"],
        positions: Int[ArrayT, "#B T"] | None = None,
        token_types: Int[ArrayT, "B T"] | None = None,
    ) -> Float[ArrayT, "B T D"]:
        """Embed ``tokens`` [B, T] at ``positions`` [B or 1, T] (default ``arange(T)``).

        Ids out of range (tokens in [0, vocab_size), learned positions in [0, max_seq_len),
        token types in [0, type_vocab_size)) raise ``ValueError``; under ``jit``, a
        ``JaxRuntimeError`` with that message when the program runs.
        """
        self.check_ids(tokens, positions, token_types)
        if positions is None:
            positions = jnp.arange(tokens.shape[1])[None]
        x = self.token(tokens)
        if self.position is not None:
            x = x + self.position(positions)
        elif self.position_kind == "sinusoidal":
            x = x + F.sinusoidal_embedding(positions, self.model_dim).astype(x.dtype)
        if self.token_type is not None:
            types = jnp.zeros_like(tokens) if token_types is None else token_types
            x = x + self.token_type(types)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)

    def check_ids(self, tokens, positions=None, token_types=None) -> None:
        """Raise ``ValueError`` naming the argument if an id would index past its table."""
        check_in_range("tokens", tokens, self.token.num_embeddings, "vocab_size")
        if positions is not None:
            check_positions(positions, *tokens.shape)
            if self.position is not None:
                check_in_range("positions", positions, self.max_seq_len, "max_seq_len")
        if token_types is not None and self.token_type is not None:
            check_in_range(
                "token_types", token_types, self.token_type.num_embeddings, "type_vocab_size"
            )
