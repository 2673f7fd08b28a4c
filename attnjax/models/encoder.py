"""The bidirectional encoder (BERT layout), built from the same blocks as the decoder.

BERT: token + position + token-type embeddings, a LayerNorm on their sum, then L post-LN
blocks ``x = norm(x + attn(x))``, ``x = norm(x + mlp(x))`` with a GELU MLP and biases
everywhere; no final norm. ``bert_config`` gives those settings as a ``ModelConfig``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Int, Shaped

from attnjax.functional._types import ArrayT
from attnjax.models.config import ModelConfig
from attnjax.models.embeddings import Embeddings, norm_for
from attnjax.models.scan import layer_block
from attnjax.models.transformer import (
    TransformerBlock,
    make_blocks,
    run_blocks,
)

__all__ = ["Encoder", "bert_config"]

BERT_SETTINGS = dict(
    architecture="encoder",
    norm="layernorm",
    norm_position="post",
    norm_eps=1e-12,
    embedding_norm=True,
    final_norm=False,
    attention_bias=True,
    mlp_bias=True,
    activation="gelu",
    position_embedding="learned",
    tie_embeddings=True,
    type_vocab_size=2,
)


def bert_config(**sizes: Any) -> ModelConfig:
    """A ``ModelConfig`` with BERT's settings (post-LN, embedding LayerNorm, biases, exact GELU,
    learned positions, 2 token types), overridden by ``sizes`` (e.g. ``model_dim=384``)."""
    return ModelConfig(**{**BERT_SETTINGS, **sizes})


class Encoder(nnx.Module):
    """Bidirectional transformer encoder: embeddings, L blocks, optional final norm.

    ``model(tokens)`` → the last hidden states [B, T, D]. Build with
    ``Encoder(config, rngs=nnx.Rngs(0))``; ``config.architecture`` must be ``"encoder"``
    (``bert_config(...)`` gives BERT's layout). Parameter paths are those of ``DecoderLM``
    (``embeddings/...``, ``blocks/<i>/...``, or ``blocks/...`` stacked [L, ...] with
    ``scan_layers``; ``final_norm`` if ``config.final_norm``); there is no unembedding.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.architecture != "encoder":
            raise ValueError(f"Encoder needs architecture='encoder', got {config.architecture!r}")
        if config.position_embedding == "alibi":
            raise ValueError("Encoder does not support position_embedding='alibi'")
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.blocks = make_blocks(config, rngs)
        self.final_norm = norm_for(config, rngs) if config.final_norm else None

    def __call__(
        self,
        tokens: Shaped[ArrayT, "B T"],
        *,
        token_types: Int[ArrayT, "B T"] | None = None,
        attention_mask: Shaped[ArrayT, "B T"] | None = None,
        return_patterns: bool = False,
        return_hidden_states: bool = False,
        capture=(),
        interventions=None,
    ):
        """Encode ``tokens`` [B, T] (every token sees every other real token).

        Args:
          tokens: integer ids [B, T].
          token_types: segment ids [B, T] (default all 0); needs ``config.type_vocab_size``.
          attention_mask: [B, T], 1 (or True) for real tokens, 0 for padding. Padded keys get
            zero attention; padded positions still get (meaningless) outputs.
          return_patterns: also return the attention patterns [L, B, N, T, T] (float32).
          return_hidden_states: also return the residual stream after the embeddings and
            after every block, [L+1, B, T, D] (the last one after the final norm, if any).
          capture, interventions: as ``DecoderLM.__call__`` (captured activations last).

        Returns:
          hidden [B, T, D]; with flags, the tuple ``(hidden, patterns?, hidden_states?)`` in
          that order (only the requested extras).
        """
        self._check_inputs(tokens, token_types, attention_mask)
        x = self.embeddings(tokens, token_types=token_types)
        mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
        x, extras = run_blocks(
            self.blocks,
            self.final_norm,
            x,
            mask=mask,
            return_patterns=return_patterns,
            return_hidden_states=return_hidden_states,
            capture=capture,
            interventions=interventions,
            remat=self.config.remat,
        )
        return (x, *extras) if extras else x

    def block(self, layer: int) -> TransformerBlock:
        """Block ``layer`` (with ``scan_layers``, a copy holding that layer's slice)."""
        return layer_block(self.blocks, layer)

    def _check_inputs(self, tokens, token_types, attention_mask) -> None:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [B, T], got {tokens.shape}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.shape[1] > self.config.max_seq_len and self.embeddings.position is not None:
            raise ValueError(
                f"sequence length {tokens.shape[1]} exceeds max_seq_len={self.config.max_seq_len}"
            )
        for name, value in (("token_types", token_types), ("attention_mask", attention_mask)):
            if value is not None and value.shape != tokens.shape:
                raise ValueError(
                    f"{name} must have the shape of tokens {tokens.shape}, got {value.shape}"
                )
        if token_types is not None and self.embeddings.token_type is None:
            raise ValueError("token_types given, but the config has type_vocab_size=0")
