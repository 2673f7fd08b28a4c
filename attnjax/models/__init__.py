"""Model configuration and transformer stacks built from ``attnjax.layers``."""

from attnjax.models.config import ModelConfig
from attnjax.models.encoder import Encoder, bert_config
from attnjax.models.grid import FIXED, point_config
from attnjax.models.scan import stack_layers, unstack_layers
from attnjax.models.transformer import (
    DecoderLM,
    Embeddings,
    TransformerBlock,
    greedy_generate,
    stack_patterns,
)

__all__ = [
    "FIXED",
    "DecoderLM",
    "Embeddings",
    "Encoder",
    "ModelConfig",
    "TransformerBlock",
    "bert_config",
    "greedy_generate",
    "point_config",
    "stack_layers",
    "stack_patterns",
    "unstack_layers",
]
