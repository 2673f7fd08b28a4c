"""The four GPT-2 sizes (Radford et al., 2019) as attnjax model configs.

Run (from the repository root):

    uv run python -m experiments.count_params --config=configs/gpt2.py:size=small
    uv run python -m experiments.count_params --config=configs/gpt2.py:xl --json

Sizes: small (124M: 12 layers, d_model 768, 12 heads), medium (355M: 24, 1024, 16),
large (774M: 36, 1280, 20), xl (1.56B: 48, 1600, 25); default small. n_ctx = 1024, vocabulary
50257, d_ff = 4 d_model, pre-LN LayerNorm, biases everywhere, learned positions, tied
unembedding: GPT-2 small then has exactly 124,439,808 parameters.
"""

from __future__ import annotations

import ml_collections

from configs.gpt3 import model_config, parse_size

# size: (n_layers, d_model, n_heads, parameter count of the released checkpoint)
SIZES = {
    "small": (12, 768, 12, 124_439_808),
    "medium": (24, 1024, 16, 354_823_168),
    "large": (36, 1280, 20, 774_030_080),
    "xl": (48, 1600, 25, 1_557_611_200),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The locked config of one GPT-2 size (``arg``: ``"size=small"``, ``"xl"``; default small)."""
    size = parse_size(arg, SIZES, {}, "small", "GPT-2")
    layers, width, heads, released = SIZES[size]
    config = ml_collections.ConfigDict()
    config.name = f"gpt2-{size}"
    config.paper_params = released
    config.model = model_config(layers, width, heads, 1024)
    config.lock()
    return config
