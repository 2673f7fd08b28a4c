"""A 2-layer attention-only decoder whose weights are set by hand to hold an induction circuit
(Elhage et al. 2021; Olsson et al. 2022): a previous-token head in layer 0 and an induction
head in layer 1. A known answer for head detectors, ablation and patching scans.

Residual stream (D = 3V + T, one-hot slots): ``tok`` [V] (token embedding), ``pos`` [T]
(position embedding), ``prev`` [V] (written by the previous-token head: the token before),
``out`` [V] (written by the induction head; the only slot the unembedding reads).

- Previous-token head: query ``pos_t`` and key ``pos_s`` meet when ``s = t - 1``; it moves the
  token of ``s`` into ``prev``.
- Induction head: query ``tok_t`` and key ``prev_s`` meet when the token before ``s`` is the
  current token; it copies the token of ``s`` into ``out`` (key 0, whose ``prev`` is its own
  token, is pushed away). Every other head has random queries and keys and writes nothing.

RMSNorm (pre-LN) only rescales each position, the same for all of them, so the one-hot
arithmetic survives it; the blocks have no MLP (``attention_only``). On sequences of distinct
tokens repeated twice the model predicts the second half almost perfectly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnjax.functional._checks import as_int
from attnjax.models import DecoderLM, ModelConfig

__all__ = ["PlantedCircuit", "planted_induction_model"]

_SCORE = 20.0  # the score of a matching query-key pair; others score 0
_LOGIT = 10.0


class PlantedCircuit(NamedTuple):
    """The model and where its planted heads are: ``(layer, query head)`` pairs."""

    model: DecoderLM
    previous_token: tuple[int, int]
    induction: tuple[int, int]


def planted_induction_model(
    vocab_size: int = 8,
    max_seq_len: int = 16,
    *,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    seed: int = 0,
) -> PlantedCircuit:
    """The hand-set model (see the module docstring). Planted heads: the last query head of
    layer 0 (previous token) and of layer 1 (induction); with ``num_kv_heads`` < ``num_heads``
    they share their key/value head with random-query heads."""
    v = as_int("vocab_size", vocab_size, minimum=2)
    t = as_int("max_seq_len", max_seq_len, minimum=2)
    width = max(t, v + 1)
    config = ModelConfig(
        vocab_size=v,
        max_seq_len=t,
        model_dim=3 * v + t,
        num_layers=2,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=width,
        value_dim=v,
        attention_only=True,
        norm="rmsnorm",
        final_norm=False,
        tie_embeddings=False,
        position_embedding="learned",
    )
    model = DecoderLM(config, rngs=nnx.Rngs(seed))
    _set_weights(model, np.random.default_rng(seed))
    return PlantedCircuit(model, (0, num_heads - 1), (1, num_heads - 1))


def _set_weights(model: DecoderLM, rng: np.random.Generator) -> None:
    config = model.config
    v, t, d = config.vocab_size, config.max_seq_len, config.model_dim
    n, k, h = config.num_heads, config.resolved_num_kv_heads, config.resolved_head_dim
    tok, pos, prev, out = (
        np.arange(v),
        v + np.arange(t),
        v + t + np.arange(v),
        2 * v + t + np.arange(v),
    )
    embed = np.zeros((v, d))
    embed[np.arange(v), tok] = 1.0
    positions = np.zeros((t, d))
    positions[np.arange(t), pos] = 1.0
    unembed = np.zeros((d, v))
    unembed[out, np.arange(v)] = _LOGIT
    model.embeddings.token.embedding[...] = jnp.asarray(embed, jnp.float32)
    model.embeddings.position.embedding[...] = jnp.asarray(positions, jnp.float32)
    model.unembed.kernel[...] = jnp.asarray(unembed, jnp.float32)
    # After RMSNorm a position holding `ones` one-hot entries is multiplied by sqrt(d / ones).
    gain0, gain1 = math.sqrt(d / 2), math.sqrt(d / 3)
    match = math.sqrt(_SCORE * math.sqrt(h))  # q·k / sqrt(h) = _SCORE for a match
    query, key, down, up = _random_heads(rng, d, n, k, h, v)
    # Layer 0, last head: previous token.
    query[0][pos, n - 1, np.arange(t)] = match / gain0
    key[0][pos[:-1], k - 1, np.arange(1, t)] = match / gain0
    down[0][tok, k - 1, np.arange(v)] = 1.0 / gain0
    up[0][n - 1, np.arange(v), prev] = 1.0
    # Layer 1, last head: induction; key 0 (its `prev` is its own token) is pushed away.
    query[1][tok, n - 1, np.arange(v)] = match / gain1
    query[1][tok, n - 1, v] = match / gain1
    key[1][prev, k - 1, np.arange(v)] = match / gain1
    key[1][pos[0], k - 1, v] = -3.0 * match / gain1
    down[1][tok, k - 1, np.arange(v)] = 1.0 / gain1
    up[1][n - 1, np.arange(v), out] = 1.0
    for layer, block in enumerate(model.blocks):
        attention = block.attention
        for param, value in (
            (attention.query, query[layer]),
            (attention.key, key[layer]),
            (attention.value_down, down[layer]),
            (attention.value_up, up[layer]),
        ):
            param[...] = jnp.asarray(value, jnp.float32)


def _random_heads(rng, d, n, k, h, v):
    """Per layer: random queries, keys and value-downs except for the planted query head and
    its key/value head (set afterwards), and zero value-ups (other heads write nothing)."""
    std = 2.0 / math.sqrt(d)

    def normal(*shape):
        return [rng.normal(0.0, std, shape) for _ in range(2)]

    query, key, down = normal(d, n, h), normal(d, k, h), normal(d, k, v)
    for layer in range(2):  # planted heads (and their key/value head) start clean
        query[layer][:, n - 1] = 0.0
        key[layer][:, k - 1] = 0.0
        down[layer][:, k - 1] = 0.0
    return query, key, down, [np.zeros((n, v, d)) for _ in range(2)]
