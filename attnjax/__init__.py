"""attnjax: the attention mechanism of transformers, as pure JAX functions and Flax NNX modules.

The public API. Everything not listed in ``__all__`` is an implementation detail.
"""

from attnjax import functional, layers, models
from attnjax.functional import (
    attend,
    attention_pattern,
    attention_scores,
    causal_mask,
    combine_masks,
    dot_product_attention,
    padding_mask,
    segment_mask,
    sliding_window_mask,
)
from attnjax.layers import MLP, KVCache, MultiHeadAttention
from attnjax.models import DecoderLM, ModelConfig, TransformerBlock, greedy_generate

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "DecoderLM",
    "KVCache",
    "ModelConfig",
    "MultiHeadAttention",
    "TransformerBlock",
    "attend",
    "attention_pattern",
    "attention_scores",
    "causal_mask",
    "combine_masks",
    "dot_product_attention",
    "functional",
    "greedy_generate",
    "layers",
    "models",
    "padding_mask",
    "segment_mask",
    "sliding_window_mask",
]
