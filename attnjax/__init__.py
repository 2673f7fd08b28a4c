"""attnjax: the attention mechanism of transformers, as pure JAX functions and Flax NNX modules.

The public API. Everything not listed in ``__all__`` is an implementation detail.

The core (``functional``, ``layers``, ``models``) is imported eagerly. The larger subpackages
are imported on first use, so ``import attnjax`` stays light:
``attnjax.accounting`` (parameter/FLOP/memory counts), ``attnjax.analysis`` (patterns, head
scores, circuits), ``attnjax.pretrained`` (safetensors checkpoints), ``attnjax.data`` (tasks
that need attention), ``attnjax.training`` (train loop, checkpoints, sweeps), ``attnjax.viz``
(figures), ``attnjax.perf`` (opt-in CPU tuning for launchers; nothing runs on import),
``attnjax.bench`` (speed and memory against peers), ``attnjax.aot`` (compiling for TPU/GPU
topologies without the device).
"""

import importlib

from attnjax import functional, layers, models
from attnjax.functional import (
    alibi_bias,
    apply_rope,
    attend,
    attention_pattern,
    attention_scores,
    causal_mask,
    combine_masks,
    dot_product_attention,
    padding_mask,
    segment_mask,
    sinusoidal_embedding,
    sliding_window_mask,
)
from attnjax.layers import MLP, KVCache, MultiHeadAttention
from attnjax.models import DecoderLM, Encoder, ModelConfig, TransformerBlock, greedy_generate

__version__ = "0.1.0"

_LAZY_SUBPACKAGES = (
    "accounting", "analysis", "aot", "bench", "data", "perf", "pretrained", "training", "viz",
)  # fmt: skip

__all__ = [
    "MLP",
    "DecoderLM",
    "Encoder",
    "KVCache",
    "ModelConfig",
    "MultiHeadAttention",
    "TransformerBlock",
    "accounting",
    "alibi_bias",
    "aot",
    "analysis",
    "apply_rope",
    "attend",
    "attention_pattern",
    "attention_scores",
    "bench",
    "causal_mask",
    "combine_masks",
    "data",
    "dot_product_attention",
    "functional",
    "greedy_generate",
    "layers",
    "models",
    "padding_mask",
    "perf",
    "pretrained",
    "segment_mask",
    "sinusoidal_embedding",
    "sliding_window_mask",
    "training",
    "viz",
]


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"attnjax.{name}")
    raise AttributeError(f"module 'attnjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES))
