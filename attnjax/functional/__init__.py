"""Pure JAX attention math: arrays in, arrays out. Imports jax and numpy only."""

from attnjax.functional.attention import (
    attend,
    attention_pattern,
    attention_scores,
    masked_softmax,
    single_head_attention,
)
from attnjax.functional.backends import IMPLEMENTATIONS
from attnjax.functional.dispatch import choose_implementation, dot_product_attention
from attnjax.functional.masking import Masking
from attnjax.functional.masks import (
    causal_mask,
    combine_masks,
    padding_mask,
    segment_mask,
    sliding_window_mask,
)
from attnjax.functional.positional import (
    alibi_bias,
    alibi_slopes,
    apply_rope,
    sinusoidal_embedding,
)
from attnjax.functional.recompute import pattern_from_lse

__all__ = [
    "IMPLEMENTATIONS",
    "Masking",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "attend",
    "attention_pattern",
    "attention_scores",
    "causal_mask",
    "choose_implementation",
    "combine_masks",
    "dot_product_attention",
    "masked_softmax",
    "padding_mask",
    "pattern_from_lse",
    "segment_mask",
    "single_head_attention",
    "sinusoidal_embedding",
    "sliding_window_mask",
]
