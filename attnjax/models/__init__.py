"""Model configuration and transformer stacks built from ``attnjax.layers``."""

from attnjax.models.config import ModelConfig
from attnjax.models.transformer import (
    DecoderLM,
    Embeddings,
    TransformerBlock,
    greedy_generate,
    stack_patterns,
)

__all__ = [
    "DecoderLM",
    "Embeddings",
    "ModelConfig",
    "TransformerBlock",
    "greedy_generate",
    "stack_patterns",
]
