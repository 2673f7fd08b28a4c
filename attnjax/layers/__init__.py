"""Flax NNX modules that hold parameters and call ``attnjax.functional``."""

from attnjax.layers._checks import trusted_inputs
from attnjax.layers.attention import KVCache, MultiHeadAttention
from attnjax.layers.mlp import ACTIVATIONS, MLP, NORMS, make_norm

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "NORMS",
    "KVCache",
    "MultiHeadAttention",
    "make_norm",
    "trusted_inputs",
]
