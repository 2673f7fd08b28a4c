"""Flax NNX modules that hold parameters and call ``attnjax.functional``."""

from attnjax.layers._checks import trusted_inputs
from attnjax.layers.attention import KVCache, MultiHeadAttention
from attnjax.layers.mlp import ACTIVATIONS, MLP, NORMS, make_norm
from attnjax.layers.probe import NAMES, Interventions, Recorder

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "NAMES",
    "NORMS",
    "Interventions",
    "Recorder",
    "KVCache",
    "MultiHeadAttention",
    "make_norm",
    "trusted_inputs",
]
