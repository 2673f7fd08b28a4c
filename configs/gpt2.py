"""The four GPT-2 sizes (Radford et al. 2019), for counting parameters and FLOPs.

Run (from the repository root):

    uv run python -m experiments.count_params --config=configs/gpt2.py:size=small

Sizes: small (124M), medium (355M), large (774M), xl (1.5B); default small. 1024-token
context, vocabulary 50257, F = 4D, pre-LN with LayerNorm biases, biases in attention and MLP,
learned positions, tied embeddings, GELU (tanh). GPT-2 small counts 124,439,808 parameters.
"""

from __future__ import annotations

import ml_collections

from configs import common

# size: (num_layers, model_dim, num_heads)
SIZES = {
    "small": (12, 768, 12),
    "medium": (24, 1024, 16),
    "large": (36, 1280, 20),
    "xl": (48, 1600, 25),
}
VARIANTS = ("size=medium",)  # built abstractly by tests/test_configs.py
# (the 48-layer xl is slow to build abstractly there; tests/test_accounting.py counts sizes)


def parse_size(arg: str | None) -> str:
    """``"size=small"`` or ``"small"`` → ``"small"``; unknown sizes raise ValueError."""
    return common.parse_size(arg, SIZES, "small")


def get_config(arg: str = "size=small") -> ml_collections.ConfigDict:
    """The GPT-2 config for ``arg`` (``size=<name>`` or just ``<name>``), locked."""
    size = parse_size(arg)
    num_layers, model_dim, num_heads = SIZES[size]
    model = common.model(
        common.GPT2_LAYOUT,
        vocab_size=50257,
        max_seq_len=1024,
        model_dim=model_dim,
        num_layers=num_layers,
        num_heads=num_heads,
    )
    return common.counting_config(f"gpt2-{size}", model, seq_len=1024)
