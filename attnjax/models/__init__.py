"""Model configuration and transformer stacks built from ``attnjax.layers``."""

from attnjax.models.config import ModelConfig
from attnjax.models.encoder import Encoder, bert_config
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
    "Encoder",
    "ModelConfig",
    "TransformerBlock",
    "bert_config",
    "greedy_generate",
    "stack_patterns",
]
